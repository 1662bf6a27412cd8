"""Imbalance-aware classification losses, to use alone or combined with CARE.

Pure per-example losses in the optax style (``[B, K]`` logits, ``[B]`` integer
labels, keyword-only hyperparameters, ``[B]`` float32 values):

* :func:`focal_loss` (Lin et al. 2017),
* :func:`logit_adjusted_loss` and :func:`posthoc_logit_adjustment`
  (Menon et al. 2021),
* :func:`balanced_softmax_loss` (Ren et al. 2020),
* :func:`ldam_loss` with :func:`ldam_margins` and deferred re-weighting
  :func:`drw_weights` (Cao et al. 2019),

and host-side helpers that turn training class counts into per-class
constants: :func:`class_balanced_weights` (Cui et al. 2019, effective number
of samples) and :func:`class_priors`.

:func:`make_classification_loss` builds the classification term of the train
step from a loss name (:data:`LOSS_NAMES`) and keyword hyperparameters: a
:class:`ClassificationLoss` that returns per-example ``(values, weights)``
whose batch loss is ``sum(weights * values) / sum(weights)`` (sums over the
global batch, so that sums over devices reproduce the single-device loss).
Each loss normalises its class weights ``w`` as its official code does:

============================  ==============================  ======================================
loss name                     batch loss over B examples      as the official code
============================  ==============================  ======================================
'class_balanced'              ``sum_i w[y_i] CE_i / B``       Cui et al. 2019 (TF, ``CB_loss``)
'focal' with ``focal_alpha``  ``sum_i alpha[y_i] FL_i / B``   Lin et al. 2017, Cui et al. 2019
'weighted_ce' (CSL)           ``sum_i w[y_i] CE_i / sum w``   CARE ``CrossEntropyLoss(weight=w)``
'ldam_drw' from drw_start     ``sum_i w[y_i] l_i / sum w``    LDAM-DRW ``F.cross_entropy(weight=w)``
the others (DRW before it)    ``sum_i l_i / B``               the mean
============================  ==============================  ======================================

For a batch mean the class weight is part of the per-example ``values``
(``weights`` are 1); for a weighted mean it is the ``weights``.
"""

from collections.abc import Callable, Mapping
import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from care_jax import _checks
from care_jax import _numerics
from care_jax import losses

__all__ = [
  'ClassificationLoss',
  'FOCAL_ALPHAS',
  'LOSS_NAMES',
  'balanced_softmax_loss',
  'class_balanced_weights',
  'class_priors',
  'default_loss_config',
  'drw_weights',
  'focal_loss',
  'ldam_loss',
  'ldam_margins',
  'logit_adjusted_loss',
  'make_classification_loss',
  'MULTILABEL_LOSS_NAMES',
  'posthoc_logit_adjustment',
  'sigmoid_focal_loss',
  'TASKS',
  'validate_loss_config',
]

LOSS_NAMES = (
  'ce',
  'weighted_ce',
  'focal',
  'class_balanced',
  'logit_adjusted',
  'balanced_softmax',
  'ldam_drw',
)
# Per-class alpha of the focal loss, by name (None: no class weighting).
FOCAL_ALPHAS = ('inverse_frequency', 'class_balanced')
# 'multiclass': one label per image, softmax; 'multilabel': any number of
# positive classes per image (findings), one sigmoid per class.
TASKS = ('multiclass', 'multilabel')
# The losses of a multi-label task, each per (example, class) and averaged over
# the classes of an example: 'ce' the sigmoid binary cross-entropy, 'weighted_ce'
# the same with positive weights n_neg / n_pos (the CSL counterpart), 'focal' the
# sigmoid focal loss. The others are softmax losses over exclusive classes.
MULTILABEL_LOSS_NAMES = ('ce', 'weighted_ce', 'focal')


def _float_logits(logits: ArrayLike) -> jax.Array:
  logits = jnp.asarray(logits)
  return logits.astype(_numerics.compute_dtype(logits))


