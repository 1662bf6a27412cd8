"""Generated boxes of a dataset's rare-class training images (config.data.box_source): the
generators' boxes, cached, swapped in for the manual ones."""

import dataclasses
import os

import numpy as np
from PIL import Image
import pytest

from care_jax import boxes
from care_jax import config as config_lib
from care_jax.boxes import generators
from care_jax.data import info as info_lib
from tests.helpers import data_fixtures as fx
from tests.helpers import medmnist_files
from tests.helpers import model_fixtures as mf


@pytest.fixture(scope='module')
def data_config(tmp_path_factory):
  """A small synthetic_lesions dataset with rare training images to box, prepared once."""
  return fx.rare_boxes_data_config(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def tiny_model():
  """(config, model, variables): the default tiny CNN, freshly initialised, 5 classes."""
  return mf.created_tiny_model()


def _stored_train_split(data_config):
  """uint8 images and labels of the train split in the pipeline's order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from care_jax.data import reading  # pylint: disable=g-import-not-at-top
  from care_jax.data import registry  # pylint: disable=g-import-not-at-top

  builder = registry.prepared_builder(data_config)
  ds = builder.as_dataset(
    split='train', shuffle_files=False, read_config=tfds.ReadConfig(options=reading.read_options())
  )
  rows = list(tfds.as_numpy(ds))
  return np.stack([r['image'] for r in rows]), np.array([r['label'] for r in rows])


def test_generated_boxes_are_the_generators_boxes_of_the_rare_images(data_config, tmp_path):
  box_config = config_lib.default_box_config()
  box_config.cache_dir = str(tmp_path)
  generated = boxes.generated_boxes(data_config, method='otsu', box_config=box_config)
  images, labels = _stored_train_split(data_config)
  rare = np.flatnonzero(np.isin(labels, [2, 4]))  # dotted, striped
  np.testing.assert_array_equal(generated.indices, rare)
  expected = boxes.otsu_boxes(images[rare])
  np.testing.assert_allclose(generated.boxes, expected[0], atol=1e-6)
  np.testing.assert_array_equal(generated.found, expected[1])
  np.testing.assert_array_equal(generated.image_sizes, np.full((len(rare), 2), 32))
  assert len(set(generated.image_ids)) == len(rare)
  assert all(i.startswith('synthetic_lesions-train.tfrecord') for i in generated.image_ids)


def test_generated_boxes_come_from_the_cache_the_second_time(data_config, tmp_path, monkeypatch):
  box_config = config_lib.default_box_config()
  box_config.cache_dir = str(tmp_path)
  first = boxes.generated_boxes(data_config, method='spectral_residual', box_config=box_config)
  assert len(os.listdir(tmp_path)) == 1
  monkeypatch.setattr(generators, 'foreground_fn', None)  # Recomputing would fail.
  second = boxes.generated_boxes(data_config, method='spectral_residual', box_config=box_config)
  np.testing.assert_array_equal(first.boxes, second.boxes)
  np.testing.assert_array_equal(first.image_sizes, second.image_sizes)
  # Other parameters: another cache entry.
  monkeypatch.undo()
  box_config.spectral_residual.k = 2.0
  boxes.generated_boxes(data_config, method='spectral_residual', box_config=box_config)
  assert len(os.listdir(tmp_path)) == 2


def test_replace_boxes_swaps_manual_boxes_for_generated_ones(data_config, tmp_path):
  from care_jax.data import reading  # pylint: disable=g-import-not-at-top
  from care_jax.data import registry  # pylint: disable=g-import-not-at-top

  builder = registry.prepared_builder(data_config)
  table = reading.read_split(builder, 'train')
  config = data_config.copy_and_resolve_references()
  assert boxes.replace_boxes(config, builder, table) is table  # no box_source: manual
  with config.unlocked():
    config.box_source = 'otsu'
    config.boxes = config_lib.default_box_config()
  config.boxes.cache_dir = str(tmp_path)
  config.boxes.margin = 0.1
  replaced = boxes.replace_boxes(config, builder, table)
  generated = boxes.generated_boxes(config, method='otsu', box_config=config.boxes)
  counts = np.diff(replaced.box_splits)
  np.testing.assert_array_equal(
    counts, np.isin(np.arange(len(table.labels)), generated.indices[generated.found])
  )
  np.testing.assert_allclose(replaced.box_values, generated.boxes[generated.found])
  np.testing.assert_array_equal(replaced.labels, table.labels)
  with config.unlocked():
    config.box_source = 'magic'
  with pytest.raises(ValueError, match='data.box_source'):
    boxes.replace_boxes(config, builder, table)


def test_generated_boxes_without_rare_classes_or_manual_boxes_box_the_rarest_class(data_config):
  from care_jax.data import reading  # pylint: disable=g-import-not-at-top
  from care_jax.data import registry  # pylint: disable=g-import-not-at-top

  builder = registry.prepared_builder(data_config)
  table = reading.read_split(builder, 'train')
  unboxed = dataclasses.replace(
    table,
    box_values=np.zeros((0, 4), np.float32),
    box_splits=np.zeros(len(table.labels) + 1, np.int64),
  )
  counts = np.bincount(table.labels, minlength=5)
  rarest = np.flatnonzero(counts == counts[counts > 0].min())[0]
  generated = boxes.generated_boxes(
    data_config, method='otsu', builder=builder, table=unboxed, use_cache=False
  )
  np.testing.assert_array_equal(generated.indices, np.flatnonzero(table.labels == rarest))
  config = data_config.copy_and_resolve_references()
  config.rare_classes = ('striped',)
  generated = boxes.generated_boxes(
    config, method='otsu', builder=builder, table=unboxed, use_cache=False
  )
  np.testing.assert_array_equal(table.labels[generated.indices], 4)


def test_mask_method_reads_masks_named_after_the_images(data_config, tmp_path):
  box_config = config_lib.default_box_config()
  box_config.cache_dir = str(tmp_path / 'cache')
  box_config.mask.masks_dir = str(tmp_path / 'masks')
  os.makedirs(box_config.mask.masks_dir)
  with pytest.raises(ValueError, match='no mask'):
    boxes.generated_boxes(data_config, method='mask', box_config=box_config)
  ids = boxes.generated_boxes(data_config, method='otsu', use_cache=False).image_ids
  expected = []
  for n, image_id in enumerate(ids):
    mask = np.zeros((32, 32), np.uint8)
    mask[n : n + 10, 2 * n : 2 * n + 5] = 255
    Image.fromarray(mask).save(
      os.path.join(box_config.mask.masks_dir, f'{image_id}_segmentation.png')
    )
    expected.append([n / 32, 2 * n / 32, (n + 10) / 32, (2 * n + 5) / 32])
  generated = boxes.generated_boxes(data_config, method='mask', box_config=box_config)
  np.testing.assert_allclose(generated.boxes, expected)
  assert generated.found.all()


def test_grad_cam_method_uses_the_stage1_model(data_config, tiny_model, tmp_path, monkeypatch):
  from care_jax import trained_run  # pylint: disable=g-import-not-at-top
  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config, model, variables = tiny_model
  config = config.copy_and_resolve_references()
  config.data = data_config
  calls = []

  def load_model(workdir, *, which='best'):
    calls.append((workdir, which))
    return config, model, variables

  monkeypatch.setattr(trained_run, 'load_model', load_model)
  box_config = config_lib.default_box_config()
  box_config.cache_dir = str(tmp_path)
  with pytest.raises(ValueError, match='stage1_workdir'):
    boxes.generated_boxes(data_config, method='grad_cam', box_config=box_config)
  box_config.grad_cam.stage1_workdir = 'runs/stage1'
  generated = boxes.generated_boxes(data_config, method='grad_cam', box_config=box_config)
  assert calls == [('runs/stage1', 'best')]
  inputs = np.concatenate(
    [b['image'][b['valid']] for b in pipeline.eval_batches(data_config, 'train', batch_size=8)]
  )
  _, labels = _stored_train_split(data_config)
  expected = boxes.grad_cam_boxes(
    model, variables, inputs[generated.indices], labels[generated.indices]
  )
  np.testing.assert_allclose(generated.boxes, expected[0], atol=1e-6)


# Multi-label data: one box per (image, positive rare finding) ------------------------------

PLEURAL, HERNIA = 12, 13  # ChestMNIST's last two findings.


def _chestmnist_labels() -> np.ndarray:
  """uint8 [15, 14]: findings 0-11 on three images each, pleural on two, hernia on one.

  Hernia is the rarest; row 12 is positive for both pleural and hernia, row 14 for none.
  """
  labels = np.zeros((15, 14), np.uint8)
  for row in range(12):
    labels[row, [row, (row + 1) % 12, (row + 2) % 12]] = 1
  labels[12, [PLEURAL, HERNIA]] = 1
  labels[13, PLEURAL] = 1
  return labels


@pytest.fixture(scope='module')
def chestmnist_config(tmp_path_factory):
  """A 16 px ChestMNIST file with `_chestmnist_labels` in train, Otsu boxes of its dark ellipses."""
  root = tmp_path_factory.mktemp('chestmnist')
  counts = {'train': [1] * 14, 'val': [1] * 14, 'test': [1] * 14}
  path = medmnist_files.write_npz(root / 'files', 'chestmnist', 28, counts, side=16)
  with np.load(path) as arrays:
    arrays = dict(arrays, train_labels=_chestmnist_labels())
  np.savez_compressed(path, **arrays)
  config = fx.data_config('medmnist', root / 'files', root / 'cache', flag='chestmnist', size=28)
  config.box_source = 'otsu'
  config.boxes.otsu.contrast = 'darkness'  # The fixture's lesions are darker than the rest.
  config.boxes.cache_dir = str(root / 'boxes')
  return config


def test_multilabel_boxes_are_one_per_image_and_positive_rare_finding(chestmnist_config):
  from care_jax.data import reading  # pylint: disable=g-import-not-at-top
  from care_jax.data import registry  # pylint: disable=g-import-not-at-top

  config = chestmnist_config.copy_and_resolve_references()
  config.rare_classes = ('pleural', 'hernia')
  builder = registry.prepared_builder(config)
  table = reading.read_split(builder, 'train')
  generated = boxes.generated_boxes(config, method='otsu')
  rare = table.labels[:, [PLEURAL, HERNIA]] > 0
  np.testing.assert_array_equal(generated.indices, np.flatnonzero(rare.any(axis=1)))
  assert generated.found.all() and len(generated.indices) == 2
  replaced = boxes.replace_boxes(config, builder, table)
  np.testing.assert_array_equal(np.diff(replaced.box_splits), rare.sum(axis=1))
  for position, index in enumerate(generated.indices):
    start, stop = replaced.box_splits[index : index + 2]
    expected = np.flatnonzero(table.labels[index] * np.isin(np.arange(14), [PLEURAL, HERNIA]))
    np.testing.assert_array_equal(replaced.box_labels[start:stop], expected)
    assert (replaced.box_values[start:stop] == generated.boxes[position]).all()
  # Without data.rare_classes (and no boxes): the rarest finding, hernia.
  assert info_lib.get_dataset_info(chestmnist_config).rare_classes == (HERNIA,)
  generated = boxes.generated_boxes(chestmnist_config, method='otsu', use_cache=False)
  assert generated.findings.sum(axis=0).tolist() == [0] * 13 + [1]
  with pytest.raises(ValueError, match="box method 'grad_cam' does not apply to multi-label"):
    boxes.generated_boxes(chestmnist_config, method='grad_cam', use_cache=False)


def test_multilabel_batches_hold_each_box_in_its_findings_mask(chestmnist_config):
  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = chestmnist_config.copy_and_resolve_references()
  config.rare_classes = ('pleural', 'hernia')
  batch = next(pipeline.train_batches(config, batch_size=15, seed=0, boxes_fn=boxes.replace_boxes))
  is_rare = np.isin(np.arange(14), [PLEURAL, HERNIA])
  np.testing.assert_array_equal(batch['has_mask'], (batch['label'] > 0) & is_rare)
  assert batch['has_mask'].any()
  for image, masks, boxed in zip(batch['image'], batch['mask'], batch['has_mask']):
    if boxed.any():  # The generator's box of this very image (identity normalisation).
      (box,), _ = boxes.otsu_boxes(image[None], contrast='darkness')
      for mask in masks[boxed]:
        np.testing.assert_array_equal(mask, fx.raster(box, 16))
    assert not masks[~boxed].any()


def test_multilabel_boxes_csv_names_the_finding_of_each_box_and_reads_back(
  chestmnist_config, tmp_path
):
  from care_jax.data import chexpert  # pylint: disable=g-import-not-at-top
  from care_jax.data import medmnist  # pylint: disable=g-import-not-at-top
  from care_jax.data import reading  # pylint: disable=g-import-not-at-top
  from care_jax.data import registry  # pylint: disable=g-import-not-at-top
  from care_jax.data._files import rows  # pylint: disable=g-import-not-at-top

  config = chestmnist_config.copy_and_resolve_references()
  config.rare_classes = ('pleural', 'hernia')
  builder = registry.prepared_builder(config)
  table = reading.read_split(builder, 'train')
  generated = boxes.generated_boxes(config, method='otsu', builder=builder, table=table)
  path = tmp_path / 'boxes.csv'
  generated.write_csv(str(path))

  # The multi-label datasets' boxes.csv (CheXpert's reader): image, label, pixel box.
  header, read = rows.read_csv(path, required=chexpert.BOX_COLUMNS)
  assert header == list(chexpert.BOX_COLUMNS)
  names = medmnist.CLASS_NAMES['chestmnist']
  # One row per (image, positive rare finding): the pleural + hernia image has its box twice.
  expected = [
    (image_id, names[k], box)
    for index, image_id, box in zip(generated.indices, generated.image_ids, generated.boxes)
    for k in np.flatnonzero(table.labels[index])
    if k in (PLEURAL, HERNIA)
  ]
  assert len(expected) == 3 and generated.found.all()
  assert [(r['image'], r['label']) for r in read] == [(i, n) for i, n, _ in expected]
  pixels = np.array([[float(r[c]) for c in rows.BOX_COLUMNS] for r in read])
  want = np.array([b[[1, 0, 3, 2]] * 16 for _, _, b in expected])  # xmin, ymin, ... at 16 px.
  np.testing.assert_allclose(pixels, want, atol=1e-3)
