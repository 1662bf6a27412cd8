"""`care-jax compare`: config names, seed ranges and config overrides."""

import json
import subprocess
import sys

import pytest

from tests.helpers import runs


@pytest.mark.slow
def test_compare_command_takes_names_seed_ranges_and_config_overrides(tmp_path):
  overrides = runs.TINY_DATA + [f'data.dir={tmp_path / "tfds"}', 'train.num_steps=2']
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'care_jax.commands.cli',
      'compare',
      f'--workdir={tmp_path / "cmp"}',
      '--configs=synthetic_baseline',
      '--seeds=0-0',
      *[f'--config.{o}' for o in overrides[:-1]],
      '--set=train.num_steps=2',  # the deprecated spelling still works, with a warning
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '--set=KEY=VALUE is deprecated' in proc.stderr
  metrics = json.load(open(tmp_path / 'cmp' / 'synthetic_baseline' / 'seed_0' / 'metrics.json'))
  assert metrics['step'] == 2
  config = json.load(open(tmp_path / 'cmp' / 'synthetic_baseline' / 'seed_0' / 'config.json'))
  assert config['data']['image_size'] == 32
  assert '| synthetic_baseline |' in proc.stdout
