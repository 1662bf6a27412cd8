"""`care-jax visualize`: the figures of two trained runs, by the library call and the command."""

import os
import subprocess
import sys

from PIL import Image
import pytest

from care_jax import run_figures
from care_jax import training
from tests.helpers import runs as run_helpers


@pytest.mark.slow
def test_write_figures_and_the_cli_for_two_trained_runs(tmp_path):
  runs = {}
  for name, alpha in (('baseline', 0.0), ('care', 0.5)):
    runs[name] = str(tmp_path / name)
    training.train_and_evaluate(
      run_helpers.figures_run_config(tmp_path / 'data', alpha), runs[name]
    )
  written = run_figures.write_figures(runs['care'], compare=runs['baseline'], num_images=3)
  names = [
    'attention_test.png',
    'confusion_test.png',
    'recall_test.png',
    'reliability_test.png',
    'training_curves.png',
  ]
  assert written == [os.path.join(runs['care'], 'figures', n) for n in names]
  with Image.open(written[0]) as image:
    assert image.size == (round(100 * (2.0 * 3 + 0.8)), round(100 * (2.0 * 3 + 0.4)))
  # The command line, with the --num-images spelling of the issue.
  out = tmp_path / 'cli'
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'care_jax.commands.cli',
      'visualize',
      f'--workdir={runs["care"]}',
      '--num-images=2',
      f'--out_dir={out}',
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  paths = result.stdout.split()
  assert paths == [str(out / n) for n in names]
  with Image.open(paths[0]) as image:  # one run: image | map
    assert image.size == (round(100 * (2.0 * 2 + 0.8)), round(100 * (2.0 * 2 + 0.4)))
  os.remove(os.path.join(runs['baseline'], 'train_log.jsonl'))
  # No training curves without both logs; the other four figures.
  assert (
    len(
      run_figures.write_figures(
        runs['care'], compare=runs['baseline'], num_images=1, out_dir=str(tmp_path / 'x')
      )
    )
    == 4
  )
