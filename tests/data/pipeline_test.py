"""The tf.data pipeline and its batch contract: train_batches (shuffled, resumable, sharded over
processes, resampled, augmented) and eval_batches (each example once, padded, lesion masks).
The `config` fixture is a small synthetic_lesions dataset (tests/data/conftest.py)."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from care_jax.data import info as info_lib
from care_jax.data import pipeline
from care_jax.data import registry
from care_jax.data import synthetic_lesions as sl
from tests.helpers import data_fixtures as fx


def _normalise(image):
  return (image / 255.0 - np.array(fx.MEAN)) / np.array(fx.STD)


def _denormalise(image):
  pixels = (image * np.array(fx.STD) + np.array(fx.MEAN)) * 255.0
  return np.round(pixels).astype(np.uint8)


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_train_batch_contract(config):
  batch = next(pipeline.train_batches(config, batch_size=5, seed=0))
  assert set(batch) == {'image', 'label', 'mask', 'has_mask'}
  assert batch['image'].shape == (5, 32, 32, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (5,) and batch['label'].dtype == np.int32
  assert batch['mask'].shape == (5, 32, 32)
  assert batch['mask'].dtype == np.float32
  assert batch['has_mask'].shape == (5,) and batch['has_mask'].dtype == bool


def test_train_epoch_is_a_permutation_with_matching_labels_and_masks(config):
  raw = fx.raw_examples(config, 'train')
  by_image = {ex['image'].tobytes(): ex for ex in raw}
  # 32 examples: the first 4 batches of 8 are exactly one epoch.
  batches = _take(pipeline.train_batches(config, batch_size=8, seed=3), 4)
  seen = []
  for batch in batches:
    for row in range(8):
      key = _denormalise(batch['image'][row]).tobytes()
      assert key in by_image
      ex = by_image[key]
      seen.append(key)
      np.testing.assert_allclose(batch['image'][row], _normalise(ex['image']), atol=1e-6)
      assert batch['label'][row] == ex['label']
      np.testing.assert_array_equal(batch['mask'][row], fx.box_union_raster(ex['boxes'], 32))
      assert batch['has_mask'][row] == (len(ex['boxes']) > 0)
      assert batch['has_mask'][row] == (batch['mask'][row].sum() > 0)
  assert sorted(seen) == sorted(by_image)
  # Shuffled: not the stored order.
  labels = np.concatenate([b['label'] for b in batches])
  assert not np.array_equal(labels, [ex['label'] for ex in raw])


def test_same_seed_same_batches_other_seed_differs(config):
  a = _take(pipeline.train_batches(config, batch_size=6, seed=1), 7)
  b = _take(pipeline.train_batches(config, batch_size=6, seed=1), 7)
  c = _take(pipeline.train_batches(config, batch_size=6, seed=2), 7)
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x['image'], y['image']) for x, y in zip(a, c))


def test_start_step_resumes_the_fresh_sequence(config):
  # 32 / 6: batches 5 and 6 straddle the first epoch end.
  fresh = _take(pipeline.train_batches(config, batch_size=6, seed=4), 9)
  resumed = _take(pipeline.train_batches(config, batch_size=6, seed=4, start_step=4), 5)
  _assert_batches_equal(resumed, fresh[4:])


def test_process_slices_make_up_the_global_batch(config):
  kwargs = dict(seed=5, start_step=2)
  single = _take(pipeline.train_batches(config, batch_size=6, **kwargs), 6)
  parts = [
    _take(
      pipeline.train_batches(config, batch_size=3, process_index=i, process_count=2, **kwargs), 6
    )
    for i in range(2)
  ]
  for step, global_batch in enumerate(single):
    for key, value in global_batch.items():
      np.testing.assert_array_equal(
        np.concatenate([parts[0][step][key], parts[1][step][key]]), value
      )


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(batch_size=0), 'batch_size'),
    (dict(batch_size=2, start_step=-1), 'start_step'),
    (dict(batch_size=2, process_index=2, process_count=2), 'process_index'),
  ],
)
def test_train_bad_arguments_raise(config, kwargs, message):
  with pytest.raises(ValueError, match=message):
    pipeline.train_batches(config, seed=0, **kwargs)


def test_eval_covers_each_example_once_normalised_with_padding(config):
  raw = fx.raw_examples(config, 'test')  # 15 examples -> 4 batches of 4, 1 padding row.
  batches = list(pipeline.eval_batches(config, 'test', batch_size=4))
  assert len(batches) == 4
  assert set(batches[0]) == {
    'image',
    'label',
    'mask',
    'has_mask',
    'valid',
    'lesion_mask',
    'has_lesion_mask',
  }
  assert batches[0]['valid'].dtype == bool
  stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  np.testing.assert_array_equal(stacked['valid'], np.arange(16) < 15)
  for row, ex in enumerate(raw):
    np.testing.assert_allclose(stacked['image'][row], _normalise(ex['image']), rtol=1e-6, atol=1e-6)
    assert stacked['label'][row] == ex['label']
  # Test images carry no boxes; the padding row is all zeros.
  assert not stacked['has_mask'].any() and not stacked['mask'].any()
  assert stacked['label'][15] == 0 and not stacked['image'][15].any()


def test_eval_process_shards_cover_the_split_once_in_equal_batch_counts(config):
  raw = fx.raw_examples(config, 'test')  # 15 examples; 3 processes x 2 rows -> 18 rows.
  shards = [
    list(pipeline.eval_batches(config, 'test', batch_size=2, process_index=i, process_count=3))
    for i in range(3)
  ]
  assert [len(s) for s in shards] == [3, 3, 3]
  labels = np.concatenate([b['label'][b['valid']] for s in shards for b in s])
  assert sorted(labels.tolist()) == sorted(int(ex['label']) for ex in raw)
  valid = sum(int(b['valid'].sum()) for s in shards for b in s)
  assert valid == len(raw)
  with pytest.raises(ValueError, match='process_index'):
    pipeline.eval_batches(config, 'test', batch_size=2, process_index=3, process_count=3)


def test_eval_resizes_bilinear_antialiased_and_masks_at_output_size(tmp_path):
  config = fx.synthetic_config(tmp_path, image_size=12)
  raw = fx.raw_examples(config, 'train')
  batch = next(pipeline.eval_batches(config, 'train', batch_size=len(raw)))

  # Reference: separable triangle filter scaled by the downsizing factor.
  scale = 32 / 12
  centres = (np.arange(12) + 0.5) * scale
  distance = np.abs(np.arange(32) + 0.5 - centres[:, None])
  weights = np.maximum(0.0, 1.0 - distance / scale)
  weights /= weights.sum(1, keepdims=True)
  for row, ex in enumerate(raw):
    resized = np.einsum('ik,jl,klc->ijc', weights, weights, ex['image'] / 1.0)
    np.testing.assert_allclose(batch['image'][row], _normalise(resized), atol=1e-4)
    np.testing.assert_array_equal(batch['mask'][row], fx.box_union_raster(ex['boxes'], 12))
  assert batch['has_mask'].any()


def test_eval_unknown_split_raises(config):
  with pytest.raises(ValueError, match='train'):
    pipeline.eval_batches(config, 'dev', batch_size=4)


def test_missing_validation_split_is_left_out(tmp_path):
  config = fx.synthetic_config(tmp_path, validation_counts=(0,) * 5)
  assert 'validation' not in info_lib.get_dataset_info(config).split_sizes
  with pytest.raises(ValueError, match='validation'):
    pipeline.eval_batches(config, 'validation', batch_size=4)


def test_rare_training_masks_cover_the_lesion(tmp_path):
  config = fx.synthetic_config(tmp_path, artefact=False)
  batch = next(pipeline.train_batches(config, batch_size=32, seed=0))
  pixels = batch['image'] * np.array(fx.STD) + np.array(fx.MEAN)  # back to [0, 1]
  green = pixels[..., 1]
  covered, total = 0.0, 0
  for row in np.flatnonzero(batch['has_mask']):
    # Far darker than the skin median: lesion pixels.
    lesion = green[row] < 0.6 * np.median(green[row])
    covered += batch['mask'][row][lesion].sum()
    total += lesion.sum()
    assert batch['mask'][row].mean() < 0.5  # a box, not the whole image
  assert total > 0 and covered / total == 1.0


def test_eval_lesion_mask_is_the_lesion_box_of_every_image(config):
  raw = fx.raw_examples(config, 'test')  # 15 examples -> 2 batches of 8, 1 padding row.
  batches = list(pipeline.eval_batches(config, 'test', batch_size=8))
  stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert stacked['lesion_mask'].dtype == np.float32
  assert stacked['lesion_mask'].shape == (16, 32, 32)
  assert stacked['has_lesion_mask'].dtype == bool
  for row, ex in enumerate(raw):
    np.testing.assert_array_equal(
      stacked['lesion_mask'][row], fx.box_union_raster([ex['lesion_box']], 32)
    )
  # Every test image has one (no annotation box); the padding row has none.
  np.testing.assert_array_equal(stacked['has_lesion_mask'], np.arange(16) < 15)
  assert not stacked['lesion_mask'][15].any()
  assert not stacked['has_mask'].any()


def test_eval_lesion_mask_is_rasterised_at_the_output_size(tmp_path):
  config = fx.synthetic_config(tmp_path, image_size=12)
  raw = fx.raw_examples(config, 'validation')
  batch = next(pipeline.eval_batches(config, 'validation', batch_size=len(raw)))
  for row, ex in enumerate(raw):
    np.testing.assert_array_equal(
      batch['lesion_mask'][row], fx.box_union_raster([ex['lesion_box']], 12)
    )


class _NoLesionBox(sl.SyntheticLesions):
  """synthetic_lesions without the `lesion_box` feature (like real datasets)."""

  def _info(self):
    info = super()._info()
    features = {k: v for k, v in info.features.items() if k != 'lesion_box'}
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features), supervised_keys=('image', 'label')
    )

  def _generate_examples(self, split):
    for key, example in super()._generate_examples(split):
      example.pop('lesion_box')
      yield key, example


_CORNER = np.array([0.0, 0.0, 0.25, 0.25], np.float32)


class _LesionBoxes(_NoLesionBox):
  """Every box of every image in `lesion_boxes`, as the file datasets store them."""

  def _info(self):
    info = super()._info()
    features = dict(info.features.items())
    features['lesion_boxes'] = tfds.features.Sequence(tfds.features.BBoxFeature())
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features), supervised_keys=('image', 'label')
    )

  def _generate_examples(self, split):
    for key, example in sl.SyntheticLesions._generate_examples(self, split):
      example['lesion_boxes'] = np.stack([example.pop('lesion_box'), _CORNER])
      yield key, example


def _use_builder(monkeypatch, config, cls):
  config.name = cls.__name__
  monkeypatch.setitem(
    registry._DATASETS,
    cls.__name__,
    registry.RegisteredDataset(
      lambda c: cls(config=sl.synthetic_config(**c.synthetic.to_dict()), data_dir=c.dir),
      encoding='png',
      stored_size_key=None,
    ),
  )


def test_eval_lesion_mask_is_the_union_of_the_lesion_boxes(tmp_path, monkeypatch):
  config = fx.synthetic_config(tmp_path)
  raw = fx.raw_examples(config, 'test')
  _use_builder(monkeypatch, config, _LesionBoxes)
  batch = next(pipeline.eval_batches(config, 'test', batch_size=15))
  for row, ex in enumerate(raw):  # Same data, same order as synthetic_lesions.
    np.testing.assert_array_equal(
      batch['lesion_mask'][row], fx.box_union_raster([ex['lesion_box'], _CORNER], 32)
    )
  assert batch['has_lesion_mask'].all()


def test_eval_lesion_mask_falls_back_to_the_annotation_boxes(tmp_path, monkeypatch):
  config = fx.synthetic_config(tmp_path)
  _use_builder(monkeypatch, config, _NoLesionBox)
  batch = next(pipeline.eval_batches(config, 'train', batch_size=32))
  # Only the rare training images carry (annotation) boxes.
  np.testing.assert_array_equal(batch['lesion_mask'], batch['mask'])
  np.testing.assert_array_equal(batch['has_lesion_mask'], batch['has_mask'])
  assert batch['has_lesion_mask'].sum() == 8


def _training_config(config, sampling='instance', augment=True):
  trained = config.copy_and_resolve_references()
  trained.sampling = sampling
  trained.augment.enabled = augment
  return trained


def test_resampled_augmented_batches_resume_and_split_over_processes(config):
  config = _training_config(config, 'sqrt')
  fresh = _take(pipeline.train_batches(config, batch_size=6, seed=4), 6)
  resumed = _take(pipeline.train_batches(config, batch_size=6, seed=4, start_step=4), 2)
  _assert_batches_equal(resumed, fresh[4:])
  parts = [
    _take(pipeline.train_batches(config, batch_size=3, seed=4, process_index=i, process_count=2), 6)
    for i in range(2)
  ]
  for step, global_batch in enumerate(fresh):
    for key, value in global_batch.items():
      np.testing.assert_array_equal(
        np.concatenate([parts[0][step][key], parts[1][step][key]]), value
      )


def test_augmentation_changes_images_and_masks_but_not_labels(config):
  plain = _take(
    pipeline.train_batches(_training_config(config, augment=False), batch_size=8, seed=2), 4
  )
  augmented = _take(pipeline.train_batches(_training_config(config), batch_size=8, seed=2), 4)
  for a, b in zip(plain, augmented):
    np.testing.assert_array_equal(a['label'], b['label'])  # same order
    assert not np.allclose(a['image'], b['image'])
    assert b['mask'].dtype == np.float32
    assert set(np.unique(b['mask'])) <= {0.0, 1.0}
    np.testing.assert_array_equal(b['has_mask'], b['mask'].any((1, 2)))
    # Only examples with boxes get a mask.
    assert not np.any(b['has_mask'] & ~a['has_mask'])
  masks = np.concatenate([b['mask'] for b in augmented])
  assert not np.array_equal(masks, np.concatenate([b['mask'] for b in plain]))


def test_augmentation_on_device_auto_keeps_the_host_path_on_a_cpu(config):
  augmented = _training_config(config)
  assert augmented.augment.on_device == 'auto'  # The default.
  host = augmented.copy_and_resolve_references()
  with host.augment.ignore_type():
    host.augment.on_device = False
  auto = _take(pipeline.train_batches(augmented, batch_size=8, seed=2), 2)
  _assert_batches_equal(auto, _take(pipeline.train_batches(host, batch_size=8, seed=2), 2))
  assert auto[0]['image'].dtype == np.float32 and 'geometry' not in auto[0]


def test_class_balanced_training_labels_have_equal_frequencies(config):
  num_batches, batch_size = 40, 16
  batches = _take(
    pipeline.train_batches(
      _training_config(config, 'class_balanced', augment=False), batch_size=batch_size, seed=1
    ),
    num_batches,
  )
  labels = np.concatenate([b['label'] for b in batches])
  frequencies = np.bincount(labels, minlength=5) / labels.size
  # 5 classes with examples: 1/5 each, within 4 binomial standard errors.
  standard_error = np.sqrt(0.2 * 0.8 / labels.size)
  np.testing.assert_allclose(frequencies, 0.2, atol=4 * standard_error)


def test_eval_never_augments(config):
  augmented = _training_config(config, 'class_balanced')
  a = list(pipeline.eval_batches(config, 'test', batch_size=8))
  b = list(pipeline.eval_batches(augmented, 'test', batch_size=8))
  _assert_batches_equal(a, b)


def test_box_scale_reaches_the_training_masks(config):
  scaled = config.copy_and_resolve_references()
  scaled.box_scale = 0.5
  full = next(pipeline.train_batches(config, batch_size=64, seed=0))
  half = next(pipeline.train_batches(scaled, batch_size=64, seed=0))
  boxed = full['has_mask']
  assert boxed.any()
  # Same examples, smaller masks inside the full-size ones.
  np.testing.assert_array_equal(full['label'], half['label'])
  assert np.all(half['mask'] <= full['mask'])
  assert half['mask'][boxed].sum() < 0.5 * full['mask'][boxed].sum()


def test_a_generated_box_source_needs_the_generator(config):
  generated = config.copy_and_resolve_references()
  generated.box_source = 'otsu'
  with pytest.raises(ValueError, match="data.box_source='otsu' needs boxes_fn"):
    pipeline.train_batches(generated, batch_size=4, seed=0)


def test_decoy_relevance_is_minus_one_on_the_patch_unknown_elsewhere_on_every_image(tmp_path):
  config = fx.decoy_data_config(tmp_path)
  batch = next(pipeline.train_batches(config, batch_size=40, seed=0))
  assert set(batch) == {'image', 'label', 'mask', 'has_mask', 'relevance'}
  assert batch['relevance'].shape == (40, 28, 28) and batch['relevance'].dtype == np.float32
  builder = registry.prepared_builder(config)
  stored = list(tfds.as_numpy(builder.as_dataset(split='train', shuffle_files=False)))
  # An epoch is a permutation: compare the sorted maps of the batch and of the stored patches.
  expected = [-fx.box_union_raster(e['artefact_boxes'], 28) + 0.0 for e in stored]
  assert sorted(r.tobytes() for r in batch['relevance']) == sorted(r.tobytes() for r in expected)
  assert np.all(batch['has_mask']) and not batch['mask'].any()
  assert (batch['relevance'] == -1).sum(axis=(1, 2)).tolist() == [16] * 40
  test = next(pipeline.eval_batches(config, 'test', batch_size=4))
  assert 'relevance' not in test and test['has_lesion_mask'].all()