def _class_vector(name: str, value: ArrayLike, logits: jax.Array) -> jax.Array:
  """A [K] per-class constant, checked against [B, K] logits."""
  value = jnp.asarray(value)
  if logits.ndim != 2 or value.shape != logits.shape[1:]:
    raise ValueError(
      f'{name} must have shape [K] = ({logits.shape[-1]},) for logits of '
      f'shape [B, K] = {logits.shape}, got shape {value.shape}.'
    )
  return value.astype(logits.dtype)


def focal_loss(
  logits: ArrayLike, labels: ArrayLike, *, gamma: float = 2.0, alpha: ArrayLike | None = None
) -> jax.Array:
  """Per-example softmax focal loss.

  ``FL_i = -alpha[y_i] * (1 - p_i)^gamma * log p_i`` with
  ``p_i = softmax(z_i)[y_i]``: easy examples (``p_i`` near 1) are
  down-weighted. ``gamma = 0`` (and no ``alpha``) is exactly the
  cross-entropy. Computed in float32; the gradient is finite also where
  ``p_i`` rounds to 1 (for any ``gamma >= 0``).

  Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
  Eq. 5 (with the softmax instead of the sigmoid for K classes).

  Args:
    logits: [B, K] unnormalised scores (float32 or bfloat16).
    labels: [B] integer labels in ``[0, K)``.
    gamma: focusing parameter ``>= 0`` (the paper's best: 2).
    alpha: optional [K] per-class weights ``alpha``.

  Returns:
    [B] float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
    >>> print([f'{v:.4f}' for v in focal_loss(logits, jnp.array([0, 0]))])
    ['0.0018', '1.6501']
  """
  if gamma < 0:
    raise ValueError(f'gamma must be >= 0, got {gamma}.')
  logits = _float_logits(logits)
  ce = losses.cross_entropy(logits, labels)
  values = ce
  if gamma:  # gamma == 0: the factor is 1 (and 0**0 would have a NaN gradient).
    # 1 - p = -expm1(-CE), accurate when p is close to 1.
    one_minus_p = -jnp.expm1(-ce)
    positive = one_minus_p > 0
    safe = jnp.where(positive, one_minus_p, jnp.ones_like(one_minus_p))
    values = jnp.where(positive, safe**gamma, jnp.zeros_like(safe)) * ce
  if alpha is not None:
    values = values * _class_vector('alpha', alpha, logits)[jnp.asarray(labels)]
  return values


