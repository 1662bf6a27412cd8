"""The benchmark scripts: their shared helpers, and smoke runs of each script.

Wall-clock ratios are never asserted (the machine is shared); the smoke runs
only check that each script finishes and ends with a well-formed ratio line.
"""

import csv
import os
import pathlib
import re
import subprocess
import sys

import data_fixtures as fx
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from care_jax import models
from care_jax.data import info as data_info

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import _common  # noqa: E402  (benchmarks/ is put on the path first)
import shortcut_folder  # noqa: E402


def test_random_batch_boxes_one_rectangle_per_boxed_image():
  batch = _common.random_batch(
    batch_size=12, image_size=64, num_classes=7, boxed_fraction=0.33, seed=3
  )
  assert batch['image'].shape == (12, 64, 64, 3) and batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32 and set(batch['label']) <= set(range(7))
  np.testing.assert_array_equal(batch['has_mask'], np.arange(12) < 4)  # round(0.33 * 12)
  for mask, boxed in zip(batch['mask'], batch['has_mask']):
    if not boxed:
      assert not mask.any()
      continue
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    # A filled axis-aligned rectangle with sides in [S/8, S/2].
    assert mask.sum() == len(rows) * len(cols)
    assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
    assert 8 <= len(rows) <= 32 and 8 <= len(cols) <= 32


def test_random_batch_rejects_a_boxed_fraction_outside_0_1():
  with pytest.raises(ValueError, match='boxed_fraction'):
    _common.random_batch(batch_size=4, image_size=32, num_classes=2, boxed_fraction=1.5)


def test_compiled_stats_of_a_donated_matmul():
  n = 64
  compiled = (
    jax.jit(lambda a, b: a @ b + a, donate_argnums=0)
    .lower(jnp.ones((n, n)), jnp.ones((n, n)))
    .compile()
  )
  stats = _common.compiled_stats(compiled)
  assert stats['flops'] >= 2 * n**3  # the matmul's multiply-adds (plus the add)
  assert stats['argument_bytes'] == 2 * n * n * 4
  assert stats['output_bytes'] == n * n * 4
  assert stats['alias_bytes'] == n * n * 4  # the output reuses the donated `a`


def test_time_alternating_runs_the_steps_in_turn_on_fresh_arguments():
  calls, made = [], []

  def make_args(name):
    made.append(name)
    return (jnp.float32(len(made)),)

  steps = {
    name: (
      lambda x, name=name: calls.append((name, float(x))) or x,
      lambda name=name: make_args(name),
    )
    for name in ('a', 'b')
  }
  timings = _common.time_alternating(steps, repeats=3, warmup=1)
  assert [name for name, _ in calls] == ['a', 'b'] * 4
  # Every run got the arguments made just before it.
  assert [x for _, x in calls] == list(range(1, 9))
  assert all(len(t.wall) == len(t.cpu) == 3 for t in timings.values())
  assert all(s >= 0 for t in timings.values() for s in t.wall + t.cpu)


def test_format_table_aligns_columns():
  table = _common.format_table(['', 'x', 'yy'], [['row', '1.0', '22.5'], ['r', '10.25', '3']])
  assert table.splitlines() == [
    '         x    yy',
    '---  -----  ----',
    'row    1.0  22.5',
    'r    10.25     3',
  ]


def _tiny_steps(nan_image=False):
  model = models.get_model('tiny_cnn', num_classes=3)
  batch = _common.random_batch(
    batch_size=8, image_size=32, num_classes=3, boxed_fraction=0.5, seed=1
  )
  if nan_image:
    batch['image'][0, 0, 0, 0] = np.nan
  state = _common.create_state(model, (32, 32, 3), seed=0)
  return state, _common.compile_steps(model, state, jax.device_put(batch), alpha=0.5)


def test_compile_steps_donates_copies_and_keeps_the_initial_state():
  state, steps = _tiny_steps()
  state_bytes = sum(jnp.asarray(x).nbytes for x in jax.tree.leaves(state))
  for name in _common.STEPS:
    # The whole state is donated: the new state reuses its buffers.
    assert steps.stats[name]['alias_bytes'] == state_bytes
    for _ in range(2):
      jax.block_until_ready(steps.compiled[name](*steps.fresh_args()))
  # Runs donate copies, never the initial state itself.
  assert not any(x.is_deleted() for x in jax.tree.leaves(steps.state) if isinstance(x, jax.Array))
  assert steps.step_configs['ce'].alpha == 0.0 and steps.step_configs['care'].alpha == 0.5


def test_compile_steps_rejects_a_step_with_non_finite_metrics():
  with pytest.raises(FloatingPointError, match='non-finite'):
    _tiny_steps(nan_image=True)


