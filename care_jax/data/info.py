"""What a model and a trainer need to know about a dataset (`DatasetInfo`).

Example::

  info = get_dataset_info(care_jax.config.default_data_config())
  info.class_names, info.rare_classes  # ('brown', ...), (2, 4)
"""

from collections.abc import Sequence
import dataclasses

import ml_collections
import numpy as np

from care_jax.data import preprocess
from care_jax.data import reading
from care_jax.data import registry

_SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and a trainer need to know about a dataset.

  Attributes:
    class_names: class names in label order.
    rare_classes: label indices of the rare classes, sorted: those of
      ``data.rare_classes``, else `default_rare_classes`.
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


def resolve_rare_classes(
  requested: str | Sequence[str], class_names: tuple[str, ...], boxed: np.ndarray
) -> tuple[int, ...]:
  """The label indices of the rare classes, sorted.

  Args:
    requested: ``data.rare_classes``, class names (a string: one name).
    class_names: in label order.
    boxed: the rare classes when ``requested`` is empty (label indices: those
      with boxes in train, or the rarest, `default_rare_classes`).

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


def train_class_counts(table: reading.SplitTable, num_classes: int) -> np.ndarray:
  """int64 [K]: the training images of each class (multi-label: on which it is positive)."""
  if table.labels.ndim == 2:  # Multi-hot [N, K].
    return table.labels.sum(axis=0, dtype=np.int64)
  return np.bincount(table.labels, minlength=num_classes).astype(np.int64)


def default_rare_classes(boxed: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """The rare classes of an empty ``data.rare_classes``: int [R].

  The classes with boxes in train (``boxed``) where there are any; otherwise the
  rarest training class, ``argmin_k counts[k]`` over the classes with a
  training image (ties: the lower index), none when no class has one. MedMNIST+
  and class folders have no boxes: their rare class is then the smallest one
  (a multi-label set's least frequent finding).

  >>> default_rare_classes(np.array([], np.int64), np.array([5, 0, 2, 2])).tolist()
  [2]
  """
  if np.size(boxed):
    return np.asarray(boxed, np.int64)
  counts = np.asarray(counts)
  present = np.flatnonzero(counts > 0)
  return present[np.argmin(counts[present])][None] if present.size else np.zeros(0, np.int64)


def get_dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Prepares the dataset of ``data_config`` if needed and describes it.

  Nothing is downloaded: built-in datasets are generated or read from local
  files. Reads the training labels and boxes once (images stay encoded).

  Raises:
    ValueError: for an unsupported ``data_config.name``, an unknown name in
      ``data_config.rare_classes`` or mean/std of the wrong length.
  """
  builder = registry.prepared_builder(data_config)
  table = reading.read_split(builder, 'train')
  class_names = reading.class_names_of(builder)
  num_channels = builder.info.features['image'].shape[-1]
  preprocess.normalisation(data_config, num_channels)
  counts = train_class_counts(table, len(class_names))
  if reading.is_multilabel(builder):
    boxed_classes = np.unique(table.box_labels)
  else:
    boxed_classes = np.unique(table.labels[table.annotated()])
  default = default_rare_classes(boxed_classes, counts)
  return DatasetInfo(
    class_names=class_names,
    rare_classes=resolve_rare_classes(data_config.rare_classes, class_names, default),
    train_class_counts=counts,
    split_sizes={
      split: builder.info.splits[split].num_examples
      for split in _SPLITS
      if split in builder.info.splits
    },
    image_size=preprocess.image_size(data_config),
    num_channels=num_channels,
    task='multilabel' if reading.is_multilabel(builder) else 'multiclass',
    num_train_examples=len(table.images),
  )
