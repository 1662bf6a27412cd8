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
from care_jax import config as config_lib
from care_jax import losses
from care_jax import metrics as metrics_lib
from care_jax import models

PMAP_AXIS = 'batch'
MESH_AXIS = 'data'


class TrainState(train_state.TrainState):
  batch_stats: Any
  dropout_key: jax.Array  # Raw uint32 key data: a plain array to shard and save.


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static settings of a train step (hashable: part of the jit cache key)."""
  alpha: float = 0.5
  tau: float = 0.5
  lam: float = 0.7
  start_step: int = 0
  attention: str = 'auto'
  reduction: str = 'mean'

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'StepConfig':
    care = config.care
    return cls(alpha=care.alpha, tau=care.tau, lam=care.lam, start_step=care.start_step,
               attention=care.attention, reduction=care.reduction)


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
      dropout_key=jax.random.key_data(dropout_key))


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


def make_train_step(model: models.Classifier, step_config: StepConfig, *,
                    class_weights: np.ndarray | None = None,
                    axis_name: str | None = None) -> Callable[[TrainState, dict], tuple]:
  """Returns a pure `train_step(state, batch) -> (state, metrics)`.

  Args:
    model: the classifier (with `axis_name` BatchNorm for the pmap path).
    step_config: alpha, tau, lam, start step, attention method, reduction.
    class_weights: optional [K] weights of a class-weighted CE (weighted
      mean over the batch, as PyTorch's `CrossEntropyLoss(weight=...)`).
    axis_name: the pmap axis; None under jit (mesh or single device).

  The returned function is not jitted: wrap it with `jax.jit` or `jax.pmap`.
  """
  weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  use_care = step_config.alpha > 0

  def loss_fn(params, state, batch, dropout_key):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    (logits, intermediates), updates = model.apply(
        variables, batch['image'], train=True, mutable=['batch_stats'],
        rngs={'dropout': dropout_key})
    labels = batch['label']
    ce = losses.cross_entropy(logits, labels)
    example_weight = jnp.ones_like(ce) if weights is None else weights[labels]
    ce_loss = jnp.sum(example_weight * ce) / _global_sum(jnp.sum(example_weight), axis_name)
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
    return new_state, {'loss': loss, **terms}

  return train_step


def make_eval_step(model: models.Classifier, *, num_classes: int,
                   axis_name: str | None = None) -> Callable[[TrainState, dict], jax.Array]:
  """Returns `eval_step(state, batch) -> confusion [K, K]` (padding rows skipped)."""

  def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits, _ = model.apply(variables, batch['image'], train=False)
    confusion = metrics_lib.confusion_matrix(
        batch['label'], jnp.argmax(logits, -1), num_classes=num_classes,
        valid=batch['valid'])
    return _global_sum(confusion, axis_name)

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
    # Every process holds the whole (replicated) state.
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._replicated, np.asarray(x)),
        state)

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
  for batch in pipeline.eval_batches(config.data, split, batch_size=per_process,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    with parallel.scope():
      confusion += np.asarray(parallel.fetch(parallel.eval_step(state, parallel.put_batch(batch))))
  return metrics_lib.classification_metrics(
      confusion, class_names=info.class_names, rare_classes=info.rare_classes)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates on validation and test, writes `workdir/metrics.json`.

  Returns the dict written to metrics.json.
  """
  # The input pipeline (TensorFlow) is imported only here, so the steps above
  # run where TensorFlow is not installed (e.g. GPU images with in-memory data).
  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  is_chief = jax.process_index() == 0
  info = pipeline.get_dataset_info(config.data)
  num_classes = len(info.class_names)
  num_steps = num_train_steps(config, info.split_sizes['train'])

  class_weights = None
  if config.loss.name == 'weighted_ce':
    class_weights = losses.inverse_frequency_weights(info.train_class_counts)

  model = create_model(config, num_classes)
  step_config = StepConfig.from_config(config)
  axis_name = PMAP_AXIS if config.parallel == 'pmap' else None
  parallel = make_parallel(
      config,
      make_train_step(model, step_config, class_weights=class_weights, axis_name=axis_name),
      make_eval_step(model, num_classes=num_classes, axis_name=axis_name))
  _check_divisible(config.train.batch_size, parallel, 'train.batch_size')

  image_shape = (info.image_size, info.image_size, info.num_channels)
  state = create_train_state(config, model, image_shape, num_steps,
                             jax.random.key(config.seed))
  state = parallel.put_state(state)

  if is_chief:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  batches = pipeline.train_batches(
      config.data, batch_size=config.train.batch_size // jax.process_count(),
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count())

  log_path = os.path.join(workdir, 'train_log.jsonl')
  history = []
  progress = tqdm.tqdm(total=num_steps, desc=f'train {os.path.basename(workdir)}',
                       disable=not (is_chief and config.train.progress), dynamic_ncols=True)
  start = time.time()
  with open(log_path, 'w') if is_chief else contextlib.nullcontext() as log_file:
    for step in range(1, num_steps + 1):
      batch = parallel.put_batch(next(batches))
      with parallel.scope():
        state, step_metrics = parallel.train_step(state, batch)
      progress.update(1)
      if step % config.train.log_every_steps == 0 or step == num_steps:
        # Fetching syncs the device: only every log_every_steps.
        record = {k: float(v) for k, v in parallel.fetch(step_metrics).items()}
        if not all(math.isfinite(v) for v in record.values()):
          raise FloatingPointError(f'non-finite training metrics at step {step}: {record}')
        record.update(step=step, seconds=round(time.time() - start, 3))
        history.append(record)
        progress.set_postfix(loss=f"{record['loss']:.4f}",
                             care=f"{record.get('care', 0.0):.3f}")
        if is_chief:
          log_file.write(json.dumps(record) + '\n')
          log_file.flush()
      if (config.train.eval_every_steps and step % config.train.eval_every_steps == 0
          and step < num_steps and 'validation' in info.split_sizes):
        val = evaluate(parallel, state, config, 'validation', info)
        logging.info('step %d validation mca %.4f rare recall %s', step, val['mca'],
                     val['rare_recall'])
  progress.close()

  result = {'step': num_steps, 'classes': list(info.class_names),
            'rare_classes': [info.class_names[k] for k in info.rare_classes]}
  for split in ('validation', 'test'):
    if split in info.split_sizes:
      result[split] = evaluate(parallel, state, config, split, info)
  result['train_seconds'] = round(time.time() - start, 3)
  if is_chief:
    with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result
