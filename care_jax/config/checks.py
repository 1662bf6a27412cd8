"""The checks of a config: :func:`validate` names the first key whose value makes no sense.

ml_collections already refuses unknown keys and wrongly typed values; these checks refuse values
that are well typed but meaningless. Every message has one form,
``config.<key> = <value>: <why>``, e.g. ``config.care.alpha = 2.0: must lie in [0, 1]``. What
depends on the dataset itself (the channels that ``data.mean`` must match, the class names of
``data.rare_classes``) is checked when the dataset is opened.
"""

from collections.abc import Mapping, Sequence
import math
from typing import Any

import ml_collections

from care_jax import classification_loss
from care_jax import models
from care_jax.boxes import foreground as box_foreground
from care_jax.config import io
from care_jax.config import schema
from care_jax.config.schema import ACTDIFF_LAYERS
from care_jax.config.schema import AUTO
from care_jax.config.schema import BOX_SOURCES
from care_jax.config.schema import CARE_OUTER
from care_jax.config.schema import CARE_PROTOCOLS
from care_jax.config.schema import DTYPES
from care_jax.config.schema import GUIDANCE_CLASSES
from care_jax.config.schema import GUIDANCE_METHODS
from care_jax.config.schema import GUIDANCE_NORMALIZE
from care_jax.config.schema import HEADS
from care_jax.config.schema import MULTILABEL_STAGE1_METRICS
from care_jax.config.schema import OPTIMIZERS
from care_jax.config.schema import PARALLEL
from care_jax.config.schema import SAMPLING
from care_jax.config.schema import SCHEDULES
from care_jax.config.schema import STAGE1_METRICS
from care_jax.models import backbones


class _Checker:
  """`check(ok, key, message)` raising ValueError('config.<key> = <value>: <message>')."""

  def __init__(self, root: Mapping[str, Any], prefix: str = 'config.'):
    self._root = root
    self._prefix = prefix

  def __call__(self, ok: bool, key: str, message: str) -> None:
    if not ok:
      raise ValueError(f'{self._prefix}{key} = {io.get(self._root, key)!r}: {message}')


