"""CARE training and evaluation: a library, importable from a notebook.

The loss of one step (paper Eq. 1-4)::

    L = (1 - alpha) * CE_weighted + alpha * mean_{boxed images} [L_in + lam * L_out]

with the attention map F of the ground-truth class taken at the last conv stage
inside the same forward pass (closed-form CAM for a GAP + linear head; the
head's VJP for any other head): no second backward pass through the network.

Data parallelism:

* ``config.parallel = 'mesh'`` (default): one `jax.jit` over a 1-D
  ``('data',)`` mesh of all devices of all processes, made current with
  `jax.set_mesh`; the batch is sharded on 'data' and the state replicated, so
  XLA inserts the collectives and BatchNorm statistics are global.
* ``config.parallel = 'pmap'``: `jax.pmap` over the local devices with the
  BatchNorm statistics averaged over the 'batch' axis.

Both compute the loss of the *global* batch: every mean (CE, class-weighted
CE, attention loss over the boxed images) divides a per-device sum by the
global denominator, so they match one device on the same global batch.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from care_jax import attention
from care_jax import checkpoint as checkpoint_lib
from care_jax import config as config_lib
from care_jax import imbalance
from care_jax import losses
from care_jax import metrics as metrics_lib
from care_jax import models
from care_jax import summary

PMAP_AXIS = 'batch'
MESH_AXIS = 'data'


class TrainState(train_state.TrainState):
  batch_stats: Any
  dropout_key: jax.Array  # Raw uint32 key data: a plain array to shard and save.
  # Non-finite guard (int32 scalars): steps skipped so far, and the current
  # run of consecutive skipped steps.
  skipped_steps: jax.Array
  consecutive_nonfinite: jax.Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static settings of a train step (hashable: part of the jit cache key)."""
  alpha: float = 0.5
  tau: float = 0.5
  lam: float = 0.7
  start_step: int = 0
  attention: str = 'auto'
  reduction: str = 'mean'
  max_consecutive_nonfinite: int = 5

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'StepConfig':
    care = config.care
    return cls(alpha=care.alpha, tau=care.tau, lam=care.lam, start_step=care.start_step,
               attention=care.attention, reduction=care.reduction,
               max_consecutive_nonfinite=config.train.max_consecutive_nonfinite)


def _model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {'dtype': jnp.dtype(config.dtype),
          'head': None if config.model.head == 'default' else config.model.head,
          'axis_name': PMAP_AXIS if config.parallel == 'pmap' else None}


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> models.Classifier:
  """The classifier of `config.model`, set up for `config.parallel` and `config.dtype`."""
  return models.get_model(config.model.name, num_classes=num_classes, **_model_kwargs(config))


def create_learning_rate(train_config: ml_collections.ConfigDict,
                         num_steps: int) -> optax.Schedule:
  """Warm-up followed by a constant, cosine or step schedule."""
  lr = train_config.learning_rate
  warmup = min(train_config.warmup_steps, num_steps)
  decay_steps = max(num_steps - warmup, 1)
  if train_config.schedule == 'constant':
    main = optax.constant_schedule(lr)
  elif train_config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps)
  else:
    main = optax.piecewise_constant_schedule(
        lr, {int(b * decay_steps): train_config.step_factor
             for b in train_config.step_boundaries})
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], boundaries=[warmup])


def create_optimizer(train_config: ml_collections.ConfigDict,
                     num_steps: int) -> optax.GradientTransformation:
  """Adam (the paper's optimizer) or SGD with momentum, with L2 weight decay.

  Weight decay is added to the gradient before the update, as PyTorch's
  ``weight_decay`` argument does for both optimizers.
  """
  schedule = create_learning_rate(train_config, num_steps)
  if train_config.optimizer == 'adam':
    update = optax.adam(schedule)
  else:
    update = optax.sgd(schedule, momentum=train_config.momentum)
  if train_config.weight_decay:
    return optax.chain(optax.add_decayed_weights(train_config.weight_decay), update)
  return update


