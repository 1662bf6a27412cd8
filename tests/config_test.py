"""The config schema: defaults, checks naming the key, reading, writing and diffing configs."""

import json
import re

import imbalance_test
import pytest

from care_jax import classification_loss
from care_jax import config as config_lib
from care_jax import models


def test_the_default_config_is_valid_and_its_parts_are_the_part_builders():
  config = config_lib.default_config()
  config_lib.validate(config)
  assert config.data.to_dict() == config_lib.default_data_config().to_dict()
  assert config.data.augment.to_dict() == config_lib.default_augment_config().to_dict()
  assert config.data.boxes.to_dict() == config_lib.default_box_config().to_dict()
  assert config.loss.to_dict() == config_lib.default_loss_config().to_dict()


def test_the_loss_defaults_are_the_keywords_of_make_classification_loss():
  import inspect  # pylint: disable=g-import-not-at-top

  parameters = inspect.signature(classification_loss.make_classification_loss).parameters
  for key, value in config_lib.default_loss_config().items():
    if key != 'name':
      assert parameters[key].default == value, key


# The bad values that make_classification_loss rejects as arguments.
@pytest.mark.parametrize('key, value', imbalance_test.BAD_ARGUMENTS)
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


def test_apply_overrides_parses_by_field_type_and_rejects_unknown_keys():
  default = config_lib.default_config()
  config = config_lib.apply_overrides(
    default,
    [
      'care.alpha=1',
      'train.step_boundaries=(0.3, 0.6)',
      'care.protocol=two_stage',
      'checkpoint.async_save=false',
      'model.pretrained=/weights/resnet50.npz',  # a typed placeholder
      'train.learning_rate=1e-3',
      'care.lam=0.1',
      'care.lam=0.2',  # the last one wins
    ],
  )
  assert config.care.alpha == 1.0 and isinstance(config.care.alpha, float)
  assert config.train.step_boundaries == (0.3, 0.6)
  assert (config.care.protocol, config.checkpoint.async_save) == ('two_stage', False)
  assert (config.model.pretrained, config.train.learning_rate) == ('/weights/resnet50.npz', 1e-3)
  assert config.care.lam == 0.2
  assert (default.care.alpha, default.model.pretrained) == (0.5, None)  # a copy was changed
  # Placeholders stay overridable in the result.
  assert config_lib.apply_overrides(config, ['model.pretrained=b.npz']).model.pretrained == 'b.npz'
  with pytest.raises(KeyError, match="unknown config key 'care.alphaa'"):
    config_lib.apply_overrides(config, ['care.alphaa=1'])
  with pytest.raises(TypeError, match=r"config override 'train\.num_steps=2\.5'"):
    config_lib.apply_overrides(config, ['train.num_steps=2.5'])
  with pytest.raises(ValueError, match='not of the form key=value'):
    config_lib.apply_overrides(config, ['care.alpha'])


def test_to_json_and_from_json_round_trip_and_fill_keys_added_later():
  config = config_lib.apply_overrides(config_lib.default_config(), ['care.lam=0.3'])
  saved = json.loads(json.dumps(config_lib.to_json(config)))
  assert config_lib.from_json(saved).to_dict() == config.to_dict()
  del saved['data']['box_scale'], saved['loss']  # as a run of an older version saved it
  loaded = config_lib.from_json(saved)
  assert loaded.data.box_scale == 1.0 and loaded.loss.name == 'ce' and loaded.care.lam == 0.3
  assert isinstance(loaded.train.step_boundaries, tuple)


def test_differences_lists_changed_missing_and_ignored_keys():
  a = {'care': {'alpha': 0.5, 'lam': 0.7}, 'data': {'dir': '/a', 'name': 'x'}}
  b = {'care': {'alpha': 0.3, 'lam': 0.7}, 'data': {'dir': '/b'}, 'seed': 1}
  assert config_lib.differences(a, b) == {
    'care.alpha': (0.5, 0.3),
    'data.dir': ('/a', '/b'),
    'data.name': ('x', '<missing>'),
    'seed': ('<missing>', 1),
  }
  assert list(config_lib.differences(a, b, ignore=('data', 'seed'))) == ['care.alpha']
  assert config_lib.flatten({'a': {'b': {'c': 1}}, 'd': 2}) == {'a.b.c': 1, 'd': 2}


def test_the_schema_knows_the_models_heads_and_box_methods():
  assert set(config_lib.HEADS) == {'default', *models.HEAD_NAMES}
  assert config_lib.BOX_SOURCES == ('manual', 'otsu', 'spectral_residual', 'grad_cam', 'mask')


def test_deprecated_config_dict_get_warns_and_answers():
  config = config_lib.default_config()
  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.get'):
    assert config_lib.config_dict_get(config, 'care.alpha') == 0.5
  assert config_lib.get(config, 'data.boxes.otsu.sigma') == 0.05
