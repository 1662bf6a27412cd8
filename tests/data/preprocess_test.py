"""Per-example rows: boxes rasterised (half-open, pixel centres), has_mask, segmentation masks
resized as the image, boxes scaled."""

import dataclasses
import io
import itertools

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from care_jax.data import augment
from care_jax.data import preprocess
from care_jax.data import reading
from tests.helpers import data_fixtures as fx


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
    np.testing.assert_array_equal(
      preprocess.rasterize_boxes(boxes, 13).numpy(), fx.box_union_raster(boxes, 13)
    )


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
  expected = np.maximum(fx.box_union_raster([a], 8), fx.box_union_raster([b], 8))
  np.testing.assert_array_equal(union, expected)
  assert union.sum() < fx.box_union_raster([a], 8).sum() + fx.box_union_raster([b], 8).sum()


def test_rasterize_non_square_and_bad_shape():
  mask = preprocess.rasterize_boxes([[0.0, 0.0, 0.5, 0.5]], (4, 6)).numpy()
  assert mask.shape == (4, 6) and mask.sum() == 2 * 3
  with pytest.raises(ValueError, match=r'\[N, 4\]'):
    preprocess.rasterize_boxes(np.zeros((2, 3), np.float32), 4)


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


# The reduced decode of the device path's host side ---------------------------------------

JPEG_FEATURE = tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')


def _jpeg(height, width):
  """A smooth colour JPEG (quality 95) of height x width, and its bytes."""
  y, x = np.mgrid[0:height, 0:width]
  pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (height + width)], -1)
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


@pytest.mark.parametrize(
  'feature, reduced',
  [
    (JPEG_FEATURE, False),
    (tfds.features.Image(shape=(None, None, 3), encoding_format='png'), True),
  ],
  ids=['jpeg, not reduced', 'png'],
)
def test_decode_fn_is_the_features_own_decode_unless_a_jpeg_is_reduced(feature, reduced):
  assert preprocess.decode_fn(feature, 16, reduced=reduced) == feature.decode_example


@pytest.mark.parametrize('size, ratio', [(224, 2), (100, 4), (50, 8)])
def test_reduced_decode_scales_a_jpeg_by_the_largest_ratio_that_keeps_the_size(size, ratio):
  encoded = _jpeg(450, 600)  # As ISIC 2018 distributes its images.
  image = preprocess.decode_fn(JPEG_FEATURE, size, reduced=True)(tf.constant(encoded))
  assert image.dtype == tf.float32 and image.shape == (size, size, 3)
  scaled = tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
  expected = tf.image.resize(scaled, (size, size), 'bilinear', antialias=False)
  np.testing.assert_array_equal(image.numpy(), expected.numpy())
  # Close to the full decode resized (antialiased), as the host path resizes.
  full = tf.image.resize(tf.io.decode_jpeg(encoded, channels=3), (size, size), antialias=True)
  assert np.abs(image.numpy() - full.numpy()).mean() < 2.0


def test_reduced_decode_of_a_jpeg_under_twice_the_size_is_the_full_decode_resized():
  encoded = tf.constant(_jpeg(300, 400))
  image = preprocess.decode_fn(JPEG_FEATURE, 224, reduced=True)(encoded)
  config = fx.data_config()
  config.image_size = 224
  make = preprocess.device_augment_example_fn(
    config, augment_settings=IDENTITY_AUGMENT, max_boxes=1
  )
  row = make(JPEG_FEATURE.decode_example(encoded), 0, np.zeros((0, 4), np.float32), [0, 0])
  expected = tf.image.resize(tf.io.decode_jpeg(encoded, channels=3), (224, 224), antialias=True)
  np.testing.assert_array_equal(image.numpy(), expected.numpy())
  # And the device rows round it: the image the host path would have augmented.
  np.testing.assert_array_equal(row['image'].numpy(), np.round(expected.numpy()).astype(np.uint8))
