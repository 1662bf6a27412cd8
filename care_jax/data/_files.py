"""Shared parts of the datasets built from files the user already has.

`folder`, `isic2018`, `rsna_pneumonia` and `nih_chestxray14` are tfds builders
that read the user's files (the tfds ``manual_dir``, ``data.dir`` in the
config) and never download anything. They share the conventions below.

**Features.** Every example has ``image`` (uint8 [H, W, 3]: greyscale and DICOM
are repeated to three channels so that ImageNet backbones apply), ``label``
(`ClassLabel`, names sorted), ``boxes`` (the annotation boxes that feed the
CARE masks: only training images of the box classes carry them), ``lesion_boxes``
(every known box of the image, in every split, for attention metrics; never
used for masks) and ``image_id`` (the image's name in the user's files). Boxes
are normalised ``(ymin, xmin, ymax, xmax)`` in [0, 1], so they stay valid when
the image is resized. The datasets that can supervise with segmentation masks
(`FilesBuilder.MASKS`: `folder`, `isic2018`) also have ``mask``: the PNG bytes
of the example's annotation mask, single-channel uint8 at the stored image's
size, 255 = lesion, 0 = not (`stored_mask`), or empty bytes for none. Like
``boxes``, only training images of the box classes carry one; where an example
has a mask, the pipeline makes CARE's inner mask from it instead of from its
boxes.

**Segmentation masks** (`load_mask`): PNG or JPEG files of any size, decoded to
8-bit grey (16-bit scaled by 1/257, colour converted to luma as PIL's ``'L'``
mode does, alpha dropped); a pixel is lesion when its grey level is > 127
(`MASK_LEVEL`), so 0/255 masks (HAM10000's) read as they are, while 0/1 masks
read as empty, which is an error. A mask must have its image's aspect ratio
(up to the rounding of a resized copy, `mask_size_problem`). When stored it is
resized to the stored image's size as the image is (PIL bilinear, averaging
when it shrinks) and thresholded again at > 127.

Multi-label datasets (several classes per image) have `multilabel_features`
instead: ``labels`` (the positive classes) in place of ``label``, the class of
every box (``box_labels``, ``lesion_box_labels``) and ``patient_id``; their
records are `MultilabelRecord` and `check_multilabel_coverage` counts images
per class.

**Pixel boxes.** Box files give pixel edges of the original image: pixel
column ``j`` spans ``[j, j + 1)``, so a box over columns 10..19 has ``xmin=10,
xmax=20``; it is stored as ``xmin / W``. A valid box has ``0 <= xmin < xmax <=
W`` and ``0 <= ymin < ymax <= H``.

**Stored images.** Images are decoded (PNG/JPEG via PIL: 16-bit greyscale is
scaled by 1/257, alpha is dropped; EXIF orientation is ignored, boxes refer to
the stored pixel array), shrunk so that the longer side is at most
``stored_size`` (aspect kept, never enlarged; 0 keeps the original size), and
re-encoded (PNG or JPEG quality 95, per dataset). The input pipeline resizes
them to ``data.image_size`` on the fly.

**Errors.** A bad row raises ``ValueError('<file>, line <n>: <problem>')``,
``n`` the 1-based line as an editor shows it (the header is line 1). Problems
confined to one row (missing or unreadable image or mask, bad label, bad box,
a box of an unknown image) can instead be skipped with ``skip_bad_rows=True``:
they are counted and logged (`logging.warning`, with the first few). Problems
that make the data ambiguous or unsafe always raise: a malformed header, an
empty file, an image listed twice, a path that leaves ``data.dir``, and a
class with no examples in a split.

**Splits.** 'train', 'validation' and 'test'. Without given splits, about
``test_fraction`` of every class goes to test, then ``validation_fraction`` of
every class of the rest to validation (`holdout`); rows of one group (lesion,
patient) always stay together. The split depends only on ``split_seed`` and
the (image, label, group) rows, not on their order in the file.

**Cache.** The prepared data live in the tfds data dir (``data.cache_dir``;
None: the tfds default, ``~/tensorflow_datasets``) under
``<dataset>/<config>/<version>``. The config name hashes every parameter, the
bytes of the annotation files and the path of ``data.dir``, so changing any of
them prepares the data anew instead of reusing stale data. Replacing image
files in place (same names, same CSV files) is not detected: delete the cache.
"""

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
from typing import Any

import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from care_jax.data import _local

