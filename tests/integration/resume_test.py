"""Killed runs resume exactly: SIGKILL after a checkpoint, SIGKILL during a write, SIGTERM.

Every run is a `python -m care_jax.commands.train` subprocess on the tiny synthetic data;
the killed-and-resumed run must end with the same parameters (bitwise, CPU)
and the same metrics.json as an uninterrupted run with the same seed.
`train_seconds` (wall clock) and the `seconds` of the log are left out.

Runs written by 0.1 and 0.2 resume with today's code and start stage two from their weights.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from care_jax import checkpoint
from care_jax import config as config_lib
from care_jax import trained_run
from care_jax import training
from care_jax.data import info
from tests.helpers import checkpoints as ckpt_fx
from tests.helpers import paths
from tests.helpers import runs
from tests.helpers import versions

NUM_STEPS = 30
EVERY = 5
# Checkpoint every 5 steps (and keep them all, so the test sees each one).
RUN = runs.TINY_DATA + [
  f'train.num_steps={NUM_STEPS}',
  f'checkpoint.every_steps={EVERY}',
  'checkpoint.keep=100',
  'train.log_every_steps=5',
  # A validation after the switch to stage two (step 15), as synthetic_care's every 50 steps
  # would be in a longer run.
  'train.eval_every_steps=20',
]
# SIGKILLs the process when orbax finalises (renames) the tmp directory of
# step 10: its files are written, the step is not complete.
KILL_AT_FINALIZE = """
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def killing_finalize(self, *args, **kwargs):
  if os.path.basename(str(self.get_final())) == '10':
    os.kill(os.getpid(), signal.SIGKILL)
  return await finalize(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
from care_jax.commands import train
sys.argv = ['care_jax.commands.train'] + sys.argv[1:]
train.run()
"""


def _command(workdir, data_dir, *extra, code=None):
  flags = [f'--config.{o}' for o in RUN + [f'data.dir={data_dir}', *extra]]
  head = [sys.executable, '-c', code] if code else [sys.executable, '-m', 'care_jax.commands.train']
  return head + ['--config=configs/synthetic_care.py', f'--workdir={workdir}', *flags]


def _start(*args, **kwargs):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', XLA_FLAGS='')
  return subprocess.Popen(
    _command(*args, **kwargs),
    cwd=paths.REPO,
    env=env,
    text=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )


def _finish(proc, expected_rc=0):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == expected_rc, (out + err)[-4000:]
  return err


def _complete_steps(workdir):
  directory = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _metrics(workdir):
  metrics = json.load(open(os.path.join(workdir, 'metrics.json')))
  del metrics['train_seconds']  # Wall clock.
  return metrics


def _log(workdir):
  records = [json.loads(line) for line in open(os.path.join(workdir, 'train_log.jsonl'))]
  for record in records:
    del record['seconds']  # Wall clock.
  return records


def _assert_same_run(workdir, reference):
  assert _metrics(workdir) == _metrics(reference)
  assert _log(workdir) == _log(reference)
  _, _, got = trained_run.load_model(str(workdir), which='latest')
  _, _, expected = trained_run.load_model(str(reference), which='latest')
  jax.tree.map(np.testing.assert_array_equal, got, expected)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  root = tmp_path_factory.mktemp('resume')
  data_dir = root / 'tfds'
  # Generate the data once, so the runs only read it.
  info.get_dataset_info(
    config_lib.apply_overrides(config_lib.default_config(), RUN + [f'data.dir={data_dir}']).data
  )
  _finish(_start(root / 'uninterrupted', data_dir))
  return root / 'uninterrupted', data_dir


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_restart_gives_the_uninterrupted_run(
  uninterrupted, tmp_path
):
  reference, data_dir = uninterrupted
  workdir = tmp_path / 'killed'
  proc = _start(workdir, data_dir)
  deadline = time.time() + 300
  while not _complete_steps(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  steps = _complete_steps(workdir)
  assert steps and steps[-1] < NUM_STEPS, f'killed too late: {steps}'
  assert not (workdir / 'metrics.json').exists()

  _finish(_start(workdir, data_dir))
  _assert_same_run(workdir, reference)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_resumes_from_the_last_complete_one(
  uninterrupted, tmp_path
):
  reference, data_dir = uninterrupted
  workdir = tmp_path / 'killed_in_write'
  proc = _start(workdir, data_dir, code=KILL_AT_FINALIZE)
  _finish(proc, expected_rc=-signal.SIGKILL)
  assert _complete_steps(workdir) == [5]
  leftovers = os.listdir(workdir / checkpoint.CHECKPOINT_DIR)
  assert any(d.startswith('10.orbax-checkpoint-tmp') for d in leftovers), leftovers
  assert max(r['step'] for r in _log(workdir)) >= 10  # Trained past the last checkpoint.

  _finish(_start(workdir, data_dir))
  _assert_same_run(workdir, reference)
  assert not any('tmp' in d for d in os.listdir(workdir / checkpoint.CHECKPOINT_DIR))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_with_143(uninterrupted, tmp_path):
  _, data_dir = uninterrupted
  workdir = tmp_path / 'preempted'
  # Long enough to be still training when the signal comes; no periodic saves.
  proc = _start(workdir, data_dir, 'train.num_steps=100000', 'checkpoint.every_steps=0')
  log = workdir / 'train_log.jsonl'
  deadline = time.time() + 300
  while not (log.exists() and log.read_text()) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  err = _finish(proc, expected_rc=128 + signal.SIGTERM)
  steps = _complete_steps(workdir)
  assert len(steps) == 1 and 5 <= steps[0] < 100000
  assert f'SIGTERM: saved the checkpoint of step {steps[0]}' in err

  # The same run, shortened (allowed with a constant learning rate), resumes
  # from that step and finishes.
  _finish(_start(workdir, data_dir, f'train.num_steps={steps[0] + 5}', 'checkpoint.every_steps=0'))
  assert _complete_steps(workdir)[-1] == steps[0] + 5
  logged = [r['step'] for r in _log(workdir)]
  assert logged == sorted(set(logged)) and logged[-1] == steps[0] + 5


def test_a_run_written_by_0_1_resumes_and_starts_stage_two(tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(versions.V0_1_RUN, workdir)
  with open(os.path.join(versions.V0_1_RUN, 'overrides.json')) as f:
    overrides = json.load(f)
  # data.dir may change on resume: keep the generated data out of ~/tensorflow_datasets.
  config = config_lib.apply_overrides(
    config_lib.default_config(), [*overrides, 'train.num_steps=3', f'data.dir={tmp_path / "tfds"}']
  )
  result = training.train_and_evaluate(config, str(workdir))
  assert result['step'] == 3
  with open(workdir / 'train_log.jsonl') as f:
    assert [json.loads(line)['step'] for line in f] == [2, 3]
  saved = trained_run.load_model(versions.V0_1_RUN, which='latest')[2]
  stage2 = training.create_train_state(
    config, training.create_model(config, 5), (32, 32, 3), 3, jax.random.key(1)
  )
  stage2 = trained_run.init_from(versions.V0_1_RUN, stage2)
  ckpt_fx.assert_tree_equal(stage2.params, saved['params'])
  assert int(stage2.step) == 0


def test_a_run_written_by_0_2_resumes_and_starts_stage_two(tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(versions.V0_2_RUN, workdir)
  # data.dir may change on resume: keep the generated data out of ~/tensorflow_datasets.
  config = versions.v0_2_config('train.num_steps=6', f'data.dir={tmp_path / "tfds"}')
  result = training.train_and_evaluate(config, str(workdir))
  assert result['step'] == 6
  with open(workdir / 'train_log.jsonl') as f:
    steps = [json.loads(line)['step'] for line in f]
  assert steps[0] == 4 and steps[-1] == 6
  resumed = trained_run.load_run(str(workdir), which='latest')
  assert (
    resumed.step == 6 and resumed.class_names == trained_run.load_run(versions.V0_2_RUN).class_names
  )
  saved = trained_run.load_model(versions.V0_2_RUN)[2]
  stage2 = training.create_train_state(
    config, training.create_model(config, 5), (32, 32, 3), 6, jax.random.key(1)
  )
  stage2 = trained_run.init_from(versions.V0_2_RUN, stage2)
  ckpt_fx.assert_tree_equal(stage2.params, saved['params'])
  assert int(stage2.step) == 0
