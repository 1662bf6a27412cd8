"""The on-device augmentation against the TensorFlow augmentation of the pipeline.

Every function of `care_jax.training.device_augment` is compared with its
counterpart in `care_jax.data.augment` on the same inputs: geometries drawn by
`augment.sample_geometry` (the default settings, and rotation, crop and flips
alone or off), colour factors by `augment.sample_color_factors`. Measured on
this CPU: the warp within 2e-6 of TF's ``ImageProjectiveTransformV3`` (1.2e-7
without rescaling), the colour jitter within 1e-6, the masks bit for bit. The
train step that augments its batch equals the step on the batch augmented by
`augment.augment_example`, under jit and on the 8 simulated devices
(conftest.py) of a mesh and of pmap.
"""

import dataclasses
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from care_jax import classification_loss  # noqa: E402
from care_jax import config as config_lib  # noqa: E402
from care_jax import training  # noqa: E402
from care_jax.data import augment  # noqa: E402
from care_jax.training import device_augment  # noqa: E402

DEFAULT = augment.augment_settings(config_lib.default_augment_config())
_OFF = dict(rotation=0.0, hflip=False, vflip=False, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))


def _geometry(**overrides):
  """The default settings with the geometry off but for ``overrides``."""
  return dataclasses.replace(DEFAULT, **dict(_OFF, **overrides))


GEOMETRIES = {
  'default': DEFAULT,
  'rotation': _geometry(rotation=180.0),
  'crop': _geometry(crop_scale=(0.3, 1.0), crop_ratio=(0.5, 2.0)),
  'flips': _geometry(hflip=True, vflip=True),
  'off': _geometry(),
}
# (input side H, output side S): equal, downscaling, upscaling by a non-integer factor.
SIZES = [(32, 32), (48, 32), (20, 36)]
WARP_ATOL = 1e-5
COLOR_ATOL = 1e-5


def _geometries(settings, count, seed):
  return np.stack(
    [augment.sample_geometry(tf.constant([seed, i]), settings).numpy() for i in range(count)]
  )


def _boxes(rng, count, num_boxes, size):
  """Random boxes [count, num_boxes, 4], some edges through pixel centres (ties)."""
  corners = rng.uniform(-0.1, 1.1, size=(count, num_boxes, 2, 2))
  boxes = np.concatenate([corners.min(2), corners.max(2)], axis=-1)
  # Edges at (k + 0.5) / S: on the pixel centres of the identity map.
  ties = (rng.integers(0, size, size=(count, num_boxes, 4)) + 0.5) / size
  ties = np.concatenate(
    [np.minimum(ties[..., :2], ties[..., 2:]), np.maximum(ties[..., :2], ties[..., 2:])], -1
  )
  boxes[:, ::2] = ties[:, ::2]
  return boxes.astype(np.float32)


@pytest.mark.parametrize('height, size', SIZES)
@pytest.mark.parametrize('name', sorted(GEOMETRIES))
def test_warp_images_equals_tf_warp_image(name, height, size):
  rng = np.random.default_rng(height + size)
  images = rng.uniform(size=(5, height, height, 3)).astype(np.float32)
  geometry = _geometries(GEOMETRIES[name], 5, seed=size)
  expected = np.stack(
    [
      augment.warp_image(tf.constant(x), tf.constant(g), size=size).numpy()
      for x, g in zip(images, geometry)
    ]
  )
  got = np.asarray(
    jax.jit(lambda x, g: device_augment.warp_images(x, g, size=size))(images, geometry)
  )
  assert got.shape == (5, size, size, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=0, atol=WARP_ATOL)


