"""The registered ConvNeXts and EfficientNets against their reference implementations:
parameter counts equal to torchvision's documented ones and to those of torchvision's and timm's
own models, attention maps equal to Grad-CAM computed by brute force, and eval-mode logits within
1e-4 relative of torchvision's and timm's (tests/helpers/convnet_parity.py). What is particular
to one family (its blocks against numpy, its head) is in convnext_test.py and
efficientnet_test.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax.models import get_model
from tests.helpers import convnet_parity
from tests.helpers import model_fixtures as mf

# torchvision's documented parameter counts (1000 classes), also timm's.
PARAMETERS = {
  'convnext_tiny': 28_589_128,
  'convnext_small': 50_223_688,
  'convnext_base': 88_591_464,
  'efficientnet_b0': 5_288_548,
  'efficientnet_b1': 7_794_184,
  'efficientnet_b2': 9_109_994,
  'efficientnet_b3': 12_233_232,
  'efficientnet_b4': 19_341_616,
}


@pytest.fixture(scope='module')
def exported(torch_python):
  return convnet_parity.exports(torch_python)


@pytest.mark.parametrize('name', PARAMETERS)
def test_parameter_counts_equal_torchvision_and_only_efficientnet_keeps_batch_statistics(name):
  model = get_model(name, num_classes=1000)
  variables = mf.abstract_variables(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert mf.num_params(variables['params']) == PARAMETERS[name]
  assert ('batch_stats' in variables) == name.startswith('efficientnet')  # ConvNeXt: LayerNorm


def test_parameter_counts_equal_torchvision_and_timm_models(exported):
  counts = convnet_parity.reference_parameter_counts(exported)
  for name, expected in PARAMETERS.items():
    assert counts[f'{name}.torchvision'] == counts[f'{name}.timm'] == expected, name


@pytest.mark.parametrize(
  'name, labels', [(mf.SMALL_CONVNEXT, [2, 0]), (mf.SMALL_EFFICIENTNET, [1, 2])]
)
def test_attention_maps_equal_brute_force_grad_cam_of_the_default_head(name, labels):
  """The LayerNorm + linear head (ConvNeXt) and the dropout + linear head (EfficientNet)."""
  model = get_model(name, num_classes=3)
  images = mf.images(size=32, seed=3)
  variables = mf.fake_variables(model, images, seed=4)
  _, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  features, labels = inter['features'], np.array(labels)

  maps = model.attention_maps(variables, features, labels)
  expected = mf.brute_force_grad_cam(model, variables, features, labels)
  np.testing.assert_allclose(maps, expected, atol=1e-5)


@pytest.mark.parametrize(
  'name, size',
  [
    ('convnext_tiny', 64),
    ('efficientnet_b0', 64),
    pytest.param('convnext_tiny', 224, marks=pytest.mark.heavy),
    pytest.param('efficientnet_b0', 224, marks=pytest.mark.heavy),
    *(
      pytest.param(name, 64, marks=pytest.mark.heavy)
      for name in PARAMETERS
      if name not in ('convnext_tiny', 'efficientnet_b0')
    ),
  ],
)
def test_eval_logits_equal_torchvision_and_timm(exported, name, size):
  convnet_parity.assert_logits_match(exported, name, size)