SPLITS = ('train', 'validation', 'test')
# The columns of a pixel box in the box files.
BOX_COLUMNS = ('xmin', 'ymin', 'xmax', 'ymax')
# The parameters of every dataset here (``data.<dataset>.<name>``), checked by
# `check_parameters`; their defaults are in `care_jax.config`.
COMMON_PARAMETERS = (
  'split_seed',
  'test_fraction',
  'validation_fraction',
  'skip_bad_rows',
  'stored_size',
)
# A mask pixel is lesion when its 8-bit grey level is above this.
MASK_LEVEL = 127
# How many skipped rows a warning lists one by one.
_LOGGED_PROBLEMS = 5
_JPEG_QUALITY = 95


class UnreadableFile(ValueError):
  """An image (or mask, DICOM) file is missing, unreadable or unsupported."""


def where(path: os.PathLike[str] | str, line: int) -> str:
  """The location of a row in messages: ``'<path>, line <line>'``."""
  return f'{path}, line {line}'


class Problems:
  """Bad rows of the user's files: an error at the first one, or counted skips.

  Example::

    problems = Problems(skip=False, option='data.folder.skip_bad_rows')
    problems.report(where('labels.csv', 3), 'empty label')  # raises ValueError
  """

  def __init__(self, *, skip: bool, option: str):
    self.skip = skip
    self.option = option
    self.items: list[str] = []

  def report(self, location: str, message: str) -> None:
    """Raises ``ValueError(location: message)``, or records it when skipping."""
    text = f'{location}: {message}'
    if not self.skip:
      raise ValueError(f'{text} (set {self.option}=True to skip such rows)')
    self.items.append(text)

  def image_size(
    self,
    location: str,
    path: pathlib.Path,
    read: Callable[[pathlib.Path], tuple[int, int]] | None = None,
  ) -> tuple[int, int] | None:
    """``read(path)`` (default `image_header`); None after reporting a bad file."""
    try:
      return (read or image_header)(path)
    except UnreadableFile as e:
      self.report(location, str(e))
      return None

  def image_record(
    self,
    location: str,
    source: pathlib.Path,
    *,
    key: str,
    label: int,
    group: str,
    split: str | None = None,
    read: Callable[[pathlib.Path], tuple[int, int]] | None = None,
  ) -> 'Record | None':
    """The `Record` of image ``source``, listed at ``location``, without boxes.

    Its size is ``read(source)`` (`image_size`); None after reporting an
    unreadable file.
    """
    size = self.image_size(location, source, read)
    if size is None:
      return None
    return Record(
      key=key, source=source, location=location, label=label, size=size, group=group, split=split
    )

  def add_box(self, record: 'Record', location: str, box: Sequence[float], subject: str) -> None:
    """Adds pixel box (xmin, ymin, xmax, ymax) to ``record.boxes``, normalised.

    An invalid box (`box_problem`) is reported instead, as ``'<subject>:
    <problem>'`` (e.g. ``subject='image 1.png'``).
    """
    problem = box_problem(box, *record.size)
    if problem:
      self.report(location, f'{subject}: {problem}')
      return
    record.boxes.append(normalise_box(box, *record.size))

  def log(self, stage: str) -> None:
    """Warns with the number of skipped rows and the first few of them."""
    if self.items:
      logging.warning(
        '%s: skipped %d bad row(s) (%s=True); the first ones:\n  %s',
        stage,
        len(self.items),
        self.option,
        '\n  '.join(self.items[:_LOGGED_PROBLEMS]),
      )


@dataclasses.dataclass(frozen=True)
class Row:
  """A CSV data row: its 1-based line number and its values by column."""

  line: int
  values: dict[str, str]

  def __getitem__(self, column: str) -> str:
    return self.values[column]

  def get(self, column: str, default: str = '') -> str:
    return self.values.get(column, default)


def read_rows(path: pathlib.Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """Reads a CSV file into its header and ``(line, fields)`` rows.

  Fields and header names are stripped of surrounding spaces, a UTF-8 byte
  order mark (as spreadsheets write it) is ignored, blank lines are skipped.
  ``line`` is the 1-based line where the row ends (quoted fields may span
  lines).

  Raises:
    ValueError: when the file cannot be read or has no header.
  """
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      reader = csv.reader(f)
      rows = []
      for fields in reader:
        if any(field.strip() for field in fields):
          rows.append((reader.line_num, [field.strip() for field in fields]))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f'Cannot read {path}: {e}') from e
  if not rows:
    raise ValueError(f'{path} is empty: it needs a header line and rows.')
  (_, header), *rows = rows
  return header, rows


