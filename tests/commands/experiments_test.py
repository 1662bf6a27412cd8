"""`care-jax experiments`: the smoke suite end to end."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import paths


@pytest.mark.slow
def test_smoke_suite_end_to_end_through_the_care_jax_command(tmp_path):
  tiny = [
    'data.image_size=32',
    'data.synthetic.image_size=32',
    'data.synthetic.train_counts=(24,24,8,24,8)',
    'data.synthetic.validation_counts=(4,4,4,4,4)',
    'data.synthetic.test_counts=(6,6,5,6,5)',
    'train.batch_size=16',
    'train.eval_batch_size=16',
    'train.num_steps=4',
    'train.log_every_steps=2',
    'train.progress=False',
    f'data.dir={tmp_path / "tfds"}',
  ]
  workdir = tmp_path / 'smoke'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'care_jax.commands.cli',
      'experiments',
      '--suite=smoke',
      '--seeds=0',
      f'--workdir={workdir}',
      *[f'--config.{o}' for o in tiny],
    ],
    cwd=paths.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  for row, alpha in (('baseline', 0.0), ('CARE', 0.5)):
    metrics = json.loads((workdir / row / 'seed_0' / 'metrics.json').read_text())
    assert metrics['step'] == 4 and 0.0 <= metrics['test']['mca'] <= 1.0
    config = json.loads((workdir / row / 'seed_0' / 'config.json').read_text())
    assert config['care']['alpha'] == alpha and config['data']['image_size'] == 32
  report = json.loads((workdir / 'report.json').read_text())
  assert list(report['rows']) == ['baseline', 'CARE'] and report['seeds'] == [0]
  assert report['rows']['CARE']['mca']['mean'] == pytest.approx(
    json.loads((workdir / 'CARE' / 'seed_0' / 'metrics.json').read_text())['test']['mca']
  )
  assert '| CARE vs baseline | 1 |' in (workdir / 'report.md').read_text()
  assert (workdir / 'report.png').stat().st_size > 0
  assert '| CARE vs baseline |' in proc.stdout  # the report is printed too
