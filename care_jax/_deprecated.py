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
  modules of 0.2, whose library parts now live below `care_jax.commands`): every name is looked
  up in the new modules in order; `MOVED_COMMANDS` says which command ``python -m OLD_MODULE``
  runs.

The targets are named by strings and imported on first use (as the lazy exports of
`care_jax.data` are), so a low layer's old name may point to a higher layer's new home without
an import: the package's import graph stays one-way (tests/integration/architecture_test.py).
"""

from collections.abc import Callable, Mapping
import importlib
import inspect
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
  # Moved when the modules were split by job (issue 29): the math layer.
  ('care_jax.losses', 'cross_entropy'): 'care_jax.imbalance:cross_entropy',
  ('care_jax.losses', 'weighted_cross_entropy_loss'): (
    'care_jax.imbalance:weighted_cross_entropy_loss'
  ),
  ('care_jax.losses', 'inverse_frequency_weights'): 'care_jax.imbalance:inverse_frequency_weights',
  ('care_jax.losses', 'sigmoid_binary_cross_entropy'): (
    'care_jax.imbalance:sigmoid_binary_cross_entropy'
  ),
  ('care_jax.losses', 'positive_weights'): 'care_jax.imbalance:positive_weights',
  ('care_jax.imbalance', 'ClassificationLoss'): 'care_jax.classification_loss:ClassificationLoss',
  ('care_jax.imbalance', 'LOSS_NAMES'): 'care_jax.classification_loss:LOSS_NAMES',
  ('care_jax.imbalance', 'MULTILABEL_LOSS_NAMES'): (
    'care_jax.classification_loss:MULTILABEL_LOSS_NAMES'
  ),
  ('care_jax.imbalance', 'TASKS'): 'care_jax.classification_loss:TASKS',
  ('care_jax.imbalance', 'FOCAL_ALPHAS'): 'care_jax.classification_loss:FOCAL_ALPHAS',
  # (end of the math layer's entries)
  # The data package.
  ('care_jax.data.pipeline', 'DatasetInfo'): 'care_jax.data.info:DatasetInfo',
  ('care_jax.data.pipeline', 'get_dataset_info'): 'care_jax.data.info:get_dataset_info',
  ('care_jax.data.pipeline', 'resolve_rare_classes'): 'care_jax.data.info:resolve_rare_classes',
  ('care_jax.data.pipeline', 'prepared_builder'): 'care_jax.data.registry:prepared_builder',
  ('care_jax.data.pipeline', 'read_options'): 'care_jax.data.reading:read_options',
  ('care_jax.data.pipeline', 'SplitTable'): 'care_jax.data.reading:SplitTable',
  ('care_jax.data.pipeline', 'is_multilabel'): 'care_jax.data.reading:is_multilabel',
  ('care_jax.data.pipeline', 'class_names_of'): 'care_jax.data.reading:class_names_of',
  ('care_jax.data.pipeline', 'multi_hot'): 'care_jax.data.reading:multi_hot',
  ('care_jax.data.pipeline', 'read_split'): 'care_jax.data.reading:read_split',
  ('care_jax.data.pipeline', 'example_ids'): 'care_jax.data.reading:example_ids',
  ('care_jax.data.pipeline', 'normalisation'): 'care_jax.data.preprocess:normalisation',
  ('care_jax.data.pipeline', 'rasterize_boxes'): 'care_jax.data.preprocess:rasterize_boxes',
  ('care_jax.data.pipeline', 'example_fn'): 'care_jax.data.preprocess:example_fn',
  ('care_jax.data.pipeline', 'device_augment_example_fn'): (
    'care_jax.data.preprocess:device_augment_example_fn'
  ),
  ('care_jax.data.pipeline', 'stored_image'): 'care_jax.data.file_input:stored_image',
  ('care_jax.data.pipeline', 'file_batches'): 'care_jax.data.file_input:file_batches',
  ('care_jax.data.augment', 'augment_kwargs'): 'care_jax.data.augment:augment_settings',
  # (end of the data package's entries)
  # Checkpoints, trained runs, pretrained weights, boxes.
  ('care_jax.checkpoint', 'BEST_METRIC'): 'care_jax.checkpoint:SELECTION_SCORE',
  ('care_jax.checkpoint', 'TrainedRun'): 'care_jax.trained_run:TrainedRun',
  ('care_jax.checkpoint', 'load_run'): 'care_jax.trained_run:load_run',
  ('care_jax.checkpoint', 'load_model'): 'care_jax.trained_run:load_model',
  ('care_jax.checkpoint', 'init_from'): 'care_jax.trained_run:init_from',
  ('care_jax.checkpoint', 'Preempted'): 'care_jax.training.preemption:Preempted',
  ('care_jax.checkpoint', 'PreemptionWatch'): 'care_jax.training.preemption:PreemptionWatch',
  ('care_jax.checkpoint', 'truncate_log'): 'care_jax.training.outputs:truncate_log',
  ('care_jax.models.pretrained', 'read_safetensors'): (
    'care_jax.models.torch_files:read_safetensors'
  ),
  ('care_jax.models.pretrained', 'load_state_dict'): 'care_jax.models.torch_files:load_state_dict',
  ('care_jax.boxes.generators', 'largest_components'): 'care_jax.boxes.geometry:largest_components',
  ('care_jax.boxes.generators', 'expand_boxes'): 'care_jax.boxes.geometry:expand_boxes',
  ('care_jax.boxes.generators', 'boxes_from_foreground'): (
    'care_jax.boxes.geometry:boxes_from_foreground'
  ),
  ('care_jax.boxes.generators', 'box_iou'): 'care_jax.boxes.geometry:box_iou',
  ('care_jax.boxes.generators', 'CONTRASTS'): 'care_jax.boxes.foreground:CONTRASTS',
  ('care_jax.boxes.generators', 'contrast_channel'): 'care_jax.boxes.foreground:contrast_channel',
  ('care_jax.boxes.generators', 'otsu_foreground'): 'care_jax.boxes.foreground:otsu_foreground',
  ('care_jax.boxes.generators', 'spectral_residual_saliency'): (
    'care_jax.boxes.foreground:spectral_residual_saliency'
  ),
  ('care_jax.boxes.generators', 'grad_cam_maps'): 'care_jax.boxes.foreground:grad_cam_maps',
  # (end of the checkpoint, model and boxes entries)
  # The config schema, runs and commands.
  ('care_jax.config', 'parse_flags'): 'care_jax.commands._flags:parse_flags',
  ('care_jax.compare', 'parse_seeds'): 'care_jax.commands._flags:parse_seeds',
  ('care_jax.compare', 'load_config'): 'care_jax.config:load_config',
  ('care_jax.visualize', 'select_examples'): 'care_jax.data.examples:select_examples',
  # (end of the config, runs and commands entries)
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


def _attention_maps(model, variables, features, labels, *, method: str = 'auto', head_inputs=None):
  """`care_jax.train.attention_maps` of 0.1: the classifier's own method."""
  return model.attention_maps(variables, features, labels, method=method, head_inputs=head_inputs)


