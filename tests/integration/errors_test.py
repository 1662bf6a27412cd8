"""Bad input across the public API, the CLI and the dataset builders.

Every row of docs/errors.md cites a test that asserts what the user sees;
the rows not asserted elsewhere are asserted here, and the last test checks
that every test the table cites exists.
"""

import ast
import os
import re
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import pytest

import care_jax
from care_jax import config as config_lib
from care_jax import run_figures
from care_jax import training
from care_jax.commands import _flags
from care_jax.data import info as data_info
from tests.helpers import command_line
from tests.helpers import data_fixtures as fx
from tests.helpers import paths
from tests.helpers import runs

DOC = paths.REPO / 'docs' / 'errors.md'
# Two images of 4x4 maps, the first with a 2x2 box on an 8x8 mask.
MAPS = jnp.zeros((2, 4, 4)).at[:, :2, :2].set(1.0)
MASK = np.zeros((2, 8, 8), np.float32)
MASK[0, :4, :4] = 1.0


# --- Pure functions -----------------------------------------------------------


@pytest.mark.parametrize(
  'mask, value, index',
  [
    (MASK * 255, 255.0, (0, 0, 0)),
    (-MASK, -1.0, (0, 0, 0)),
    (np.where(MASK > 0, np.nan, 0.0), 'nan', (0, 0, 0)),
    (np.where(MASK > 0, 0.5, 1.5), 1.5, (0, 0, 4)),
  ],
  ids=['0/255 mask', 'negative mask', 'NaN mask', 'soft mask above 1'],
)
def test_care_loss_rejects_mask_values_outside_0_1(mask, value, index):
  with pytest.raises(
    ValueError,
    match=re.escape(
      f'mask values must lie in [0, 1] (binary or soft masks; divide 0/255 masks by '
      f'255), got {value} at index {index}'
    ),
  ):
    care_jax.care_loss(MAPS, mask)


def test_care_loss_rejects_negative_or_non_finite_outer_weights():
  weights = np.ones_like(MASK)
  weights[1, 2, 3] = -0.5
  with pytest.raises(
    ValueError,
    match=re.escape(
      'outer_mask values must lie in [0, inf] (non-negative weights), got -0.5 at index '
      '(1, 2, 3) (1 bad value(s) in all)'
    ),
  ):
    care_jax.care_loss(MAPS, MASK, outer_mask=weights)
  weights[1, 2, 3] = np.inf
  with pytest.raises(ValueError, match=r'outer_mask values .* got inf at index \(1, 2, 3\)'):
    care_jax.care_loss(MAPS, MASK, outer_mask=weights)


def test_care_loss_casts_bool_and_int_masks_and_has_mask():
  expected = care_jax.care_loss(MAPS, MASK)
  assert float(care_jax.care_loss(MAPS, MASK.astype(bool))) == float(expected)
  assert float(care_jax.care_loss(MAPS, MASK.astype(np.uint8))) == float(expected)
  # has_mask of another dtype is cast to bool: 0.5 counts as True.
  np.testing.assert_array_equal(
    care_jax.care_loss_per_example(MAPS, MASK, has_mask=np.array([0.5, 0.0])),
    care_jax.care_loss_per_example(MAPS, MASK, has_mask=np.array([True, False])),
  )


def test_care_loss_values_are_not_checked_under_jit():
  # The documented contract: traced masks cannot be checked by value.
  loss = jax.jit(care_jax.care_loss)(MAPS, MASK * 255)
  assert np.isfinite(float(loss))


def test_nan_in_the_feature_map_gives_a_nan_loss():
  assert np.isnan(float(care_jax.care_loss(MAPS.at[0, 0, 0].set(jnp.nan), MASK)))


