"""Workdirs on other file systems (gs:// on a TPU VM): every file goes through etils.epath.

The `bucket` fixture mocks epath's file system calls so that ``gs://bucket/P``
is the local ``<tmp>/bucket/P``, while the working directory is another one: a
file opened with `open` or `os.path` on the URL (``./gs:/bucket/P``), or a URL
made absolute as a local path, lands outside the bucket and the tests fail.
"""

import csv
import json
import os

from etils import epath
import ml_collections
import numpy as np
from PIL import Image
import pytest

from care_jax import checkpoint
from care_jax import config as config_lib
from care_jax import inference
from care_jax import suites
from care_jax import training
from care_jax.training import outputs as outputs_lib
from tests.helpers import runs

URL = 'gs://bucket/runs/care'
_BACKEND_CALLS = (
  'copy',
  'exists',
  'glob',
  'isdir',
  'listdir',
  'makedirs',
  'mkdir',
  'open',
  'remove',
  'rename',
  'replace',
  'rmtree',
  'stat',
  'walk',
)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The local directory that stands for gs://bucket."""
  root = tmp_path / 'bucket'
  (tmp_path / 'cwd').mkdir()
  monkeypatch.chdir(tmp_path / 'cwd')
  # With TensorFlow installed epath sends gs:// to tf.io.gfile before it looks at the back-end
  # table that mock_epath replaces. Its switch, EPATH_USE_TF, is read once and cached by
  # `_is_tf_installed` (an earlier test in this process may have asked already), so the cached
  # check itself is replaced.
  monkeypatch.setattr(epath.gpath, '_is_tf_installed', lambda: False)

  def local(path):
    path = os.fspath(path)
    return (
      str(root / path.removeprefix('gs://bucket/')) if path.startswith('gs://bucket/') else path
    )

  def redirect(original, *paths, **kwargs):
    return original(*(local(p) for p in paths), **kwargs)

  with epath.testing.mock_epath(**dict.fromkeys(_BACKEND_CALLS, redirect)):
    yield root


class _RecordingWriter:
  """Stands in for the TensorBoard writer, which TensorFlow sends to gs:// itself."""

  logdirs = []

  def __init__(self, logdir):
    self.logdirs.append(logdir)
    self.values = {}

  def scalars(self, values, step):
    self.values.update(values)

  def image(self, tag, image, step):
    pass

  def flush(self):
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    pass


def test_run_outputs_write_every_file_into_a_gs_workdir(bucket, monkeypatch):
  monkeypatch.setattr(outputs_lib.summary, 'SummaryWriter', _RecordingWriter)
  checkpoint.check_writable(URL)
  config = ml_collections.ConfigDict({'seed': 3})
  with outputs_lib.RunOutputs(URL, is_chief=True, start_step=0) as outputs:
    outputs.write_config(config)
    outputs.log_train({'step': 1, 'seconds': 0.5, 'loss': 0.25})
    outputs.log_eval('validation', {'mca': 0.5, 'attention': {'iou': 0.1}}, None, step=1)
    outputs.write_predictions(
      'test',
      ['a.png', 'b.png'],
      {'position': np.array([1, 0]), 'probabilities': np.array([[0.2, 0.8], [0.9, 0.1]])},
      ['benign', 'rare'],
    )
    outputs.write_metrics({'test': {'mca': 0.5}})
  assert _RecordingWriter.logdirs[-1] == URL  # TensorFlow's writer gets the URL as it is
  run = bucket / 'runs' / 'care'
  assert sorted(os.listdir(run)) == sorted(
    ['config.json', 'train_log.jsonl', 'predictions_test.csv', 'metrics.json']
  )
  assert json.loads((run / 'config.json').read_text()) == {'seed': 3}
  assert json.loads((run / 'train_log.jsonl').read_text())['loss'] == 0.25
  with open(run / 'predictions_test.csv', newline='') as f:
    assert list(csv.reader(f))[1:] == [
      ['a.png', 'benign', '0.9', '0.1'],
      ['b.png', 'rare', '0.2', '0.8'],
    ]
  # A resumed run keeps the log records up to its checkpoint.
  with outputs_lib.RunOutputs(URL, is_chief=True, start_step=0) as outputs:
    outputs.log_train({'step': 1, 'seconds': 0.5, 'loss': 0.5})
  assert [json.loads(r)['loss'] for r in (run / 'train_log.jsonl').read_text().splitlines()] == [
    0.5
  ]


def test_checkpoint_dirs_keep_urls_and_make_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(checkpoint.checkpoint_dir(URL)) == f'{URL}/checkpoints'
  assert str(checkpoint.checkpoint_dir('gs://b/run', 'stage1_best')) == 'gs://b/run/stage1_best'
  assert str(checkpoint.checkpoint_dir('runs/x')) == str(tmp_path / 'runs' / 'x' / 'checkpoints')


def test_an_unwritable_remote_workdir_is_an_os_error_naming_it(bucket):
  class PermissionDenied(Exception):  # as tf.errors and google.api_core raise: no OSError
    pass

  def refuse(original, path, *args, **kwargs):
    raise PermissionDenied('403 caller does not have storage.objects.create access')

  with epath.testing.mock_epath(open=refuse):
    with pytest.raises(OSError, match=rf"workdir '{URL}' is not writable \(403 caller"):
      checkpoint.check_writable(URL)
  checkpoint.check_writable(URL)
  assert os.listdir(bucket / 'runs' / 'care') == []  # the probe is removed


def test_a_suite_runs_and_reports_into_a_gs_workdir(bucket, monkeypatch):
  calls = []
  monkeypatch.setattr(training, 'train_and_evaluate', runs.fake_train(calls))
  base = runs.base_config('synthetic_lesions')
  report = suites.run_suite('smoke', base, [0], URL)
  assert sorted(calls) == [(0.0, 0), (0.5, 0)]
  suite = bucket / 'runs' / 'care'
  assert {'report.md', 'report.json', 'report.png', 'baseline', 'CARE'} <= set(os.listdir(suite))
  assert json.loads((suite / 'report.json').read_text()) == json.loads(json.dumps(report))
  with Image.open(suite / 'report.png') as image:
    assert image.format == 'PNG'
  # Finished runs on gs:// are read back, not trained again.
  monkeypatch.setattr(training, 'train_and_evaluate', runs.no_training)
  assert suites.run_suite('smoke', base, [0], URL)['rows'] == report['rows']


def test_predictions_and_overlays_write_to_gs(bucket):
  result = inference.Predictions(
    index=np.array([0, 1]),
    probabilities=np.array([[0.75, 0.25], [0.5, 0.5]], np.float32),
    predictions=np.array([0, 1]),
    maps=np.random.default_rng(0).random((2, 2, 2), np.float32),
    images=np.zeros((2, 8, 8, 3), np.float32),
  )
  data_config = config_lib.default_config().data
  inference.write_predictions(
    'gs://bucket/out/predictions.csv', ['x.png', 'y.png'], result, ['a', 'b']
  )
  inference.write_overlays('gs://bucket/out/attention', ['x', 'sub/y'], result, data_config)
  assert (bucket / 'out' / 'predictions.csv').read_text().splitlines()[1] == 'x.png,a,0.75,0.25'
  with Image.open(bucket / 'out' / 'attention' / 'sub' / 'y.png') as image:
    assert image.format == 'PNG' and image.size == (8, 8)
