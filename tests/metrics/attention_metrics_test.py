"""Attention quality against lesion boxes (mass inside, pointing game, IoU) against numpy, single-
label and per (image, finding), and its sums over batches and devices."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import metrics


def _np_bilinear_weights(n, big):
  """[big, n] weights of explicit bilinear interpolation, half-pixel centres."""
  weights = np.zeros((big, n))
  for i in range(big):
    centre = min(max((i + 0.5) * n / big - 0.5, 0.0), n - 1.0)  # clamp at the borders
    low = int(np.floor(centre))
    high = min(low + 1, n - 1)
    weights[i, low] += 1.0 - (centre - low)
    weights[i, high] += centre - low
  return weights


def _np_upsample_normalised(maps, big_h, big_w):
  maps = np.asarray(maps, np.float64)
  low = maps.min(axis=(1, 2), keepdims=True)
  span = maps.max(axis=(1, 2), keepdims=True) - low
  maps = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)
  ry = _np_bilinear_weights(maps.shape[1], big_h)
  rx = _np_bilinear_weights(maps.shape[2], big_w)
  return np.einsum('Hh,bhw,Ww->bHW', ry, maps, rx)


def _np_quality(maps, masks, threshold=0.5):
  """Per-image mass inside, pointing game, IoU and 'has a box' in float64."""
  up = _np_upsample_normalised(maps, *masks.shape[1:])
  inside = masks > 0.5
  out = {'mass_inside': [], 'pointing_game': [], 'iou': []}
  for b in range(len(maps)):
    total = up[b].sum()
    out['mass_inside'].append(up[b][inside[b]].sum() / total if total > 0 else inside[b].mean())
    # A hit needs every maximal pixel in the box (clamped borders make ties).
    out['pointing_game'].append(float(inside[b][up[b] == up[b].max()].all()))
    region = up[b] >= threshold * up[b].max()
    out['iou'].append((region & inside[b]).sum() / (region | inside[b]).sum())
  return {k: np.array(v) for k, v in out.items()}, inside.any(axis=(1, 2))


def _random_boxes(rng, batch, height, width):
  masks = np.zeros((batch, height, width), np.float32)
  for b in range(batch):
    y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
    y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
    masks[b, y0:y1, x0:x1] = 1.0
  return masks


@pytest.mark.parametrize(
  'seed,small,big',
  [
    (0, (7, 7), (28, 28)),  # integer factor (224 / 7 in the paper)
    (1, (5, 6), (20, 21)),  # non-square, non-integer factor
    (2, (8, 8), (8, 8)),  # masks at map resolution: no resize
    (3, (2, 3), (17, 13)),
  ],
)
def test_attention_quality_matches_numpy_reference(seed, small, big):
  rng = np.random.default_rng(seed)
  maps = rng.normal(size=(16, *small)).astype(np.float32)  # raw maps: normalised inside
  masks = _random_boxes(rng, 16, *big)
  expected, _ = _np_quality(maps, masks, threshold=0.4)
  got = jax.jit(functools.partial(metrics.attention_quality, threshold=0.4))(maps, masks)
  for key in ('mass_inside', 'pointing_game', 'iou'):
    assert got[key].dtype == jnp.float32
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert got['valid'].all()
  # Not a trivial reference: the values spread.
  assert np.ptp(expected['mass_inside']) > 0.05 and np.ptp(expected['iou']) > 0.05


def test_mass_inside_is_invariant_to_an_affine_rescale_of_the_map():
  rng = np.random.default_rng(4)
  maps = rng.normal(size=(4, 7, 7)).astype(np.float32)
  masks = _random_boxes(rng, 4, 56, 56)
  np.testing.assert_allclose(
    metrics.attention_mass_inside(3.0 * maps - 2.0, masks),
    metrics.attention_mass_inside(maps, masks),
    rtol=1e-5,
  )


def test_attention_quality_of_a_peak_inside_and_outside_the_box():
  maps = np.zeros((2, 7, 7), np.float32)
  maps[0, 3, 3] = 1.0  # peak in the box
  maps[1, 0, 6] = 1.0  # peak in a far corner
  masks = np.zeros((2, 28, 28), np.float32)
  masks[:, 8:20, 8:20] = 1.0
  q = metrics.attention_quality(maps, masks)
  np.testing.assert_array_equal(q['pointing_game'], [1.0, 0.0])
  # The peak's upsampled support (cells 2..4 -> pixels 10..17) lies in the box.
  np.testing.assert_allclose(q['mass_inside'], [1.0, 0.0], atol=1e-6)
  # Weights of cell 3 on pixels 12..15: .625, .875, .875, .625; products of
  # two reach half the peak (.875^2 / 2) on those 4 x 4 pixels, in the 12 x 12 box.
  np.testing.assert_allclose(q['iou'], [16 / 144, 0.0], rtol=1e-6)


def test_constant_map_is_uniform_attention_and_never_wins_the_pointing_game():
  masks = np.zeros((2, 16, 16), np.float32)
  masks[0, 2:6, 4:12] = 1.0  # 32 of 256 pixels
  masks[1] = 1.0  # full mask
  q = metrics.attention_quality(np.full((2, 4, 4), 0.3, np.float32), masks)
  np.testing.assert_allclose(q['mass_inside'], [32 / 256, 1.0])
  np.testing.assert_allclose(q['iou'], [32 / 256, 1.0])  # the whole image is selected
  np.testing.assert_array_equal(q['pointing_game'], [0.0, 1.0])  # ties miss; nothing outside
  assert np.isfinite(q['mass_inside']).all() and q['valid'].all()


def test_full_mask_holds_all_the_mass_and_the_maximum():
  rng = np.random.default_rng(5)
  maps = rng.normal(size=(3, 7, 7)).astype(np.float32)
  masks = np.ones((3, 14, 14), np.float32)
  q = metrics.attention_quality(maps, masks, threshold=0.5)
  np.testing.assert_allclose(q['mass_inside'], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(q['pointing_game'], 1.0)
  up = _np_upsample_normalised(maps, 14, 14)
  selected = (up >= 0.5 * up.max(axis=(1, 2), keepdims=True)).mean(axis=(1, 2))
  np.testing.assert_allclose(q['iou'], selected, rtol=1e-6)


def test_empty_masks_and_invalid_rows_are_excluded():
  rng = np.random.default_rng(6)
  maps = rng.normal(size=(4, 7, 7)).astype(np.float32)
  masks = _random_boxes(rng, 4, 28, 28)
  masks[1] = 0.0
  q = metrics.attention_quality(maps, masks, valid=np.array([True, True, True, False]))
  np.testing.assert_array_equal(q['valid'], [True, False, True, False])
  assert q['mass_inside'][1] == q['pointing_game'][1] == q['iou'][1] == 0.0


def test_attention_metrics_accumulate_means_over_batches():
  rng = np.random.default_rng(7)
  maps = rng.normal(size=(20, 7, 7)).astype(np.float32)
  masks = _random_boxes(rng, 20, 28, 28)
  masks[[3, 11]] = 0.0  # no box: excluded
  valid = np.arange(20) < 18  # two padding rows
  expected, has_box = _np_quality(maps, masks)
  counted = has_box & valid
  from_batch = jax.jit(metrics.AttentionMetrics.from_batch)
  total = metrics.AttentionMetrics.empty()
  for s in (slice(0, 8), slice(8, 16), slice(16, 20)):
    total = total.merge(jax.device_get(from_batch(maps[s], masks[s], valid=valid[s])))
  got = total.compute()
  assert got['num_images'] == counted.sum() == 16
  for key in ('mass_inside', 'pointing_game', 'iou'):
    assert got[key] == pytest.approx(expected[key][counted].mean(), rel=1e-5), key


def test_attention_metrics_without_images_have_no_means():
  got = metrics.AttentionMetrics.from_batch(np.ones((2, 2, 2)), np.zeros((2, 4, 4))).compute()
  assert got == {'mass_inside': None, 'pointing_game': None, 'iou': None, 'num_images': 0}


def test_attention_metrics_sum_over_pmap_devices():
  rng = np.random.default_rng(8)
  n = jax.local_device_count()
  maps = rng.normal(size=(n, 2, 7, 7)).astype(np.float32)
  masks = _random_boxes(rng, 2 * n, 14, 14).reshape(n, 2, 14, 14)
  summed = jax.pmap(
    lambda f, m: jax.lax.psum(metrics.AttentionMetrics.from_batch(f, m), 'i'), axis_name='i'
  )(maps, masks)
  expected = metrics.AttentionMetrics.from_batch(maps.reshape(-1, 7, 7), masks.reshape(-1, 14, 14))
  for got, want in zip(summed, expected):
    np.testing.assert_allclose(got[0], want, rtol=1e-5)


def test_attention_quality_bad_arguments_raise():
  maps = np.zeros((2, 7, 7))
  with pytest.raises(ValueError, match='masks must have shape'):
    metrics.attention_quality(maps, np.zeros((3, 14, 14)))
  with pytest.raises(ValueError, match='at least the maps'):
    metrics.attention_quality(maps, np.zeros((2, 4, 14)))
  with pytest.raises(ValueError, match='maps must have shape'):
    metrics.attention_quality(np.zeros((2, 7)), np.zeros((2, 14, 14)))
  with pytest.raises(ValueError, match='threshold'):
    metrics.attention_iou(maps, np.zeros((2, 14, 14)), threshold=1.5)
  with pytest.raises(ValueError, match='valid must have shape'):
    metrics.attention_quality(maps, np.zeros((2, 14, 14)), valid=np.ones(3, bool))


# Per-finding attention quality --------------------------------------------------------


def _boxes(rng, shape, fill=0.8):
  """[B, K, H, W] masks with one random box per (image, finding), a share of them empty."""
  masks = np.zeros(shape, np.float32)
  for b in range(shape[0]):
    for k in range(shape[1]):
      if rng.random() < fill:
        y0, x0 = rng.integers(0, shape[2] - 2), rng.integers(0, shape[3] - 2)
        y1, x1 = rng.integers(y0 + 1, shape[2] + 1), rng.integers(x0 + 1, shape[3] + 1)
        masks[b, k, y0:y1, x0:x1] = 1.0
  return masks


FIELDS = ('mass_inside', 'pointing_game', 'iou')


def test_per_finding_sums_equal_the_single_label_form_finding_by_finding():
  rng = np.random.default_rng(10)
  b, k = 12, 4
  maps = rng.normal(size=(b, k, 7, 7)).astype(np.float32)
  masks = _boxes(rng, (b, k, 28, 28))
  valid = rng.random((b, k)) < 0.7
  valid[:, 3] = False  # a finding with no boxed image in the batch
  got = jax.jit(metrics.AttentionMetrics.from_batch_per_class, static_argnames='threshold')(
    maps, masks, valid, threshold=0.4
  )
  assert np.shape(got.num_images) == (k,) and np.shape(got.iou) == (k,)
  for finding in range(k):
    alone = metrics.AttentionMetrics.from_batch(
      maps[:, finding], masks[:, finding], threshold=0.4, valid=valid[:, finding]
    )
    assert int(got.num_images[finding]) == int(alone.num_images)
    for field in FIELDS:
      np.testing.assert_allclose(
        getattr(got, field)[finding], getattr(alone, field), rtol=1e-6, atol=1e-7
      )
  counted = valid & masks.any(axis=(2, 3))
  np.testing.assert_array_equal(got.num_images, counted.sum(0))
  assert got.num_images[3] == 0 and got.num_images[:3].min() > 0


def test_per_finding_means_over_batches_and_over_findings():
  rng = np.random.default_rng(11)
  n, k = 30, 3
  maps = rng.normal(size=(n, k, 5, 6)).astype(np.float32)
  masks = _boxes(rng, (n, k, 20, 21), fill=0.6)
  valid = rng.random((n, k)) < 0.8
  valid[-4:] = False  # padding rows
  valid[:, 2] = False  # a finding never boxed: no means, left out of the mean over findings
  from_batch = jax.jit(metrics.AttentionMetrics.from_batch_per_class)
  total = metrics.AttentionMetrics.empty(num_classes=k)
  for s in (slice(0, 12), slice(12, 24), slice(24, 30)):
    total = total.merge(jax.device_get(from_batch(maps[s], masks[s], valid[s])))
  # The same from scalar zeros: the per-finding sums broadcast onto them.
  also = metrics.AttentionMetrics.empty().merge(from_batch(maps, masks, valid))
  names = ['a', 'b', 'c']
  got = total.compute_per_class(names)
  np.testing.assert_allclose(
    [also.compute_per_class(names)[f] for f in FIELDS], [got[f] for f in FIELDS], rtol=1e-5
  )
  # An independent loop: the single-label metrics of each finding's rows.
  per_finding = []
  for finding, name in enumerate(names):
    single = metrics.AttentionMetrics.empty()
    for s in (slice(0, 10), slice(10, 30)):
      single = single.merge(
        metrics.AttentionMetrics.from_batch(
          maps[s, finding], masks[s, finding], valid=valid[s, finding]
        )
      )
    expected = single.compute()
    assert got['per_class'][name]['num_images'] == expected['num_images']
    for field in FIELDS:
      if expected['num_images']:
        assert got['per_class'][name][field] == pytest.approx(expected[field], rel=1e-5)
      else:
        assert got['per_class'][name][field] is None
    if expected['num_images']:
      per_finding.append(expected)
  assert got['per_class']['c']['num_images'] == 0 and len(per_finding) == 2
  assert got['num_findings'] == 2
  assert got['num_images'] == sum(e['num_images'] for e in per_finding)
  for field in FIELDS:
    assert got[field] == pytest.approx(np.mean([e[field] for e in per_finding]), rel=1e-5)
  json.dumps(got, allow_nan=False)


def test_masked_out_pairs_count_nowhere():
  rng = np.random.default_rng(12)
  maps = rng.normal(size=(6, 3, 7, 7)).astype(np.float32)
  masks = _boxes(rng, (6, 3, 14, 14), fill=1.0)
  valid = rng.random((6, 3)) < 0.5
  step = jax.jit(metrics.AttentionMetrics.from_batch_per_class)
  before = step(maps, masks, valid)
  # Anything in the masked-out pairs: other maps, other boxes.
  maps[~valid] = rng.normal(size=maps[~valid].shape)
  masks[~valid] = 1.0 - masks[~valid]
  after = step(maps, masks, valid)
  for x, y in zip(before, after):
    np.testing.assert_array_equal(x, y)
  # Without valid, every non-empty box counts.
  np.testing.assert_array_equal(step(maps, masks).num_images, masks.any(axis=(2, 3)).sum(0))


def test_no_boxed_pairs_have_no_means():
  got = metrics.AttentionMetrics.from_batch_per_class(
    np.ones((2, 2, 2, 2)), np.zeros((2, 2, 4, 4))
  ).compute_per_class(['a', 'b'])
  assert got['mass_inside'] is got['pointing_game'] is got['iou'] is None
  assert got['num_images'] == got['num_findings'] == 0
  assert got['per_class']['a'] == {
    'mass_inside': None,
    'pointing_game': None,
    'iou': None,
    'num_images': 0,
  }


def test_a_single_finding_equals_the_single_label_metrics():
  rng = np.random.default_rng(13)
  maps = rng.normal(size=(8, 1, 7, 7)).astype(np.float32)
  masks = _boxes(rng, (8, 1, 28, 28))
  got = metrics.AttentionMetrics.from_batch_per_class(maps, masks).compute_per_class(['x'])
  expected = metrics.AttentionMetrics.from_batch(maps[:, 0], masks[:, 0]).compute()
  assert got['per_class']['x'] == pytest.approx(expected, rel=1e-6)
  assert {f: got[f] for f in (*FIELDS, 'num_images')} == pytest.approx(expected, rel=1e-6)


def test_per_finding_sums_psum_over_pmap_devices():
  rng = np.random.default_rng(14)
  n = jax.local_device_count()
  maps = rng.normal(size=(n, 2, 3, 7, 7)).astype(np.float32)
  masks = _boxes(rng, (2 * n, 3, 14, 14)).reshape(n, 2, 3, 14, 14)
  summed = jax.pmap(
    lambda f, m: jax.lax.psum(metrics.AttentionMetrics.from_batch_per_class(f, m), 'i'),
    axis_name='i',
  )(maps, masks)
  expected = metrics.AttentionMetrics.from_batch_per_class(
    maps.reshape(-1, 3, 7, 7), masks.reshape(-1, 3, 14, 14)
  )
  for got, want in zip(summed, expected):
    np.testing.assert_allclose(got[0], want, rtol=1e-5)


def test_per_finding_attention_bad_arguments_raise():
  maps, masks = np.zeros((2, 3, 7, 7)), np.zeros((2, 3, 14, 14))
  with pytest.raises(ValueError, match=r'maps must have shape \[B, K, h, w\]'):
    metrics.AttentionMetrics.from_batch_per_class(maps[:, 0], masks)
  with pytest.raises(ValueError, match=r'masks must have shape \[B, K, H, W\]'):
    metrics.AttentionMetrics.from_batch_per_class(maps, masks[:, :2])
  with pytest.raises(ValueError, match=r'masks must have shape \[B, K, H, W\]'):
    metrics.AttentionMetrics.from_batch_per_class(maps, masks[:, 0])
  with pytest.raises(ValueError, match='at least the maps'):
    metrics.AttentionMetrics.from_batch_per_class(maps, np.zeros((2, 3, 4, 14)))
  with pytest.raises(ValueError, match=r'valid must have shape \[B, K\]'):
    metrics.AttentionMetrics.from_batch_per_class(maps, masks, np.ones(2, bool))
  with pytest.raises(ValueError, match='threshold'):
    metrics.AttentionMetrics.from_batch_per_class(maps, masks, threshold=-0.1)
  per_class = metrics.AttentionMetrics.from_batch_per_class(maps, masks)
  with pytest.raises(ValueError, match='compute_per_class'):
    per_class.compute()
  with pytest.raises(ValueError, match='len\\(class_names\\) = 2'):
    per_class.compute_per_class(['a', 'b'])
  with pytest.raises(ValueError, match='len\\(class_names\\) = 1'):
    metrics.AttentionMetrics.empty().compute_per_class(['a'])
  with pytest.raises(ValueError, match='num_classes'):
    metrics.AttentionMetrics.empty(num_classes=0)


@pytest.mark.parametrize('seed,small,big', [(1, (5, 6), (20, 21))])
def test_energy_in_box_is_the_positive_upsampled_attribution_share_in_the_box(seed, small, big):
  rng = np.random.default_rng(seed)
  maps = rng.normal(size=(4, *small)).astype(np.float32)
  masks = _random_boxes(rng, 4, *big)
  ry, rx = (_np_bilinear_weights(n, b) for n, b in zip(small, big))
  energy = np.maximum(np.einsum('Hh,bhw,Ww->bHW', ry, maps.astype(np.float64), rx), 0.0)
  expected = (energy * masks).sum(axis=(1, 2)) / energy.sum(axis=(1, 2))
  got = metrics.energy_in_box(maps, masks)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
  # Raw attributions: a positive scale keeps the share, negative evidence counts for nothing.
  np.testing.assert_allclose(np.asarray(metrics.energy_in_box(3.0 * maps, masks)), got, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(metrics.energy_in_box(-np.abs(maps), masks)), 0.0)
  with pytest.raises(ValueError, match=r'maps must have shape \[B, h, w\]'):
    metrics.energy_in_box(maps[0], masks[0])