def test_warp_images_blends_with_the_fill_where_taps_fall_outside():
  # A shift by a quarter pixel to the left: output column 0 samples x = -0.25, whose left tap
  # lies outside the input and reads the fill; a shift by 2 pixels shows only the fill.
  image = np.full((1, 8, 8, 1), 0.8, np.float32)
  for shift, first in ((0.25, 0.75 * 0.8 + 0.25 * 0.3), (2.0, 0.3)):
    geometry = np.array([[[1, 0, -shift / 8], [0, 1, 0], [0, 0, 1]]], np.float32)
    got = np.asarray(device_augment.warp_images(image, geometry, size=8, fill_value=0.3))
    expected = augment.warp_image(
      tf.constant(image[0]), tf.constant(geometry[0]), size=8, fill_value=0.3
    ).numpy()
    np.testing.assert_allclose(got[0], expected, atol=1e-6)
    np.testing.assert_allclose(got[0, :, 0, 0], first, atol=1e-6)
    np.testing.assert_allclose(got[0, :, 3:, 0], 0.8, atol=1e-6)


@pytest.mark.parametrize('height, size', SIZES)
@pytest.mark.parametrize('name', sorted(GEOMETRIES))
def test_boxes_masks_equal_tf_warp_boxes_mask_bit_for_bit(name, height, size):
  del height  # The masks depend on the output side only.
  rng = np.random.default_rng(size)
  count, num_boxes, num_classes = 8, 4, 3
  geometry = _geometries(GEOMETRIES[name], count, seed=size + 1)
  boxes = _boxes(rng, count, num_boxes, size)
  box_count = np.array([0, 1, 2, 3, 4, 4, 2, 1], np.int32)
  # Padding boxes cover the whole image: a mask that used them would show it.
  real = np.arange(num_boxes) < box_count[:, None]
  boxes[~real] = (0.0, 0.0, 1.0, 1.0)
  box_labels = rng.integers(0, num_classes, size=(count, num_boxes)).astype(np.int32)
  masks = jax.jit(lambda b, n, g: device_augment.boxes_masks(b, n, g, size=size))(
    boxes, box_count, geometry
  )
  per_class = jax.jit(
    lambda b, n, g, c: device_augment.boxes_masks(
      b, n, g, size=size, box_labels=c, num_classes=num_classes
    )
  )(boxes, box_count, geometry, box_labels)
  assert masks.dtype == jnp.float32 and per_class.dtype == jnp.uint8
  assert per_class.shape == (count, num_classes, size, size)
  mismatches = per_class_mismatches = 0
  for i in range(count):
    n = box_count[i]
    expected = augment.warp_boxes_mask(
      tf.constant(boxes[i, :n]), tf.constant(geometry[i]), size=size
    )
    mismatches += int(np.sum(np.asarray(masks[i]) != expected.numpy()))
    expected = augment.warp_boxes_mask(
      tf.constant(boxes[i, :n]),
      tf.constant(geometry[i]),
      size=size,
      classes=tf.constant(box_labels[i, :n]),
      num_classes=num_classes,
    )
    per_class_mismatches += int(np.sum(np.asarray(per_class[i]) != expected.numpy()))
  assert (mismatches, per_class_mismatches) == (0, 0)
  assert not np.asarray(masks[0]).any()  # No real box.
  assert np.asarray(masks).any() and not np.asarray(masks).all()


def test_boxes_masks_of_the_identity_are_the_rasterised_boxes_ties_included():
  # Edges through pixel centres: the half-open box keeps the pixel at min, drops it at max.
  boxes = np.array([[[1.5 / 8, 2.5 / 8, 4.5 / 8, 3.5 / 8]]], np.float32)
  mask = np.asarray(device_augment.boxes_masks(boxes, np.array([1]), np.eye(3)[None], size=8))
  expected = np.zeros((8, 8), np.float32)
  expected[1:4, 2:3] = 1.0
  np.testing.assert_array_equal(mask[0], expected)


def _color_factors(count, seed, hue=0.5):
  return np.stack(
    [
      augment.sample_color_factors(
        tf.constant([seed, i]),
        dataclasses.replace(DEFAULT, brightness=0.4, contrast=0.4, saturation=0.6, hue=hue),
      ).numpy()
      for i in range(count)
    ]
  )


def _tf_adjust_color(images, factors):
  return np.stack(
    [augment.adjust_color(tf.constant(x), tf.constant(f)).numpy() for x, f in zip(images, factors)]
  )


