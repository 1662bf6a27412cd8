"""A tiny model's train step: its config, a batch with a few boxed images, the written-out loss.

conftest.py gives the process 8 simulated CPU devices; the single-device reference runs with
plain `jax.jit`. The tests of the step, the guard and the parallel back-ends share these.
"""

import jax
import jax.numpy as jnp
import numpy as np

from care_jax import attention
from care_jax import classification_loss
from care_jax import config as config_lib
from care_jax import imbalance
from care_jax import losses
from care_jax import training

NUM_CLASSES = 3
IMAGE = 32


def make_config(**care):
  """The default config with the tiny CNN, SGD and weighted CE; `care` sets config.care."""
  config = config_lib.default_config()
  config.model.name = 'tiny_cnn'
  # SGD: Adam's first update is ~lr * sign(g), which would magnify rounding
  # noise of near-zero gradients into parameter differences.
  config.train.optimizer = 'sgd'
  config.train.learning_rate = 1e-2
  config.loss.name = 'weighted_ce'
  for key, value in care.items():
    config.care[key] = value
  return config


def batch(batch_size=16, seed=0):
  """Random 32 x 32 images and labels; boxes on 5 of the 16 images."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
  mask = np.zeros((batch_size, IMAGE, IMAGE), np.float32)
  # Boxes only on a few images, unevenly spread over the 8 shards, so a
  # per-shard mean would differ from the global one.
  boxed = np.array([0, 1, 2, 5, 13])
  for i in boxed:
    y0, x0 = rng.integers(0, IMAGE // 2, 2)
    mask[i, y0 : y0 + rng.integers(4, IMAGE // 2), x0 : x0 + rng.integers(4, IMAGE // 2)] = 1.0
  return {
    'image': rng.normal(size=(batch_size, IMAGE, IMAGE, 3)).astype(np.float32),
    'label': labels,
    'mask': mask,
    'has_mask': mask.sum((1, 2)) > 0,
  }


def setup(config, *, parallel=None, class_weights=(0.2, 0.3, 0.5)):
  """(model, state, train step) of `config` with a weighted CE of `class_weights`."""
  config.parallel = parallel or 'mesh'
  model = training.create_model(config, NUM_CLASSES)
  state = training.create_train_state(config, model, (IMAGE, IMAGE, 3), 10, jax.random.key(0))
  weighted_ce = classification_loss.ClassificationLoss(
    'weighted_ce', imbalance.cross_entropy, class_weights=np.asarray(class_weights, np.float32)
  )
  step = training.make_train_step(
    model,
    training.StepConfig.from_config(config),
    classification_loss=weighted_ce,
    axis_name=training.PMAP_AXIS if parallel == 'pmap' else None,
  )
  return model, state, step


def reference_loss(model, state, batch, config, class_weights):
  """The global loss written out directly from the formulas."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  (logits, inter), _ = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
  labels = jnp.asarray(batch['label'])
  log_p = jax.nn.log_softmax(logits)
  w = jnp.asarray(class_weights)[labels]
  ce = -jnp.sum(w * log_p[jnp.arange(len(labels)), labels]) / jnp.sum(w)
  maps = attention.cam(inter['features'], state.params['head']['fc']['kernel'], labels)
  care = losses.care_loss(maps, batch['mask'], tau=config.care.tau, lam=config.care.lam)
  alpha = config.care.alpha
  return (1 - alpha) * ce + alpha * care, ce, care


TRAIN_COUNTS = np.array([60, 25, 5])


def loss_setup(name, fields, head, *, parallel=None):
  """(config, model, state, train step) with the classification loss `name` of TRAIN_COUNTS."""
  config = make_config(alpha=0.5)
  config.model.head = head
  config.loss.name = name
  config.parallel = parallel or 'mesh'
  model = training.create_model(config, NUM_CLASSES)
  state = training.create_train_state(config, model, (IMAGE, IMAGE, 3), 10, jax.random.key(0))
  loss = classification_loss.make_classification_loss(
    name, class_counts=TRAIN_COUNTS, num_steps=10, **fields
  )
  step = training.make_train_step(
    model,
    training.StepConfig.from_config(config),
    classification_loss=loss,
    axis_name=training.PMAP_AXIS if parallel == 'pmap' else None,
  )
  return config, model, state, step


STEP_LOSS_CASES = [
  ('class_balanced', {'beta': 0.99}, 'bn_linear'),
  ('focal', {'focal_alpha': 'inverse_frequency'}, 'default'),
  ('focal', {'focal_alpha': 'class_balanced', 'beta': 0.99}, 'default'),
  ('weighted_ce', {}, 'default'),
  # drw_start = 0: the DRW phase from step 0; 'default' is the cosine head 'normed_linear'.
  ('ldam_drw', {'drw_start': 0.0, 'beta': 0.99}, 'default'),
]


def parallel_runner(config, model, step, parallel):
  """The back-end of ``config.parallel`` for `step` and `model`'s eval step (pmap: its axis)."""
  eval_step = training.make_eval_step(
    model, num_classes=NUM_CLASSES, axis_name=training.PMAP_AXIS if parallel == 'pmap' else None
  )
  return training.make_parallel(config, step, eval_step)
