"""The packaged MedMNIST+ configs on generated files: dermamnist_care and chestmnist_care.

`care-jax train --config=dermamnist_care --config.data.dir=DIR` must work with no other key.
Its full recipe (a ResNet-50 at 224 px for 30 epochs) takes hours on a CPU, so the test checks
that the config with only ``data.dir`` builds the data and the automatic boxes, and trains the
command with tiny-size overrides (model, image size, steps) but the config's own data, boxes
and protocol.
"""

import json
import os

import numpy as np
import pytest

from care_jax import boxes
from care_jax import config as config_lib
from care_jax.data import info as info_lib
from care_jax.data import pipeline
from tests.helpers import command_line
from tests.helpers import medmnist_files

# DermaMNIST's classes: dermatofibroma (index 3) is the rarest, as in HAM10000.
DERMA_COUNTS = {'train': [3, 4, 3, 2, 4, 6, 3], 'val': [1] * 7, 'test': [1] * 7}
TINY = [
  'model.name=tiny_cnn',
  'data.image_size=32',
  'train.num_steps=4',
  'train.batch_size=8',
  'train.eval_batch_size=8',
  'train.eval_every_steps=2',
  'train.progress=False',
]


def test_dermamnist_care_with_only_data_dir_builds_the_data_and_boxes_of_the_df_images(tmp_path):
  path = medmnist_files.write_npz(tmp_path / 'files', 'dermamnist', 224, DERMA_COUNTS)
  config = config_lib.apply_overrides(
    config_lib.load_config('dermamnist_care'),
    [f'data.dir={tmp_path / "files"}', f'data.cache_dir={tmp_path / "cache"}'],
  )
  config_lib.validate(config)
  info = info_lib.get_dataset_info(config.data)
  with np.load(path) as arrays:
    train_labels = arrays['train_labels'][:, 0]
  np.testing.assert_array_equal(info.train_class_counts, np.bincount(train_labels))
  assert info.rare_classes == (3,) and info.class_names[3] == 'dermatofibroma'
  generated = boxes.generated_boxes(config.data, method=config.data.box_source)
  assert len(generated.indices) == DERMA_COUNTS['train'][3]
  assert generated.found.all()  # Each image's dark ellipse.
  assert generated.image_sizes.tolist() == [[224, 224]] * len(generated.indices)


@pytest.mark.slow
def test_care_jax_train_dermamnist_care_trains_on_the_npz_with_automatic_boxes(tmp_path):
  medmnist_files.write_npz(tmp_path / 'files', 'dermamnist', 224, DERMA_COUNTS, side=32)
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / 'tfds'))
  proc = command_line.care_jax(
    'train',
    '--config=dermamnist_care',
    f'--config.data.dir={tmp_path / "files"}',
    f'--workdir={tmp_path / "run"}',
    *[f'--config.{override}' for override in TINY],
    env=env,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  cached = list((tmp_path / 'tfds').rglob('care_jax_boxes/otsu-*.npz'))
  assert len(cached) == 1  # The Otsu boxes of the DF training images were drawn.
  saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert saved['data']['box_source'] == 'otsu' and saved['data']['medmnist']['size'] == 224


def test_chestmnist_care_reads_the_npz_through_the_pipeline_as_multi_hot_labels(tmp_path):
  counts = {'train': [2] * 14, 'val': [1] * 14, 'test': [1] * 14}
  path = medmnist_files.write_npz(tmp_path / 'files', 'chestmnist', 224, counts, side=16)
  config = config_lib.apply_overrides(
    config_lib.load_config('chestmnist_care'),
    [f'data.dir={tmp_path / "files"}', f'data.cache_dir={tmp_path / "cache"}'],
  )
  config_lib.validate(config)
  info = info_lib.get_dataset_info(config.data)
  assert info.task == 'multilabel' and info.rare_classes == (13,)  # hernia
  with np.load(path) as arrays:
    train_labels, test_labels = arrays['train_labels'], arrays['test_labels']
  np.testing.assert_array_equal(info.train_class_counts, train_labels.sum(axis=0))
  (batch,) = pipeline.eval_batches(config.data, 'test', batch_size=len(test_labels))
  assert batch['image'].shape == (len(test_labels), 224, 224, 3)
  np.testing.assert_array_equal(batch['label'].sum(axis=0), test_labels.sum(axis=0))
  batch = next(
    pipeline.train_batches(config.data, batch_size=8, seed=0, boxes_fn=boxes.replace_boxes)
  )
  assert batch['label'].shape == (8, 14)