def read_csv(
  path: pathlib.Path,
  *,
  required: Sequence[str],
  optional: Sequence[str] = (),
  allow_extra: bool = False,
  allow_no_rows: bool = False,
) -> tuple[list[str], list[Row]]:
  """Reads a CSV file with a header into rows keyed by column name.

  Args:
    path: the file.
    required: columns that must be present.
    optional: columns that may be present.
    allow_extra: accept (and ignore) other columns; otherwise they are an
      error, which catches misspelt optional columns.
    allow_no_rows: accept a file with only a header.

  Returns:
    The header (column names) and the rows. A row with fewer fields than the
    header gets '' for the missing ones; extra non-empty fields are an error.

  Raises:
    ValueError: naming the file (and line) for a missing, duplicate or
      unknown column, a row with too many fields, or no rows.
  """
  header, rows = read_rows(path)
  missing = [column for column in required if column not in header]
  if missing:
    raise ValueError(
      f'{path}, line 1: missing column(s) {missing}; the header is'
      f' {header}, expected {list(required)}'
      + (f' and optionally {list(optional)}' if optional else '')
      + '.'
    )
  known = set(required) | set(optional)
  named = [column for column in header if column]
  duplicates = sorted({c for c in named if named.count(c) > 1} & known)
  if duplicates:
    raise ValueError(f'{path}, line 1: duplicate column(s) {duplicates}.')
  unknown = [column for column in header if column not in known]
  if unknown and not allow_extra:
    raise ValueError(
      f'{path}, line 1: unknown column(s) {unknown}; expected'
      f' {list(required)}' + (f' and optionally {list(optional)}' if optional else '') + '.'
    )
  if not rows and not allow_no_rows:
    raise ValueError(f'{path} has a header but no rows.')
  result = []
  for line, fields in rows:
    if len(fields) > len(header) and any(fields[len(header) :]):
      raise ValueError(
        f'{where(path, line)}: {len(fields)} fields, but the header has {len(header)} columns.'
      )
    values = {
      column: fields[i] if i < len(fields) else ''
      for i, column in enumerate(header)
      if column in known
    }
    result.append(Row(line=line, values=values))
  return header, result


def read_box_rows(path: pathlib.Path) -> list[tuple[str, Row, list[float | None]]]:
  """Reads a box file, columns ``image,xmin,ymin,xmax,ymax`` (`read_csv`).

  The file may have no rows.

  Returns:
    ``(location, row, coordinates)`` per row: `where` the row is, the row
    and its pixel box ``BOX_COLUMNS``, None for a value that is not a number.
  """
  _, rows = read_csv(path, required=('image',) + BOX_COLUMNS, allow_no_rows=True)
  return [(where(path, row.line), row, [parse_number(row[c]) for c in BOX_COLUMNS]) for row in rows]


def relative_path(
  root: pathlib.Path, text: str, location: str, *, kind: str = 'image'
) -> tuple[str, pathlib.Path]:
  """Resolves a path column: returns ``(normalised text, root / text)``.

  The normalised text (POSIX separators, no ``.`` parts) identifies the image.
  ``kind`` names the file in messages ('image', 'mask').

  Raises:
    ValueError: for an empty path, an absolute path (also ``C:\\...``) or a
      ``..`` part: paths must stay inside the data directory.
  """
  if not text:
    raise ValueError(f'{location}: empty {kind} path.')
  posix = text.replace('\\', '/')
  pure = pathlib.PurePosixPath(posix)
  if pure.is_absolute() or pathlib.PureWindowsPath(text).drive or '..' in pure.parts:
    raise ValueError(
      f'{location}: {kind} path {text!r} leaves the data directory {root};'
      ' use a path relative to it, without "..".'
    )
  return pure.as_posix(), root.joinpath(*pure.parts)


def parse_number(text: str) -> float | None:
  """A finite float, or None for text that is not one."""
  try:
    value = float(text)
  except ValueError:
    return None
  return value if np.isfinite(value) else None


def box_problem(box: Sequence[float], height: int, width: int) -> str | None:
  """Why pixel box (xmin, ymin, xmax, ymax) is invalid in an image, or None."""
  xmin, ymin, xmax, ymax = box
  if xmin >= xmax:
    return f'xmin={xmin:g} >= xmax={xmax:g}'
  if ymin >= ymax:
    return f'ymin={ymin:g} >= ymax={ymax:g}'
  if xmin < 0 or ymin < 0 or xmax > width or ymax > height:
    return (
      f'box (xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g})'
      f' lies outside the {width}x{height} (width x height) image'
    )
  return None


