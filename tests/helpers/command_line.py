"""The commands as a user runs them: a fresh Python, from the clone's root, output captured."""

import re
import subprocess
import sys

from tests.helpers import paths


def run_python(*args: str, cwd=paths.REPO, env=None, timeout: float = 300):
  """Runs ``python ARGS`` (e.g. ``-c CODE``); returns the `subprocess.CompletedProcess`."""
  return subprocess.run(
    [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )


def run(module: str, *args: str, **kwargs):
  """Runs ``python -m MODULE ARGS``; returns the `subprocess.CompletedProcess`."""
  return run_python('-m', module, *args, **kwargs)


def care_jax(*args: str, **kwargs) -> subprocess.CompletedProcess:
  """Runs ``care-jax ARGS`` (``python -m care_jax.commands.cli``)."""
  return run('care_jax.commands.cli', *args, **kwargs)


def error_lines(stderr: str) -> list[str]:
  """stderr less the log lines of absl and of TensorFlow's C++ start-up."""
  return [
    line
    for line in stderr.splitlines()
    if not re.match(r'[IWEF]\d{4} |WARNING: All log messages before absl', line)
  ]