def sigmoid_focal_loss(
  logits: ArrayLike, labels: ArrayLike, *, gamma: float = 2.0, alpha: float | None = None
) -> jax.Array:
  """Per-(example, class) sigmoid focal loss of multi-label logits.

  ``FL_ik = alpha_t (1 - p_t)^gamma BCE_ik`` with ``p = sigmoid(z_ik)``,
  ``p_t = p y + (1 - p)(1 - y)``, ``BCE_ik`` the sigmoid binary cross-entropy
  (`care_jax.losses.sigmoid_binary_cross_entropy`) and ``alpha_t = alpha y +
  (1 - alpha)(1 - y)`` (1 without ``alpha``). ``gamma = 0`` without ``alpha``
  is exactly the binary cross-entropy. Computed in float32, with a finite
  gradient where ``p_t`` rounds to 1.

  Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
  Eq. 5 (the sigmoid form, one binary decision per class).

  Args:
    logits: [B, K] unnormalised scores.
    labels: [B, K] multi-hot labels in [0, 1].
    gamma: focusing parameter ``>= 0`` (the paper's best: 2).
    alpha: optional weight in [0, 1] of the positive term (the paper: 0.25).

  Returns:
    [B, K] float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[2.0, 0.0]])
    >>> print(sigmoid_focal_loss(z, jnp.array([[1.0, 1.0]])).round(4))
    [[0.0018 0.1733]]
  """
  if gamma < 0:
    raise ValueError(f'gamma must be >= 0, got {gamma}.')
  if alpha is not None and not 0 <= alpha <= 1:
    raise ValueError(f'alpha must be None or lie in [0, 1], got {alpha}.')
  logits = _float_logits(logits)
  bce = losses.sigmoid_binary_cross_entropy(logits, labels)
  labels = jnp.asarray(labels).astype(logits.dtype)
  values = bce
  if gamma:  # gamma == 0: the factor is 1 (and 0**0 would have a NaN gradient).
    p = jax.nn.sigmoid(logits)
    one_minus_pt = p * (1.0 - labels) + (1.0 - p) * labels
    positive = one_minus_pt > 0
    safe = jnp.where(positive, one_minus_pt, jnp.ones_like(one_minus_pt))
    values = jnp.where(positive, safe**gamma, jnp.zeros_like(safe)) * bce
  if alpha is not None:
    values = (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * values
  return values


def logit_adjusted_loss(
  logits: ArrayLike, labels: ArrayLike, *, class_priors: ArrayLike, tau: float = 1.0
) -> jax.Array:
  """Per-example logit-adjusted softmax cross-entropy.

  ``LA_i = -log softmax(z_i + tau * log pi)[y_i]``, with ``pi`` the training
  class priors: rare classes must win by a larger margin while training, and
  the raw logits then estimate the balanced posterior. ``tau = 0`` is the
  cross-entropy.

  Reference: Menon et al., "Long-tail learning via logit adjustment",
  ICLR 2021, Eq. 10.

  Args:
    logits: [B, K] unnormalised scores.
    labels: [B] integer labels in ``[0, K)``.
    class_priors: [K] positive training class frequencies ``pi`` (see
      :func:`class_priors`).
    tau: temperature of the adjustment (the paper's default: 1).

  Returns:
    [B] float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss = logit_adjusted_loss(jnp.zeros((1, 2)), jnp.array([1]),
    ...                            class_priors=jnp.array([0.8, 0.2]))
    >>> print(f'{float(loss[0]):.4f}')  # -log(0.2): log(pi) shifts the logits.
    1.6094
  """
  logits = _float_logits(logits)
  log_priors = jnp.log(_class_vector('class_priors', class_priors, logits))
  return losses.cross_entropy(logits + tau * log_priors, labels)


def posthoc_logit_adjustment(
  logits: ArrayLike, *, class_priors: ArrayLike, tau: float = 1.0
) -> jax.Array:
  """Post-hoc logit adjustment for prediction: ``z - tau * log pi``.

  ``argmax_k (z_k - tau * log pi_k)`` turns the scores of a model trained with
  plain cross-entropy into balanced-error predictions; ``tau = 0`` leaves the
  logits unchanged.

  Reference: Menon et al., "Long-tail learning via logit adjustment",
  ICLR 2021, Eq. 9.

  Args:
    logits: [B, K] unnormalised scores.
    class_priors: [K] positive training class frequencies ``pi``.
    tau: temperature of the adjustment.

  Returns:
    [B, K] float32 adjusted logits.

  Examples:
    >>> import jax.numpy as jnp
    >>> z = posthoc_logit_adjustment(jnp.array([[1.0, 0.0]]),
    ...                              class_priors=jnp.array([0.9, 0.1]))
    >>> print(z.round(4), z.argmax(-1))
    [[1.1054 2.3026]] [1]
  """
  logits = _float_logits(logits)
  return logits - tau * jnp.log(_class_vector('class_priors', class_priors, logits))


def balanced_softmax_loss(
  logits: ArrayLike, labels: ArrayLike, *, class_counts: ArrayLike
) -> jax.Array:
  """Per-example balanced softmax cross-entropy.

  ``BS_i = -log( n[y_i] exp(z_i[y_i]) / sum_j n_j exp(z_i[j]) )``: the
  softmax re-weighted by the training counts ``n``, which compensates the
  label shift between the imbalanced training and a balanced test
  distribution. Equals :func:`logit_adjusted_loss` with ``tau = 1``.

  Reference: Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual
  Recognition", NeurIPS 2020, Eq. 4.

  Args:
    logits: [B, K] unnormalised scores.
    labels: [B] integer labels in ``[0, K)``.
    class_counts: [K] positive training examples per class.

  Returns:
    [B] float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss = balanced_softmax_loss(jnp.zeros((1, 2)), jnp.array([1]),
    ...                              class_counts=jnp.array([80, 20]))
    >>> print(f'{float(loss[0]):.4f}')  # -log(20 / 100)
    1.6094
  """
  logits = _float_logits(logits)
  log_counts = jnp.log(_class_vector('class_counts', class_counts, logits))
  return losses.cross_entropy(logits + log_counts, labels)


def ldam_loss(
  logits: ArrayLike, labels: ArrayLike, *, margins: ArrayLike, s: float = 30.0
) -> jax.Array:
  """Per-example label-distribution-aware margin (LDAM) loss.

  ``LDAM_i = -log softmax(s * (z_i - m[y_i] * e_{y_i}))[y_i]``: the true
  class's logit must beat the others by the class margin ``m_y`` (larger for
  rarer classes, see :func:`ldam_margins`); ``s`` scales the logits, as the
  official code does (the paper applies it to cosine-normalised logits).

  Reference: Cao et al., "Learning Imbalanced Datasets with
  Label-Distribution-Aware Margin Loss", NeurIPS 2019, Eq. 13.

  Args:
    logits: [B, K] unnormalised scores.
    labels: [B] integer labels in ``[0, K)``.
    margins: [K] per-class margins ``m``.
    s: logit scale (the official code's default: 30).

  Returns:
    [B] float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss = ldam_loss(jnp.array([[1.0, 0.0]]), jnp.array([0]),
    ...                  margins=jnp.array([0.5, 0.2]), s=2.0)
    >>> print(f'{float(loss[0]):.4f}')  # -log softmax([1, 0])[0] = log(1 + e^-1)
    0.3133
  """
  logits = _float_logits(logits)
  margins = _class_vector('margins', margins, logits)
  labels = jnp.asarray(labels)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return losses.cross_entropy(s * (logits - margins[labels][:, None] * one_hot), labels)


def drw_weights(
  labels: ArrayLike, step: ArrayLike, *, class_weights: ArrayLike, start_step: int
) -> jax.Array:
  """Deferred re-weighting: ``w[y_i]`` from ``start_step`` on, 1 before.

  A traced switch on ``step``, so both phases share one compiled train step.
  Use the result as the weights of a weighted mean.

  Reference: Cao et al., "Learning Imbalanced Datasets with
  Label-Distribution-Aware Margin Loss", NeurIPS 2019, Algorithm 1 (DRW).

  Args:
    labels: [B] integer labels.
    step: scalar int, the current optimisation step (0-based).
    class_weights: [K] weights, e.g. :func:`class_balanced_weights`.
    start_step: first step that uses ``class_weights``.

  Returns:
    [B] float32 per-example weights.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.array([0.5, 1.5])
    >>> labels = jnp.array([0, 1])
    >>> print(drw_weights(labels, 3, class_weights=w, start_step=4),
    ...       drw_weights(labels, 4, class_weights=w, start_step=4))
    [1. 1.] [0.5 1.5]
  """
  weights = jnp.asarray(class_weights, jnp.float32)[jnp.asarray(labels)]
  return jnp.where(jnp.asarray(step) >= start_step, weights, jnp.ones_like(weights))


def class_balanced_weights(class_counts: ArrayLike, *, beta: float = 0.9999) -> np.ndarray:
  """Class weights from the effective number of samples.

  ``w_k = (1 - beta) / (1 - beta^{n_k})``, normalised so that
  ``sum_k w_k = K``. ``beta = 0`` gives equal weights (no re-weighting),
  ``beta -> 1`` approaches inverse class frequency. Host-side: call it once
  with concrete counts, not under ``jit``.

  Reference: Cui et al., "Class-Balanced Loss Based on Effective Number of
  Samples", CVPR 2019, Eq. 3 and Sec. 4.

  Args:
    class_counts: [K] positive training examples per class ``n_k``.
    beta: in ``[0, 1)``.

  Returns:
    [K] float32 numpy weights summing to K.

  Examples:
    >>> print(class_balanced_weights([100, 10], beta=0.9).round(4))
    [0.7889 1.2111]
  """
  counts = _checks.positive_counts(class_counts)
  if not 0.0 <= beta < 1.0:
    raise ValueError(f'beta must lie in [0, 1), got {beta}.')
  # 1 - beta^n, computed as -expm1(n log beta) to keep precision at beta near 1.
  effective = -np.expm1(counts * np.log(beta)) if beta > 0 else np.ones_like(counts)
  weights = (1.0 - beta) / effective
  return (weights * counts.size / weights.sum()).astype(np.float32)


def class_priors(class_counts: ArrayLike) -> np.ndarray:
  """Training class frequencies ``pi_k = n_k / sum_j n_j`` (float32, host-side).

  Examples:
    >>> print(class_priors([30, 10]))
    [0.75 0.25]
  """
  counts = _checks.positive_counts(class_counts)
  return (counts / counts.sum()).astype(np.float32)


def ldam_margins(class_counts: ArrayLike, *, max_margin: float = 0.5) -> np.ndarray:
  """LDAM margins ``m_k = C / n_k^{1/4}``, with C such that ``max_k m_k = max_margin``.

  Reference: Cao et al., NeurIPS 2019, Eq. 12 (and the official code's
  ``max_m``).

  Args:
    class_counts: [K] positive training examples per class ``n_k``.
    max_margin: the margin of the rarest class, ``>= 0``.

  Returns:
    [K] float32 numpy margins.

  Examples:
    >>> print(ldam_margins([16, 1], max_margin=0.5))
    [0.25 0.5 ]
  """
  counts = _checks.positive_counts(class_counts)
  if max_margin < 0:
    raise ValueError(f'max_margin must be >= 0, got {max_margin}.')
  margins = counts**-0.25
  return (margins * (max_margin / margins.max())).astype(np.float32)


def default_loss_config():
  """Deprecated alias of ``care_jax.config.default_loss_config()`` (removed in 0.3).

  The ``config.loss`` schema lives in :mod:`care_jax.config`; this module only
  takes keyword hyperparameters (see :func:`make_classification_loss`).
  """
  warnings.warn(
    'care_jax.imbalance.default_loss_config() is deprecated and will be removed in 0.3; '
    'use care_jax.config.default_loss_config() instead.',
    DeprecationWarning,
    stacklevel=2,
  )
  from care_jax import config  # Deprecated alias: remove in 0.3.

  return config.default_loss_config()


def validate_loss_config(loss_config) -> None:
  """Deprecated alias of ``care_jax.config.validate_loss(loss_config)`` (removed in 0.3)."""
  warnings.warn(
    'care_jax.imbalance.validate_loss_config(cfg) is deprecated and will be removed in 0.3; '
    'use care_jax.config.validate_loss(cfg) instead (or pass the hyperparameters to '
    'make_classification_loss, which checks them).',
    DeprecationWarning,
    stacklevel=2,
  )
  from care_jax import config  # Deprecated alias: remove in 0.3.

  config.validate_loss(loss_config)


@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationLoss:
  """The classification term of a train step, built by :func:`make_classification_loss`.

  ``loss(logits, labels, step) -> (values, weights)``, both [B] float32; the
  batch loss is ``sum(weights * values) / sum(weights)`` (sums over the global
  batch under data parallelism). Jittable; hold it as a constant of the step.
  Class weights of a batch mean (``sum_i w[y_i] l_i / B``) are folded into
  ``values_fn`` (weights 1); ``class_weights`` are those of a weighted mean
  (``/ sum_i w[y_i]``): see the module docstring's table.

  Attributes:
    name: the loss name (one of :data:`LOSS_NAMES`) it was built from.
    values_fn: ``(logits [B, K] float32, labels [B]) -> [B]`` per-example loss.
    class_weights: optional [K] weights of the labels in the weighted mean.
    reweight_step: ``class_weights`` apply from this step on (DRW); 0: always.
    posthoc_bias: optional [K] ``tau * log pi`` subtracted at prediction time.
    task: one of :data:`TASKS`; 'multilabel' losses take [B, K] multi-hot
      labels and average over the classes of each example.
  """

  name: str
  values_fn: Callable[[jax.Array, jax.Array], jax.Array]
  class_weights: np.ndarray | None = None
  reweight_step: int = 0
  posthoc_bias: np.ndarray | None = None
  task: str = 'multiclass'

  def __call__(
    self, logits: ArrayLike, labels: ArrayLike, step: ArrayLike
  ) -> tuple[jax.Array, jax.Array]:
    """Per-example ``(values, weights)`` of a batch at optimisation step ``step``."""
    labels = jnp.asarray(labels)
    values = self.values_fn(_float_logits(logits), labels)
    if self.class_weights is None:
      return values, jnp.ones_like(values)
    if self.reweight_step:
      weights = drw_weights(
        labels, step, class_weights=self.class_weights, start_step=self.reweight_step
      )
    else:
      weights = jnp.asarray(self.class_weights, jnp.float32)[labels]
    return values, weights

  def predict_logits(self, logits: ArrayLike) -> jax.Array:
    """The scores to take the argmax of: post-hoc adjusted, or ``logits`` unchanged."""
    if self.posthoc_bias is None:
      return jnp.asarray(logits)
    return _float_logits(logits) - jnp.asarray(self.posthoc_bias, jnp.float32)


# The loss name and the keyword hyperparameters of make_classification_loss: the fields of a
# config.loss that the deprecated ConfigDict call reads.
_LOSS_ARGUMENTS = (
  'name',
  'gamma',
  'focal_alpha',
  'beta',
  'tau',
  'posthoc_tau',
  'ldam_max_margin',
  'ldam_s',
  'drw_start',
)


def _is_config(value) -> bool:
  return hasattr(value, 'to_dict') or isinstance(value, Mapping)


def make_classification_loss(
  name: str,
  *,
  class_counts: ArrayLike,
  num_steps: int,
  gamma: float = 2.0,
  focal_alpha: str | None = None,
  beta: float = 0.9999,
  tau: float = 1.0,
  posthoc_tau: float = 0.0,
  ldam_max_margin: float = 0.5,
  ldam_s: float = 30.0,
  drw_start: float = 0.8,
  task: str = 'multiclass',
  num_examples: int | None = None,
) -> ClassificationLoss:
  """The :class:`ClassificationLoss` ``name`` for these training counts.

  Args:
    name: one of :data:`LOSS_NAMES`. 'ce'; 'weighted_ce' (inverse-frequency
      class weights normalised to sum 1, the official CARE CSL; weighted mean
      ``sum_i w l_i / sum_i w``); 'focal' (with ``focal_alpha``:
      ``sum_i alpha[y_i] FL_i / B``); 'class_balanced' (CE weighted by
      effective numbers, ``sum_i w[y_i] CE_i / B`` as Cui et al.'s code);
      'logit_adjusted'; 'balanced_softmax'; 'ldam_drw' (LDAM, re-weighted by
      effective numbers from ``drw_start`` on, as the weighted mean of
      ``F.cross_entropy(weight=w)``; LDAM's ``ldam_s`` is meant for cosine
      logits: a config's ``model.head = 'default'`` then builds the cosine
      head 'normed_linear', `care_jax.models.resolve_head`). Deprecated
      (removed in 0.3): a ``config.loss`` ConfigDict or mapping of all the
      arguments below but the counts and steps, which is expanded into them
      (with a DeprecationWarning).
    class_counts: [K] training examples per class (all positive).
    num_steps: total optimisation steps (places ``drw_start``).
    gamma: focal focusing parameter ``>= 0`` (Lin et al.: 2).
    focal_alpha: None (no class weights in the focal loss), or one of
      :data:`FOCAL_ALPHAS`: 'inverse_frequency' or 'class_balanced'
      (effective numbers with ``beta``: the class-balanced focal loss of
      Cui et al.). The batch loss is ``sum_i alpha[y_i] FL_i / B``: the
      'inverse_frequency' alphas sum to 1 (the CSL weights), so that loss is
      on the order of ``1 / K`` of the unweighted one (the 'class_balanced'
      alphas sum to K).
    beta: effective-number beta in ``[0, 1)`` of 'class_balanced', of the DRW
      weights of 'ldam_drw' and of ``focal_alpha='class_balanced'`` (Cui et
      al. and Cao et al.: 0.9999).
    tau: temperature ``>= 0`` of 'logit_adjusted' (Menon et al.: 1).
    posthoc_tau: post-hoc logit adjustment ``>= 0`` of the predictions,
      ``argmax(z - posthoc_tau * log pi)``; 0 turns it off. Combines with any
      loss (Menon et al.: 1 for a model trained with 'ce').
    ldam_max_margin: largest LDAM margin ``>= 0``, that of the rarest class
      (Cao et al.: 0.5).
    ldam_s: LDAM logit scale ``> 0`` (the official code: 30, on cosine
      logits).
    drw_start: fraction of training in ``[0, 1]`` after which 'ldam_drw'
      re-weights (Cao et al.: epoch 160 of 200 = 0.8; 1 never re-weights:
      plain LDAM).
    task: one of :data:`TASKS`. 'multilabel' (one sigmoid per class, [B, K]
      multi-hot labels, ``class_counts`` the positives per class) takes the
      names of :data:`MULTILABEL_LOSS_NAMES`: 'ce' the sigmoid binary
      cross-entropy, 'weighted_ce' the same with ``pos_weight = n_negative /
      n_positive`` per class (`care_jax.losses.positive_weights`), 'focal'
      the sigmoid focal loss (:func:`sigmoid_focal_loss`, ``gamma``; no
      ``focal_alpha``); each example's value is the mean over its classes, so
      the batch loss is PyTorch's ``BCEWithLogitsLoss()`` mean over all
      ``B * K`` entries. The softmax losses, ``focal_alpha`` and
      ``posthoc_tau`` are refused there.
    num_examples: training examples (needed by the multi-label 'weighted_ce').

  Returns:
    The loss; ``'ce'`` gives weights 1 and ``'weighted_ce'`` the
    inverse-frequency weights of the labels (the CSL of the official code);
    'class_balanced' and 'focal' give the class-weighted per-example values
    and weights 1 (a batch mean).

  Raises:
    ValueError: for an unknown ``name`` or a hyperparameter out of range
      (the argument and its value are named), ``num_steps < 1``, or class
      counts that are not all positive.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss = make_classification_loss('ce', class_counts=np.array([90, 10]), num_steps=100)
    >>> values, weights = loss(jnp.zeros((2, 2)), jnp.array([0, 1]), step=0)
    >>> print(values.round(4), weights)
    [0.6931 0.6931] [1. 1.]
  """
  if _is_config(name):
    warnings.warn(
      'make_classification_loss(loss_config, ...) with a ConfigDict or mapping is deprecated '
      'and will be removed in 0.3; pass the loss name and keyword hyperparameters instead, '
      'e.g. make_classification_loss(**config.loss.to_dict(), class_counts=..., '
      'num_steps=...).',
      DeprecationWarning,
      stacklevel=2,
    )
    fields = dict(name.to_dict() if hasattr(name, 'to_dict') else name)
    return make_classification_loss(
      **{key: fields[key] for key in _LOSS_ARGUMENTS if key in fields},
      class_counts=class_counts,
      num_steps=num_steps,
    )

  def check(ok: bool, argument: str, value, message: str) -> None:
    if not ok:
      raise ValueError(f'{argument} = {value!r}: {message}')

  check(name in LOSS_NAMES, 'name', name, f'must be one of {LOSS_NAMES}')
  check(gamma >= 0, 'gamma', gamma, 'must be >= 0')
  check(
    focal_alpha is None or focal_alpha in FOCAL_ALPHAS,
    'focal_alpha',
    focal_alpha,
    f'must be None or one of {FOCAL_ALPHAS}',
  )
  check(0 <= beta < 1, 'beta', beta, 'must lie in [0, 1)')
  check(tau >= 0, 'tau', tau, 'must be >= 0')
  check(posthoc_tau >= 0, 'posthoc_tau', posthoc_tau, 'must be >= 0 (0 turns it off)')
  check(ldam_max_margin >= 0, 'ldam_max_margin', ldam_max_margin, 'must be >= 0')
  check(ldam_s > 0, 'ldam_s', ldam_s, 'must be > 0')
  check(0 <= drw_start <= 1, 'drw_start', drw_start, 'must lie in [0, 1] (a fraction of training)')
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
  check(task in TASKS, 'task', task, f'must be one of {TASKS}')
  if task == 'multilabel':
    return _multilabel_loss(
      name,
      class_counts=class_counts,
      num_examples=num_examples,
      gamma=gamma,
      focal_alpha=focal_alpha,
      posthoc_tau=posthoc_tau,
    )
  counts = _checks.positive_counts(class_counts)
  values_fn = losses.cross_entropy
  class_weights = None
  reweight_step = 0
  if name == 'weighted_ce':
    class_weights = losses.inverse_frequency_weights(counts)
  elif name == 'class_balanced':
    # w[y] CE in the values, weights 1: the batch mean of Cui et al.'s code (divide by B).
    values_fn = functools.partial(
      losses.cross_entropy, class_weights=class_balanced_weights(counts, beta=beta)
    )
  elif name == 'focal':
    alpha = None  # alpha[y] FL in the values, weights 1: the batch mean (divide by B).
    if focal_alpha == 'inverse_frequency':
      alpha = losses.inverse_frequency_weights(counts)
    elif focal_alpha == 'class_balanced':
      alpha = class_balanced_weights(counts, beta=beta)
    values_fn = functools.partial(focal_loss, gamma=gamma, alpha=alpha)
  elif name == 'logit_adjusted':
    values_fn = functools.partial(logit_adjusted_loss, class_priors=class_priors(counts), tau=tau)
  elif name == 'balanced_softmax':
    values_fn = functools.partial(balanced_softmax_loss, class_counts=counts.astype(np.float32))
  elif name == 'ldam_drw':
    values_fn = functools.partial(
      ldam_loss, margins=ldam_margins(counts, max_margin=ldam_max_margin), s=ldam_s
    )
    class_weights = class_balanced_weights(counts, beta=beta)
    # A DRW start at step 0 is a 0 here, which means "always": the same thing.
    reweight_step = round(drw_start * num_steps)
  posthoc_bias = None
  if posthoc_tau:
    posthoc_bias = (posthoc_tau * np.log(class_priors(counts))).astype(np.float32)
  return ClassificationLoss(
    name=name,
    values_fn=values_fn,
    class_weights=class_weights,
    reweight_step=reweight_step,
    posthoc_bias=posthoc_bias,
  )


def _mean_over_classes(elementwise: Callable[..., jax.Array], **kwargs) -> Callable:
  """``(logits, labels) -> [B]``: each example's mean of ``elementwise`` over its classes."""
  return lambda logits, labels: jnp.mean(elementwise(logits, labels, **kwargs), axis=-1)


def _multilabel_loss(
  name: str, *, class_counts, num_examples, gamma, focal_alpha, posthoc_tau
) -> ClassificationLoss:
  """The multi-label :class:`ClassificationLoss` (see :func:`make_classification_loss`)."""
  if name not in MULTILABEL_LOSS_NAMES:
    raise ValueError(
      f'loss.name = {name!r} is a softmax loss over exclusive classes; a multi-label task'
      f" (config.task='multilabel') takes one of {MULTILABEL_LOSS_NAMES}: 'ce' (sigmoid"
      " binary cross-entropy), 'weighted_ce' (positive-class weights), 'focal' (sigmoid focal)."
    )
  if focal_alpha is not None:
    raise ValueError(
      f'loss.focal_alpha = {focal_alpha!r}: per-class focal alphas are for exclusive classes;'
      ' a multi-label task takes focal_alpha=None (use weighted_ce for positive weights).'
    )
  if posthoc_tau:
    raise ValueError(
      f'loss.posthoc_tau = {posthoc_tau!r}: post-hoc logit adjustment shifts a softmax over'
      ' exclusive classes; a multi-label task takes posthoc_tau=0.'
    )
  if name == 'weighted_ce':
    if num_examples is None:
      raise ValueError("the multi-label 'weighted_ce' needs num_examples (the training examples).")
    pos_weight = losses.positive_weights(class_counts, num_examples)
    values_fn = _mean_over_classes(losses.sigmoid_binary_cross_entropy, pos_weight=pos_weight)
  elif name == 'focal':
    values_fn = _mean_over_classes(sigmoid_focal_loss, gamma=gamma)
  else:
    values_fn = _mean_over_classes(losses.sigmoid_binary_cross_entropy)
  return ClassificationLoss(name=name, values_fn=values_fn, task='multilabel')
