"""Tests of care_jax.attention against numpy and finite differences."""

import chex
import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import attention

B, H, W, C, K, D = 3, 4, 5, 6, 3, 5


def np_minmax(maps):
  maps = np.asarray(maps, np.float64)
  lo = maps.min(axis=(1, 2), keepdims=True)
  span = maps.max(axis=(1, 2), keepdims=True) - lo
  return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0.0)


def np_weighted_maps(features, weights, relu=False, normalize=True):
  maps = np.einsum('bhwc,bc->bhw', np.asarray(features, np.float64), weights)
  if relu:
    maps = np.maximum(maps, 0.0)
  return np_minmax(maps) if normalize else maps


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
    'kernel': rng.normal(size=(C, K)).astype(np.float32),
    'bias': rng.normal(size=(K,)).astype(np.float32),
    'v': rng.normal(size=(C, D)).astype(np.float32) * 0.5,
    'u': rng.normal(size=(D, K)).astype(np.float32),
  }


def make_inputs(seed=1):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(B, H, W, C)).astype(np.float32)
  labels = rng.integers(0, K, size=B)
  return features, labels


def linear_head(p):
  """Global average pooling + Dense: the CAM setting."""
  return lambda a: jnp.mean(a, axis=(1, 2)) @ p['kernel'] + p['bias']


def nonlinear_head(p):
  """Per-position tanh projection, then pooling: d logit / dA varies."""
  return lambda a: jnp.mean(jnp.tanh(a @ p['v']), axis=(1, 2)) @ p['u']


def np_nonlinear_head(p, a):
  a = np.asarray(a, np.float64)
  return np.tanh(a @ p['v']).mean(axis=(1, 2)) @ p['u']


def np_fd_channel_weights(head, features, labels, step=1e-6):
  """Spatial mean of d logit_y / dA by central differences in float64."""
  features = np.asarray(features, np.float64)
  grads = np.zeros_like(features)
  rows = np.arange(len(labels))
  for idx in np.ndindex(*features.shape):
    plus, minus = features.copy(), features.copy()
    plus[idx] += step
    minus[idx] -= step
    diff = head(plus)[rows, labels] - head(minus)[rows, labels]
    grads[idx] = diff[idx[0]] / (2 * step)
  return grads.mean(axis=(1, 2))


# ---------------------------------------------------------------------------
# minmax_normalize.
# ---------------------------------------------------------------------------


def test_minmax_normalize_matches_numpy_and_spans_unit_interval():
  maps = np.random.default_rng(2).normal(size=(B, H, W)).astype(np.float32)
  got = attention.minmax_normalize(maps)
  np.testing.assert_allclose(got, np_minmax(maps), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got.min(axis=(1, 2)), 0.0)
  np.testing.assert_allclose(got.max(axis=(1, 2)), 1.0)


def test_minmax_normalize_constant_maps_are_zero_with_finite_gradient():
  maps = np.random.default_rng(3).normal(size=(2, H, W)).astype(np.float32)
  maps[1] = 3.0
  probe = np.random.default_rng(4).normal(size=(2, H, W)).astype(np.float32)
  fn = lambda m: jnp.sum(attention.minmax_normalize(m) * probe)
  out = attention.minmax_normalize(maps)
  grad = jax.grad(fn)(maps)
  np.testing.assert_array_equal(out[1], 0.0)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[1], 0.0)


def test_minmax_normalize_eps_treats_small_ranges_as_constant():
  maps = np.zeros((1, 2, 2), np.float32)
  maps[0, 0, 0] = 1e-4
  np.testing.assert_array_equal(attention.minmax_normalize(maps, eps=1e-3), 0)
  np.testing.assert_allclose(attention.minmax_normalize(maps)[0, 0, 0], 1.0)


def test_minmax_normalize_gradient_flows_through_min_and_max():
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    maps = jnp.asarray(rng.normal(size=(2, H, W)))
    probe = jnp.asarray(rng.normal(size=(2, H, W)))
    fn = jax.jit(lambda m: jnp.sum(attention.minmax_normalize(m) * probe))
    test_util.check_grads(fn, (maps,), order=1, modes=['rev'])
    # Without the min/max path the gradient would be probe / span only.
    span = maps.max(axis=(1, 2)) - maps.min(axis=(1, 2))
    assert not np.allclose(jax.grad(fn)(maps), probe / span[:, None, None])


# ---------------------------------------------------------------------------
# grad_cam and cam.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('relu', [False, True])
def test_grad_cam_equals_cam_for_gap_linear_head(relu):
  p = make_params()
  features, labels = make_inputs()
  got_grad_cam = attention.grad_cam(linear_head(p), features, labels, relu=relu)
  got_cam = attention.cam(features, p['kernel'], labels, relu=relu)
  chex.assert_trees_all_close(got_grad_cam, got_cam, atol=1e-5)
  np.testing.assert_allclose(
    got_cam, np_weighted_maps(features, p['kernel'].T[labels], relu=relu), atol=1e-5
  )


def test_unnormalized_grad_cam_is_cam_over_spatial_size():
  p = make_params()
  features, labels = make_inputs()
  np.testing.assert_allclose(
    attention.grad_cam(linear_head(p), features, labels, normalize=False),
    attention.cam(features, p['kernel'], labels, normalize=False) / (H * W),
    rtol=1e-5,
    atol=1e-6,
  )


