"""One owner of the accelerator: JAX starts its backends before TensorFlow is imported.

On a GPU host, TensorFlow imported first loads its own CUDA libraries into the process, and JAX's
cuDNN then fails (jax-ml/jax#9454). care_jax/data/_tensorflow.py starts JAX's backends and then
imports TensorFlow; every module imports TensorFlow from there. Each run below stops the process
at its first import of TensorFlow, after recording whether JAX's backends had started: cheap,
and the order it checks is the same on a CPU host as on a GPU host.
"""

import ast
import os
import subprocess
import sys

import pytest

from tests.helpers import paths
from tests.helpers import runs

TENSORFLOW_HOME = paths.REPO / 'care_jax' / 'data' / '_tensorflow.py'
MARK = 'TENSORFLOW FIRST IMPORTED; JAX BACKENDS STARTED:'
# Runs sys.argv[1:] (a module or a script, with its arguments) and exits at the first import of
# tensorflow, printing whether JAX's backends had started by then.
_STOP_AT_TENSORFLOW = f"""
import importlib.abc, importlib.util, os, runpy, sys
class StopAtTensorflow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  # Stops when tensorflow's code would run, not when it is only looked for (etils.epath's
  # find_spec('tensorflow') imports nothing).
  def find_spec(self, name, path, target=None):
    return importlib.util.spec_from_loader(name, self) if name == 'tensorflow' else None
  def exec_module(self, module):
    from jax._src import xla_bridge
    print({MARK!r}, xla_bridge.backends_are_initialized(), flush=True)
    os._exit(0)
sys.meta_path.insert(0, StopAtTensorflow())
sys.argv = sys.argv[1:]
if sys.argv[0].endswith('.py'):
  runpy.run_path(sys.argv[0], run_name='__main__')
else:
  runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""
_TRAIN_AND_EVALUATE = """
import pathlib, sys
from care_jax import training
from tests.helpers import runs
tmp = pathlib.Path(sys.argv[1])
training.train_and_evaluate(runs.tiny_config(tmp), str(tmp / 'run'))
"""


def _first_tensorflow_import(*argv: str) -> str:
  """Runs a module or script (argv) under the stop hook; returns its mark line."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  proc = subprocess.run(
    [sys.executable, '-c', _STOP_AT_TENSORFLOW, *argv],
    cwd=paths.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  marks = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
  assert marks, f'tensorflow was never imported (exit {proc.returncode}): {proc.stderr[-3000:]}'
  return marks[0]


def _tiny_flags(tmp_path) -> list[str]:
  return [f'--config.{o}' for o in runs.TINY_DATA + [f'data.dir={tmp_path / "tfds"}']]


def test_no_module_but_the_tensorflow_home_imports_tensorflow():
  offenders = []
  for path in sorted((paths.REPO / 'care_jax').rglob('*.py')):
    if path == TENSORFLOW_HOME:
      continue
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = []
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module or '']
      if any(name == 'tensorflow' or name.startswith('tensorflow.') for name in names):
        offenders.append(f'{path.relative_to(paths.REPO)}:{node.lineno}')
  assert not offenders, f'import TensorFlow from care_jax.data._tensorflow instead: {offenders}'


def test_the_tensorflow_home_starts_jax_first():
  mark = _first_tensorflow_import('care_jax.data._tensorflow')
  assert mark == f'{MARK} True'


@pytest.mark.parametrize(
  'command',
  [
    ['train', '--config=synthetic_baseline'],
    ['compare', '--configs=synthetic_baseline', '--seeds=0-0'],
    ['experiments', '--suite=smoke', '--seeds=0'],
    ['boxes', '--method=otsu', '--config=synthetic_care'],
  ],
  ids=lambda command: command[0],
)
def test_commands_that_read_data_start_jax_before_tensorflow(command, tmp_path):
  out = [f'--out={tmp_path / "boxes.csv"}'] if command[0] == 'boxes' else []
  workdir = [] if command[0] == 'boxes' else [f'--workdir={tmp_path / "w"}']
  mark = _first_tensorflow_import(
    'care_jax.commands.cli', *command, *workdir, *out, *_tiny_flags(tmp_path)
  )
  assert mark == f'{MARK} True'


def test_train_and_evaluate_starts_jax_before_tensorflow(tmp_path):
  script = tmp_path / 'train.py'
  script.write_text(_TRAIN_AND_EVALUATE)
  mark = _first_tensorflow_import(str(script), str(tmp_path))
  assert mark == f'{MARK} True'


@pytest.mark.slow
@pytest.mark.parametrize(
  'command',
  [
    ['evaluate', '--split=test'],
    ['predict', '--input={root}/test', '--output={tmp}/p.csv'],
    ['visualize', '--num_images=1', '--out_dir={tmp}/figures'],
  ],
  ids=lambda command: command[0],
)
def test_commands_on_a_trained_run_start_jax_before_tensorflow(command, folder_run, tmp_path):
  args = [a.format(root=folder_run.root, tmp=tmp_path) for a in command]
  mark = _first_tensorflow_import('care_jax.commands.cli', *args, f'--workdir={folder_run.workdir}')
  assert mark == f'{MARK} True'
