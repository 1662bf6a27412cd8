"""DatasetInfo of a dataset: classes, rare classes (the boxed ones by default), counts, sizes."""

import numpy as np
import pytest

from care_jax.data import info as info_lib
from care_jax.data import synthetic_lesions as sl
from tests.helpers import data_fixtures as fx


def test_dataset_info(config):
  info = info_lib.get_dataset_info(config)
  assert info.class_names == sl.CLASS_NAMES
  # Default rare classes: those with boxes in train.
  assert info.rare_classes == (2, 4)
  np.testing.assert_array_equal(info.train_class_counts, fx.SYNTHETIC['train_counts'])
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


def test_mean_std_must_match_channels(config):
  bad = config.copy_and_resolve_references()
  bad.mean = (0.5, 0.5)
  with pytest.raises(ValueError, match='data.mean'):
    info_lib.get_dataset_info(bad)
