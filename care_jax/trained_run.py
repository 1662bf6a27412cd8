"""Reading a finished run: its trained model, classes and config (`load_run`, `load_model`), or
its weights as the start of another run (`init_from`).

The checkpoints are those `care_jax.checkpoint.RunCheckpoints` writes (its docstring gives their
layout); every reader here opens them read-only.

Example::

  config, model, variables = load_model('runs/care')  # best by validation MCA
  logits, _ = model.apply(variables, images, train=False)
"""

import contextlib
import dataclasses
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from care_jax import checkpoint as checkpoint_lib
from care_jax import config as config_lib
from care_jax import models


def _restore_host_state(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The saved state as a dict of numpy arrays (no devices involved).

  Numpy whether the run saved numpy arrays (care-jax 0.1, 0.2) or its
  replicated device arrays, on any number of devices.
  """
  abstract = checkpoint_lib.abstract_tree(manager.item_metadata(step)['state'].tree)
  return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))[
    'state'
  ]


def _open_existing(workdir: epath.PathLike) -> ocp.CheckpointManager:
  checkpoints = checkpoint_lib.checkpoint_dir(workdir)
  if not checkpoints.is_dir():
    raise FileNotFoundError(
      f'no checkpoint in {str(workdir)!r}: {checkpoints} does not exist '
      '(train with `care-jax train --workdir=...` first)'
    )
  manager = checkpoint_lib.open_manager(checkpoints, read_only=True)
  if manager.latest_step() is None:
    raise FileNotFoundError(f'no complete checkpoint in {checkpoints}')
  return manager


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A trained model of a run and what it was trained on (`load_run`).

  Attributes:
    config: the run's config.
    model: the float32 classifier without parallel axes.
    variables: ``{'params', 'batch_stats'}`` as numpy arrays.
    class_names: the classes in label order (the model's logits).
    rare_classes: label indices of the rare classes.
    step: the checkpoint's step.
    train_class_counts: training examples per class (None for runs of 0.1).
  """

  config: ml_collections.ConfigDict
  model: models.Classifier
  variables: dict[str, Any]
  class_names: tuple[str, ...]
  rare_classes: tuple[int, ...]
  step: int
  train_class_counts: tuple[int, ...] | None = None


def load_run(workdir: str, *, which: str | int = 'best') -> TrainedRun:
  """The trained model of a run with its classes, for evaluation, figures or inference.

  Args:
    workdir: the run's `--workdir` (holding ``checkpoints/``).
    which: 'best' (highest validation MCA; the latest checkpoint when none was
      validated), 'latest', or a step (an int, or its digits as a string).

  The model is rebuilt from the run's ``model.name``: a registered backbone, or the import path
  of the run's own backbone (``'package.module:Backbone'``), which must import here too.

  Raises:
    FileNotFoundError: the workdir holds no complete checkpoint.
    ValueError: `which` is none of these, or names a step without a checkpoint; the run's
      ``model.name`` names no backbone here (a path that does not import).
  """
  with contextlib.closing(_open_existing(workdir)) as manager:
    step = checkpoint_lib.step_of(manager, which)
    saved_config, meta = checkpoint_lib.read_config_and_meta(manager, step)
    state = _restore_host_state(manager, step)
  config = config_lib.from_json(saved_config)
  try:
    model = models.get_model(
      config.model.name,
      num_classes=len(meta['class_names']),
      dtype=jnp.float32,
      head=models.resolve_head(config.model.head, loss=config.loss.name),
    )
  except ValueError as error:
    raise ValueError(f'The run {workdir} cannot be rebuilt: {error}') from None
  counts = meta.get('train_class_counts')
  return TrainedRun(
    config=config,
    model=model,
    variables={'params': state['params'], 'batch_stats': state['batch_stats']},
    class_names=tuple(meta['class_names']),
    rare_classes=tuple(meta.get('rare_classes', ())),
    step=step,
    train_class_counts=None if counts is None else tuple(int(c) for c in counts),
  )


def load_model(
  workdir: str, *, which: str | int = 'best'
) -> tuple[ml_collections.ConfigDict, models.Classifier, dict]:
  """The trained model of a run, for evaluation, figures or inference.

  `load_run` gives the same with the class names and the step.

  Args:
    workdir: the run's `--workdir` (holding ``checkpoints/``).
    which: 'best' (highest validation MCA; the latest checkpoint when none was
      validated), 'latest', or a step.

  Returns:
    `(config, model, variables)`: the run's config, the float32 classifier
    without parallel axes for the run's classes, and ``{'params',
    'batch_stats'}`` as numpy arrays, so that
    ``model.apply(variables, images, train=False)`` gives ``(logits, inter)``.

  Raises:
    FileNotFoundError: the workdir holds no complete checkpoint.
    ValueError: `which` is none of 'best', 'latest' or a saved step.
  """
  run = load_run(workdir, which=which)
  return run.config, run.model, run.variables


def init_from(workdir: str, state: Any) -> Any:
  """`state` with params and batch_stats of another run's best checkpoint.

  For stage 2 started from a stage-1 run (``config.init_from=DIR``): the
  optimizer state, step and counters of `state` stay fresh. The best
  checkpoint by validation MCA is used, the latest when none was validated.

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint.
    ValueError: the checkpoint holds another model (paths and shapes named).
  """
  with contextlib.closing(_open_existing(workdir)) as manager:
    step = checkpoint_lib.step_of(manager, 'best')
    saved = _restore_host_state(manager, step)
  ours = {'params': state.params, 'batch_stats': state.batch_stats}
  theirs = {'params': saved['params'], 'batch_stats': saved['batch_stats']}
  diffs = checkpoint_lib.shape_differences(ours, theirs)
  if diffs:
    raise ValueError(
      f'config.init_from = {workdir!r}: step {step} holds another model than '
      'config.model builds for this data; differing parameters:\n  ' + '\n  '.join(diffs[:20])
    )
  logging.info('initialised params and batch_stats from %s step %d', workdir, step)
  return state.replace(
    params=jax.tree.map(np.asarray, theirs['params']),
    batch_stats=jax.tree.map(np.asarray, theirs['batch_stats']),
  )
