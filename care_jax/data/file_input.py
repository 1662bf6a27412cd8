"""Image files for inference, preprocessed as the evaluation pipeline preprocesses a dataset.

Example::

  for batch in file_batches(config.data, ['a.png', 'b.jpg'], batch_size=32):
    batch['image'].shape  # (2, S, S, 3); batch['index']: the files' positions
"""

from collections.abc import Iterator, Sequence
import logging

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from care_jax.data import preprocess
from care_jax.data import reading
from care_jax.data import registry
from care_jax.data._files import images
from care_jax.data._tensorflow import tf


def stored_image(data_config: ml_collections.ConfigDict, path: str) -> bytes:
  """An image file encoded as the dataset of ``data_config`` stores its images.

  PNG or JPEG, greyscale or RGB: decoded to RGB, shrunk to the dataset's
  ``stored_size`` and re-encoded with its encoding, as its builder does; the
  eval preprocessing then sees the same pixels it sees for the dataset.

  Raises:
    ValueError: the file is missing or cannot be decoded (it is named).
  """
  dataset = registry.dataset(data_config.name)
  image = images.load_rgb(path)
  if dataset.stored_size_key is not None:
    image = images.shrink(image, data_config[dataset.stored_size_key].stored_size)
  return images.encode(image, dataset.encoding)


def file_batches(
  data_config: ml_collections.ConfigDict,
  paths: Sequence[str],
  *,
  batch_size: int,
  skip_unreadable: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """Image files, preprocessed as `care_jax.data.pipeline.eval_batches` preprocesses a split.

  Each file becomes `stored_image`, is decoded by the dataset's image feature
  and goes through the eval preprocessing (`preprocess.example_fn`: resize to
  ``data.image_size``, normalise with ``data.mean`` and ``data.std``).

  Args:
    data_config: the run's ``config.data``.
    paths: the image files.
    batch_size: images per batch (the last batch may be shorter).
    skip_unreadable: leave out files that cannot be read (their positions
      are missing from ``index``) instead of raising.

  Yields:
    ``{'image': float32 [n, S, S, 3], 'index': int64 [n]}``, ``index`` the
    positions of the images in ``paths``.

  Raises:
    ValueError: an unreadable file (named), unless ``skip_unreadable``.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  known = data_config.name in registry.names()
  encoding = registry.dataset(data_config.name).encoding if known else 'png'
  feature = tfds.features.Image(shape=(None, None, 3), encoding_format=encoding)
  make_example = preprocess.example_fn(data_config, 3)
  no_boxes = tf.zeros((0, 4), tf.float32)

  def preprocessed(encoded):
    return make_example(feature.decode_example(encoded), 0, no_boxes)['image']

  for start in range(0, len(paths), batch_size):
    encoded, index = [], []
    for position in range(start, min(start + batch_size, len(paths))):
      try:
        encoded.append(stored_image(data_config, paths[position]))
      except images.UnreadableFile:
        if not skip_unreadable:
          raise
        logging.warning('skipped unreadable image %s', paths[position])
        continue
      index.append(position)
    if not encoded:
      continue
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded, tf.string))
    ds = ds.map(preprocessed, num_parallel_calls=tf.data.AUTOTUNE).batch(len(encoded))
    batch = next(iter(tfds.as_numpy(ds.with_options(reading.read_options()))))
    yield {'image': batch, 'index': np.asarray(index, np.int64)}
