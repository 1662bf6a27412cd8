"""Multi-label datasets built from files (several findings per image, e.g. ChestX-ray14).

They have `multilabel_features` instead of `builder.example_features`:
``labels`` (the positive classes) in place of ``label``, the class of every box
(``box_labels``, ``lesion_box_labels``) and ``patient_id``; their records are
`MultilabelRecord` and `check_multilabel_coverage` counts images per class.
"""

from collections.abc import Iterable, Sequence
import dataclasses
import logging
import pathlib
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from care_jax.data._files import images
from care_jax.data._files import rows
from care_jax.data._files import splits

# How many empty (split, class) pairs the coverage warning names.
_NAMED_EMPTY = 3


def multilabel_features(
  class_names: Sequence[str], encoding: str, *, ignored: bool = False
) -> tfds.features.FeaturesDict:
  """The features of a multi-label dataset built from files.

  ``image`` as in `builder.example_features`; ``labels``: the image's positive classes
  (sorted ascending, empty for an image with none); ``boxes`` and
  ``box_labels``: the annotation boxes that feed the CARE masks and the class
  of each (training images only, boxes of the box classes only); and
  ``lesion_boxes`` and ``lesion_box_labels``: every known box of the image
  with its class, in every split. ``image_id`` and ``patient_id`` are the
  image's and the patient's names in the user's files. ``ignored`` adds
  ``ignored_labels``: the classes whose decision is masked out for the image
  (e.g. CheXpert's uncertain findings under U-Ignore), neither positive nor
  negative.
  """
  names = list(class_names)
  features = {
    'image': tfds.features.Image(shape=(None, None, 3), encoding_format=encoding),
    'labels': tfds.features.Sequence(tfds.features.ClassLabel(names=names)),
    'boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
    'box_labels': tfds.features.Sequence(tfds.features.ClassLabel(names=names)),
    'lesion_boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
    'lesion_box_labels': tfds.features.Sequence(tfds.features.ClassLabel(names=names)),
    'image_id': tfds.features.Text(),
    'patient_id': tfds.features.Text(),
  }
  if ignored:
    features['ignored_labels'] = tfds.features.Sequence(tfds.features.ClassLabel(names=names))
  return tfds.features.FeaturesDict(features)


@dataclasses.dataclass
class MultilabelRecord:
  """One example of a multi-label dataset as read from the user's files.

  Attributes:
    key: unique image id (the ``image_id`` feature).
    source: the image file.
    location: where the image is listed (``'<file>, line <n>'``), for errors.
    labels: the positive class indices, sorted ascending (empty: none).
    size: (height, width) of the original image.
    group: the patient (the ``patient_id`` feature); a group stays in one split.
    split: 'train', 'validation', 'test', or None (not yet assigned).
    boxes: every known box, normalised (ymin, xmin, ymax, xmax).
    box_labels: the class index of each box (as long as ``boxes``).
    ignored: the classes masked out for this image (neither positive nor
      negative; the ``ignored_labels`` feature where a dataset has it).
  """

  key: str
  source: pathlib.Path
  location: str
  labels: tuple[int, ...]
  size: tuple[int, int]
  group: str
  split: str | None = None
  boxes: list[tuple[float, float, float, float]] = dataclasses.field(default_factory=list)
  box_labels: list[int] = dataclasses.field(default_factory=list)
  ignored: tuple[int, ...] = ()

  def add_box(
    self, problems: rows.Problems, location: str, box: Sequence[float], label: int, subject: str
  ) -> None:
    """Adds pixel box (xmin, ymin, xmax, ymax) of class ``label``, normalised.

    An invalid box (`rows.box_problem`) is reported to ``problems`` instead, as
    ``'<subject>: <problem>'``.
    """
    problem = rows.box_problem(box, *self.size)
    if problem:
      problems.report(location, f'{subject}: {problem}')
      return
    self.boxes.append(rows.normalise_box(box, *self.size))
    self.box_labels.append(label)


