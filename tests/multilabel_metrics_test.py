"""Multi-label metrics: scores against scikit-learn, per-finding attention against single-label."""

import json

import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from care_jax import metrics

NAMES = ['atelectasis', 'effusion', 'mass', 'nodule', 'pneumothorax']


def _multilabel(seed, n=300, prevalence=(0.4, 0.25, 0.1, 0.05, 0.02), ties=False):
  """[N, K] sigmoid probabilities that follow the labels, and 0/1 int labels."""
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, len(prevalence))) < np.asarray(prevalence)).astype(np.int64)
  logits = rng.normal(size=labels.shape) + 1.2 * labels - 0.8
  if ties:  # Coarse scores: many equal probabilities in every column.
    logits = np.round(2 * logits) / 2
  return (1 / (1 + np.exp(-logits))).astype(np.float32), labels


def _check_against_sklearn(result, probabilities, labels, names, rare=()):
  """Every per-finding and mean score of `result` against scikit-learn on the same rows."""
  probabilities = probabilities.astype(np.float64)
  defined_auroc, defined_ap = [], []
  for k, name in enumerate(names):
    column, truth = probabilities[:, k], labels[:, k]
    assert result['positives'][name] == truth.sum()
    if 0 < truth.sum() < len(truth):
      assert result['auroc'][name] == pytest.approx(skm.roc_auc_score(truth, column), abs=1e-12)
      defined_auroc.append(k)
    else:
      assert result['auroc'][name] is None, name
    if truth.sum():
      assert result['ap'][name] == pytest.approx(
        skm.average_precision_score(truth, column), abs=1e-12
      )
      defined_ap.append(k)
    else:
      assert result['ap'][name] is None, name
  assert result['num_auroc_undefined'] == len(names) - len(defined_auroc)
  assert result['num_ap_undefined'] == len(names) - len(defined_ap)
  if defined_auroc:
    macro = skm.roc_auc_score(
      labels[:, defined_auroc], probabilities[:, defined_auroc], average='macro'
    )
    assert result['mean_auroc'] == pytest.approx(macro, abs=1e-12)
  else:
    assert result['mean_auroc'] is None
  if defined_ap:
    macro_ap = skm.average_precision_score(
      labels[:, defined_ap], probabilities[:, defined_ap], average='macro'
    )
    assert result['mean_ap'] == pytest.approx(macro_ap, abs=1e-12)
  else:
    assert result['mean_ap'] is None
  predicted = (probabilities >= 0.5).astype(np.int64)
  # Column by column: scikit-learn takes a [N, 1] indicator for a binary problem.
  recall = np.array(
    [skm.recall_score(t, p, zero_division=0) for t, p in zip(labels.T, predicted.T)]
  )
  precision = np.array(
    [skm.precision_score(t, p, zero_division=0) for t, p in zip(labels.T, predicted.T)]
  )
  if labels.shape[1] > 1:  # and as one multi-label call
    np.testing.assert_allclose(
      recall, skm.recall_score(labels, predicted, average=None, zero_division=0)
    )
  np.testing.assert_allclose([result['recall'][n] for n in names], recall, atol=1e-12)
  np.testing.assert_allclose([result['precision'][n] for n in names], precision, atol=1e-12)
  rare_present = [k for k in rare if labels[:, k].any()]
  if rare_present:
    assert result['rare_recall'] == pytest.approx(np.mean(recall[rare_present]), abs=1e-12)
  else:
    assert result['rare_recall'] is None
  rare_defined = [k for k in rare if k in defined_auroc]
  if rare_defined:
    rare_macro = skm.roc_auc_score(
      labels[:, rare_defined], probabilities[:, rare_defined], average='macro'
    )
    assert result['rare_mean_auroc'] == pytest.approx(rare_macro, abs=1e-12)
  else:
    assert result['rare_mean_auroc'] is None
  assert result['num_examples'] == len(labels)
  json.dumps(result, allow_nan=False)  # JSON-ready: no numpy types, no NaN.


@pytest.mark.parametrize('seed, ties', [(0, False), (1, True), (2, True)])
def test_multilabel_scores_equal_scikit_learn(seed, ties):
  probabilities, labels = _multilabel(seed, ties=ties)
  if ties:
    # Ties within a column, including across positives and negatives.
    assert len(np.unique(probabilities[:, 0])) < len(probabilities) // 10
  result = metrics.multilabel_score_metrics(probabilities, labels, NAMES, rare_classes=[3, 4])
  assert list(result['auroc']) == NAMES
  _check_against_sklearn(result, probabilities, labels, NAMES, rare=[3, 4])
  # Not a trivial comparison: the scores spread and every finding is defined.
  assert result['num_auroc_undefined'] == 0 and np.ptp(list(result['auroc'].values())) > 0.01
  assert 0 < result['rare_recall'] < 1


