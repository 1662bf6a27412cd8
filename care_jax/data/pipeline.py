"""tf.data input pipelines that yield numpy batches for JAX.

The batch contract: every batch is a dict of numpy arrays

=============  ==========================  =================================
key            dtype, shape                content
=============  ==========================  =================================
``image``      float32 [B, S, S, C]        ``(x / 255 - mean) / std``, per
                                           channel, ``x`` the uint8 pixels
                                           resized (bilinear) to S x S
``label``      int32 [B]                   class index (label order = class
                                           names sorted)
``mask``       float32 [B, S, S]           ``M_in``: union of the example's
                                           boxes rasterised at S x S, zeros
                                           without a box (`rasterize_boxes`)
``has_mask``   bool [B]                    the example has >= 1 box
``valid``      bool [B]                    eval batches only: False on the
                                           padding rows of the last batch
=============  ==========================  =================================

Padding rows have ``valid=False``, label 0, a zero image and a zero mask, so
evaluation runs with static shapes and still counts every example once.

Only the annotation ``boxes`` feeds the masks (for the built-in datasets, the
rare-class training images); ground-truth lesion boxes never do.

Training order: stream position ``p`` of the infinite example stream holds
example ``index_shuffle(p mod N, seed=(seed, p div N))`` of the N training
examples, i.e. each epoch is a fresh permutation derived from
``(seed, epoch)`` and the stream runs on across epoch ends. Global batch ``k``
is stream positions ``[k G, (k + 1) G)`` with ``G = batch_size *
process_count``; process ``i`` takes rows ``[i batch_size, (i + 1)
batch_size)`` of it. Resuming at ``start_step`` therefore computes its first
position directly, without reading the skipped examples.

Example::

  config = default_data_config()
  info = get_dataset_info(config)
  batches = train_batches(config, batch_size=32, seed=0)
  batch = next(batches)  # batch['image'].shape == (32, 64, 64, 3)
"""

from collections.abc import Callable, Iterator, Sequence
import dataclasses
import logging

import os

import ml_collections
from ml_collections import config_dict
import numpy as np

# TensorFlow's start-up INFO lines (oneDNN notices) are noise for our users.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds

from care_jax.data import synthetic_lesions

try:
  # TF must leave the accelerator (and its memory) to JAX.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError as e:  # TF already initialised its devices elsewhere.
  logging.warning('Could not hide GPUs from TensorFlow: %s', e)

_SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and a trainer need to know about a dataset.

  Attributes:
    class_names: class names in label order.
    rare_classes: label indices of the rare classes, sorted.
    train_class_counts: int64 [K] training examples per class.
    split_sizes: number of examples of 'train', 'validation' (absent when
      there is none) and 'test'.
    image_size: S, the side of the images the pipelines yield.
    num_channels: C, the channels of the images the pipelines yield.
  """

  class_names: tuple[str, ...]
  rare_classes: tuple[int, ...]
  train_class_counts: np.ndarray
  split_sizes: dict[str, int]
  image_size: int
  num_channels: int


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the data config: the embedded `synthetic_lesions` dataset.

  Fields: ``name`` (dataset; 'synthetic_lesions'), ``dir`` (tfds data_dir;
  None: the tfds default), ``image_size`` (S of the yielded images),
  ``rare_classes`` (class names; empty: the classes with boxes in train),
  ``mean`` and ``std`` (per channel, on the [0, 1] scale) and ``synthetic``
  (parameters of `synthetic_lesions.SyntheticLesionsConfig`).
  """
  defaults = synthetic_lesions.SyntheticLesionsConfig().parameters()
  defaults = {
      k: tuple(v) if isinstance(v, list) else v for k, v in defaults.items()
  }
  return ml_collections.ConfigDict(
      dict(
          name='synthetic_lesions',
          # A typed placeholder, so --config.data.dir=PATH can set it.
          dir=config_dict.placeholder(str),
          image_size=64,
          rare_classes=(),
          mean=(0.5, 0.5, 0.5),
          std=(0.5, 0.5, 0.5),
          synthetic=defaults,
      )
  )


def _synthetic_builder(
    data_config: ml_collections.ConfigDict,
) -> tfds.core.DatasetBuilder:
  overrides = data_config.get('synthetic')
  overrides = overrides.to_dict() if overrides is not None else {}
  return synthetic_lesions.SyntheticLesions(
      config=synthetic_lesions.synthetic_config(**overrides),
      data_dir=data_config.get('dir'),
  )


# data_config.name -> function building the (unprepared) tfds builder.
_BUILDERS: dict[
    str, Callable[[ml_collections.ConfigDict], tfds.core.DatasetBuilder]
] = {'synthetic_lesions': _synthetic_builder}


def _prepared_builder(
    data_config: ml_collections.ConfigDict,
) -> tfds.core.DatasetBuilder:
  """Returns the builder of ``data_config.name``, prepared (no download)."""
  name = data_config.name
  if name not in _BUILDERS:
    raise ValueError(
        f'data.name={name!r} is not supported; supported datasets:'
        f' {sorted(_BUILDERS)}.'
    )
  builder = _BUILDERS[name](data_config)
  # A no-op when the data already exist in data_dir.
  builder.download_and_prepare()
  return builder


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _read_config() -> tfds.ReadConfig:
  return tfds.ReadConfig(options=_options())


