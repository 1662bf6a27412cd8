"""Metrics of class scores, numpy on the host: AUROC, average precision, calibration.

Multi-class: :func:`score_metrics` scores each class of the probabilities
one-vs-rest (:func:`roc_auc`, :func:`average_precision`) and their calibration
(:func:`calibration`, the expected calibration error and its reliability bins).

Multi-label (one sigmoid per finding): :func:`multilabel_score_metrics`
scores each finding as its own binary problem (AUROC, AP, recall and
precision at a threshold, their means).

AUROC and AP are those of scikit-learn (``roc_auc_score``,
``average_precision_score``), so numbers can be cross-checked.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
  'average_precision',
  'calibration',
  'multilabel_score_metrics',
  'roc_auc',
  'score_metrics',
]


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
