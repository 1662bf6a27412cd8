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
                                           without a box (`rasterize_boxes`);
                                           binary. For an example with a
                                           segmentation ``mask`` feature
                                           instead: that mask resized to
                                           S x S as the image (bilinear,
                                           antialiased), >= 0.5
``has_mask``   bool [B]                    ``mask`` is not all zeros (with
                                           or without augmentation: a crop
                                           may drop the box, and a box
                                           narrower than a pixel may cover
                                           no pixel centre)
``valid``      bool [B]                    eval batches only: False on the
                                           padding rows of the last batch
=============  ==========================  =================================

Eval batches also hold ``lesion_mask``, float32 [B, S, S]: the ground-truth
lesion box(es) rasterised like ``mask``, to score attention maps (the
dataset's ``lesion_boxes`` or ``lesion_box`` feature when it has one -- every
known box, in every split -- else its annotation ``boxes``), and
``has_lesion_mask``, bool [B]: ``lesion_mask`` is not all zeros.

Padding rows have ``valid=False``, label 0, a zero image and a zero mask, so
evaluation runs with static shapes and still counts every example once.

**Multi-label datasets** (those with a ``labels`` feature: a list of positive
classes per image, and ``box_labels``, the class of each box; e.g.
``synthetic_multilabel`` and ``nih_chestxray14``'s multi-label mode) yield
``label`` float32 [B, K] (multi-hot), ``mask`` uint8 [B, K, S, S] (class k's
boxes rasterised like ``mask`` above, after augmentation), ``has_mask`` bool
[B, K], and in eval batches ``lesion_mask`` uint8 [B, K, S, S] and
``has_lesion_mask`` bool [B, K]; `DatasetInfo.task` is then 'multilabel'.
Training draws them with ``data.sampling='instance'`` only.

**On-device augmentation** (``data.augment.enabled`` and ``data.augment.on_device``):
training batches hold the augmentation's inputs instead of its result, for the train step
to apply on the accelerator (`care_jax.training.device_augment`): ``image`` uint8
[B, S, S, C] (resized, not augmented), ``geometry`` float32 [B, 3, 3] and ``color``
float32 [B, 4] (`augment.sample_augmentation`, the very draws the host path applies),
``boxes`` float32 [B, N, 4] zero-padded to the split's most boxes per image with
``box_count`` int32 [B], and for multi-label data ``box_labels`` int32 [B, N]; no
``mask``/``has_mask`` (the step makes them). `device_augment_example_fn` builds the rows.

Only the annotation ``boxes`` feeds the masks (for the built-in datasets, the
rare-class training images); ground-truth lesion boxes never do: they only feed
``lesion_mask``, which evaluation uses to score attention maps.

**Segmentation masks.** Multi-class datasets may store an annotation
``mask`` feature (`folder`'s mask column, `isic2018` with
``supervision='mask'``): PNG bytes of a single-channel mask at the stored
image's size (255 = lesion), or empty bytes. Where an example has one, its
``mask`` row is made from it and its boxes are not used for it: the mask is
resized to S x S exactly as the image is (bilinear, antialiased, on the 0..255
scale, then divided by 255), and without augmentation thresholded at 0.5
(`augment.MASK_THRESHOLD`); with augmentation the resized soft mask is warped
by the image's own geometry (`augment.warp_mask`: the bilinear warp of the
image, then the threshold), so image and mask move together and an image whose
pixels encode the mask moves identically. The result is binary either way and
``has_mask`` is again ``mask`` not all zeros. Examples without a mask keep the
box rasterisation exactly, and ``lesion_mask`` stays the rasterised lesion
*boxes* for every example (the attention metrics score boxes whatever the
training supervision). ``data.box_scale`` scales boxes only; with
``data.box_source`` other than 'manual' the generated boxes replace every
manual annotation, masks included (a warning says how many masks are left
out).

Training order: stream position ``p`` of the infinite example stream holds
example ``index_shuffle(p mod N, seed=(seed, p div N))`` of the N training
examples with ``data.sampling='instance'`` (the default), i.e. each epoch is a
fresh permutation derived from ``(seed, epoch)`` and the stream runs on across
epoch ends; 'class_balanced' and 'sqrt' draw the class with probability
proportional to ``n_k^0`` or ``n_k^(1/2)`` and then an example of it, from
the stateless key of ``(seed, p)`` (`care_jax.data.sampling`). With
``data.augment.enabled`` the example at ``p`` is augmented
(`care_jax.data.augment`: crop, flips, rotation, colour jitter; the mask
rasterised after the geometry) with random numbers drawn from a second,
independent key of ``(seed, p)``. Global batch ``k`` is stream positions
``[k G, (k + 1) G)`` with ``G = batch_size * process_count``; process ``i``
takes rows ``[i batch_size, (i + 1) batch_size)`` of it. Resuming at
``start_step`` therefore computes its first position directly, without
reading the skipped examples, and sees the same examples, augmented the same.

