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

Attention quality on images with a lesion box (:func:`attention_quality`,
pure JAX, per image; :class:`AttentionMetrics` sums it over batches): the
fraction of the attention mass inside the box, the pointing game and the IoU
of the thresholded map with the box.

Multi-label (one sigmoid per finding): :func:`multilabel_score_metrics`
scores each finding as its own binary problem (AUROC, AP, recall and
precision at a threshold, their means), and
:meth:`AttentionMetrics.from_batch_per_class` keeps the attention sums per
finding.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from care_jax import _checks
from care_jax import _numerics
from care_jax import attention


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


def _check_scores(probabilities: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  probabilities = np.asarray(probabilities, np.float64)
  labels = np.asarray(labels)
  if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1]:
    raise ValueError(
      f'probabilities must be [N, K] and labels [N]; got {probabilities.shape} and {labels.shape}.'
    )
  if labels.size and not (np.all(labels >= 0) and np.all(labels < probabilities.shape[1])):
    raise ValueError(f'labels must lie in [0, {probabilities.shape[1]}).')
  return probabilities, labels.astype(np.int64)


def roc_auc(scores: Any, positive: Any) -> float | None:
  """Area under the ROC curve of one class: the Mann-Whitney statistic.

  ``P(score of a positive > score of a negative)``, ties counting one half
  (what ``sklearn.metrics.roc_auc_score`` computes). None without positives
  or without negatives.

  Examples:
    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
  """
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  num_positive = int(positive.sum())
  num_negative = positive.size - num_positive
  if not num_positive or not num_negative:
    return None
  order = np.argsort(scores, kind='mergesort')
  ranks = np.empty(scores.size, np.float64)
  ranks[order] = np.arange(1, scores.size + 1)
  # Tied scores share their mean rank.
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  mean_rank = np.bincount(inverse, weights=ranks) / counts
  ranks = mean_rank[inverse]
  u = ranks[positive].sum() - num_positive * (num_positive + 1) / 2
  return float(u / (num_positive * num_negative))


def average_precision(scores: Any, positive: Any) -> float | None:
  """Average precision of one class: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds.

  As ``sklearn.metrics.average_precision_score``: precision and recall at
  each distinct score taken as the threshold (from the highest), no
  interpolation. None without positives.

  Examples:
    >>> average_precision([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.8333333333333333
  """
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  num_positive = int(positive.sum())
  if not num_positive:
    return None
  order = np.argsort(-scores, kind='mergesort')
  scores, positive = scores[order], positive[order]
  true_positives = np.cumsum(positive)
  # The last position of each run of equal scores: one threshold each.
  last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
  precision = true_positives[last] / (last + 1)
  recall = true_positives[last] / num_positive
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibration(probabilities: Any, labels: Any, *, num_bins: int = 15) -> dict[str, Any]:
  """Expected calibration error (Guo et al., ICML 2017) and its reliability bins.

  The confidence of a prediction is its largest probability; bin ``b``
  holds the predictions with confidence in ``(b / num_bins, (b + 1) /
  num_bins]`` (equal widths; a confidence of 0 goes to the first bin) and
  ``ECE = sum_b n_b / N |accuracy_b - confidence_b|``.

  Returns:
    ``{'ece': f, 'bins': {'confidence': [f | None], 'accuracy': [f | None],
    'count': [int]}}``: the bins' mean confidence and accuracy (None when
    empty), for a reliability diagram. ``ece`` is None without examples.

  Examples:
    >>> calibration([[0.9, 0.1], [0.6, 0.4]], [0, 1], num_bins=2)['ece']  # |0.5 - 0.75|
    0.25
  """
  probabilities, labels = _check_scores(probabilities, labels)
  if num_bins < 1:
    raise ValueError(f'num_bins must be >= 1, got {num_bins}.')
  confidence = probabilities.max(axis=1) if len(labels) else np.zeros(0)
  correct = (probabilities.argmax(axis=1) == labels) if len(labels) else np.zeros(0, bool)
  bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  confidence_sum = np.bincount(bins, weights=confidence, minlength=num_bins)
  correct_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=num_bins)
  full = count > 0
  mean_confidence = np.divide(confidence_sum, count, out=np.zeros(num_bins), where=full)
  accuracy = np.divide(correct_sum, count, out=np.zeros(num_bins), where=full)
  ece = float(np.sum(count / max(len(labels), 1) * np.abs(accuracy - mean_confidence)))
  return {
    'ece': ece if len(labels) else None,
    'bins': {
      'confidence': [float(c) if f else None for c, f in zip(mean_confidence, full)],
      'accuracy': [float(a) if f else None for a, f in zip(accuracy, full)],
      'count': count.tolist(),
    },
  }


