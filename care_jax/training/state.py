"""The train state, the model of a config, its optimizer and learning-rate schedule."""

import functools
import math
from typing import Any

from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from care_jax import config as config_lib
from care_jax import models
from care_jax.training import parallel as parallel_lib


class TrainState(train_state.TrainState):
  batch_stats: Any
  dropout_key: jax.Array  # Raw uint32 key data: a plain array to shard and save.
  # Non-finite guard (int32 scalars): steps skipped so far, and the current
  # run of consecutive skipped steps.
  skipped_steps: jax.Array
  consecutive_nonfinite: jax.Array


def _model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {
    'dtype': jnp.dtype(config.dtype),
    'head': models.resolve_head(config.model.head, loss=config.loss.name),
    'axis_name': parallel_lib.PMAP_AXIS if config.parallel == 'pmap' else None,
  }


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> models.Classifier:
  """The classifier of `config.model`, set up for `config.parallel` and `config.dtype`."""
  return models.get_model(config.model.name, num_classes=num_classes, **_model_kwargs(config))


def num_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """`train.num_steps`, or `train.num_epochs` passes over the training examples."""
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  steps_per_epoch = num_train_examples // config.train.batch_size
  return max(1, int(math.ceil(config.train.num_epochs * steps_per_epoch)))


def create_learning_rate(train_config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Warm-up followed by a constant, cosine or step schedule."""
  lr = train_config.learning_rate
  if lr is None:
    raise ValueError(
      'train.learning_rate is None (left to the recipe): resolve the config first with '
      'care_jax.config.resolve_recipe (create_train_state does).'
    )
  warmup = min(train_config.warmup_steps, num_steps)
  decay_steps = max(num_steps - warmup, 1)
  if train_config.schedule == 'constant':
    main = optax.constant_schedule(lr)
  elif train_config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps)
  else:
    main = optax.piecewise_constant_schedule(
      lr, {int(b * decay_steps): train_config.step_factor for b in train_config.step_boundaries}
    )
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], boundaries=[warmup])


def create_optimizer(
  train_config: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
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


def create_train_state(
  config: ml_collections.ConfigDict,
  model: models.Classifier,
  image_shape: tuple[int, ...],
  num_steps: int,
  rng: jax.Array,
) -> TrainState:
  """Initialises parameters, BatchNorm statistics and the optimizer.

  With `config.model.pretrained` the backbone (and the head, when the class
  counts agree) comes from that checkpoint; the rest is initialised.
  """
  params_key, dropout_key, init_dropout_key = jax.random.split(rng, 3)
  if config.model.pretrained:
    _, variables, report = models.load_pretrained(
      config.model.name,
      config.model.pretrained,
      num_classes=model.head.num_classes,
      rng=params_key,
      image_shape=tuple(image_shape[:2]),
      return_report=True,
      **_model_kwargs(config),
    )
    logging.info('pretrained weights: %s', report)
  else:
    variables = jax.jit(functools.partial(model.init, train=False))(
      {'params': params_key, 'dropout': init_dropout_key}, jnp.zeros((1, *image_shape), jnp.float32)
    )
  return TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    batch_stats=variables.get('batch_stats', {}),
    tx=create_optimizer(config_lib.resolve_recipe(config).train, num_steps),
    dropout_key=jax.random.key_data(dropout_key),
    skipped_steps=np.zeros((), np.int32),
    consecutive_nonfinite=np.zeros((), np.int32),
  )