Example::

  config = care_jax.config.default_data_config()
  info = get_dataset_info(config)
  batches = train_batches(config, batch_size=32, seed=0)
  batch = next(batches)  # batch['image'].shape == (32, 64, 64, 3)
"""

from collections.abc import Callable, Iterator, Sequence
import dataclasses
import logging
import os
from typing import Any
import warnings

import ml_collections
import numpy as np

# TensorFlow's start-up INFO lines (oneDNN notices) are noise for our users.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds

from care_jax.data import _files
from care_jax.data import augment
from care_jax.data import folder
from care_jax.data import isic2018
from care_jax.data import nih_chestxray14
from care_jax.data import rsna_pneumonia
from care_jax.data import sampling
from care_jax.data import synthetic_lesions
from care_jax.data import synthetic_multilabel

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
    task: 'multiclass' (one label per image), or 'multilabel' (any number of
      positive classes per image; ``train_class_counts`` then counts the
      training images on which each class is positive).
    num_train_examples: training examples (for multi-label positive weights).
  """

  class_names: tuple[str, ...]
  rare_classes: tuple[int, ...]
  train_class_counts: np.ndarray
  split_sizes: dict[str, int]
  image_size: int
  num_channels: int
  task: str = 'multiclass'
  num_train_examples: int | None = None


def default_data_config() -> ml_collections.ConfigDict:
  """Deprecated: use `care_jax.config.default_data_config` (the same config).

  Returns:
    ``care_jax.config.default_data_config()``: the data config, the embedded
    `synthetic_lesions` dataset.
  """
  warnings.warn(
    'care_jax.data.default_data_config is deprecated: use care_jax.config.default_data_config()',
    DeprecationWarning,
    stacklevel=2,
  )
  from care_jax import config  # Deprecated alias: remove in 0.3.

  return config.default_data_config()


def _synthetic_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  overrides = data_config.get('synthetic')
  overrides = overrides.to_dict() if overrides is not None else {}
  return synthetic_lesions.SyntheticLesions(
    config=synthetic_lesions.synthetic_config(**overrides), data_dir=data_config.get('dir')
  )


def _synthetic_multilabel_builder(
  data_config: ml_collections.ConfigDict,
) -> tfds.core.DatasetBuilder:
  overrides = data_config.get('synthetic_multilabel')
  overrides = overrides.to_dict() if overrides is not None else {}
  return synthetic_multilabel.SyntheticMultilabel(
    config=synthetic_multilabel.multilabel_config(**overrides), data_dir=data_config.get('dir')
  )


# data_config.name -> function building the (unprepared) tfds builder.
_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict], tfds.core.DatasetBuilder]] = {
  'synthetic_lesions': _synthetic_builder,
  'synthetic_multilabel': _synthetic_multilabel_builder,
  'folder': folder.from_data_config,
  'isic2018': isic2018.from_data_config,
  'rsna_pneumonia': rsna_pneumonia.from_data_config,
  'nih_chestxray14': nih_chestxray14.from_data_config,
}


