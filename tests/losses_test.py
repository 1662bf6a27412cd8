"""care_loss and distance_outer_mask against independent numpy references (single-label and
per (image, finding) pair)."""

import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import losses

TAU = 0.5
LAM = 0.7


def np_resize_1d_indices(in_size, out_size):
  """Gather form of half-pixel bilinear upsampling: (lo, hi, frac)."""
  src = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  src = np.clip(src, 0.0, in_size - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, src - lo


def np_resize_bilinear(x, out_h, out_w):
  """[B, h, w] -> [B, out_h, out_w], float64, clamp-at-border bilinear."""
  x = np.asarray(x, np.float64)
  lo, hi, t = np_resize_1d_indices(x.shape[1], out_h)
  x = x[:, lo, :] * (1 - t)[None, :, None] + x[:, hi, :] * t[None, :, None]
  lo, hi, t = np_resize_1d_indices(x.shape[2], out_w)
  return x[:, :, lo] * (1 - t)[None, None, :] + x[:, :, hi] * t[None, None, :]


def np_care_per_example(f, m_in, m_out=None, has_mask=None, tau=TAU, lam=LAM):
  f = np.asarray(f, np.float64)
  m_in = np.asarray(m_in, np.float64)
  m_out = 1.0 - m_in if m_out is None else np.asarray(m_out, np.float64)
  up = np_resize_bilinear(f, *m_in.shape[1:])
  out = []
  for b in range(f.shape[0]):
    area_in, area_out = m_in[b].sum(), m_out[b].sum()
    l_in = -min((m_in[b] * up[b]).sum() / area_in, tau) if area_in > 0 else 0.0
    l_out = (m_out[b] * up[b]).sum() / area_out if area_out > 0 else 0.0
    boxed = area_in > 0 if has_mask is None else has_mask[b]
    out.append(l_in + lam * l_out if boxed else 0.0)
  return np.array(out)


def np_care_loss(f, m_in, m_out=None, has_mask=None, tau=TAU, lam=LAM, reduction='mean'):
  per = np_care_per_example(f, m_in, m_out, has_mask, tau, lam)
  if has_mask is None:
    has_mask = np.asarray(m_in).reshape(len(per), -1).sum(1) > 0
  if reduction == 'sum':
    return per.sum()
  return per.sum() / max(np.sum(has_mask), 1)


def random_maps(rng, b, h, w):
  f = rng.uniform(size=(b, h, w))
  lo = f.min(axis=(1, 2), keepdims=True)
  hi = f.max(axis=(1, 2), keepdims=True)
  return ((f - lo) / (hi - lo)).astype(np.float32)


def random_box_masks(rng, b, big_h, big_w):
  """Rectangular boxes; the last image has no box."""
  m = np.zeros((b, big_h, big_w), np.float32)
  for i in range(b - 1):
    y0, x0 = rng.integers(0, big_h // 2), rng.integers(0, big_w // 2)
    y1 = rng.integers(y0 + 1, big_h + 1)
    x1 = rng.integers(x0 + 1, big_w + 1)
    m[i, y0:y1, x0:x1] = 1.0
  return m


MASK_SIZES = [(7, 7), (14, 14), (28, 28), (32, 32), (10, 13)]


@pytest.mark.parametrize('out_shape', [(14, 14), (10, 13), (32, 32)])
def test_numpy_reference_resize_equals_jax_image_resize(out_shape):
  # Validates the reference used below, independently of losses.py.
  x = np.random.default_rng(0).normal(size=(2, 7, 7)).astype(np.float32)
  np.testing.assert_allclose(
    np_resize_bilinear(x, *out_shape), jax.image.resize(x, (2, *out_shape), 'bilinear'), atol=1e-5
  )


@pytest.mark.parametrize('mask_shape', MASK_SIZES)
def test_care_loss_matches_numpy_reference(mask_shape):
  rng = np.random.default_rng(1)
  f = random_maps(rng, 4, 7, 7)
  m = random_box_masks(rng, 4, *mask_shape)
  np.testing.assert_allclose(
    losses.care_loss_per_example(f, m, tau=TAU, lam=LAM),
    np_care_per_example(f, m),
    rtol=1e-5,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    losses.care_loss(f, m, tau=TAU, lam=LAM), np_care_loss(f, m), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize('mask_shape', MASK_SIZES)
def test_care_loss_soft_masks_and_custom_outer_mask(mask_shape):
  rng = np.random.default_rng(2)
  f = random_maps(rng, 3, 7, 7)
  m_in = rng.uniform(size=(3, *mask_shape)).astype(np.float32)
  m_out = rng.uniform(0.0, 3.0, size=(3, *mask_shape)).astype(np.float32)
  np.testing.assert_allclose(
    losses.care_loss(f, m_in, tau=0.9, lam=0.3), np_care_loss(f, m_in, tau=0.9, lam=0.3), rtol=1e-5
  )
  np.testing.assert_allclose(
    losses.care_loss(f, m_in, outer_mask=m_out, tau=0.9, lam=0.3),
    np_care_loss(f, m_in, m_out, tau=0.9, lam=0.3),
    rtol=1e-5,
  )


def test_care_loss_sum_reduction_sums_over_boxed_images():
  rng = np.random.default_rng(3)
  f = random_maps(rng, 5, 7, 7)
  m = random_box_masks(rng, 5, 14, 14)
  got = losses.care_loss(f, m, tau=TAU, lam=1.0, reduction='sum')
  np.testing.assert_allclose(got, np_care_loss(f, m, lam=1.0, reduction='sum'), rtol=1e-5)
  # Four boxed images: the sum is four times the mean.
  np.testing.assert_allclose(got, 4 * losses.care_loss(f, m, tau=TAU, lam=1.0), rtol=1e-5)


def test_care_loss_explicit_has_mask_selects_images():
  rng = np.random.default_rng(4)
  f = random_maps(rng, 4, 7, 7)
  m = random_box_masks(rng, 4, 28, 28)
  has_mask = np.array([True, False, True, True])  # Last one: box but empty.
  np.testing.assert_allclose(
    losses.care_loss_per_example(f, m, has_mask=has_mask),
    np_care_per_example(f, m, has_mask=has_mask),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    losses.care_loss(f, m, has_mask=has_mask), np_care_loss(f, m, has_mask=has_mask), rtol=1e-5
  )


def test_care_loss_accepts_bool_and_int_masks():
  rng = np.random.default_rng(5)
  f = random_maps(rng, 3, 7, 7)
  m = random_box_masks(rng, 3, 14, 14)
  expected = np_care_loss(f, m)
  for dtype in (bool, np.int32, np.uint8):
    np.testing.assert_allclose(losses.care_loss(f, m.astype(dtype)), expected, rtol=1e-5)


def test_care_loss_example_with_hand_computed_value():
  # 2x2 map, box on the top-left pixel: mean inside 1 -> L_in = -tau;
  # outside mean (0.2 + 0.4 + 0.6) / 3 = 0.4.
  f = jnp.array([[[1.0, 0.2], [0.4, 0.6]]])
  m = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
  np.testing.assert_allclose(losses.care_loss(f, m, tau=0.5, lam=0.7), -0.5 + 0.7 * 0.4, rtol=1e-6)


def _value_and_grad(f, m, **kwargs):
  return jax.value_and_grad(lambda x: losses.care_loss(x, m, **kwargs))(f)


@pytest.mark.parametrize('mask_shape', [(7, 7), (28, 28)])
def test_care_loss_edge_cases_are_finite(mask_shape):
  f = random_maps(np.random.default_rng(6), 4, 7, 7)
  f[2] = 0.5  # Constant map.
  m = np.zeros((4, *mask_shape), np.float32)
  m[0] = 1.0  # Full mask: no outside.
  m[2, 3:9, 2:5] = 1.0  # Box on the constant map.
  # m[1] and m[3] are empty.
  value, grad = _value_and_grad(f, m)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(value, np_care_loss(f, m), rtol=1e-5)
  # Images without a box get no gradient.
  np.testing.assert_array_equal(grad[1], 0.0)
  np.testing.assert_array_equal(grad[3], 0.0)


def test_care_loss_without_any_mask_is_exactly_zero_with_zero_gradient():
  f = random_maps(np.random.default_rng(7), 3, 7, 7)
  m = np.zeros((3, 14, 14), np.float32)
  for kwargs in ({}, {'reduction': 'sum'}, {'has_mask': np.zeros(3, bool), 'outer_mask': 1.0 - m}):
    value, grad = _value_and_grad(f, m, **kwargs)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_care_loss_has_mask_with_empty_mask_uses_outer_term_only():
  f = random_maps(np.random.default_rng(8), 2, 7, 7)
  m = np.zeros((2, 7, 7), np.float32)
  value, grad = _value_and_grad(f, m, has_mask=np.array([True, False]))
  np.testing.assert_allclose(value, LAM * f[0].mean(), rtol=1e-5)
  np.testing.assert_allclose(grad[0], np.full((7, 7), LAM / 49), rtol=1e-5)
  np.testing.assert_array_equal(grad[1], 0.0)


def test_care_loss_full_mask_has_no_outer_term():
  f = random_maps(np.random.default_rng(9), 1, 7, 7)
  m = np.ones((1, 14, 14), np.float32)
  value, grad = _value_and_grad(f, m, tau=2.0)
  mean_up = np_resize_bilinear(f, 14, 14).mean()
  np.testing.assert_allclose(value, -mean_up, rtol=1e-5)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('mask_shape', [(7, 7), (10, 13)])
def test_care_loss_gradient_matches_finite_differences(mask_shape):
  rng = np.random.default_rng(10)
  with jax.enable_x64(True):
    f = jnp.asarray(random_maps(rng, 3, 7, 7), jnp.float64)
    m_in = jnp.asarray(rng.uniform(size=(3, *mask_shape)))
    # tau above any possible mean: away from the min(., tau) kink.
    fn = lambda x: losses.care_loss(x, m_in, tau=2.0, lam=LAM)
    assert fn(f).dtype == jnp.float64
    test_util.check_grads(fn, (f,), order=1, modes=['rev'], atol=1e-6, rtol=1e-6)


def test_care_loss_gradient_matches_analytic_gradient():
  # d/dF of mean_in and mean_out over equal-resolution binary masks.
  rng = np.random.default_rng(11)
  f = random_maps(rng, 1, 7, 7)
  m = np.zeros((1, 7, 7), np.float32)
  m[0, 1:3, 2:6] = 1.0
  f[0] *= 0.4  # Inside mean < tau: the inner term is active.
  _, grad = _value_and_grad(f, m)
  expected = -m[0] / m.sum() + LAM * (1 - m[0]) / (1 - m).sum()
  np.testing.assert_allclose(grad[0], expected, rtol=1e-5, atol=1e-7)


def test_care_loss_inner_term_is_constant_above_tau():
  f = np.full((1, 7, 7), 0.1, np.float32)
  f[0, 2:5, 2:5] = np.linspace(0.8, 1.0, 9).reshape(3, 3)  # mean 0.9 > tau.
  m = np.zeros((1, 28, 28), np.float32)
  m[0, 8:20, 8:20] = 1.0  # Exactly the up-sampled 2:5 cells.
  value, grad = _value_and_grad(f, m, tau=0.5, lam=0.0)
  assert float(value) == -0.5
  np.testing.assert_array_equal(grad, 0.0)
  # Below tau the same term pulls attention into the box.
  _, grad = _value_and_grad(f, m, tau=0.95, lam=0.0)
  assert np.all(grad[0, 2:5, 2:5] < 0)


def test_care_loss_under_jit_vmap_and_grad():
  rng = np.random.default_rng(12)
  f = random_maps(rng, 6, 7, 7).reshape(2, 3, 7, 7)
  m = random_box_masks(rng, 6, 14, 14).reshape(2, 3, 14, 14)
  expected = np.stack([np_care_per_example(f[i], m[i]) for i in range(2)])

  per_example = jax.jit(jax.vmap(lambda x, y: losses.care_loss_per_example(x, y, tau=TAU, lam=LAM)))
  np.testing.assert_allclose(per_example(f, m), expected, rtol=1e-5)

  loss = jax.jit(losses.care_loss, static_argnames='reduction')
  np.testing.assert_allclose(loss(f[0], m[0]), np_care_loss(f[0], m[0]), rtol=1e-5)

  jit_grad = jax.jit(jax.grad(losses.care_loss))(f[0], m[0])
  np.testing.assert_allclose(jit_grad, jax.grad(losses.care_loss)(f[0], m[0]), rtol=1e-6)


def test_care_loss_under_pmap():
  rng = np.random.default_rng(13)
  n = jax.local_device_count()
  f = random_maps(rng, 2 * n, 7, 7).reshape(n, 2, 7, 7)
  m = random_box_masks(rng, 2 * n, 14, 14).reshape(n, 2, 14, 14)
  got = jax.pmap(lambda x, y: losses.care_loss(x, y))(f, m)
  expected = [np_care_loss(f[i], m[i]) for i in range(n)]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_care_loss_bfloat16_maps_are_computed_in_float32():
  rng = np.random.default_rng(14)
  f = random_maps(rng, 3, 7, 7)
  m = random_box_masks(rng, 3, 32, 32)
  f_bf16 = jnp.asarray(f, jnp.bfloat16)
  got = losses.care_loss(f_bf16, m.astype(jnp.bfloat16))
  assert got.dtype == jnp.float32
  # Exactly the float32 computation on the bfloat16-rounded inputs...
  np.testing.assert_allclose(got, np_care_loss(np.asarray(f_bf16, np.float32), m), rtol=1e-5)
  # ...and close to the float32 result.
  np.testing.assert_allclose(got, losses.care_loss(f, m), rtol=1e-2)
  assert jax.grad(losses.care_loss)(f_bf16, m).dtype == jnp.bfloat16


@pytest.mark.parametrize(
  'f_shape,m_shape,kwargs,match',
  [
    ((7, 7), (2, 7, 7), {}, r'feature_map .*\(7, 7\)'),
    ((2, 7, 7), (2, 7, 7, 1), {}, r'mask .*\(2, 7, 7, 1\)'),
    ((2, 7, 7), (3, 7, 7), {}, r'mask batch size \(3,\).*feature_map'),
    ((2, 7, 7), (2, 14, 6), {}, r'mask spatial shape \(14, 6\)'),
    (
      (2, 7, 7),
      (2, 14, 14),
      {'outer_mask': np.ones((2, 7, 7))},
      r'outer_mask shape \(2, 7, 7\).*\(2, 14, 14\)',
    ),
    ((2, 7, 7), (2, 7, 7), {'has_mask': np.ones((2, 1), bool)}, r'has_mask .*\(2, 1\)'),
    # A map that kept its channel axis: the map is blamed, not the mask.
    ((2, 7, 7, 1), (2, 28, 28), {}, r'^feature_map .*\(2, 7, 7, 1\): a map that kept its channel'),
    ((2, 7, 7), (2, 7, 7), {'tau': -1.0}, r'^tau must be a finite number > 0, got -1\.0'),
    ((2, 7, 7), (2, 7, 7), {'tau': 0.0}, r'^tau must be a finite number > 0, got 0\.0'),
    ((2, 7, 7), (2, 7, 7), {'lam': -0.5}, r'^lam must be a finite number >= 0, got -0\.5'),
  ],
)
def test_care_loss_shape_errors_name_the_argument(f_shape, m_shape, kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.care_loss(np.zeros(f_shape), np.zeros(m_shape), **kwargs)


def test_care_loss_rejects_unknown_reduction():
  with pytest.raises(ValueError, match='reduction'):
    losses.care_loss(np.zeros((1, 7, 7)), np.zeros((1, 7, 7)), reduction='none')


def np_distance_outer_mask(mask, start, delta):
  """Brute force: for every pixel, min over all pixels > 0.5 of |dy| + |dx|."""
  mask = np.asarray(mask, np.float64)
  out = np.zeros(mask.shape)
  ys, xs = np.meshgrid(np.arange(mask.shape[1]), np.arange(mask.shape[2]), indexing='ij')
  for b in range(mask.shape[0]):
    box_y, box_x = np.nonzero(mask[b] > 0.5)
    if not box_y.size:
      continue  # No box: zeros.
    d = np.abs(ys[..., None] - box_y).astype(np.float64) + np.abs(xs[..., None] - box_x)
    out[b] = np.where(mask[b] > 0.5, 0.0, start + delta * d.min(axis=-1))
  return out


def random_multi_box_masks(rng, b, h, w):
  """Several boxes of random sizes per image."""
  m = np.zeros((b, h, w), np.float32)
  for i in range(b):
    for _ in range(rng.integers(1, 5)):
      y0, x0 = rng.integers(0, h), rng.integers(0, w)
      y1 = rng.integers(y0 + 1, min(h, y0 + h // 2 + 1) + 1)
      x1 = rng.integers(x0 + 1, min(w, x0 + w // 2 + 1) + 1)
      m[i, y0:y1, x0:x1] = 1.0
  return m


def random_soft_blob_masks(rng, b, h, w):
  """Soft masks in [0, 1]: a few Gaussian blobs, scattered pixels and some exact 0.5s."""
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  m = np.zeros((b, h, w))
  for i in range(b):
    for _ in range(rng.integers(1, 4)):
      cy, cx = rng.uniform(0, h), rng.uniform(0, w)
      sy, sx = rng.uniform(0.5, h / 4), rng.uniform(0.5, w / 4)
      m[i] += np.exp(-0.5 * (((ys - cy) / sy) ** 2 + ((xs - cx) / sx) ** 2))
    m[i] += (rng.uniform(size=(h, w)) < 0.02) * rng.uniform(0.0, 1.0, size=(h, w))
  m = np.clip(m, 0.0, 1.0)
  m[rng.uniform(size=m.shape) < 0.05] = 0.5  # Exactly 0.5 is not inside.
  return m.astype(np.float32)


DISTANCE_PARAMS = [(1.0, 0.1), (0.0, 1.0), (2.5, 0.0), (0.3, 0.75)]


@pytest.mark.parametrize('start,delta', DISTANCE_PARAMS)
@pytest.mark.parametrize('shape', [(9, 9), (13, 29), (31, 7), (1, 12), (48, 64)])
def test_distance_outer_mask_equals_brute_force_on_random_boxes(shape, start, delta):
  rng = np.random.default_rng(1000 * shape[0] + shape[1])
  m = random_multi_box_masks(rng, 3, *shape)
  got = losses.distance_outer_mask(m, start=start, delta=delta)
  assert got.shape == m.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_distance_outer_mask(m, start, delta), rtol=1e-6, atol=1e-6)


def test_distance_outer_mask_equals_brute_force_at_input_resolution():
  # 224x224 with small boxes, so that the brute force stays cheap; distances up to ~440.
  m = np.zeros((2, 224, 224), np.float32)
  m[0, 3:9, 200:210] = 1.0
  m[0, 100:104, 50:52] = 1.0
  m[1, 220:224, 0:5] = 1.0
  got = losses.distance_outer_mask(m, start=1.0, delta=0.1)
  np.testing.assert_allclose(got, np_distance_outer_mask(m, 1.0, 0.1), rtol=1e-6)
  assert float(got[1, 0, 223]) == pytest.approx(1.0 + 0.1 * (220 + 219), rel=1e-6)


@pytest.mark.parametrize('start,delta', DISTANCE_PARAMS)
@pytest.mark.parametrize('shape', [(16, 16), (20, 33), (40, 11)])
def test_distance_outer_mask_equals_brute_force_on_soft_irregular_masks(shape, start, delta):
  rng = np.random.default_rng(sum(shape))
  m = random_soft_blob_masks(rng, 4, *shape)
  assert np.any((m > 0) & (m <= 0.5))  # Soft pixels that do not count as the box.
  got = losses.distance_outer_mask(m, start=start, delta=delta)
  np.testing.assert_allclose(got, np_distance_outer_mask(m, start, delta), rtol=1e-6, atol=1e-6)


def test_distance_outer_mask_single_pixel_is_the_city_block_distance():
  m = np.zeros((1, 5, 7), np.float32)
  m[0, 1, 2] = 1.0
  ys, xs = np.mgrid[:5, :7]
  expected = np.where(m[0] > 0, 0.0, 1.0 + 0.1 * (np.abs(ys - 1) + np.abs(xs - 2)))
  got = losses.distance_outer_mask(m, start=1.0, delta=0.1)
  np.testing.assert_allclose(got[0], expected, rtol=1e-6)


def test_distance_outer_mask_of_empty_and_full_masks_is_zero():
  m = np.zeros((3, 6, 9), np.float32)
  m[1] = 1.0  # Full.
  m[2] = 0.5  # Soft, but no pixel > 0.5: empty.
  m[0, 2, 3] = 0.4  # Empty too.
  got = losses.distance_outer_mask(m, start=1.0, delta=0.1)
  np.testing.assert_array_equal(got, 0.0)
  assert np.all(np.isfinite(got))


@pytest.mark.parametrize('mask_shape', [(7, 7), (28, 28)])
def test_care_loss_with_distance_outer_mask_is_finite_for_empty_and_full_masks(mask_shape):
  f = random_maps(np.random.default_rng(20), 4, 7, 7)
  f[3] = 0.5  # Constant map.
  m = np.zeros((4, *mask_shape), np.float32)
  m[0] = 1.0  # Full mask.
  m[2, 3:6, 1:4] = 1.0
  m[3, 0:2, 0:2] = 1.0
  # m[1] is empty.

  def loss(x, y, **kwargs):
    outer = losses.distance_outer_mask(y, start=1.0, delta=0.1)
    return losses.care_loss(x, y, outer_mask=outer, **kwargs)

  for kwargs in ({}, {'has_mask': np.array([True, True, True, False])}):
    value, (grad_f, grad_m) = jax.value_and_grad(loss, argnums=(0, 1))(f, m, **kwargs)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad_f)) and np.all(np.isfinite(grad_m))
    np.testing.assert_array_equal(grad_f[1], 0.0)  # No box: no gradient.
  np.testing.assert_allclose(
    loss(f, m), np_care_loss(f, m, np_distance_outer_mask(m, 1.0, 0.1)), rtol=1e-5
  )

  # Only empty or only full masks.
  for fill in (0.0, 1.0):
    m_edge = np.full((2, *mask_shape), fill, np.float32)
    value, grad_f = jax.value_and_grad(loss)(f[:2], m_edge)
    assert np.isfinite(value) and np.all(np.isfinite(grad_f))
    if fill == 0.0:
      assert float(value) == 0.0
      np.testing.assert_array_equal(grad_f, 0.0)


@pytest.mark.parametrize('map_shape,mask_shape', [((4, 4), (16, 16)), ((4, 5), (16, 23))])
def test_care_loss_with_distance_outer_mask_matches_brute_force_on_upsampled_map(
  map_shape, mask_shape
):
  rng = np.random.default_rng(21)
  b = 4
  f = random_maps(rng, b, *map_shape)
  m = random_multi_box_masks(rng, b, *mask_shape)
  m[2] = 0.0  # No box: left out of the mean.
  start, delta, tau, lam = 1.0, 0.1, 0.4, 0.6
  got = losses.care_loss(
    f, m, tau=tau, lam=lam, outer_mask=losses.distance_outer_mask(m, start=start, delta=delta)
  )

  up = np.asarray(jax.image.resize(f, (b, *mask_shape), 'bilinear'), np.float64)
  m_out = np_distance_outer_mask(m, start, delta)
  terms = []
  for i in range(b):
    if m[i].sum() == 0:
      continue
    l_in = -min((m[i] * up[i]).sum() / m[i].sum(), tau)
    l_out = (m_out[i] * up[i]).sum() / m_out[i].sum()
    terms.append(l_in + lam * l_out)
  np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)


def test_distance_outer_mask_under_jit_and_vmap():
  rng = np.random.default_rng(22)
  m = random_soft_blob_masks(rng, 6, 12, 17)
  m[4] = 0.0
  expected = np_distance_outer_mask(m, 1.0, 0.1)

  jitted = jax.jit(lambda x: losses.distance_outer_mask(x, start=1.0, delta=0.1))
  np.testing.assert_allclose(jitted(m), expected, rtol=1e-6)
  # start and delta may be traced too.
  traced = jax.jit(lambda x, s, d: losses.distance_outer_mask(x, start=s, delta=d))
  np.testing.assert_allclose(traced(m, 1.0, 0.1), expected, rtol=1e-6)

  stacked = m.reshape(2, 3, 12, 17)
  vmapped = jax.jit(jax.vmap(lambda x: losses.distance_outer_mask(x, start=1.0, delta=0.1)))
  np.testing.assert_allclose(vmapped(stacked), expected.reshape(2, 3, 12, 17), rtol=1e-6)
  per_delta = jax.vmap(lambda d: losses.distance_outer_mask(m, start=1.0, delta=d))
  np.testing.assert_allclose(
    per_delta(jnp.array([0.1, 0.2]))[1], np_distance_outer_mask(m, 1.0, 0.2), rtol=1e-6
  )


def test_distance_outer_mask_bfloat16_bool_and_int_masks_give_float32():
  rng = np.random.default_rng(23)
  m = random_multi_box_masks(rng, 3, 10, 14)
  expected = np_distance_outer_mask(m, 1.0, 0.1)
  for dtype in (jnp.bfloat16, bool, np.uint8, np.int32):
    got = losses.distance_outer_mask(jnp.asarray(m).astype(dtype), start=1.0, delta=0.1)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize(
  'shape,kwargs,match',
  [
    ((7, 7), {}, r'mask .*shape \(7, 7\)'),
    ((7,), {}, r'mask .*shape \(7,\)'),
    ((2, 7, 7), {'start': -1.0}, r'start must be .*>= 0, got -1\.0'),
    ((2, 7, 7), {'delta': -0.1}, r'delta must be .*>= 0, got -0\.1'),
    ((2, 7, 7), {'delta': float('nan')}, r'delta must be .*>= 0, got nan'),
    ((2, 7, 7), {'start': np.ones(2)}, r'start must be a scalar'),
  ],
)
def test_distance_outer_mask_rejects_bad_rank_and_negative_weights(shape, kwargs, match):
  kwargs = {'start': 1.0, 'delta': 0.1, **kwargs}
  with pytest.raises(ValueError, match=match):
    losses.distance_outer_mask(np.zeros(shape), **kwargs)


def test_distance_outer_mask_rejects_masks_outside_unit_range():
  m = np.zeros((1, 4, 4), np.float32)
  m[0, 1, 2] = 255.0
  with pytest.raises(ValueError, match=r'mask values must lie in \[0, 1\].*index \(0, 1, 2\)'):
    losses.distance_outer_mask(m, start=1.0, delta=0.1)


# Per (image, finding) pair: the multi-label CARE loss.


def _upsample(f, size):
  """Half-pixel bilinear upsampling, as jax.image.resize (an independent path)."""
  return np.asarray(jax.image.resize(jnp.asarray(f, jnp.float32), (size, size), 'bilinear'))


def _brute_force_pair_loss(f, m, tau, lam, outer=None):
  """L_in + lam L_out of one (image, finding) pair on the upsampled map, in numpy."""
  up = _upsample(f, m.shape[0]).astype(np.float64)
  outer = 1.0 - m if outer is None else outer
  inner = -min((m * up).sum() / m.sum(), tau) if m.sum() > 0 else 0.0
  out = (outer * up).sum() / outer.sum() if outer.sum() > 0 else 0.0
  return inner + lam * out


def _pairs(batch=3, classes=4, h=4, size=16, seed=3):
  rng = np.random.default_rng(seed)
  maps = rng.uniform(size=(batch, classes, h, h)).astype(np.float32)
  masks = np.zeros((batch, classes, size, size), np.float32)
  for b in range(batch):
    for k in range(classes):
      if rng.uniform() < 0.6:
        y0, x0 = rng.integers(0, size - 4, 2)
        masks[b, k, y0 : y0 + rng.integers(2, 8), x0 : x0 + rng.integers(2, 8)] = 1.0
  masks[0, 0] = 1.0  # A full mask: no outside.
  masks[1, 1] = 0.0  # An empty one.
  return maps, masks


def test_care_loss_per_image_and_finding_equals_the_brute_force_pair_losses():
  maps, masks = _pairs()
  has_mask = masks.sum((2, 3)) > 0
  has_mask[2, 3] = False  # A box that does not count (e.g. a negative finding).
  per_pair = losses.care_loss_per_example(maps, masks, tau=0.6, lam=0.7, has_mask=has_mask)
  assert per_pair.shape == (3, 4)
  expected = np.array(
    [
      [
        _brute_force_pair_loss(maps[b, k], masks[b, k], 0.6, 0.7) if has_mask[b, k] else 0.0
        for k in range(4)
      ]
      for b in range(3)
    ]
  )
  np.testing.assert_allclose(per_pair, expected, rtol=1e-5, atol=1e-6)
  mean = losses.care_loss(maps, masks, tau=0.6, lam=0.7, has_mask=has_mask)
  np.testing.assert_allclose(mean, expected[has_mask].mean(), rtol=1e-5)


def test_care_loss_per_pair_with_the_distance_outer_mask_equals_the_brute_force():
  maps, masks = _pairs(seed=4)
  outer = losses.distance_outer_mask(masks, start=1.0, delta=0.1)
  for b in range(masks.shape[0]):
    slice_outer = losses.distance_outer_mask(masks[b], start=1.0, delta=0.1)
    np.testing.assert_allclose(outer[b], slice_outer)
  got = losses.care_loss_per_example(maps, masks, tau=0.5, lam=0.7, outer_mask=outer)
  outer = np.asarray(outer)
  for b in range(masks.shape[0]):
    for k in range(masks.shape[1]):
      want = _brute_force_pair_loss(maps[b, k], masks[b, k], 0.5, 0.7, outer[b, k])
      if masks[b, k].sum() == 0:
        want = 0.0
      np.testing.assert_allclose(got[b, k], want, rtol=1e-5, atol=1e-6, err_msg=(b, k))


def test_care_loss_per_pair_gradient_is_finite_for_empty_and_full_masks():
  maps, masks = _pairs(seed=5)
  grads = jax.grad(lambda f: losses.care_loss(f, masks))(jnp.asarray(maps))
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(grads[1, 1], 0.0)  # The empty mask's map gets no gradient.


def test_care_loss_per_pair_rejects_mismatched_batch_shapes():
  with pytest.raises(ValueError, match=r'mask batch size \(2, 3\).*feature_map'):
    losses.care_loss(np.zeros((2, 4, 4, 4)), np.zeros((2, 3, 8, 8)))
  with pytest.raises(ValueError, match=r'has_mask must have shape \[2, 4\]'):
    losses.care_loss(np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 8, 8)), has_mask=np.ones(2, bool))
