"""Reading a prepared dataset: a split into memory, its classes, the ids of its examples.

Every read is deterministic (`read_options`): a split comes in its stored order.

Example::

  builder = registry.prepared_builder(data_config)
  table = read_split(builder, 'train')  # table.images: the encoded images
"""

from collections.abc import Sequence
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from care_jax.data._tensorflow import tf


def read_options() -> tf.data.Options:
  """The options of every dataset the pipelines read: deterministic order."""
  options = tf.data.Options()
  options.deterministic = True
  return options


def read_config(**kwargs) -> tfds.ReadConfig:
  """The tfds read config of every dataset the pipelines read (`read_options`, no auto-cache).

  tfds caches a small dataset in memory (``ds.cache()``) unless told not to. Every dataset here is
  iterated once, so the cache only costs memory, and a pass that stops early (a few examples to
  draw, `care_jax.data.examples`) made tf.data warn "The calling iterator did not fully read the
  dataset being cached ... unexpected truncation" although nothing was lost.

  Args:
    **kwargs: further `tfds.ReadConfig` fields (e.g. ``add_tfds_id=True``).
  """
  return tfds.ReadConfig(options=read_options(), try_autocache=False, **kwargs)


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
    artefacts: (values float32 [A, 4], splits int64 [N + 1]), the artefact boxes (the
      irrelevant regions: relevance -1) of a dataset with the ``artefact_boxes`` feature,
      laid out as ``box_values`` and ``box_splits``; None for a dataset without it.
    label_masks: uint8 [N, K], 1 where a label counts and 0 where it is left out of the loss
      (the ``ignored_labels`` of a multi-label dataset that has them, e.g. CheXpert under
      U-Ignore); None for a dataset without the feature or a split where no label is ignored
      (CheXpert under U-Ones or U-Zeros).
  """

  images: np.ndarray
  labels: np.ndarray
  box_values: np.ndarray
  box_splits: np.ndarray
  box_labels: np.ndarray | None = None
  masks: np.ndarray | None = None
  artefacts: tuple[np.ndarray, np.ndarray] | None = None
  label_masks: np.ndarray | None = None

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
  feature (``masks`` None when no example has one), the ``artefact_boxes`` of a dataset
  that has them, and the ``label_masks`` (1 - multi-hot ``ignored_labels``) of one with
  ``ignored_labels``.
  """
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={'image': tfds.decode.SkipDecoding()},
    read_config=read_config(),
  )
  artefacts = _artefact_boxes(ds) if 'artefact_boxes' in builder.info.features else None
  multilabel = is_multilabel(builder)
  label_masks = None
  if 'ignored_labels' in builder.info.features:
    label_masks = _label_masks(ds, len(class_names_of(builder)))
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
    artefacts=artefacts,
    label_masks=label_masks,
  )


def _artefact_boxes(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
  """(values [A, 4], splits [N + 1]) of the ``artefact_boxes`` of a split (`SplitTable`)."""
  boxes = [b.reshape(-1, 4) for b in tfds.as_numpy(ds.map(lambda ex: ex['artefact_boxes']))]
  splits = np.cumsum([0] + [len(b) for b in boxes], dtype=np.int64)
  return np.concatenate(boxes).astype(np.float32), splits


def _label_masks(ds: tf.data.Dataset, num_classes: int) -> np.ndarray | None:
  """uint8 [N, K]: 0 at each example's ``ignored_labels``, 1 elsewhere; None if none is."""
  ignored = ds.map(lambda ex: multi_hot(ex['ignored_labels'], num_classes))
  rows = [1 - row for row in tfds.as_numpy(ignored)]
  masks = np.array(rows, np.uint8).reshape(-1, num_classes)
  return masks if (masks == 0).any() else None


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
    read_config=read_config(add_tfds_id=True),
  )
  ds = ds.map(lambda ex: ex[key])
  return np.array([i.decode() for i in tfds.as_numpy(ds)], dtype=object)
