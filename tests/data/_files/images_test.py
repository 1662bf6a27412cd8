"""Image and mask files as the file datasets read them: RGB from any PNG or JPEG, shrunk; masks."""

import numpy as np
import tensorflow as tf

from care_jax.data._files import images
from tests.helpers import data_fixtures as fx


def test_greyscale_16_bit_rgba_and_jpeg_become_rgb(tmp_path):
  grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
  deep = grey.astype(np.uint16) * 257  # 16-bit: k * 257 -> k.
  rgba = np.stack([grey, 255 - grey, grey // 2, np.full_like(grey, 9)], -1)
  fx.save_image(tmp_path / 'grey.png', grey)
  fx.save_image(tmp_path / 'deep.png', deep)
  fx.save_image(tmp_path / 'rgba.png', rgba)
  np.testing.assert_array_equal(
    images.load_rgb(tmp_path / 'grey.png'), np.repeat(grey[..., None], 3, -1)
  )
  np.testing.assert_array_equal(
    images.load_rgb(tmp_path / 'deep.png'), np.repeat(grey[..., None], 3, -1)
  )
  np.testing.assert_array_equal(images.load_rgb(tmp_path / 'rgba.png'), rgba[..., :3])
  fx.save_image(tmp_path / 'grey.jpg', grey, quality=100)
  jpeg = images.load_rgb(tmp_path / 'grey.jpg')
  assert jpeg.shape == (6, 8, 3) and np.abs(jpeg - grey[..., None]).max() <= 3


def test_shrink_keeps_aspect_and_never_enlarges():
  image = np.zeros((30, 100, 3), np.uint8)
  assert images.shrink(image, 50).shape == (15, 50, 3)
  assert images.shrink(image, 100).shape == (30, 100, 3)
  assert images.shrink(image, 0).shape == (30, 100, 3)
  assert images.shrink(image, 400).shape == (30, 100, 3)


def test_mask_grey_levels_sizes_and_storage(tmp_path):
  levels = np.array([[0, 127, 128, 255]], np.uint8)
  fx.save_image(tmp_path / 'grey.png', levels)
  np.testing.assert_array_equal(images.load_mask(tmp_path / 'grey.png'), [[0, 0, 1, 1]])
  fx.save_image(tmp_path / 'deep.png', levels.astype(np.uint16) * 257)  # 16 bit: / 257
  np.testing.assert_array_equal(images.load_mask(tmp_path / 'deep.png'), [[0, 0, 1, 1]])
  rgba = np.stack([levels, levels, levels, np.zeros_like(levels)], -1)  # Alpha dropped.
  fx.save_image(tmp_path / 'rgba.png', rgba)
  np.testing.assert_array_equal(images.load_mask(tmp_path / 'rgba.png'), [[0, 0, 1, 1]])
  # Any size with the image's aspect ratio, up to the rounding of a resize.
  assert images.mask_size_problem((450, 600), (450, 600)) is None
  assert images.mask_size_problem((113, 150), (450, 600)) is None  # 112.5 rounded
  assert images.mask_size_problem((226, 300), (451, 600)) is None  # 225.5 rounded
  assert images.mask_size_problem((451, 600), (226, 300)) is None  # A bigger mask
  assert 'aspect ratio' in images.mask_size_problem((600, 450), (450, 600))
  # Stored at the image's size: bilinear, then > 127 again.
  mask = np.zeros((4, 8), bool)
  mask[1:3, 2:6] = True
  stored = tf.io.decode_png(images.stored_mask(mask, (8, 16)), channels=1).numpy()[..., 0]
  np.testing.assert_array_equal(stored, np.kron(mask, np.ones((2, 2), np.uint8)) * 255)
  same = tf.io.decode_png(images.stored_mask(mask, (4, 8)), channels=1).numpy()[..., 0]
  np.testing.assert_array_equal(same, mask * 255)
