"""care-jax: CARE (Class Attention to REgions of lesion, MIDL 2019) in JAX/Flax.

The pure-JAX math is importable without TensorFlow::

    import care_jax
    loss = care_jax.care_loss(attention_maps, masks, tau=0.5, lam=0.7)

The classification losses and class weights are in :mod:`care_jax.imbalance`,
the classification term of the train step in :mod:`care_jax.classification_loss`
and the metrics in :mod:`care_jax.metrics`. Models live in :mod:`care_jax.models`,
input pipelines in :mod:`care_jax.data`, the config schema in :mod:`care_jax.config`
and the trainer in :mod:`care_jax.training` (docs/architecture.md: the layers).
"""

from care_jax.attention import cam
from care_jax.attention import grad_cam
from care_jax.attention import minmax_normalize
from care_jax.imbalance import cross_entropy
from care_jax.imbalance import inverse_frequency_weights
from care_jax.imbalance import positive_weights
from care_jax.imbalance import sigmoid_binary_cross_entropy
from care_jax.imbalance import weighted_cross_entropy_loss
from care_jax.losses import care_loss
from care_jax.losses import care_loss_per_example
from care_jax.losses import distance_outer_mask
from care_jax.metrics import classification_metrics
from care_jax.metrics import confusion_matrix
from care_jax.metrics import multilabel_score_metrics

__version__ = '0.2.0.dev0'

__all__ = [
  'cam',
  'care_loss',
  'care_loss_per_example',
  'classification_metrics',
  'confusion_matrix',
  'cross_entropy',
  'distance_outer_mask',
  'grad_cam',
  'inverse_frequency_weights',
  'minmax_normalize',
  'multilabel_score_metrics',
  'positive_weights',
  'sigmoid_binary_cross_entropy',
  'weighted_cross_entropy_loss',
]