def normalise_box(
  box: Sequence[float], height: int, width: int
) -> tuple[float, float, float, float]:
  """Pixel (xmin, ymin, xmax, ymax) -> normalised (ymin, xmin, ymax, xmax)."""
  xmin, ymin, xmax, ymax = box
  return (ymin / height, xmin / width, ymax / height, xmax / width)


def image_header(path: pathlib.Path, *, kind: str = 'image') -> tuple[int, int]:
  """Returns (height, width) of a PNG or JPEG file, reading only its header.

  ``kind`` names the file in messages ('image', 'mask').

  Raises:
    UnreadableFile: the file is missing, not an image, or not PNG/JPEG.
  """
  try:
    with Image.open(path) as image:
      image_format, (width, height) = image.format, image.size
  except FileNotFoundError as e:
    raise UnreadableFile(f'{kind} file {path} does not exist') from e
  except (OSError, SyntaxError, ValueError) as e:
    raise UnreadableFile(f'cannot read {kind} {path}: {e}') from e
  if image_format not in ('PNG', 'JPEG'):
    raise UnreadableFile(f'{path} is a {image_format} {kind}; only PNG and JPEG are supported')
  return height, width


def image_index(directories: Sequence[pathlib.Path], pattern: str) -> dict[str, pathlib.Path]:
  """File name -> path of the files matching ``pattern`` in ``directories``.

  Directories that do not exist are passed over; a name in several of them
  is taken from the first.
  """
  index = {}
  for directory in directories[::-1]:  # The first directory wins.
    if directory.is_dir():
      index.update({p.name: p for p in directory.glob(pattern)})
  return index


def _to_rgb(image: Image.Image) -> np.ndarray:
  if image.mode.startswith('I;16') or image.mode == 'I':
    # 16-bit greyscale PNG: 65535 -> 255 (x / 257 maps 257 k exactly to k).
    grey = np.clip(np.asarray(image, np.float64), 0, 65535) / 257.0
    grey = np.round(grey).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == 'L':
    return np.repeat(np.asarray(image)[..., None], 3, axis=-1)
  return np.asarray(image.convert('RGB'))


def load_rgb(path: pathlib.Path) -> np.ndarray:
  """Decodes a PNG or JPEG file to uint8 [H, W, 3] (see module docstring).

  Raises:
    UnreadableFile: the file is missing or its data are corrupt/truncated.
  """
  try:
    with Image.open(path) as image:
      image.load()  # The full decode: corrupt or truncated data fail here.
      return _to_rgb(image)
  except FileNotFoundError as e:
    raise UnreadableFile(f'image file {path} does not exist') from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UnreadableFile(f'cannot decode image {path}: {e}') from e


def load_mask(path: pathlib.Path) -> np.ndarray:
  """Decodes a segmentation mask file to bool [H, W], True = lesion.

  Lesion pixels have an 8-bit grey level > `MASK_LEVEL` (see the module
  docstring for the conversion to grey).

  Raises:
    UnreadableFile: the file is missing, corrupt, not PNG/JPEG, or has no
      lesion pixel.
  """
  try:
    with Image.open(path) as image:
      if image.format not in ('PNG', 'JPEG'):
        raise UnreadableFile(f'{path} is a {image.format} mask; only PNG and JPEG are supported')
      image.load()
      if image.mode.startswith('I;16') or image.mode == 'I':
        grey = np.round(np.clip(np.asarray(image, np.float64), 0, 65535) / 257.0)
      else:
        grey = np.asarray(image.convert('L'))
  except FileNotFoundError as e:
    raise UnreadableFile(f'mask {path} does not exist') from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, UnreadableFile):
      raise
    raise UnreadableFile(f'cannot decode mask {path}: {e}') from e
  mask = grey > MASK_LEVEL
  if not mask.any():
    raise UnreadableFile(
      f'mask {path} is empty: no pixel above {MASK_LEVEL} (lesion pixels are > {MASK_LEVEL}'
      ' of 255; scale a 0/1 mask to 0/255)'
    )
  return mask


