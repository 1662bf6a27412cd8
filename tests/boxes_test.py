"""Automatic boxes: generators on drawn blobs, post-processing, references, CSV, data path, CLI."""

import csv
import dataclasses
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from scipy import ndimage

from care_jax import boxes
from care_jax import config as config_lib
from care_jax import models
from care_jax import training
from care_jax.boxes import foreground
from care_jax.boxes import generators

REPO = pathlib.Path(__file__).resolve().parent.parent
SKIN = np.array([224.0, 188.0, 164.0])
LESION = np.array([150.0, 95.0, 62.0])


def _ellipse(size: int, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
  y, x = np.mgrid[:size, :size] + 0.5
  return ((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2 <= 1.0


def _tight_box(mask: np.ndarray) -> np.ndarray:
  """Independent reference: normalised box of a [H, W] mask from its row/column ranges."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  h, w = mask.shape
  return np.array([rows[0] / h, cols[0] / w, (rows[-1] + 1) / h, (cols[-1] + 1) / w])


def _blob_images(num: int = 4, size: int = 64, seed: int = 0):
  """Skin-coloured images with one dark-brown elliptical blob each, and its true box."""
  rng = np.random.default_rng(seed)
  images, true = [], []
  for _ in range(num):
    centre = rng.uniform(0.35, 0.65, 2) * size
    blob = _ellipse(size, tuple(centre), tuple(rng.uniform(0.15, 0.25, 2) * size))
    image = np.where(blob[..., None], LESION, SKIN) + rng.normal(0, 2.0, (size, size, 3))
    images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
    true.append(_tight_box(blob))
  return np.stack(images), np.stack(true).astype(np.float32)


# ---------------------------------------------------------------- post-processing


def test_box_iou_matches_hand_computation():
  assert float(boxes.box_iou([0, 0, 2, 2], [1, 1, 3, 3])) == pytest.approx(1 / 7)
  assert float(boxes.box_iou([0, 0, 1, 1], [2, 2, 3, 3])) == 0.0
  assert float(boxes.box_iou([0, 0, 0, 0], [0, 0, 0, 0])) == 0.0  # empty union
  # Broadcast: [2, 4] against [4]; the second box is half of the first.
  iou = boxes.box_iou([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.3]], [0.1, 0.1, 0.5, 0.5])
  np.testing.assert_allclose(iou, [1.0, 0.5], rtol=1e-6)


def test_largest_component_is_chosen_over_a_smaller_one():
  mask = np.zeros((1, 20, 20), bool)
  mask[0, 2:5, 2:5] = True  # 9 pixels
  mask[0, 10:18, 8:14] = True  # 48 pixels
  found_boxes, found = boxes.boxes_from_foreground(mask)
  np.testing.assert_allclose(found_boxes[0], [10 / 20, 8 / 20, 18 / 20, 14 / 20])
  assert found[0]
  all_boxes, _ = boxes.boxes_from_foreground(mask, largest_component=False)
  np.testing.assert_allclose(all_boxes[0], [2 / 20, 2 / 20, 18 / 20, 14 / 20])


def test_components_never_connect_across_images_of_a_stack():
  # Image 1's small blob sits where image 0's big one does; image 1's own big
  # blob elsewhere must win (a 3-D connectivity would join the small blob to
  # image 0's and make it the largest).
  mask = np.zeros((2, 16, 16), bool)
  mask[0, 0:8, 0:8] = True
  mask[1, 0:2, 0:2] = True
  mask[1, 10:14, 10:14] = True
  found_boxes, _ = boxes.boxes_from_foreground(mask)
  np.testing.assert_allclose(found_boxes[1], [10 / 16, 10 / 16, 14 / 16, 14 / 16])
  # Against scipy's labelling of the single image.
  labels, _ = ndimage.label(mask[1], structure=np.ones((3, 3)))
  biggest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
  np.testing.assert_array_equal(boxes.largest_components(mask)[1], biggest)


def test_diagonal_pixels_are_one_component():
  mask = np.zeros((1, 6, 6), bool)
  mask[0, [0, 1, 2, 3], [0, 1, 2, 3]] = True  # 8-connected diagonal (4 px)
  mask[0, 5, 5] = True
  found_boxes, _ = boxes.boxes_from_foreground(mask)
  np.testing.assert_allclose(found_boxes[0], [0, 0, 4 / 6, 4 / 6])


def test_margin_grows_boxes_and_clips_to_the_image():
  mask = np.zeros((1, 10, 10), bool)
  mask[0, 1:5, 4:8] = True  # box (0.1, 0.4, 0.5, 0.8), 0.4 x 0.4
  found_boxes, _ = boxes.boxes_from_foreground(mask, margin=0.5)
  # 0.2 on every side: (-0.1 -> 0, 0.2, 0.7, 1.0 -> clipped at 1).
  np.testing.assert_allclose(found_boxes[0], [0.0, 0.2, 0.7, 1.0], atol=1e-6)
  np.testing.assert_array_equal(boxes.expand_boxes(np.zeros((1, 4)), margin=0.3), 0.0)
  with pytest.raises(ValueError, match='margin'):
    boxes.expand_boxes(np.zeros((1, 4)), margin=-0.1)


# ---------------------------------------------------------------- references


def test_otsu_threshold_matches_a_brute_force_reference():
  rng = np.random.default_rng(1)
  values = []
  for n in range(3):
    low = rng.normal(60 + 20 * n, 15, (24, 24))
    high = rng.normal(170, 25, (24, 24))
    image = np.where(_ellipse(24, (12, 12), (5 + n, 7)), high, low)
    image = np.clip(np.round(image), 0, 255)
    image[0, 0], image[0, 1] = 0, 255  # Range 0..255: Otsu's bins are the values.
    values.append(image)
  values = np.stack(values)
  ours = np.asarray(boxes.otsu_foreground(values))
  for image, fg in zip(values, ours):
    best, best_t = -1.0, None
    for t in range(255):  # class 0: values <= t
      low, high = image[image <= t], image[image > t]
      if not len(low) or not len(high):
        continue
      between = len(low) * len(high) / image.size**2 * (low.mean() - high.mean()) ** 2
      if between > best + 1e-9:
        best, best_t = between, t
    np.testing.assert_array_equal(fg, image > best_t)


def test_gaussian_blur_matches_scipy():
  x = np.random.default_rng(0).normal(size=(2, 13, 17)).astype(np.float32)
  ours = foreground._separable_filter(jnp.asarray(x), 'gaussian', 1.7, 'reflect')
  ref = ndimage.gaussian_filter(x.astype(np.float64), sigma=(0, 1.7, 1.7), mode='reflect')
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_spectral_residual_saliency_matches_a_numpy_reference():
  images, _ = _blob_images(num=2, size=64)
  ours = boxes.spectral_residual_saliency(images, work_size=64, sigma=2.5)
  for image, saliency in zip(images.astype(np.float64), np.asarray(ours)):
    gray = image @ np.array([0.299, 0.587, 0.114])
    spectrum = np.fft.fft2(gray)
    log_amplitude = np.log(np.abs(spectrum))
    residual = log_amplitude - ndimage.uniform_filter(log_amplitude, 3, mode='nearest')
    ref = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    ref = ndimage.gaussian_filter(ref, 2.5, mode='reflect')
    np.testing.assert_allclose(saliency, ref, rtol=2e-3, atol=1e-3 * ref.max())


# ---------------------------------------------------------------- generators


@pytest.mark.parametrize('contrast', ['log_red_green', 'darkness'])
def test_otsu_recovers_drawn_blobs(contrast):
  images, true = _blob_images()
  found_boxes, found = boxes.otsu_boxes(images, contrast=contrast)
  assert found.all()
  assert np.asarray(boxes.box_iou(found_boxes, true)).min() > 0.8


def test_otsu_works_on_any_scale():
  images, _ = _blob_images()
  a = boxes.otsu_boxes(images)
  b = boxes.otsu_boxes(images.astype(np.float32) / 255.0)
  np.testing.assert_array_equal(a[0], b[0])


def test_spectral_residual_recovers_drawn_blobs():
  # Edge responses make the saliency spill about 2 working pixels past the
  # blob: at a working size of 256 that costs less than 0.1 IoU.
  images, true = _blob_images(size=256)
  found_boxes, found = boxes.spectral_residual_boxes(images, work_size=256)
  assert found.all()
  assert np.asarray(boxes.box_iou(found_boxes, true)).min() > 0.8


def test_mask_boxes_are_the_masks_bounding_boxes():
  masks = np.zeros((2, 30, 40), np.uint8)
  masks[0, 5:12, 7:33] = 255
  masks[1] = _ellipse(40, (15, 20), (6, 11))[:30] * 255
  found_boxes, found = boxes.mask_boxes(masks)
  assert found.all()
  np.testing.assert_allclose(found_boxes[0], [5 / 30, 7 / 40, 12 / 30, 33 / 40])
  np.testing.assert_allclose(found_boxes[1], _tight_box(masks[1] > 0), atol=1e-7)
  rgb, _ = boxes.mask_boxes(np.repeat(masks[..., None], 3, axis=-1))
  np.testing.assert_array_equal(rgb, found_boxes)


class _PoolBackbone(nn.Module):
  """Features = the image average-pooled over 8x8 cells: channel c maps image channel c."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.avg_pool(x, (8, 8), strides=(8, 8))


def _pool_model():
  model = models.Classifier(backbone=_PoolBackbone(), head=models.LinearHead(num_classes=2))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  # Class 0 looks at channel 0; class 1 at nothing (a constant, all-zero map).
  kernel = np.zeros((3, 2), np.float32)
  kernel[0, 0] = 1.0
  variables = jax.tree.map(np.asarray, variables)
  variables['params']['head']['fc']['kernel'] = kernel
  return model, variables


@pytest.mark.parametrize('attention', ['cam', 'grad_cam'])
def test_grad_cam_recovers_a_blob_the_model_looks_at(attention):
  model, variables = _pool_model()
  images = np.zeros((3, 64, 64, 3), np.float32)
  true = []
  for n, (top, left) in enumerate([(8, 16), (24, 8), (32, 32)]):
    images[n, top : top + 24, left : left + 16, 0] = 1.0
    true.append([top / 64, left / 64, (top + 24) / 64, (left + 16) / 64])
  found_boxes, found = boxes.grad_cam_boxes(
    model, variables, images, np.zeros(3, np.int32), attention=attention
  )
  assert found.all()
  assert np.asarray(boxes.box_iou(found_boxes, np.array(true))).min() > 0.8


def test_no_component_means_not_found_never_a_full_image_box():
  constant = np.full((2, 32, 32, 3), 128, np.uint8)
  for found_boxes, found in (
    boxes.otsu_boxes(constant),
    boxes.spectral_residual_boxes(constant),
    boxes.mask_boxes(np.zeros((2, 32, 32))),
  ):
    assert not found.any()
    np.testing.assert_array_equal(found_boxes, 0.0)
  model, variables = _pool_model()
  images = np.zeros((2, 64, 64, 3), np.float32)
  images[:, 8:24, 8:24, 0] = 1.0
  # Class 1's map is constant (zero weights): nothing to threshold.
  found_boxes, found = boxes.grad_cam_boxes(model, variables, images, np.ones(2, np.int32))
  assert not found.any()
  np.testing.assert_array_equal(found_boxes, 0.0)


def test_batched_results_equal_per_image_results():
  images, _ = _blob_images(num=5, seed=3)
  for generator in (boxes.otsu_boxes, boxes.spectral_residual_boxes):
    batched = generator(images, batch_size=2)  # chunks of 2, 2, 1 (padded)
    single = [generator(images[n : n + 1]) for n in range(len(images))]
    np.testing.assert_array_equal(batched[0], np.concatenate([s[0] for s in single]))
    np.testing.assert_array_equal(batched[1], np.concatenate([s[1] for s in single]))


@pytest.fixture(scope='module')
def tiny_model():
  """(config, model, variables): the default tiny CNN, freshly initialised, 5 classes."""
  config = config_lib.default_config()
  model = training.create_model(config, 5)
  state = training.create_train_state(config, model, (32, 32, 3), 10, jax.random.key(0))
  return config, model, {'params': state.params, 'batch_stats': state.batch_stats}


def test_grad_cam_boxes_of_a_created_model_are_batch_independent(tiny_model):
  _, model, variables = tiny_model
  images = np.random.default_rng(0).normal(size=(5, 32, 32, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4])
  batched = boxes.grad_cam_boxes(model, variables, images, labels, batch_size=2, fraction=0.5)
  single = [
    boxes.grad_cam_boxes(model, variables, images[n : n + 1], labels[n : n + 1], fraction=0.5)
    for n in range(5)
  ]
  np.testing.assert_allclose(batched[0], np.concatenate([s[0] for s in single]))
  np.testing.assert_array_equal(batched[1], np.concatenate([s[1] for s in single]))
  # The threshold at fraction x max: the map's own foreground, boxed.
  maps = np.asarray(boxes.grad_cam_maps(model, variables, images, labels))
  fg = maps >= 0.5 * maps.max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(batched[0], boxes.boxes_from_foreground(fg)[0])


def test_generators_reject_bad_arguments():
  images, _ = _blob_images(num=1)
  with pytest.raises(ValueError, match='contrast'):
    boxes.otsu_boxes(images, contrast='blue')
  with pytest.raises(ValueError, match='log_red_green.*channels'):
    boxes.otsu_boxes(images[..., :1])
  with pytest.raises(ValueError, match=r'images must have shape \[N, H, W, C\]'):
    boxes.spectral_residual_boxes(images[0])
  with pytest.raises(ValueError, match='fraction'):
    model, variables = _pool_model()
    boxes.grad_cam_boxes(model, variables, np.zeros((1, 64, 64, 3)), [0], fraction=0.0)


# ---------------------------------------------------------------- boxes.csv


def test_boxes_csv_round_trip_in_the_folder_format(tmp_path):
  path = tmp_path / 'boxes.csv'
  names = ['a/ISIC_1.jpg', 'b,with comma.png', 'a/ISIC_1.jpg']
  pixels = np.array([[1, 2, 30, 40], [0.5, 0, 10.25, 7], [5, 6, 7, 8]])
  boxes.write_boxes_csv(str(path), names, pixels)
  assert path.read_text().splitlines()[0] == 'image,xmin,ymin,xmax,ymax'
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['image'] for r in rows] == names
  read = np.array([[float(r[k]) for k in ('xmin', 'ymin', 'xmax', 'ymax')] for r in rows])
  np.testing.assert_allclose(read, pixels)


def test_boxes_csv_rejects_an_empty_box_naming_the_row(tmp_path):
  with pytest.raises(ValueError, match="box 1 of image 'b.png'"):
    boxes.write_boxes_csv(str(tmp_path / 'x.csv'), ['a.png', 'b.png'], [[0, 0, 4, 4], [5, 0, 5, 4]])


def test_pixel_boxes_scale_by_each_images_size():
  np.testing.assert_allclose(
    boxes.pixel_boxes([[0.1, 0.2, 0.5, 1.0]], [[450, 600]]), [[120, 45, 600, 225]]
  )


# ---------------------------------------------------------------- datasets


@pytest.fixture(scope='module')
def data_config(tmp_path_factory):
  from care_jax.data import info  # pylint: disable=g-import-not-at-top

  config = config_lib.default_data_config()
  config.dir = str(tmp_path_factory.mktemp('tfds'))
  config.image_size = 32
  config.synthetic.image_size = 32
  config.synthetic.train_counts = (3, 3, 4, 3, 4)
  config.synthetic.validation_counts = (0, 0, 0, 0, 0)
  config.synthetic.test_counts = (1, 1, 1, 1, 1)
  info.get_dataset_info(config)  # Prepares the data.
  return config


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


def test_generated_boxes_need_rare_classes_without_manual_boxes(data_config):
  from care_jax.data import reading  # pylint: disable=g-import-not-at-top
  from care_jax.data import registry  # pylint: disable=g-import-not-at-top

  builder = registry.prepared_builder(data_config)
  table = reading.read_split(builder, 'train')
  unboxed = dataclasses.replace(
    table,
    box_values=np.zeros((0, 4), np.float32),
    box_splits=np.zeros(len(table.labels) + 1, np.int64),
  )
  with pytest.raises(ValueError, match='data.rare_classes'):
    boxes.generated_boxes(
      data_config, method='otsu', builder=builder, table=unboxed, use_cache=False
    )
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


def test_cli_writes_a_boxes_csv(data_config, tmp_path):
  out = tmp_path / 'boxes.csv'
  synthetic = data_config.synthetic
  command = [
    sys.executable,
    '-m',
    'care_jax.commands.cli',
    'boxes',
    '--method=otsu',
    f'--config={REPO / "configs" / "synthetic_care.py"}',
    f'--out={out}',
    '--margin=0.1',
    f'--config.data.dir={data_config.dir}',
    '--config.data.image_size=32',
    '--config.data.synthetic.image_size=32',
    f'--config.data.synthetic.train_counts={tuple(synthetic.train_counts)}',
    f'--config.data.synthetic.validation_counts={tuple(synthetic.validation_counts)}',
    f'--config.data.synthetic.test_counts={tuple(synthetic.test_counts)}',
  ]
  result = subprocess.run(
    command,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'rare-class training images boxed by otsu' in result.stdout
  with open(out, newline='') as f:
    rows = list(csv.DictReader(f))
  box_config = config_lib.default_box_config()
  box_config.margin = 0.1
  generated = boxes.generated_boxes(
    data_config, method='otsu', box_config=box_config, use_cache=False
  )
  assert [r['image'] for r in rows] == list(generated.image_ids[generated.found])
  read = np.array([[float(r[k]) for k in ('xmin', 'ymin', 'xmax', 'ymax')] for r in rows])
  np.testing.assert_allclose(read, generated.csv_rows()[1], atol=1e-4)
  assert (read >= 0).all() and (read <= 32).all()


@pytest.mark.slow
def test_benchmark_script_runs_with_tiny_settings(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      str(REPO / 'benchmarks' / 'boxes.py'),
      '--image-size=32',
      '--train-counts=6,6,4,6,4',
      '--stage1-steps=3',
      '--repeats=1',
      f'--data-dir={tmp_path}',
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert any(line.startswith('otsu (log red/green)') for line in lines)
  assert any(line.startswith('grad_cam') for line in lines)
  assert lines[-1].startswith('best mean IoU (rare-class train): ')
