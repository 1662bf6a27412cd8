"""The classification term of the train step: a loss name and hyperparameters -> its loss.

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

Each loss name has a builder, ``(class counts, settings) -> ClassificationLoss``,
in a table (multi-class and multi-label each): a new loss is one builder and
one entry. The per-example losses and class weights themselves are in
`care_jax.imbalance`; :func:`check_loss_hyperparameters` holds the checks of
the hyperparameters (which the config schema's ``validate_loss`` shares).
"""

from collections.abc import Callable
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from care_jax import _checks
from care_jax import _numerics
from care_jax import imbalance

__all__ = [
  'ClassificationLoss',
  'FOCAL_ALPHAS',
  'LOSS_NAMES',
  'MULTILABEL_LOSS_NAMES',
  'TASKS',
  'check_loss_hyperparameters',
  'make_classification_loss',
  'masked_class_mean',
]

# Per-class alpha of the focal loss, by name (None: no class weighting).
FOCAL_ALPHAS = ('inverse_frequency', 'class_balanced')
# 'multiclass': one label per image, softmax; 'multilabel': any number of
# positive classes per image (findings), one sigmoid per class.
TASKS = ('multiclass', 'multilabel')


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
    masked_values_fn: ``(logits [B, K], labels [B, K], label_mask [B, K]) -> (values,
      weights)`` of a 'multilabel' loss given a per-label mask (1: counted; CheXpert's
      U-Ignore): the mean over each example's counted classes and their share of its classes
      (:func:`masked_class_mean`), so that the batch loss is the mean over the
      counted (example, class) entries; None for the losses that take no mask.
  """

  name: str
  values_fn: Callable[[jax.Array, jax.Array], jax.Array]
  class_weights: np.ndarray | None = None
  reweight_step: int = 0
  posthoc_bias: np.ndarray | None = None
  task: str = 'multiclass'
  masked_values_fn: Callable[[jax.Array, jax.Array, jax.Array], tuple] | None = None

  def __call__(
    self,
    logits: ArrayLike,
    labels: ArrayLike,
    step: ArrayLike,
    *,
    label_mask: ArrayLike | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """Per-example ``(values, weights)`` of a batch at optimisation step ``step``.

    ``label_mask`` [B, K] (multi-label losses only; 1 where a label counts) leaves the masked
    (example, class) entries out of the loss: ``masked_values_fn``.
    """
    labels = jnp.asarray(labels)
    if label_mask is not None:
      if self.masked_values_fn is None:
        raise ValueError(
          f'label_mask: the {self.task} loss {self.name!r} takes no per-label mask; only the'
          " multi-label losses (task='multilabel') leave labels out."
        )
      return self.masked_values_fn(_numerics.float_logits(logits), labels, label_mask)
    values = self.values_fn(_numerics.float_logits(logits), labels)
    if self.class_weights is None:
      return values, jnp.ones_like(values)
    if self.reweight_step:
      weights = imbalance.drw_weights(
        labels, step, class_weights=self.class_weights, start_step=self.reweight_step
      )
    else:
      weights = jnp.asarray(self.class_weights, jnp.float32)[labels]
    return values, weights

  def predict_logits(self, logits: ArrayLike) -> jax.Array:
    """The scores to take the argmax of: post-hoc adjusted, or ``logits`` unchanged."""
    if self.posthoc_bias is None:
      return jnp.asarray(logits)
    return _numerics.float_logits(logits) - jnp.asarray(self.posthoc_bias, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Settings:
  """The arguments of :func:`make_classification_loss` that the builders read."""

  name: str
  gamma: float
  focal_alpha: str | None
  beta: float
  tau: float
  posthoc_tau: float
  ldam_max_margin: float
  ldam_s: float
  drw_start: float
  num_steps: int
  num_examples: int | None


# The builders of the multi-class losses: (the checked float64 [K] class counts, the settings)
# -> the loss, without its post-hoc bias (make_classification_loss adds it to any of them).


def _ce(counts: np.ndarray, settings: _Settings) -> ClassificationLoss:
  del counts  # Unused.
  return ClassificationLoss(settings.name, imbalance.cross_entropy)


def _weighted_ce(counts: np.ndarray, settings: _Settings) -> ClassificationLoss:
  class_weights = imbalance.inverse_frequency_weights(counts)
  return ClassificationLoss(settings.name, imbalance.cross_entropy, class_weights=class_weights)


def _focal(counts: np.ndarray, settings: _Settings) -> ClassificationLoss:
  alpha = None  # alpha[y] FL in the values, weights 1: the batch mean (divide by B).
  if settings.focal_alpha == 'inverse_frequency':
    alpha = imbalance.inverse_frequency_weights(counts)
  elif settings.focal_alpha == 'class_balanced':
    alpha = imbalance.class_balanced_weights(counts, beta=settings.beta)
  values_fn = functools.partial(imbalance.focal_loss, gamma=settings.gamma, alpha=alpha)
  return ClassificationLoss(settings.name, values_fn)


def _class_balanced(counts: np.ndarray, settings: _Settings) -> ClassificationLoss:
  # w[y] CE in the values, weights 1: the batch mean of Cui et al.'s code (divide by B).
  values_fn = functools.partial(
    imbalance.cross_entropy,
    class_weights=imbalance.class_balanced_weights(counts, beta=settings.beta),
  )
  return ClassificationLoss(settings.name, values_fn)


def _logit_adjusted(counts: np.ndarray, settings: _Settings) -> ClassificationLoss:
  values_fn = functools.partial(
    imbalance.logit_adjusted_loss, class_priors=imbalance.class_priors(counts), tau=settings.tau
  )
  return ClassificationLoss(settings.name, values_fn)


def _balanced_softmax(counts: np.ndarray, settings: _Settings) -> ClassificationLoss:
  values_fn = functools.partial(
    imbalance.balanced_softmax_loss, class_counts=counts.astype(np.float32)
  )
  return ClassificationLoss(settings.name, values_fn)


def _ldam_drw(counts: np.ndarray, settings: _Settings) -> ClassificationLoss:
  values_fn = functools.partial(
    imbalance.ldam_loss,
    margins=imbalance.ldam_margins(counts, max_margin=settings.ldam_max_margin),
    s=settings.ldam_s,
  )
  return ClassificationLoss(
    settings.name,
    values_fn,
    class_weights=imbalance.class_balanced_weights(counts, beta=settings.beta),
    # A DRW start at step 0 is a 0 here, which means "always": the same thing.
    reweight_step=round(settings.drw_start * settings.num_steps),
  )


# The builders of the multi-label losses: (the [K] positives per class as given, the settings)
# -> the loss. Each takes one sigmoid per class and averages over the classes of an example.


def _over_classes(name: str, elementwise: Callable[..., jax.Array], **kwargs) -> ClassificationLoss:
  """The multi-label loss of each example's mean of ``elementwise`` over its (counted) classes."""
  values = functools.partial(elementwise, **kwargs)
  return ClassificationLoss(
    name,
    lambda logits, labels: jnp.mean(values(logits, labels), axis=-1),
    task='multilabel',
    masked_values_fn=lambda logits, labels, label_mask: masked_class_mean(
      values(logits, labels), label_mask
    ),
  )


