"""Tests of the tf.data input pipeline and its batch contract."""

import dataclasses
import importlib
import itertools
import re
import subprocess
import sys

import data_fixtures as fx
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from care_jax import _deprecated
from care_jax import config as care_config
from care_jax import data
from care_jax.data import augment
from care_jax.data import folder
from care_jax.data import info as info_lib
from care_jax.data import isic2018
from care_jax.data import nih_chestxray14
from care_jax.data import pipeline
from care_jax.data import preprocess
from care_jax.data import reading
from care_jax.data import registry
from care_jax.data import rsna_pneumonia
from care_jax.data import synthetic_lesions as sl

SYNTHETIC = dict(
  image_size=32,
  train_counts=(8, 8, 4, 8, 4),
  validation_counts=(2, 2, 2, 2, 2),
  test_counts=(3, 3, 3, 3, 3),
)
MEAN = (0.2, 0.4, 0.6)
STD = (0.5, 0.25, 1.0)


def _config(data_dir, image_size=32, **synthetic):
  config = fx.data_config()
  config.dir = str(data_dir)
  config.image_size = image_size
  config.mean = MEAN
  config.std = STD
  config.synthetic.update({**SYNTHETIC, **synthetic})
  return config


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  return _config(tmp_path_factory.mktemp('tfds'))


def _raw(config, split):
  """The stored examples, in the builder's fixed order."""
  builder = sl.SyntheticLesions(
    config=sl.synthetic_config(**config.synthetic.to_dict()), data_dir=config.dir
  )
  builder.download_and_prepare()
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return list(tfds.as_numpy(ds))


def _normalise(image):
  return (image / 255.0 - np.array(MEAN)) / np.array(STD)


def _denormalise(image):
  pixels = (image * np.array(STD) + np.array(MEAN)) * 255.0
  return np.round(pixels).astype(np.uint8)


def _raster(boxes, size):
  """Numpy reference of the box union, pixel by pixel (half-open boxes)."""
  mask = np.zeros((size, size), np.float32)
  for ymin, xmin, ymax, xmax in boxes:
    for i, j in itertools.product(range(size), repeat=2):
      if ymin * size <= i + 0.5 < ymax * size and (xmin * size <= j + 0.5 < xmax * size):
        mask[i, j] = 1.0
  return mask


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


# rasterize_boxes ------------------------------------------------------------


def test_rasterize_box_covers_pixels_whose_centres_are_inside():
  # Rows 2-5 (centres 2.5..5.5 in [2, 6]) and columns 1-3 (centres 1.5..3.5
  # in [1, 4]) of an 8 x 8 grid.
  mask = preprocess.rasterize_boxes([[0.25, 0.125, 0.75, 0.5]], 8).numpy()
  expected = np.zeros((8, 8), np.float32)
  expected[2:6, 1:4] = 1.0
  np.testing.assert_array_equal(mask, expected)
  assert mask.dtype == np.float32


def test_rasterize_docstring_example():
  # Half-open: row centres 0.5, 1.5 < 0.5 * 4 = 2, column centre 0.5 < 0.25 * 4 = 1.
  mask = preprocess.rasterize_boxes([[0.0, 0.0, 0.5, 0.25]], 4).numpy()
  expected = np.zeros((4, 4), np.float32)
  expected[0:2, 0] = 1.0
  np.testing.assert_array_equal(mask, expected)


def test_rasterize_box_edges_through_pixel_centres_are_half_open():
  # ymin * 8 = 0.5 and ymax * 8 = 2.5 are the centres of rows 0 and 2: row 0
  # is in (min edge inclusive), row 2 is out (max edge exclusive).
  mask = preprocess.rasterize_boxes([[0.0625, 0.0, 0.3125, 1.0]], 8).numpy()
  np.testing.assert_array_equal(mask.any(1), np.arange(8) < 2)
  # Same along columns: xmin * 8 = 3.5 keeps column 3, xmax * 8 = 5.5 drops 5.
  mask = preprocess.rasterize_boxes([[0.0, 0.4375, 1.0, 0.6875]], 8).numpy()
  np.testing.assert_array_equal(mask.any(0), (np.arange(8) >= 3) & (np.arange(8) < 5))


