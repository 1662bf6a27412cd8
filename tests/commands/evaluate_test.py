"""`care-jax evaluate`: a checkpoint scored as the run scored its test block."""

import json
import os

import pytest


def test_evaluate_scores_a_checkpoint_as_the_run_scored_its_test_block(folder_run, tmp_path):
  from care_jax.commands import evaluate  # pylint: disable=g-import-not-at-top

  workdir, _, _, metrics = folder_run
  block, path = evaluate.evaluate(str(workdir), split='test', checkpoint='latest')
  assert path == os.path.join(str(workdir), 'evaluation_test_step6.json')
  with open(path) as f:
    assert json.load(f) == json.loads(json.dumps(block))
  assert (block['step'], block['checkpoint'], block['split']) == (6, 'latest', 'test')
  assert block['confusion'] == metrics['test']['confusion']
  for key in ('accuracy', 'mca', 'macro_auroc', 'ece'):
    assert block[key] == pytest.approx(metrics['test'][key], abs=1e-6), key
  assert block['auroc'] == pytest.approx(metrics['test']['auroc'], abs=1e-6)
  validation, _ = evaluate.evaluate(
    str(workdir), split='validation', checkpoint=3, output=str(tmp_path / 'v.json')
  )
  assert validation['step'] == 3 and sum(map(sum, validation['confusion'])) == 6
  with pytest.raises(ValueError, match=r"split 'tset' does not exist; splits: \['test', 'train'"):
    evaluate.evaluate(str(workdir), split='tset')