def score_metrics(
  probabilities: Any, labels: Any, *, class_names: Sequence[str], num_bins: int = 15
) -> dict[str, Any]:
  """The metrics of class probabilities: per-class AUROC and AP (one-vs-rest), calibration.

  Args:
    probabilities: ``[N, K]`` class probabilities of N examples.
    labels: ``[N]`` true classes.
    class_names: K names in label order.
    num_bins: bins of the calibration error.

  Returns:
    A JSON-ready dict: ``auroc`` and ``ap`` ({class name: value, None for a
    class without positives, or for AUROC without negatives}),
    ``macro_auroc`` (the mean over the classes that have one), ``ece`` and
    ``calibration`` (the bins of `calibration`).
  """
  probabilities, labels = _check_scores(probabilities, labels)
  if probabilities.shape[1] != len(class_names):
    raise ValueError(
      f'probabilities have {probabilities.shape[1]} classes, class_names {len(class_names)}.'
    )
  auroc = {n: roc_auc(probabilities[:, k], labels == k) for k, n in enumerate(class_names)}
  ap = {n: average_precision(probabilities[:, k], labels == k) for k, n in enumerate(class_names)}
  present = [v for v in auroc.values() if v is not None]
  calibrated = calibration(probabilities, labels, num_bins=num_bins)
  return {
    'auroc': auroc,
    'ap': ap,
    'macro_auroc': float(np.mean(present)) if present else None,
    'ece': calibrated['ece'],
    'calibration': calibrated['bins'],
  }


def _check_multilabel_scores(
  probabilities: Any, labels: Any, class_names: Sequence[str], valid: Any
) -> tuple[np.ndarray, np.ndarray]:
  """Float64 [N, K] scores and bool [N, K] labels of the rows that count."""
  probabilities = np.asarray(probabilities, np.float64)
  labels = np.asarray(labels)
  if probabilities.ndim != 2 or labels.shape != probabilities.shape:
    raise ValueError(
      'probabilities and labels must both be [N, K] (one column per finding); got '
      f'probabilities {probabilities.shape} and labels {labels.shape}.'
    )
  if probabilities.shape[1] != len(class_names):
    raise ValueError(
      f'probabilities have {probabilities.shape[1]} findings, class_names {len(class_names)}.'
    )
  if labels.dtype == object or not np.all((labels == 0) | (labels == 1)):
    raise ValueError('labels must be 0/1 (or bool) indicators of each finding.')
  if valid is not None:
    valid = np.asarray(valid)
    if valid.shape != probabilities.shape[:1]:
      raise ValueError(
        f'valid must have shape [N] = {probabilities.shape[:1]}, got shape {valid.shape}.'
      )
    valid = valid.astype(bool)
    probabilities, labels = probabilities[valid], labels[valid]
  return probabilities, labels.astype(bool)


def _mean_or_none(values: Sequence[float | None]) -> float | None:
  defined = [v for v in values if v is not None]
  return float(np.mean(defined)) if defined else None


