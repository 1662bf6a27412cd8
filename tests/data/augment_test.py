"""The training augmentation: AugmentSettings, the geometry, boxes and masks moved with the image
(one mask per finding too), and the colour jitter against torchvision's formulas."""

import colorsys
import dataclasses

import jax
import numpy as np
import pytest
from scipy import ndimage
import tensorflow as tf

from care_jax import config as config_lib
from care_jax.data import augment
from care_jax.data import preprocess

NO_JITTER = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
IDENTITY = augment.AugmentSettings(
  rotation=0.0, hflip=False, vflip=False, **NO_JITTER, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)
)


def _settings(**overrides):
  config = config_lib.default_augment_config()
  config.update(overrides)
  return augment.augment_settings(config)


def _seed(i, base=11):
  return tf.constant([base, i], tf.int64)


def _affine(linear, offset):
  matrix = np.eye(3, dtype=np.float32)
  matrix[:2, :2], matrix[:2, 2] = linear, offset
  return tf.constant(matrix)


# Settings --------------------------------------------------------------------


def test_default_config_is_off_and_valid():
  config = config_lib.default_augment_config()
  assert config.enabled is False
  config_lib.validate_augment(config)
  settings = augment.augment_settings(config)
  assert settings.crop_scale == (0.5, 1.0) and settings.rotation == 180.0


@pytest.mark.parametrize(
  'enabled, on_device, expected',
  [(True, True, True), (False, True, False), (True, False, False), (True, 'auto', False)],
)
def test_on_device_reads_the_resolved_value_and_an_unresolved_auto_stays_on_the_host(
  monkeypatch, enabled, on_device, expected
):
  # The rule of 'auto' is the config's (tests/config/schema_test.py): the pipeline only
  # reads what resolve_recipe wrote, whatever the backend.
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  config = config_lib.default_augment_config()
  config.enabled = enabled
  config.on_device = on_device
  assert augment.on_device(config) is expected


def test_on_device_defaults_to_auto_and_takes_bools():
  config = config_lib.default_augment_config()
  assert config.on_device == 'auto'
  config.on_device = True  # A bool or 'auto', on the command line too.
  config.on_device = 'auto'


# Geometry --------------------------------------------------------------------


def test_disabled_geometry_is_the_identity():
  for i in range(20):
    # crop_scale=(1, 1) disables the crop whatever crop_ratio (containing 1).
    for ratio in ((1.0, 1.0), (0.75, 4 / 3)):
      geometry = augment.sample_geometry(_seed(i), dataclasses.replace(IDENTITY, crop_ratio=ratio))
      np.testing.assert_allclose(geometry.numpy(), np.eye(3), atol=1e-6)


def test_crop_area_ratio_and_position_follow_the_settings():
  settings = _settings(rotation=0.0, hflip=False, vflip=False)
  areas, ratios = [], []
  for i in range(300):
    geometry = augment.sample_geometry(_seed(i), settings).numpy()
    w, h = geometry[0, 0], geometry[1, 1]
    assert geometry[0, 1] == 0 and geometry[1, 0] == 0
    areas.append(w * h)
    ratios.append(w / h)
    # The output's corners map inside the input image.
    corners = geometry @ np.array([[0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]).T
    assert corners[:2].min() >= -1e-6 and corners[:2].max() <= 1 + 1e-6
  areas, ratios = np.array(areas), np.array(ratios)
  assert areas.min() >= 0.5 - 1e-6 and areas.max() <= 1 + 1e-6
  assert ratios.min() >= 0.75 - 1e-6 and ratios.max() <= 4 / 3 + 1e-6
  # Not degenerate: the draws spread over the ranges.
  assert areas.min() < 0.6 and areas.max() > 0.9
  assert ratios.min() < 0.85 and ratios.max() > 1.2


def test_crop_falls_back_to_the_widest_crop_in_the_ratio_range():
  # No crop of area 1 with ratio in [2, 3] fits: torchvision's fallback is
  # the full width, height 1 / 2, centred vertically at a random position.
  geometry = augment.sample_geometry(
    _seed(0), dataclasses.replace(IDENTITY, crop_ratio=(2.0, 3.0))
  ).numpy()
  np.testing.assert_allclose([geometry[0, 0], geometry[1, 1]], [1.0, 0.5])
  assert 0.0 <= geometry[1, 2] <= 0.5


def test_rotation_angles_and_flips_are_drawn_in_range():
  settings = dataclasses.replace(IDENTITY, rotation=30.0, hflip=True, vflip=True)
  angles, flips = [], []
  for i in range(400):
    linear = augment.sample_geometry(_seed(i), settings).numpy()[:2, :2]
    # linear = F R(-theta): rows are +-(cos, sin) and +-(-sin, cos).
    flip = np.sign(np.diag(linear) + 1e-9)
    rotation = flip[:, None] * linear
    angles.append(np.degrees(np.arctan2(rotation[0, 1], rotation[0, 0])))
    flips.append(flip < 0)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(2), atol=1e-5)
  angles, flips = np.array(angles), np.array(flips)
  assert np.abs(angles).max() <= 30 + 1e-4
  assert angles.min() < -25 and angles.max() > 25
  # Each axis flips with probability 1/2 (4 standard errors of 400 draws).
  np.testing.assert_allclose(flips.mean(0), 0.5, atol=4 * np.sqrt(0.25 / 400))


