"""`care-jax train`: a packaged config by name from any directory, quiet output, usage errors."""

import json
import os

import pytest

from tests.helpers import command_line
from tests.helpers import paths
from tests.helpers import runs


def _run_cli(*args, cwd=paths.REPO, env=None):
  env = env or dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return command_line.run('care_jax.commands.train', *args, cwd=cwd, env=env, timeout=600)


@pytest.mark.slow
def test_cli_trains_a_packaged_config_by_name_from_any_directory_and_prints_little(tmp_path):
  flags = [f'--config.{o}' for o in runs.TINY_DATA + [f'data.dir={tmp_path / "tfds"}']]
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  proc = _run_cli(
    '--config=synthetic_baseline',
    f'--workdir={tmp_path / "w"}',
    *flags,
    '--config.train.num_steps=3',
    cwd=tmp_path,  # no configs/ folder here: the name finds the packaged file
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.load(open(tmp_path / 'w' / 'metrics.json'))
  assert metrics['step'] == 3
  # Quiet by default: progress bars, our own lines, warnings; no INFO of the libraries below
  # (TensorFlow's C++ prints a few lines on import that no setting of ours can hide).
  output = proc.stdout + proc.stderr
  assert 'Downloading' not in output and 'orbax' not in output
  assert output.count('\n') <= 40, output  # lines as `wc -l` counts them (bars redraw with \r)


def test_cli_rejects_an_unknown_config_key(tmp_path):
  proc = _run_cli(
    '--config=configs/default.py', f'--workdir={tmp_path}', '--config.care.alphaa=0.1'
  )
  assert proc.returncode != 0
  assert 'alphaa' in proc.stderr


def test_cli_rejects_a_wrongly_typed_value(tmp_path):
  proc = _run_cli(
    '--config=configs/default.py', f'--workdir={tmp_path}', '--config.care.alpha=lots'
  )
  assert proc.returncode != 0
  assert 'care.alpha' in proc.stderr


def test_an_unknown_config_name_is_a_usage_error_that_lists_the_names():
  proc = command_line.care_jax('train', '--config=synthetic_cre', '--workdir=unused')
  assert proc.returncode == 1
  assert "FATAL Flags parsing error: --config: config 'synthetic_cre' does not exist" in proc.stderr
  assert 'synthetic_care' in proc.stderr and 'Traceback' not in proc.stderr