@pytest.mark.parametrize(
  'call, message',
  [
    (
      lambda: care_jax.cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3])),
      'labels must be class indices in [0, 3), got 3 at index (1,) (1 bad value(s) in all).',
    ),
    (
      lambda: care_jax.cross_entropy(jnp.zeros((2, 3)), jnp.array([-1, 0])),
      'labels must be class indices in [0, 3), got -1 at index (0,)',
    ),
    (
      lambda: care_jax.weighted_cross_entropy_loss(
        jnp.zeros((2, 3)), jnp.array([0, 7]), class_weights=jnp.ones(3)
      ),
      'labels must be class indices in [0, 3), got 7 at index (1,)',
    ),
    (
      lambda: care_jax.confusion_matrix(jnp.array([0, 5]), jnp.array([0, 1]), num_classes=3),
      'labels must be class indices in [0, 3), got 5 at index (1,)',
    ),
    (
      lambda: care_jax.confusion_matrix(jnp.array([0, 1]), jnp.array([0, -1]), num_classes=3),
      'predictions must be class indices in [0, 3), got -1 at index (1,)',
    ),
    (
      lambda: care_jax.cam(jnp.ones((1, 2, 2, 3)), jnp.ones((3, 2)), jnp.array([2])),
      'labels must be class indices in [0, 2), got 2 at index (0,)',
    ),
    (
      lambda: care_jax.grad_cam(
        lambda a: a.mean(axis=(1, 2)) @ jnp.ones((3, 2)), jnp.ones((1, 2, 2, 3)), jnp.array([2])
      ),
      'labels must be class indices in [0, 2), got 2 at index (0,)',
    ),
  ],
  ids=[
    'cross_entropy label >= K',
    'cross_entropy negative label',
    'weighted_cross_entropy_loss',
    'confusion_matrix label',
    'confusion_matrix prediction',
    'cam',
    'grad_cam',
  ],
)
def test_labels_out_of_range_raise_when_concrete(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_labels_out_of_range_are_not_checked_under_jit():
  # The documented contract: under jit JAX does not raise; the loss is NaN
  # and the confusion matrix leaves the row out.
  ce = jax.jit(care_jax.cross_entropy)(jnp.zeros((2, 3)), jnp.array([0, 3]))
  assert np.isfinite(float(ce[0])) and np.isnan(float(ce[1]))
  confusion = jax.jit(care_jax.confusion_matrix, static_argnames='num_classes')(
    jnp.array([0, 5]), jnp.array([0, 1]), num_classes=3
  )
  assert int(confusion.sum()) == 1


def test_confusion_matrix_rejects_float_labels_and_a_wrong_valid():
  with pytest.raises(ValueError, match='labels must be integer class indices, got dtype float32'):
    care_jax.confusion_matrix(jnp.array([0.0, 1.0]), jnp.array([0, 1]), num_classes=2)
  with pytest.raises(
    ValueError, match=re.escape('valid must have shape [B] = (2,), got shape (3,)')
  ):
    care_jax.confusion_matrix(
      jnp.array([0, 1]), jnp.array([0, 1]), num_classes=2, valid=jnp.ones(3, bool)
    )


@pytest.mark.parametrize(
  'confusion', [[[1, -1], [0, 1]], [[1.5, 0], [0, 1]], [[np.nan, 0], [0, 1]]]
)
def test_classification_metrics_rejects_counts_that_are_not_counts(confusion):
  with pytest.raises(
    ValueError, match=r'confusion must hold non-negative integer counts, got \[\['
  ):
    care_jax.classification_metrics(confusion, class_names=['a', 'b'])


# --- Config and CLI -----------------------------------------------------------


def test_apply_overrides_names_an_unknown_parent_and_a_mistyped_value():
  config = config_lib.default_config()
  with pytest.raises(KeyError, match="unknown config key 'nope.x'"):
    config_lib.apply_overrides(config, ['nope.x=1'])
  with pytest.raises(KeyError, match="unknown config key 'care.alpha.x'"):
    config_lib.apply_overrides(config, ['care.alpha.x=1'])
  with pytest.raises(
    TypeError,
    match=re.escape(
      "config override 'care.alpha=abc': flag --config.care.alpha=abc: could not convert string "
      "to float: 'abc'"
    ),
  ):
    config_lib.apply_overrides(config, ['care.alpha=abc'])


def _parse_config_flags(argv, monkeypatch):
  """Parses argv with `_flags.parse_flags`; returns the message of its flag error."""
  # ml_collections reads the overrides from sys.argv, as under `app.run`.
  monkeypatch.setattr(sys, 'argv', argv)
  name = argv[1].split('=')[0].lstrip('-')
  if name not in flags.FLAGS:  # A flag of its own, unlike any of the entry points'.
    config_flags.DEFINE_config_file(name, None, 'errors_test', lock_config=True)
  with pytest.raises(flags.Error) as error:
    _flags.parse_flags(argv)
  return str(error.value)


@pytest.mark.parametrize(
  'override, message',
  [
    (
      '--errors_config.care.alphaa=1',
      "unknown config key 'alphaa' in "
      '--errors_config.care.alphaa. Did you mean "alpha" instead of "alphaa"?',
    ),
    ('--errors_config.unknown=1', "unknown config key 'unknown' in --errors_config.unknown."),
    (
      '--errors_config.care.alpha=abc',
      "flag --errors_config.care.alpha=abc: could not convert string to float: 'abc'",
    ),
  ],
  ids=['mistyped key', 'unknown key', 'mistyped value'],
)
def test_config_flags_report_unknown_keys_and_bad_values_as_usage_errors(
  override, message, monkeypatch
):
  argv = ['prog', f'--errors_config={paths.REPO / "configs" / "default.py"}', override]
  assert _parse_config_flags(argv, monkeypatch).startswith(message)


@pytest.mark.parametrize('name', ['isic2018', 'rsna_pneumonia', 'nih_chestxray14', 'folder'])
def test_a_missing_data_dir_names_it(tmp_path, name):

  config = config_lib.default_config().data
  config.name, config.dir = name, str(tmp_path / 'nope')
  with pytest.raises(
    ValueError, match=re.escape(f"data.dir='{tmp_path / 'nope'}' is not a directory.")
  ):
    data_info.get_dataset_info(config)


def test_visualize_without_a_checkpoint_says_how_to_make_one(tmp_path):
  with pytest.raises(
    FileNotFoundError,
    match=re.escape(
      f"no checkpoint in '{tmp_path}': {tmp_path / 'checkpoints'} does not exist (train with "
      '`care-jax train --workdir=...` first)'
    ),
  ):
    run_figures.write_figures(str(tmp_path))


@pytest.mark.parametrize(
  'args, message',
  [
    (
      ['experiments', '--suite=nope', '--workdir=unused'],
      'care-jax experiments: flag --suite=nope: value should be one of <table1|',
    ),
    (
      ['boxes'],
      'care-jax boxes: flag --config=None: Flag --config must have a value other than None.'
      ' flag --method=None: Flag --method must have a value other than None.',
    ),
    (
      ['train', '--config=configs/default.py', '--workdir=unused', '--config.care.alphaa=1'],
      "care-jax train: unknown config key 'alphaa' in --config.care.alphaa.",
    ),
  ],
  ids=['experiments unknown suite', 'boxes without flags', 'train unknown config key'],
)
def test_cli_usage_errors_print_one_line_without_a_traceback(args, message):
  proc = _care_jax(*args)
  assert proc.returncode == 2
  (line,) = command_line.error_lines(proc.stderr)
  assert line.startswith(message) and line.endswith(' --helpshort lists the flags)'), line


def _care_jax(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  env.pop('CARE_JAX_TRACEBACK', None)
  return subprocess.run(
    [sys.executable, '-m', 'care_jax.commands.cli', *args],
    cwd=paths.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize(
  'override, message',
  [
    ('care.alpha=2', 'config.care.alpha = 2.0: must lie in [0, 1]'),
    ('data.image_size=0', 'config.data.image_size = 0: must be a positive int'),
    ('model.name=nosuchnet', "config.model.name = 'nosuchnet': must be one of ('tiny_cnn', "),
  ],
  ids=['alpha', 'image_size', 'model name'],
)
def test_train_answers_a_bad_config_value_in_one_line_before_reading_data(
  tmp_path, override, message
):
  proc = _care_jax(
    'train',
    '--config=default',
    f'--workdir={tmp_path / "run"}',
    f'--config.data.cache_dir={tmp_path / "cache"}',
    f'--config.{override}',
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = command_line.error_lines(proc.stderr)
  assert len(lines) == 1 and lines[0].startswith(f'care-jax train: {message}'), proc.stderr[-3000:]
  assert not (tmp_path / 'cache').exists()  # Checked before any data is read.


def test_train_answers_a_missing_image_file_in_one_line(tmp_path):
  lines = ['image,label']
  for i in range(8):
    if i != 5:
      fx.save_image(tmp_path / f'{i}.png', np.full((8, 8), i * 20, np.uint8))
    lines.append(f'{i}.png,{"ab"[i % 2]}')
  fx.write_lines(tmp_path / 'labels.csv', lines)
  proc = _care_jax(
    'train',
    '--config=folder',
    f'--workdir={tmp_path / "run"}',
    f'--config.data.dir={tmp_path}',
    f'--config.data.cache_dir={tmp_path / "cache"}',
    '--config.model.name=tiny_cnn',
    '--config.data.image_size=8',
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert command_line.error_lines(proc.stderr) == [
    f'care-jax train: {tmp_path / "labels.csv"}, line 7: image file {tmp_path / "5.png"} does '
    'not exist (set data.folder.skip_bad_rows=True to skip such rows)'
  ]


# --- Data and builders --------------------------------------------------------


def test_a_corrupt_jpeg_names_the_row_and_the_file(tmp_path):
  from care_jax.data import folder  # pylint: disable=g-import-not-at-top

  lines = ['image,label']
  for i in range(9):
    fx.save_image(tmp_path / f'{i}.jpg', np.zeros((10, 20), np.uint8))
    lines.append(f'{i}.jpg,{"abc"[i % 3]}')
  fx.write_lines(tmp_path / 'labels.csv', lines)
  # Random pixels do not compress: the cut falls in the entropy-coded data.
  fx.save_image(tmp_path / '4.jpg', np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
  data = (tmp_path / '4.jpg').read_bytes()
  (tmp_path / '4.jpg').write_bytes(data[: len(data) // 2])
  builder = folder.from_data_config(fx.data_config('folder', tmp_path, tmp_path / 'cache'))
  with pytest.raises(ValueError, match=r'labels.csv, line 6: cannot decode image .*4\.jpg'):
    builder.download_and_prepare()


# --- Training -----------------------------------------------------------------


def test_eval_batch_size_must_split_over_the_devices_before_training(tmp_path):
  config = config_lib.apply_overrides(
    config_lib.default_config(),
    runs.TINY_DATA + [f'data.dir={tmp_path / "tfds"}', 'train.eval_batch_size=12'],
  )
  with pytest.raises(
    ValueError,
    match=re.escape(
      'config.train.eval_batch_size = 12 must be divisible by the number of devices (8).'
    ),
  ):
    training.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w' / 'checkpoints').exists()  # Nothing was trained.


# --- The table itself ---------------------------------------------------------


def _cited_tests(text: str) -> list[tuple[str, str, str]]:
  """(file, test, parameter id or '') of every `tests/x.py::name[id]` in the text."""
  return re.findall(r'(tests/[\w/]+\.py)::(\w+)(?:\[([^\]]+)\])?', text)


def test_every_test_cited_in_docs_errors_md_exists():
  text = DOC.read_text()
  cited = _cited_tests(text)
  rows = [
    line for line in text.splitlines() if line.startswith('|') and not set(line) <= set('|-: ')
  ]
  body_rows = [row for row in rows if not row.startswith('| Bad input')]
  assert len(body_rows) >= 40
  # Every row cites at least one test.
  assert all(_cited_tests(row) for row in body_rows), [
    row for row in body_rows if not _cited_tests(row)
  ]
  for path, name, param in cited:
    source = (paths.REPO / path).read_text()
    tests = {
      node.name
      for node in ast.walk(ast.parse(source))
      if isinstance(node, ast.FunctionDef) and node.name.startswith('test_')
    }
    assert name in tests, f'{path}::{name} cited in {DOC.name} does not exist'
    # A parameter id is the test's own words: each of its parts is in the file.
    for part in param.split('-') if param else ():
      assert part in source, f'{path}::{name}[{param}]: {part!r} is not in {path}'