def test_rasterize_boxes_that_tile_the_image_cover_each_pixel_once():
  # Edges through pixel centres: each centre lies in exactly one tile.
  edges = np.array([0.0, 0.3125, 0.5625, 1.0], np.float32)  # 0, 2.5, 4.5, 8 on 8 px.
  total = np.zeros((8, 8), np.float32)
  for (y0, y1), (x0, x1) in itertools.product(zip(edges[:-1], edges[1:]), repeat=2):
    total += preprocess.rasterize_boxes([[y0, x0, y1, x1]], 8).numpy()
  np.testing.assert_array_equal(total, np.ones((8, 8)))


def test_rasterize_box_between_pixel_centres_covers_nothing():
  # [0.55, 0.95) x [1.6, 1.9) on a 4 x 4 grid holds no centre (k + 0.5).
  mask = preprocess.rasterize_boxes([[0.1375, 0.4, 0.2375, 0.475]], 4).numpy()
  np.testing.assert_array_equal(mask, np.zeros((4, 4)))


def test_rasterize_matches_numpy_reference_on_random_boxes():
  rng = np.random.default_rng(0)
  for n in range(4):
    ys = np.sort(rng.uniform(0, 1, (n, 2)), axis=1)
    xs = np.sort(rng.uniform(0, 1, (n, 2)), axis=1)
    boxes = np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=-1)
    boxes = boxes.reshape(n, 4).astype(np.float32)
    np.testing.assert_array_equal(preprocess.rasterize_boxes(boxes, 13).numpy(), _raster(boxes, 13))


def test_rasterize_box_area_is_the_number_of_centres_in_the_half_open_box():
  rng = np.random.default_rng(1)
  for size in (5, 8, 13, 32):
    ys = np.sort(rng.uniform(0, 1, (50, 2)), axis=1).astype(np.float32)
    xs = np.sort(rng.uniform(0, 1, (50, 2)), axis=1).astype(np.float32)
    # Some row edges exactly on pixel centres or pixel edges (multiples of 1 / 2S).
    ys[:10] = np.sort(rng.integers(0, 2 * size + 1, (10, 2)), axis=1) / np.float32(2 * size)
    centres = np.arange(size) + 0.5
    for (y0, y1), (x0, x1) in zip(ys, xs):
      box = np.array([[y0, x0, y1, x1]], np.float32)
      count = lambda lo, hi: np.sum((lo * size <= centres) & (centres < hi * size))
      area = preprocess.rasterize_boxes(box, size).numpy().sum()
      assert area == count(box[0, 0], box[0, 2]) * count(box[0, 1], box[0, 3]), (size, box)


def test_rasterize_empty_box_list_gives_zero_mask():
  mask = preprocess.rasterize_boxes(np.zeros((0, 4), np.float32), 6).numpy()
  np.testing.assert_array_equal(mask, np.zeros((6, 6)))


def test_rasterize_union_of_two_boxes():
  a, b = [0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 0.75]
  union = preprocess.rasterize_boxes([a, b], 8).numpy()
  expected = np.maximum(_raster([a], 8), _raster([b], 8))
  np.testing.assert_array_equal(union, expected)
  assert union.sum() < _raster([a], 8).sum() + _raster([b], 8).sum()


def test_rasterize_non_square_and_bad_shape():
  mask = preprocess.rasterize_boxes([[0.0, 0.0, 0.5, 0.5]], (4, 6)).numpy()
  assert mask.shape == (4, 6) and mask.sum() == 2 * 3
  with pytest.raises(ValueError, match=r'\[N, 4\]'):
    preprocess.rasterize_boxes(np.zeros((2, 3), np.float32), 4)


# example_fn: has_mask ----------------------------------------------------------