def mask_size_problem(mask_size: tuple[int, int], image_size: tuple[int, int]) -> str | None:
  """Why a mask of (height, width) ``mask_size`` does not fit its image, or None.

  A mask of any size fits when it has the image's aspect ratio up to the
  rounding of a resized copy: ``|h W - w H| <= max(H + W, h + w) / 2``.
  """
  (h, w), (height, width) = mask_size, image_size
  if abs(h * width - w * height) <= max(height + width, h + w) / 2:
    return None
  return (
    f'the mask is {w}x{h}, which is not the aspect ratio of its {width}x{height} image'
    ' (width x height)'
  )


def stored_mask(mask: np.ndarray, size: tuple[int, int]) -> bytes:
  """bool [h, w] -> PNG bytes of uint8 [H, W] (255 = lesion) at ``size`` (H, W).

  Resized as `shrink` resizes images (PIL bilinear, which averages when it
  shrinks), then thresholded at > `MASK_LEVEL`.
  """
  grey = mask.astype(np.uint8) * 255
  if grey.shape != tuple(size):
    resized = Image.fromarray(grey, mode='L').resize((size[1], size[0]), Image.Resampling.BILINEAR)
    grey = (np.asarray(resized) > MASK_LEVEL).astype(np.uint8) * 255
  buffer = io.BytesIO()
  Image.fromarray(grey, mode='L').save(buffer, format='PNG')
  return buffer.getvalue()


def shrink(image: np.ndarray, stored_size: int) -> np.ndarray:
  """Shrinks uint8 [H, W, 3] so that max(H, W) <= stored_size (0: as is).

  PIL's bilinear filter widens with the scale factor, so shrinking averages
  instead of aliasing. The aspect ratio is kept (sides rounded).
  """
  height, width = image.shape[:2]
  if not stored_size or max(height, width) <= stored_size:
    return image
  scale = stored_size / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  resized = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
  return np.asarray(resized)


def encode(image: np.ndarray, encoding: str) -> bytes:
  """uint8 [H, W, 3] -> PNG or JPEG (quality 95) bytes."""
  buffer = io.BytesIO()
  if encoding == 'png':
    Image.fromarray(image).save(buffer, format='PNG')
  else:
    Image.fromarray(image).save(buffer, format='JPEG', quality=_JPEG_QUALITY)
  return buffer.getvalue()


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
    split: 'train', 'validation', 'test', or None (assigned by `split`).
    boxes: every known box, normalised (ymin, xmin, ymax, xmax).
    mask: the image's segmentation mask file, or None; stored as the
      annotation ``mask`` when the image carries annotations (datasets with
      `FilesBuilder.MASKS`).
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


def _require_every_class(
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
      f' Add {noun}s of these classes, change {fractions}validation_fraction, or fix the'
      ' split assignment.'
    )


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
  _require_every_class(
    counts, class_names, source, noun='example', has_no='no ', fractions='test_fraction/'
  )
  return counts


def fingerprint(root: pathlib.Path, files: Iterable[pathlib.Path]) -> str:
  """sha256 of the data directory's path and the given files' names/bytes."""
  digest = hashlib.sha256(str(root.resolve()).encode())
  for path in files:
    digest.update(b'\0' + str(path.relative_to(root)).encode() + b'\0')
    digest.update(path.read_bytes() if path.is_file() else b'<absent>')
  return digest.hexdigest()


def check_parameters(
  dataset: str, parameters: Mapping[str, Any], names: Sequence[str]
) -> dict[str, Any]:
  """Checks the ``data.<dataset>`` parameters: every one of ``names``, no other.

  The config holds every parameter with its default value
  (`care_jax.config.default_config`), so none may be left out here.

  Args:
    dataset: the dataset's name, for messages.
    parameters: the parameters, e.g. ``data.<dataset>`` as a dict.
    names: the dataset's parameter names (its ``PARAMETERS``).

  Returns:
    The parameters in the order of ``names``, ``skip_bad_rows`` a bool.

  Raises:
    ValueError: naming ``data.<dataset>.<key>`` for an unknown or missing key
      or a value out of range.
  """
  unknown = sorted(set(parameters) - set(names))
  if unknown:
    raise ValueError(f'Unknown data.{dataset} parameter(s) {unknown}; valid: {sorted(names)}.')
  missing = [f'data.{dataset}.{name}' for name in names if name not in parameters]
  if missing:
    raise ValueError(
      f'Missing parameter(s) {", ".join(missing)}: data.{dataset} needs'
      " every one of its parameters; the config's defaults come from"
      ' care_jax.config.default_config().'
    )
  params = {name: parameters[name] for name in names}

  def check(ok: bool, key: str, message: str) -> None:
    if not ok:
      raise ValueError(f'data.{dataset}.{key} = {params[key]!r}: {message}.')

  check(0 < params['test_fraction'] < 1, 'test_fraction', 'must lie in (0, 1)')
  check(0 <= params['validation_fraction'] < 1, 'validation_fraction', 'must lie in [0, 1)')
  check(
    isinstance(params['stored_size'], int) and params['stored_size'] >= 0,
    'stored_size',
    'must be an int >= 0 (0 keeps the original size)',
  )
  check(isinstance(params['split_seed'], int), 'split_seed', 'must be an int')
  params['skip_bad_rows'] = bool(params['skip_bad_rows'])
  return params