def test_same_seed_same_augmentation_other_seed_differs():
  image = tf.random.stateless_uniform([16, 16, 3], [1, 2])
  boxes = tf.constant([[0.2, 0.3, 0.7, 0.6]])
  a = augment.augment_example(image, boxes, _seed(1), size=16, settings=_settings())
  b = augment.augment_example(image, boxes, _seed(1), size=16, settings=_settings())
  c = augment.augment_example(image, boxes, _seed(2), size=16, settings=_settings())
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])


def test_warp_image_matches_exact_flips_and_quarter_turns():
  image = np.random.default_rng(0).uniform(size=(6, 6, 3)).astype(np.float32)
  cases = [
    (np.eye(2), (0, 0), image),
    (np.diag([-1, 1]), (1, 0), image[:, ::-1]),  # x -> 1 - x
    (np.diag([1, -1]), (0, 1), image[::-1]),  # y -> 1 - y
    # Output (x, y) shows input (y, 1 - x): a quarter turn.
    (np.array([[0, 1], [-1, 0]]), (0, 1), np.rot90(image, k=-1)),
  ]
  for linear, offset, expected in cases:
    warped = augment.warp_image(image, _affine(linear, offset), size=6)
    np.testing.assert_allclose(warped, expected, atol=1e-5)


def test_warp_image_zoom_interpolates_bilinearly_and_fills_outside():
  image = np.random.default_rng(1).uniform(size=(4, 4, 1)).astype(np.float32)
  # Output 8 x 8 of the 4 x 4 input: output centre (j + 0.5) / 8 shows input
  # pixel coordinate (j + 0.5) / 2 - 0.5.
  warped = augment.warp_image(image, tf.eye(3), size=8).numpy()[..., 0]
  coords = (np.arange(8) + 0.5) / 2 - 0.5
  padded = np.pad(image[..., 0], 1, constant_values=augment.FILL_VALUE)
  rows = ndimage.map_coordinates(
    padded, np.meshgrid(coords + 1, coords + 1, indexing='ij'), order=1
  )
  np.testing.assert_allclose(warped, rows, atol=1e-5)
  # A shift by half the image leaves the fill value on the uncovered half.
  shifted = augment.warp_image(image, _affine(np.eye(2), (0.5, 0)), size=4)
  np.testing.assert_array_equal(shifted.numpy()[:, 2:], augment.FILL_VALUE)


def test_warped_mask_of_the_identity_is_rasterize_boxes():
  rng = np.random.default_rng(2)
  for n in range(4):
    ys = np.sort(rng.uniform(0, 1, (n, 2)), axis=1)
    xs = np.sort(rng.uniform(0, 1, (n, 2)), axis=1)
    boxes = np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], -1)
    boxes = boxes.reshape(n, 4).astype(np.float32)
    mask = augment.warp_boxes_mask(boxes, tf.eye(3), size=13).numpy()
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, preprocess.rasterize_boxes(boxes, 13))