# A box between pixel centres on an 8 x 8 grid: rows [2.6, 2.9), columns [5.2, 5.4).
TINY_BOX = [[0.325, 0.65, 0.3625, 0.675]]
IDENTITY_AUGMENT = augment.AugmentSettings(
  rotation=0.0,
  hflip=False,
  vflip=False,
  brightness=0.0,
  contrast=0.0,
  saturation=0.0,
  hue=0.0,
  crop_scale=(1.0, 1.0),
  crop_ratio=(1.0, 1.0),
)


def _example(boxes, augment_settings=None, seed=(0, 0)):
  config = fx.data_config()
  config.image_size = 8
  make = preprocess.example_fn(config, 3, augment_settings=augment_settings)
  image = np.full((8, 8, 3), 128, np.uint8)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  key = np.asarray(seed, np.int64) if augment_settings is not None else None
  return {k: v.numpy() for k, v in make(image, 1, boxes, key).items()}


@pytest.mark.parametrize('augment_settings', [None, IDENTITY_AUGMENT], ids=['plain', 'augmented'])
def test_has_mask_is_false_when_the_boxes_cover_no_pixel_centre(augment_settings):
  row = _example(TINY_BOX, augment_settings)
  assert row['has_mask'].dtype == bool and not row['has_mask']
  np.testing.assert_array_equal(row['mask'], np.zeros((8, 8)))
  # A box over a centre, and no box at all, on the same path.
  row = _example([[0.25, 0.25, 0.5, 0.5]], augment_settings)
  assert row['has_mask'] and row['mask'].sum() == 4
  row = _example(np.zeros((0, 4)), augment_settings)
  assert not row['has_mask'] and not row['mask'].any()


def test_has_mask_is_the_non_empty_mask_under_random_augmentation():
  settings = dataclasses.replace(
    IDENTITY_AUGMENT,
    rotation=180.0,
    hflip=True,
    vflip=True,
    crop_scale=(0.3, 1.0),
    crop_ratio=(0.75, 1.333),
  )
  seen = set()
  for seed in range(20):
    for boxes in (TINY_BOX, [[0.0, 0.0, 0.25, 0.25]]):
      row = _example(boxes, settings, seed=(seed, 1))
      assert row['has_mask'] == row['mask'].any()
      seen.add(bool(row['has_mask']))
  assert seen == {False, True}


# example_fn: segmentation masks ------------------------------------------------

RANDOM_AUGMENT = dataclasses.replace(
  IDENTITY_AUGMENT, rotation=180.0, hflip=True, vflip=True, crop_scale=(0.3, 1.0)
)


def _png(mask):
  return tf.io.encode_png(np.asarray(mask, np.uint8)[..., None]).numpy()


def _mask_example(encoded, augment_settings=None, seed=(0, 0), boxes=((0.25, 0.25, 0.5, 0.5),)):
  config = fx.data_config()
  config.image_size = 8
  make = preprocess.example_fn(config, 3, augment_settings=augment_settings)
  image = np.random.default_rng(0).integers(0, 256, (12, 12, 3)).astype(np.uint8)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  key = np.asarray(seed, np.int64) if augment_settings is not None else None
  mask = None if encoded is None else tf.constant(encoded)
  return {k: v.numpy() for k, v in make(image, 1, boxes, key, mask=mask).items()}


@pytest.mark.parametrize('augment_settings', [None, RANDOM_AUGMENT], ids=['plain', 'augmented'])
def test_an_empty_mask_keeps_the_box_row_exactly(augment_settings):
  for seed in range(3):
    with_empty = _mask_example(b'', augment_settings, seed=(seed, 2))
    without = _mask_example(None, augment_settings, seed=(seed, 2))
    assert with_empty.keys() == without.keys()
    for key in without:
      np.testing.assert_array_equal(with_empty[key], without[key])
    assert without['mask'].any()