def test_findings_with_only_negatives_or_only_positives_are_left_out_of_the_means():
  probabilities, labels = _multilabel(3, n=120)
  labels[:, 1] = 0  # no positives: no AUROC, no AP
  labels[:, 4] = 1  # no negatives: no AUROC, AP of 1
  result = metrics.multilabel_score_metrics(probabilities, labels, NAMES, rare_classes=[1, 3, 4])
  assert result['auroc']['effusion'] is None and result['auroc']['pneumothorax'] is None
  assert result['ap']['effusion'] is None and result['ap']['pneumothorax'] == 1.0
  assert result['num_auroc_undefined'] == 2 and result['num_ap_undefined'] == 1
  assert result['positives']['effusion'] == 0 and result['positives']['pneumothorax'] == 120
  # Only 'nodule' of the rare findings has an AUROC; 'effusion' has no recall to average.
  assert result['rare_mean_auroc'] == result['auroc']['nodule']
  assert result['recall']['effusion'] == 0.0
  _check_against_sklearn(result, probabilities, labels, NAMES, rare=[1, 3, 4])

  # Rare findings none of which has an AUROC or a positive.
  none_rare = metrics.multilabel_score_metrics(probabilities, labels, NAMES, rare_classes=[1])
  assert none_rare['rare_mean_auroc'] is None and none_rare['rare_recall'] is None
  assert metrics.multilabel_score_metrics(probabilities, labels, NAMES)['rare_recall'] is None


def test_padding_rows_count_nowhere():
  probabilities, labels = _multilabel(4, n=200)
  valid = np.random.default_rng(4).random(200) < 0.7
  # The padding rows hold what would change every metric: the only positives of
  # finding 0 among them, extreme scores, labels outside any real row.
  labels[~valid, 0] = 1
  labels[valid, 0] = 0
  probabilities[~valid] = 0.999
  result = metrics.multilabel_score_metrics(
    probabilities, labels, NAMES, valid=valid, rare_classes=[3, 4]
  )
  assert result['num_examples'] == valid.sum()
  assert result['auroc']['atelectasis'] is None and result['positives']['atelectasis'] == 0
  _check_against_sklearn(result, probabilities[valid], labels[valid], NAMES, rare=[3, 4])
  unpadded = metrics.multilabel_score_metrics(
    probabilities[valid], labels[valid], NAMES, rare_classes=[3, 4]
  )
  assert result == unpadded


def test_no_counted_rows_define_nothing():
  probabilities, labels = _multilabel(5, n=8)
  result = metrics.multilabel_score_metrics(
    probabilities, labels, NAMES, valid=np.zeros(8, bool), rare_classes=[4]
  )
  assert result['mean_auroc'] is result['mean_ap'] is result['rare_recall'] is None
  assert result['num_auroc_undefined'] == result['num_ap_undefined'] == len(NAMES)
  assert result['num_examples'] == 0 and set(result['recall'].values()) == {0.0}
  json.dumps(result, allow_nan=False)


def test_a_single_finding():
  probabilities, labels = _multilabel(6, prevalence=(0.2,))
  result = metrics.multilabel_score_metrics(probabilities, labels, ['nodule'], rare_classes=[0])
  _check_against_sklearn(result, probabilities, labels, ['nodule'], rare=[0])
  assert result['mean_auroc'] == result['rare_mean_auroc'] == result['auroc']['nodule']
  assert result['rare_recall'] == result['recall']['nodule']


def test_bool_and_float_labels_and_the_threshold():
  probabilities, labels = _multilabel(7)
  as_int = metrics.multilabel_score_metrics(probabilities, labels, NAMES)
  assert metrics.multilabel_score_metrics(probabilities, labels.astype(bool), NAMES) == as_int
  assert metrics.multilabel_score_metrics(probabilities, labels.astype(np.float32), NAMES) == as_int
  strict = metrics.multilabel_score_metrics(probabilities, labels, NAMES, threshold=0.8)
  predicted = (probabilities >= 0.8).astype(np.int64)
  np.testing.assert_allclose(
    [strict['recall'][n] for n in NAMES],
    skm.recall_score(labels, predicted, average=None, zero_division=0),
  )
  assert strict['auroc'] == as_int['auroc']  # threshold-free


def test_multilabel_score_metrics_bad_arguments_raise():
  probabilities, labels = _multilabel(8, n=10)
  with pytest.raises(ValueError, match=r'must both be \[N, K\]'):
    metrics.multilabel_score_metrics(probabilities, labels[:, 0], NAMES)
  with pytest.raises(ValueError, match=r'must both be \[N, K\]'):
    metrics.multilabel_score_metrics(probabilities[:, 0], labels[:, 0], NAMES)
  with pytest.raises(ValueError, match=r'must both be \[N, K\]'):
    metrics.multilabel_score_metrics(probabilities, labels[:9], NAMES)
  with pytest.raises(ValueError, match='5 findings, class_names 4'):
    metrics.multilabel_score_metrics(probabilities, labels, NAMES[:4])
  with pytest.raises(ValueError, match='labels must be 0/1'):
    metrics.multilabel_score_metrics(probabilities, labels * 2, NAMES)
  with pytest.raises(ValueError, match=r'valid must have shape \[N\]'):
    metrics.multilabel_score_metrics(probabilities, labels, NAMES, valid=np.ones((10, 5), bool))
  with pytest.raises(ValueError, match='rare_classes'):
    metrics.multilabel_score_metrics(probabilities, labels, NAMES, rare_classes=[5])
  with pytest.raises(ValueError, match='threshold'):
    metrics.multilabel_score_metrics(probabilities, labels, NAMES, threshold=1.5)


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
