"""What a run writes into its workdir: the log truncated on resume, the test predictions."""

import csv

import numpy as np

from care_jax import inference
from care_jax.training import outputs
from tests.helpers import folder_run as fr


def test_truncate_log_drops_records_after_the_resumed_step(tmp_path):
  log = tmp_path / 'train_log.jsonl'
  log.write_text(''.join(f'{{"step": {s}, "loss": 1.0}}\n' for s in (2, 4, 6, 8)))
  outputs.truncate_log(str(log), 5)
  assert log.read_text() == '{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 1.0}\n'


def test_the_run_writes_the_test_predictions_as_predict_does(folder_run, tmp_path):
  workdir, root, rows, _ = folder_run
  with open(workdir / 'predictions_test.csv', newline='') as f:
    written = list(csv.DictReader(f))
  names = [name for name, _, split in rows if split == 'test']
  assert sorted(r['image'] for r in written) == sorted(names)  # Paths relative to data.dir.
  result = inference.Predictor.from_workdir(str(workdir), checkpoint='latest').predict_files(
    [str(root / r['image']) for r in written]
  )
  for row, probabilities, predicted in zip(written, result.probabilities, result.predictions):
    assert row['prediction'] == fr.CLASSES[predicted]
    np.testing.assert_allclose([float(row[f'p_{c}']) for c in fr.CLASSES], probabilities, atol=1e-5)
