"""Metrics of a classifier for imbalanced data, and of its attention.

Three modules, one job each; every public name is re-exported here, so
``care_jax.metrics.X`` is the name to use:

* `care_jax.metrics.classification`: the confusion matrix, accumulated on
  device in the jitted eval step (:func:`confusion_matrix`, JAX), and what is
  derived from it on the host (:func:`classification_metrics`: accuracy, MCA,
  rare-class recall, per-class recall and precision).
* `care_jax.metrics.scores`: the metrics of class scores, numpy on the host:
  :func:`roc_auc`, :func:`average_precision`, :func:`calibration`, their
  per-class report :func:`score_metrics`, and the per-finding report of a
  multi-label classifier :func:`multilabel_score_metrics`.
* `care_jax.metrics.attention_metrics`: attention quality against lesion
  boxes, JAX: :func:`attention_mass_inside`, :func:`pointing_game`,
  :func:`attention_iou`, :func:`energy_in_box`, :func:`attention_quality` and the sums over batches
  :class:`AttentionMetrics`.
"""

from care_jax.metrics.attention_metrics import AttentionMetrics
from care_jax.metrics.attention_metrics import attention_iou
from care_jax.metrics.attention_metrics import attention_mass_inside
from care_jax.metrics.attention_metrics import attention_quality
from care_jax.metrics.attention_metrics import energy_in_box
from care_jax.metrics.attention_metrics import pointing_game
from care_jax.metrics.classification import classification_metrics
from care_jax.metrics.classification import confusion_matrix
from care_jax.metrics.scores import average_precision
from care_jax.metrics.scores import calibration
from care_jax.metrics.scores import multilabel_score_metrics
from care_jax.metrics.scores import roc_auc
from care_jax.metrics.scores import score_metrics

__all__ = [
  'AttentionMetrics',
  'attention_iou',
  'attention_mass_inside',
  'attention_quality',
  'average_precision',
  'calibration',
  'classification_metrics',
  'confusion_matrix',
  'energy_in_box',
  'multilabel_score_metrics',
  'pointing_game',
  'roc_auc',
  'score_metrics',
]