@pytest.mark.parametrize('classes', [None, 3])
def test_relevance_map_equals_the_pipelines_relevance_map(classes):
  rng = np.random.default_rng(0)
  shape = (6, 8, 8) if classes is None else (6, classes, 8, 8)
  # Lesion masks on some examples (findings) only, artefacts on others, overlaps too.
  present = rng.uniform(size=shape[:-2] + (1, 1)) < 0.5
  mask = ((rng.uniform(size=shape) < 0.4) & present).astype(np.uint8 if classes else np.float32)
  artefact = (rng.uniform(size=(6, 8, 8)) < 0.1 * rng.integers(0, 2, (6, 1, 1))).astype(np.float32)
  relevance, has_mask = jax.jit(device_augment.relevance_map)(mask, artefact)
  for i in range(6):
    expected, expected_has = augment.relevance_map(mask[i], artefact[i])
    np.testing.assert_array_equal(np.asarray(relevance[i]), expected.numpy())
    np.testing.assert_array_equal(np.asarray(has_mask[i]), expected_has.numpy())
  assert {-1.0, 0.0, 1.0} <= set(np.unique(np.asarray(relevance)))


def test_adjust_color_equals_tf_adjust_color():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(6, 24, 24, 3)).astype(np.float32)
  # Grey, saturated and clipped pixels, and ties between channels (the kernel's branches).
  images[0, :4] = 0.5
  images[1, :4, :, 1] = images[1, :4, :, 0]
  images[2, :4, :, 2] = images[2, :4, :, 1]
  images[3, :4] = (1.0, 0.0, 0.0)
  factors = _color_factors(6, seed=1)
  got = np.asarray(jax.jit(device_augment.adjust_color)(images, factors))
  np.testing.assert_allclose(got, _tf_adjust_color(images, factors), rtol=0, atol=COLOR_ATOL)
  assert got.min() >= 0.0 and got.max() <= 1.0


@pytest.mark.parametrize('delta', [-0.5, -0.49, -0.2, -0.01, 0.0, 0.01, 0.3, 0.49, 0.5])
def test_adjust_hue_equals_tf_adjust_hue_and_wraps_around(delta):
  # Hues all around the circle: red (h = 0), near-red magenta (h just below 6), every sector.
  rng = np.random.default_rng(2)
  images = rng.uniform(size=(1, 16, 16, 3)).astype(np.float32)
  images[0, 0, :4] = [(1.0, 0.0, 0.0), (1.0, 0.0, 0.01), (1.0, 0.01, 0.0), (0.2, 0.2, 0.2)]
  got = np.asarray(device_augment.adjust_hue(images, np.array([delta], np.float32)))
  expected = tf.image.adjust_hue(tf.constant(images[0]), delta).numpy()
  np.testing.assert_allclose(got[0], expected, rtol=0, atol=COLOR_ATOL)
  if abs(delta) == 0.5:
    # Half way round: red becomes cyan, whichever way.
    np.testing.assert_allclose(got[0, 0, 0], (0.0, 1.0, 1.0), atol=1e-6)


def test_adjust_color_of_grey_images_equals_tf():
  rng = np.random.default_rng(3)
  images = rng.uniform(size=(4, 20, 20, 1)).astype(np.float32)
  factors = _color_factors(4, seed=4)
  got = np.asarray(device_augment.adjust_color(images, factors))
  assert got.shape == images.shape
  np.testing.assert_allclose(got, _tf_adjust_color(images, factors), rtol=0, atol=COLOR_ATOL)


@pytest.mark.parametrize('channels', [1, 3])
def test_identity_factors_keep_the_image(channels):
  rng = np.random.default_rng(channels)
  images = rng.uniform(size=(2, 12, 12, channels)).astype(np.float32)
  factors = np.tile(np.array([1.0, 1.0, 1.0, 0.0], np.float32), (2, 1))
  got = np.asarray(device_augment.adjust_color(images, factors))
  np.testing.assert_allclose(got, images, rtol=0, atol=1e-6)
  np.testing.assert_allclose(got, _tf_adjust_color(images, factors), rtol=0, atol=1e-6)


# augment_batch and the train step against augment.augment_example -----------------------------

