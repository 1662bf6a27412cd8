"""What a user sees first: `--help` without TensorFlow, and runs without library start-up noise.

TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL in TF 2.21 and its GPU probe logs a
cuInit error on a machine without CUDA (care_jax/data/_tensorflow.py filters both); tfds's
auto-cache made tf.data warn about truncation when a pass stopped early
(care_jax/data/reading.py); orbax warns for every read-only checkpoint manager
(care_jax/checkpoint.py). The runs below use the default log level, as a user's do.
"""

import re

import pytest

from tests.helpers import command_line

# Runs `care-jax ARGS` in this process, then prints whether TensorFlow was imported.
_IMPORTS_TENSORFLOW = """
import runpy, sys
sys.argv = ['care-jax'] + sys.argv[1:]
try:
  runpy.run_module('care_jax.commands.cli', run_name='__main__', alter_sys=True)
except SystemExit:
  pass
print('TENSORFLOW IMPORTED:', 'tensorflow' in sys.modules)
"""
# A line of C++ logging (absl/TSL: severity letter, MMDD, time, thread, C++ file:line]), abseil's
# notice above its start-up lines, or a CUDA probe.
_CPP_LOG_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+\.(cc|cpp|h):\d+\]', re.M)
_NOISE = ('absl::InitializeLog', 'cuInit', 'cuda_', 'did not fully read', 'read only')


_default_env = command_line.user_environment


def _noise_in(output: str) -> list[str]:
  lines = output.splitlines()
  return [line for line in lines if _CPP_LOG_LINE.match(line) or any(n in line for n in _NOISE)]


@pytest.mark.parametrize('command', ['train', 'visualize', 'boxes'])
def test_help_does_not_import_tensorflow(command):
  proc = command_line.run_python('-c', _IMPORTS_TENSORFLOW, command, '--help', env=_default_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'TENSORFLOW IMPORTED: False' in proc.stdout, proc.stdout[-3000:]
  assert not _noise_in(proc.stderr), proc.stderr


def test_loading_tensorflow_prints_no_start_up_lines_at_the_default_level_and_skips_keras():
  code = (
    'import sys; from care_jax.data._tensorflow import tf; tf.constant(1.0); '
    "print('KERAS IMPORTED:', 'keras' in sys.modules, 'sklearn' in sys.modules)"
  )
  proc = command_line.run_python('-c', code, env=_default_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not _noise_in(proc.stderr), proc.stderr
  assert 'KERAS IMPORTED: False False' in proc.stdout, proc.stdout


def test_log_level_0_still_shows_tensorflows_start_up_lines():
  proc = command_line.run_python(
    '-c',
    'from care_jax.data._tensorflow import tf',
    env=dict(_default_env(), TF_CPP_MIN_LOG_LEVEL='0'),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _CPP_LOG_LINE.search(proc.stderr), proc.stderr


@pytest.mark.slow
def test_train_then_evaluate_print_no_library_start_up_noise(care_jax_train_run, tmp_path):
  workdir, train = care_jax_train_run  # tests/helpers/command_line.py: train_synthetic_care
  assert train.returncode == 0, train.stderr[-3000:]
  assert not _noise_in(train.stderr + train.stdout), train.stderr
  # A short run's whole output fits a screen: no tfds bars while the data are prepared, and
  # the result (the headlines and the paths) comes last.
  assert (train.stderr + train.stdout).count('\n') <= 30, train.stderr + train.stdout
  assert train.stdout.splitlines()[-1] == f'metrics: {workdir / "metrics.json"}', train.stdout
  evaluate = command_line.care_jax(
    'evaluate',
    f'--workdir={workdir}',
    '--split=test',
    f'--output={tmp_path / "evaluation.json"}',
    cwd=tmp_path,
    env=_default_env(),
  )
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert not _noise_in(evaluate.stderr + evaluate.stdout), evaluate.stderr
