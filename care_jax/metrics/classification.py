"""Classification metrics for imbalanced data: confusion matrix, recall, precision, MCA.

The confusion matrix is accumulated on device inside the jitted eval step
(:func:`confusion_matrix`, pure JAX, padding-aware); everything else is derived
from it on the host (:func:`classification_metrics`, numpy), so evaluation over
many batches, devices or hosts only needs to sum integer matrices.

Conventions follow scikit-learn so numbers can be cross-checked:

* ``recall[k] = C[k, k] / sum_j C[k, j]`` and ``precision[k] = C[k, k] / sum_i C[i, k]``,
  0 when the denominator is 0 (``zero_division=0``).
* MCA, the mean class accuracy of the CARE paper, is the mean recall over the
  classes present in the labels (``sklearn.metrics.balanced_accuracy_score``).
* ``rare_recall`` is the paper's "recall" of the rare class; with several
  rare classes, the mean of their recalls (over those present in the labels).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from care_jax import _checks

__all__ = ['classification_metrics', 'confusion_matrix']


def confusion_matrix(
  labels: jax.typing.ArrayLike,
  predictions: jax.typing.ArrayLike,
  *,
  num_classes: int,
  valid: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """Confusion matrix ``C[true, predicted]`` of one batch, as int32 ``[K, K]``.

  Args:
    labels: int ``[B]`` true classes in ``[0, K)``.
    predictions: int ``[B]`` predicted classes in ``[0, K)``.
    num_classes: K.
    valid: optional bool ``[B]``; rows with ``False`` (batch padding) are not
      counted.

  Returns:
    ``[K, K]`` int32 counts; sums of these over batches give the split's matrix.

  Raises:
    ValueError: for non-integer or wrongly shaped labels/predictions/valid,
      and, when they are concrete, for a class index outside ``[0, K)`` (it
      would silently not be counted). Under ``jit`` indices cannot be
      checked: an out-of-range row is left out of the matrix (the trainer's
      labels come from the dataset's class list, always in range).

  Examples:
    >>> confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), num_classes=2)
    Array([[1, 0],
           [1, 1]], dtype=int32)
  """
  labels = jnp.asarray(labels)
  predictions = jnp.asarray(predictions)
  if labels.ndim != 1 or labels.shape != predictions.shape:
    raise ValueError(
      f'labels and predictions must both be [B]; got labels {labels.shape} '
      f'and predictions {predictions.shape}.'
    )
  for name, value in (('labels', labels), ('predictions', predictions)):
    if not jnp.issubdtype(value.dtype, jnp.integer):
      raise ValueError(f'{name} must be integer class indices, got dtype {value.dtype}.')
    _checks.check_class_indices(name, value, num_classes)
  if valid is not None and jnp.shape(valid) != labels.shape:
    raise ValueError(f'valid must have shape [B] = {labels.shape}, got shape {jnp.shape(valid)}.')
  weight = (
    jnp.ones(labels.shape, jnp.int32) if valid is None else jnp.asarray(valid).astype(jnp.int32)
  )
  true_one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  pred_one_hot = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)
  # A matmul instead of a scatter: cheap for small K and sharding-friendly.
  return jnp.einsum('bi,bj->ij', true_one_hot * weight[:, None], pred_one_hot)


def classification_metrics(
  confusion: Any, *, class_names: Sequence[str], rare_classes: Sequence[int] = ()
) -> dict[str, Any]:
  """Accuracy, MCA, rare-class recall, per-class recall/precision from ``C``.

  Args:
    confusion: ``[K, K]`` counts, rows true classes, columns predictions.
    class_names: K names in label order.
    rare_classes: indices of the rare classes (averaged for ``rare_recall``).

  Returns:
    A JSON-ready dict: ``accuracy``, ``mca``, ``rare_recall`` (``None`` when
    there are no rare classes or no rare examples), ``recall`` and
    ``precision`` ({class name: value}), ``confusion`` (list of int lists) and
    ``num_examples``.

  Examples:
    >>> m = classification_metrics([[3, 1], [1, 1]], class_names=['a', 'b'],
    ...                            rare_classes=[1])
    >>> m['accuracy'], m['mca'], m['rare_recall']
    (0.6666666666666666, 0.625, 0.5)
  """
  counts = np.asarray(confusion)
  # Negative, fractional or NaN counts are not a confusion matrix: say so
  # instead of truncating them to integers.
  if counts.dtype == object or not np.all((counts >= 0) & (counts == np.round(counts))):
    raise ValueError(f'confusion must hold non-negative integer counts, got {counts.tolist()}.')
  confusion = counts.astype(np.int64)
  num_classes = len(class_names)
  if confusion.shape != (num_classes, num_classes):
    raise ValueError(
      f'confusion must be [K, K] with K = len(class_names) = {num_classes}; got {confusion.shape}.'
    )
  bad = [k for k in rare_classes if not 0 <= k < num_classes]
  if bad:
    raise ValueError(f'rare_classes {bad} out of range for {num_classes} classes.')
  correct = np.diag(confusion).astype(np.float64)
  support = confusion.sum(axis=1).astype(np.float64)
  predicted = confusion.sum(axis=0).astype(np.float64)
  recall = np.divide(correct, support, out=np.zeros(num_classes), where=support > 0)
  precision = np.divide(correct, predicted, out=np.zeros(num_classes), where=predicted > 0)
  total = confusion.sum()
  present = support > 0
  rare_present = [k for k in rare_classes if present[k]]
  return {
    'accuracy': float(correct.sum() / total) if total else 0.0,
    'mca': float(recall[present].mean()) if present.any() else 0.0,
    'rare_recall': (float(recall[rare_present].mean()) if rare_present else None),
    'recall': {name: float(r) for name, r in zip(class_names, recall)},
    'precision': {name: float(p) for name, p in zip(class_names, precision)},
    'confusion': confusion.tolist(),
    'num_examples': int(total),
  }
