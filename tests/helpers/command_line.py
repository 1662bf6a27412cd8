"""The commands as a user runs them: a fresh Python, from the clone's root, output captured.

`train_synthetic_care` is the session fixture `care_jax_train_run` of tests/conftest.py: one
``care-jax train`` run as a user makes it, whose output and workdir several tests check.
"""

import os
import pathlib
import re
import subprocess
import sys
from typing import NamedTuple

from tests.helpers import paths
from tests.helpers import runs


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


def user_environment() -> dict[str, str]:
  """This environment less what tests/conftest.py sets and a user does not: no TensorFlow log
  level, no 8 simulated devices."""
  return {k: v for k, v in os.environ.items() if k not in ('TF_CPP_MIN_LOG_LEVEL', 'XLA_FLAGS')}


class TrainedByCommand(NamedTuple):
  workdir: pathlib.Path
  proc: subprocess.CompletedProcess


def train_synthetic_care(root: pathlib.Path) -> TrainedByCommand:
  """``care-jax train --config=synthetic_care`` for 6 steps on `runs.TINY_DATA` (records logged
  at steps 3 and 6), started in `root` (no configs/ folder there: the name finds the packaged
  file) with `user_environment`."""
  flags = [f'--config.{o}' for o in runs.TINY_DATA + [f'data.dir={root / "tfds"}']]
  workdir = root / 'w'
  proc = care_jax(
    'train',
    '--config=synthetic_care',
    f'--workdir={workdir}',
    *flags,
    '--config.train.log_every_steps=3',
    cwd=root,
    env=user_environment(),
    timeout=600,
  )
  return TrainedByCommand(workdir, proc)