def rarest_label_strata(label_sets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
  """int [N]: a single label per multi-label row, to stratify a `holdout`.

  A row's stratum is its rarest class (the fewest rows among
  ``label_sets`` have it; ties: the lower index), ``num_classes`` for a row
  without any class. Holding out a fraction of every stratum gives every
  class, the rare ones first, rows on both sides.
  """
  counts = np.zeros(num_classes, np.int64)
  for labels in label_sets:
    counts[list(set(labels))] += 1
  return np.array(
    [min(labels, key=lambda k: (counts[k], k)) if labels else num_classes for labels in label_sets],
    np.int64,
  )


def hold_out_validation(
  candidates: Sequence[MultilabelRecord], *, num_classes: int, fraction: float, seed: int
) -> None:
  """Moves about ``fraction`` of ``candidates``' patients (``group``) to 'validation'.

  `splits.holdout` grouped by patient and stratified by each image's rarest
  class (`rarest_label_strata`), salt 1 as every validation hold-out here;
  nothing moves for ``fraction <= 0``.
  """
  if fraction <= 0:
    return
  strata = rarest_label_strata([r.labels for r in candidates], num_classes)
  held = splits.holdout(strata, [r.group for r in candidates], fraction=fraction, seed=seed, salt=1)
  for record, is_held in zip(candidates, held):
    if is_held:
      record.split = 'validation'


def check_multilabel_coverage(
  records: Sequence[MultilabelRecord], class_names: Sequence[str], source: str
) -> dict[str, list[int]]:
  """Returns {split: images per class}; a class without images in a split is counted.

  An image counts once for each of its classes. A class without images in a split leaves
  only its own scores there undefined (its AUROC is ``null`` in metrics.json): one
  warning counts these (split, class) pairs and names the first ones.

  Raises:
    ValueError: naming ``source`` and the counts when there is no 'train' or no 'test'
      split.
  """
  present = [s for s in splits.SPLITS if any(r.split == s for r in records)]
  counts = {}
  for split in present:
    per_class = np.zeros(len(class_names), np.int64)
    for record in records:
      if record.split == split:
        per_class[list(set(record.labels))] += 1
    counts[split] = per_class.tolist()
  if 'train' not in counts or 'test' not in counts:
    splits.require_every_class(counts, class_names, source, noun='image', has_no='no image of ')
  empty = [
    f'{split!r} has no image of {name!r}'
    for split, per_class in counts.items()
    for name, count in zip(class_names, per_class)
    if count == 0
  ]
  if empty:
    logging.warning(
      '%s: %d (split, class) pair(s) without images, whose scores there are undefined: %s%s',
      source,
      len(empty),
      '; '.join(empty[:_NAMED_EMPTY]),
      ' ...' if len(empty) > _NAMED_EMPTY else '',
    )
  return counts


def multilabel_example(
  record: MultilabelRecord,
  image: np.ndarray,
  *,
  split: str,
  box_labels: Iterable[int],
  encoding: str,
  stored_size: int,
  ignored: bool = False,
) -> dict[str, Any]:
  """The `multilabel_features` example of ``record`` with decoded ``image``.

  ``boxes``/``box_labels`` hold the boxes of the classes ``box_labels`` when
  ``split`` is 'train' and are empty otherwise; ``lesion_boxes`` and
  ``lesion_box_labels`` hold every box; ``ignored`` adds ``ignored_labels``
  (``record.ignored``, for the features of ``multilabel_features(ignored=True)``).
  """
  boxes = np.array(record.boxes, np.float32).reshape(-1, 4)
  labels = np.array(record.box_labels, np.int64)
  annotated = np.isin(labels, list(box_labels)) & (split == 'train')
  example = dict(
    image=images.encode(images.shrink(image, stored_size), encoding),
    labels=np.array(sorted(set(record.labels)), np.int64),
    boxes=boxes[annotated],
    box_labels=labels[annotated],
    lesion_boxes=boxes,
    lesion_box_labels=labels,
    image_id=record.key,
    patient_id=record.group,
  )
  if ignored:
    example['ignored_labels'] = np.array(sorted(set(record.ignored)), np.int64)
  return example
