"""Image files for inference, preprocessed as the evaluation pipeline preprocesses a split."""

import numpy as np
import pytest

from care_jax.data import file_input
from care_jax.data import pipeline
from tests.helpers import data_fixtures as fx


def test_files_of_the_stored_images_are_the_eval_batches_of_the_split(config, tmp_path):
  stored = fx.raw_examples(config, 'test')
  paths = []
  for n, ex in enumerate(stored):
    fx.save_image(tmp_path / f'{n}.png', ex['image'])
    paths.append(str(tmp_path / f'{n}.png'))
  batches = list(file_input.file_batches(config, paths, batch_size=4))
  assert [len(b['index']) for b in batches] == [4, 4, 4, 3]
  assert np.concatenate([b['index'] for b in batches]).tolist() == list(range(len(stored)))
  (evaluated,) = pipeline.eval_batches(config, 'test', batch_size=len(stored))
  images = np.concatenate([b['image'] for b in batches])
  assert images.dtype == np.float32 and images.shape == (len(stored), 32, 32, 3)
  np.testing.assert_allclose(images, evaluated['image'], atol=1e-6)


def test_unreadable_files_are_named_or_skipped(config, tmp_path):
  good, bad = tmp_path / 'good.png', tmp_path / 'bad.png'
  fx.save_image(good, np.full((40, 40), 128, np.uint8))  # greyscale, another size: RGB, resized
  bad.write_bytes(b'not a png')
  with pytest.raises(ValueError, match='bad.png'):
    list(file_input.file_batches(config, [str(bad), str(good)], batch_size=2))
  (batch,) = file_input.file_batches(
    config, [str(bad), str(good)], batch_size=2, skip_unreadable=True
  )
  assert batch['index'].tolist() == [1] and batch['image'].shape == (1, 32, 32, 3)
  # Grey 128 everywhere, normalised with the dataset's mean and std.
  expected = (128 / 255 - np.asarray(fx.MEAN)) / np.asarray(fx.STD)
  np.testing.assert_allclose(batch['image'][0], np.broadcast_to(expected, (32, 32, 3)), atol=1e-5)
  assert not list(file_input.file_batches(config, [str(bad)], batch_size=1, skip_unreadable=True))
  with pytest.raises(ValueError, match='batch_size must be >= 1'):
    next(file_input.file_batches(config, [str(good)], batch_size=0))