def multilabel_score_metrics(
  probabilities: Any,
  labels: Any,
  class_names: Sequence[str],
  *,
  valid: Any = None,
  rare_classes: Sequence[int] = (),
  threshold: float = 0.5,
) -> dict[str, Any]:
  """The metrics of a multi-label classifier: per-finding AUROC, AP, recall, precision.

  Each of the K findings is its own binary problem, scored by its column of
  (sigmoid) probabilities: ``auroc`` (:func:`roc_auc`, the Mann-Whitney
  statistic, ties counting one half) and ``ap`` (:func:`average_precision`,
  ``sum_n (R_n - R_{n-1}) P_n``), as scikit-learn's ``roc_auc_score`` and
  ``average_precision_score`` of that column. ``mean_auroc`` is the mean
  AUROC over the findings, the summary of CheXNet (Rajpurkar et al., 2017,
  arXiv:1711.05225) and of the ChestX-ray14 benchmark (Wang et al., CVPR
  2017); ``mean_ap`` the mean AP.

  A finding with only negatives (or only positives) among the counted rows
  has no AUROC: it is reported as None, as :func:`score_metrics` reports a
  class missing from a split, and left out of ``mean_auroc`` and
  ``rare_mean_auroc``; ``num_auroc_undefined`` counts the findings left out.
  Its AP is None without positives (left out of ``mean_ap``, counted in
  ``num_ap_undefined``) and 1.0 with only positives.

  At ``threshold`` a finding is predicted where ``probability >= threshold``:
  ``recall = TP / (TP + FN)`` and ``precision = TP / (TP + FP)``, 0 when
  the denominator is 0 (scikit-learn's ``zero_division=0``).
  ``rare_recall`` is the mean recall of the rare findings that have
  positives, as in :func:`classification_metrics`.

  Args:
    probabilities: ``[N, K]`` scores of N examples (sigmoid probabilities;
      only their order matters for AUROC and AP).
    labels: ``[N, K]`` 0/1 (or bool) indicators of the findings.
    class_names: K finding names in label order.
    valid: optional bool ``[N]``; rows with ``False`` (batch padding) count
      nowhere.
    rare_classes: indices of the rare findings (``rare_mean_auroc``,
      ``rare_recall``).
    threshold: the probability at which a finding is predicted.

  Returns:
    A JSON-ready dict: ``auroc``, ``ap``, ``recall``, ``precision``
    ({finding: value}; AUROC and AP None where undefined), ``positives``
    ({finding: int}, the counted rows that have it), ``mean_auroc``,
    ``mean_ap``, ``rare_mean_auroc``, ``rare_recall`` (None when nothing is
    defined to average), ``num_auroc_undefined``, ``num_ap_undefined`` and
    ``num_examples`` (the counted rows).

  Raises:
    ValueError: for shapes that are not ``[N, K]`` with K findings named,
      labels other than 0/1, a ``valid`` that is not ``[N]``, rare classes
      out of range or a threshold outside ``[0, 1]``.

  Examples:
    >>> m = multilabel_score_metrics(
    ...     [[0.9, 0.2], [0.3, 0.6], [0.6, 0.7], [0.2, 0.4]],
    ...     [[1, 0], [0, 1], [1, 0], [0, 0]], ['effusion', 'nodule'], rare_classes=[1])
    >>> m['auroc'], m['mean_auroc'], m['rare_recall']
    ({'effusion': 1.0, 'nodule': 0.6666666666666666}, 0.8333333333333333, 1.0)
    >>> m['precision']['nodule'], m['positives']
    (0.5, {'effusion': 2, 'nodule': 1})
  """
  probabilities, labels = _check_multilabel_scores(probabilities, labels, class_names, valid)
  num_classes = len(class_names)
  bad = [k for k in rare_classes if not 0 <= k < num_classes]
  if bad:
    raise ValueError(f'rare_classes {bad} out of range for {num_classes} findings.')
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f'threshold must lie in [0, 1], got {threshold}.')
  auroc = [roc_auc(probabilities[:, k], labels[:, k]) for k in range(num_classes)]
  ap = [average_precision(probabilities[:, k], labels[:, k]) for k in range(num_classes)]
  predicted = probabilities >= threshold
  true_positives = np.sum(predicted & labels, axis=0).astype(np.float64)
  positives = labels.sum(axis=0)
  predicted_positives = predicted.sum(axis=0)
  recall = np.divide(true_positives, positives, out=np.zeros(num_classes), where=positives > 0)
  precision = np.divide(
    true_positives, predicted_positives, out=np.zeros(num_classes), where=predicted_positives > 0
  )
  rare_present = [k for k in rare_classes if positives[k]]
  return {
    'auroc': dict(zip(class_names, auroc)),
    'ap': dict(zip(class_names, ap)),
    'recall': {name: float(r) for name, r in zip(class_names, recall)},
    'precision': {name: float(p) for name, p in zip(class_names, precision)},
    'positives': {name: int(p) for name, p in zip(class_names, positives)},
    'mean_auroc': _mean_or_none(auroc),
    'mean_ap': _mean_or_none(ap),
    'rare_mean_auroc': _mean_or_none([auroc[k] for k in rare_classes]),
    'rare_recall': float(recall[rare_present].mean()) if rare_present else None,
    'num_auroc_undefined': sum(v is None for v in auroc),
    'num_ap_undefined': sum(v is None for v in ap),
    'num_examples': int(labels.shape[0]),
  }