@dataclasses.dataclass(frozen=True)
class _SplitTable:
  """A split held in memory, images still encoded, for random access.

  Attributes:
    images: [N] encoded images (bytes objects).
    labels: int64 [N].
    box_values: float32 [M, 4] the boxes of all examples, concatenated.
    box_splits: int64 [N + 1]; the boxes of example n are
      ``box_values[box_splits[n]:box_splits[n + 1]]``.
  """

  images: np.ndarray
  labels: np.ndarray
  box_values: np.ndarray
  box_splits: np.ndarray


def _read_split(builder: tfds.core.DatasetBuilder, split: str) -> _SplitTable:
  ds = builder.as_dataset(
      split=split,
      shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=_read_config(),
  )
  ds = ds.map(lambda ex: (ex['image'], ex['label'], ex['boxes']))
  images, labels, boxes = [], [], []
  for image, label, example_boxes in tfds.as_numpy(ds):
    images.append(image)
    labels.append(label)
    boxes.append(example_boxes.reshape(-1, 4))
  return _SplitTable(
      images=np.array(images, dtype=object),
      labels=np.array(labels, dtype=np.int64),
      box_values=np.concatenate(boxes).astype(np.float32),
      box_splits=np.cumsum([0] + [len(b) for b in boxes], dtype=np.int64),
  )


def _rare_classes(
    requested: str | Sequence[str],
    class_names: tuple[str, ...],
    boxed: np.ndarray,
) -> tuple[int, ...]:
  if isinstance(requested, str):
    requested = (requested,)
  if not requested:
    return tuple(int(k) for k in boxed)
  unknown = [name for name in requested if name not in class_names]
  if unknown:
    raise ValueError(
        f'data.rare_classes has unknown class name(s) {unknown}; valid class'
        f' names: {list(class_names)}.'
    )
  return tuple(sorted({class_names.index(name) for name in requested}))


def _normalisation(
    data_config: ml_collections.ConfigDict, num_channels: int
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (mean, std), each float32 [C], checked against the channels."""
  stats = []
  for key in ('mean', 'std'):
    value = np.asarray(data_config[key], np.float32).reshape(-1)
    if value.shape[0] not in (1, num_channels):
      raise ValueError(
          f'data.{key} must have 1 or {num_channels} (channels) values, got'
          f' {tuple(value.tolist())}.'
      )
    stats.append(np.broadcast_to(value, (num_channels,)))
  if np.any(stats[1] <= 0):
    raise ValueError(f'data.std must be positive, got {tuple(stats[1])}.')
  return stats[0], stats[1]


def _image_size(data_config: ml_collections.ConfigDict) -> int:
  size = data_config.image_size
  if not isinstance(size, int) or size < 1:
    raise ValueError(f'data.image_size must be a positive int, got {size!r}.')
  return size


def rasterize_boxes(boxes: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
  """Rasterises the union of normalised boxes into a binary mask.

  Pixel ``(i, j)`` of an ``H x W`` mask is inside box ``(ymin, xmin, ymax,
  xmax)`` when its centre is: ``ymin H <= i + 0.5 <= ymax H`` and ``xmin W <=
  j + 0.5 <= xmax W`` (the tfds convention, coordinates in [0, 1]). Apply it
  after any geometric augmentation, to the transformed boxes.

  Example: ``rasterize_boxes([[0.0, 0.0, 0.5, 0.25]], 4)`` is 1 on rows 0-1
  of column 0 only.

  Args:
    boxes: [N, 4] normalised (ymin, xmin, ymax, xmax); N may be 0.
    size: H = W, or (H, W).

  Returns:
    float32 [H, W], 1 inside at least one box, 0 elsewhere (all 0 for N = 0).
  """
  height, width = (size, size) if isinstance(size, int) else size
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  if boxes.shape.rank != 2 or boxes.shape[-1] != 4:
    raise ValueError(f'boxes must have shape [N, 4], got {boxes.shape}.')
  rows = tf.range(height, dtype=tf.float32) + 0.5
  cols = tf.range(width, dtype=tf.float32) + 0.5
  in_rows = (boxes[:, 0:1] * height <= rows) & (rows <= boxes[:, 2:3] * height)
  in_cols = (boxes[:, 1:2] * width <= cols) & (cols <= boxes[:, 3:4] * width)
  inside = in_rows[:, :, None] & in_cols[:, None, :]
  return tf.cast(tf.reduce_any(inside, axis=0), tf.float32)


def _example_fn(
    data_config: ml_collections.ConfigDict, num_channels: int
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
  """Returns f(uint8 image [H, W, C], label, boxes [N, 4]) -> batch row."""
  size = _image_size(data_config)
  mean, std = _normalisation(data_config, num_channels)

  def example(image, label, boxes):
    image = tf.cast(image, tf.float32)
    if tuple(image.shape[:2]) != (size, size):
      # Antialiased, so that downsizing averages instead of aliasing.
      image = tf.image.resize(image, (size, size), 'bilinear', antialias=True)
    image = (image / 255.0 - mean) / std
    # Geometric augmentations go here, moving the boxes with the image, so
    # that the mask is rasterised from the transformed boxes.
    return dict(
        image=image,
        label=tf.cast(label, tf.int32),
        mask=rasterize_boxes(boxes, size),
        has_mask=tf.shape(boxes)[0] > 0,
    )

  return example


def get_dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Prepares the dataset of ``data_config`` if needed and describes it.

  Nothing is downloaded: built-in datasets are generated or read from local
  files. Reads the training labels and boxes once (images stay encoded).

  Raises:
    ValueError: for an unsupported ``data_config.name``, an unknown name in
      ``data_config.rare_classes`` or mean/std of the wrong length.
  """
  builder = _prepared_builder(data_config)
  table = _read_split(builder, 'train')
  class_names = tuple(builder.info.features['label'].names)
  num_channels = builder.info.features['image'].shape[-1]
  _normalisation(data_config, num_channels)
  boxed_classes = np.unique(table.labels[np.diff(table.box_splits) > 0])
  return DatasetInfo(
      class_names=class_names,
      rare_classes=_rare_classes(
          data_config.rare_classes, class_names, boxed_classes
      ),
      train_class_counts=np.bincount(
          table.labels, minlength=len(class_names)
      ).astype(np.int64),
      split_sizes={
          split: builder.info.splits[split].num_examples
          for split in _SPLITS
          if split in builder.info.splits
      },
      image_size=_image_size(data_config),
      num_channels=num_channels,
  )


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index must lie in [0, process_count={process_count}), got'
        f' {process_index}.'
    )


