"""A run end to end: the files of train_and_evaluate (the metrics.json contract), bfloat16."""

import json

import numpy as np
import pytest

from care_jax import training
from tests.helpers import runs


@pytest.mark.slow
def test_train_and_evaluate_writes_the_metrics_contract(tmp_path):
  workdir = tmp_path / 'run'
  result = training.train_and_evaluate(runs.tiny_config(tmp_path), str(workdir))
  with open(workdir / 'metrics.json') as f:
    metrics = json.load(f)
  assert metrics == json.loads(json.dumps(result))
  assert metrics['step'] == 6
  assert metrics['classes'] == ['brown', 'dark', 'dotted', 'pink', 'striped']
  assert metrics['rare_classes'] == ['dotted', 'striped']
  for split, size in (('validation', 20), ('test', 28)):
    block = metrics[split]
    for key in ('accuracy', 'mca', 'rare_recall'):
      assert 0.0 <= block[key] <= 1.0
    assert set(block['recall']) == set(block['precision']) == set(metrics['classes'])
    confusion = np.array(block['confusion'])
    assert confusion.shape == (5, 5) and confusion.sum() == size
    assert set(block['auroc']) == set(block['ap']) == set(metrics['classes'])
    assert all(0.0 <= v <= 1.0 for v in (*block['auroc'].values(), *block['ap'].values()))
    assert 0.0 <= block['macro_auroc'] <= 1.0 and 0.0 <= block['ece'] <= 1.0
    assert sum(block['calibration']['count']) == size
  log = [json.loads(line) for line in open(workdir / 'train_log.jsonl')]
  assert [r['step'] for r in log] == [2, 4, 6]
  assert all(np.isfinite(r['loss']) and r['boxed'] >= 0 for r in log)
  assert json.load(open(workdir / 'config.json'))['care']['alpha'] == 0.5


@pytest.mark.slow
def test_bfloat16_training_converges_like_float32(tmp_path):
  curves = {}
  for dtype in ('float32', 'bfloat16'):
    config = runs.tiny_config(
      tmp_path, f'dtype={dtype}', 'train.num_steps=40', 'train.log_every_steps=5'
    )
    training.train_and_evaluate(config, str(tmp_path / dtype))
    curves[dtype] = [json.loads(line)['ce'] for line in open(tmp_path / dtype / 'train_log.jsonl')]
  bf16, f32 = np.array(curves['bfloat16']), np.array(curves['float32'])
  assert bf16[-2:].mean() < 0.6 * bf16[:2].mean(), bf16  # it learns
  np.testing.assert_allclose(bf16, f32, atol=0.15)  # and tracks the float32 run
