"""The backbone table: registered names and import paths, the keywords a factory gets, the
4-D feature-map check, weight readers, and one-line errors for each way a name can be wrong."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import config as config_lib
from care_jax import models
from care_jax.models import backbones
from tests.helpers import runs

_PATH = 'tests.models.backbones_test'
_IMAGES = np.linspace(-1.0, 1.0, 2 * 16 * 16 * 3, dtype=np.float32).reshape(2, 16, 16, 3)


class DtypeOnly(nn.Module):
  """A conv backbone that takes ``dtype`` and no ``axis_name`` (as VGG-19)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train  # No BatchNorm, no dropout.
    return nn.relu(nn.Conv(4, (3, 3), strides=2, dtype=self.dtype)(x))


class Flat(nn.Module):
  """Returns [B, h * w, C] tokens, not a feature map: refused with a clear message."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    x = nn.Conv(4, (3, 3), strides=2)(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _from_keywords(**keywords):
  """A factory taking ``**keywords``: it gets both ``dtype`` and ``axis_name``."""
  assert set(keywords) == {'dtype', 'axis_name'}
  return DtypeOnly(dtype=keywords['dtype'])


def _ones_reader(path, variables):
  """A weight reader filling every backbone parameter with the number in the file ``path``."""
  value = float(open(path).read())
  params = dict(variables['params'])
  params['backbone'] = jax.tree.map(lambda a: np.full_like(a, value), params['backbone'])
  return {**variables, 'params': params}


@pytest.fixture
def registered():
  """Registers test backbones under fresh names and removes them afterwards."""
  names = []

  def register(name, factory, **kwargs):
    backbones.register_backbone(name, factory, **kwargs)
    names.append(name)

  yield register
  for name in names:
    del backbones._REGISTRY[name]  # pylint: disable=protected-access


def test_the_built_in_backbones_are_registered_in_the_order_of_model_names():
  assert backbones.registered_names()[: len(models.MODEL_NAMES)] == models.MODEL_NAMES
  assert backbones.resolve('vgg19').default_head == 'vgg'
  assert backbones.resolve('resnet18').heads == backbones.STANDARD_HEADS


def test_a_factory_gets_the_keywords_it_names_and_only_those(registered):
  registered('dtype_only_test', DtypeOnly)
  model = models.get_model('dtype_only_test', num_classes=3, dtype=jnp.bfloat16, axis_name='b')
  assert model.backbone.dtype == jnp.bfloat16 and model.backbone_name == 'dtype_only_test'
  registered('keywords_test', _from_keywords)
  assert models.get_model('keywords_test', num_classes=3, dtype=jnp.bfloat16).backbone.dtype == (
    jnp.bfloat16
  )
  tiny = models.get_model('care_jax.models.tiny:TinyCNN', num_classes=2, axis_name='b')
  assert (type(tiny.backbone), tiny.backbone.axis_name) == (models.TinyCNN, 'b')


def test_an_import_path_builds_the_same_model_as_the_registered_name():
  variables = {}
  for name in ('tiny_cnn', 'care_jax.models.tiny:TinyCNN'):
    model = models.get_model(name, num_classes=2)
    variables[name] = model.init(jax.random.key(0), _IMAGES, train=False)
  equal = jax.tree.map(np.array_equal, *variables.values())
  assert all(jax.tree.leaves(equal))


def test_bfloat16_features_and_float32_logits_from_a_custom_backbone():
  model = models.get_model(f'{_PATH}:DtypeOnly', num_classes=3, dtype=jnp.bfloat16)

  def forward():
    variables = model.init(jax.random.key(0), _IMAGES, train=False)
    logits, intermediates = model.apply(variables, _IMAGES, train=False)
    features = intermediates['features']
    return logits, features, model.attention_maps(variables, features, jnp.array([0, 2]))

  logits, features, maps = jax.eval_shape(forward)
  assert (features.dtype, features.shape) == (jnp.bfloat16, (2, 8, 8, 4))
  assert (logits.dtype, logits.shape, maps.shape) == (jnp.float32, (2, 3), (2, 8, 8))


class PairWithoutDict(nn.Module):
  """Returns (feature map, [array]): head inputs must be a dict of arrays by name."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    x = nn.Conv(4, (3, 3), strides=2)(x)
    return x, [x[:, 0, 0]]


def test_head_inputs_that_are_not_a_dict_of_arrays_are_refused_naming_the_model():
  model = models.get_model(f'{_PATH}:PairWithoutDict', num_classes=2)
  with pytest.raises(
    ValueError,
    match=rf"Backbone '{_PATH}:PairWithoutDict' returned a pair whose second item is "
    r'list, not a dict of arrays by name',
  ):
    jax.eval_shape(lambda: model.init(jax.random.key(0), _IMAGES, train=False))


