"""Deprecated: the trainer moved to the `care_jax.training` package in 0.2 (removed in 0.3).

Every name this module had still works and warns once per use; the new home
of each is below. `train_and_evaluate` here also wires in the generated boxes
of ``config.data.box_source``, as before (with the new API, pass
``boxes_fn=care_jax.boxes.replace_boxes``).
"""

import importlib
from typing import Any
import warnings

from care_jax import boxes
from care_jax import training

# Old name -> (module, name) of its new home.
_MOVED = {
  name: ('care_jax.training', name)
  for name in (
    'MESH_AXIS',
    'PMAP_AXIS',
    'MeshParallel',
    'PmapParallel',
    'StepConfig',
    'TrainState',
    'check_nonfinite',
    'create_learning_rate',
    'create_model',
    'create_optimizer',
    'create_train_state',
    'make_eval_step',
    'make_parallel',
    'make_train_step',
    'num_train_steps',
  )
}


def _train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  return training.train_and_evaluate(config, workdir, boxes_fn=boxes.replace_boxes)


def _evaluate(parallel, state, config, split: str, info) -> dict[str, Any]:
  # The old signature: the eval batches of config.data's split, read here.
  from care_jax.training import inputs  # pylint: disable=g-import-not-at-top  # TensorFlow

  training.parallel.check_divisible(config.train.eval_batch_size, parallel, 'train.eval_batch_size')
  return training.evaluation.evaluate_split(
    parallel, state, config, info, split, inputs.PipelineInputs(config).eval_batches
  )


def _attention_maps(model, variables, features, labels, *, method: str = 'auto'):
  return model.attention_maps(variables, features, labels, method=method)


_REPLACED = {
  'train_and_evaluate': (_train_and_evaluate, 'care_jax.training.train_and_evaluate'),
  'attention_maps': (_attention_maps, 'Classifier.attention_maps of care_jax.models'),
  'evaluate': (_evaluate, 'care_jax.training.evaluate (which takes the batches)'),
}


def __getattr__(name: str) -> Any:
  if name in _MOVED:
    module, new_name = _MOVED[name]
    warnings.warn(
      f'care_jax.train.{name} is deprecated: use {module}.{new_name}',
      DeprecationWarning,
      stacklevel=2,
    )
    return getattr(importlib.import_module(module), new_name)
  if name in _REPLACED:
    function, replacement = _REPLACED[name]
    warnings.warn(
      f'care_jax.train.{name} is deprecated: use {replacement}', DeprecationWarning, stacklevel=2
    )
    return function
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