def require_files(paths: Iterable[pathlib.Path], instructions: str) -> None:
  """Raises ValueError with the download instructions for a missing file."""
  for path in paths:
    if not path.is_file():
      raise ValueError(f'{path} does not exist.\n{instructions}')


def data_dir(
  data_config: ml_collections.ConfigDict, dataset: str, instructions: str
) -> pathlib.Path:
  """The user's files: ``data_config.dir``, which must exist.

  Raises:
    ValueError: with the download instructions when it is unset or missing.
  """
  directory = data_config.get('dir')
  if not directory:
    raise ValueError(
      f'data.dir must point at the directory with the {dataset} files'
      f' (--config.data.dir=PATH).\n{instructions}'
    )
  path = pathlib.Path(directory).expanduser()
  if not path.is_dir():
    raise ValueError(f'data.dir={directory!r} is not a directory.\n{instructions}')
  return path


def builder_from_data_config(
  data_config: ml_collections.ConfigDict,
  dataset: str,
  *,
  builder_cls: type,
  make_config: Callable[..., Any],
  instructions: str,
  rare_classes: bool = True,
) -> Any:
  """The (unprepared) builder of ``data.dir`` with the ``data.<dataset>`` params.

  ``make_config(root, [rare_classes=...,] **params)`` builds its builder
  config; the prepared data go to ``data.cache_dir``.
  """
  root = data_dir(data_config, dataset, instructions)
  parameters = data_config.get(dataset)
  kwargs = parameters.to_dict() if parameters is not None else {}
  if rare_classes:
    kwargs['rare_classes'] = data_config.get('rare_classes', ())
  return builder_cls(
    config=make_config(root, **kwargs), manual_dir=root, data_dir=data_config.get('cache_dir')
  )


def requested_classes(
  requested: str | Sequence[str], class_names: Sequence[str], default: Sequence[str]
) -> tuple[str, ...]:
  """``data.rare_classes`` checked against the class names (empty: default)."""
  if isinstance(requested, str):
    requested = (requested,)
  requested = tuple(requested) or tuple(default)
  unknown = [name for name in requested if name not in class_names]
  if unknown:
    raise ValueError(
      f'data.rare_classes has unknown class name(s) {unknown}; valid class'
      f' names: {list(class_names)}.'
    )
  return tuple(sorted(set(requested)))


class FilesConfig(tfds.core.BuilderConfig):
  """The parameters of a dataset built from files, and their fingerprint.

  The name is ``<tag>_<hash>`` of the class names, the box classes, the
  parameters and the files' fingerprint, so datasets prepared with other
  parameters or other annotation files are never reused.

  Attributes:
    class_names: in label order (sorted).
    box_classes: the classes whose training images carry ``boxes``.
    parameters: the dataset's parameters (``data.<dataset>``).
  """

  def __init__(
    self,
    *,
    tag: str,
    class_names: Sequence[str],
    box_classes: Sequence[str],
    parameters: Mapping[str, Any],
    files_fingerprint: str,
  ):
    self.class_names = tuple(class_names)
    self.box_classes = tuple(box_classes)
    self.parameters = dict(parameters)
    described = dict(
      class_names=self.class_names, box_classes=self.box_classes, parameters=self.parameters
    )
    digest = hashlib.sha256(
      json.dumps(dict(described, files=files_fingerprint), sort_keys=True).encode()
    ).hexdigest()[:12]
    super().__init__(name=f'{tag}_{digest}', description=json.dumps(described))