def test_a_backbone_without_a_4d_feature_map_is_refused_naming_the_model():
  model = models.get_model(f'{_PATH}:Flat', num_classes=2)
  with pytest.raises(ValueError, match=rf"Backbone '{_PATH}:Flat' returned shape \(2, 64, 4\), "):
    jax.eval_shape(lambda: model.init(jax.random.key(0), _IMAGES, train=False))


@pytest.mark.parametrize(
  'name, message',
  [
    ('resnet9', r"Unknown model name 'resnet9': must be one of \('tiny_cnn', .*or an import path"),
    (
      'no_such_package.nets:Net',
      r"Backbone 'no_such_package.nets:Net': the module 'no_such_package.nets' does not import "
      r"\(ModuleNotFoundError: No module named 'no_such_package'\)",
    ),
    (f'{_PATH}:Nope', rf"Backbone '{_PATH}:Nope': the module '{_PATH}' has no attribute 'Nope'"),
    (f'{_PATH}:_PATH', rf"Backbone '{_PATH}:_PATH': '_PATH' of '{_PATH}' is not a Flax module"),
  ],
  ids=['unknown', 'no module', 'no attribute', 'not callable'],
)
def test_a_wrong_name_is_one_line_naming_it_and_the_fix(name, message):
  with pytest.raises(ValueError, match=message) as raised:
    models.get_model(name, num_classes=2)
  assert '\n' not in str(raised.value)
  config = config_lib.apply_overrides(config_lib.default_config(), [f'model.name={name}'])
  with pytest.raises(ValueError, match=rf"^config\.model\.name = '{name}': ") as raised:
    config_lib.validate(config)
  assert '\n' not in str(raised.value)


def test_a_factory_returning_no_flax_module_is_refused(registered):
  registered('not_a_module_test', lambda: 'conv')
  with pytest.raises(ValueError, match=r"'not_a_module_test': its factory returned str, not a"):
    models.get_model('not_a_module_test', num_classes=2)


@pytest.mark.parametrize(
  'name, kwargs, message',
  [
    ('my:net', {}, r"must be a non-empty string without ':'"),
    ('tiny_cnn', {}, r"'tiny_cnn' is already registered; pass replace=True"),
    ('headless', {'heads': ('linear',), 'default_head': 'vgg'}, r"default_head 'vgg' is not in"),
  ],
)
def test_registration_refuses_paths_clashes_and_a_default_head_it_does_not_take(
  name, kwargs, message
):
  with pytest.raises(ValueError, match=message):
    backbones.register_backbone(name, DtypeOnly, **kwargs)


def test_the_registered_heads_are_the_ones_get_model_accepts(registered):
  registered('linear_only_test', DtypeOnly, heads=('linear',))
  assert isinstance(models.get_model('linear_only_test', num_classes=2).head, models.LinearHead)
  with pytest.raises(ValueError, match=r"Unknown head 'bn_linear' for 'linear_only_test'"):
    models.get_model('linear_only_test', num_classes=2, head='bn_linear')


def test_a_weight_reader_fills_the_backbone_through_load_pretrained(registered, tmp_path):
  registered('reader_test', DtypeOnly, weight_reader=_ones_reader)
  weights = tmp_path / 'weights.txt'
  weights.write_text('0.25')
  model, variables, report = models.load_pretrained(
    'reader_test', weights, num_classes=3, return_report=True
  )
  leaves = jax.tree.leaves(variables['params']['backbone'])
  assert leaves and all(np.all(leaf == 0.25) for leaf in leaves)
  assert variables['params']['head']['fc']['kernel'].shape == (4, 3)
  assert report.loaded == {'backbone/Conv_0': 'read_weights'}
  assert report.initialised == ('head/fc',)
  assert isinstance(model.backbone, DtypeOnly)


def test_pretrained_without_a_weight_reader_says_a_custom_backbone_needs_one(tmp_path):
  name = f'{_PATH}:DtypeOnly'
  config = config_lib.apply_overrides(
    config_lib.default_config(), [f'model.name={name}', f'model.pretrained={tmp_path / "w"}']
  )
  with pytest.raises(ValueError, match=r'^config\.model\.pretrained = .*has no weight reader'):
    config_lib.validate(config)
  with pytest.raises(ValueError, match=r'a custom backbone needs its own weight reader \(a '):
    models.load_pretrained(name, tmp_path / 'w', num_classes=2)


def test_a_config_names_a_custom_backbone_by_import_path(tmp_path):
  config = runs.tiny_config(tmp_path, f'model.name={_PATH}:DtypeOnly')
  config_lib.validate(config)  # no error