def _validate_model_name(check: _Checker, model: ml_collections.ConfigDict) -> None:
  """``model.name`` names a backbone (registered or an import path that imports), and
  ``model.pretrained`` one that can read weights (a torchvision/timm mapping or its own reader)."""
  problem = backbones.problem_of(model.name)
  check(problem is None, 'model.name', problem or '')
  if not model.pretrained or model.name in models.PRETRAINED_MODEL_NAMES:
    return
  check(
    backbones.resolve(model.name).weight_reader is not None,
    'model.pretrained',
    f'model.name {model.name!r} has no weight reader: the torchvision/timm weights are read for '
    f'{models.PRETRAINED_MODEL_NAMES}; a custom backbone needs its own (a read_weights(path, '
    'variables) static method on its class, or register_backbone(..., weight_reader=...))',
  )


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key whose value makes no sense."""
  check = _Checker(config)
  _validate_model_name(check, config.model)
  check(config.model.head in HEADS, 'model.head', f'must be one of {HEADS}')
  check(
    config.task in classification_loss.TASKS, 'task', f'must be one of {classification_loss.TASKS}'
  )
  _validate_care(check, config.care)
  _validate_guidance(check, config.guidance)
  validate_loss(config.loss)
  validate_data(config.data)
  if config.task == 'multilabel':
    _validate_multilabel(check, config)
  else:
    check(
      config.care.stage1_metric in (*STAGE1_METRICS, AUTO)
      and config.care.stage1_metric != 'mean_auroc',
      'care.stage1_metric',
      "is a multi-label metric (config.task = 'multilabel'); a single-label run has 'mca',"
      " 'rare_recall', 'accuracy' and 'macro_auroc' (or 'auto': 'mca')",
    )
  _validate_dataset_mode(check, config)
  _validate_train(check, config.train)
  check(
    config.checkpoint.every_steps >= 0,
    'checkpoint.every_steps',
    'must be >= 0 (0: only at the end)',
  )
  check(config.checkpoint.keep >= 1, 'checkpoint.keep', 'must be >= 1 (resuming needs one)')
  check(config.checkpoint.keep_best >= 0, 'checkpoint.keep_best', 'must be >= 0')
  check(config.parallel in PARALLEL, 'parallel', f'must be one of {PARALLEL}')
  check(config.dtype in DTYPES, 'dtype', f'must be one of {DTYPES}')
  check(
    config.compilation_cache_dir is None or bool(str(config.compilation_cache_dir).strip()),
    'compilation_cache_dir',
    'must be a directory, or None to leave the compilation cache off',
  )


# The box sources of a multi-label task: manual boxes (one per finding), or a generator whose
# box does not depend on the class, so that one box per image serves each of its rare findings
# (care_jax.boxes.dataset).
MULTILABEL_BOX_SOURCES = ('manual', 'otsu', 'spectral_residual', 'mask')


def _validate_multilabel(check: _Checker, config: ml_collections.ConfigDict) -> None:
  """What a multi-label task (``config.task = 'multilabel'``) cannot take."""
  why = "for config.task = 'multilabel'"
  check(
    config.loss.name in classification_loss.MULTILABEL_LOSS_NAMES,
    'loss.name',
    f'must be one of {classification_loss.MULTILABEL_LOSS_NAMES} {why} (sigmoid losses: '
    "'ce' binary cross-entropy, 'weighted_ce' positive-class weights, 'focal' sigmoid focal)",
  )
  check(
    config.loss.focal_alpha is None,
    'loss.focal_alpha',
    f'must be None {why} (per-class alphas are for exclusive classes)',
  )
  check(config.loss.posthoc_tau == 0, 'loss.posthoc_tau', f'must be 0 {why}')
  check(
    config.data.sampling == 'instance',
    'data.sampling',
    f"must be 'instance' {why} (a multi-label image has no single class to balance)",
  )
  check(
    config.data.box_source in MULTILABEL_BOX_SOURCES,
    'data.box_source',
    f'must be one of {MULTILABEL_BOX_SOURCES} {why} (a class-agnostic box, given to each of an'
    " image's rare findings; a 'grad_cam' box depends on the one class it explains)",
  )
  check(
    config.care.stage1_metric in (*MULTILABEL_STAGE1_METRICS, AUTO),
    'care.stage1_metric',
    f'must be one of {MULTILABEL_STAGE1_METRICS} {why} (the validation metrics it has),'
    " or 'auto' ('mean_auroc')",
  )


def _validate_dataset_mode(check: _Checker, config: ml_collections.ConfigDict) -> None:
  """A dataset with a single-label and a multi-label mode: the mode of ``config.task``."""
  name = config.data.name
  mode = config.data.get(name, {}).get('mode') if name == 'nih_chestxray14' else None
  if mode is None or mode == AUTO:
    return
  expected = 'multilabel' if config.task == 'multilabel' else 'boxed'
  check(
    mode == expected,
    f'data.{name}.mode',
    f'config.task = {config.task!r} reads the {expected!r} mode: set'
    f' data.{name}.mode={expected!r} or leave it {AUTO!r}',
  )


def _validate_care(check: _Checker, care: ml_collections.ConfigDict) -> None:
  check(0.0 <= care.alpha <= 1.0, 'care.alpha', 'must lie in [0, 1]')
  check(care.tau > 0, 'care.tau', 'must be > 0')
  check(care.lam >= 0, 'care.lam', 'must be >= 0')
  check(care.start_step >= 0, 'care.start_step', 'must be >= 0')
  check(care.protocol in CARE_PROTOCOLS, 'care.protocol', f'must be one of {CARE_PROTOCOLS}')
  check(
    care.protocol == 'from_step' or care.start_step == 0,
    'care.start_step',
    "applies to care.protocol='from_step' only (the two stages find their own switch step)",
  )
  check(
    care.stage1_metric in (*STAGE1_METRICS, *MULTILABEL_STAGE1_METRICS, AUTO),
    'care.stage1_metric',
    f"must be one of {STAGE1_METRICS} or 'auto' (the task's: 'mca' or 'mean_auroc')",
  )
  check(care.stage1_patience >= 1, 'care.stage1_patience', 'must be >= 1 (validations)')
  check(
    0 < care.stage1_max_fraction < 1,
    'care.stage1_max_fraction',
    'must lie in (0, 1): stage 2 needs steps left',
  )
  check(care.outer in CARE_OUTER, 'care.outer', f'must be one of {CARE_OUTER}')
  check(care.outer_start >= 0, 'care.outer_start', 'must be >= 0')
  check(care.outer_delta >= 0, 'care.outer_delta', 'must be >= 0')
  check(
    care.attention in models.ATTENTION_METHODS,
    'care.attention',
    f'must be one of {models.ATTENTION_METHODS}',
  )
  check(care.reduction in ('mean', 'sum'), 'care.reduction', "must be 'mean' or 'sum'")
  check(
    care.target in models.ATTENTION_TARGETS,
    'care.target',
    f'must be one of {models.ATTENTION_TARGETS}',
  )


def _validate_guidance(check: _Checker, guidance: ml_collections.ConfigDict) -> None:
  check(
    guidance.method in GUIDANCE_METHODS, 'guidance.method', f'must be one of {GUIDANCE_METHODS}'
  )
  weight = guidance.weight
  check(
    weight == 'auto' or (_is_number(weight) and not isinstance(weight, bool) and weight >= 0),
    'guidance.weight',
    "must be a number >= 0, or 'auto' (the term starts equal to the classification loss)",
  )
  check(
    guidance.classes in GUIDANCE_CLASSES, 'guidance.classes', f'must be one of {GUIDANCE_CLASSES}'
  )
  check(
    guidance.normalize in GUIDANCE_NORMALIZE,
    'guidance.normalize',
    f'must be one of {GUIDANCE_NORMALIZE}',
  )
  check(
    guidance.stop_gradient_weights in ('default', True, False),
    'guidance.stop_gradient_weights',
    "must be True, False or 'default' (the method's own choice)",
  )
  for key in ('res.eta', 'res.tanh_scale', 'gain.omega', 'gain.ext_weight'):
    check(io.get(guidance, key) >= 0, f'guidance.{key}', 'must be >= 0')
  check(0 < guidance.sgt.fraction < 1, 'guidance.sgt.fraction', 'must lie in (0, 1)')
  check(
    guidance.res.impute in ('gaussian', 'none'),
    'guidance.res.impute',
    "must be 'gaussian' or 'none'",
  )
  check(
    guidance.actdiff.layer in ACTDIFF_LAYERS,
    'guidance.actdiff.layer',
    f'must be one of {ACTDIFF_LAYERS} (the pooled features, the official choice, or the whole'
    ' feature map)',
  )


def _validate_train(check: _Checker, train: ml_collections.ConfigDict) -> None:
  check(train.batch_size > 0, 'train.batch_size', 'must be > 0')
  check(
    train.num_steps > 0 or train.num_epochs > 0,
    'train.num_steps',
    'set train.num_steps or train.num_epochs to a positive number',
  )
  check(train.optimizer in OPTIMIZERS, 'train.optimizer', f'must be one of {OPTIMIZERS}')
  check(
    train.learning_rate is None or train.learning_rate > 0,
    'train.learning_rate',
    'must be > 0 (or None: the recipe of resolve_recipe)',
  )
  check(train.schedule in SCHEDULES, 'train.schedule', f'must be one of {SCHEDULES}')
  check(train.warmup_steps >= 0, 'train.warmup_steps', 'must be >= 0')
  check(
    all(0 < b < 1 for b in train.step_boundaries),
    'train.step_boundaries',
    'fractions of training strictly between 0 and 1',
  )
  check(train.log_every_steps > 0, 'train.log_every_steps', 'must be > 0')
  check(train.eval_every_steps >= 0, 'train.eval_every_steps', 'must be >= 0')
  check(train.eval_batch_size > 0, 'train.eval_batch_size', 'must be > 0')
  check(
    train.test_checkpoint in ('last', 'best'), 'train.test_checkpoint', "must be 'last' or 'best'"
  )
  check(train.max_consecutive_nonfinite >= 1, 'train.max_consecutive_nonfinite', 'must be >= 1')


def validate_loss(loss_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first ``config.loss.<key>`` that makes no sense.

  The checks are those of the loss itself
  (`care_jax.classification_loss.check_loss_hyperparameters`), with the key's place in the
  config added to the message.
  """
  try:
    classification_loss.check_loss_hyperparameters(**loss_config)
  except ValueError as e:
    raise ValueError(f'config.loss.{e}') from None