def test_a_mask_replaces_the_boxes_resized_as_the_image():
  # A 16 x 16 mask (another size than the 12 x 12 image) of 2 x 2 blocks: at
  # S = 8 it is the block pattern exactly.
  grid = np.zeros((8, 8), bool)
  grid[1:5, 4:7] = grid[5:7, 1:7] = True
  row = _mask_example(_png(np.kron(grid, np.ones((2, 2))) * 255))
  np.testing.assert_array_equal(row['mask'], grid.astype(np.float32))
  assert row['mask'].dtype == np.float32 and row['has_mask']
  # Augmented: binary, the same image as the box row with that key.
  for seed in range(5):
    masked = _mask_example(_png(np.kron(grid, np.ones((2, 2))) * 255), RANDOM_AUGMENT, (seed, 1))
    boxed = _mask_example(None, RANDOM_AUGMENT, (seed, 1))
    np.testing.assert_array_equal(masked['image'], boxed['image'])
    assert set(np.unique(masked['mask'])) <= {0.0, 1.0}
    assert masked['has_mask'] == masked['mask'].any()
  # An all-zero mask supervises nothing (and the boxes are not used).
  row = _mask_example(_png(np.zeros((16, 16))))
  assert not row['has_mask'] and not row['mask'].any()


def test_multilabel_rows_take_no_mask():
  config = fx.data_config()
  config.image_size = 8
  make = preprocess.example_fn(config, 3, num_classes=2)
  with pytest.raises(ValueError, match='multi-label'):
    make(
      np.zeros((8, 8, 3), np.uint8),
      np.zeros(2),
      np.zeros((0, 4), np.float32),
      box_labels=np.zeros(0, np.int64),
      mask=tf.constant(b''),
    )


# train_batches ---------------------------------------------------------------


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
  raw = _raw(config, 'train')
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
      np.testing.assert_array_equal(batch['mask'][row], _raster(ex['boxes'], 32))
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


# eval_batches ----------------------------------------------------------------


def test_eval_covers_each_example_once_normalised_with_padding(config):
  raw = _raw(config, 'test')  # 15 examples -> 4 batches of 4, 1 padding row.
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
  raw = _raw(config, 'test')  # 15 examples; 3 processes x 2 rows -> 18 rows.
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
  config = _config(tmp_path, image_size=12)
  raw = _raw(config, 'train')
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
    np.testing.assert_array_equal(batch['mask'][row], _raster(ex['boxes'], 12))
  assert batch['has_mask'].any()


def test_eval_unknown_split_raises(config):
  with pytest.raises(ValueError, match='train'):
    pipeline.eval_batches(config, 'dev', batch_size=4)


# get_dataset_info and config checks -------------------------------------------


def test_dataset_info(config):
  info = info_lib.get_dataset_info(config)
  assert info.class_names == sl.CLASS_NAMES
  # Default rare classes: those with boxes in train.
  assert info.rare_classes == (2, 4)
  np.testing.assert_array_equal(info.train_class_counts, SYNTHETIC['train_counts'])
  assert info.train_class_counts.dtype == np.int64
  assert info.split_sizes == {'train': 32, 'validation': 10, 'test': 15}
  assert (info.image_size, info.num_channels) == (32, 3)


def test_rare_classes_override_and_unknown_name(config):
  override = config.copy_and_resolve_references()
  override.rare_classes = ('striped', 'brown')
  assert info_lib.get_dataset_info(override).rare_classes == (0, 4)
  override.rare_classes = ('striped', 'spotted')
  with pytest.raises(ValueError, match=r"spotted.*'brown', 'dark'"):
    info_lib.get_dataset_info(override)


def test_missing_validation_split_is_left_out(tmp_path):
  config = _config(tmp_path, validation_counts=(0,) * 5)
  assert 'validation' not in info_lib.get_dataset_info(config).split_sizes
  with pytest.raises(ValueError, match='validation'):
    pipeline.eval_batches(config, 'validation', batch_size=4)


