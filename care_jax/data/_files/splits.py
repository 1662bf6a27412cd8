"""The splits of the datasets built from files: the examples read, hold-outs and coverage.

**Splits.** 'train', 'validation' and 'test'. Without given splits, about
``test_fraction`` of every class goes to test, then ``validation_fraction`` of
every class of the rest to validation (`holdout`); rows of one group (lesion,
patient) always stay together. The split depends only on ``split_seed`` and
the (image, label, group) rows, not on their order in the file.
"""

from collections.abc import Sequence
import dataclasses
import difflib
import pathlib

import numpy as np

SPLITS = ('train', 'validation', 'test')


def holdout(
  labels: np.ndarray, groups: Sequence[str], *, fraction: float, seed: int, salt: int
) -> np.ndarray:
  """Stratified, grouped hold-out: bool [N], True for the held-out rows.

  Each group takes the most frequent label of its rows (ties: the lower
  label). For class k with ``n_k`` rows in its groups, the groups (sorted by
  name, then permuted by ``np.random.default_rng((seed, salt, k))``) are held
  out one by one while fewer than ``t_k = clip(round(fraction * n_k), 1,
  n_k - 1)`` rows are held out, never taking the last group (so both sides
  keep the class when it has two groups or more). With one row per group
  this is exactly ``t_k`` rows per class.

  Example: ``holdout(np.array([0] * 10 + [1] * 5), [str(i) for i in
  range(15)], fraction=0.2, seed=0, salt=0)`` holds out 2 rows of class 0 and
  1 of class 1.
  """
  labels = np.asarray(labels)
  group_rows: dict[str, list[int]] = {}
  for row, group in enumerate(groups):
    group_rows.setdefault(group, []).append(row)
  by_class: dict[int, list[str]] = {}
  for group in sorted(group_rows):
    counts = np.bincount(labels[group_rows[group]])
    by_class.setdefault(int(np.argmax(counts)), []).append(group)
  held = np.zeros(len(labels), bool)
  for label, class_groups in sorted(by_class.items()):
    rng = np.random.default_rng((seed, salt, label))
    order = [class_groups[i] for i in rng.permutation(len(class_groups))]
    total = sum(len(group_rows[g]) for g in class_groups)
    target = min(max(round(fraction * total), 1), total - 1)
    taken = 0
    for group in order[:-1]:
      if taken >= target:
        break
      held[group_rows[group]] = True
      taken += len(group_rows[group])
  return held


@dataclasses.dataclass
class Record:
  """One example as read from the user's files, before generation.

  Attributes:
    key: unique image id (e.g. the relative path or ``ISIC_0024306``).
    source: the image file.
    location: where the image is listed (``'<file>, line <n>'``), for errors.
    label: class index.
    size: (height, width) of the original image.
    group: rows of one group stay in one split (lesion, patient).
    split: 'train', 'validation', 'test', or None (assigned by `assign_splits`).
    boxes: every known box, normalised (ymin, xmin, ymax, xmax).
    artefact_boxes: the boxes of irrelevant regions (``kind=artefact`` in boxes.csv), alike.
    mask: the image's segmentation mask file, or None; stored as the
      annotation ``mask`` when the image carries annotations (datasets with
      `builder.FilesBuilder.MASKS`).
  """

  key: str
  source: pathlib.Path
  location: str
  label: int
  size: tuple[int, int]
  group: str
  split: str | None = None
  boxes: list[tuple[float, float, float, float]] = dataclasses.field(default_factory=list)
  mask: pathlib.Path | None = None
  artefact_boxes: list[tuple[float, float, float, float]] = dataclasses.field(default_factory=list)


def assign_splits(
  records: Sequence[Record], *, test_fraction: float, validation_fraction: float, seed: int
) -> None:
  """Sets ``record.split`` for all records (see the module docstring).

  Records either all have a split already (given by the user's files) or
  none has. Without a 'validation' split and with ``validation_fraction >
  0``, validation is held out of 'train' (stratified, grouped).
  """
  labels = np.array([r.label for r in records], np.int64)
  groups = [r.group for r in records]
  if all(r.split is None for r in records):
    test = holdout(labels, groups, fraction=test_fraction, seed=seed, salt=0)
    for record, is_test in zip(records, test):
      record.split = 'test' if is_test else 'train'
  splits = np.array([r.split for r in records])
  if validation_fraction > 0 and not np.any(splits == 'validation'):
    train = np.flatnonzero(splits == 'train')
    validation = holdout(
      labels[train], [groups[i] for i in train], fraction=validation_fraction, seed=seed, salt=1
    )
    for i in train[validation]:
      records[i].split = 'validation'


def require_every_class(
  counts: dict[str, list[int]],
  class_names: Sequence[str],
  source: str,
  *,
  noun: str,
  has_no: str,
  fractions: str = '',
) -> None:
  """Raises the coverage error of `check_coverage` (counted in ``noun``s) when a class has
  none in a split of ``counts``, or there is no 'train' or 'test' split."""
  empty = [
    f'{split!r} has {has_no}{name!r}'
    for split in counts
    for k, name in enumerate(class_names)
    if counts[split][k] == 0
  ]
  empty += [f'there is no {s!r} split' for s in ('train', 'test') if s not in counts]
  if empty:
    raise ValueError(
      f'{source}: every class needs {noun}s in every split, but '
      + '; '.join(empty)
      + f'. {noun.capitalize()}s per class {list(class_names)} and split: {counts}.'
      + ''.join(f' {typo}.' for typo in likely_typos(counts, class_names, noun=noun))
      + f' Add {noun}s of these classes, change {fractions}validation_fraction, or fix the'
      ' split assignment.'
    )


def likely_typos(
  counts: dict[str, list[int]], class_names: Sequence[str], *, noun: str = 'example'
) -> list[str]:
  """Hints for the classes of at most two ``noun``s whose name is close to a bigger class's.

  A label typed wrong (``'cirlce'`` beside ``'circle'``) makes a class of its own; the coverage
  error it causes then names it as a real class.

  >>> likely_typos({'train': [40, 1, 30]}, ['circle', 'cirlce', 'square'])
  ["'cirlce' (1 example) looks like a misspelling of 'circle'"]
  """
  totals = np.sum([counts[split] for split in counts], axis=0)
  hints = []
  for k, name in enumerate(class_names):
    if totals[k] > 2:
      continue
    bigger = [other for j, other in enumerate(class_names) if totals[j] > totals[k]]
    close = difflib.get_close_matches(name, bigger, n=1, cutoff=0.8)
    if close:
      count = f'{totals[k]} {noun}' + ('s' if totals[k] != 1 else '')
      hints.append(f'{name!r} ({count}) looks like a misspelling of {close[0]!r}')
  return hints


def check_coverage(
  records: Sequence[Record], class_names: Sequence[str], source: str
) -> dict[str, list[int]]:
  """Returns {split: per-class counts}; every class must be in every split.

  Raises:
    ValueError: naming ``source``, the empty (split, class) pairs and the
      counts, when a class has no examples in a split that exists, or when
      there is no 'train' or no 'test' split.
  """
  present = [s for s in SPLITS if any(r.split == s for r in records)]
  counts = {
    split: np.bincount(
      [r.label for r in records if r.split == split], minlength=len(class_names)
    ).tolist()
    for split in present
  }
  require_every_class(
    counts, class_names, source, noun='example', has_no='no ', fractions='test_fraction/'
  )
  return counts
