"""The pure train and eval steps (not jitted: `care_jax.training.parallel` wraps them).

The loss of one step (paper Eq. 1-4)::

    L = (1 - alpha) * CE_weighted + alpha * mean_{boxed images} [L_in + lam * L_out]

with the attention map F of the ground-truth class taken at the last conv stage
inside the same forward pass (`care_jax.models.Classifier.attention_maps`:
closed-form CAM for a GAP + linear head, the head's VJP for any other head): no
second backward pass through the network.

Multi-label (``StepConfig.task = 'multilabel'``: labels [B, K] multi-hot, masks
[B, K, S, S]): the classification term is the sigmoid loss, and the attention loss
is the mean over the boxed (image, finding) pairs whose finding is present of
``L_in + lam * L_out`` for the map of that finding's logit against its box.

Under data parallelism both steps compute the loss of the *global* batch:
every mean (CE, class-weighted CE, attention loss over the boxed images)
divides a per-device sum by the global denominator, so they match one device
on the same global batch.
"""

from collections.abc import Callable
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from care_jax import classification_loss as classification_loss_lib
from care_jax import imbalance
from care_jax import losses
from care_jax import metrics as metrics_lib
from care_jax import models
from care_jax.training import device_augment
from care_jax.training import guard
from care_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static settings of a train step (hashable: part of the jit cache key)."""

  alpha: float = 0.5
  tau: float = 0.5
  lam: float = 0.7
  start_step: int = 0
  attention: str = 'auto'
  target: str = 'logit'
  reduction: str = 'mean'
  # M_out: 'uniform' (1 - mask) or 'distance' (`losses.distance_outer_mask`).
  outer: str = 'uniform'
  outer_start: float = 1.0
  outer_delta: float = 0.1
  max_consecutive_nonfinite: int = 5
  # 'multiclass' or 'multilabel' (`care_jax.classification_loss.TASKS`).
  task: str = 'multiclass'
  # The batch holds the augmentation inputs (``data.augment.on_device``): the
  # step augments and normalises it first (`device_augment.augment_batch`,
  # with ``data.mean`` and ``data.std``: 1 or C values each).
  device_augment: bool = False
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.5,)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'StepConfig':
    care = config.care
    return cls(
      alpha=care.alpha,
      tau=care.tau,
      lam=care.lam,
      start_step=care.start_step,
      attention=care.attention,
      target=care.target,
      reduction=care.reduction,
      outer=care.outer,
      outer_start=care.outer_start,
      outer_delta=care.outer_delta,
      max_consecutive_nonfinite=config.train.max_consecutive_nonfinite,
      task=config.task,
      device_augment=bool(
        config.data.augment.enabled and config.data.augment.get('on_device', False)
      ),
      mean=_floats(config.data.mean),
      std=_floats(config.data.std),
    )


def _floats(value) -> tuple[float, ...]:
  """A number or a sequence of numbers as a tuple of floats (hashable)."""
  return tuple(float(v) for v in np.ravel(value))


def global_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
  """`x` summed over the devices of the pmap axis (itself under jit)."""
  return jax.lax.psum(x, axis_name) if axis_name else x


def _care_term(
  model, variables, intermediates, batch, step, step_config, axis_name, *, dropout_key
):
  """The attention loss of the batch, alpha at this step, and the global boxed count.

  The Grad-CAM head runs as in the forward pass (train mode, its dropout key).
  Multi-label: one map per (image, class), each positive class with a box
  pushed into its own box; the count is that of the boxed pairs.
  """
  labels, has_mask = batch['label'], batch['has_mask']
  if step_config.task == 'multilabel':
    num_classes = labels.shape[-1]
    classes = jnp.broadcast_to(jnp.arange(num_classes), labels.shape)
    # A box supervises the map of its finding where that finding is present.
    has_mask = has_mask & (labels > 0.5)
  else:
    classes = labels
  maps = model.attention_maps(
    variables,
    intermediates['features'],
    classes,
    method=step_config.attention,
    target=step_config.target,
    train=True,
    rngs={'dropout': dropout_key},
  )
  outer_mask = None
  if step_config.outer == 'distance':
    # Built on the device from the augmented mask: a few cumulative minima per
    # row and column, cheaper than shipping a second [B, S, S] array.
    outer_mask = losses.distance_outer_mask(
      batch['mask'], start=step_config.outer_start, delta=step_config.outer_delta
    )
  per_example = losses.care_loss_per_example(
    maps,
    batch['mask'],
    tau=step_config.tau,
    lam=step_config.lam,
    outer_mask=outer_mask,
    has_mask=has_mask,
  )
  num_boxed = global_sum(jnp.sum(has_mask.astype(jnp.float32)), axis_name)
  if step_config.reduction == 'mean':
    care = jnp.sum(per_example) / jnp.maximum(num_boxed, 1.0)
  else:
    care = jnp.sum(per_example)
  # Stage 1 (before start_step) trains with CE alone. A traced switch, so
  # both stages share one compiled step.
  alpha = jnp.where(step >= step_config.start_step, step_config.alpha, 0.0)
  return care, alpha, num_boxed


def _loss(model, step_config, classification_loss, axis_name, params, state, batch, dropout_key):
  """This device's share of the batch loss, its terms, and the new BatchNorm statistics."""
  variables = {'params': params, 'batch_stats': state.batch_stats}
  (logits, intermediates), updates = model.apply(
    variables, batch['image'], train=True, mutable=['batch_stats'], rngs={'dropout': dropout_key}
  )
  labels = batch['label']
  values, example_weight = classification_loss(logits, labels, state.step)
  ce_loss = jnp.sum(example_weight * values) / global_sum(jnp.sum(example_weight), axis_name)
  terms = {'ce': ce_loss}
  loss = ce_loss
  if step_config.alpha > 0:
    care, alpha, num_boxed = _care_term(
      model,
      variables,
      intermediates,
      batch,
      state.step,
      step_config,
      axis_name,
      dropout_key=dropout_key,
    )
    loss = (1.0 - alpha) * ce_loss + alpha * care
    terms.update(care=care, alpha=alpha, boxed=num_boxed)
  if step_config.task == 'multilabel':
    # The share of (image, class) decisions right at probability 0.5.
    correct = jnp.sum((logits > 0) == (labels > 0.5)) / labels.shape[-1]
  else:
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
  terms['accuracy'] = correct / global_sum(jnp.float32(labels.shape[0]), axis_name)
  return loss, (terms, updates['batch_stats'])


