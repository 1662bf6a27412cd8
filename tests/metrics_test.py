"""Metrics against scikit-learn on random predictions; attention quality against numpy."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from care_jax import metrics


@pytest.mark.parametrize('seed', range(5))
def test_confusion_matrix_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  k = 5
  labels = rng.integers(0, k, 200)
  preds = rng.integers(0, k, 200)
  got = jax.jit(metrics.confusion_matrix, static_argnames='num_classes')(
    labels, preds, num_classes=k
  )
  np.testing.assert_array_equal(got, skm.confusion_matrix(labels, preds, labels=range(k)))


def test_confusion_matrix_ignores_padding_rows():
  labels = np.array([0, 1, 2, 0])
  preds = np.array([0, 2, 2, 1])
  valid = np.array([True, True, False, False])
  got = metrics.confusion_matrix(labels, preds, num_classes=3, valid=valid)
  np.testing.assert_array_equal(got, skm.confusion_matrix(labels[:2], preds[:2], labels=range(3)))


def test_confusion_matrices_of_batches_sum_to_the_whole():
  rng = np.random.default_rng(0)
  labels, preds = rng.integers(0, 4, 96), rng.integers(0, 4, 96)
  total = sum(
    metrics.confusion_matrix(labels[i : i + 32], preds[i : i + 32], num_classes=4)
    for i in range(0, 96, 32)
  )
  np.testing.assert_array_equal(total, metrics.confusion_matrix(labels, preds, num_classes=4))


@pytest.mark.parametrize('seed', range(5))
def test_classification_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  k = 6
  # Imbalanced labels with a rare class, and biased predictions.
  labels = rng.choice(k, size=300, p=[0.4, 0.3, 0.15, 0.1, 0.04, 0.01])
  preds = np.where(rng.random(300) < 0.6, labels, rng.integers(0, k, 300))
  conf = skm.confusion_matrix(labels, preds, labels=range(k))
  names = [f'c{i}' for i in range(k)]
  m = metrics.classification_metrics(conf, class_names=names, rare_classes=[4, 5])
  assert m['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds))
  assert m['mca'] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
  recall = skm.recall_score(labels, preds, labels=range(k), average=None, zero_division=0)
  precision = skm.precision_score(labels, preds, labels=range(k), average=None, zero_division=0)
  np.testing.assert_allclose([m['recall'][n] for n in names], recall)
  np.testing.assert_allclose([m['precision'][n] for n in names], precision)
  present = [c for c in (4, 5) if (labels == c).any()]
  assert m['rare_recall'] == pytest.approx(np.mean(recall[present]))
  assert m['confusion'] == conf.tolist()
  assert m['num_examples'] == 300


def test_mca_skips_classes_absent_from_labels_like_sklearn():
  labels = np.array([0, 0, 1, 1])
  preds = np.array([0, 2, 1, 2])  # class 2 is predicted but never true
  conf = skm.confusion_matrix(labels, preds, labels=range(3))
  with pytest.warns(UserWarning):
    expected = skm.balanced_accuracy_score(labels, preds)
  m = metrics.classification_metrics(conf, class_names=['a', 'b', 'c'], rare_classes=[2])
  assert m['mca'] == pytest.approx(expected)
  assert m['recall']['c'] == 0.0
  assert m['rare_recall'] is None  # no rare example to measure recall on


def test_single_class():
  m = metrics.classification_metrics([[7]], class_names=['only'], rare_classes=[0])
  assert m['accuracy'] == m['mca'] == m['rare_recall'] == 1.0


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='confusion must be'):
    metrics.classification_metrics(np.zeros((2, 3)), class_names=['a', 'b'])
  with pytest.raises(ValueError, match='rare_classes'):
    metrics.classification_metrics(np.zeros((2, 2)), class_names=['a', 'b'], rare_classes=[2])
  with pytest.raises(ValueError, match='labels and predictions'):
    metrics.confusion_matrix(jnp.zeros(3, int), jnp.zeros(4, int), num_classes=2)


# Attention quality -------------------------------------------------------------


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


# Scores: AUROC, AP, calibration (against scikit-learn and a direct numpy ECE) -------------------


def _scores(seed, n=200, k=4, ties=False):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
  if ties:  # Coarse probabilities: many equal scores.
    logits = np.round(logits)
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return probabilities.astype(np.float32), labels


@pytest.mark.parametrize('seed, ties', [(0, False), (1, True), (2, True)])
def test_auroc_and_ap_equal_scikit_learn(seed, ties):
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top

  probabilities, labels = _scores(seed, ties=ties)
  names = ['a', 'b', 'c', 'd']
  result = metrics.score_metrics(probabilities, labels, class_names=names)
  for k, name in enumerate(names):
    positive = labels == k
    assert abs(result['auroc'][name] - sk.roc_auc_score(positive, probabilities[:, k])) < 1e-6
    ap = sk.average_precision_score(positive, probabilities[:, k])
    assert abs(result['ap'][name] - ap) < 1e-6
  macro = sk.roc_auc_score(
    labels, probabilities.astype(np.float64), multi_class='ovr', average='macro'
  )
  assert abs(result['macro_auroc'] - macro) < 1e-6


def test_ece_equals_a_direct_computation_over_15_bins():
  probabilities, labels = _scores(3)
  confidence = probabilities.max(1).astype(np.float64)
  correct = probabilities.argmax(1) == labels
  ece = 0.0
  for b in range(15):
    inside = (confidence > b / 15) & (confidence <= (b + 1) / 15)
    if inside.any():
      ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
  result = metrics.calibration(probabilities, labels)
  assert abs(result['ece'] - ece) < 1e-6
  assert sum(result['bins']['count']) == len(labels) and len(result['bins']['count']) == 15


def test_score_metrics_of_absent_classes_and_no_examples():
  probabilities = np.array([[0.7, 0.3, 0.0], [0.2, 0.8, 0.0]], np.float32)
  result = metrics.score_metrics(probabilities, [0, 0], class_names=['a', 'b', 'c'])
  assert result['auroc'] == {'a': None, 'b': None, 'c': None}  # One class only: no negatives.
  assert result['ap']['a'] == 1.0 and result['ap']['b'] is None
  assert result['macro_auroc'] is None
  empty = metrics.calibration(np.zeros((0, 3)), np.zeros(0, int))
  assert empty['ece'] is None and empty['bins']['count'] == [0] * 15
  with pytest.raises(ValueError, match='labels must lie in'):
    metrics.score_metrics(probabilities, [0, 3], class_names=['a', 'b', 'c'])
  with pytest.raises(ValueError, match=r'probabilities must be \[N, K\]'):
    metrics.calibration(probabilities[0], [0])


def test_the_package_re_exports_the_public_names_of_its_modules():
  owners = [
    importlib.import_module(f'care_jax.metrics.{module}')
    for module in ('classification', 'scores', 'attention_metrics')
  ]
  exported = [name for module in owners for name in module.__all__]
  assert sorted(exported) == sorted(metrics.__all__)
  for module in owners:
    for name in module.__all__:
      assert getattr(metrics, name) is getattr(module, name), name
  assert callable(metrics.attention_quality) and metrics.attention_quality.__name__ == (
    'attention_quality'
  )
