"""The MedMNIST+ builder on files in the real npz layout: splits, labels, images, errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from care_jax import config as config_lib
from care_jax.config import schema
from care_jax.data import medmnist
from care_jax.data import registry
from tests.helpers import medmnist_files

# Images per class and file split: every class in every split, no two classes alike in train.
COUNTS = {
  'dermamnist': {'train': [3, 4, 2, 1, 3, 5, 2], 'val': [1] * 7, 'test': [2, 1, 1, 1, 1, 2, 1]},
  'pneumoniamnist': {'train': [3, 5], 'val': [1, 2], 'test': [2, 2]},
  'chestmnist': {'train': [1] * 13 + [2], 'val': [1] * 14, 'test': [1] * 14},
}


def _data_config(tmp_path, flag, size, **medmnist_files_kwargs):
  path = medmnist_files.write_npz(
    tmp_path / 'files', flag, size, COUNTS[flag], side=16, **medmnist_files_kwargs
  )
  data_config = config_lib.default_data_config()
  data_config.name = 'medmnist'
  data_config.dir = str(tmp_path / 'files')
  data_config.cache_dir = str(tmp_path / 'cache')
  data_config.medmnist.flag = flag
  data_config.medmnist.size = size
  return data_config, path


@pytest.mark.parametrize(
  'flag, size, compressed',
  [('dermamnist', 224, True), ('pneumoniamnist', 28, False), ('chestmnist', 64, True)],
)
def test_splits_labels_and_images_equal_a_direct_numpy_reading_of_the_file(
  tmp_path, flag, size, compressed
):
  data_config, path = _data_config(tmp_path, flag, size, compressed=compressed)
  builder = registry.prepared_builder(data_config)
  multilabel = flag in medmnist.MULTILABEL_FLAGS
  label_feature = builder.info.features['labels' if multilabel else 'label']
  names = label_feature.feature.names if multilabel else label_feature.names
  assert tuple(names) == medmnist.CLASS_NAMES[flag]  # The file's order, not sorted.
  with np.load(path) as arrays:
    files = {
      split: (arrays[f'{split}_images'], arrays[f'{split}_labels']) for split in COUNTS[flag]
    }
  for file_split, split in medmnist.SPLIT_NAMES.items():
    images, labels = files[file_split]
    assert builder.info.splits[split].num_examples == len(labels)
    seen = set()
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      image_id = example['image_id'].decode()
      row = int(image_id.removeprefix(f'{file_split}/'))
      seen.add(row)
      expected = images[row] if images.ndim == 4 else np.repeat(images[row][..., None], 3, -1)
      np.testing.assert_array_equal(example['image'], expected)
      if multilabel:
        np.testing.assert_array_equal(example['labels'], np.flatnonzero(labels[row]))
      else:
        assert example['label'] == labels[row, 0]
      assert example['boxes'].shape == (0, 4)
    assert seen == set(range(len(labels)))


def test_a_missing_file_names_the_expected_path_and_the_command_that_fetches_it(tmp_path):
  data_config, _ = _data_config(tmp_path, 'pneumoniamnist', 28)
  data_config.medmnist.flag = 'dermamnist'
  data_config.medmnist.size = 224
  with pytest.raises(ValueError) as error:
    registry.prepared_builder(data_config)
  message = str(error.value)
  assert f'{tmp_path / "files" / "dermamnist_224.npz"} does not exist' in message
  assert "medmnist.DermaMNIST(split='train', download=True, size=224" in message
  assert 'https://zenodo.org/records/10519652/files/dermamnist_224.npz' in message


def test_labels_out_of_range_or_a_missing_array_name_the_file_and_the_array(tmp_path):
  path = medmnist_files.write_npz(tmp_path, 'pneumoniamnist', 28, COUNTS['pneumoniamnist'])
  with np.load(path) as arrays:
    arrays = dict(arrays)
  arrays['val_labels'] = arrays['val_labels'] + 1  # Labels 1, 2 of a two-class flag.
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r'pneumoniamnist.npz: val_labels holds \[2\], outside 0..1'):
    medmnist.read_labels(path, 'pneumoniamnist')
  arrays['val_labels'] -= 1
  del arrays['test_images']
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r"pneumoniamnist.npz has no array 'test_images'"):
    medmnist.read_labels(path, 'pneumoniamnist')


def test_labels_of_another_shape_than_the_flags_are_refused(tmp_path):
  path = medmnist_files.write_npz(tmp_path, 'pneumoniamnist', 28, COUNTS['pneumoniamnist'])
  with pytest.raises(
    ValueError, match=r'train_labels is uint8 \[8, 1\]; expected integers \[8, 14\]'
  ):
    medmnist.read_labels(path, 'chestmnist')


def test_the_configs_flags_and_sizes_are_the_modules():
  assert schema.MEDMNIST_FLAGS == medmnist.FLAGS
  assert schema.MEDMNIST_SIZES == medmnist.SIZES
  assert tuple(medmnist.PYTHON_CLASSES) == medmnist.FLAGS
  # MedMNIST v2's Table 1: the classes of each 2D dataset.
  counts = (9, 14, 7, 4, 2, 5, 2, 8, 8, 11, 11, 11)
  assert tuple(len(medmnist.CLASS_NAMES[flag]) for flag in medmnist.FLAGS) == counts


def test_file_names_follow_the_medmnist_package():
  assert medmnist.file_name('dermamnist', 28) == 'dermamnist.npz'
  assert medmnist.file_name('chestmnist', 224) == 'chestmnist_224.npz'
