"""The heads against numpy: GAP + linear, BatchNorm + linear, torchvision's VGG classifier, the
cosine (normed linear) head of LDAM-DRW, the flatten head, torch's adaptive average pool, their
initialisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax.models import BatchNormLinearHead
from care_jax.models import FlattenHead
from care_jax.models import LinearHead
from care_jax.models import NormedLinearHead
from care_jax.models import VGGHead
from care_jax.models import adaptive_avg_pool
from care_jax.models import get_model
from tests.helpers import model_fixtures as mf


def test_vgg_head_init_is_normal_0_01():
  head = VGGHead(num_classes=3, hidden_size=256)
  with jax.threefry_partitionable(False):
    params = head.init(mf.KEY, jnp.zeros((1, 4, 4, 16)))['params']
  np.testing.assert_allclose(np.std(params['fc1']['kernel']), 0.01, rtol=0.02)
  np.testing.assert_array_equal(params['fc1']['bias'], 0.0)


def test_linear_head_is_global_average_pool_then_dense():
  features = np.random.default_rng(1).normal(size=(2, 3, 5, 8)).astype(np.float32)
  head = LinearHead(num_classes=4)
  variables = mf.fake_variables(head, features)
  kernel = np.asarray(variables['params']['fc']['kernel'], np.float64)
  bias = np.asarray(variables['params']['fc']['bias'], np.float64)

  expected = features.astype(np.float64).mean(axis=(1, 2)) @ kernel + bias
  np.testing.assert_allclose(head.apply(variables, features), expected, rtol=1e-5, atol=1e-6)


def test_batchnorm_linear_head_normalises_with_running_stats_in_eval():
  features = np.random.default_rng(2).normal(size=(2, 3, 3, 6)).astype(np.float32)
  head = BatchNormLinearHead(num_classes=4)
  variables = mf.fake_variables(head, features)
  bn, stats, fc = (
    variables['params']['bn'],
    variables['batch_stats']['bn'],
    variables['params']['fc'],
  )

  pooled = features.astype(np.float64).mean(axis=(1, 2))
  normed = (pooled - stats['mean']) / np.sqrt(np.asarray(stats['var'], np.float64) + 1e-5)
  expected = (normed * bn['scale'] + bn['bias']) @ fc['kernel'] + fc['bias']
  np.testing.assert_allclose(
    head.apply(variables, features, train=False), expected, rtol=1e-5, atol=1e-5
  )


def test_vgg_head_matches_torchvision_classifier_in_eval():
  """maxpool 2x2 -> AdaptiveAvgPool(7x7) -> flatten (C, H, W) -> fc1, ReLU, fc2, ReLU, fc3."""
  features = np.random.default_rng(3).normal(size=(2, 4, 6, 5)).astype(np.float32)
  head = VGGHead(num_classes=3, hidden_size=8)
  variables = mf.fake_variables(head, features)
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])

  pooled = features.reshape(2, 2, 2, 3, 2, 5).max(axis=(2, 4))  # [2, 2, 3, 5]
  grid = np.zeros((2, 7, 7, 5))
  for i in range(7):  # torch AdaptiveAvgPool2d windows
    h0, h1 = (i * 2) // 7, -(-(i + 1) * 2 // 7)
    for j in range(7):
      w0, w1 = (j * 3) // 7, -(-(j + 1) * 3 // 7)
      grid[:, i, j] = pooled[:, h0:h1, w0:w1].mean(axis=(1, 2))
  x = grid.transpose(0, 3, 1, 2).reshape(2, -1)
  for name in ('fc1', 'fc2'):
    x = np.maximum(x @ params[name]['kernel'] + params[name]['bias'], 0)
  expected = x @ params['fc3']['kernel'] + params['fc3']['bias']

  np.testing.assert_allclose(
    head.apply(variables, features, train=False), expected, rtol=1e-5, atol=1e-5
  )


def test_vgg_dropout_is_active_only_in_train_mode():
  features = np.random.default_rng(4).normal(size=(2, 2, 2, 4)).astype(np.float32)
  head = VGGHead(num_classes=3, hidden_size=64)
  variables = mf.fake_variables(head, features)

  eval_a = head.apply(variables, features, train=False)
  eval_b = head.apply(variables, features, train=False, rngs={'dropout': jax.random.key(9)})
  train_a = head.apply(variables, features, train=True, rngs={'dropout': jax.random.key(1)})
  train_b = head.apply(variables, features, train=True, rngs={'dropout': jax.random.key(2)})

  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, eval_a)


@pytest.mark.parametrize('in_size, out_size', [(2, 7), (5, 3), (14, 7), (7, 7)])
def test_adaptive_avg_pool_matches_torch_windows(in_size, out_size):
  row = np.arange(1.0, in_size + 1)
  x = np.broadcast_to(row[None, None, :, None], (1, 1, in_size, 1)).astype(np.float32)
  expected = {
    (2, 7): [1, 1, 1, 1.5, 2, 2, 2],  # windows [0,1) x3, [0,2), [1,2) x3
    (5, 3): [1.5, 3, 4.5],  # windows [0,2), [1,4), [3,5)
    (14, 7): [1.5 + 2 * k for k in range(7)],
    (7, 7): list(range(1, 8)),
  }[(in_size, out_size)]
  out = adaptive_avg_pool(x, (1, out_size))
  np.testing.assert_allclose(out[0, 0, :, 0], expected, rtol=1e-6)


def test_normed_linear_head_is_the_cosine_of_the_pooled_feature_and_each_class_column():
  """LDAM-DRW's NormedLinear: F.normalize(x, dim=1).mm(F.normalize(W, dim=0)) on GAP(A)."""
  features = np.random.default_rng(5).normal(size=(3, 3, 5, 8)).astype(np.float32)
  features[2] = 0.0  # a zero feature vector: F.normalize's eps gives cosines 0, not NaN
  head = NormedLinearHead(num_classes=4)
  variables = mf.fake_variables(head, features)
  assert set(variables['params']) == {'kernel'}  # no bias
  kernel = np.asarray(variables['params']['kernel'], np.float64)
  assert kernel.shape == (8, 4)

  expected = mf.np_normalize(features.mean(axis=(1, 2)), 1) @ mf.np_normalize(kernel, 0)
  logits = head.apply(variables, features)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(logits[2], 0.0)
  assert np.all(np.abs(logits) <= 1.0 + 1e-6)
  # Finite gradients also at the zero feature vector (where d||x|| / dx is 0 / 0).
  grads = jax.grad(lambda f: jnp.sum(head.apply(variables, f) * jnp.arange(4.0)))(features)
  assert np.all(np.isfinite(grads))
  # bfloat16 features: still a float32 cosine.
  bf16 = NormedLinearHead(num_classes=4, dtype=jnp.bfloat16).apply(
    variables, jnp.asarray(features, jnp.bfloat16)
  )
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, expected, atol=2e-2)