def _run(script, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('XLA_FLAGS', None)  # One CPU device, as a user would run it.
  proc = subprocess.run(
    [sys.executable, str(BENCHMARKS / script), *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout.strip().splitlines()


def _ratio(last_line, prefix):
  match = re.fullmatch(re.escape(prefix) + r': (\d+\.\d{3})', last_line)
  assert match, last_line
  value = float(match.group(1))
  assert value > 0
  return value


def test_step_overhead_runs_and_prints_the_ratio_last():
  lines = _run(
    'step_overhead.py',
    '--model',
    'tiny_cnn',
    '--image-size',
    '32',
    '--batch',
    '8',
    '--repeats',
    '2',
  )
  _ratio(lines[-1], 'care/ce step time ratio')
  assert any(line.startswith('temp memory (MiB)') for line in lines)


def test_gpu_benchmark_runs_on_cpu_and_prints_the_ratio_last():
  lines = _run(
    'gpu.py',
    '--model',
    'tiny_cnn',
    '--image-size',
    '32',
    '--batch',
    '8',
    '--repeats',
    '2',
    '--matmul-size',
    '256',
  )
  _ratio(lines[-1], 'care/ce images/s ratio')
  assert any(line.startswith('achieved TFLOP/s') for line in lines)


def test_conv_forms_times_each_convolution_of_the_model_and_prints_the_ratio_last():
  # ResNet-18 at 32x32: layer4's 3x3 convolutions have 1x1 outputs (patch form), the stem and
  # layer1 large ones (XLA's form); 1x1 shortcuts take the patch form.
  lines = _run(
    'conv_forms.py', '--model', 'resnet18', '--image-size', '32', '--batch', '2', '--repeats', '1'
  )
  _ratio(lines[-1], 'conv time, xla form / chosen forms')
  rows = [line.split() for line in lines if line.endswith((' xla', ' patch'))]
  chosen = {' '.join(row[:4]): row[-1] for row in rows}
  assert len(rows) == 11  # The distinct convolutions of ResNet-18.
  assert chosen['32x32x3 -> 64, 7x7/2'] == 'xla'
  assert chosen['1x1x512 -> 512, 3x3/1'] == 'patch'
  assert chosen['4x4x128 -> 256, 1x1/2'] == 'patch'


def test_device_augment_times_the_steps_with_and_without_it_and_prints_the_share_last():
  lines = _run(
    'device_augment.py',
    '--model',
    'tiny_cnn',
    '--image-size',
    '32',
    '--batch',
    '8',
    '--repeats',
    '2',
  )
  # A share may come out negative on a busy machine: the sign is not checked.
  assert re.fullmatch(r'device augmentation / step: -?\d+\.\d{3}%', lines[-1]), lines[-1]
  assert re.fullmatch(r'augmentation alone / ce step: \d+\.\d{3}%', lines[-2]), lines[-2]
  rows = {line.split()[0] for line in lines if line.startswith(('ce', 'care', 'augment alone'))}
  assert {'ce', 'ce+augment', 'care', 'care+augment', 'augment'} <= rows


def test_device_augment_inputs_follow_the_contract():
  import device_augment  # pylint: disable=g-import-not-at-top

  batch = device_augment.random_augment_inputs(
    batch_size=6, image_size=16, num_classes=3, num_boxes=2, boxed_fraction=0.5, seed=0
  )
  assert batch['image'].dtype == np.uint8 and batch['image'].shape == (6, 16, 16, 3)
  assert batch['geometry'].shape == (6, 3, 3) and batch['color'].shape == (6, 4)
  np.testing.assert_array_equal(batch['geometry'][:, 2], np.tile([0.0, 0.0, 1.0], (6, 1)))
  # The crop lies inside the image: the output's corners map into [0, 1]^2 (up to rotation
  # about the crop's centre, which keeps the centre's image inside).
  centre = batch['geometry'][:, :2] @ np.array([0.5, 0.5, 1.0])
  assert np.all((centre >= 0) & (centre <= 1))
  np.testing.assert_array_equal(batch['box_count'] > 0, np.arange(6) < 3)
  assert np.all(batch['box_count'] <= 2)
  boxes = batch['boxes']
  assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[..., 2:] > boxes[..., :2])


def test_device_augment_benchmark_imports_no_tensorflow():
  code = (
    'import sys; sys.path.insert(0, sys.argv[1]); import device_augment; '
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch')); "
    'assert not bad, bad'
  )
  subprocess.run([sys.executable, '-c', code, str(BENCHMARKS)], check=True, timeout=120)


def test_benchmarks_import_no_tensorflow():
  # gpu.py must run on accelerator images that have no TensorFlow.
  code = (
    'import sys; sys.path.insert(0, sys.argv[1]); import conv_forms, gpu, step_overhead; '
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
    "('tensorflow', 'tensorflow_datasets', 'torch')); "
    'assert not bad, bad'
  )
  subprocess.run([sys.executable, '-c', code, str(BENCHMARKS)], check=True, timeout=120)


def test_shortcut_folder_writes_a_folder_dataset_with_a_train_only_shortcut(tmp_path):
  counts = {
    'train': {'annular': 20, 'macule': 20, 'stellate': 10, 'targetoid': 10},
    'validation': dict.fromkeys(shortcut_folder.CLASS_NAMES, 3),
    'test': dict.fromkeys(shortcut_folder.CLASS_NAMES, 5),
  }
  kwargs = dict(seed=3, image_size=32, counts=counts, artefact_rate_common_train=0.1)
  records = shortcut_folder.write_dataset(tmp_path / 'a', **kwargs)
  root = tmp_path / 'a'
  with open(root / 'labels.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['image'], r['label'], r['split']) for r in rows] == [
    (r['image'], r['label'], r['split']) for r in records
  ]
  for split, expected in counts.items():
    got = {name: sum(r['split'] == split and r['label'] == name for r in rows) for name in expected}
    assert got == expected, split
  # A box for every rare-class training image and no other, inside the image, = the lesion's.
  with open(root / 'boxes.csv') as f:
    boxes = {
      row['image']: tuple(int(row[c]) for c in ('xmin', 'ymin', 'xmax', 'ymax'))
      for row in csv.DictReader(f)
    }
  rare_train = [r for r in records if r['rare'] and r['split'] == 'train']
  assert boxes == {r['image']: r['lesion_box'] for r in rare_train}
  assert all(0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32 for x0, y0, x1, y1 in boxes.values())
  # The sticker: the image's only strongly blue pixels, where the metadata says; on most rare
  # training images, rarely elsewhere, never on the lesion box.
  for r in records:
    pixels = np.asarray(Image.open(root / r['image'])).astype(int)
    blue = pixels[..., 2] - pixels[..., 0] > 60
    if r['sticker_box'] is None:
      assert not blue.any(), r['image']
    else:
      x0, y0, x1, y1 = r['sticker_box']
      inside = blue[y0:y1, x0:x1].sum()
      assert inside > 0 and blue.sum() == inside, r['image']  # (hairs may cross it)
      lx0, ly0, lx1, ly1 = r['lesion_box']
      assert x1 <= lx0 or x0 >= lx1 or y1 <= ly0 or y0 >= ly1
  rate = {
    group: np.mean([r['sticker_box'] is not None for r in records if key(r)])
    for group, key in {
      'rare_train': lambda r: r['rare'] and r['split'] == 'train',
      'common_train': lambda r: not r['rare'] and r['split'] == 'train',
      'eval': lambda r: r['split'] != 'train',
    }.items()
  }
  assert rate['rare_train'] >= 0.8 and rate['common_train'] <= 0.2 and rate['eval'] <= 0.2, rate
  # Deterministic from the seed; without the artefact the same images, less the stickers.
  again = shortcut_folder.write_dataset(tmp_path / 'b', **kwargs)
  assert again == records
  plain = shortcut_folder.write_dataset(tmp_path / 'c', **kwargs, artefact=False)
  assert all(r['sticker_box'] is None for r in plain)
  for r in records:
    a, b, c = (np.asarray(Image.open(tmp_path / d / r['image'])) for d in 'abc')
    np.testing.assert_array_equal(a, b)
    if r['sticker_box'] is None:
      np.testing.assert_array_equal(a, c)
  other = shortcut_folder.write_dataset(tmp_path / 'd', **{**kwargs, 'seed': 4})
  assert [r['lesion_box'] for r in other] != [r['lesion_box'] for r in records]
  # The library's folder reader opens it; the rare classes are those with boxes.
  info = data_info.get_dataset_info(fx.data_config('folder', root, tmp_path / 'cache'))
  assert info.class_names == shortcut_folder.CLASS_NAMES
  assert [info.class_names[i] for i in info.rare_classes] == list(shortcut_folder.RARE_CLASSES)
  assert info.split_sizes == {split: sum(c.values()) for split, c in counts.items()}
  assert info.train_class_counts.tolist() == [counts['train'][n] for n in info.class_names]


def test_shortcut_folder_trains_with_configs_folder_and_only_the_named_overrides():
  common = dict(data_dir='/d', seed=1, num_steps=10, image_size=64, model='tiny_cnn')
  base = shortcut_folder.train_command('baseline', workdir='/w/b', **common)
  care = shortcut_folder.train_command('care', workdir='/w/c', **common)
  assert base[1:4] == ['-m', 'care_jax.commands.train', f'--config={shortcut_folder.CONFIG}']
  overrides = [
    '--config.data.dir=/d',
    '--config.data.image_size=64',
    '--config.model.name=tiny_cnn',
    '--config.train.num_steps=10',
    '--config.seed=1',
  ]
  assert base[4:] == ['--workdir=/w/b', *overrides, '--config.care.alpha=0.0']
  assert care[4:] == ['--workdir=/w/c', *overrides]
  results = {
    'baseline': {0: {'rare_recall': 0.2, 'mca': 0.5}, 1: {'rare_recall': 0.4, 'mca': 0.6}},
    'care': {0: {'rare_recall': 0.5, 'mca': 0.7}, 1: {'rare_recall': 0.3, 'mca': 0.6}},
  }
  summary = shortcut_folder.summarize(results, [0, 1])
  assert summary['baseline']['rare_recall'] == [0.2, 0.4]
  assert summary['care']['mean_mca'] == pytest.approx(0.65)
  assert summary['mean_diff'] == pytest.approx({'rare_recall': 0.1, 'mca': 0.1})