def _device_batch(batch: dict[str, jax.Array], step_config: StepConfig) -> dict[str, jax.Array]:
  """The training batch: ``batch`` itself, or made of its augmentation inputs.

  With ``step_config.device_augment``, `device_augment.augment_batch` of the
  uint8 images, geometries, colour factors and padded boxes (``box_labels``
  for multi-label data): per example, so per device shard under pmap or a
  mesh.
  """
  if not step_config.device_augment:
    return batch
  return device_augment.augment_batch(batch, mean=step_config.mean, std=step_config.std)


def make_train_step(
  model: models.Classifier,
  step_config: StepConfig,
  *,
  classification_loss: classification_loss_lib.ClassificationLoss | None = None,
  axis_name: str | None = None,
) -> Callable[[TrainState, dict], tuple]:
  """Returns a pure `train_step(state, batch) -> (state, metrics)`.

  A step whose loss, gradient or BatchNorm statistics are not finite leaves
  params, optimizer state and statistics unchanged (`guard.skip_nonfinite`);
  `metrics['guard']` then holds the counters and the batch statistics for a
  diagnostic. Finite steps compute exactly the unguarded update.

  Args:
    model: the classifier (with `axis_name` BatchNorm for the pmap path).
    step_config: alpha, tau, lam, start step, attention method, reduction,
      and the guard's limit of consecutive non-finite steps.
    classification_loss: the classification term (`config.loss`, built by
      `care_jax.classification_loss.make_classification_loss`): per-example values and
      weights, averaged as ``sum(w * l) / sum(w)`` over the global batch; None: CE.
    axis_name: the pmap axis; None under jit (mesh or single device).

  With ``step_config.device_augment`` the batch holds the augmentation inputs
  and the step first augments it (`care_jax.training.device_augment`).

  The returned function is not jitted: wrap it with `jax.jit` or `jax.pmap`.
  """
  if classification_loss is None:
    classification_loss = classification_loss_lib.ClassificationLoss('ce', imbalance.cross_entropy)
  loss_fn = functools.partial(_loss, model, step_config, classification_loss, axis_name)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    batch = _device_batch(batch, step_config)
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
    if axis_name:
      dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (terms, batch_stats)), grads = grad_fn(state.params, state, batch, dropout_key)
    # Each device's loss is its share of the global loss: summing the shares
    # (and their gradients) gives the global loss and gradient.
    loss = global_sum(loss, axis_name)
    grads = global_sum(grads, axis_name)
    terms = {
      k: (v if k in ('alpha', 'boxed') else global_sum(v, axis_name)) for k, v in terms.items()
    }
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    new_state, guard_metrics = guard.keep_finite(
      state,
      new_state,
      loss,
      batch,
      limit=step_config.max_consecutive_nonfinite,
      axis_name=axis_name,
    )
    return new_state, {'loss': loss, **terms, 'guard': guard_metrics}

  return train_step