def create_train_state(config: ml_collections.ConfigDict, model: models.Classifier,
                       image_shape: tuple[int, ...], num_steps: int,
                       rng: jax.Array) -> TrainState:
  """Initialises parameters, BatchNorm statistics and the optimizer.

  With `config.model.pretrained` the backbone (and the head, when the class
  counts agree) comes from that checkpoint; the rest is initialised.
  """
  params_key, dropout_key, init_dropout_key = jax.random.split(rng, 3)
  if config.model.pretrained:
    _, variables, report = models.load_pretrained(
        config.model.name, config.model.pretrained, num_classes=model.head.num_classes,
        rng=params_key, return_report=True, **_model_kwargs(config))
    logging.info('pretrained weights: %s', report)
  else:
    variables = jax.jit(functools.partial(model.init, train=False))(
        {'params': params_key, 'dropout': init_dropout_key},
        jnp.zeros((1, *image_shape), jnp.float32))
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      tx=create_optimizer(config.train, num_steps),
      dropout_key=jax.random.key_data(dropout_key),
      skipped_steps=np.zeros((), np.int32), consecutive_nonfinite=np.zeros((), np.int32))


def attention_maps(model: models.Classifier, variables: dict[str, Any], features: jax.Array,
                   labels: jax.Array, *, method: str = 'auto') -> jax.Array:
  """Min-max normalised class attention maps [B, h, w] of `labels`.

  'cam' uses the closed form of a GAP + linear head (one einsum with the
  classifier column of the true class); 'grad_cam' takes the VJP of the head
  alone; 'auto' picks 'cam' whenever the head allows it.
  """
  is_linear = isinstance(model.head, models.LinearHead)
  if method == 'cam' or (method == 'auto' and is_linear):
    if not is_linear:
      raise ValueError(f"care.attention='cam' needs a GAP + linear head, not {model.head}")
    return attention.cam(features, variables['params']['head']['fc']['kernel'], labels)
  head_fn = lambda f: model.apply(variables, f, train=False, method=models.Classifier.apply_head)
  return attention.grad_cam(head_fn, features, labels)


def _global_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
  return jax.lax.psum(x, axis_name) if axis_name else x


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [True]))


def _skip_nonfinite(old: TrainState, new: TrainState, finite: jax.Array, *,
                    limit: int) -> TrainState:
  """`new`, or `old`'s params/opt_state/batch_stats when the update is not finite.

  The step counter advances either way, so the data position (and the
  dropout key) move past a bad batch instead of retrying it. The optimizer
  state is kept too, so its own count (and a schedule driven by it) lags the
  step by the number of skipped steps. Once `limit` steps in a row were
  skipped the state is frozen (sticky), so the host, which reads the counter
  only at log/eval/save steps, sees the run of bad steps and stops.
  """
  halted = old.consecutive_nonfinite >= limit
  apply = finite & ~halted
  keep = functools.partial(jax.tree.map, lambda n, o: jnp.where(apply, n, o))
  consecutive = jnp.where(halted, old.consecutive_nonfinite,
                          jnp.where(finite, 0, old.consecutive_nonfinite + 1))
  return new.replace(
      params=keep(new.params, old.params), opt_state=keep(new.opt_state, old.opt_state),
      batch_stats=keep(new.batch_stats, old.batch_stats),
      skipped_steps=old.skipped_steps + (~apply).astype(jnp.int32),
      consecutive_nonfinite=consecutive.astype(jnp.int32))


def _batch_statistics(batch: dict[str, jax.Array], axis_name: str | None) -> dict[str, jax.Array]:
  """Global image range (finite pixels), non-finite pixel count and label range."""
  image = batch['image'].astype(jnp.float32)
  finite = jnp.isfinite(image)
  stats = {'image_min': jnp.min(jnp.where(finite, image, jnp.inf)),
           'image_max': jnp.max(jnp.where(finite, image, -jnp.inf)),
           'image_nonfinite': jnp.sum(~finite),
           'label_min': jnp.min(batch['label']), 'label_max': jnp.max(batch['label'])}
  if axis_name:
    reduce = {'image_min': jax.lax.pmin, 'label_min': jax.lax.pmin, 'image_max': jax.lax.pmax,
              'label_max': jax.lax.pmax, 'image_nonfinite': jax.lax.psum}
    stats = {k: reduce[k](v, axis_name) for k, v in stats.items()}
  return stats