def fixed_classes_config(
  data_dir: pathlib.Path,
  *,
  tag: str,
  class_names: Sequence[str],
  rare_classes: str | Sequence[str],
  default_rare_classes: Sequence[str],
  parameters: Mapping[str, Any],
  files: Iterable[pathlib.Path],
) -> FilesConfig:
  """The config of a dataset whose class names are fixed.

  Args:
    data_dir: the user's files.
    tag: the start of the config name.
    class_names: in label order.
    rare_classes: ``data.rare_classes``, the classes whose training images
      carry ``boxes`` (`requested_classes`; empty: ``default_rare_classes``).
    default_rare_classes: the dataset's rare classes.
    parameters: the checked ``data.<dataset>`` parameters.
    files: the annotation files in ``data_dir``, fingerprinted.

  Raises:
    ValueError: for an unknown name in ``rare_classes``.
  """
  return FilesConfig(
    tag=tag,
    class_names=class_names,
    box_classes=requested_classes(rare_classes, class_names, default_rare_classes),
    parameters=parameters,
    files_fingerprint=fingerprint(data_dir, files),
  )


def example_features(
  class_names: Sequence[str], encoding: str, *, masks: bool = False
) -> tfds.features.FeaturesDict:
  """The features of every dataset built from files (module docstring).

  ``masks`` adds ``mask``: the encoded annotation mask (PNG bytes, or empty).
  """
  features = {
    'image': tfds.features.Image(shape=(None, None, 3), encoding_format=encoding),
    'label': tfds.features.ClassLabel(names=list(class_names)),
    'boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
    'lesion_boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
    'image_id': tfds.features.Text(),
  }
  if masks:
    features['mask'] = tfds.features.Tensor(shape=(), dtype=np.object_)
  return tfds.features.FeaturesDict(features)


