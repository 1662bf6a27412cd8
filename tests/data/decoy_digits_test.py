"""Decoy-Digits (care_jax/data/decoy_digits.py): Ross et al.'s corner decoy on sklearn's digits."""

import numpy as np
import pytest

from care_jax.data import decoy_digits


def _patch(example, size):
  ymin, xmin, ymax, xmax = np.round(example['artefact_boxes'][0] * size).astype(int)
  return ymin, xmin, ymax, xmax


@pytest.mark.parametrize('swapped', [False, True])
def test_the_decoy_lies_where_its_box_says_in_a_corner_with_the_greys_of_the_recipe(swapped):
  config = decoy_digits.decoy_config(num_validation=20, num_test=40, num_train=60, swapped=swapped)
  size, patch = config.image_size, config.patch_size
  corners = set()
  for split in decoy_digits.SPLITS:
    for index in range(20):
      example = decoy_digits.generate_example(config, split, index)
      image, digit = example['image'], example['label']
      assert image.shape == (size, size, 3) and np.all(image == image[..., :1])
      ymin, xmin, ymax, xmax = _patch(example, size)
      assert (ymax - ymin, xmax - xmin) == (patch, patch)
      assert ymin in (0, size - patch) and xmin in (0, size - patch)
      corners.add((ymin, xmin))
      grey = example['decoy_grey']
      np.testing.assert_array_equal(image[ymin:ymax, xmin:xmax], grey)
      # The rest of the patch's margin band has no ink: the digit never touches the decoy.
      outside = np.ones((size, size), bool)
      outside[ymin:ymax, xmin:xmax] = False
      band = outside.copy()
      band[patch : size - patch, patch : size - patch] = False
      assert not image[band].any()
      if split != 'test':
        assert grey == 255 - 25 * digit
      elif swapped:
        assert grey == 25 * digit
      else:
        assert (255 - grey) % 25 == 0 and 0 <= (255 - grey) // 25 <= 9
  assert len(corners) == 4


def test_the_random_test_grey_mostly_points_to_another_digit():
  config = decoy_digits.decoy_config(num_validation=0, num_test=200, num_train=10)
  examples = [decoy_digits.generate_example(config, 'test', i) for i in range(200)]
  shortcut = [(255 - e['decoy_grey']) // 25 for e in examples]
  agree = np.mean([s == e['label'] for s, e in zip(shortcut, examples)])
  assert 0.02 < agree < 0.25  # 1 in 10 by design.
  assert len(set(shortcut)) == 10


def test_splits_are_disjoint_seeded_and_sized_as_asked():
  config = decoy_digits.decoy_config(num_validation=100, num_test=300)
  indices = decoy_digits.split_indices(config)
  sizes = {split: len(i) for split, i in indices.items()}
  assert sizes == {'train': 1797 - 400, 'validation': 100, 'test': 300}
  assert len(np.unique(np.concatenate(list(indices.values())))) == 1797
  small = decoy_digits.split_indices(decoy_digits.decoy_config(num_train=50))
  assert len(small['train']) == 50
  other = decoy_digits.split_indices(
    decoy_digits.decoy_config(num_validation=100, num_test=300, seed=1)
  )
  assert not np.array_equal(other['test'], indices['test'])
  again = decoy_digits.generate_example(config, 'train', 7)
  np.testing.assert_array_equal(
    again['image'], decoy_digits.generate_example(config, 'train', 7)['image']
  )


def test_the_digit_box_holds_the_ink_and_the_digit_is_the_label():
  config = decoy_digits.decoy_config(num_train=30)
  example = decoy_digits.generate_example(config, 'train', 0)
  size = config.image_size
  ymin, xmin, ymax, xmax = np.round(example['lesion_box'] * size).astype(int)
  ink = example['image'][..., 0] >= 64
  top, left, bottom, right = _patch(example, size)
  ink[top:bottom, left:right] = False  # The decoy is no ink.
  assert ink[ymin:ymax, xmin:xmax].sum() == ink.sum() > 0
  images, labels = decoy_digits._digits()
  source = decoy_digits.split_indices(config)['train'][0]
  assert example['label'] == labels[source]


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'image_size': 8}, 'image_size must be >= 12'),
    ({'patch_size': 5}, r'patch_size must lie in \[1, 4\]'),
    ({'num_test': 1797}, 'leave no training digits'),
    ({'num_train': 1700}, 'add up to at most'),
    ({'size': 3}, r"Unknown decoy_digits parameter\(s\) \['size'\]"),
  ],
)
def test_bad_parameters_name_the_parameter(overrides, message):
  with pytest.raises(ValueError, match=message):
    decoy_digits.decoy_config(**overrides)
