"""The confusion matrix and the metrics derived from it against scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from care_jax import metrics


@pytest.mark.parametrize('seed', range(5))
def test_confusion_matrix_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  k = 5
  labels = rng.integers(0, k, 200)
  preds = rng.integers(0, k, 200)
  got = jax.jit(metrics.confusion_matrix, static_argnames='num_classes')(
    labels, preds, num_classes=k
  )
  np.testing.assert_array_equal(got, skm.confusion_matrix(labels, preds, labels=range(k)))


def test_confusion_matrix_ignores_padding_rows():
  labels = np.array([0, 1, 2, 0])
  preds = np.array([0, 2, 2, 1])
  valid = np.array([True, True, False, False])
  got = metrics.confusion_matrix(labels, preds, num_classes=3, valid=valid)
  np.testing.assert_array_equal(got, skm.confusion_matrix(labels[:2], preds[:2], labels=range(3)))


def test_confusion_matrices_of_batches_sum_to_the_whole():
  rng = np.random.default_rng(0)
  labels, preds = rng.integers(0, 4, 96), rng.integers(0, 4, 96)
  total = sum(
    metrics.confusion_matrix(labels[i : i + 32], preds[i : i + 32], num_classes=4)
    for i in range(0, 96, 32)
  )
  np.testing.assert_array_equal(total, metrics.confusion_matrix(labels, preds, num_classes=4))


@pytest.mark.parametrize('seed', range(5))
def test_classification_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  k = 6
  # Imbalanced labels with a rare class, and biased predictions.
  labels = rng.choice(k, size=300, p=[0.4, 0.3, 0.15, 0.1, 0.04, 0.01])
  preds = np.where(rng.random(300) < 0.6, labels, rng.integers(0, k, 300))
  conf = skm.confusion_matrix(labels, preds, labels=range(k))
  names = [f'c{i}' for i in range(k)]
  m = metrics.classification_metrics(conf, class_names=names, rare_classes=[4, 5])
  assert m['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds))
  assert m['mca'] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
  recall = skm.recall_score(labels, preds, labels=range(k), average=None, zero_division=0)
  precision = skm.precision_score(labels, preds, labels=range(k), average=None, zero_division=0)
  np.testing.assert_allclose([m['recall'][n] for n in names], recall)
  np.testing.assert_allclose([m['precision'][n] for n in names], precision)
  present = [c for c in (4, 5) if (labels == c).any()]
  assert m['rare_recall'] == pytest.approx(np.mean(recall[present]))
  assert m['confusion'] == conf.tolist()
  assert m['num_examples'] == 300


def test_mca_skips_classes_absent_from_labels_like_sklearn():
  labels = np.array([0, 0, 1, 1])
  preds = np.array([0, 2, 1, 2])  # class 2 is predicted but never true
  conf = skm.confusion_matrix(labels, preds, labels=range(3))
  with pytest.warns(UserWarning):
    expected = skm.balanced_accuracy_score(labels, preds)
  m = metrics.classification_metrics(conf, class_names=['a', 'b', 'c'], rare_classes=[2])
  assert m['mca'] == pytest.approx(expected)
  assert m['recall']['c'] == 0.0
  assert m['rare_recall'] is None  # no rare example to measure recall on


def test_single_class():
  m = metrics.classification_metrics([[7]], class_names=['only'], rare_classes=[0])
  assert m['accuracy'] == m['mca'] == m['rare_recall'] == 1.0


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='confusion must be'):
    metrics.classification_metrics(np.zeros((2, 3)), class_names=['a', 'b'])
  with pytest.raises(ValueError, match='rare_classes'):
    metrics.classification_metrics(np.zeros((2, 2)), class_names=['a', 'b'], rare_classes=[2])
  with pytest.raises(ValueError, match='labels and predictions'):
    metrics.confusion_matrix(jnp.zeros(3, int), jnp.zeros(4, int), num_classes=2)
