"""`care-jax predict`: bad input answered in one line."""

import subprocess
import sys

from tests.helpers.paths import REPO


def _cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'care_jax.commands.cli', 'predict', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
  )


def test_the_command_answers_bad_input_in_one_line(folder_run, tmp_path):
  workdir = folder_run.workdir
  (tmp_path / 'empty').mkdir()
  done = _cli(
    f'--workdir={workdir}', f'--input={tmp_path / "empty"}', f'--output={tmp_path / "p.csv"}'
  )
  assert done.returncode == 2
  message = done.stderr.strip().splitlines()[-1]
  assert message.startswith('care-jax predict: ') and 'holds no image' in message
  done = _cli(
    f'--workdir={tmp_path}', f'--input={folder_run.root / "test"}', f'--output={tmp_path / "p.csv"}'
  )
  assert done.returncode == 2
  assert 'no checkpoint in' in done.stderr.strip().splitlines()[-1]
  assert not (tmp_path / 'p.csv').exists()