def _make_classification_loss(name, *, class_counts, num_steps: int, **hyperparameters):
  """`care_jax.imbalance.make_classification_loss` of 0.2: also takes a ``config.loss``.

  The call with a ConfigDict or mapping in place of the name (deprecated since 0.2) warns and
  passes its loss fields as the keywords, with the counts and steps of the call; a name and
  keywords are passed on as they are.
  """
  new = importlib.import_module('care_jax.classification_loss').make_classification_loss
  if hasattr(name, 'to_dict') or isinstance(name, Mapping):
    warnings.warn(
      'make_classification_loss(loss_config, ...) with a ConfigDict or mapping is deprecated '
      'and will be removed in 0.3; pass the loss name and keyword hyperparameters instead, '
      'e.g. make_classification_loss(**config.loss.to_dict(), class_counts=..., '
      'num_steps=...).',
      DeprecationWarning,
      stacklevel=2,
    )
    # As 0.2 did, the fields that are no argument (a user's own keys) are left out.
    fields = name.to_dict() if hasattr(name, 'to_dict') else dict(name)
    arguments = inspect.signature(new).parameters
    hyperparameters = {key: fields[key] for key in fields if key in arguments} | hyperparameters
    name = hyperparameters.pop('name')
  return new(name, class_counts=class_counts, num_steps=num_steps, **hyperparameters)


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
  ('care_jax.imbalance', 'make_classification_loss'): (
    _make_classification_loss,
    'care_jax.classification_loss.make_classification_loss',
  ),
}

# Module -> the modules its names moved to (looked up in order).
MOVED_MODULES: dict[str, tuple[str, ...]] = {
  'care_jax.train': ('care_jax.training',),
  'care_jax.main': ('care_jax.commands.train',),
  'care_jax.cli': ('care_jax.commands.cli',),
  'care_jax.compare': ('care_jax.comparison', 'care_jax.commands.compare'),
  'care_jax.experiments': ('care_jax.suites', 'care_jax.commands.experiments'),
  'care_jax.visualize': ('care_jax.run_figures', 'care_jax.figures', 'care_jax.commands.visualize'),
  'care_jax.predict': ('care_jax.inference', 'care_jax.commands.predict'),
  'care_jax.evaluate': ('care_jax.commands.evaluate',),
  'care_jax.export': ('care_jax.commands.export',),
}
# The command modules of 0.2 -> the command each is now (``python -m OLD`` runs it).
MOVED_COMMANDS: dict[str, str] = {
  'care_jax.main': 'care_jax.commands.train',
  'care_jax.cli': 'care_jax.commands.cli',
  'care_jax.compare': 'care_jax.commands.compare',
  'care_jax.experiments': 'care_jax.commands.experiments',
  'care_jax.visualize': 'care_jax.commands.visualize',
  'care_jax.predict': 'care_jax.commands.predict',
  'care_jax.evaluate': 'care_jax.commands.evaluate',
  'care_jax.export': 'care_jax.commands.export',
  'care_jax.boxes.__main__': 'care_jax.commands.boxes',
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


def getattr_of(module: str, *, lazy: Mapping[str, str] | None = None) -> Callable[[str], Any]:
  """The module ``__getattr__`` (PEP 562) that serves ``module``'s deprecated names.

  Args:
    module: the module's ``__name__``.
    lazy: optional ``{name: submodule}``: the package's own exports, imported from
      ``module.submodule`` on first use (without a warning), before the deprecated names are
      looked up (`care_jax.data` and `care_jax.boxes` load TensorFlow only this way).
  """
  lazy = dict(lazy or {})

  def __getattr__(name: str) -> Any:  # noqa: N807
    if name in lazy:
      return getattr(importlib.import_module(f'{module}.{lazy[name]}'), name)
    found, value = _moved(module, name)
    if not found:
      raise AttributeError(f'module {module!r} has no attribute {name!r}')
    return value

  return __getattr__


def run_moved_module(module: str) -> None:
  """``python -m module`` of a command that moved: warns, then runs its new module."""
  new_module = MOVED_COMMANDS[module]
  sys.stderr.write(
    f'warning: python -m {module} is deprecated: use python -m {new_module} '
    f'(removed in {_REMOVED_IN})\n'
  )
  runpy.run_module(new_module, run_name='__main__', alter_sys=True)
