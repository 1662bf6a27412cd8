"""care_jax.models.efficientnet: parameter counts, channel rounding, the MBConv block against
numpy (squeeze-excitation, SiLU, BatchNorm), Grad-CAM by brute force, and logit parity with
torchvision's and timm's own EfficientNets (tests/helpers/convnet_parity.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax.models import efficientnet
from care_jax.models import get_model
from care_jax.models import heads
from tests.helpers import convnet_parity
from tests.helpers import model_fixtures as mf

# torchvision's documented parameter counts (1000 classes), also timm's; the head's dropout.
PARAMETERS = {
  'efficientnet_b0': (5_288_548, 0.2),
  'efficientnet_b1': (7_794_184, 0.2),
  'efficientnet_b2': (9_109_994, 0.3),
  'efficientnet_b3': (12_233_232, 0.3),
  'efficientnet_b4': (19_341_616, 0.4),
}


@pytest.fixture(scope='module')
def exported(torch_python):
  return convnet_parity.exports(torch_python)


@pytest.mark.parametrize('name', PARAMETERS)
def test_parameter_counts_and_head_dropout_equal_torchvision(name):
  model = get_model(name, num_classes=1000)
  variables = mf.abstract_variables(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  count, dropout = PARAMETERS[name]
  assert mf.num_params(variables['params']) == count
  assert isinstance(model.head, heads.DropoutLinearHead)
  assert model.head.dropout_rate == dropout


@pytest.mark.parametrize('value, rounded', [(32, 32), (19.2, 24), (10, 16), (38.4, 40), (4, 8)])
def test_make_divisible_rounds_to_multiples_of_8_at_most_10_percent_down(value, rounded):
  assert efficientnet.make_divisible(value) == rounded


def _np_batch_norm(x, p, s, eps=1e-5):
  return (x - s['mean']) / np.sqrt(s['var'] + eps) * p['scale'] + p['bias']


def _silu(x):
  return x / (1 + np.exp(-x))


def test_mbconv_equals_numpy_with_squeeze_excitation_and_residual():
  x = np.asarray(mf.images(batch=2, size=6, seed=1)).repeat(4, axis=-1)[..., :8]  # [2, 6, 6, 8]
  block = efficientnet.MBConv(expand_ratio=6, kernel_size=3, stride=1, features=8)
  variables = mf.fake_variables(block, x)
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), variables['params'])
  s = jax.tree.map(lambda v: np.asarray(v, np.float64), variables['batch_stats'])
  y = _silu(_np_batch_norm(x @ p['expand_conv']['kernel'][0, 0], p['expand_bn'], s['expand_bn']))
  padded = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
  kernel = p['dw_conv']['kernel']
  y = sum(padded[:, i : i + 6, j : j + 6] * kernel[i, j, 0] for i in range(3) for j in range(3))
  y = _silu(_np_batch_norm(y, p['dw_bn'], s['dw_bn']))
  squeezed = _silu(y.mean((1, 2)) @ p['se_reduce']['kernel'][0, 0] + p['se_reduce']['bias'])
  gate = 1 / (1 + np.exp(-(squeezed @ p['se_expand']['kernel'][0, 0] + p['se_expand']['bias'])))
  y = y * gate[:, None, None, :]
  y = _np_batch_norm(y @ p['project_conv']['kernel'][0, 0], p['project_bn'], s['project_bn'])

  out = block.apply(variables, x, train=False)
  assert p['se_reduce']['kernel'].shape == (1, 1, 48, 2)  # squeeze to C_in // 4
  np.testing.assert_allclose(out, x + y, rtol=1e-4, atol=1e-4)


def test_attention_maps_equal_brute_force_grad_cam_of_the_dropout_head():
  model = get_model(mf.SMALL_EFFICIENTNET, num_classes=3)
  images = mf.images(size=32, seed=3)
  variables = mf.fake_variables(model, images, seed=4)
  _, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  features, labels = inter['features'], np.array([1, 2])

  maps = model.attention_maps(variables, features, labels)
  expected = mf.brute_force_grad_cam(model, variables, features, labels)
  np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_parameter_counts_equal_torchvision_and_timm_models(exported):
  counts = convnet_parity.reference_parameter_counts(exported)
  for name, (expected, _) in PARAMETERS.items():
    assert counts[f'{name}.torchvision'] == counts[f'{name}.timm'] == expected


@pytest.mark.parametrize(
  'name, size',
  [
    ('efficientnet_b0', 64),
    pytest.param('efficientnet_b0', 224, marks=pytest.mark.heavy),
    *(pytest.param(f'efficientnet_b{i}', 64, marks=pytest.mark.heavy) for i in range(1, 5)),
  ],
)
def test_eval_logits_equal_torchvision_and_timm(exported, name, size):
  convnet_parity.assert_logits_match(exported, name, size)