def prepared_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the builder of ``data_config.name``, prepared (no download).

  Raises:
    ValueError: for an unsupported ``data_config.name``, or the dataset's own
      errors (bad parameters or files).
  """
  name = data_config.name
  if name not in _BUILDERS:
    raise ValueError(
      f'data.name={name!r} is not supported; supported datasets: {sorted(_BUILDERS)}.'
    )
  builder = _BUILDERS[name](data_config)
  # A no-op when the data already exist in data_dir.
  builder.download_and_prepare()
  return builder


def read_options() -> tf.data.Options:
  """The options of every dataset the pipelines read: deterministic order."""
  options = tf.data.Options()
  options.deterministic = True
  return options


def _read_config() -> tfds.ReadConfig:
  return tfds.ReadConfig(options=read_options())


@dataclasses.dataclass(frozen=True)
class SplitTable:
  """A split held in memory, images still encoded, for random access.

  Attributes:
    images: [N] encoded images (bytes objects).
    labels: int64 [N]; for a multi-label dataset, uint8 [N, K] multi-hot.
    box_values: float32 [M, 4] the boxes of all examples, concatenated.
    box_splits: int64 [N + 1]; the boxes of example n are
      ``box_values[box_splits[n]:box_splits[n + 1]]``.
    box_labels: int64 [M], the class of each box (multi-label datasets), or
      None.
    masks: [N] encoded annotation masks (bytes objects, b'' for none) of a
      dataset with the ``mask`` feature, or None (no example has a mask).
  """

  images: np.ndarray
  labels: np.ndarray
  box_values: np.ndarray
  box_splits: np.ndarray
  box_labels: np.ndarray | None = None
  masks: np.ndarray | None = None

  def annotated(self) -> np.ndarray:
    """bool [N]: the examples with at least one box or a mask."""
    boxed = np.diff(self.box_splits) > 0
    if self.masks is None:
      return boxed
    return boxed | np.array([len(m) > 0 for m in self.masks], bool)


def is_multilabel(builder: tfds.core.DatasetBuilder) -> bool:
  """Whether the dataset lists several classes per image (a ``labels`` feature)."""
  return 'labels' in builder.info.features


def class_names_of(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
  """The class names of a prepared builder, in label order."""
  if is_multilabel(builder):
    return tuple(builder.info.features['labels'].feature.names)
  return tuple(builder.info.features['label'].names)


def multi_hot(classes: tf.Tensor, num_classes: int) -> tf.Tensor:
  """float32 [K]: 1 at each class of the int [P] list ``classes`` (P may be 0)."""
  one_hot = tf.one_hot(tf.cast(classes, tf.int32), num_classes, dtype=tf.float32)
  return tf.reduce_max(tf.concat([one_hot, tf.zeros([1, num_classes])], axis=0), axis=0)


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> SplitTable:
  """Reads ``split`` of a prepared builder into memory, in its stored order.

  The images stay encoded; ``labels`` and the annotation ``boxes`` are read
  (multi-label datasets: the multi-hot labels and each box's class too), and
  the encoded annotation masks of a multi-class dataset with a ``mask``
  feature (``masks`` None when no example has one).
  """
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={'image': tfds.decode.SkipDecoding()},
    read_config=_read_config(),
  )
  multilabel = is_multilabel(builder)
  if multilabel:
    num_classes = len(class_names_of(builder))
    ds = ds.map(
      lambda ex: (
        ex['image'],
        multi_hot(ex['labels'], num_classes),
        ex['boxes'],
        ex['box_labels'],
        tf.constant(b''),  # No masks in multi-label data.
      )
    )
  else:
    has_masks = 'mask' in builder.info.features
    ds = ds.map(
      lambda ex: (
        ex['image'],
        ex['label'],
        ex['boxes'],
        tf.zeros([0], tf.int64),
        ex['mask'] if has_masks else tf.constant(b''),
      )
    )
  images, labels, boxes, box_labels, masks = [], [], [], [], []
  for image, label, example_boxes, example_box_labels, mask in tfds.as_numpy(ds):
    images.append(image)
    labels.append(label)
    boxes.append(example_boxes.reshape(-1, 4))
    box_labels.append(example_box_labels.reshape(-1))
    masks.append(mask)
  return SplitTable(
    images=np.array(images, dtype=object),
    labels=np.array(labels, dtype=np.uint8 if multilabel else np.int64),
    box_values=np.concatenate(boxes).astype(np.float32),
    box_splits=np.cumsum([0] + [len(b) for b in boxes], dtype=np.int64),
    box_labels=np.concatenate(box_labels).astype(np.int64) if multilabel else None,
    masks=np.array(masks, dtype=object) if any(masks) else None,
  )


def resolve_rare_classes(
  requested: str | Sequence[str], class_names: tuple[str, ...], boxed: np.ndarray
) -> tuple[int, ...]:
  """The label indices of the rare classes, sorted.

  Args:
    requested: ``data.rare_classes``, class names (a string: one name).
    class_names: in label order.
    boxed: the label indices of the classes with boxes in train, the rare
      classes when ``requested`` is empty.

  Raises:
    ValueError: for a requested name that is not a class name.
  """
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


def normalisation(
  data_config: ml_collections.ConfigDict, num_channels: int
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (mean, std), each float32 [C], checked against the channels."""
  stats = []
  for key in ('mean', 'std'):
    value = np.asarray(data_config[key], np.float32).reshape(-1)
    if value.shape[0] not in (1, num_channels):
      raise ValueError(
        f'data.{key} must have 1 or {num_channels} (channels) values, got {tuple(value.tolist())}.'
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


def rasterize_boxes(
  boxes: tf.Tensor,
  size: int | tuple[int, int],
  *,
  classes: tf.Tensor | None = None,
  num_classes: int | None = None,
) -> tf.Tensor:
  """Rasterises the union of normalised boxes into a binary mask.

  Pixel ``(i, j)`` of an ``H x W`` mask is inside box ``(ymin, xmin, ymax,
  xmax)`` (the tfds convention, coordinates in [0, 1]) when its centre lies
  in the half-open box ``[ymin, ymax) x [xmin, xmax)``: ``ymin H <= i + 0.5 <
  ymax H`` and ``xmin W <= j + 0.5 < xmax W``. So an edge through a pixel
  centre keeps that pixel at ``min`` and drops it at ``max``, boxes that tile
  the image cover every pixel exactly once, and a box between two pixel
  centres (narrower than a pixel) covers none. Apply it after any geometric
  augmentation, to the transformed boxes.

  Example: ``rasterize_boxes([[0.0, 0.0, 0.5, 0.25]], 4)`` is 1 on rows 0-1
  of column 0 only (row centres 0.5, 1.5 < 2; column centre 0.5 < 1).

  Args:
    boxes: [N, 4] normalised (ymin, xmin, ymax, xmax); N may be 0.
    size: H = W, or (H, W).
    classes: optional int [N], the class of each box (multi-label data), with
      ``num_classes`` K: one mask per class (`augment.union_by_class`).

  Returns:
    float32 [H, W], 1 inside at least one box, 0 elsewhere (all 0 for N = 0);
    with ``classes``, uint8 [K, H, W].
  """
  height, width = (size, size) if isinstance(size, int) else size
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  if boxes.shape.rank != 2 or boxes.shape[-1] != 4:
    raise ValueError(f'boxes must have shape [N, 4], got {boxes.shape}.')
  rows = tf.range(height, dtype=tf.float32) + 0.5
  cols = tf.range(width, dtype=tf.float32) + 0.5
  in_rows = (boxes[:, 0:1] * height <= rows) & (rows < boxes[:, 2:3] * height)
  in_cols = (boxes[:, 1:2] * width <= cols) & (cols < boxes[:, 3:4] * width)
  inside = in_rows[:, :, None] & in_cols[:, None, :]
  if classes is not None:
    return augment.union_by_class(inside, classes, num_classes)
  return tf.cast(tf.reduce_any(inside, axis=0), tf.float32)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """float32 [S, S, C]: ``image`` resized as every pipeline path resizes it."""
  image = tf.cast(image, tf.float32)
  if tuple(image.shape[:2]) != (size, size):
    # Antialiased, so that downsizing averages instead of aliasing.
    image = tf.image.resize(image, (size, size), 'bilinear', antialias=True)
  return image


def example_fn(
  data_config: ml_collections.ConfigDict,
  num_channels: int,
  *,
  augment_settings: dict[str, Any] | None = None,
  num_classes: int | None = None,
) -> Callable[..., dict[str, tf.Tensor]]:
  """Returns f(uint8 image [H, W, C], label, boxes [N, 4], key=None, box_labels=None, mask=None).

  f returns the row. With ``augment_settings`` (`augment.augment_kwargs`), f
  augments the resized image (`augment.augment_example`) with the stateless
  seed ``key`` (int [2]) and rasterises the mask after the transform;
  otherwise ``key`` is ignored. With ``num_classes`` K (a multi-label
  dataset), ``label`` is the float32 [K] multi-hot vector, ``box_labels`` int
  [N] the class of each box, and the row's mask is uint8 [K, S, S],
  ``has_mask`` bool [K]. ``mask`` (multi-class only): a tf.string scalar, the
  example's encoded annotation mask (the ``mask`` feature: a single-channel
  PNG at the image's size, or empty for none); where it is not empty, the
  row's mask is made from it (module docstring) instead of from ``boxes``.
  """
  size = _image_size(data_config)
  mean, std = normalisation(data_config, num_channels)
  per_class = {} if num_classes is None else {'num_classes': num_classes}

  def soft_mask(encoded):
    # The mask resized exactly as the image, on [0, 1]: float32 [S, S].
    return _resize(tf.io.decode_png(encoded, channels=1), size)[..., 0] / 255.0

  def example(image, label, boxes, key=None, box_labels=None, mask=None):
    if mask is not None and num_classes is not None:
      raise ValueError('Segmentation masks are not supported for multi-label data.')
    image = _resize(image, size)
    classes = {} if num_classes is None else {'classes': box_labels, **per_class}
    given = None if mask is None else tf.strings.length(mask) > 0
    if augment_settings is None:
      image = (image / 255.0 - mean) / std
      if given is None:
        mask = rasterize_boxes(boxes, size, **classes)
      else:
        encoded = mask
        mask = tf.cond(
          given,
          lambda: augment.threshold_mask(soft_mask(encoded)),
          lambda: rasterize_boxes(boxes, size),
        )
    else:
      augmented = lambda **m: augment.augment_example(
        image / 255.0, boxes, key, size=size, **augment_settings, **classes, **m
      )
      if given is None:
        image, mask = augmented()
      else:
        encoded = mask
        # The geometry and colours depend on the key only: both branches
        # transform the image alike.
        image, mask = tf.cond(given, lambda: augmented(mask=soft_mask(encoded)), augmented)
      image = (image - mean) / std
    # A box may cover no pixel centre (a tiny box, or one a crop moved out of
    # view): then there is nothing to supervise, on both paths.
    has_mask = tf.reduce_any(mask > 0, axis=(-2, -1))
    label = tf.cast(label, tf.int32) if num_classes is None else tf.cast(label, tf.float32)
    return dict(image=image, label=label, mask=mask, has_mask=has_mask)

  return example


def device_augment_example_fn(
  data_config: ml_collections.ConfigDict,
  *,
  augment_settings: dict[str, Any],
  max_boxes: int,
  num_classes: int | None = None,
) -> Callable[..., dict[str, tf.Tensor]]:
  """Returns f(uint8 image [H, W, C], label, boxes [N, 4], key, box_labels=None) -> row
  of the inputs of the on-device augmentation (``data.augment.on_device``).

  The row holds ``image`` uint8 [S, S, C] (resized as `example_fn` resizes, rounded),
  ``label``, ``geometry`` float32 [3, 3] and ``color`` float32 [4] (`augment.
  sample_augmentation` of ``key``: the draws `augment_example` would apply), ``boxes``
  float32 [max_boxes, 4] zero-padded with ``box_count`` int32 the real ones first, and for
  multi-label data ``box_labels`` int32 [max_boxes]. The train step applies them
  (`care_jax.training.device_augment.augment_batch`) and normalises.
  """
  size = _image_size(data_config)

  def example(image, label, boxes, key, box_labels=None):
    image = _resize(image, size)
    geometry, color = augment.sample_augmentation(key, **augment_settings)
    count = tf.shape(boxes)[0]
    padding = [[0, max_boxes - count], [0, 0]]
    row = dict(
      image=tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
      label=tf.cast(label, tf.int32) if num_classes is None else tf.cast(label, tf.float32),
      geometry=geometry,
      color=color,
      boxes=tf.ensure_shape(tf.pad(tf.cast(boxes, tf.float32), padding), [max_boxes, 4]),
      box_count=tf.cast(count, tf.int32),
    )
    if num_classes is not None:
      classes = tf.pad(tf.cast(box_labels, tf.int32), padding[:1])
      row['box_labels'] = tf.ensure_shape(classes, [max_boxes])
    return row

  return example


def _scale_boxes(table: SplitTable, scale: float) -> SplitTable:
  """The table with every box scaled by ``scale`` about its centre, clipped."""
  if not (isinstance(scale, (int, float)) and scale > 0):
    raise ValueError(f'data.box_scale must be a positive number, got {scale!r}.')
  if scale == 1.0 or not len(table.box_values):
    return table
  boxes = table.box_values
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
  scaled = np.concatenate([centre - half, centre + half], axis=1)
  return dataclasses.replace(table, box_values=np.clip(scaled, 0.0, 1.0).astype(np.float32))


def get_dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Prepares the dataset of ``data_config`` if needed and describes it.

  Nothing is downloaded: built-in datasets are generated or read from local
  files. Reads the training labels and boxes once (images stay encoded).

  Raises:
    ValueError: for an unsupported ``data_config.name``, an unknown name in
      ``data_config.rare_classes`` or mean/std of the wrong length.
  """
  builder = prepared_builder(data_config)
  table = read_split(builder, 'train')
  class_names = class_names_of(builder)
  num_channels = builder.info.features['image'].shape[-1]
  normalisation(data_config, num_channels)
  if is_multilabel(builder):
    boxed_classes = np.unique(table.box_labels)
    counts = table.labels.sum(axis=0)
  else:
    boxed_classes = np.unique(table.labels[table.annotated()])
    counts = np.bincount(table.labels, minlength=len(class_names))
  return DatasetInfo(
    class_names=class_names,
    rare_classes=resolve_rare_classes(data_config.rare_classes, class_names, boxed_classes),
    train_class_counts=counts.astype(np.int64),
    split_sizes={
      split: builder.info.splits[split].num_examples
      for split in _SPLITS
      if split in builder.info.splits
    },
    image_size=_image_size(data_config),
    num_channels=num_channels,
    task='multilabel' if is_multilabel(builder) else 'multiclass',
    num_train_examples=len(table.images),
  )


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index must lie in [0, process_count={process_count}), got {process_index}.'
    )


def train_batches(
  data_config: ml_collections.ConfigDict,
  *,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  boxes_fn: Callable[[ml_collections.ConfigDict, Any, Any], Any] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite, shuffled training batches, deterministic given ``seed``.

  See the module docstring for the order, the sampling (``data.sampling``)
  and the augmentation (``data.augment``, when ``enabled``). The global batch
  of step k is the same for any ``process_count`` and ``start_step``; each
  process yields its ``batch_size`` rows.

  Args:
    data_config: the data config (`care_jax.config.default_data_config`).
    batch_size: examples per batch *of this process*.
    seed: shuffling seed (an int64).
    start_step: index of the first batch, to resume a run: the iterator
      yields batches ``start_step, start_step + 1, ...`` of the fresh sequence.
    process_index: this process, in ``[0, process_count)``.
    process_count: number of processes sharing each global batch.
    boxes_fn: ``f(data_config, builder, table) -> table`` replacing the
      manual training boxes when ``data.box_source != 'manual'`` (pass
      `care_jax.boxes.replace_boxes`; the data package does not import it).

  Returns:
    An iterator of batches (see the module docstring), without ``valid``.

  Raises:
    ValueError: for bad arguments, ``data.sampling`` or ``data.augment``
      values (the key is named).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  _check_process(process_index, process_count)
  augment_settings = augment.augment_kwargs(data_config.augment)
  builder = prepared_builder(data_config)
  table = read_split(builder, 'train')
  box_source = data_config.get('box_source', 'manual')
  if box_source != 'manual':
    if boxes_fn is None:
      raise ValueError(
        f'data.box_source={box_source!r} needs boxes_fn ='
        ' care_jax.boxes.replace_boxes (the care-jax commands pass it; pass it'
        ' to care_jax.training.train_and_evaluate as boxes_fn=...).'
      )
    table = boxes_fn(data_config, builder, table)
    if table.masks is not None:
      logging.warning(
        'data.box_source=%r: the generated boxes replace the manual annotations; %d'
        ' segmentation mask(s) of the training images are not used.',
        box_source,
        sum(len(m) > 0 for m in table.masks),
      )
      table = dataclasses.replace(table, masks=None)
  table = _scale_boxes(table, data_config.get('box_scale', 1.0))
  image_feature = builder.info.features['image']
  multilabel = is_multilabel(builder)
  num_classes = len(class_names_of(builder)) if multilabel else None
  on_device = data_config.augment.enabled and data_config.augment.get('on_device', False)
  if on_device:
    if table.masks is not None and any(len(m) for m in table.masks):
      raise ValueError(
        'data.augment.on_device=True warps boxes on the accelerator; this dataset supervises'
        ' with segmentation masks: set data.augment.on_device=False (the host warps them).'
      )
    device_example = device_augment_example_fn(
      data_config,
      augment_settings=augment_settings,
      max_boxes=max(1, int(np.max(np.diff(table.box_splits), initial=0))),
      num_classes=num_classes,
    )
    make_example = lambda image, label, boxes, key, box_labels, mask: device_example(
      image, label, boxes, key, box_labels=box_labels
    )
  else:
    make_example = example_fn(
      data_config,
      image_feature.shape[-1],
      augment_settings=(augment_settings if data_config.augment.enabled else None),
      num_classes=num_classes,
    )
  if multilabel and data_config.sampling != 'instance':
    raise ValueError(
      f'data.sampling = {data_config.sampling!r}: class-balanced sampling draws one class per'
      " example, which a multi-label image does not have; use data.sampling='instance' (and"
      " loss.name='weighted_ce' for positive-class weights)."
    )
  # Instance sampling reads only the number of examples.
  sampler_labels = np.zeros(len(table.images), np.int64) if multilabel else table.labels
  index_of = sampling.make_sampler(sampler_labels, sampling=data_config.sampling, seed=seed)
  images = tf.constant(table.images.tolist(), tf.string)
  labels = tf.constant(table.labels)
  box_values = tf.constant(table.box_values.reshape(-1, 4))
  box_splits = tf.constant(table.box_splits)
  box_labels = tf.constant(table.box_labels if multilabel else np.zeros(0, np.int64))
  masks = None if table.masks is None else tf.constant(table.masks.tolist(), tf.string)
  seed = tf.constant(seed, tf.int64)
  global_batch = batch_size * process_count

  def example(count):
    # count-th example of this process -> stream position -> example index.
    step = start_step + count // batch_size
    position = step * global_batch + process_index * batch_size + count % batch_size
    # Independent stateless streams of this position for the sampler and
    # the augmentation.
    sample_key, augment_key = tf.unstack(
      tf.random.experimental.stateless_split(tf.stack([seed, position]), 2)
    )
    index = index_of(position, sample_key)
    boxes = box_values[box_splits[index] : box_splits[index + 1]]
    image = image_feature.decode_example(images[index])
    classes = box_labels[box_splits[index] : box_splits[index + 1]] if multilabel else None
    mask = None if masks is None else masks[index]
    return make_example(image, labels[index], boxes, augment_key, box_labels=classes, mask=mask)

  ds = tf.data.Dataset.counter(dtype=tf.int64)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(read_options())
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
  the last batch have ``valid=False``, label 0, zero image and zero masks.
  Besides the training keys, batches hold ``lesion_mask`` and
  ``has_lesion_mask`` (see the module docstring): the dataset's
  ``lesion_boxes`` or ``lesion_box`` rasterised when it has one, else its
  ``boxes`` (never the segmentation masks, which feed ``mask`` as in
  training).
  With several processes, each yields ``batch_size`` rows of every global
  batch (example ``i`` goes to process ``i mod process_count``) and all
  processes yield the same number of batches.

  Raises:
    ValueError: when ``split`` does not exist (the splits are named).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  _check_process(process_index, process_count)
  builder = prepared_builder(data_config)
  if split not in builder.info.splits:
    raise ValueError(f'split {split!r} does not exist; splits: {list(builder.info.splits)}.')
  multilabel = is_multilabel(builder)
  num_classes = len(class_names_of(builder))
  make_example = example_fn(
    data_config,
    builder.info.features['image'].shape[-1],
    num_classes=num_classes if multilabel else None,
  )
  size = _image_size(data_config)
  # Ground-truth boxes of every image when the dataset has them (the file
  # datasets' `lesion_boxes`, synthetic_lesions' one `lesion_box`), else the
  # annotation boxes (e.g. the rare classes' only).
  features = builder.info.features.keys()

  def multilabel_example(ex):
    # Every known box of each class, in every split (multi-label datasets
    # always have `lesion_boxes` with their `lesion_box_labels`).
    lesion_mask = rasterize_boxes(
      ex['lesion_boxes'], size, classes=ex['lesion_box_labels'], num_classes=num_classes
    )
    row = make_example(
      ex['image'], multi_hot(ex['labels'], num_classes), ex['boxes'], box_labels=ex['box_labels']
    )
    return dict(
      row,
      valid=True,
      lesion_mask=lesion_mask,
      has_lesion_mask=tf.reduce_any(lesion_mask > 0, axis=(-2, -1)),
    )

  def lesion_boxes(ex):
    if 'lesion_boxes' in features:
      return ex['lesion_boxes']
    if 'lesion_box' in features:
      return ex['lesion_box'][None]
    return ex['boxes']

  def example(ex):
    # Eval has no geometric augmentation: boxes map to the resized image as is.
    lesion_mask = rasterize_boxes(lesion_boxes(ex), size)
    mask = ex['mask'] if 'mask' in features else None
    return dict(
      make_example(ex['image'], ex['label'], ex['boxes'], mask=mask),
      valid=True,
      lesion_mask=lesion_mask,
      has_lesion_mask=tf.reduce_any(lesion_mask > 0),
    )

  ds = builder.as_dataset(split=split, shuffle_files=False, read_config=_read_config())
  ds = ds.map(multilabel_example if multilabel else example, num_parallel_calls=tf.data.AUTOTUNE)
  global_batch = batch_size * process_count
  num_padding = -builder.info.splits[split].num_examples % global_batch
  if num_padding:
    padding = {key: tf.zeros(spec.shape, spec.dtype) for key, spec in ds.element_spec.items()}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  if process_count > 1:
    ds = ds.shard(process_count, process_index)
  ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(read_options())
  return iter(tfds.as_numpy(ds))


# How each dataset stores an image file before the pipeline reads it back:
# (encoding, the data.<name> sub-config holding its stored_size, None: as is).
_STORAGE = {
  'synthetic_lesions': ('png', None),
  'synthetic_multilabel': ('png', None),
  'folder': (folder.Folder.ENCODING, 'folder'),
  'isic2018': (isic2018.Isic2018.ENCODING, 'isic2018'),
  'rsna_pneumonia': (rsna_pneumonia.RsnaPneumonia.ENCODING, 'rsna_pneumonia'),
  'nih_chestxray14': (nih_chestxray14.NihChestxray14.ENCODING, 'nih_chestxray14'),
}


def stored_image(data_config: ml_collections.ConfigDict, path: str) -> bytes:
  """An image file encoded as the dataset of ``data_config`` stores its images.

  PNG or JPEG, greyscale or RGB: decoded to RGB, shrunk to the dataset's
  ``stored_size`` and re-encoded with its encoding, as its builder does; the
  eval preprocessing then sees the same pixels it sees for the dataset.

  Raises:
    ValueError: the file is missing or cannot be decoded (it is named).
  """
  if data_config.name not in _STORAGE:
    raise ValueError(
      f'data.name={data_config.name!r} is not supported; supported datasets: {sorted(_STORAGE)}.'
    )
  encoding, key = _STORAGE[data_config.name]
  image = _files.load_rgb(path)
  if key is not None:
    image = _files.shrink(image, data_config[key].stored_size)
  return _files.encode(image, encoding)


def file_batches(
  data_config: ml_collections.ConfigDict,
  paths: Sequence[str],
  *,
  batch_size: int,
  skip_unreadable: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """Image files, preprocessed as `eval_batches` preprocesses the images of a split.

  Each file becomes `stored_image`, is decoded by the dataset's image feature
  and goes through the eval preprocessing (`example_fn`: resize to
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
  encoding, _ = _STORAGE.get(data_config.name, ('png', None))
  feature = tfds.features.Image(shape=(None, None, 3), encoding_format=encoding)
  make_example = example_fn(data_config, 3)
  no_boxes = tf.zeros((0, 4), tf.float32)

  def preprocess(encoded):
    return make_example(feature.decode_example(encoded), 0, no_boxes)['image']

  for start in range(0, len(paths), batch_size):
    encoded, index = [], []
    for position in range(start, min(start + batch_size, len(paths))):
      try:
        encoded.append(stored_image(data_config, paths[position]))
      except _files.UnreadableFile:
        if not skip_unreadable:
          raise
        logging.warning('skipped unreadable image %s', paths[position])
        continue
      index.append(position)
    if not encoded:
      continue
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded, tf.string))
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(len(encoded))
    images = next(iter(tfds.as_numpy(ds.with_options(read_options()))))
    yield {'image': images, 'index': np.asarray(index, np.int64)}


def example_ids(
  builder: tfds.core.DatasetBuilder, split: str, *, keys: Sequence[str] = ('image_id',)
) -> np.ndarray:
  """Stable identifiers of a split's examples, in the order the pipeline reads them.

  The first of ``keys`` that the dataset has as a feature (the file datasets'
  ``image_id``: the image's path relative to ``data.dir``), else the
  example's ``tfds_id`` (e.g. ``synthetic_lesions-train.tfrecord-00000-of-
  00001__12``: shard file and position in it), which names the example for
  as long as the prepared dataset exists.
  """
  key = next((k for k in keys if k in builder.info.features), 'tfds_id')
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={'image': tfds.decode.SkipDecoding()},
    read_config=tfds.ReadConfig(options=read_options(), add_tfds_id=True),
  )
  ds = ds.map(lambda ex: ex[key])
  return np.array([i.decode() for i in tfds.as_numpy(ds)], dtype=object)
