"""The metrics of class scores against scikit-learn: AUROC, AP, calibration (ECE against a direct
computation), and the per-finding scores of a multi-label classifier."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from care_jax import metrics


def _scores(seed, n=200, k=4, ties=False):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
  if ties:  # Coarse probabilities: many equal scores.
    logits = np.round(logits)
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return probabilities.astype(np.float32), labels


@pytest.mark.parametrize('seed, ties', [(0, False), (1, True), (2, True)])
def test_auroc_and_ap_equal_scikit_learn(seed, ties):
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top

  probabilities, labels = _scores(seed, ties=ties)
  names = ['a', 'b', 'c', 'd']
  result = metrics.score_metrics(probabilities, labels, class_names=names)
  for k, name in enumerate(names):
    positive = labels == k
    assert abs(result['auroc'][name] - sk.roc_auc_score(positive, probabilities[:, k])) < 1e-6
    ap = sk.average_precision_score(positive, probabilities[:, k])
    assert abs(result['ap'][name] - ap) < 1e-6
  macro = sk.roc_auc_score(
    labels, probabilities.astype(np.float64), multi_class='ovr', average='macro'
  )
  assert abs(result['macro_auroc'] - macro) < 1e-6


def test_ece_equals_a_direct_computation_over_15_bins():
  probabilities, labels = _scores(3)
  confidence = probabilities.max(1).astype(np.float64)
  correct = probabilities.argmax(1) == labels
  ece = 0.0
  for b in range(15):
    inside = (confidence > b / 15) & (confidence <= (b + 1) / 15)
    if inside.any():
      ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
  result = metrics.calibration(probabilities, labels)
  assert abs(result['ece'] - ece) < 1e-6
  assert sum(result['bins']['count']) == len(labels) and len(result['bins']['count']) == 15


def test_score_metrics_of_absent_classes_and_no_examples():
  probabilities = np.array([[0.7, 0.3, 0.0], [0.2, 0.8, 0.0]], np.float32)
  result = metrics.score_metrics(probabilities, [0, 0], class_names=['a', 'b', 'c'])
  assert result['auroc'] == {'a': None, 'b': None, 'c': None}  # One class only: no negatives.
  assert result['ap']['a'] == 1.0 and result['ap']['b'] is None
  assert result['macro_auroc'] is None
  empty = metrics.calibration(np.zeros((0, 3)), np.zeros(0, int))
  assert empty['ece'] is None and empty['bins']['count'] == [0] * 15
  with pytest.raises(ValueError, match='labels must lie in'):
    metrics.score_metrics(probabilities, [0, 3], class_names=['a', 'b', 'c'])
  with pytest.raises(ValueError, match=r'probabilities must be \[N, K\]'):
    metrics.calibration(probabilities[0], [0])


# Multi-label -------------------------------------------------------------------------------
NAMES = ['atelectasis', 'effusion', 'mass', 'nodule', 'pneumothorax']


def _multilabel(seed, n=300, prevalence=(0.4, 0.25, 0.1, 0.05, 0.02), ties=False):
  """[N, K] sigmoid probabilities that follow the labels, and 0/1 int labels."""
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, len(prevalence))) < np.asarray(prevalence)).astype(np.int64)
  logits = rng.normal(size=labels.shape) + 1.2 * labels - 0.8
  if ties:  # Coarse scores: many equal probabilities in every column.
    logits = np.round(2 * logits) / 2
  return (1 / (1 + np.exp(-logits))).astype(np.float32), labels


def _check_against_sklearn(result, probabilities, labels, names, rare=()):
  """Every per-finding and mean score of `result` against scikit-learn on the same rows."""
  probabilities = probabilities.astype(np.float64)
  defined_auroc, defined_ap = [], []
  for k, name in enumerate(names):
    column, truth = probabilities[:, k], labels[:, k]
    assert result['positives'][name] == truth.sum()
    if 0 < truth.sum() < len(truth):
      assert result['auroc'][name] == pytest.approx(skm.roc_auc_score(truth, column), abs=1e-12)
      defined_auroc.append(k)
    else:
      assert result['auroc'][name] is None, name
    if truth.sum():
      assert result['ap'][name] == pytest.approx(
        skm.average_precision_score(truth, column), abs=1e-12
      )
      defined_ap.append(k)
    else:
      assert result['ap'][name] is None, name
  assert result['num_auroc_undefined'] == len(names) - len(defined_auroc)
  assert result['num_ap_undefined'] == len(names) - len(defined_ap)
  if defined_auroc:
    macro = skm.roc_auc_score(
      labels[:, defined_auroc], probabilities[:, defined_auroc], average='macro'
    )
    assert result['mean_auroc'] == pytest.approx(macro, abs=1e-12)
  else:
    assert result['mean_auroc'] is None
  if defined_ap:
    macro_ap = skm.average_precision_score(
      labels[:, defined_ap], probabilities[:, defined_ap], average='macro'
    )
    assert result['mean_ap'] == pytest.approx(macro_ap, abs=1e-12)
  else:
    assert result['mean_ap'] is None
  predicted = (probabilities >= 0.5).astype(np.int64)
  # Column by column: scikit-learn takes a [N, 1] indicator for a binary problem.
  recall = np.array(
    [skm.recall_score(t, p, zero_division=0) for t, p in zip(labels.T, predicted.T)]
  )
  precision = np.array(
    [skm.precision_score(t, p, zero_division=0) for t, p in zip(labels.T, predicted.T)]
  )
  if labels.shape[1] > 1:  # and as one multi-label call
    np.testing.assert_allclose(
      recall, skm.recall_score(labels, predicted, average=None, zero_division=0)
    )
  np.testing.assert_allclose([result['recall'][n] for n in names], recall, atol=1e-12)
  np.testing.assert_allclose([result['precision'][n] for n in names], precision, atol=1e-12)
  rare_present = [k for k in rare if labels[:, k].any()]
  if rare_present:
    assert result['rare_recall'] == pytest.approx(np.mean(recall[rare_present]), abs=1e-12)
  else:
    assert result['rare_recall'] is None
  rare_defined = [k for k in rare if k in defined_auroc]
  if rare_defined:
    rare_macro = skm.roc_auc_score(
      labels[:, rare_defined], probabilities[:, rare_defined], average='macro'
    )
    assert result['rare_mean_auroc'] == pytest.approx(rare_macro, abs=1e-12)
  else:
    assert result['rare_mean_auroc'] is None
  assert result['num_examples'] == len(labels)
  json.dumps(result, allow_nan=False)  # JSON-ready: no numpy types, no NaN.


@pytest.mark.parametrize('seed, ties', [(0, False), (1, True), (2, True)])
def test_multilabel_scores_equal_scikit_learn(seed, ties):
  probabilities, labels = _multilabel(seed, ties=ties)
  if ties:
    # Ties within a column, including across positives and negatives.
    assert len(np.unique(probabilities[:, 0])) < len(probabilities) // 10
  result = metrics.multilabel_score_metrics(probabilities, labels, NAMES, rare_classes=[3, 4])
  assert list(result['auroc']) == NAMES
  _check_against_sklearn(result, probabilities, labels, NAMES, rare=[3, 4])
  # Not a trivial comparison: the scores spread and every finding is defined.
  assert result['num_auroc_undefined'] == 0 and np.ptp(list(result['auroc'].values())) > 0.01
  assert 0 < result['rare_recall'] < 1


def test_findings_with_only_negatives_or_only_positives_are_left_out_of_the_means():
  probabilities, labels = _multilabel(3, n=120)
  labels[:, 1] = 0  # no positives: no AUROC, no AP
  labels[:, 4] = 1  # no negatives: no AUROC, AP of 1
  result = metrics.multilabel_score_metrics(probabilities, labels, NAMES, rare_classes=[1, 3, 4])
  assert result['auroc']['effusion'] is None and result['auroc']['pneumothorax'] is None
  assert result['ap']['effusion'] is None and result['ap']['pneumothorax'] == 1.0
  assert result['num_auroc_undefined'] == 2 and result['num_ap_undefined'] == 1
  assert result['positives']['effusion'] == 0 and result['positives']['pneumothorax'] == 120
  # Only 'nodule' of the rare findings has an AUROC; 'effusion' has no recall to average.
  assert result['rare_mean_auroc'] == result['auroc']['nodule']
  assert result['recall']['effusion'] == 0.0
  _check_against_sklearn(result, probabilities, labels, NAMES, rare=[1, 3, 4])

  # Rare findings none of which has an AUROC or a positive.
  none_rare = metrics.multilabel_score_metrics(probabilities, labels, NAMES, rare_classes=[1])
  assert none_rare['rare_mean_auroc'] is None and none_rare['rare_recall'] is None
  assert metrics.multilabel_score_metrics(probabilities, labels, NAMES)['rare_recall'] is None


def test_padding_rows_count_nowhere():
  probabilities, labels = _multilabel(4, n=200)
  valid = np.random.default_rng(4).random(200) < 0.7
  # The padding rows hold what would change every metric: the only positives of
  # finding 0 among them, extreme scores, labels outside any real row.
  labels[~valid, 0] = 1
  labels[valid, 0] = 0
  probabilities[~valid] = 0.999
  result = metrics.multilabel_score_metrics(
    probabilities, labels, NAMES, valid=valid, rare_classes=[3, 4]
  )
  assert result['num_examples'] == valid.sum()
  assert result['auroc']['atelectasis'] is None and result['positives']['atelectasis'] == 0
  _check_against_sklearn(result, probabilities[valid], labels[valid], NAMES, rare=[3, 4])
  unpadded = metrics.multilabel_score_metrics(
    probabilities[valid], labels[valid], NAMES, rare_classes=[3, 4]
  )
  assert result == unpadded


def test_no_counted_rows_define_nothing():
  probabilities, labels = _multilabel(5, n=8)
  result = metrics.multilabel_score_metrics(
    probabilities, labels, NAMES, valid=np.zeros(8, bool), rare_classes=[4]
  )
  assert result['mean_auroc'] is result['mean_ap'] is result['rare_recall'] is None
  assert result['num_auroc_undefined'] == result['num_ap_undefined'] == len(NAMES)
  assert result['num_examples'] == 0 and set(result['recall'].values()) == {0.0}
  json.dumps(result, allow_nan=False)


def test_a_single_finding():
  probabilities, labels = _multilabel(6, prevalence=(0.2,))
  result = metrics.multilabel_score_metrics(probabilities, labels, ['nodule'], rare_classes=[0])
  _check_against_sklearn(result, probabilities, labels, ['nodule'], rare=[0])
  assert result['mean_auroc'] == result['rare_mean_auroc'] == result['auroc']['nodule']
  assert result['rare_recall'] == result['recall']['nodule']


def test_bool_and_float_labels_and_the_threshold():
  probabilities, labels = _multilabel(7)
  as_int = metrics.multilabel_score_metrics(probabilities, labels, NAMES)
  assert metrics.multilabel_score_metrics(probabilities, labels.astype(bool), NAMES) == as_int
  assert metrics.multilabel_score_metrics(probabilities, labels.astype(np.float32), NAMES) == as_int
  strict = metrics.multilabel_score_metrics(probabilities, labels, NAMES, threshold=0.8)
  predicted = (probabilities >= 0.8).astype(np.int64)
  np.testing.assert_allclose(
    [strict['recall'][n] for n in NAMES],
    skm.recall_score(labels, predicted, average=None, zero_division=0),
  )
  assert strict['auroc'] == as_int['auroc']  # threshold-free


def test_multilabel_score_metrics_bad_arguments_raise():
  probabilities, labels = _multilabel(8, n=10)
  with pytest.raises(ValueError, match=r'must both be \[N, K\]'):
    metrics.multilabel_score_metrics(probabilities, labels[:, 0], NAMES)
  with pytest.raises(ValueError, match=r'must both be \[N, K\]'):
    metrics.multilabel_score_metrics(probabilities[:, 0], labels[:, 0], NAMES)
  with pytest.raises(ValueError, match=r'must both be \[N, K\]'):
    metrics.multilabel_score_metrics(probabilities, labels[:9], NAMES)
  with pytest.raises(ValueError, match='5 findings, class_names 4'):
    metrics.multilabel_score_metrics(probabilities, labels, NAMES[:4])
  with pytest.raises(ValueError, match='labels must be 0/1'):
    metrics.multilabel_score_metrics(probabilities, labels * 2, NAMES)
  with pytest.raises(ValueError, match=r'valid must have shape \[N\]'):
    metrics.multilabel_score_metrics(probabilities, labels, NAMES, valid=np.ones((10, 5), bool))
  with pytest.raises(ValueError, match='rare_classes'):
    metrics.multilabel_score_metrics(probabilities, labels, NAMES, rare_classes=[5])
  with pytest.raises(ValueError, match='threshold'):
    metrics.multilabel_score_metrics(probabilities, labels, NAMES, threshold=1.5)
