"""Test session set-up: 8 simulated CPU devices, so multi-device code paths run here.

The flag must be set before jax initialises its backends, hence in conftest.
"""

import os

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
# TensorFlow only feeds data: keep it off accelerators and quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

# A script run under a separate torch venv by pretrained_test.py, not a test
# module (and not importable here: no torch in the JAX environment).
collect_ignore = ['torch_reference.py']
