"""The checks of a config: every message names the key, its value and why, in one form,
`config.<key> = <value>: <why>` (care_jax.config.checks)."""

import re

import pytest

from care_jax import config as config_lib
from care_jax.training import guidance_terms
from tests.helpers import loss_references as ref


def _one_form(key: str, value, why: str) -> str:
  """The whole message, in the one form of care_jax.config.checks: config.<key> = <value>: <why>."""
  return f'^{re.escape(f"config.{key} = {value!r}: {why}")}$'


@pytest.mark.parametrize(
  'override, key',
  [
    ('care.alpha=1.5', 'care.alpha'),
    ('care.tau=0.0', 'care.tau'),
    ('loss.name=focal_typo', 'loss.name'),
    ('model.name=resnet9', 'model.name'),
    ('parallel=xmap', 'parallel'),
    ('train.num_steps=0', 'train.num_steps'),
    ('dtype=float16', 'dtype'),
  ],
)
def test_validate_names_the_offending_key(override, key):
  config = config_lib.apply_overrides(config_lib.default_config(), [override])
  with pytest.raises(ValueError, match=key.replace('.', r'\.')):
    config_lib.validate(config)


# The bad values that make_classification_loss rejects as arguments.
@pytest.mark.parametrize('key, value', ref.BAD_ARGUMENTS)
def test_validate_loss_names_the_key(key, value):
  config = config_lib.default_config()
  with config.loss.ignore_type():
    config.loss[key] = value
  with pytest.raises(ValueError, match=rf'config\.loss\.{key} = {value!r}'):
    config_lib.validate_loss(config.loss)
  with pytest.raises(ValueError, match=rf'config\.loss\.{key}'):
    config_lib.validate(config)


@pytest.mark.parametrize(
  'key, value, why',
  [
    ('model.name', 'resnet19', 'must be one of'),
    ('model.head', 'mlp', 'must be one of'),
    ('care.alpha', 1.5, r'must lie in \[0, 1\]'),
    ('care.attention', 'gradcam', 'must be one of'),
    ('train.optimizer', 'lamb', 'must be one of'),
    ('checkpoint.keep', 0, r'must be >= 1 \(resuming needs one\)'),
    ('data.sampling', 'balanced', 'must be one of'),
    ('data.box_source', 'magic', 'must be one of'),
    ('data.box_scale', 0.0, 'must be a positive number'),
    ('data.image_size', 0, 'must be a positive int'),
    ('data.augment.hue', 0.7, r'must lie in \[0, 0\.5\]'),
    ('data.augment.rotation', 200.0, r'must lie in \[0, 180\] degrees'),
    ('data.augment.crop_scale', (0.5, 1.5), 'must satisfy 0 < min <= max <= 1'),
    ('data.boxes.margin', -0.1, 'must be >= 0'),
    ('data.boxes.batch_size', 0, 'must be >= 1'),
    ('data.boxes.otsu.contrast', 'redness', 'must be one of'),
    ('data.boxes.grad_cam.fraction', 1.5, r'must lie in \(0, 1\]'),
    ('data.boxes.grad_cam.which', 'first', "must be 'best' or 'latest'"),
    ('loss.gamma', -1.0, 'must be >= 0'),
  ],
)
def test_validate_names_the_key_its_value_and_why_in_one_form(key, value, why):
  config = config_lib.apply_overrides(config_lib.default_config(), [f'{key}={value}'])
  shown = re.escape(repr(config_lib.get(config, key)))
  with pytest.raises(ValueError, match=rf'^config\.{re.escape(key)} = {shown}: {why}'):
    config_lib.validate(config)


def test_validate_augment_names_unknown_and_missing_keys():
  augment = config_lib.default_augment_config().to_dict()
  with pytest.raises(ValueError, match=r'^config\.data\.augment\.zoom = 2: unknown key; valid: \['):
    config_lib.validate_augment({**augment, 'zoom': 2})
  del augment['hue']
  with pytest.raises(ValueError, match=r'^config\.data\.augment\.hue is missing; valid keys'):
    config_lib.validate_augment(augment)


# data.augment and data.sampling ---------------------------------------------------------------