def make_train_step(model: models.Classifier, step_config: StepConfig, *,
                    classification_loss: imbalance.ClassificationLoss | None = None,
                    axis_name: str | None = None) -> Callable[[TrainState, dict], tuple]:
  """Returns a pure `train_step(state, batch) -> (state, metrics)`.

  A step whose loss, gradient or BatchNorm statistics are not finite leaves
  params, optimizer state and statistics unchanged (`_skip_nonfinite`);
  `metrics['guard']` then holds the counters and the batch statistics for a
  diagnostic. Finite steps compute exactly the unguarded update.

  Args:
    model: the classifier (with `axis_name` BatchNorm for the pmap path).
    step_config: alpha, tau, lam, start step, attention method, reduction,
      and the guard's limit of consecutive non-finite steps.
    classification_loss: the classification term (`config.loss`, built by
      `imbalance.make_classification_loss`): per-example values and weights,
      averaged as ``sum(w * l) / sum(w)`` over the global batch; None: CE.
    axis_name: the pmap axis; None under jit (mesh or single device).

  The returned function is not jitted: wrap it with `jax.jit` or `jax.pmap`.
  """
  if classification_loss is None:
    classification_loss = imbalance.ClassificationLoss('ce', losses.cross_entropy)
  use_care = step_config.alpha > 0

  def loss_fn(params, state, batch, dropout_key):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    (logits, intermediates), updates = model.apply(
        variables, batch['image'], train=True, mutable=['batch_stats'],
        rngs={'dropout': dropout_key})
    labels = batch['label']
    values, example_weight = classification_loss(logits, labels, state.step)
    ce_loss = jnp.sum(example_weight * values) / _global_sum(jnp.sum(example_weight), axis_name)
    terms = {'ce': ce_loss}
    loss = ce_loss
    if use_care:
      maps = attention_maps(model, variables, intermediates['features'], labels,
                            method=step_config.attention)
      per_example = losses.care_loss_per_example(
          maps, batch['mask'], tau=step_config.tau, lam=step_config.lam,
          has_mask=batch['has_mask'])
      num_boxed = _global_sum(jnp.sum(batch['has_mask'].astype(jnp.float32)), axis_name)
      if step_config.reduction == 'mean':
        care = jnp.sum(per_example) / jnp.maximum(num_boxed, 1.0)
      else:
        care = jnp.sum(per_example)
      # Stage 1 (before start_step) trains with CE alone. A traced switch, so
      # both stages share one compiled step.
      alpha = jnp.where(state.step >= step_config.start_step, step_config.alpha, 0.0)
      loss = (1.0 - alpha) * ce_loss + alpha * care
      terms.update(care=care, alpha=alpha, boxed=num_boxed)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    terms['accuracy'] = correct / _global_sum(jnp.float32(labels.shape[0]), axis_name)
    return loss, (terms, updates['batch_stats'])

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
    if axis_name:
      dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (terms, batch_stats)), grads = grad_fn(state.params, state, batch, dropout_key)
    # Each device's loss is its share of the global loss: summing the shares
    # (and their gradients) gives the global loss and gradient.
    loss = _global_sum(loss, axis_name)
    grads = _global_sum(grads, axis_name)
    terms = {k: (v if k in ('alpha', 'boxed') else _global_sum(v, axis_name))
             for k, v in terms.items()}
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    # A NaN/Inf gradient makes the updated params non-finite (SGD and Adam
    # alike). Testing the params rather than the gradients keeps the sharded
    # program, and so its rounding, exactly that of the unguarded step.
    finite_update = _all_finite(new_state.params)
    finite = jnp.isfinite(loss) & finite_update & _all_finite(batch_stats)
    new_state = _skip_nonfinite(state, new_state, finite,
                                limit=step_config.max_consecutive_nonfinite)
    guard = {'finite_update': finite_update, 'skipped_steps': new_state.skipped_steps,
             'consecutive_nonfinite': new_state.consecutive_nonfinite,
             **_batch_statistics(batch, axis_name)}
    return new_state, {'loss': loss, **terms, 'guard': guard}

  return train_step


