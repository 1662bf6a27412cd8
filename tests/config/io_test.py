"""Configs in and out: overrides by field type, JSON, differences, the packaged config files."""

import json
import os

import pytest

from care_jax import config as config_lib
from tests.helpers import paths


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
  # With the keys that follow the task resolved (runs save them resolved).
  resolved = config_lib.resolve_dependent_keys(config)
  assert config_lib.from_json(saved).to_dict() == resolved.to_dict()
  assert config_lib.from_json(config_lib.to_json(resolved)).to_dict() == resolved.to_dict()
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


def test_apply_overrides_rejects_unknown_keys_and_keeps_types():
  config = config_lib.apply_overrides(config_lib.default_config(), ['care.alpha=1'])
  assert config.care.alpha == 1.0 and isinstance(config.care.alpha, float)
  with pytest.raises(KeyError, match='care.alphaa'):
    config_lib.apply_overrides(config_lib.default_config(), ['care.alphaa=1'])
  with pytest.raises(ValueError, match='key=value'):
    config_lib.apply_overrides(config_lib.default_config(), ['care.alpha'])


@pytest.mark.parametrize('name', list(config_lib.packaged_configs()))
def test_every_config_file_loads_and_validates(name):
  config = config_lib.load_config(os.path.join(paths.REPO, 'configs', f'{name}.py'))
  config_lib.validate(config)
  assert set(config.keys()) == set(config_lib.default_config().keys())


def test_the_clones_configs_folder_is_the_packaged_one():
  assert os.path.samefile(os.path.join(paths.REPO, 'configs'), config_lib.CONFIGS_DIR)


def test_config_file_takes_a_path_or_a_packaged_name():
  path = os.path.join(paths.REPO, 'configs', 'default.py')
  assert config_lib.config_file(path) == path
  assert os.path.samefile(
    config_lib.config_file('synthetic_care'), path.replace('default', 'synthetic_care')
  )
  with pytest.raises(
    FileNotFoundError, match="config 'synthetic_cre' does not exist; the packaged"
  ):
    config_lib.config_file('synthetic_cre')
  with pytest.raises(FileNotFoundError, match="config file 'nope.py' does not exist"):
    config_lib.config_file('nope.py')
