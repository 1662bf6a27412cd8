"""care_jax.models.convnext: the block against numpy (LayerNorm eps 1e-6, exact GELU, layer
scale), stochastic depth, the LayerNorm head. Parameter counts (no BatchNorm), Grad-CAM by brute
force and logit parity with torchvision's and timm's own ConvNeXts: backbones_reference_test.py."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from care_jax.models import convnext
from care_jax.models import get_model
from care_jax.models import heads
from tests.helpers import model_fixtures as mf


def test_default_head_is_layer_norm_linear():
  model = get_model('convnext_tiny', num_classes=1000)
  assert isinstance(model.head, heads.LayerNormLinearHead)


def _np_layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_block_equals_numpy_with_layer_norm_eps_1e6_and_exact_gelu():
  x = mf.images(batch=2, size=9, seed=1)[..., :3].repeat(3, axis=-1)  # [2, 9, 9, 9]
  block = convnext.ConvNeXtBlock()
  variables = mf.fake_variables(block, x)
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), variables['params'])
  # Depthwise 7x7, padding 3: each channel with its own kernel.
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), (3, 3), (3, 3), (0, 0)))
  y = sum(
    padded[:, i : i + 9, j : j + 9, :] * p['dwconv']['kernel'][i, j, 0]
    for i in range(7)
    for j in range(7)
  )
  y = y + p['dwconv']['bias']
  y = _np_layer_norm(y, p['norm']['scale'], p['norm']['bias'])
  y = y @ p['fc1']['kernel'] + p['fc1']['bias']
  y = 0.5 * y * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))  # torch's nn.GELU()
  y = y @ p['fc2']['kernel'] + p['fc2']['bias']
  expected = x + p['layer_scale'] * y

  out = block.apply(variables, x, train=False)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_layer_scale_starts_at_1e6():
  init = jax.jit(functools.partial(convnext.ConvNeXtBlock().init, train=False))
  variables = init(mf.KEY, jnp.zeros((1, 1, 1, 4)))
  np.testing.assert_array_equal(variables['params']['layer_scale'], np.full(4, 1e-6, np.float32))


def test_stochastic_depth_drops_whole_examples_in_training_only():
  x = mf.images(batch=16, size=8, seed=2)
  block = convnext.ConvNeXtBlock(drop_path_rate=0.5)
  variables = mf.fake_variables(block, x)
  branch = np.asarray(block.apply(variables, x, train=False)) - x
  trained = np.asarray(block.apply(variables, x, train=True, rngs={'dropout': mf.KEY})) - x
  dropped = np.all(trained == 0, axis=(1, 2, 3))
  assert 0 < dropped.sum() < 16
  # The kept examples' branch is scaled by 1 / (1 - rate), as torchvision's StochasticDepth.
  np.testing.assert_allclose(trained[~dropped], 2 * branch[~dropped], rtol=1e-5, atol=1e-6)
