"""`care-jax sample-images`: generated test images named by class, for the Quick start."""

import numpy as np
from PIL import Image
import pytest

from care_jax.commands import sample_images
from care_jax.data import synthetic_lesions


def test_sample_images_cycle_through_the_classes_and_are_the_test_split(tmp_path):
  paths = sample_images.write_sample_images(str(tmp_path / 'my_images'), 7)
  names = [p.name for p in paths]
  classes = synthetic_lesions.CLASS_NAMES
  assert names == [f'{i:03d}_{classes[i % len(classes)]}.png' for i in range(7)]
  assert sorted(p.name for p in (tmp_path / 'my_images').iterdir()) == names
  config = synthetic_lesions.synthetic_config()
  # The sixth image is the second test image of the first class.
  expected = synthetic_lesions.generate_example(config, 'test', 1)
  np.testing.assert_array_equal(np.asarray(Image.open(paths[5])), expected['image'])


def test_more_images_than_the_test_split_is_refused():
  with pytest.raises(ValueError, match=r'--count=501: the test split has 500 images'):
    sample_images.write_sample_images('unused', 501)