def _attention_inputs(
  maps: jax.typing.ArrayLike, masks: jax.typing.ArrayLike
) -> tuple[jax.Array, jax.Array]:
  """Min-max normalised float32 maps [B, h, w] and bool boxes [B, H, W]."""
  maps = attention.minmax_normalize(maps)
  masks = jnp.asarray(masks)
  if masks.ndim != 3 or masks.shape[0] != maps.shape[0]:
    raise ValueError(
      f'masks must have shape [B, H, W] with B = {maps.shape[0]} (maps shape '
      f'{maps.shape}), got shape {masks.shape}.'
    )
  if masks.shape[1] < maps.shape[1] or masks.shape[2] < maps.shape[2]:
    raise ValueError(
      f'masks spatial shape {masks.shape[1:]} must be at least the maps '
      f'spatial shape {maps.shape[1:]} (maps are only upsampled).'
    )
  return maps, masks > 0.5


def _upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  # Half-pixel centres, as the CARE loss sees the map.
  return jax.image.resize(maps, (maps.shape[0], *size), 'bilinear')


def attention_mass_inside(maps: jax.typing.ArrayLike, masks: jax.typing.ArrayLike) -> jax.Array:
  """Fraction of the attention mass inside the box, per image.

  ``sum(M * up(F)) / sum(up(F))`` with ``F`` the min-max normalised map and
  ``up`` the half-pixel bilinear upsampling to the mask resolution. As in the
  CARE loss, the sums are taken on the small grid with the adjoint-resized
  mask (``sum(M * up(F)) = sum(F * up^T(M))``), so no full-size map is built.
  A constant map (zero after normalisation) counts as uniform attention: its
  mass inside is the box's area fraction.

  Args:
    maps: [B, h, w] attention maps (any scale: min-max normalised here).
    masks: [B, H, W] boxes, ``H >= h``, ``W >= w``; values > 0.5 are inside.

  Returns:
    [B] float32 fractions in [0, 1] (0 for an empty mask).

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
    >>> m = jnp.zeros((1, 4, 4)).at[0, :2, :2].set(1.0)
    >>> print(attention_mass_inside(f, m))  # up(F) = outer([1, .75, .25, 0])
    [0.765625]
  """
  maps, inside = _attention_inputs(maps, masks)
  h, w = maps.shape[1:]
  box = inside.astype(maps.dtype)
  mass_in = jnp.sum(maps * _numerics.resize_adjoint(box, h, w), axis=(1, 2))
  ones = jnp.ones((1, *box.shape[1:]), maps.dtype)
  mass = jnp.sum(maps * _numerics.resize_adjoint(ones, h, w), axis=(1, 2))
  area_fraction = jnp.mean(box, axis=(1, 2))
  varies = mass > 0
  return jnp.where(varies, mass_in / jnp.where(varies, mass, 1.0), area_fraction)


