"""Test session set-up: 8 simulated CPU devices, so multi-device code paths run here.

The flag must be set before jax initialises its backends, hence in conftest.
"""

import fcntl
import os
import pathlib

import pytest

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  ).strip()
# TensorFlow only feeds data: keep it off accelerators and quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

# A script run under a separate torch venv by pretrained_test.py, not a test
# module (and not importable here: no torch in the JAX environment).
collect_ignore = ['torch_reference.py']


@pytest.fixture(scope='session')
def torch_python() -> pathlib.Path:
  """The Python of .torch-venv (3.11, torch 2.13.0 CPU, safetensors, numpy), made once.

  pretrained_test.py's helpers make and cache it (skipping, outside CI, where no Python 3.11
  exists); the lock serialises pytest-xdist workers.
  """
  import pretrained_test  # pylint: disable=g-import-not-at-top

  pretrained_test.TORCH_VENV.mkdir(exist_ok=True)
  with open(pretrained_test.TORCH_VENV / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    return pretrained_test._torch_venv_python()  # pylint: disable=protected-access