@pytest.mark.parametrize(
  'key, value, why',
  [
    ('rotation', 270.0, 'must lie in [0, 180] degrees'),
    ('rotation', -1.0, 'must lie in [0, 180] degrees'),
    ('hflip', 1, 'must be a bool'),
    ('enabled', 'yes', 'must be a bool'),
    ('brightness', -0.1, 'must be >= 0'),
    ('hue', 0.6, 'must lie in [0, 0.5]'),
    ('crop_scale', (0.0, 1.0), 'must satisfy 0 < min <= max <= 1'),
    ('crop_scale', (0.5, 1.5), 'must satisfy 0 < min <= max <= 1'),
    ('crop_scale', (0.9, 0.5), 'must satisfy 0 < min <= max <= 1'),
    ('crop_ratio', (1.0,), 'must be a pair (min, max)'),
    ('crop_ratio', (2.0, 1.0), 'must satisfy 0 < min <= max'),
  ],
)
def test_bad_values_name_the_key(key, value, why):
  config = config_lib.default_augment_config().to_dict()
  config[key] = value
  with pytest.raises(ValueError, match=_one_form(f'data.augment.{key}', value, why)):
    config_lib.validate_augment(config)


def test_unknown_and_missing_keys_are_named():
  config = config_lib.default_augment_config().to_dict()
  valid = sorted(config)
  config['shear'] = 0.1
  with pytest.raises(
    ValueError, match=_one_form('data.augment.shear', 0.1, f'unknown key; valid: {valid}')
  ):
    config_lib.validate_augment(config)
  del config['shear'], config['vflip']
  missing = f'config.data.augment.vflip is missing; valid keys: {valid}'
  with pytest.raises(ValueError, match=f'^{re.escape(missing)}$'):
    config_lib.validate_augment(config)


@pytest.mark.parametrize('value', [1, 'yes', None])
def test_on_device_must_be_a_bool_or_auto(value):
  augment = dict(config_lib.default_augment_config().to_dict(), on_device=value)
  why = "must be True, False or 'auto'"
  with pytest.raises(ValueError, match=_one_form('data.augment.on_device', value, why)):
    config_lib.validate_augment(augment)


@pytest.mark.parametrize('value', [True, False, 'auto'])
def test_on_device_takes_a_bool_or_auto(value):
  config_lib.validate_augment(
    dict(config_lib.default_augment_config().to_dict(), enabled=True, on_device=value)
  )


@pytest.mark.parametrize('metric', ['mean_auroc', 'rare_mean_auroc', 'mean_ap'])
def test_a_multilabel_stage1_metric_is_refused_on_a_single_label_run_and_taken_on_a_multilabel_one(
  metric,
):
  config = config_lib.apply_overrides(config_lib.default_config(), [f'care.stage1_metric={metric}'])
  with pytest.raises(
    ValueError, match=f"^config.care.stage1_metric = '{metric}': is a multi-label"
  ):
    config_lib.validate(config)
  config_lib.validate(config_lib.apply_overrides(config, ['task=multilabel']))


def test_on_device_without_enabled_augmentation_is_refused_in_the_one_form():
  augment = dict(config_lib.default_augment_config().to_dict(), enabled=False, on_device=True)
  why = (
    'moves the augmentation to the accelerator, but data.augment.enabled = False: set'
    " data.augment.enabled=True to augment, or leave on_device 'auto'"
  )
  with pytest.raises(ValueError, match=_one_form('data.augment.on_device', True, why)):
    config_lib.validate_augment(augment)


@pytest.mark.parametrize(
  'task, mode, expected',
  [('multilabel', 'boxed', 'multilabel'), ('multiclass', 'multilabel', 'boxed')],
)
def test_a_dataset_mode_against_the_task_is_refused_in_the_one_form(task, mode, expected):
  config = config_lib.apply_overrides(
    config_lib.default_config(),
    [f'task={task}', 'data.name=nih_chestxray14', f'data.nih_chestxray14.mode={mode}'],
  )
  why = (
    f'config.task = {task!r} reads the {expected!r} mode: set'
    f" data.nih_chestxray14.mode={expected!r} or leave it 'auto'"
  )
  with pytest.raises(ValueError, match=_one_form('data.nih_chestxray14.mode', mode, why)):
    config_lib.validate(config)


