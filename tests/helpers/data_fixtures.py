"""Helpers of the data tests: tiny fixture files, data configs, numpy references, batch checks.

The builder tests (folder, isic2018, rsna_pneumonia, nih_chestxray14) write their fixture files
with these; the pipeline tests read a small synthetic_lesions dataset (`synthetic_config`).
"""

from collections.abc import Sequence
import itertools
import pathlib
from typing import Any

import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from care_jax import config as care_config
from care_jax.data import info as info_lib
from care_jax.data import pipeline
from care_jax.data import synthetic_lesions as sl

BACKGROUND = 20
LESION = 230


def lesion_image(height: int, width: int, box: Sequence[int] | None) -> np.ndarray:
  """uint8 [H, W]: dark background, a bright rectangle at pixel box.

  ``box`` is (xmin, ymin, xmax, ymax) in pixel edges (None: no rectangle).
  """
  image = np.full((height, width), BACKGROUND, np.uint8)
  if box is not None:
    xmin, ymin, xmax, ymax = box
    image[ymin:ymax, xmin:xmax] = LESION
  return image


def save_image(path: pathlib.Path, array: np.ndarray, **kwargs) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def write_lines(path: pathlib.Path, lines: Sequence[str]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(f'{line}\n' for line in lines))


def default_parameters(dataset: str) -> dict[str, Any]:
  """The ``data.<dataset>`` parameters with their defaults: a complete mapping."""
  return care_config.default_config().data[dataset].to_dict()


def data_config(
  name: str | None = None,
  data_dir: pathlib.Path | str | None = None,
  cache_dir: pathlib.Path | str | None = None,
  *,
  image_size: int = 16,
  **params,
) -> ml_collections.ConfigDict:
  """The default data config, or the one of builder ``name``.

  Without ``name``: the config's ``data`` (`care_jax.config.default_config`).
  With it: that config reading ``data_dir`` (prepared in ``cache_dir``) with
  builder ``name``, ``image_size`` and identity normalisation; ``params``
  override ``data.<name>``.
  """
  config = care_config.default_config().data
  if name is None:
    return config
  config.name = name
  config.dir = str(data_dir)
  config.cache_dir = str(cache_dir)
  config.image_size = image_size
  config.mean = (0.0, 0.0, 0.0)
  config.std = (1.0, 1.0, 1.0)
  config[name].update(params)
  return config


def load_splits(builder) -> dict[str, list[dict]]:
  builder.download_and_prepare()
  return {
    split: list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    for split in builder.info.splits
  }


def class_counts(examples, num_classes: int) -> list[int]:
  return np.bincount([ex['label'] for ex in examples], minlength=num_classes).tolist()


def raster(box, size: int) -> np.ndarray:
  """Numpy reference: pixels whose centre lies in the normalised box."""
  centres = (np.arange(size) + 0.5) / size
  rows = (box[0] <= centres) & (centres <= box[2])
  cols = (box[1] <= centres) & (centres <= box[3])
  return rows[:, None] & cols[None, :]


def assert_masks_cover_the_drawn_lesions(config) -> int:
  """Through the pipeline: the training masks are the bright rectangles.

  Reads one epoch of training batches (one batch of all training examples)
  and checks, for every example with a mask, that the mask equals the pixels
  brighter than mid-grey (the lesion drawn where the box is), and that every
  other example has an empty mask. Returns the number of masked examples.
  """
  info = info_lib.get_dataset_info(config)
  size = info.split_sizes['train']
  batch = next(pipeline.train_batches(config, batch_size=size, seed=0))
  assert sorted(batch['label'].tolist()) == sorted(
    np.repeat(np.arange(len(info.class_names)), info.train_class_counts)
  )
  masked = 0
  for image, mask, has_mask in zip(batch['image'], batch['mask'], batch['has_mask']):
    if has_mask:
      bright = image.mean(-1) * 255.0 > (BACKGROUND + LESION) / 2
      np.testing.assert_array_equal(mask, bright.astype(np.float32))
      assert 0 < mask.sum() < mask.size
      masked += 1
    else:
      assert not mask.any()
  return masked


def label_counts(examples, num_classes: int) -> list[int]:
  """Images per class of multi-label examples (an image counts once per label)."""
  counts = np.zeros(num_classes, np.int64)
  for ex in examples:
    counts[np.unique(ex['labels'])] += 1
  return counts.tolist()


# A small synthetic_lesions dataset ------------------------------------------------------------

SYNTHETIC = dict(
  image_size=32,
  train_counts=(8, 8, 4, 8, 4),
  validation_counts=(2, 2, 2, 2, 2),
  test_counts=(3, 3, 3, 3, 3),
)
MEAN = (0.2, 0.4, 0.6)
STD = (0.5, 0.25, 1.0)


def synthetic_config(data_dir, image_size=32, **synthetic):
  """The data config of a small synthetic_lesions dataset in `data_dir`, normalised by MEAN, STD."""
  config = data_config()
  config.dir = str(data_dir)
  config.image_size = image_size
  config.mean = MEAN
  config.std = STD
  config.synthetic.update({**SYNTHETIC, **synthetic})
  return config


def raw_examples(config, split):
  """The stored examples, in the builder's fixed order."""
  builder = sl.SyntheticLesions(
    config=sl.synthetic_config(**config.synthetic.to_dict()), data_dir=config.dir
  )
  builder.download_and_prepare()
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return list(tfds.as_numpy(ds))


def box_union_raster(boxes, size):
  """Numpy reference of the box union, pixel by pixel (half-open boxes)."""
  mask = np.zeros((size, size), np.float32)
  for ymin, xmin, ymax, xmax in boxes:
    for i, j in itertools.product(range(size), repeat=2):
      if ymin * size <= i + 0.5 < ymax * size and (xmin * size <= j + 0.5 < xmax * size):
        mask[i, j] = 1.0
  return mask


def rare_boxes_data_config(data_dir) -> ml_collections.ConfigDict:
  """A small synthetic_lesions dataset in `data_dir`, prepared: 7 rare training images to box."""
  config = care_config.default_data_config()
  config.dir = str(data_dir)
  config.image_size = 32
  config.synthetic.image_size = 32
  config.synthetic.train_counts = (3, 3, 4, 3, 4)
  config.synthetic.validation_counts = (0, 0, 0, 0, 0)
  config.synthetic.test_counts = (1, 1, 1, 1, 1)
  info_lib.get_dataset_info(config)  # Prepares the data.
  return config


def decoy_data_config(data_dir, **decoy) -> ml_collections.ConfigDict:
  """The data config of a small decoy_digits dataset in `data_dir` (40 train, 10 test images)."""
  config = care_config.default_data_config()
  config.name = 'decoy_digits'
  config.dir = str(data_dir)
  config.image_size = 28
  config.decoy_digits.update(dict(dict(num_train=40, num_validation=0, num_test=10), **decoy))
  return config