@pytest.mark.parametrize('size', [8, 13, 24])
def test_warped_mask_of_the_identity_is_rasterize_boxes_with_edges_on_pixel_centres(size):
  # Edges on pixel centres and pixel edges (multiples of 1 / 2S): the
  # half-open ties must fall the same way in both.
  rng = np.random.default_rng(size)
  edges = np.sort(rng.integers(0, 2 * size + 1, (40, 2, 2)), axis=-1) / (2.0 * size)
  boxes = np.stack([edges[:, 0, 0], edges[:, 1, 0], edges[:, 0, 1], edges[:, 1, 1]], -1)
  boxes = boxes.astype(np.float32)
  for box in boxes:
    mask = augment.warp_boxes_mask(box[None], tf.eye(3), size=size).numpy()
    np.testing.assert_array_equal(mask, preprocess.rasterize_boxes(box[None], size), str(box))
  # A box [0, 0.5) x [0, 0.25) on 4 x 4 is rows 0-1 of column 0, as rasterize_boxes.
  mask = augment.warp_boxes_mask([[0.0, 0.0, 0.5, 0.25]], tf.eye(3), size=4).numpy()
  np.testing.assert_array_equal(mask, np.pad(np.ones((2, 1)), ((0, 2), (0, 3))))


def test_warped_mask_tests_each_mapped_pixel_centre_against_the_boxes():
  # Numpy reference: map every output pixel centre, test it box by box.
  boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.55, 0.55, 0.9, 0.8]], np.float32)
  for i in range(10):
    geometry = augment.sample_geometry(_seed(i), _settings())
    mask = augment.warp_boxes_mask(boxes, geometry, size=20).numpy()
    expected = np.zeros((20, 20), np.float32)
    for row in range(20):
      for col in range(20):
        vx, vy, _ = geometry.numpy() @ [(col + 0.5) / 20, (row + 0.5) / 20, 1]
        expected[row, col] = any(b[0] <= vy < b[2] and b[1] <= vx < b[3] for b in boxes)
    assert np.abs(mask - expected).sum() <= 1  # float32 ties on an edge.
  assert set(np.unique(mask)) <= {0.0, 1.0}


