"""The box generators (arrays in, boxes out) on drawn blobs: Otsu, spectral residual, masks,
Grad-CAM of a model; batches, nothing found, bad arguments, boxes.csv rows."""

import csv

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import boxes
from care_jax import models
from tests.helpers import blobs
from tests.helpers import model_fixtures as mf


@pytest.mark.parametrize('contrast', ['log_red_green', 'darkness'])
def test_otsu_recovers_drawn_blobs(contrast):
  images, true = blobs.blob_images()
  found_boxes, found = boxes.otsu_boxes(images, contrast=contrast)
  assert found.all()
  assert np.asarray(boxes.box_iou(found_boxes, true)).min() > 0.8


def test_otsu_works_on_any_scale():
  images, _ = blobs.blob_images()
  a = boxes.otsu_boxes(images)
  b = boxes.otsu_boxes(images.astype(np.float32) / 255.0)
  np.testing.assert_array_equal(a[0], b[0])


def test_spectral_residual_recovers_drawn_blobs():
  # Edge responses make the saliency spill about 2 working pixels past the
  # blob: at a working size of 256 that costs less than 0.1 IoU.
  images, true = blobs.blob_images(size=256)
  found_boxes, found = boxes.spectral_residual_boxes(images, work_size=256)
  assert found.all()
  assert np.asarray(boxes.box_iou(found_boxes, true)).min() > 0.8


def test_mask_boxes_are_the_masks_bounding_boxes():
  masks = np.zeros((2, 30, 40), np.uint8)
  masks[0, 5:12, 7:33] = 255
  masks[1] = blobs.ellipse(40, (15, 20), (6, 11))[:30] * 255
  found_boxes, found = boxes.mask_boxes(masks)
  assert found.all()
  np.testing.assert_allclose(found_boxes[0], [5 / 30, 7 / 40, 12 / 30, 33 / 40])
  np.testing.assert_allclose(found_boxes[1], blobs.tight_box(masks[1] > 0), atol=1e-7)
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
  images, _ = blobs.blob_images(num=5, seed=3)
  for generator in (boxes.otsu_boxes, boxes.spectral_residual_boxes):
    batched = generator(images, batch_size=2)  # chunks of 2, 2, 1 (padded)
    single = [generator(images[n : n + 1]) for n in range(len(images))]
    np.testing.assert_array_equal(batched[0], np.concatenate([s[0] for s in single]))
    np.testing.assert_array_equal(batched[1], np.concatenate([s[1] for s in single]))


@pytest.fixture(scope='module')
def tiny_model():
  """(config, model, variables): the default tiny CNN, freshly initialised, 5 classes."""
  return mf.created_tiny_model()


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
  images, _ = blobs.blob_images(num=1)
  with pytest.raises(ValueError, match='contrast'):
    boxes.otsu_boxes(images, contrast='blue')
  with pytest.raises(ValueError, match='log_red_green.*channels'):
    boxes.otsu_boxes(images[..., :1])
  with pytest.raises(ValueError, match=r'images must have shape \[N, H, W, C\]'):
    boxes.spectral_residual_boxes(images[0])
  with pytest.raises(ValueError, match='fraction'):
    model, variables = _pool_model()
    boxes.grad_cam_boxes(model, variables, np.zeros((1, 64, 64, 3)), [0], fraction=0.0)


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
