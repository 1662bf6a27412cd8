"""care_jax.models.densenet: torchvision's layout, and a narrow DenseNet against a numpy forward
pass written here from the paper.

The fast tests trace the full-size models (``jax.eval_shape``). Loading torchvision's weights
is tested in tests/models/pretrained_densenet_test.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import attention
from care_jax.models import MODEL_NAMES
from care_jax.models import PRETRAINED_MODEL_NAMES
from care_jax.models import Classifier
from care_jax.models import DenseNet
from care_jax.models import LinearHead
from care_jax.models import get_model
from tests.helpers import torch_layout as tl

KEY = jax.random.key(0)


def _abstract(model: nn.Module, shape=(2, 64, 64, 3), dtype=jnp.float32) -> dict:
  images = jax.ShapeDtypeStruct(shape, dtype)
  return jax.eval_shape(functools.partial(model.init, train=False), KEY, images)


@functools.cache
def _abstract_densenet121() -> dict:
  return _abstract(get_model('densenet121', num_classes=1000))


def _num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_densenets_are_registered_models_with_pretrained_weights():
  for name in tl.DENSENETS:
    assert name in MODEL_NAMES and name in PRETRAINED_MODEL_NAMES


@pytest.mark.parametrize(
  'name, expected',
  [
    # torchvision.models.<name>(num_classes=1000): sum(p.numel() for p in m.parameters()).
    ('densenet121', 7_978_856),
    ('densenet161', 28_681_000),
    ('densenet169', 14_149_480),
    ('densenet201', 20_013_928),
  ],
)
def test_parameter_counts_match_torchvision(name, expected):
  variables = _abstract(get_model(name, num_classes=1000))
  assert _num_params(variables['params']) == expected
  # Every BatchNorm has running statistics, none of the convs a bias (torchvision's bias=False).
  blocks, growth, _ = tl.DENSENETS[name]
  num_batch_norms = 1 + 2 * sum(blocks) + (len(blocks) - 1) + 1  # norm0, 2 per layer, norm5
  assert len(jax.tree.leaves(variables['batch_stats'])) == 2 * num_batch_norms


def test_parameter_tree_uses_torchvision_names_and_shapes():
  params = _abstract_densenet121()['params']
  backbone = params['backbone']
  assert set(backbone) == {
    'conv0',
    'norm0',
    *(f'denseblock{b}' for b in range(1, 5)),
    *(f'transition{b}' for b in range(1, 4)),
    'norm5',
  }
  assert backbone['conv0']['kernel'].shape == (7, 7, 3, 64) and 'bias' not in backbone['conv0']
  assert set(backbone['denseblock1']) == {f'denselayer{i}' for i in range(1, 7)}
  assert set(backbone['denseblock3']) == {f'denselayer{i}' for i in range(1, 25)}
  layer = backbone['denseblock1']['denselayer1']
  assert set(layer) == {'norm1', 'conv1', 'norm2', 'conv2'}
  assert layer['norm1']['scale'].shape == (64,)
  assert layer['conv1']['kernel'].shape == (1, 1, 64, 128)  # bn_size 4 x growth 32
  assert layer['conv2']['kernel'].shape == (3, 3, 128, 32)
  # Block 4 starts from 512 channels (1024 // 2); its last layer sees 512 + 15 * 32.
  assert backbone['denseblock4']['denselayer16']['norm1']['scale'].shape == (992,)
  assert backbone['transition1']['conv']['kernel'].shape == (1, 1, 256, 128)
  assert backbone['transition3']['conv']['kernel'].shape == (1, 1, 1024, 512)
  assert backbone['norm5']['scale'].shape == (1024,)
  assert params['head']['fc']['kernel'].shape == (1024, 1000)


@pytest.mark.parametrize(
  'size, side',
  [
    (224, 7),  # 112 -> 56 -> 28 -> 14 -> 7
    (64, 2),
    (72, 2),  # 36 -> 18 -> 9 -> 4 (the 2x2 average pool drops the odd row) -> 2
    (33, 1),  # 17 -> 9 -> 4 -> 2 -> 1
  ],
)
def test_feature_map_is_stride_32_with_torch_output_sizes(size, side):
  model = get_model('densenet121', num_classes=1000)
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  logits, inter = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), _abstract_densenet121(), images
  )
  assert logits.shape == (1, 1000) and inter['features'].shape == (1, side, side, 1024)


def test_bfloat16_features_float32_params_and_logits_and_train_mode_batch_stats():
  model = get_model('densenet121', num_classes=3, dtype=jnp.bfloat16)
  variables = _abstract(model)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  (logits, inter), updates = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), variables, images
  )
  assert logits.dtype == jnp.float32 and inter['features'].dtype == jnp.bfloat16
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])


SMALL = dict(block_sizes=(2, 3), growth_rate=4, num_init_features=8, bn_size=2)


def _fake_variables(model: nn.Module, images, seed: int) -> dict:
  """Variables of the right tree from numpy: He-scaled kernels, non-trivial BatchNorm state."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      values = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    elif name in ('scale', 'var'):
      values = rng.uniform(0.5, 1.5, size=leaf.shape)
    else:  # bias, mean
      values = rng.normal(size=leaf.shape) * 0.1
    return jnp.asarray(values, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract(model, images.shape))