def train_batches(
    data_config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite, shuffled training batches, deterministic given ``seed``.

  See the module docstring for the order. The global batch of step k is the
  same for any ``process_count``; each process yields its ``batch_size`` rows.

  Args:
    data_config: the data config (`default_data_config`).
    batch_size: examples per batch *of this process*.
    seed: shuffling seed (an int64).
    start_step: index of the first batch, to resume a run: the iterator
      yields batches ``start_step, start_step + 1, ...`` of the fresh sequence.
    process_index: this process, in ``[0, process_count)``.
    process_count: number of processes sharing each global batch.

  Returns:
    An iterator of batches (see the module docstring), without ``valid``.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  _check_process(process_index, process_count)
  builder = _prepared_builder(data_config)
  table = _read_split(builder, 'train')
  image_feature = builder.info.features['image']
  make_example = _example_fn(data_config, image_feature.shape[-1])
  num_examples = np.int64(len(table.labels))
  images = tf.constant(table.images.tolist(), tf.string)
  labels = tf.constant(table.labels)
  box_values = tf.constant(table.box_values.reshape(-1, 4))
  box_splits = tf.constant(table.box_splits)
  seed = tf.constant(seed, tf.int64)
  global_batch = batch_size * process_count

  def example(count):
    # count-th example of this process -> stream position -> example index.
    step = start_step + count // batch_size
    position = (
        step * global_batch + process_index * batch_size + count % batch_size
    )
    index = tf.random.experimental.index_shuffle(
        position % num_examples,
        seed=tf.stack([seed, position // num_examples]),
        max_index=num_examples - 1,
    )
    boxes = box_values[box_splits[index] : box_splits[index + 1]]
    image = image_feature.decode_example(images[index])
    return make_example(image, labels[index], boxes)

  ds = tf.data.Dataset.counter(dtype=tf.int64)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return iter(tfds.as_numpy(ds))


def eval_batches(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over ``split`` in a fixed order; the last batch is padded.

  Every example appears exactly once with ``valid=True``; the padding rows of
  the last batch have ``valid=False``, label 0, zero image and zero mask.
  With several processes, each yields ``batch_size`` rows of every global
  batch (example ``i`` goes to process ``i mod process_count``) and all
  processes yield the same number of batches.

  Raises:
    ValueError: when ``split`` does not exist (the splits are named).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  _check_process(process_index, process_count)
  builder = _prepared_builder(data_config)
  if split not in builder.info.splits:
    raise ValueError(
        f'split {split!r} does not exist; splits: {list(builder.info.splits)}.'
    )
  make_example = _example_fn(
      data_config, builder.info.features['image'].shape[-1]
  )
  ds = builder.as_dataset(
      split=split, shuffle_files=False, read_config=_read_config()
  )
  ds = ds.map(
      lambda ex: dict(
          make_example(ex['image'], ex['label'], ex['boxes']), valid=True
      ),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  global_batch = batch_size * process_count
  num_padding = -builder.info.splits[split].num_examples % global_batch
  if num_padding:
    padding = {
        key: tf.zeros(spec.shape, spec.dtype)
        for key, spec in ds.element_spec.items()
    }
    ds = ds.concatenate(
        tf.data.Dataset.from_tensors(padding).repeat(num_padding)
    )
  if process_count > 1:
    ds = ds.shard(process_count, process_index)
  ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(_options())
  return iter(tfds.as_numpy(ds))
