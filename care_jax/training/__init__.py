"""CARE training: a library, importable from a notebook (no TensorFlow until data is read).

=====================================  ==========================================
module                                 what it owns
=====================================  ==========================================
`care_jax.training.state`              `TrainState`, the model of a config, the
                                       optimizer and learning-rate schedule
`care_jax.training.step`               the pure train and eval steps
`care_jax.training.guard`              the non-finite guard (device and host)
`care_jax.training.parallel`           the mesh (jit) and pmap back-ends
`care_jax.training.evaluation`         the metrics of a state on one split, and
                                       of a saved checkpoint
`care_jax.training.outputs`            the workdir's files (log, TensorBoard,
                                       metrics.json)
`care_jax.training.preemption`         `PreemptionWatch`: a SIGTERM checkpoints
                                       at the next step boundary, then
                                       `Preempted`
`care_jax.training.summary`            `SummaryWriter`: TensorBoard scalars and
                                       images (TensorFlow's event writer)
`care_jax.training.inputs`             the input pipeline as the loop reads it
                                       (tf.data; imported on first use)
`care_jax.training.loop`               `train_and_evaluate`, `run`,
                                       `create_experiment`
=====================================  ==========================================

Example::

  from care_jax import config as config_lib, training
  metrics = training.train_and_evaluate(config_lib.default_config(), 'runs/care')
"""

import importlib
from typing import Any

from care_jax.training.guard import check_nonfinite
from care_jax.training.parallel import MESH_AXIS
from care_jax.training.parallel import PMAP_AXIS
from care_jax.training.parallel import MeshParallel
from care_jax.training.parallel import PmapParallel
from care_jax.training.parallel import make_parallel
from care_jax.training.state import TrainState
from care_jax.training.state import create_learning_rate
from care_jax.training.state import create_model
from care_jax.training.state import create_optimizer
from care_jax.training.state import create_train_state
from care_jax.training.state import num_train_steps
from care_jax.training.step import StepConfig
from care_jax.training.step import make_eval_step
from care_jax.training.step import make_train_step

# The loop and the evaluation load on first use of one of their names (PEP 562): they bring
# matplotlib, scipy and tqdm (figures, boxes, progress bars), which the steps and back-ends above
# do without, so benchmarks/gpu.py runs on accelerator images that lack them.
_LAZY = {
  'evaluate': 'evaluation',
  'evaluate_checkpoint': 'evaluation',
  'Experiment': 'loop',
  'create_experiment': 'loop',
  'run': 'loop',
  'train_and_evaluate': 'loop',
}
_SUBMODULES = frozenset(
  ('evaluation', 'inputs', 'loop', 'outputs', 'preemption', 'stages', 'summary', 'device_augment')
)

__all__ = [
  'check_nonfinite',
  'create_experiment',
  'create_learning_rate',
  'create_model',
  'create_optimizer',
  'create_train_state',
  'evaluate',
  'evaluate_checkpoint',
  'Experiment',
  'make_eval_step',
  'make_parallel',
  'make_train_step',
  'MESH_AXIS',
  'MeshParallel',
  'num_train_steps',
  'PMAP_AXIS',
  'PmapParallel',
  'run',
  'StepConfig',
  'TrainState',
  'train_and_evaluate',
]


def __getattr__(name: str) -> Any:  # noqa: N807
  if name in _LAZY:
    return getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
  if name in _SUBMODULES:  # `training.loop` without importing it first, as before.
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