SIZE = 32
NUM_CLASSES = 3
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _raw_batch(*, multilabel, batch_size=16, seed=0, settings=DEFAULT):
  """The augmentation inputs of a batch (the pipeline's on-device contract) and the seeds."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(batch_size, SIZE, SIZE, 3), dtype=np.uint8)
  num_boxes = 3
  # Boxes on a few images, unevenly spread over the 8 shards; large enough to survive the crop.
  box_count = np.zeros(batch_size, np.int32)
  box_count[[0, 1, 2, 5, 13]] = [1, 2, 3, 1, 2]
  centres = rng.uniform(0.3, 0.7, size=(batch_size, num_boxes, 2))
  halves = rng.uniform(0.15, 0.3, size=(batch_size, num_boxes, 2))
  boxes = np.concatenate([centres - halves, centres + halves], -1).astype(np.float32)
  boxes[np.arange(num_boxes) >= box_count[:, None]] = (0.0, 0.0, 1.0, 1.0)
  seeds = np.stack([np.full(batch_size, seed), np.arange(batch_size)], -1).astype(np.int64)
  geometry, color = [], []
  for s in seeds:
    geometry_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(s, 2))
    geometry.append(augment.sample_geometry(geometry_seed, settings))
    color.append(augment.sample_color_factors(color_seed, settings))
  batch = {
    'image': images,
    'geometry': np.stack(geometry).astype(np.float32),
    'color': np.stack(color).astype(np.float32),
    'boxes': boxes,
    'box_count': box_count,
  }
  if multilabel:
    batch['box_labels'] = rng.integers(0, NUM_CLASSES, size=(batch_size, num_boxes)).astype(
      np.int32
    )
    labels = (rng.uniform(size=(batch_size, NUM_CLASSES)) < 0.4).astype(np.float32)
    for b in range(batch_size):
      labels[b, batch['box_labels'][b, : box_count[b]]] = 1.0
    batch['label'] = labels
  else:
    batch['label'] = rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int32)
  return batch, seeds


def _cpu_augmented(batch, seeds, *, settings=DEFAULT):
  """The batch as augment.augment_example (and example_fn's normalisation) makes it."""
  multilabel = 'box_labels' in batch
  images, masks = [], []
  for i, seed in enumerate(seeds):
    n = batch['box_count'][i]
    classes = (
      dict(classes=tf.constant(batch['box_labels'][i, :n]), num_classes=NUM_CLASSES)
      if multilabel
      else {}
    )
    image, mask = augment.augment_example(
      tf.cast(tf.constant(batch['image'][i]), tf.float32) / 255.0,
      tf.constant(batch['boxes'][i, :n]),
      tf.constant(seed),
      size=SIZE,
      settings=settings,
      **classes,
    )
    images.append(((image - np.float32(MEAN)) / np.float32(STD)).numpy())
    masks.append(mask.numpy())
  masks = np.stack(masks)
  return {
    'image': np.stack(images),
    'label': batch['label'],
    'mask': masks,
    'has_mask': masks.any(axis=(-2, -1)),
  }


@pytest.mark.parametrize('multilabel', [False, True])
def test_augment_batch_equals_augment_example_per_example(multilabel):
  batch, seeds = _raw_batch(multilabel=multilabel)
  expected = _cpu_augmented(batch, seeds)
  got = jax.device_get(
    jax.jit(lambda b: device_augment.augment_batch(b, mean=MEAN, std=STD))(batch)
  )
  assert sorted(got) == ['has_mask', 'image', 'label', 'mask']
  assert got['image'].dtype == np.float32 and got['mask'].dtype == expected['mask'].dtype
  # On the [0, 1] scale within WARP_ATOL + COLOR_ATOL; normalised, divided by std.
  np.testing.assert_allclose(
    got['image'], expected['image'], rtol=0, atol=(WARP_ATOL + COLOR_ATOL) / min(STD)
  )
  assert int(np.sum(got['mask'] != expected['mask'])) == 0
  np.testing.assert_array_equal(got['has_mask'], expected['has_mask'])
  np.testing.assert_array_equal(got['label'], batch['label'])
  # The boxed images keep a box, and the crop drops some pixels of some box.
  assert got['has_mask'].any() and not got['has_mask'].all()


def test_augment_batch_with_the_augmentation_off_is_the_plain_normalisation():
  settings = dataclasses.replace(
    DEFAULT, **_OFF, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
  )
  batch, _ = _raw_batch(multilabel=False, settings=settings)
  got = jax.device_get(device_augment.augment_batch(batch, mean=(0.5,), std=(0.25,)))
  # The identity map samples each pixel centre (S = 32: the index transform is exact), and
  # the jitter of factors (1, 1, 1, 0) keeps the pixels up to float32 rounding (HSV and back).
  np.testing.assert_allclose(got['image'], (batch['image'] / 255.0 - 0.5) / 0.25, atol=1e-5)
  rows = (np.arange(SIZE) + 0.5)[None, :, None]
  cols = (np.arange(SIZE) + 0.5)[None, None, :]
  b = batch['boxes'][:, 0, :, None, None] * SIZE
  first_box = (b[:, 0] <= rows) & (rows < b[:, 2]) & (b[:, 1] <= cols) & (cols < b[:, 3])
  single = batch['box_count'] == 1
  np.testing.assert_array_equal(got['mask'][single], first_box[single])
  assert not got['mask'][batch['box_count'] == 0].any()


def _step_setup(multilabel, parallel):
  config = config_lib.default_config()
  config.model.name = 'tiny_cnn'
  config.train.optimizer = 'sgd'
  config.train.learning_rate = 1e-2
  config.care.alpha = 0.5
  config.parallel = 'mesh' if parallel == 'jit' else parallel
  if multilabel:
    config.task = 'multilabel'
    config.care.stage1_metric = 'mean_auroc'
  model = training.create_model(config, NUM_CLASSES)
  state = training.create_train_state(config, model, (SIZE, SIZE, 3), 10, jax.random.key(0))
  loss = classification_loss.make_classification_loss(
    'ce',
    class_counts=[1] * NUM_CLASSES,
    num_steps=10,
    task='multilabel' if multilabel else 'multiclass',
  )
  plain = dataclasses.replace(training.StepConfig.from_config(config), mean=MEAN, std=STD)
  on_device = dataclasses.replace(plain, device_augment=True)
  axis_name = training.PMAP_AXIS if parallel == 'pmap' else None
  steps = [
    training.make_train_step(model, c, classification_loss=loss, axis_name=axis_name)
    for c in (plain, on_device)
  ]
  return config, model, state, steps


@pytest.mark.parametrize('parallel', ['jit', 'mesh', 'pmap'])
@pytest.mark.parametrize('multilabel', [False, True])
def test_the_augmenting_step_equals_the_step_on_the_cpu_augmented_batch(multilabel, parallel):
  batch, seeds = _raw_batch(multilabel=multilabel)
  cpu_batch = _cpu_augmented(batch, seeds)
  assert int(cpu_batch['has_mask'].sum()) >= 4
  config, model, state, (plain_step, device_step) = _step_setup(multilabel, parallel)
  results = []
  for step, inputs in ((plain_step, cpu_batch), (device_step, batch)):
    if parallel == 'jit':
      new_state, metrics = jax.device_get(jax.jit(step)(state, inputs))
    else:
      runner = training.make_parallel(
        config, step, training.make_eval_step(model, num_classes=NUM_CLASSES)
      )
      with runner.scope():
        placed, metrics = runner.train_step(runner.put_state(state), runner.put_batch(inputs))
      new_state, metrics = runner.get_state(placed), runner.fetch(metrics)
    results.append((new_state, metrics))
  (expected_state, expected), (got_state, got) = results
  for key in ('loss', 'ce', 'care', 'accuracy', 'boxed'):
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert float(got['boxed']) >= 4 and bool(got['guard']['finite_update'])
  chex.assert_trees_all_close(got_state.params, expected_state.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
    got_state.batch_stats, expected_state.batch_stats, rtol=1e-5, atol=1e-6
  )
