"""Smoke run of benchmarks/boxes.py with tiny settings."""

import os
import subprocess
import sys

import pytest

from tests.helpers import paths


@pytest.mark.slow
def test_benchmark_script_runs_with_tiny_settings(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      str(paths.REPO / 'benchmarks' / 'boxes.py'),
      '--image-size=32',
      '--train-counts=6,6,4,6,4',
      '--stage1-steps=3',
      '--repeats=1',
      f'--data-dir={tmp_path}',
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert any(line.startswith('otsu (log red/green)') for line in lines)
  assert any(line.startswith('grad_cam') for line in lines)
  assert lines[-1].startswith('best mean IoU (rare-class train): ')
