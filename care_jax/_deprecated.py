"""Every deprecated name of care-jax, in one table: each warns and names its new home.

Names that moved keep working for one release (they are removed in 0.3, with this module and
the alias modules it serves). A module with moved names ends with one line, as optax's
``deprecation_getattr``::

    __getattr__ = _deprecated.getattr_of(__name__)

and its old names are looked up here on first use:

* `MOVED`: ``(module, name) -> 'new.module:new_name'``, a name that moved to another module (or
  was renamed);
* `ADAPTED`: ``(module, name) -> (function, replacement)``, an old name whose call differs from
  its replacement's: the function keeps the old call and forwards it;
* `MOVED_MODULES`: ``module -> (new modules, ...)``, a module that moved as a whole (the command
  modules of 0.2, now in `care_jax.commands`): every name is looked up in the new modules in
  order, and ``python -m OLD_MODULE`` runs the first of them.

The targets are named by strings and imported on first use (as the lazy exports of
`care_jax.data` are), so a low layer's old name may point to a higher layer's new home without
an import: the package's import graph stays one-way (tests/architecture_test.py).
"""

from collections.abc import Callable
import importlib
import runpy
import sys
from typing import Any
import warnings

_REMOVED_IN = '0.3'

# (module, old name) -> 'new.module:new_name'.
MOVED: dict[tuple[str, str], str] = {
  ('care_jax.config', 'config_dict_get'): 'care_jax.config:get',
  ('care_jax.imbalance', 'default_loss_config'): 'care_jax.config:default_loss_config',
  ('care_jax.imbalance', 'validate_loss_config'): 'care_jax.config:validate_loss',
  ('care_jax.checkpoint', 'flatten_config'): 'care_jax.config:flatten',
  ('care_jax.checkpoint', 'config_to_json'): 'care_jax.config:to_json',
  ('care_jax.data.augment', 'default_config'): 'care_jax.config:default_augment_config',
  ('care_jax.data', 'default_data_config'): 'care_jax.config:default_data_config',
  ('care_jax.data.pipeline', 'default_data_config'): 'care_jax.config:default_data_config',
  ('care_jax.boxes', 'default_box_config'): 'care_jax.config:default_box_config',
  ('care_jax.boxes', 'BOX_SOURCES'): 'care_jax.config:BOX_SOURCES',
}


def _train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """`care_jax.train.train_and_evaluate` of 0.1: also wires in the generated boxes."""
  training = importlib.import_module('care_jax.training')
  boxes = importlib.import_module('care_jax.boxes')
  return training.train_and_evaluate(config, workdir, boxes_fn=boxes.replace_boxes)


def _evaluate(parallel, state, config, split: str, info) -> dict[str, Any]:
  """`care_jax.train.evaluate` of 0.1: reads the eval batches of ``config.data``'s split."""
  training = importlib.import_module('care_jax.training')
  inputs = importlib.import_module('care_jax.training.inputs')  # Loads TensorFlow.
  training.parallel.check_divisible(config.train.eval_batch_size, parallel, 'train.eval_batch_size')
  return training.evaluation.evaluate_split(
    parallel, state, config, info, split, inputs.PipelineInputs(config).eval_batches
  )


def _attention_maps(model, variables, features, labels, *, method: str = 'auto'):
  """`care_jax.train.attention_maps` of 0.1: the classifier's own method."""
  return model.attention_maps(variables, features, labels, method=method)


# (module, old name) -> (the function keeping the old call, what replaces it).
ADAPTED: dict[tuple[str, str], tuple[Callable[..., Any], str]] = {
  ('care_jax.train', 'train_and_evaluate'): (
    _train_and_evaluate,
    'care_jax.training.train_and_evaluate',
  ),
  ('care_jax.train', 'attention_maps'): (
    _attention_maps,
    'Classifier.attention_maps of care_jax.models',
  ),
  ('care_jax.train', 'evaluate'): (
    _evaluate,
    'care_jax.training.evaluate (which takes the batches)',
  ),
}

# Module -> the modules its names moved to (looked up in order; `python -m` runs the first).
MOVED_MODULES: dict[str, tuple[str, ...]] = {
  'care_jax.train': ('care_jax.training',),
  'care_jax.main': ('care_jax.commands.train',),
  'care_jax.cli': ('care_jax.commands.cli',),
  'care_jax.compare': ('care_jax.commands.compare',),
  'care_jax.experiments': ('care_jax.commands.experiments',),
  'care_jax.visualize': ('care_jax.commands.visualize',),
  'care_jax.predict': ('care_jax.commands.predict',),
  'care_jax.evaluate': ('care_jax.commands.evaluate',),
  'care_jax.export': ('care_jax.commands.export',),
  'care_jax.boxes.__main__': ('care_jax.commands.boxes',),
}


def _warn(old: str, new: str) -> None:
  warnings.warn(
    f'{old} is deprecated: use {new} (removed in {_REMOVED_IN})', DeprecationWarning, stacklevel=4
  )


def _moved(module: str, name: str) -> tuple[bool, Any]:
  """(found, value) of the old name ``module.name``."""
  if (module, name) in MOVED:
    new_module, _, new_name = MOVED[module, name].partition(':')
    _warn(f'{module}.{name}', f'{new_module}.{new_name}')
    return True, getattr(importlib.import_module(new_module), new_name)
  if (module, name) in ADAPTED:
    function, replacement = ADAPTED[module, name]
    _warn(f'{module}.{name}', replacement)
    return True, function
  for new_module in MOVED_MODULES.get(module, ()):
    target = importlib.import_module(new_module)
    if hasattr(target, name) and not name.startswith('_'):
      _warn(f'{module}.{name}', f'{new_module}.{name}')
      return True, getattr(target, name)
  return False, None


def getattr_of(module: str) -> Callable[[str], Any]:
  """The module ``__getattr__`` (PEP 562) that serves ``module``'s deprecated names."""

  def __getattr__(name: str) -> Any:  # noqa: N807
    found, value = _moved(module, name)
    if not found:
      raise AttributeError(f'module {module!r} has no attribute {name!r}')
    return value

  return __getattr__


def run_moved_module(module: str) -> None:
  """``python -m module`` of a module that moved: warns, then runs its new home as the program."""
  new_module = MOVED_MODULES[module][0]
  sys.stderr.write(
    f'warning: python -m {module} is deprecated: use python -m {new_module} '
    f'(removed in {_REMOVED_IN})\n'
  )
  runpy.run_module(new_module, run_name='__main__', alter_sys=True)
