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


def test_the_headline_names_the_multiclass_numbers_and_n_a_for_undefined_ones():
  block = {'step': 60, 'mca': 0.56, 'rare_recall': None, 'macro_auroc': 0.80275, 'ece': 0.1}
  assert outputs.headline(block, 'test') == (
    'step 60 on test: MCA 0.5600, rare recall n/a, macro AUROC 0.8027'
  )
  assert outputs.headline(block, 'validation', step=50).startswith('step 50 on validation: ')


def test_the_headline_of_a_multilabel_block_gives_its_mean_aurocs():
  block = {'mean_auroc': 0.75, 'rare_mean_auroc': None, 'rare_recall': 0.5}
  assert outputs.headline(block, 'test', step=8) == (
    'step 8 on test: mean AUROC 0.7500, rare mean AUROC n/a, rare recall 0.5000'
  )


def test_a_non_finite_training_value_is_logged_as_null(tmp_path):
  with outputs.RunOutputs(tmp_path, is_chief=True, start_step=0) as run:
    run.log_train({'loss': float('nan'), 'ce': 0.5, 'skipped_steps': 1, 'step': 2, 'seconds': 1.0})
  (line,) = (tmp_path / outputs.TRAIN_LOG).read_text().splitlines()
  assert line == '{"loss": null, "ce": 0.5, "skipped_steps": 1, "step": 2, "seconds": 1.0}'


def test_a_training_record_reads_as_one_log_line():
  record = {'accuracy': 0.5, 'loss': 0.69314, 'skipped_steps': 0, 'step': 20, 'seconds': 3.2}
  assert outputs.format_record(record) == (
    'loss 0.6931 accuracy 0.5000 skipped_steps 0 seconds 3.2000'
  )


def test_progress_shows_care_or_the_active_methods_guidance_term():
  care = {'step': 10, 'loss': 0.5, 'ce': 0.6, 'care': -0.25, 'alpha': 0.5}
  assert outputs.progress_postfix(care) == {'loss': '0.5000', 'care': '-0.250'}
  assert outputs.progress_postfix({'loss': 0.5}, 'none') == {'loss': '0.5000', 'care': '0.000'}
  actdiff = {'step': 10, 'loss': 0.5, 'ce': 0.4, 'guidance': 0.125, 'weight': 1.0}
  assert outputs.progress_postfix(actdiff, 'actdiff') == {'loss': '0.5000', 'actdiff': '0.125'}