def pointing_game(maps: jax.typing.ArrayLike, masks: jax.typing.ArrayLike) -> jax.Array:
  """1.0 where the maximum of the upsampled map lies in the box, per image.

  The pointing game of Zhang et al. ("Top-down Neural Attention by
  Excitation Backprop", ECCV 2016), without tolerance, on the map bilinearly
  upsampled (half-pixel centres) to the mask resolution. Ties: a hit needs
  ``max(up(F) inside) > max(up(F) outside)``, i.e. every maximal pixel in the
  box, so a constant map (no localisation) misses unless the box fills the
  image. The full-resolution map is built here (a max is not linear).

  Args:
    maps: [B, h, w] attention maps.
    masks: [B, H, W] boxes, ``H >= h``, ``W >= w``; values > 0.5 are inside.

  Returns:
    [B] float32 of 0.0 / 1.0 (0.0 for an empty mask).

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    >>> m = jnp.zeros((2, 4, 4)).at[:, :2, :2].set(1.0)
    >>> print(pointing_game(f, m))
    [1. 0.]
  """
  maps, inside = _attention_inputs(maps, masks)
  up = _upsample(maps, inside.shape[1:])
  max_in = jnp.max(jnp.where(inside, up, -jnp.inf), axis=(1, 2))
  max_out = jnp.max(jnp.where(inside, -jnp.inf, up), axis=(1, 2))
  return (max_in > max_out).astype(jnp.float32)


def attention_iou(
  maps: jax.typing.ArrayLike, masks: jax.typing.ArrayLike, *, threshold: float = 0.5
) -> jax.Array:
  """IoU of the thresholded attention map with the box, per image.

  ``R = up(F) >= threshold * max(up(F))`` (``up``: half-pixel bilinear
  upsampling of the normalised map to the mask resolution), then
  ``|R & M| / |R | M|``. A constant map selects the whole image.

  Args:
    maps: [B, h, w] attention maps.
    masks: [B, H, W] boxes, ``H >= h``, ``W >= w``; values > 0.5 are inside.
    threshold: a Python float in [0, 1], the fraction of each map's maximum
      that a pixel must reach to be selected.

  Returns:
    [B] float32 IoUs in [0, 1] (0 for an empty mask).

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
    >>> m = jnp.zeros((1, 4, 4)).at[0, :2, :2].set(1.0)
    >>> print(attention_iou(f, m, threshold=0.2))  # 6 pixels >= 0.2, 4 in the box
    [0.6666667]
  """
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f'threshold must lie in [0, 1], got {threshold}.')
  maps, inside = _attention_inputs(maps, masks)
  up = _upsample(maps, inside.shape[1:])
  region = up >= threshold * jnp.max(up, axis=(1, 2), keepdims=True)
  intersection = jnp.sum(region & inside, axis=(1, 2))
  union = jnp.sum(region | inside, axis=(1, 2))  # >= 1: the peak is selected.
  return (intersection / union).astype(jnp.float32)


def attention_quality(
  maps: jax.typing.ArrayLike,
  masks: jax.typing.ArrayLike,
  *,
  threshold: float = 0.5,
  valid: jax.typing.ArrayLike | None = None,
) -> dict[str, jax.Array]:
  """Per-image attention quality against lesion boxes, and which images count.

  Args:
    maps: [B, h, w] attention maps (e.g. of the true class).
    masks: [B, H, W] lesion boxes, ``H >= h``, ``W >= w``.
    threshold: IoU threshold, a fraction of each map's maximum.
    valid: optional [B] bool (e.g. ``valid & has_lesion_mask`` of an eval
      batch); images with an empty mask are left out in any case.

  Returns:
    ``{'mass_inside', 'pointing_game', 'iou'}``: [B] float32 from
    :func:`attention_mass_inside`, :func:`pointing_game`,
    :func:`attention_iou`; ``'valid'``: [B] bool, the images to average over.

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
    >>> m = jnp.zeros((2, 4, 4)).at[0, :2, :2].set(1.0)
    >>> attention_quality(f, m)['valid']
    Array([ True, False], dtype=bool)
  """
  _, inside = _attention_inputs(maps, masks)
  has_box = jnp.any(inside, axis=(1, 2))
  if valid is not None:
    valid = jnp.asarray(valid)
    if valid.shape != has_box.shape:
      raise ValueError(f'valid must have shape [B] = {has_box.shape}, got shape {valid.shape}.')
    has_box = has_box & valid.astype(bool)
  return {
    'mass_inside': attention_mass_inside(maps, masks),
    'pointing_game': pointing_game(maps, masks),
    'iou': attention_iou(maps, masks, threshold=threshold),
    'valid': has_box,
  }