def test_normed_linear_init_is_uniform_with_unit_norm_class_columns():
  """weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5): every column W[:, k] has norm 1."""
  head = NormedLinearHead(num_classes=5)
  kernel = head.init(mf.KEY, jnp.zeros((1, 2, 2, 64)))['params']['kernel']
  assert kernel.shape == (64, 5) and kernel.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)
  # Directions of U(-1, 1)^64: a column scaled back by its norm spans (-1, 1), mean ~ 0.
  raw = np.asarray(kernel) * np.sqrt(64 / 3)  # E||u||^2 = 64 / 3 for u ~ U(-1, 1)^64
  assert np.abs(raw).max() < 1.5 and abs(raw.mean()) < 0.1


def test_flatten_head_is_dense_on_the_feature_map_flattened_in_hwc_order():
  features = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype(np.float32)
  head = FlattenHead(num_classes=3)
  variables = mf.fake_variables(head, features)
  kernel = np.asarray(variables['params']['fc']['kernel'], np.float64)
  bias = np.asarray(variables['params']['fc']['bias'], np.float64)

  assert kernel.shape == (3 * 5 * 4, 3)
  # Position-aware: a cell's features meet that cell's weights, kernel[(i * w + j) * C + c, k].
  expected = np.einsum('bhwc,hwck->bk', features, kernel.reshape(3, 5, 4, 3)) + bias
  logits = head.apply(variables, features)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_flatten_head_attention_maps_equal_brute_force_grad_cam_and_its_closed_form():
  model = get_model('tiny_cnn', num_classes=3, head='flatten')
  images = mf.images(size=32, seed=3)
  variables = mf.fake_variables(model, images, seed=4)
  _, inter = model.apply(variables, images, train=False)
  features, labels = inter['features'], jnp.array([2, 0])

  maps = model.attention_maps(variables, features, labels)  # 'auto': Grad-CAM of the head
  np.testing.assert_allclose(
    maps, mf.brute_force_grad_cam(model, variables, features, labels), atol=1e-5
  )
  # Grad-CAM's channel weights of a flatten head: each channel's kernel column averaged over cells.
  kernel = np.asarray(variables['params']['head']['fc']['kernel']).reshape(4, 4, 128, 3)
  weights = kernel.mean(axis=(0, 1))[:, np.asarray(labels)].T  # [B, C]
  cam = np.einsum('bhwc,bc->bhw', np.asarray(features, np.float64), weights)
  low, high = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(maps, (cam - low) / (high - low), atol=1e-5)
