"""Per-example classification losses and class weights for imbalanced data.

Pure per-example losses in the optax style (``[B, K]`` logits, ``[B]`` integer
labels, keyword-only hyperparameters, ``[B]`` float32 values):

* :func:`cross_entropy` (optionally class-weighted) and its weighted mean
  :func:`weighted_cross_entropy_loss` (the cost-sensitive learning of the
  official CARE code, with :func:`inverse_frequency_weights`),
* :func:`focal_loss` (Lin et al. 2017),
* :func:`logit_adjusted_loss` and :func:`posthoc_logit_adjustment`
  (Menon et al. 2021),
* :func:`balanced_softmax_loss` (Ren et al. 2020),
* :func:`ldam_loss` with :func:`ldam_margins` and deferred re-weighting
  :func:`drw_weights` (Cao et al. 2019);

for multi-label logits (``[B, K]`` multi-hot labels, ``[B, K]`` values, one
sigmoid per class): :func:`sigmoid_binary_cross_entropy` (with
:func:`positive_weights`) and :func:`sigmoid_focal_loss`;

and host-side helpers that turn training class counts into per-class
constants: :func:`inverse_frequency_weights`, :func:`class_balanced_weights`
(Cui et al. 2019, effective number of samples), :func:`class_priors`,
:func:`ldam_margins` and :func:`positive_weights`.

The classification term of the train step is built from these by
`care_jax.classification_loss.make_classification_loss` (a loss name and
keyword hyperparameters).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from care_jax import _checks
from care_jax import _deprecated
from care_jax import _numerics

__all__ = [
  'balanced_softmax_loss',
  'class_balanced_weights',
  'class_priors',
  'cross_entropy',
  'drw_weights',
  'focal_loss',
  'inverse_frequency_weights',
  'ldam_loss',
  'ldam_margins',
  'logit_adjusted_loss',
  'posthoc_logit_adjustment',
  'positive_weights',
  'sigmoid_binary_cross_entropy',
  'sigmoid_focal_loss',
  'weighted_cross_entropy_loss',
]


def _class_vector(name: str, value: ArrayLike, logits: jax.Array) -> jax.Array:
  """A [K] per-class constant, checked against [B, K] logits."""
  value = jnp.asarray(value)
  if logits.ndim != 2 or value.shape != logits.shape[1:]:
    raise ValueError(
      f'{name} must have shape [K] = ({logits.shape[-1]},) for logits of '
      f'shape [B, K] = {logits.shape}, got shape {value.shape}.'
    )
  return value.astype(logits.dtype)


def cross_entropy(
  logits: ArrayLike, labels: ArrayLike, *, class_weights: ArrayLike | None = None
) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels.

  ``CE_i = logsumexp(z_i) - z_i[y_i]``, multiplied by ``w[y_i]`` when
  ``class_weights`` is given. Computed in float32.

  Args:
    logits: [B, K] unnormalised scores.
    labels: [B] integer labels in ``[0, K)``; checked when concrete (a
      ValueError names the first bad one). Under ``jit`` they cannot be
      checked: an out-of-range label gives a NaN or wrong loss.
    class_weights: optional [K] per-class weights ``w``.

  Returns:
    [B] float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> ce = cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]),
    ...                    class_weights=jnp.array([1.0, 1.0, 1.0, 2.0]))
    >>> print(ce.round(4))
    [1.3863 2.7726]
  """
  logits, labels, class_weights = _checks.cross_entropy_inputs(logits, labels, class_weights)
  logits = logits.astype(_numerics.compute_dtype(logits))
  label_logits = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  losses = jax.nn.logsumexp(logits, axis=1) - label_logits
  if class_weights is not None:
    losses = losses * class_weights.astype(losses.dtype)[labels]
  return losses


def weighted_cross_entropy_loss(
  logits: ArrayLike, labels: ArrayLike, *, class_weights: ArrayLike, where: ArrayLike | None = None
) -> jax.Array:
  """Class-weighted cross-entropy, normalised by the total weight.

  ``L = sum_i w[y_i] CE_i / sum_i w[y_i]`` over the valid examples: the
  ``'mean'`` reduction of PyTorch's ``CrossEntropyLoss(weight=w)``, which the
  official CARE code used for cost-sensitive learning (CSL). Returns 0.0 with
  zero gradient when no example is valid.

  Args:
    logits: [B, K] unnormalised scores.
    labels: [B] integer labels in ``[0, K)``.
    class_weights: [K] per-class weights ``w``, e.g. from
      :func:`inverse_frequency_weights`.
    where: optional [B] bool, False for padded examples, which are left out
      of both sums.

  Returns:
    Scalar float32 loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    >>> loss = weighted_cross_entropy_loss(
    ...     logits, jnp.array([0, 1, 1]), class_weights=jnp.array([0.2, 0.8]))
    >>> print(f'{float(loss):.4f}')
    1.0158
  """
  if class_weights is None:
    raise ValueError('class_weights is required; use cross_entropy for an unweighted loss.')
  weighted = cross_entropy(logits, labels, class_weights=class_weights)
  weights = jnp.asarray(class_weights).astype(weighted.dtype)[jnp.asarray(labels)]
  if where is not None:
    where = jnp.asarray(where)
    if where.shape != weighted.shape:
      raise ValueError(f'where must have shape [B] = {weighted.shape}, got shape {where.shape}.')
    where = where.astype(bool)
    weighted = jnp.where(where, weighted, jnp.zeros_like(weighted))
    weights = jnp.where(where, weights, jnp.zeros_like(weights))
  return _numerics.safe_mean(jnp.sum(weighted), jnp.sum(weights))