def test_grad_cam_and_cam_feature_gradients_agree():
  p = make_params()
  features, labels = make_inputs()
  probe = np.random.default_rng(6).normal(size=(B, H, W)).astype(np.float32)
  via_grad_cam = jax.grad(lambda a: jnp.sum(attention.grad_cam(linear_head(p), a, labels) * probe))(
    features
  )
  via_cam = jax.grad(lambda a: jnp.sum(attention.cam(a, p['kernel'], labels) * probe))(features)
  assert np.any(via_cam != 0)
  chex.assert_trees_all_close(via_grad_cam, via_cam, atol=1e-5)


def test_cam_does_not_differentiate_the_kernel():
  p = make_params()
  features, labels = make_inputs()
  grad = jax.grad(lambda k: jnp.sum(attention.cam(features, k, labels, normalize=False)))(
    p['kernel']
  )
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize('relu', [False, True])
def test_grad_cam_nonlinear_head_matches_finite_difference_weights(relu):
  p = make_params()
  features, labels = make_inputs()
  weights = np_fd_channel_weights(lambda a: np_nonlinear_head(p, a), features, labels)
  got = attention.grad_cam(nonlinear_head(p), features, labels, relu=relu, normalize=False)
  np.testing.assert_allclose(
    got, np_weighted_maps(features, weights, relu=relu, normalize=False), rtol=1e-4, atol=1e-5
  )
  got = attention.grad_cam(nonlinear_head(p), features, labels, relu=relu)
  np.testing.assert_allclose(got, np_weighted_maps(features, weights, relu=relu), atol=1e-4)


def test_grad_cam_gradient_flows_through_features_with_constant_weights():
  p = make_params()
  features, labels = make_inputs()
  probe = np.random.default_rng(7).normal(size=(B, H, W)).astype(np.float32)
  weights = np_fd_channel_weights(lambda a: np_nonlinear_head(p, a), features, labels)
  grad = jax.grad(
    lambda a: jnp.sum(probe * attention.grad_cam(nonlinear_head(p), a, labels, normalize=False))
  )(features)
  # d/dA[b,i,j,k] sum(probe * sum_k w_k A_k) = probe[b,i,j] * w[b,k].
  np.testing.assert_allclose(
    grad, probe[..., None] * weights[:, None, None, :], rtol=1e-4, atol=1e-5
  )


def test_grad_cam_second_order_path_matches_finite_differences():
  p = make_params()
  features, labels = make_inputs()
  with jax.enable_x64(True):
    p64 = {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}
    a64 = jnp.asarray(features, jnp.float64)
    probe = jnp.asarray(np.random.default_rng(8).normal(size=(B, H, W)))

    def objective(a, stop):
      return jnp.sum(
        probe * attention.grad_cam(nonlinear_head(p64), a, labels, stop_gradient_weights=stop)
      )

    full = jax.jit(lambda a: objective(a, False))
    test_util.check_grads(full, (a64,), order=1, modes=['rev'])
    # The default treats the weights as constants: a different gradient.
    assert not np.allclose(
      jax.grad(full)(a64), jax.grad(lambda a: objective(a, True))(a64), atol=1e-4
    )


def test_grad_cam_under_jit_and_vmap():
  p = make_params()
  features, labels = make_inputs()
  eager = attention.grad_cam(nonlinear_head(p), features, labels)
  jitted = jax.jit(lambda a, y: attention.grad_cam(nonlinear_head(p), a, y))(features, labels)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
  stacked = jax.vmap(lambda a, y: attention.cam(a, p['kernel'], y))(
    np.stack([features, features[::-1]]), np.stack([labels, labels[::-1]])
  )
  np.testing.assert_allclose(
    stacked[1], attention.cam(features[::-1], p['kernel'], labels[::-1]), atol=1e-6
  )


def test_bfloat16_features_give_float32_maps():
  p = make_params()
  features, labels = make_inputs()
  f_bf16 = jnp.asarray(features, jnp.bfloat16)
  got_cam = attention.cam(f_bf16, p['kernel'], labels)
  got_grad_cam = attention.grad_cam(linear_head(p), f_bf16, labels)
  assert got_cam.dtype == jnp.float32 and got_grad_cam.dtype == jnp.float32
  rounded = np.asarray(f_bf16, np.float32)
  np.testing.assert_allclose(got_cam, np_weighted_maps(rounded, p['kernel'].T[labels]), atol=1e-5)
  np.testing.assert_allclose(got_cam, attention.cam(features, p['kernel'], labels), atol=2e-2)


# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------


def test_shape_errors_name_the_argument():
  p = make_params()
  features, labels = make_inputs()
  with pytest.raises(ValueError, match=r'features .*\(3, 4, 5\)'):
    attention.cam(features[..., 0], p['kernel'], labels)
  with pytest.raises(ValueError, match=r'labels .*\(2,\)'):
    attention.grad_cam(linear_head(p), features, labels[:2])
  with pytest.raises(ValueError, match=r'labels .*integer'):
    attention.cam(features, p['kernel'], labels.astype(np.float32))
  with pytest.raises(ValueError, match=r'kernel .*C = 6.*\(5, 3\)'):
    attention.cam(features, p['kernel'][:5], labels)
  with pytest.raises(ValueError, match=r'head_fn .*\(3,\)'):
    attention.grad_cam(lambda a: a.sum(axis=(1, 2, 3)), features, labels)
  with pytest.raises(ValueError, match=r'maps .*\(3, 4\)'):
    attention.minmax_normalize(np.zeros((3, 4)))
