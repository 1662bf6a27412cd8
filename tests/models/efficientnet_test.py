"""care_jax.models.efficientnet: the head's dropout, channel rounding, the MBConv block against
numpy (squeeze-excitation, SiLU, BatchNorm). Parameter counts, Grad-CAM by brute force and logit
parity with torchvision's and timm's own EfficientNets: backbones_reference_test.py."""

import jax
import numpy as np
import pytest

from care_jax.models import efficientnet
from care_jax.models import get_model
from care_jax.models import heads
from tests.helpers import model_fixtures as mf

# torchvision's head dropout of each variant.
HEAD_DROPOUT = {
  'efficientnet_b0': 0.2,
  'efficientnet_b1': 0.2,
  'efficientnet_b2': 0.3,
  'efficientnet_b3': 0.3,
  'efficientnet_b4': 0.4,
}


@pytest.mark.parametrize('name', HEAD_DROPOUT)
def test_head_dropout_equals_torchvision(name):
  model = get_model(name, num_classes=1000)
  assert isinstance(model.head, heads.DropoutLinearHead)
  assert model.head.dropout_rate == HEAD_DROPOUT[name]


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