@pytest.mark.parametrize(
  'key, value, why',
  [
    ('sampling', 'balanced', "must be one of ('instance', 'class_balanced', 'sqrt')"),
    ('augment.rotation', 360.0, 'must lie in [0, 180] degrees'),
    ('augment.crop_scale', (0.5, 2.0), 'must satisfy 0 < min <= max <= 1'),
  ],
)
def test_bad_sampling_or_augment_config_raises_naming_the_key(key, value, why):
  bad = config_lib.default_data_config()
  *parents, leaf = key.split('.')
  node = bad
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  with pytest.raises(ValueError, match=_one_form(f'data.{key}', value, why)):
    config_lib.validate_data(bad)


# The two stages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  'override, message',
  [
    ('care.protocol=three_stage', 'care.protocol'),
    ('care.stage1_metric=loss', 'care.stage1_metric'),
    ('care.stage1_patience=0', 'care.stage1_patience'),
    ('care.stage1_max_fraction=1.0', 'care.stage1_max_fraction'),
    ('care.start_step=10', 'care.start_step'),
  ],
)
def test_bad_two_stage_settings_name_the_key(override, message):
  config = config_lib.apply_overrides(
    config_lib.default_config(), ['care.protocol=two_stage', 'train.eval_every_steps=10', override]
  )
  with pytest.raises(ValueError, match=message.replace('.', r'\.')):
    config_lib.validate(config)


def test_an_empty_compilation_cache_dir_is_refused_in_the_one_form():
  config = config_lib.default_config()
  assert config.compilation_cache_dir is None  # Off unless asked for.
  config.compilation_cache_dir = ' '
  why = 'must be a directory, or None to leave the compilation cache off'
  with pytest.raises(ValueError, match=_one_form('compilation_cache_dir', ' ', why)):
    config_lib.validate(config)


@pytest.mark.parametrize(
  'key, value, why',
  [
    ('flag', 'nodulemnist3d', f'must be one of {config_lib.schema.MEDMNIST_FLAGS}'),
    ('size', 32, 'must be one of (28, 64, 128, 224) (pixels)'),
  ],
)
def test_an_unknown_medmnist_flag_or_size_is_refused_in_the_one_form(key, value, why):
  config = config_lib.default_config()
  config.data.medmnist[key] = value
  with pytest.raises(ValueError, match=_one_form(f'data.medmnist.{key}', value, why)):
    config_lib.validate(config)


@pytest.mark.parametrize(
  'key, value, why',
  [
    ('method', 'gradcam', 'must be one of'),
    ('weight', -1.0, "must be a number >= 0, or 'auto'"),
    ('weight', 'half', "must be a number >= 0, or 'auto'"),
    ('classes', 'random', 'must be one of'),
    ('normalize', 'softmax', 'must be one of'),
    ('stop_gradient_weights', 'yes', "must be True, False or 'default'"),
    ('sgt.fraction', 1.0, r'must lie in \(0, 1\)'),
    ('res.eta', -0.1, 'must be >= 0'),
    ('res.impute', 'learned', "must be 'gaussian' or 'none'"),
    ('actdiff.layer', 'logits', re.escape("must be one of ('pooled', 'features')")),
  ],
)
def test_a_bad_guidance_value_is_refused_in_the_one_form(key, value, why):
  config = config_lib.default_config()
  *parents, name = f'guidance.{key}'.split('.')
  node = config
  for parent in parents:
    node = node[parent]
  with node.ignore_type():
    node[name] = value
  prefix = re.escape(f'config.guidance.{key} = {value!r}: ')
  with pytest.raises(ValueError, match=f'^{prefix}{why}'):
    config_lib.validate(config)


def test_the_checked_actdiff_layers_are_those_the_term_computes():
  assert config_lib.ACTDIFF_LAYERS == guidance_terms.ACTDIFF_LAYERS


def test_guidance_weight_takes_a_number_or_auto_from_an_override():
  for text, value in (('auto', 'auto'), ('10', 10), ('0.5', 0.5)):
    config = config_lib.apply_overrides(config_lib.default_config(), [f'guidance.weight={text}'])
    assert config.guidance.weight == value
    config_lib.validate(config)