def _attention_quality(model, variables, features, batch, *, attention: str, task: str):
  """The attention sums of an eval batch with lesion masks: of the true class's map, or
  per class on the positive (image, class) pairs with a box (multi-label)."""
  labels, valid = batch['label'], batch['valid']
  if task == 'multilabel':
    classes = jnp.broadcast_to(jnp.arange(labels.shape[-1]), labels.shape)
    maps = model.attention_maps(variables, features, classes, method=attention)
    scored = valid[:, None] & batch['has_lesion_mask'] & (labels > 0.5)
    return metrics_lib.AttentionMetrics.from_batch_per_class(
      maps, batch['lesion_mask'], valid=scored
    )
  maps = model.attention_maps(variables, features, labels, method=attention)
  return metrics_lib.AttentionMetrics.from_batch(
    maps, batch['lesion_mask'], valid=valid & batch['has_lesion_mask']
  )


def make_eval_step(
  model: models.Classifier,
  *,
  num_classes: int,
  attention: str = 'auto',
  predict_logits: Callable[[jax.Array], jax.Array] | None = None,
  axis_name: str | None = None,
  task: str = 'multiclass',
) -> Callable[[TrainState, dict], tuple]:
  """Returns `eval_step(state, batch) -> (confusion [K, K], AttentionMetrics, rows)`.

  Padding rows (``valid=False``) count nowhere. The attention quality of the
  true class's map is measured on the rows with a lesion mask (batches from
  `care_jax.data.pipeline.eval_batches` carry ``lesion_mask`` and
  ``has_lesion_mask``; batches without them give empty attention sums).
  `predict_logits` maps the logits to the scores whose argmax is the
  prediction (post-hoc logit adjustment). ``rows`` holds the global batch's
  ``probabilities`` (softmax of the scores, [B, K]), ``label`` and ``valid``,
  in the order of the global batch (gathered over the pmap axis), for the
  metrics of the scores (`care_jax.metrics.score_metrics`).

  With ``task='multilabel'`` (labels [B, K] multi-hot, masks [B, K, S, S])
  the confusion is None, ``probabilities`` are the sigmoids of the logits
  and the attention sums are per class (`AttentionMetrics.from_batch_per_class`),
  over the positive (image, class) pairs with a lesion box.
  """
  multilabel = task == 'multilabel'

  def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits, intermediates = model.apply(variables, batch['image'], train=False)
    scores = logits if predict_logits is None else predict_logits(logits)
    labels = batch['label']
    if multilabel:
      confusion = None
      quality = metrics_lib.AttentionMetrics.empty(num_classes)
      probabilities = jax.nn.sigmoid(scores.astype(jnp.float32))
    else:
      confusion = metrics_lib.confusion_matrix(
        labels, jnp.argmax(scores, -1), num_classes=num_classes, valid=batch['valid']
      )
      quality = metrics_lib.AttentionMetrics.empty()
      probabilities = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    if 'lesion_mask' in batch:
      quality = _attention_quality(
        model, variables, intermediates['features'], batch, attention=attention, task=task
      )
    rows = {'probabilities': probabilities, 'label': labels, 'valid': batch['valid']}
    if axis_name:
      rows = jax.tree.map(lambda x: jax.lax.all_gather(x, axis_name, tiled=True), rows)
    return (*jax.tree.map(lambda x: global_sum(x, axis_name), (confusion, quality)), rows)

  return eval_step