def test_unknown_dataset_name_lists_the_supported_ones(config):
  bad = config.copy_and_resolve_references()
  bad.name = 'imagenet'
  for call in (
    lambda: info_lib.get_dataset_info(bad),
    lambda: pipeline.train_batches(bad, batch_size=2, seed=0),
    lambda: pipeline.eval_batches(bad, 'test', batch_size=2),
  ):
    with pytest.raises(ValueError, match=r"imagenet.*'synthetic_lesions'"):
      call()


def test_mean_std_must_match_channels(config):
  bad = config.copy_and_resolve_references()
  bad.mean = (0.5, 0.5)
  with pytest.raises(ValueError, match='data.mean'):
    info_lib.get_dataset_info(bad)


def test_rare_training_masks_cover_the_lesion(tmp_path):
  config = _config(tmp_path, artefact=False)
  batch = next(pipeline.train_batches(config, batch_size=32, seed=0))
  pixels = batch['image'] * np.array(STD) + np.array(MEAN)  # back to [0, 1]
  green = pixels[..., 1]
  covered, total = 0.0, 0
  for row in np.flatnonzero(batch['has_mask']):
    # Far darker than the skin median: lesion pixels.
    lesion = green[row] < 0.6 * np.median(green[row])
    covered += batch['mask'][row][lesion].sum()
    total += lesion.sum()
    assert batch['mask'][row].mean() < 0.5  # a box, not the whole image
  assert total > 0 and covered / total == 1.0


def test_importing_care_jax_does_not_load_data_or_tensorflow():
  code = (
    'import sys, care_jax; assert "care_jax.data" not in sys.modules;'
    'import care_jax.data; assert "tensorflow" not in sys.modules;'
    'from care_jax.data import synthetic_config;'
    'assert "tensorflow" not in sys.modules'
  )
  subprocess.run([sys.executable, '-c', code], check=True)


# lesion_mask of eval batches ---------------------------------------------------


def test_eval_lesion_mask_is_the_lesion_box_of_every_image(config):
  raw = _raw(config, 'test')  # 15 examples -> 2 batches of 8, 1 padding row.
  batches = list(pipeline.eval_batches(config, 'test', batch_size=8))
  stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert stacked['lesion_mask'].dtype == np.float32
  assert stacked['lesion_mask'].shape == (16, 32, 32)
  assert stacked['has_lesion_mask'].dtype == bool
  for row, ex in enumerate(raw):
    np.testing.assert_array_equal(stacked['lesion_mask'][row], _raster([ex['lesion_box']], 32))
  # Every test image has one (no annotation box); the padding row has none.
  np.testing.assert_array_equal(stacked['has_lesion_mask'], np.arange(16) < 15)
  assert not stacked['lesion_mask'][15].any()
  assert not stacked['has_mask'].any()


def test_eval_lesion_mask_is_rasterised_at_the_output_size(tmp_path):
  config = _config(tmp_path, image_size=12)
  raw = _raw(config, 'validation')
  batch = next(pipeline.eval_batches(config, 'validation', batch_size=len(raw)))
  for row, ex in enumerate(raw):
    np.testing.assert_array_equal(batch['lesion_mask'][row], _raster([ex['lesion_box']], 12))


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
  config = _config(tmp_path)
  raw = _raw(config, 'test')
  _use_builder(monkeypatch, config, _LesionBoxes)
  batch = next(pipeline.eval_batches(config, 'test', batch_size=15))
  for row, ex in enumerate(raw):  # Same data, same order as synthetic_lesions.
    np.testing.assert_array_equal(
      batch['lesion_mask'][row], _raster([ex['lesion_box'], _CORNER], 32)
    )
  assert batch['has_lesion_mask'].all()


def test_eval_lesion_mask_falls_back_to_the_annotation_boxes(tmp_path, monkeypatch):
  config = _config(tmp_path)
  _use_builder(monkeypatch, config, _NoLesionBox)
  batch = next(pipeline.eval_batches(config, 'train', batch_size=32))
  # Only the rare training images carry (annotation) boxes.
  np.testing.assert_array_equal(batch['lesion_mask'], batch['mask'])
  np.testing.assert_array_equal(batch['has_lesion_mask'], batch['has_mask'])
  assert batch['has_lesion_mask'].sum() == 8