class AttentionMetrics(NamedTuple):
  """Sums of the attention quality over images with a box; means on demand.

  A pytree of scalars: build one per batch inside a jitted eval step
  (:meth:`from_batch`), ``psum`` it under ``pmap``, add the batches with
  :meth:`merge` (on device or host) and read the means with :meth:`compute`.

  Multi-label: :meth:`from_batch_per_class` scores each finding's map against
  that finding's box and keeps the sums per finding (each field ``[K]``, the
  same as :meth:`from_batch` of finding k alone in slot k); they merge and
  ``psum`` the same way, and :meth:`compute_per_class` reads per-finding
  means and their mean over the findings that have boxed images.

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
    >>> m = jnp.zeros((1, 4, 4)).at[0, :2, :2].set(1.0)
    >>> total = AttentionMetrics.empty().merge(AttentionMetrics.from_batch(f, m))
    >>> total.compute()['pointing_game'], total.compute()['num_images']
    (1.0, 1)
  """

  mass_inside: jax.typing.ArrayLike
  pointing_game: jax.typing.ArrayLike
  iou: jax.typing.ArrayLike
  num_images: jax.typing.ArrayLike

  @classmethod
  def empty(cls, num_classes: int | None = None) -> 'AttentionMetrics':
    """Zero sums: scalars, or ``[num_classes]`` per-finding sums."""
    if num_classes is None:
      return cls(np.float64(0.0), np.float64(0.0), np.float64(0.0), np.int64(0))
    if num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
    zeros = np.zeros(num_classes, np.float64)
    return cls(zeros, zeros.copy(), zeros.copy(), np.zeros(num_classes, np.int64))

  @classmethod
  def from_batch(
    cls,
    maps: jax.typing.ArrayLike,
    masks: jax.typing.ArrayLike,
    *,
    threshold: float = 0.5,
    valid: jax.typing.ArrayLike | None = None,
  ) -> 'AttentionMetrics':
    """Sums of :func:`attention_quality` over the batch's counted images."""
    quality = attention_quality(maps, masks, threshold=threshold, valid=valid)
    counted = quality.pop('valid')
    sums = {k: jnp.sum(jnp.where(counted, v, 0.0)) for k, v in quality.items()}
    return cls(**sums, num_images=jnp.sum(counted.astype(jnp.int32)))

  @classmethod
  def from_batch_per_class(
    cls,
    maps: jax.typing.ArrayLike,
    masks: jax.typing.ArrayLike,
    valid: jax.typing.ArrayLike | None = None,
    *,
    threshold: float = 0.5,
  ) -> 'AttentionMetrics':
    """Per-finding sums of :func:`attention_quality` over the batch, fields ``[K]``.

    Slot k holds :meth:`from_batch` of ``maps[:, k]`` against
    ``masks[:, k]`` on the rows ``valid[:, k]`` (one vmapped computation, so
    it runs inside a jitted eval step). An (image, finding) pair counts
    where it is valid and its mask is not empty.

    Args:
      maps: ``[B, K, h, w]`` attention maps, one per finding (e.g. of each
        finding's logit).
      masks: ``[B, K, H, W]`` boxes of each finding, ``H >= h``, ``W >= w``.
      valid: optional bool ``[B, K]``, the pairs to score (e.g. a positive
        finding with a box, on a row that is not padding).
      threshold: IoU threshold, a fraction of each map's maximum.

    Examples:
      >>> f = jnp.zeros((1, 2, 2, 2)).at[0, :, 0, 0].set(1.0)
      >>> m = jnp.zeros((1, 2, 4, 4)).at[0, 0, :2, :2].set(1.0)
      >>> AttentionMetrics.from_batch_per_class(f, m).num_images  # no box for finding 1
      Array([1, 0], dtype=int32)
    """
    maps, masks = jnp.asarray(maps), jnp.asarray(masks)
    if maps.ndim != 4:
      raise ValueError(f'maps must have shape [B, K, h, w], got shape {maps.shape}.')
    if masks.ndim != 4 or masks.shape[:2] != maps.shape[:2]:
      raise ValueError(
        f'masks must have shape [B, K, H, W] with [B, K] = {list(maps.shape[:2])} (maps '
        f'shape {maps.shape}), got shape {masks.shape}.'
      )
    if valid is None:
      valid = jnp.ones(maps.shape[:2], bool)
    valid = jnp.asarray(valid)
    if valid.shape != maps.shape[:2]:
      raise ValueError(
        f'valid must have shape [B, K] = {list(maps.shape[:2])}, got shape {valid.shape}.'
      )

    def one_finding(f, m, v):
      return cls.from_batch(f, m, threshold=threshold, valid=v)

    return jax.vmap(one_finding, in_axes=1)(maps, masks, valid)

  def merge(self, other: 'AttentionMetrics') -> 'AttentionMetrics':
    return type(self)(*(a + b for a, b in zip(self, other)))

  def compute(self) -> dict[str, float | int | None]:
    """``{'mass_inside', 'pointing_game', 'iou'}`` means (None without
    images) and ``'num_images'``."""
    if np.ndim(self.num_images):
      raise ValueError(
        f'these are per-finding sums (shape {np.shape(self.num_images)}): read them with '
        'compute_per_class(class_names).'
      )
    count = int(self.num_images)
    means = {
      k: (float(getattr(self, k)) / count if count else None)
      for k in ('mass_inside', 'pointing_game', 'iou')
    }
    return {**means, 'num_images': count}

  def compute_per_class(self, class_names: Sequence[str]) -> dict[str, Any]:
    """Means of per-finding sums (:meth:`from_batch_per_class`), JSON-ready.

    Returns:
      ``{'mass_inside', 'pointing_game', 'iou'}``: the mean over the findings
      with at least one boxed image of each finding's mean (None without
      any); ``'num_images'``: the (image, finding) pairs scored;
      ``'num_findings'``: the findings with at least one;
      ``'per_class'``: ``{finding: {'mass_inside', 'pointing_game', 'iou',
      'num_images'}}``, as :meth:`compute` of that finding alone.

    Examples:
      >>> f = jnp.zeros((1, 2, 2, 2)).at[0, :, 0, 0].set(1.0)
      >>> m = jnp.zeros((1, 2, 4, 4)).at[0, 0, :2, :2].set(1.0)
      >>> got = AttentionMetrics.from_batch_per_class(f, m).compute_per_class(['a', 'b'])
      >>> got['pointing_game'], got['num_findings'], got['per_class']['b']['iou']
      (1.0, 1, None)
    """
    count = np.asarray(self.num_images, np.int64)
    if count.shape != (len(class_names),):
      raise ValueError(
        f'per-finding sums of shape [K] with K = len(class_names) = {len(class_names)} '
        f'expected, got shape {count.shape}.'
      )
    keys = ('mass_inside', 'pointing_game', 'iou')
    sums = {k: np.asarray(getattr(self, k), np.float64) for k in keys}
    scored = count > 0
    means = {
      k: np.divide(s, count, out=np.zeros(count.shape), where=scored) for k, s in sums.items()
    }
    per_class = {
      name: {
        **{k: (float(means[k][i]) if scored[i] else None) for k in keys},
        'num_images': int(count[i]),
      }
      for i, name in enumerate(class_names)
    }
    return {
      **{k: (float(means[k][scored].mean()) if scored.any() else None) for k in keys},
      'num_images': int(count.sum()),
      'num_findings': int(scored.sum()),
      'per_class': per_class,
    }
