"""Two processes on localhost (CPU collectives) train like one process on the same global batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from care_jax import config as config_lib
from care_jax.data import info as data_info
from tests.helpers import paths
from tests.helpers import runs


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(flags, workdir, devices, *extra):
  env = dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL='3',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
    # Not the suite's compilation cache (tests/conftest.py): two CPU processes that both load
    # their step from it hang in the step's first collective (seen with jax 0.12.1), while both
    # compiling it works. A cold cache, as in CI, hides this; a warm local one does not.
    JAX_ENABLE_COMPILATION_CACHE='false',
  )
  return subprocess.Popen(
    [
      sys.executable,
      '-m',
      'care_jax.commands.train',
      '--config=configs/synthetic_care.py',
      f'--workdir={workdir}',
      *flags,
      *extra,
    ],
    cwd=paths.REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait(proc):
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-4000:]


@pytest.mark.slow
def test_two_processes_follow_the_single_process_loss_trajectory(tmp_path):
  # The attention loss from step 0, so the six steps exercise all of it.
  overrides = runs.TINY_DATA + [
    f'data.dir={tmp_path / "tfds"}',
    'train.num_steps=6',
    'care.protocol=from_step',
  ]
  # Generate the data once, so the processes only read it.
  data_info.get_dataset_info(
    config_lib.apply_overrides(config_lib.default_config(), overrides).data
  )
  flags = [f'--config.{o}' for o in overrides]

  _wait(_launch(flags, tmp_path / 'one', 4))
  port = _free_port()
  procs = [
    _launch(
      flags,
      tmp_path / 'two',
      2,
      f'--coordinator_address=127.0.0.1:{port}',
      '--num_processes=2',
      f'--process_id={i}',
    )
    for i in range(2)
  ]
  for proc in procs:
    _wait(proc)

  def log(name):
    return [json.loads(line) for line in open(tmp_path / name / 'train_log.jsonl')]

  one, two = log('one'), log('two')
  assert [r['step'] for r in one] == [r['step'] for r in two] == [2, 4, 6]
  for key in ('loss', 'ce', 'care', 'accuracy', 'boxed'):
    np.testing.assert_allclose(
      [r[key] for r in two], [r[key] for r in one], rtol=1e-5, atol=1e-6, err_msg=key
    )
  metrics_one = json.load(open(tmp_path / 'one' / 'metrics.json'))
  metrics_two = json.load(open(tmp_path / 'two' / 'metrics.json'))
  for split in ('validation', 'test'):
    assert metrics_two[split]['confusion'] == metrics_one[split]['confusion']


def test_manual_launch_flags_must_come_together(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'care_jax.commands.train',
      '--config=configs/default.py',
      f'--workdir={tmp_path}',
      '--coordinator_address=127.0.0.1:1234',
    ],
    cwd=paths.REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  assert '--num_processes and --process_id go together' in proc.stderr