def make_eval_step(model: models.Classifier, *, num_classes: int, attention: str = 'auto',
                   predict_logits: Callable[[jax.Array], jax.Array] | None = None,
                   axis_name: str | None = None) -> Callable[[TrainState, dict], tuple]:
  """Returns `eval_step(state, batch) -> (confusion [K, K], AttentionMetrics)`.

  Padding rows (``valid=False``) count nowhere. The attention quality of the
  true class's map is measured on the rows with a lesion mask (batches from
  `pipeline.eval_batches` carry ``lesion_mask``/``has_lesion_mask``; batches
  without them give empty attention sums). `predict_logits` maps the logits
  to the scores whose argmax is the prediction (post-hoc logit adjustment).
  """

  def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits, intermediates = model.apply(variables, batch['image'], train=False)
    scores = logits if predict_logits is None else predict_logits(logits)
    confusion = metrics_lib.confusion_matrix(
        batch['label'], jnp.argmax(scores, -1), num_classes=num_classes,
        valid=batch['valid'])
    quality = metrics_lib.AttentionMetrics.empty()
    if 'lesion_mask' in batch:
      maps = attention_maps(model, variables, intermediates['features'], batch['label'],
                            method=attention)
      quality = metrics_lib.AttentionMetrics.from_batch(
          maps, batch['lesion_mask'], valid=batch['valid'] & batch['has_lesion_mask'])
    return jax.tree.map(lambda x: _global_sum(x, axis_name), (confusion, quality))

  return eval_step


class MeshParallel:
  """jit over a ('data',) mesh of all devices: batch sharded, state replicated."""

  def __init__(self, train_step, eval_step):
    self.mesh = jax.make_mesh((jax.device_count(),), (MESH_AXIS,),
                              axis_types=(jax.sharding.AxisType.Auto,))
    replicated = jax.NamedSharding(self.mesh, jax.P())
    self._batch_sharding = jax.NamedSharding(self.mesh, jax.P(MESH_AXIS))
    self._replicated = replicated
    self.train_step = jax.jit(train_step, in_shardings=(replicated, self._batch_sharding),
                              out_shardings=(replicated, replicated), donate_argnums=0)
    self.eval_step = jax.jit(eval_step, in_shardings=(replicated, self._batch_sharding),
                             out_shardings=replicated)

  def put_state(self, state: TrainState) -> TrainState:
    # Every process holds the whole (replicated) state. Arrays restored onto
    # the replicated sharding (`abstract_state`) are already in place.
    return jax.tree.map(
        lambda x: x if isinstance(x, jax.Array) and x.sharding == self._replicated
        else jax.make_array_from_process_local_data(self._replicated, np.asarray(x)),
        state)

  def abstract_state(self, state: TrainState) -> TrainState:
    """The restore target of a host `state`: replicated over the mesh."""
    return checkpoint_lib.abstract_tree(state, self._replicated)

  def get_state(self, state: TrainState) -> TrainState:
    return self.fetch(state)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    # Each process holds its slice of the global batch (multi-host safe).
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._batch_sharding, x), batch)

  def scope(self):
    return jax.set_mesh(self.mesh)

  def fetch(self, tree):
    # Replicated outputs: the local copy is the value, also when the array
    # spans devices of other processes (which device_get refuses).
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


class PmapParallel:
  """`jax.pmap` over the local devices: batch split on a leading device axis."""

  def __init__(self, train_step, eval_step):
    self.num_shards = jax.local_device_count()
    self.train_step = jax.pmap(train_step, axis_name=PMAP_AXIS, donate_argnums=0)
    self.eval_step = jax.pmap(eval_step, axis_name=PMAP_AXIS)

  def put_state(self, state: TrainState) -> TrainState:
    # A leading device axis; the first pmapped call moves it onto the devices.
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (self.num_shards, *jnp.shape(x))), state)

  def get_state(self, state: TrainState) -> TrainState:
    return jax.device_get(jax.tree.map(lambda x: x[0], state))

  def abstract_state(self, state: TrainState) -> TrainState:
    """The restore target of a host `state`: numpy arrays, for `put_state`."""
    return checkpoint_lib.abstract_tree(state)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return jax.tree.map(lambda x: x.reshape(self.num_shards, -1, *x.shape[1:]), batch)

  def scope(self):
    return contextlib.nullcontext()

  def fetch(self, tree):
    return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def make_parallel(config: ml_collections.ConfigDict, train_step, eval_step):
  """The data-parallel wrapper of `config.parallel`."""
  cls = PmapParallel if config.parallel == 'pmap' else MeshParallel
  return cls(train_step, eval_step)