def _np_conv(x, kernel, *, stride=1):
  """NHWC cross-correlation with torch's symmetric padding kernel_size // 2."""
  kh, kw = kernel.shape[:2]
  x = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      out += x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride] @ kernel[i, j]
  return out


def _np_densenet(variables: dict, x: np.ndarray) -> np.ndarray:
  """The eval-mode DenseNet-BC forward pass from the paper, in float64 numpy."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params']['backbone'])
  stats = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['batch_stats']['backbone'])

  def bn_relu(y, p, s):
    y = (y - s['mean']) / np.sqrt(s['var'] + 1e-5) * p['scale'] + p['bias']
    return np.maximum(y, 0.0)

  y = bn_relu(_np_conv(x, params['conv0']['kernel'], stride=2), params['norm0'], stats['norm0'])
  # Max pool 3x3/2, padding 1 with -inf.
  y = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  out_h, out_w = (y.shape[1] - 3) // 2 + 1, (y.shape[2] - 3) // 2 + 1
  y = np.max(
    [y[:, i : i + 2 * out_h : 2, j : j + 2 * out_w : 2] for i in range(3) for j in range(3)], axis=0
  )
  num_blocks = len(SMALL['block_sizes'])
  for block, num_layers in enumerate(SMALL['block_sizes']):
    p_block, s_block = params[f'denseblock{block + 1}'], stats[f'denseblock{block + 1}']
    for index in range(num_layers):
      p, s = p_block[f'denselayer{index + 1}'], s_block[f'denselayer{index + 1}']
      z = _np_conv(bn_relu(y, p['norm1'], s['norm1']), p['conv1']['kernel'])
      z = _np_conv(bn_relu(z, p['norm2'], s['norm2']), p['conv2']['kernel'])
      y = np.concatenate([y, z], axis=-1)  # earlier channels first
    if block < num_blocks - 1:
      p, s = params[f'transition{block + 1}'], stats[f'transition{block + 1}']
      z = _np_conv(bn_relu(y, p['norm'], s['norm']), p['conv']['kernel'])
      h, w = z.shape[1] // 2, z.shape[2] // 2
      y = z[:, : 2 * h, : 2 * w].reshape(z.shape[0], h, 2, w, 2, -1).mean(axis=(2, 4))
  return bn_relu(y, params['norm5'], stats['norm5'])


def _small_classifier() -> Classifier:
  return Classifier(backbone=DenseNet(**SMALL), head=LinearHead(num_classes=3))


def test_narrow_densenet_matches_a_numpy_forward_pass_on_odd_sizes():
  model = _small_classifier()
  # 19 -> conv0 10 -> pool 5 -> transition 2 (floor): odd sizes in the stem and the transition.
  images = np.random.default_rng(0).normal(size=(2, 19, 19, 3)).astype(np.float32)
  variables = _fake_variables(model, images, seed=1)
  logits, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)

  expected = _np_densenet(variables, images.astype(np.float64))
  # 8 stem channels + 2 x 4 -> transition 8 -> + 3 x 4.
  assert inter['features'].shape == expected.shape == (2, 2, 2, 20)
  assert np.all(np.asarray(inter['features']) >= 0)  # after norm5's ReLU
  np.testing.assert_allclose(inter['features'], expected, rtol=1e-4, atol=1e-5)
  head = variables['params']['head']['fc']
  expected_logits = expected.mean(axis=(1, 2)) @ np.asarray(head['kernel']) + head['bias']
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)


def test_cam_of_densenet_is_the_normalised_grad_cam():
  model = _small_classifier()
  images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
  variables = _fake_variables(model, images, seed=3)
  _, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  features, labels = inter['features'], jnp.array([2, 0])
  assert features.shape == (2, 8, 8, 20)

  maps = model.attention_maps(variables, features, labels)  # 'auto': the closed-form CAM
  kernel = variables['params']['head']['fc']['kernel']
  np.testing.assert_array_equal(maps, attention.cam(features, kernel, labels))
  head_fn = lambda f: model.apply(variables, f, train=False, method=Classifier.apply_head)
  np.testing.assert_allclose(maps, attention.grad_cam(head_fn, features, labels), atol=1e-5)
  np.testing.assert_allclose(
    maps, model.attention_maps(variables, features, labels, method='grad_cam'), atol=1e-5
  )
  assert maps.shape == (2, 8, 8) and float(maps.min()) == 0.0 and float(maps.max()) == 1.0
