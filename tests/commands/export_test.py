"""`care-jax export`: the artifact of a checkpoint written and named, bad input in one line."""

import json

import jax
import numpy as np

from care_jax import inference
from tests.helpers import command_line
from tests.helpers import folder_run as fr


def test_the_command_exports_the_chosen_checkpoint_and_says_which(folder_run, tmp_path):
  out = tmp_path / 'export'
  done = command_line.care_jax(
    'export',
    f'--workdir={folder_run.workdir}',
    f'--output={out}',
    '--checkpoint=3',
    '--platforms=cpu',
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == f'exported step 3 of {folder_run.workdir} for cpu to {out}'
  meta = json.loads((out / inference.EXPORT_META).read_text())
  assert (meta['step'], meta['platforms'], meta['class_names']) == (3, ['cpu'], list(fr.CLASSES))
  # The artifact is step 3's model: the Predictor of that checkpoint on the same inputs.
  exported = jax.export.deserialize(bytearray((out / inference.EXPORT_MODEL).read_bytes()))
  images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  probabilities, _, _ = inference.Predictor.from_workdir(
    str(folder_run.workdir), checkpoint=3
  ).predict(images)
  np.testing.assert_allclose(exported.call(images), probabilities, atol=1e-5)


def test_a_workdir_without_a_checkpoint_is_answered_in_one_line(tmp_path):
  done = command_line.care_jax('export', f'--workdir={tmp_path}', f'--output={tmp_path / "out"}')
  assert done.returncode == 2
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith('care-jax export: no checkpoint in') and 'Traceback' not in done.stderr
  assert not (tmp_path / 'out').exists()