def _check_divisible(batch_size: int, parallel, key: str) -> None:
  # The mesh splits the global batch over all devices; pmap splits each
  # process's share over its local devices.
  shards = (jax.device_count() if isinstance(parallel, MeshParallel)
            else jax.process_count() * jax.local_device_count())
  if batch_size % shards:
    raise ValueError(f'config.{key} = {batch_size} must be divisible by the number of '
                     f'devices ({shards}).')


def num_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  steps_per_epoch = num_train_examples // config.train.batch_size
  return max(1, int(math.ceil(config.train.num_epochs * steps_per_epoch)))


def evaluate(parallel, state: TrainState, config: ml_collections.ConfigDict, split: str,
             info) -> dict[str, Any]:
  """Metrics of `state` on one split (every example exactly once)."""
  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  batch_size = config.train.eval_batch_size
  _check_divisible(batch_size, parallel, 'train.eval_batch_size')
  per_process = batch_size // jax.process_count()
  confusion = np.zeros((len(info.class_names),) * 2, np.int64)
  quality = metrics_lib.AttentionMetrics.empty()
  batches = pipeline.eval_batches(config.data, split, batch_size=per_process,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  progress = tqdm.tqdm(batches, total=math.ceil(info.split_sizes[split] / batch_size),
                       desc=f'eval {split}', unit='batch', leave=False, dynamic_ncols=True,
                       disable=not (jax.process_index() == 0 and config.train.progress))
  for batch in progress:
    with parallel.scope():
      batch_confusion, batch_quality = parallel.fetch(
          parallel.eval_step(state, parallel.put_batch(batch)))
    confusion += np.asarray(batch_confusion)
    quality = quality.merge(batch_quality)
  result = metrics_lib.classification_metrics(
      confusion, class_names=info.class_names, rare_classes=info.rare_classes)
  result['attention'] = quality.compute()
  return result


def check_nonfinite(recent: list[tuple[int, dict]], parallel, *, limit: int) -> None:
  """Raises FloatingPointError if the guard stopped the steps of `recent`.

  `recent` holds `(step, metrics)` of the steps since the last check, still
  on the devices: only the last step's counter is fetched, the others only
  to write the diagnostic. Clears `recent`.
  """
  if not recent:
    return
  last = int(parallel.fetch(recent[-1][1]['guard']['consecutive_nonfinite']))
  if last < limit:
    recent.clear()
    return
  for step, metrics in recent:
    metrics = parallel.fetch(metrics)
    if int(metrics['guard']['consecutive_nonfinite']) >= limit:
      break
  raise FloatingPointError(_nonfinite_message(step, metrics, limit))


def _nonfinite_message(step: int, metrics: dict[str, Any], limit: int) -> str:
  guard = metrics['guard']
  terms = [k for k in ('ce', 'care', 'loss') if k in metrics and not np.isfinite(metrics[k])]
  if not bool(guard['finite_update']):
    terms.append('gradients')
  return (
      f'{limit} consecutive training steps had a non-finite loss or gradient '
      f'(train.max_consecutive_nonfinite = {limit}); the last at step {step}: non-finite '
      f'{", ".join(terms) or "BatchNorm statistics"} (ce = {float(metrics["ce"])}, care = '
      f'{float(metrics.get("care", 0.0))}). Batch: images in [{float(guard["image_min"]):.4g}, '
      f'{float(guard["image_max"]):.4g}] with {int(guard["image_nonfinite"])} non-finite '
      f'pixels, labels in [{int(guard["label_min"])}, {int(guard["label_max"])}], '
      f'{float(metrics.get("boxed", 0.0)):g} boxed images. {int(guard["skipped_steps"])} '
      f'steps skipped in all; parameters are those before the first of these steps. Lower '
      'train.learning_rate or check the data.')


def _log_record(step_metrics: dict[str, Any], parallel, step: int, seconds: float) -> dict:
  metrics = parallel.fetch(step_metrics)
  record = {k: float(v) for k, v in metrics.items() if k != 'guard'}
  record.update(skipped_steps=int(metrics['guard']['skipped_steps']), step=step,
                seconds=round(seconds, 3))
  return record


class _EvalSummaries:
  """TensorBoard records of an evaluation: metrics and attention overlays.

  The overlays show the same few images (rare-class images with a lesion box
  first) at every evaluation, so their change over training is visible.
  """

  def __init__(self, writer: summary.SummaryWriter, model: models.Classifier,
               config: ml_collections.ConfigDict, info, *, num_images: int = 8):
    # visualize imports train: import it here, not at module level.
    from care_jax import visualize  # pylint: disable=g-import-not-at-top
    self._visualize, self._writer, self._model, self._config = visualize, writer, model, config
    split = 'validation' if 'validation' in info.split_sizes else 'test'
    self._examples = visualize.select_examples(config.data, split, num_images=num_images,
                                               rare_classes=info.rare_classes)
    self._pixels = visualize.denormalize(self._examples['image'], mean=config.data.mean,
                                         std=config.data.std)

  def __call__(self, split: str, result: dict[str, Any], host_state: TrainState,
               step: int) -> None:
    scalars = {f'{split}/{k}': result[k] for k in ('mca', 'accuracy', 'rare_recall')
               if result.get(k) is not None}
    scalars.update({f'{split}/attention/{k}': v for k, v in result['attention'].items()
                    if k != 'num_images' and v is not None})
    self._writer.scalars(scalars, step)
    variables = {'params': host_state.params, 'batch_stats': host_state.batch_stats}
    maps, _ = self._visualize.compute_attention(
        self._model, variables, self._examples['image'], self._examples['label'],
        method=self._config.care.attention)
    self._writer.image('attention', self._visualize.overlay_strip(
        self._pixels, maps, self._examples['lesion_mask']), step)
    self._writer.flush()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates on validation and test, writes `workdir/metrics.json`.

  Resumes from the latest checkpoint in `workdir/checkpoints` when there is
  one (same batches, same result as an uninterrupted run); otherwise starts
  from `config.init_from`'s weights or from scratch. A SIGTERM saves a
  checkpoint at the next step boundary and raises `checkpoint.Preempted`.

  TensorBoard event files go to `workdir` (training metrics at every log
  step; evaluation metrics and attention overlays at every evaluation).

  Returns the dict written to metrics.json.
  """
  from care_jax import boxes as boxes_lib  # pylint: disable=g-import-not-at-top
  # The input pipeline (TensorFlow) is imported only here, so the steps above
  # run where TensorFlow is not installed (e.g. GPU images with in-memory data).
  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config_lib.validate(config)
  checkpoint_lib.check_writable(workdir)
  is_chief = jax.process_index() == 0
  info = pipeline.get_dataset_info(config.data)
  num_classes = len(info.class_names)
  num_steps = num_train_steps(config, info.split_sizes['train'])

  classification_loss = imbalance.make_classification_loss(
      config.loss, class_counts=np.asarray(info.train_class_counts), num_steps=num_steps)

  model = create_model(config, num_classes)
  step_config = StepConfig.from_config(config)
  axis_name = PMAP_AXIS if config.parallel == 'pmap' else None
  parallel = make_parallel(
      config,
      make_train_step(model, step_config, classification_loss=classification_loss,
                      axis_name=axis_name),
      make_eval_step(model, num_classes=num_classes, attention=config.care.attention,
                     predict_logits=classification_loss.predict_logits, axis_name=axis_name))
  _check_divisible(config.train.batch_size, parallel, 'train.batch_size')
  # Checked here too, not only when the first evaluation starts (after training).
  _check_divisible(config.train.eval_batch_size, parallel, 'train.eval_batch_size')

  image_shape = (info.image_size, info.image_size, info.num_channels)
  state = create_train_state(config, model, image_shape, num_steps,
                             jax.random.key(config.seed))
  meta = {'class_names': list(info.class_names), 'rare_classes': list(info.rare_classes),
          'image_shape': list(image_shape)}
  with (checkpoint_lib.RunCheckpoints(workdir, config, meta=meta) as checkpoints,
        checkpoint_lib.PreemptionWatch(checkpoints) as preemption):
    start_step, elapsed = checkpoints.latest_step() or 0, 0.0
    if start_step > num_steps:
      raise ValueError(f'config.train.num_steps = {num_steps} is below the step of the '
                       f'latest checkpoint in {checkpoints.directory} ({start_step})')
    if start_step:
      state, saved_meta = checkpoints.restore(start_step, parallel.abstract_state(state))
      elapsed = saved_meta['train_seconds']
      logging.info('resuming from step %d of %s', start_step, checkpoints.directory)
    elif config.init_from:
      state = checkpoint_lib.init_from(config.init_from, state)
    state = parallel.put_state(state)

    if is_chief:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=2))
    batches = pipeline.train_batches(
        config.data, batch_size=config.train.batch_size // jax.process_count(),
        seed=config.seed, start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), boxes_fn=boxes_lib.replace_boxes)
    writer = summary.SummaryWriter(workdir) if is_chief else None
    eval_summaries = _EvalSummaries(writer, model, config, info) if is_chief else None

    def evaluate_and_log(split: str, step: int) -> dict[str, Any]:
      result = evaluate(parallel, state, config, split, info)
      if is_chief:
        eval_summaries(split, result, parallel.get_state(state), step)
      return result

    log_path = os.path.join(workdir, 'train_log.jsonl')
    if is_chief:
      checkpoint_lib.truncate_log(log_path, start_step)
    recent = []  # (step, metrics on device) since the last non-finite check.
    progress = tqdm.tqdm(total=num_steps, initial=start_step,
                         desc=f'train {os.path.basename(workdir)}',
                         disable=not (is_chief and config.train.progress), dynamic_ncols=True)
    start = time.time() - elapsed
    with open(log_path, 'a') if is_chief else contextlib.nullcontext() as log_file:
      for step in range(start_step + 1, num_steps + 1):
        batch = parallel.put_batch(next(batches))
        with parallel.scope():
          state, step_metrics = parallel.train_step(state, batch)
        recent.append((step, step_metrics))
        progress.update(1)
        log_now = step % config.train.log_every_steps == 0 or step == num_steps
        validate_now = bool(config.train.eval_every_steps and step < num_steps
                            and step % config.train.eval_every_steps == 0
                            and 'validation' in info.split_sizes)
        preempted = step < num_steps and preemption.requested(step)
        save_now = step < num_steps and (
            preempted or checkpoints.is_due(step, validated=validate_now))
        if log_now or validate_now or save_now:
          # Fetching syncs the device: only at these steps.
          check_nonfinite(recent, parallel, limit=config.train.max_consecutive_nonfinite)
        if log_now:
          record = _log_record(step_metrics, parallel, step, time.time() - start)
          progress.set_postfix(loss=f"{record['loss']:.4f}",
                               care=f"{record.get('care', 0.0):.3f}")
          if is_chief:
            log_file.write(json.dumps(record) + '\n')
            log_file.flush()
            writer.scalars({f'train/{k}': v for k, v in record.items()
                            if k not in ('step', 'seconds')}, step)
        val_mca = None
        if validate_now:
          val = evaluate_and_log('validation', step)
          val_mca = val['mca']
          logging.info('step %d validation mca %.4f rare recall %s', step, val['mca'],
                       val['rare_recall'])
        if save_now:
          checkpoints.save(step, parallel.get_state(state), validation_mca=val_mca,
                           train_seconds=time.time() - start)
        if preempted:
          checkpoints.wait()
          message = (f'SIGTERM: saved the checkpoint of step {step} in '
                     f'{checkpoints.directory}; run the same command to resume.')
          logging.warning(message)
          raise checkpoint_lib.Preempted(message)
    progress.close()

    result = {'step': num_steps, 'classes': list(info.class_names),
              'rare_classes': [info.class_names[k] for k in info.rare_classes]}
    if 'validation' in info.split_sizes:
      result['validation'] = evaluate_and_log('validation', num_steps)
    if checkpoints.latest_step() != num_steps:
      checkpoints.save(num_steps, parallel.get_state(state),
                       validation_mca=result.get('validation', {}).get('mca'),
                       train_seconds=time.time() - start)
    if 'test' in info.split_sizes:
      result['test'] = evaluate_and_log('test', num_steps)
    if writer:
      writer.close()
  result['train_seconds'] = round(time.time() - start, 3)
  if is_chief:
    with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result
