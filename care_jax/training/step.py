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

Another guidance method (``StepConfig.method``, `care_jax.training.guidance_terms`) trains
``L = CE + weight * L_method`` from ``start_step`` on (the papers' form); the method is chosen
in Python, so each compiles its own step. ``method='care'`` is the loss above, unchanged.

Under data parallelism both steps compute the loss of the *global* batch:
every mean (CE, class-weighted CE, attention loss over the boxed images)
divides a per-device sum by the global denominator, so they match one device
on the same global batch.
"""

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from care_jax import attention
from care_jax import classification_loss as classification_loss_lib
from care_jax import imbalance
from care_jax import losses
from care_jax import metrics as metrics_lib
from care_jax import models
from care_jax.training import device_augment
from care_jax.training import guard
from care_jax.training import guidance_terms
from care_jax.training.guidance_terms import global_sum
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
  # ``guidance.method``: 'care' (alpha, tau, lam, ...), 'none' (alpha = 0), or a method of
  # `guidance_terms` trained as CE + weight * L (its alpha: 1 on, 0 for CE alone, as in stage 1).
  method: str = 'care'
  weight: float = 1.0
  # guidance.weight = 'auto': `calibrate_weight` sets ``weight`` before the step is built.
  auto_weight: bool = False
  classes: str = 'label'
  normalize: str = 'minmax'
  stop_gradient_weights: bool = True
  # The method's keyword hyperparameters, as sorted (name, value) pairs (hashable).
  hyperparameters: tuple[tuple[str, Any], ...] = ()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'StepConfig':
    care = config.care
    return cls(
      alpha={'care': care.alpha, 'none': 0.0}.get(config.guidance.method, 1.0),
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
      **_guidance_fields(config.guidance),
    )


def _guidance_fields(guidance: ml_collections.ConfigDict) -> dict[str, Any]:
  """The StepConfig fields of ``config.guidance``, each 'default' resolved for its method."""
  method = guidance.method
  if method in ('care', 'none'):
    return {'method': method}
  defaults = guidance_terms.DEFAULTS[method]
  chosen = {
    'classes': guidance.classes,
    'normalize': guidance.normalize,
    'stop_gradient_weights': guidance.stop_gradient_weights,
  }
  chosen = {k: getattr(defaults, k) if v == 'default' else v for k, v in chosen.items()}
  extra = guidance.get(method)
  return {
    'method': method,
    'weight': 1.0 if guidance.weight == 'auto' else float(guidance.weight),
    'auto_weight': guidance.weight == 'auto',
    'hyperparameters': tuple(sorted(extra.to_dict().items())) if extra is not None else (),
    **chosen,
  }


def _floats(value) -> tuple[float, ...]:
  """A number or a sequence of numbers as a tuple of floats (hashable)."""
  return tuple(float(v) for v in np.ravel(value))


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
    head_inputs=intermediates.get('head_inputs'),
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


def _guidance_term(step_config, ctx, noise_key):
  """The unweighted term of a `guidance_terms` method, and the global annotated count."""
  method = step_config.method
  hyperparameters = dict(step_config.hyperparameters)
  if method in guidance_terms.MAP_METHODS:
    defaults = guidance_terms.MethodDefaults(
      step_config.classes, step_config.normalize, step_config.stop_gradient_weights
    )
    return guidance_terms.map_term(ctx, method, defaults, hyperparameters)
  if method == 'gain':
    return guidance_terms.gain_term(
      ctx,
      stop_gradient_weights=step_config.stop_gradient_weights,
      normalize=step_config.normalize,
      **hyperparameters,
    )
  count = global_sum(jnp.sum(ctx.batch['has_mask'].astype(jnp.float32)), ctx.axis_name)
  if method == 'rrr':
    return guidance_terms.rrr_term(ctx), count
  if method == 'sgt':
    return guidance_terms.sgt_term(ctx, noise_key, **hyperparameters), count
  if method == 'actdiff':
    return guidance_terms.actdiff_term(ctx, noise_key, **hyperparameters), count
  raise ValueError(f'Unknown guidance method {method!r}.')


def _forward(model, step_config, variables, batch, rngs):
  """The training forward pass: (logits, intermediates), BatchNorm updates, and its input VJP.

  The VJP w.r.t. the image (None unless the method needs input gradients) comes from the same
  pass, so RRR's and SGT's input gradients cost one backward pass and no second forward.
  """

  def forward(image):
    (logits, intermediates), updates = model.apply(
      variables, image, train=True, mutable=['batch_stats'], rngs=rngs
    )
    return logits, (intermediates, updates)

  if step_config.alpha > 0 and step_config.method in guidance_terms.INPUT_GRADIENT_METHODS:
    logits, input_vjp, (intermediates, updates) = guidance_terms.forward_and_input_vjp(
      forward,
      batch['image'],
      second_order=step_config.method in guidance_terms.SECOND_ORDER_METHODS,
    )
    return (logits, intermediates), updates, input_vjp
  logits, (intermediates, updates) = forward(batch['image'])
  return (logits, intermediates), updates, None


def _loss(
  model,
  step_config,
  classification_loss,
  axis_name,
  params,
  state,
  batch,
  dropout_key,
  noise_key=None,
):
  """This device's share of the batch loss, its terms, and the new BatchNorm statistics."""
  variables = {'params': params, 'batch_stats': state.batch_stats}
  rngs = {'dropout': dropout_key}
  (logits, intermediates), updates, input_vjp = _forward(model, step_config, variables, batch, rngs)
  labels = batch['label']
  label_mask = batch.get('label_mask')  # CheXpert's U-Ignore: labels left out of the loss.
  values, example_weight = classification_loss(logits, labels, state.step, label_mask=label_mask)
  weight_sum = global_sum(jnp.sum(example_weight), axis_name)
  ce_loss = jnp.sum(example_weight * values) / jnp.maximum(weight_sum, 1e-30)  # All masked: 0.
  terms = {'ce': ce_loss}
  loss = ce_loss
  if step_config.alpha > 0 and step_config.method != 'care':
    ctx = guidance_terms.Context(
      model,
      variables,
      batch,
      logits,
      intermediates['features'],
      step_config.task,
      axis_name,
      rngs,
      input_vjp,
      head_inputs=intermediates.get('head_inputs'),
    )
    term, num_boxed = _guidance_term(step_config, ctx, noise_key)
    # Before start_step: CE alone (a traced switch: one compiled step for both).
    weight = jnp.where(state.step >= step_config.start_step, step_config.weight, 0.0)
    loss = ce_loss + weight * term
    terms.update(guidance=term, weight=weight, boxed=num_boxed)
  elif step_config.alpha > 0:
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


# Terms equal on every device (not shares of a global mean): not summed over the devices.
_REPLICATED_TERMS = ('alpha', 'boxed', 'weight')
# fold_in tag of the random stream of the guidance terms (SGT's fill, ActDiff's shuffle).
_NOISE_STREAM = 0x5C7


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
  if step_config.auto_weight:
    raise ValueError(
      "config.guidance.weight = 'auto': measure it first with "
      'care_jax.training.step.calibrate_weight (the step takes a number).'
    )
  if classification_loss is None:
    classification_loss = classification_loss_lib.ClassificationLoss('ce', imbalance.cross_entropy)
  loss_fn = functools.partial(_loss, model, step_config, classification_loss, axis_name)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    batch = _device_batch(batch, step_config)
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
    # The same on every device (SGT folds in each example's index in the global batch).
    noise_key = jax.random.fold_in(dropout_key, _NOISE_STREAM)
    if axis_name:
      dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (terms, batch_stats)), grads = grad_fn(
      state.params, state, batch, dropout_key, noise_key
    )
    # Each device's loss is its share of the global loss: summing the shares
    # (and their gradients) gives the global loss and gradient.
    loss = global_sum(loss, axis_name)
    grads = global_sum(grads, axis_name)
    terms = {
      k: (v if k in _REPLICATED_TERMS else global_sum(v, axis_name)) for k, v in terms.items()
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


def calibrate_weight(
  model: models.Classifier,
  step_config: StepConfig,
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  classification_loss: classification_loss_lib.ClassificationLoss | None = None,
) -> StepConfig:
  """``step_config`` with ``guidance.weight = 'auto'`` resolved: CE / L on ``batch`` at ``state``.

  Friedrich et al. (NMI 2023; ml-research/A-Typology-for-Exploring-the-Mitigation-of-Shortcut-
  Behavior ``learner/learner.py``) scale each right-reason loss by the ratio of the right-answer
  loss to it, measured with the initial model over the training set; here over one batch (the
  run's first), one device. The weight is then a constant of the compiled step: the term starts
  equal to the classification loss, and the ratio is frozen. A zero or non-finite term gives
  weight 1. A config without 'auto' is returned as it is.
  """
  if not step_config.auto_weight:
    return step_config
  if classification_loss is None:
    classification_loss = classification_loss_lib.ClassificationLoss('ce', imbalance.cross_entropy)
  measure = dataclasses.replace(step_config, weight=1.0, auto_weight=False, start_step=0)
  loss_fn = functools.partial(_loss, model, measure, classification_loss, None)
  key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
  _, (terms, _) = jax.jit(loss_fn)(
    state.params, state, _device_batch(batch, measure), key, jax.random.fold_in(key, _NOISE_STREAM)
  )
  ce, term = float(terms['ce']), float(terms['guidance'])
  weight = ce / term if term > 0 and np.isfinite(ce / term) else 1.0
  return dataclasses.replace(step_config, weight=weight, auto_weight=False)


def _attention_quality(model, variables, intermediates, batch, *, attention: str, task: str):
  """The attention sums of an eval batch with lesion masks: of the true class's map, or
  per class on the positive (image, class) pairs with a box (multi-label)."""
  labels, valid = batch['label'], batch['valid']
  features, head_inputs = intermediates['features'], intermediates.get('head_inputs')
  if task == 'multilabel':
    classes = jnp.broadcast_to(jnp.arange(labels.shape[-1]), labels.shape)
    maps = model.attention_maps(
      variables, features, classes, method=attention, head_inputs=head_inputs
    )
    scored = valid[:, None] & batch['has_lesion_mask'] & (labels > 0.5)
    return metrics_lib.AttentionMetrics.from_batch_per_class(
      maps, batch['lesion_mask'], valid=scored
    )
  maps = model.attention_maps(
    variables, features, labels, method=attention, head_inputs=head_inputs
  )
  return metrics_lib.AttentionMetrics.from_batch(
    maps, batch['lesion_mask'], valid=valid & batch['has_lesion_mask']
  )


def _energy_rows(model, variables, intermediates, batch, *, task: str) -> dict[str, jax.Array]:
  """Per example (multi-label: per image and finding) `metrics_lib.energy_in_box` of the
  unnormalised Grad-CAM map of the eval-mode head, and whether it counts (the pairs
  `_attention_quality` scores). A min-max map has no sign: its energy would be its mass inside."""
  labels, masks = batch['label'], batch['lesion_mask']
  head_inputs = intermediates.get('head_inputs')
  extra = {'head_inputs': head_inputs} if head_inputs else {}

  def head_fn(f):
    return model.apply(variables, f, train=False, method=models.Classifier.apply_head, **extra)

  def energy_of(classes, masks):
    maps = attention.grad_cam(head_fn, intermediates['features'], classes, normalize=False)
    return metrics_lib.energy_in_box(maps, masks)

  if task == 'multilabel':
    classes = jnp.broadcast_to(jnp.arange(labels.shape[-1]), labels.shape)
    energy = jax.vmap(energy_of, in_axes=1, out_axes=1)(classes, masks)
    counted = batch['valid'][:, None] & batch['has_lesion_mask'] & (labels > 0.5)
  else:
    energy = energy_of(labels, masks)
    counted = batch['valid'] & batch['has_lesion_mask']
  counted = counted & jnp.any(masks > 0.5, axis=(-2, -1))
  return {'energy_in_box': energy, 'energy_counted': counted}


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
  metrics of the scores (`care_jax.metrics.score_metrics`); with lesion masks
  also ``energy_in_box`` and ``energy_counted`` ([B], multi-label [B, K]:
  `_energy_rows`), which `care_jax.training.evaluation` averages.

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
        model, variables, intermediates, batch, attention=attention, task=task
      )
    rows = {'probabilities': probabilities, 'label': labels, 'valid': batch['valid']}
    if 'lesion_mask' in batch:
      rows.update(_energy_rows(model, variables, intermediates, batch, task=task))
    if axis_name:
      rows = jax.tree.map(lambda x: jax.lax.all_gather(x, axis_name, tiled=True), rows)
    return (*jax.tree.map(lambda x: global_sum(x, axis_name), (confusion, quality)), rows)

  return eval_step