def test_bright_square_stays_under_the_mask_for_many_seeds():
  size = 32
  settings = _settings(**NO_JITTER)
  run = tf.function(
    lambda image, boxes, seed: augment.augment_example(
      image, boxes, seed, size=size, settings=settings
    )
  )
  rng = np.random.default_rng(3)
  ring = np.ones((3, 3), bool)
  transformed = visible = 0
  for i in range(300):
    height, width = rng.integers(4, size // 2, size=2, endpoint=True)
    top, left = rng.integers(0, size - height + 1), rng.integers(0, size - width + 1)
    image = np.full((size, size, 3), 0.1, np.float32)
    image[top : top + height, left : left + width] = 0.9
    boxes = np.array([[top, left, top + height, left + width]], np.float32) / size
    out, mask = run(image, boxes, _seed(i))
    bright = out.numpy().mean(-1) > 0.5
    mask = mask.numpy().astype(bool)
    # Bright pixels lie in the mask grown by 1 px (bilinear edge), and the
    # mask shrunk by 1 px is bright.
    assert not np.any(bright & ~ndimage.binary_dilation(mask, ring)), i
    assert not np.any(ndimage.binary_erosion(mask, ring) & ~bright), i
    transformed += not np.array_equal(mask, preprocess.rasterize_boxes(boxes, size))
    visible += mask.any()  # Rotations and crops may cut a corner square out.
  assert transformed > 250 and visible > 250


def _box_on_pixel_edges(rng, height):
  """A normalised box whose edges are pixel edges of an input of side ``height``."""
  ys = np.sort(rng.choice(height + 1, 2, replace=False))
  xs = np.sort(rng.choice(height + 1, 2, replace=False))
  return np.array([ys[0], xs[0], ys[1], xs[1]], np.float32) / height


@pytest.mark.parametrize('height, size', [(20, 20), (30, 20)])
def test_warped_mask_of_a_box_is_the_warped_box_up_to_corners_and_ties(height, size):
  # A mask that equals a box (edges on input pixel edges) warps as the box,
  # except within half an input pixel of two edges (bilinear rounds the
  # corner off) or on an edge (ties).
  rng = np.random.default_rng(height)
  settings = _settings()
  differing = transformed = 0
  for i in range(40):
    box = _box_on_pixel_edges(rng, height)
    geometry = augment.sample_geometry(_seed(i, base=5), settings)
    mask = augment.warp_mask(preprocess.rasterize_boxes(box[None], height), geometry, size=size)
    expected = augment.warp_boxes_mask(box[None], geometry, size=size).numpy()
    mask = mask.numpy()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    transformed += not np.array_equal(expected, preprocess.rasterize_boxes(box[None], size))
    for row, col in zip(*np.nonzero(mask != expected)):
      v = geometry.numpy() @ [(col + 0.5) / size, (row + 0.5) / size, 1]
      y, x = v[1] * height, v[0] * height  # Input pixel units.
      dy = np.abs(y - box[[0, 2]] * height).min()
      dx = np.abs(x - box[[1, 3]] * height).min()
      on_edge = min(dx, dy) < 1e-3
      assert (dx < 0.5 and dy < 0.5) or on_edge, (i, row, col, dx, dy)
      # Off an edge, only the box keeps such a pixel: the corner is cut.
      assert on_edge or expected[row, col] == 1.0
      differing += 1
  assert transformed > 30
  assert 0 < differing < 0.02 * 40 * size * size


def test_warped_mask_moves_as_an_image_that_encodes_it():
  rng = np.random.default_rng(8)
  mask = (ndimage.gaussian_filter(rng.uniform(size=(24, 24)), 3) > 0.5).astype(np.float32)
  assert 0 < mask.mean() < 1
  settings = _settings(**NO_JITTER)
  seen = set()
  for i in range(20):
    image, warped = augment.augment_example(
      np.repeat(mask[..., None], 3, -1),
      np.zeros((0, 4)),
      _seed(i),
      size=16,
      settings=settings,
      mask=mask,
    )
    np.testing.assert_array_equal(warped, image.numpy()[..., 0] >= 0.5)
    geometry = augment.sample_geometry(
      tf.unstack(tf.random.experimental.stateless_split(_seed(i), 2))[0], settings
    )
    np.testing.assert_array_equal(warped, augment.warp_mask(mask, geometry, size=16))
    seen.add(warped.numpy().tobytes())
  assert len(seen) == 20
  with pytest.raises(ValueError, match='per-class'):
    augment.augment_example(
      mask[..., None],
      np.zeros((0, 4)),
      _seed(0),
      size=16,
      settings=settings,
      mask=mask,
      classes=np.zeros(0, np.int64),
      num_classes=2,
    )


def test_colour_jitter_leaves_the_mask_alone():
  image = tf.random.stateless_uniform([24, 24, 3], [3, 4])
  boxes = tf.constant([[0.2, 0.3, 0.7, 0.6]])
  for i in range(5):
    _, plain = augment.augment_example(
      image, boxes, _seed(i), size=24, settings=_settings(**NO_JITTER)
    )
    jittered, mask = augment.augment_example(image, boxes, _seed(i), size=24, settings=_settings())
    np.testing.assert_array_equal(mask, plain)
    assert jittered.numpy().min() >= 0 and jittered.numpy().max() <= 1


# Colour jitter ---------------------------------------------------------------


def _torchvision_jitter(image, b, c, s, hue):
  """Numpy reference of torchvision's ColorJitter functions, in this order."""
  gray = lambda x: x @ np.array([0.2989, 0.587, 0.114])
  image = np.clip(image * b, 0, 1)
  image = np.clip(c * image + (1 - c) * gray(image).mean(), 0, 1)
  image = np.clip(s * image + (1 - s) * gray(image)[..., None], 0, 1)
  out = np.empty_like(image)
  for idx in np.ndindex(image.shape[:2]):
    h, sat, v = colorsys.rgb_to_hsv(*image[idx])
    out[idx] = colorsys.hsv_to_rgb((h + hue) % 1.0, sat, v)
  return out


def test_adjust_color_matches_torchvision_formulas():
  image = np.random.default_rng(4).uniform(size=(8, 8, 3)).astype(np.float32)
  for factors in ((1.3, 0.7, 1.4, 0.1), (0.6, 1.5, 0.5, -0.3), (1, 1, 0, 0.45)):
    out = augment.adjust_color(image, tf.constant(factors, tf.float32))
    np.testing.assert_allclose(out, _torchvision_jitter(image, *factors), atol=2e-5)


def test_adjust_color_grey_image_gets_brightness_and_contrast_only():
  image = np.random.default_rng(5).uniform(size=(5, 5, 1)).astype(np.float32)
  out = augment.adjust_color(image, tf.constant([1.2, 0.8, 0.0, 0.3]))
  bright = np.clip(image * 1.2, 0, 1)
  np.testing.assert_allclose(out, np.clip(0.8 * bright + 0.2 * bright.mean(), 0, 1), atol=1e-6)


def test_color_factors_are_drawn_in_torchvision_ranges():
  factors = np.stack(
    [
      augment.sample_color_factors(
        _seed(i), dataclasses.replace(IDENTITY, brightness=1.5, contrast=0.2, hue=0.1)
      ).numpy()
      for i in range(200)
    ]
  )
  assert factors[:, 0].min() >= 0 and factors[:, 0].max() <= 2.5  # max(0, 1 - 1.5)
  assert factors[:, 0].min() < 0.25 and factors[:, 0].max() > 2.25
  assert factors[:, 1].min() >= 0.8 and factors[:, 1].max() <= 1.2
  np.testing.assert_array_equal(factors[:, 2], 1.0)  # saturation off
  assert np.abs(factors[:, 3]).max() <= 0.1 and factors[:, 3].min() < -0.08
  unchanged = augment.sample_color_factors(_seed(0), IDENTITY)
  np.testing.assert_array_equal(unchanged, [1, 1, 1, 0])


def test_per_finding_masks_move_with_the_augmentation():
  boxes = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8], [0.6, 0.1, 0.8, 0.3]], np.float32)
  classes = np.array([2, 0, 2])
  settings = augment.AugmentSettings(
    rotation=30.0,
    hflip=True,
    vflip=True,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    hue=0.0,
    crop_scale=(0.6, 1.0),
    crop_ratio=(0.75, 1.33),
  )
  geometry = augment.sample_geometry(np.array([4, 9]), settings)
  per_class = augment.warp_boxes_mask(boxes, geometry, size=32, classes=classes, num_classes=3)
  assert per_class.dtype == np.uint8 and per_class.shape == (3, 32, 32)
  for k in range(3):
    alone = augment.warp_boxes_mask(boxes[classes == k], geometry, size=32)
    np.testing.assert_array_equal(per_class[k], alone.numpy().astype(np.uint8), err_msg=k)