# Sampling and augmentation in train_batches ------------------------------------


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


@pytest.mark.parametrize(
  'key, value, message',
  [
    ('sampling', 'balanced', r'data\.sampling\b.*must be one of'),
    ('augment.rotation', 360.0, r'data\.augment\.rotation'),
    ('augment.crop_scale', (0.5, 2.0), r'data\.augment\.crop_scale'),
  ],
)
def test_bad_sampling_or_augment_config_raises_naming_the_key(config, key, value, message):
  bad = config.copy_and_resolve_references()
  *parents, leaf = key.split('.')
  node = bad
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  # care_jax.config checks these values (care_jax.data.augment only converts
  # data.augment since it moved there).
  with pytest.raises(ValueError, match=message):
    care_config.validate_data(bad)


def test_box_scale_scales_each_box_about_its_centre_and_clips_to_the_image():
  table = reading.SplitTable(
    images=np.array([b'', b''], dtype=object),
    labels=np.array([0, 1]),
    box_values=np.array([[0.2, 0.4, 0.6, 0.8], [0.0, 0.0, 0.5, 0.3]], np.float32),
    box_splits=np.array([0, 1, 2]),
  )
  half = preprocess.scale_boxes(table, 0.5).box_values
  np.testing.assert_allclose(half, [[0.3, 0.5, 0.5, 0.7], [0.125, 0.075, 0.375, 0.225]], atol=1e-6)
  double = preprocess.scale_boxes(table, 2.0).box_values
  np.testing.assert_allclose(double, [[0.0, 0.2, 0.8, 1.0], [0.0, 0.0, 0.75, 0.45]], atol=1e-6)
  assert preprocess.scale_boxes(table, 1.0) is table
  with pytest.raises(ValueError, match='data.box_scale must be a positive number'):
    preprocess.scale_boxes(table, 0.0)


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


@pytest.mark.parametrize('module', [folder, isic2018, rsna_pneumonia, nih_chestxray14])
def test_the_config_holds_every_dataset_parameter(module):
  name = module.__name__.rsplit('.', 1)[-1]
  assert set(fx.data_config()[name]) == set(module.PARAMETERS)
  assert set(fx.default_parameters(name)) == set(module.PARAMETERS)


@pytest.mark.parametrize('module', [data, pipeline], ids=['data', 'pipeline'])
def test_default_data_config_is_a_deprecated_alias_of_the_configs(module):
  message = (
    rf'{re.escape(module.__name__)}\.default_data_config is deprecated: use'
    r' care_jax\.config\.default_data_config'
  )
  with pytest.warns(DeprecationWarning, match=message):
    alias = module.default_data_config
  assert alias().to_dict() == care_config.default_data_config().to_dict()


MOVED_FROM_PIPELINE = sorted(
  name for module, name in _deprecated.MOVED if module == 'care_jax.data.pipeline'
)


@pytest.mark.parametrize('name', MOVED_FROM_PIPELINE)
def test_the_names_that_left_the_pipeline_module_warn_and_name_their_home(name):
  new_module, _, new_name = _deprecated.MOVED['care_jax.data.pipeline', name].partition(':')
  with pytest.warns(DeprecationWarning, match=rf'use {re.escape(new_module)}\.{new_name} '):
    old = getattr(pipeline, name)
  assert old is getattr(importlib.import_module(new_module), new_name)


def test_unknown_names_of_the_data_package_raise_attribute_errors():
  with pytest.raises(AttributeError, match="module 'care_jax.data' has no attribute 'nope'"):
    data.nope  # noqa: B018
  with pytest.raises(AttributeError, match="'care_jax.data.pipeline' has no attribute 'nope'"):
    pipeline.nope  # noqa: B018
