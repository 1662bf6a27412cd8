"""The scripts of benchmarks/: imported as modules (benchmarks/ on the path) or run as programs.

Wall-clock ratios are never asserted (the machine is shared): a smoke run only checks that a
script finishes and ends with a well-formed ratio line.
"""

import importlib
import os
import re
import subprocess
import sys
from types import ModuleType

from tests.helpers import paths

BENCHMARKS = paths.REPO / 'benchmarks'
# The tiny settings of a smoke run of the step benchmarks.
TINY_STEPS = ('--model', 'tiny_cnn', '--image-size', '32', '--batch', '8', '--repeats', '2')


def import_script(name: str) -> ModuleType:
  """benchmarks/NAME.py as a module (its own `import _common` finds its neighbour)."""
  if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
  return importlib.import_module(name)


def run(script, *args):
  """Runs benchmarks/SCRIPT ARGS as a user would (one CPU device); returns its stdout lines."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('XLA_FLAGS', None)  # One CPU device, as a user would run it.
  proc = subprocess.run(
    [sys.executable, str(BENCHMARKS / script), *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout.strip().splitlines()


def ratio(last_line, prefix):
  """The positive number of a `PREFIX: 1.234` line (checks its form, never its value)."""
  match = re.fullmatch(re.escape(prefix) + r': (\d+\.\d{3})', last_line)
  assert match, last_line
  value = float(match.group(1))
  assert value > 0
  return value