def test_relevance_is_plus_inside_the_lesion_minus_outside_and_on_artefacts_zero_unknown():
  lesion = np.zeros((3, 4, 4), np.float32)
  lesion[0, :2, :2] = 1.0  # A lesion box ...
  artefact = np.zeros((3, 4, 4), np.float32)
  artefact[0, 0, 0] = artefact[1, 3, 3] = 1.0  # ... an artefact on it, one alone, none.
  relevance, has_mask = zip(*(augment.relevance_map(m, a) for m, a in zip(lesion, artefact)))
  expected = np.full((3, 4, 4), 0.0, np.float32)
  expected[0] = np.where(lesion[0] > 0, 1.0, -1.0)
  expected[0, 0, 0] = -1.0  # The irrelevant region wins.
  expected[1, 3, 3] = -1.0  # Unknown elsewhere: no lesion box.
  np.testing.assert_array_equal(np.stack(relevance), expected)
  assert [bool(h) for h in has_mask] == [True, True, False]
  # Per finding: the artefact is irrelevant to every finding, the lesion to its own only.
  per_class, has = augment.relevance_map(lesion[:2].astype(np.uint8), artefact[1])
  np.testing.assert_array_equal(per_class[0], np.where(artefact[1] > 0, -1.0, 2 * lesion[0] - 1))
  np.testing.assert_array_equal(per_class[1], -artefact[1])
  assert has.numpy().tolist() == [True, True]
