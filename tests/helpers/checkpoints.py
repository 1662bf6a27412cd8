"""Checkpoints of small runs: a config that keeps them, train states, saved runs.

The tests of writing checkpoints (tests/checkpoint_test.py) and of reading runs back
(tests/trained_run_test.py) share these.
"""

import jax
import numpy as np

from care_jax import checkpoint
from care_jax import config as config_lib
from care_jax import training

CLASSES = ['a', 'b', 'c']


def config(*overrides):
  """The default config, saved synchronously, keeping 2 checkpoints and the best one."""
  return config_lib.apply_overrides(
    config_lib.default_config(),
    ['checkpoint.async_save=False', 'checkpoint.keep=2', 'checkpoint.keep_best=1', *overrides],
  )


def state(config, num_classes=3, seed=0):
  """A fresh train state of `config`'s model for 16 x 16 images."""
  model = training.create_model(config, num_classes)
  return training.create_train_state(config, model, (16, 16, 3), 10, jax.random.key(seed))


def save_run(workdir, config, scores, *, num_classes=3):
  """Saves a state per (step, validation score); params differ per step."""
  states = {}
  with checkpoint.RunCheckpoints(
    str(workdir), config, meta={'class_names': CLASSES[:num_classes]}
  ) as ckpts:
    for step, score in scores:
      states[step] = state(config, num_classes, seed=step)
      ckpts.save(step, states[step], selection_score=score)
  return states


def assert_tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)