def validate_data(data_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first ``config.data.<key>`` that makes no sense.

  What depends on the dataset itself (the channels that ``mean`` and ``std``
  must match, class names in ``rare_classes``) is checked when the dataset is
  opened.
  """
  check = _Checker(data_config, 'config.data.')
  size = data_config.image_size
  check(isinstance(size, int) and size >= 1, 'image_size', 'must be a positive int')
  check(data_config.sampling in SAMPLING, 'sampling', f'must be one of {SAMPLING}')
  scale = data_config.box_scale
  check(isinstance(scale, (int, float)) and scale > 0, 'box_scale', 'must be a positive number')
  check(data_config.box_source in BOX_SOURCES, 'box_source', f'must be one of {BOX_SOURCES}')
  if 'medmnist' in data_config:
    flags, sizes = schema.MEDMNIST_FLAGS, schema.MEDMNIST_SIZES
    check(data_config.medmnist.flag in flags, 'medmnist.flag', f'must be one of {flags}')
    check(data_config.medmnist.size in sizes, 'medmnist.size', f'must be one of {sizes} (pixels)')
  if 'chexpert' in data_config:
    _validate_chexpert(check, data_config)
  validate_augment(data_config.augment)
  validate_boxes(data_config.boxes)


def _validate_chexpert(check: _Checker, data_config: ml_collections.ConfigDict) -> None:
  policies = schema.CHEXPERT_POLICIES
  policy = data_config.chexpert.uncertainty
  check(policy in policies, 'chexpert.uncertainty', f'must be one of {policies}')
  check(
    isinstance(data_config.chexpert.frontal_only, bool), 'chexpert.frontal_only', 'must be a bool'
  )


def validate_boxes(box_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the ``config.data.boxes.<key>`` that makes no sense.

  The generators check their own parameters again when they run (naming the
  method), for the boxes of ``care-jax boxes`` whose flags override these.
  """
  check = _Checker(box_config, 'config.data.boxes.')
  check(box_config.batch_size >= 1, 'batch_size', 'must be >= 1')
  check(box_config.margin >= 0.0, 'margin', 'must be >= 0')
  contrasts = box_foreground.CONTRASTS
  check(box_config.otsu.contrast in contrasts, 'otsu.contrast', f'must be one of {contrasts}')
  check(box_config.spectral_residual.k > 0, 'spectral_residual.k', 'must be > 0')
  check(0.0 < box_config.grad_cam.fraction <= 1.0, 'grad_cam.fraction', 'must lie in (0, 1]')
  check(
    box_config.grad_cam.which in ('best', 'latest'), 'grad_cam.which', "must be 'best' or 'latest'"
  )
  check(
    box_config.grad_cam.attention in models.ATTENTION_METHODS,
    'grad_cam.attention',
    f'must be one of {models.ATTENTION_METHODS}',
  )


_AUGMENT_BOOLS = ('enabled', 'hflip', 'vflip')
_AUGMENT_JITTER = ('brightness', 'contrast', 'saturation', 'hue')
_AUGMENT_RANGES = ('crop_scale', 'crop_ratio')


def validate_augment(augment: Mapping[str, Any]) -> None:
  """Raises ValueError naming the ``config.data.augment.<key>`` of an unknown field,
  a missing one, a wrong type or a value outside its range."""
  augment = augment.to_dict() if hasattr(augment, 'to_dict') else dict(augment)
  valid = sorted(schema.default_augment_config())
  for key in sorted(set(augment) - set(valid)):
    raise ValueError(f'config.data.augment.{key} = {augment[key]!r}: unknown key; valid: {valid}')
  for key in sorted(set(valid) - set(augment)):
    raise ValueError(f'config.data.augment.{key} is missing; valid keys: {valid}')
  check = _Checker(augment, 'config.data.augment.')
  for key in _AUGMENT_BOOLS:
    check(isinstance(augment[key], bool), key, 'must be a bool')
  on_device = augment['on_device']
  check(
    isinstance(on_device, bool) or (isinstance(on_device, str) and on_device == AUTO),
    'on_device',
    "must be True, False or 'auto'",
  )
  check(
    on_device is not True or augment['enabled'],
    'on_device',
    'moves the augmentation to the accelerator, but data.augment.enabled = False: set'
    f' data.augment.enabled=True to augment, or leave on_device {AUTO!r}',
  )
  rotation = augment['rotation']
  check(_is_number(rotation) and 0 <= rotation <= 180, 'rotation', 'must lie in [0, 180] degrees')
  for key in _AUGMENT_JITTER:
    value = augment[key]
    high = 0.5 if key == 'hue' else math.inf
    bound = 'must lie in [0, 0.5]' if key == 'hue' else 'must be >= 0'
    check(_is_number(value) and 0 <= value <= high, key, bound)
  for key in _AUGMENT_RANGES:
    value = augment[key]
    pair = isinstance(value, Sequence) and len(value) == 2 and all(map(_is_number, value))
    check(pair, key, 'must be a pair (min, max)')
    low, high = float(value[0]), float(value[1])
    bound = '0 < min <= max <= 1' if key == 'crop_scale' else '0 < min <= max'
    check(0.0 < low <= high and (key != 'crop_scale' or high <= 1.0), key, f'must satisfy {bound}')


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float))