def inverse_frequency_weights(class_counts: ArrayLike) -> np.ndarray:
  """Inverse class frequencies normalised to sum 1 (the official CARE CSL).

  ``w_k = (1 / n_k) / sum_j (1 / n_j)`` for training counts ``n_k``. This is a
  host-side helper for concrete counts (call it once at setup, not under
  ``jit``).

  Args:
    class_counts: [K] positive number of training examples per class.

  Returns:
    [K] float32 numpy array of weights summing to 1.

  Raises:
    ValueError: if the counts are not a non-empty 1-D array, or a class has a
      count <= 0 (its weight would be infinite); the class index is named.

  Examples:
    >>> print(inverse_frequency_weights([100, 300, 600]))
    [0.6666667  0.22222222 0.11111111]
  """
  counts = _checks.positive_counts(class_counts)
  inverse = 1.0 / counts
  return (inverse / inverse.sum()).astype(np.float32)


def sigmoid_binary_cross_entropy(
  logits: ArrayLike, labels: ArrayLike, *, pos_weight: ArrayLike | None = None
) -> jax.Array:
  """Per-(example, class) sigmoid binary cross-entropy of multi-label logits.

  ``l_ik = -[p_k y_ik log sigmoid(z_ik) + (1 - y_ik) log(1 - sigmoid(z_ik))]``
  with ``p_k = pos_weight[k]`` (1 without it), computed stably as
  ``p_k y softplus(-z) + (1 - y) softplus(z)``: PyTorch's
  ``BCEWithLogitsLoss(pos_weight=p, reduction='none')``. Computed in float32.

  Args:
    logits: [B, K] unnormalised scores, one independent binary decision per
      class (finding).
    labels: [B, K] multi-hot labels in [0, 1] (checked when concrete).
    pos_weight: optional [K] weights of the positive term (e.g.
      :func:`positive_weights`: ``n_negative / n_positive`` per class).

  Returns:
    [B, K] float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[0.0, 2.0]])
    >>> print(sigmoid_binary_cross_entropy(z, jnp.array([[1.0, 0.0]])).round(4))
    [[0.6931 2.1269]]
  """
  logits = jnp.asarray(logits)
  logits = logits.astype(_numerics.compute_dtype(logits))
  labels = jnp.asarray(labels)
  _checks.check_multilabel(logits, labels)
  labels = labels.astype(logits.dtype)
  positive = jax.nn.softplus(-logits)
  if pos_weight is not None:
    pos_weight = jnp.asarray(pos_weight, logits.dtype)
    if pos_weight.shape != logits.shape[1:]:
      raise ValueError(
        f'pos_weight must have shape [K] = ({logits.shape[1]},), got shape {pos_weight.shape}.'
      )
    positive = pos_weight * positive
  return labels * positive + (1.0 - labels) * jax.nn.softplus(logits)


def positive_weights(positive_counts: ArrayLike, num_examples: int) -> np.ndarray:
  """Per-class weights ``n_negative / n_positive`` of the positive term of a multi-label BCE.

  With them each class's positives weigh as much in total as its negatives
  (the ``pos_weight`` PyTorch's ``BCEWithLogitsLoss`` documents for this).

  Args:
    positive_counts: [K] training examples on which each class is positive
      (all in ``[1, num_examples)``).
    num_examples: training examples.

  Returns:
    [K] float32 weights.

  Raises:
    ValueError: a class positive on no example or on every example (its
      weight would be infinite or 0; the class is named by index).

  Examples:
    >>> print(positive_weights([10, 50], 100))
    [9. 1.]
  """
  counts = np.asarray(positive_counts, np.float64)
  if counts.ndim != 1:
    raise ValueError(f'positive_counts must have shape [K], got shape {counts.shape}.')
  bad = np.flatnonzero((counts < 1) | (counts >= num_examples))
  if bad.size:
    raise ValueError(
      f'positive_counts must lie in [1, num_examples = {num_examples}) for positive weights;'
      f' class index {int(bad[0])} has {int(counts[bad[0]])} positives.'
    )
  return ((num_examples - counts) / counts).astype(np.float32)


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
  logits = _numerics.float_logits(logits)
  ce = cross_entropy(logits, labels)
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
  (:func:`sigmoid_binary_cross_entropy`) and ``alpha_t = alpha y +
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
  logits = _numerics.float_logits(logits)
  bce = sigmoid_binary_cross_entropy(logits, labels)
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
  logits = _numerics.float_logits(logits)
  log_priors = jnp.log(_class_vector('class_priors', class_priors, logits))
  return cross_entropy(logits + tau * log_priors, labels)


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
  logits = _numerics.float_logits(logits)
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
  logits = _numerics.float_logits(logits)
  log_counts = jnp.log(_class_vector('class_counts', class_counts, logits))
  return cross_entropy(logits + log_counts, labels)


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
  logits = _numerics.float_logits(logits)
  margins = _class_vector('margins', margins, logits)
  labels = jnp.asarray(labels)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return cross_entropy(s * (logits - margins[labels][:, None] * one_hot), labels)


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


__getattr__ = _deprecated.getattr_of(__name__)