class FilesBuilder(_local.LocalData, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A tfds builder over the user's files (see the module docstring).

  Subclasses define `_read_records` (read and check the annotation files and
  image headers) and may override `_add_boxes` (boxes that need the split)
  and `_load` (decode one image).

  Preparation reads everything twice: first the annotations and image headers
  (to check every row and make the splits before writing anything), then each
  image in full while writing; an image that turns out corrupt only then is
  reported (or, skipping, left out of its split) at that point.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # 'png' (lossless) or 'jpeg' (quality 95) for the stored images.
  ENCODING = 'jpeg'
  HOMEPAGE = ''
  # Whether the examples have the annotation `mask` feature (`Record.mask`).
  MASKS = False

  def __init__(
    self,
    *,
    config: FilesConfig,
    manual_dir: os.PathLike[str] | str,
    data_dir: os.PathLike[str] | str | None = None,
  ):
    self.manual_dir = pathlib.Path(manual_dir)
    super().__init__(config=config, data_dir=data_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return self.dataset_info_from_configs(
      description=(type(self).__doc__ or '').strip(),
      features=example_features(config.class_names, self.ENCODING, masks=self.MASKS),
      supervised_keys=('image', 'label'),
      homepage=self.HOMEPAGE or None,
    )

  def _problems(self) -> Problems:
    return Problems(
      skip=self.builder_config.parameters['skip_bad_rows'], option=f'data.{self.name}.skip_bad_rows'
    )

  @abc.abstractmethod
  def _read_records(self, problems: Problems) -> list[Record]:
    """Reads and checks the annotations; returns the examples to write."""

  @abc.abstractmethod
  def _labels_file(self) -> str:
    """The file that lists the examples, named in coverage errors."""

  def _add_boxes(self, records: list[Record], problems: Problems) -> None:
    """Adds boxes that depend on the split (default: none to add)."""
    del records, problems

  def _load(self, record: Record) -> np.ndarray:
    """Decodes ``record.source`` to uint8 [H, W, 3]; raises UnreadableFile."""
    return load_rgb(record.source)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The files are the user's (self.manual_dir).
    params = self.builder_config.parameters
    problems = self._problems()
    records = self._read_records(problems)
    assign_splits(
      records,
      test_fraction=params['test_fraction'],
      validation_fraction=params['validation_fraction'],
      seed=params['split_seed'],
    )
    self._add_boxes(records, problems)
    problems.log(f'{self.name}: reading {self.manual_dir}')
    counts = check_coverage(records, self.builder_config.class_names, self._labels_file())
    logging.info(
      '%s: examples per class %s and split: %s',
      self.name,
      list(self.builder_config.class_names),
      counts,
    )
    return {
      split: self._generate_examples([r for r in records if r.split == split], split)
      for split in counts
    }

  def _generate_examples(
    self, records: Sequence[Record], split: str
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    config = self.builder_config
    box_labels = {config.class_names.index(n) for n in config.box_classes}
    stored_size = config.parameters['stored_size']
    problems = self._problems()
    for record in records:
      try:
        image = self._load(record)
      except UnreadableFile as e:
        problems.report(record.location, str(e))
        continue
      boxes = np.array(record.boxes, np.float32).reshape(-1, 4)
      annotated = split == 'train' and record.label in box_labels
      image = shrink(image, stored_size)
      example = dict(
        image=encode(image, self.ENCODING),
        label=record.label,
        boxes=boxes if annotated else np.zeros((0, 4), np.float32),
        lesion_boxes=boxes,
        image_id=record.key,
      )
      if self.MASKS:
        example['mask'] = b''
        if annotated and record.mask is not None:
          try:
            example['mask'] = stored_mask(load_mask(record.mask), image.shape[:2])
          except UnreadableFile as e:
            problems.report(record.location, str(e))
            continue
      yield record.key, example
    problems.log(f'{self.name}: writing split {split!r}')


# Multi-label datasets (several findings per image, e.g. ChestX-ray14).


def multilabel_features(class_names: Sequence[str], encoding: str) -> tfds.features.FeaturesDict:
  """The features of a multi-label dataset built from files.

  ``image`` as in `example_features`; ``labels``: the image's positive classes
  (sorted ascending, empty for an image with none); ``boxes`` and
  ``box_labels``: the annotation boxes that feed the CARE masks and the class
  of each (training images only, boxes of the box classes only); and
  ``lesion_boxes`` and ``lesion_box_labels``: every known box of the image
  with its class, in every split. ``image_id`` and ``patient_id`` are the
  image's and the patient's names in the user's files.
  """
  names = list(class_names)
  return tfds.features.FeaturesDict(
    {
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format=encoding),
      'labels': tfds.features.Sequence(tfds.features.ClassLabel(names=names)),
      'boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
      'box_labels': tfds.features.Sequence(tfds.features.ClassLabel(names=names)),
      'lesion_boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
      'lesion_box_labels': tfds.features.Sequence(tfds.features.ClassLabel(names=names)),
      'image_id': tfds.features.Text(),
      'patient_id': tfds.features.Text(),
    }
  )


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

  def add_box(
    self, problems: Problems, location: str, box: Sequence[float], label: int, subject: str
  ) -> None:
    """Adds pixel box (xmin, ymin, xmax, ymax) of class ``label``, normalised.

    An invalid box (`box_problem`) is reported to ``problems`` instead, as
    ``'<subject>: <problem>'``.
    """
    problem = box_problem(box, *self.size)
    if problem:
      problems.report(location, f'{subject}: {problem}')
      return
    self.boxes.append(normalise_box(box, *self.size))
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


def check_multilabel_coverage(
  records: Sequence[MultilabelRecord], class_names: Sequence[str], source: str
) -> dict[str, list[int]]:
  """Returns {split: images per class}; every class must be in every split.

  An image counts once for each of its classes.

  Raises:
    ValueError: naming ``source``, the empty (split, class) pairs and the
      counts, when a class has no images in a split that exists, or when
      there is no 'train' or no 'test' split.
  """
  present = [s for s in SPLITS if any(r.split == s for r in records)]
  counts = {}
  for split in present:
    per_class = np.zeros(len(class_names), np.int64)
    for record in records:
      if record.split == split:
        per_class[list(set(record.labels))] += 1
    counts[split] = per_class.tolist()
  _require_every_class(counts, class_names, source, noun='image', has_no='no image of ')
  return counts


def multilabel_example(
  record: MultilabelRecord,
  image: np.ndarray,
  *,
  split: str,
  box_labels: Iterable[int],
  encoding: str,
  stored_size: int,
) -> dict[str, Any]:
  """The `multilabel_features` example of ``record`` with decoded ``image``.

  ``boxes``/``box_labels`` hold the boxes of the classes ``box_labels`` when
  ``split`` is 'train' and are empty otherwise; ``lesion_boxes`` and
  ``lesion_box_labels`` hold every box.
  """
  boxes = np.array(record.boxes, np.float32).reshape(-1, 4)
  labels = np.array(record.box_labels, np.int64)
  annotated = np.isin(labels, list(box_labels)) & (split == 'train')
  return dict(
    image=encode(shrink(image, stored_size), encoding),
    labels=np.array(sorted(set(record.labels)), np.int64),
    boxes=boxes[annotated],
    box_labels=labels[annotated],
    lesion_boxes=boxes,
    lesion_box_labels=labels,
    image_id=record.key,
    patient_id=record.group,
  )
