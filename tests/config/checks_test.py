"""The checks of a config: every message names the key, its value and why, in one form,
`config.<key> = <value>: <why>` (care_jax.config.checks)."""

import re

import pytest

from care_jax import config as config_lib
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
  config_lib.validate_augment(dict(config_lib.default_augment_config().to_dict(), on_device=value))


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