def masked_class_mean(values: ArrayLike, label_mask: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Each example's mean of per-(example, class) losses over its counted classes, and its share.

  The per-label mask of CheXpert's U-Ignore policy (Irvin et al., "CheXpert: A Large Chest
  Radiograph Dataset with Uncertainty Labels and Expert Comparison", AAAI 2019, Section 4: an
  uncertain finding is ignored in the loss). With ``m_ik`` the mask (1: counted) and
  ``c_i = sum_k m_ik``::

    mean_i = sum_k m_ik l_ik / c_i   (0 where c_i = 0)
    share_i = c_i / K

  so that ``sum_i share_i mean_i / sum_i share_i = sum_ik m_ik l_ik / sum_ik m_ik``: the mean
  of the binary losses over the counted (example, class) entries of a batch, PyTorch's
  ``(loss * m).sum() / m.sum()`` with ``BCEWithLogitsLoss(reduction='none')``. An example
  whose classes are all masked has mean and share 0 (no NaN, no gradient). With every
  ``m_ik = 1`` the mean is the plain mean over classes and the share 1.

  Args:
    values: [B, K] per-(example, class) losses (`care_jax.imbalance.sigmoid_binary_cross_entropy`).
    label_mask: [B, K] float or bool, 1 (True) where the class counts, 0 where it is ignored.

  Returns:
    ``(mean, share)``, both [B] in the dtype of ``values`` (at least float32).

  Raises:
    ValueError: if ``label_mask`` has not the shape of ``values``.

  Examples:
    >>> import jax.numpy as jnp
    >>> mean, share = masked_class_mean(jnp.array([[1.0, 3.0], [2.0, 4.0]]),
    ...                                 jnp.array([[1, 0], [0, 0]]))
    >>> print(mean, share)
    [1. 0.] [0.5 0. ]
  """
  values = _numerics.float_logits(values)
  label_mask = jnp.asarray(label_mask)
  if label_mask.shape != values.shape:
    raise ValueError(
      f'label_mask must have the shape [B, K] = {values.shape} of the losses, got'
      f' {label_mask.shape}.'
    )
  label_mask = label_mask.astype(values.dtype)
  counted = jnp.sum(label_mask, axis=-1)
  mean = _numerics.safe_mean(jnp.sum(label_mask * values, axis=-1), counted)
  return mean, counted / values.shape[-1]


def _multilabel_ce(class_counts: ArrayLike, settings: _Settings) -> ClassificationLoss:
  del class_counts  # Unused.
  return _over_classes(settings.name, imbalance.sigmoid_binary_cross_entropy)


def _multilabel_weighted_ce(class_counts: ArrayLike, settings: _Settings) -> ClassificationLoss:
  if settings.num_examples is None:
    raise ValueError("the multi-label 'weighted_ce' needs num_examples (the training examples).")
  pos_weight = imbalance.positive_weights(class_counts, settings.num_examples)
  return _over_classes(settings.name, imbalance.sigmoid_binary_cross_entropy, pos_weight=pos_weight)


def _multilabel_focal(class_counts: ArrayLike, settings: _Settings) -> ClassificationLoss:
  del class_counts  # Unused.
  return _over_classes(settings.name, imbalance.sigmoid_focal_loss, gamma=settings.gamma)


_Builder = Callable[[ArrayLike, _Settings], ClassificationLoss]
# Loss name -> its builder, one table per task. LOSS_NAMES and MULTILABEL_LOSS_NAMES are their
# names, in this order.
_LOSSES: dict[str, _Builder] = {
  'ce': _ce,
  'weighted_ce': _weighted_ce,
  'focal': _focal,
  'class_balanced': _class_balanced,
  'logit_adjusted': _logit_adjusted,
  'balanced_softmax': _balanced_softmax,
  'ldam_drw': _ldam_drw,
}
# The losses of a multi-label task, each per (example, class) and averaged over
# the classes of an example: 'ce' the sigmoid binary cross-entropy, 'weighted_ce'
# the same with positive weights n_neg / n_pos (the CSL counterpart), 'focal' the
# sigmoid focal loss. The others are softmax losses over exclusive classes.
_MULTILABEL_LOSSES: dict[str, _Builder] = {
  'ce': _multilabel_ce,
  'weighted_ce': _multilabel_weighted_ce,
  'focal': _multilabel_focal,
}
LOSS_NAMES = tuple(_LOSSES)
MULTILABEL_LOSS_NAMES = tuple(_MULTILABEL_LOSSES)


def _check(ok: bool, argument: str, value, message: str) -> None:
  if not ok:
    raise ValueError(f'{argument} = {value!r}: {message}')


def check_loss_hyperparameters(
  *,
  name: str,
  gamma: float,
  focal_alpha: str | None,
  beta: float,
  tau: float,
  posthoc_tau: float,
  ldam_max_margin: float,
  ldam_s: float,
  drw_start: float,
) -> None:
  """Raises ValueError for a loss name or hyperparameter out of range.

  The checks of :func:`make_classification_loss` (which calls it), in the
  order of its arguments; the config schema's ``validate_loss`` runs them on a
  ``config.loss`` (and prefixes ``config.loss.`` to the message).

  Raises:
    ValueError: ``'<argument> = <value!r>: <why>'`` for the first bad one,
      e.g. ``"gamma = -0.5: must be >= 0"``.

  Examples:
    >>> check_loss_hyperparameters(
    ...     name='focal', gamma=2.0, focal_alpha=None, beta=1.0, tau=1.0, posthoc_tau=0.0,
    ...     ldam_max_margin=0.5, ldam_s=30.0, drw_start=0.8)
    Traceback (most recent call last):
    ...
    ValueError: beta = 1.0: must lie in [0, 1)
  """
  _check(name in LOSS_NAMES, 'name', name, f'must be one of {LOSS_NAMES}')
  _check(gamma >= 0, 'gamma', gamma, 'must be >= 0')
  _check(
    focal_alpha is None or focal_alpha in FOCAL_ALPHAS,
    'focal_alpha',
    focal_alpha,
    f'must be None or one of {FOCAL_ALPHAS}',
  )
  _check(0 <= beta < 1, 'beta', beta, 'must lie in [0, 1)')
  _check(tau >= 0, 'tau', tau, 'must be >= 0')
  _check(posthoc_tau >= 0, 'posthoc_tau', posthoc_tau, 'must be >= 0 (0 turns it off)')
  _check(ldam_max_margin >= 0, 'ldam_max_margin', ldam_max_margin, 'must be >= 0')
  _check(ldam_s > 0, 'ldam_s', ldam_s, 'must be > 0')
  _check(0 <= drw_start <= 1, 'drw_start', drw_start, 'must lie in [0, 1] (a fraction of training)')


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
      head 'normed_linear', `care_jax.models.resolve_head`).
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
      n_positive`` per class (`care_jax.imbalance.positive_weights`), 'focal'
      the sigmoid focal loss (`care_jax.imbalance.sigmoid_focal_loss`, ``gamma``; no
      ``focal_alpha``); each example's value is the mean over its classes, so
      the batch loss is PyTorch's ``BCEWithLogitsLoss()`` mean over all
      ``B * K`` entries; given a ``label_mask`` (CheXpert's U-Ignore), the mean
      over the counted entries ``sum_ik m_ik l_ik / sum_ik m_ik``
      (:func:`masked_class_mean`). The softmax losses, ``focal_alpha`` and
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
  hyperparameters = dict(
    name=name,
    gamma=gamma,
    focal_alpha=focal_alpha,
    beta=beta,
    tau=tau,
    posthoc_tau=posthoc_tau,
    ldam_max_margin=ldam_max_margin,
    ldam_s=ldam_s,
    drw_start=drw_start,
  )
  check_loss_hyperparameters(**hyperparameters)
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
  _check(task in TASKS, 'task', task, f'must be one of {TASKS}')
  settings = _Settings(**hyperparameters, num_steps=num_steps, num_examples=num_examples)
  if task == 'multilabel':
    _check_multilabel(settings)
    return _MULTILABEL_LOSSES[name](class_counts, settings)
  counts = _checks.positive_counts(class_counts)
  loss = _LOSSES[name](counts, settings)
  if posthoc_tau:
    posthoc_bias = (posthoc_tau * np.log(imbalance.class_priors(counts))).astype(np.float32)
    loss = dataclasses.replace(loss, posthoc_bias=posthoc_bias)
  return loss


def _check_multilabel(settings: _Settings) -> None:
  """Refuses the softmax losses, focal alphas and post-hoc adjustment in a multi-label task."""
  name, focal_alpha, posthoc_tau = settings.name, settings.focal_alpha, settings.posthoc_tau
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
