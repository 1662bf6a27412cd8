"""The pipeline's on-device augmentation inputs, applied by the train step's augmentation.

`data.augment.on_device` moves the warp, the colour jitter and the masks into the jitted
step; the host draws the same geometry and colour factors. Applied to the pipeline's rows,
`device_augment.augment_batch` gives the host-augmented batch of the same seed: the masks
exactly, the images up to the uint8 rounding of the resized image (at most half a grey level
before the jitter, so 0.5 / 255 / std after normalisation, with a little interpolation slack).
"""

import functools

import jax
import numpy as np
import pytest

from care_jax import config as config_lib
from care_jax.data import pipeline
from care_jax.training import device_augment
from tests.helpers import data_fixtures as fx


def _data_config(tmp_path, *, multilabel: bool, on_device: bool):
  data = config_lib.default_config().data
  data.dir = str(tmp_path / 'tfds')
  data.augment.enabled = True
  data.augment.on_device = on_device
  if multilabel:
    data.name = 'synthetic_multilabel'
    data.image_size = 48
    data.synthetic_multilabel.update(
      image_size=48, num_train=40, num_validation=0, num_test=8, rare_rate_train=0.4
    )
  else:
    data.image_size = 32
    data.synthetic.update(
      image_size=32, train_counts=(6, 6, 6, 6, 6), validation_counts=(0,) * 5, test_counts=(1,) * 5
    )
  return data


@pytest.mark.parametrize('multilabel', [False, True])
def test_on_device_augmentation_equals_the_host_augmentation_of_the_same_seed(tmp_path, multilabel):
  host = next(
    pipeline.train_batches(
      _data_config(tmp_path, multilabel=multilabel, on_device=False), batch_size=16, seed=5
    )
  )
  config = _data_config(tmp_path, multilabel=multilabel, on_device=True)
  inputs = next(pipeline.train_batches(config, batch_size=16, seed=5))
  assert inputs['image'].dtype == np.uint8 and 'mask' not in inputs
  assert inputs['geometry'].shape == (16, 3, 3) and inputs['color'].shape == (16, 4)
  assert inputs['boxes'].shape[:1] == (16,) and inputs['box_count'].shape == (16,)
  assert np.all(inputs['box_count'] <= inputs['boxes'].shape[1])
  assert ('box_labels' in inputs) == multilabel
  device = device_augment.augment_batch(inputs, mean=config.mean, std=config.std)
  np.testing.assert_array_equal(device['label'], host['label'])
  np.testing.assert_array_equal(np.asarray(device['mask']), host['mask'])
  np.testing.assert_array_equal(np.asarray(device['has_mask']), host['has_mask'])
  assert host['has_mask'].any()  # Some boxes survived the crops: the masks were compared.
  std = np.asarray(config.std)
  np.testing.assert_allclose(np.asarray(device['image']), host['image'], atol=0.6 / 255 / std.min())


@pytest.mark.slow
def test_on_device_relevance_equals_the_host_relevance_of_the_same_seed(tmp_path):
  # Decoy-Digits carries artefact boxes: both paths move the decoy's relevance with the image.
  batches = {}
  for on_device in (False, True):
    config = fx.decoy_data_config(tmp_path)
    config.augment.update(enabled=True, on_device=on_device, rotation=30.0)
    batches[on_device] = next(pipeline.train_batches(config, batch_size=24, seed=3))
  host, inputs = batches[False], batches[True]
  assert inputs['artefact_boxes'].shape == (24, 1, 4) and np.all(inputs['artefact_count'] == 1)
  # Jitted as the train step runs it (and compiled faster than run op by op).
  augment = jax.jit(
    functools.partial(device_augment.augment_batch, mean=config.mean, std=config.std)
  )
  device = augment(inputs)
  assert set(device) == set(host) == {'image', 'label', 'mask', 'has_mask', 'relevance'}
  for key in ('relevance', 'has_mask', 'mask', 'label'):
    np.testing.assert_array_equal(np.asarray(device[key]), host[key])
  # Some decoys survived the crops and some did not: both cases were compared.
  assert 0 < host['has_mask'].sum() < 24
  assert set(np.unique(host['relevance'])) == {-1.0, 0.0}
