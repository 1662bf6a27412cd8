"""The rows of the user's annotation files: CSV reading, paths, numbers, boxes and bad rows.

**Pixel boxes.** Box files give pixel edges of the original image: pixel
column ``j`` spans ``[j, j + 1)``, so a box over columns 10..19 has ``xmin=10,
xmax=20``; it is stored as ``xmin / W``. A valid box has ``0 <= xmin < xmax <=
W`` and ``0 <= ymin < ymax <= H``.

**Errors.** A bad row raises ``ValueError('<file>, line <n>: <problem>')``,
``n`` the 1-based line as an editor shows it (the header is line 1). Problems
confined to one row (missing or unreadable image or mask, bad label, bad box,
a box of an unknown image) can instead be skipped with ``skip_bad_rows=True``:
they are counted and logged (`logging.warning`, with the first few). Problems
that make the data ambiguous or unsafe always raise: a malformed header, an
empty file, an image listed twice, a path that leaves ``data.dir``, and a
class with no examples in a split.
"""

from collections.abc import Callable, Sequence
import csv
import dataclasses
import logging
import os
import pathlib

import numpy as np

from care_jax.data._files import images
from care_jax.data._files import splits

# The columns of a pixel box in the box files.
BOX_COLUMNS = ('xmin', 'ymin', 'xmax', 'ymax')
# The optional ``kind`` column of a box file: 'lesion' (the default, also an empty cell) or
# 'artefact' (an irrelevant region: relevance -1, `care_jax.data.pipeline`).
BOX_KINDS = ('lesion', 'artefact')
# How many skipped rows a warning lists one by one.
_LOGGED_PROBLEMS = 5


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
    """``read(path)`` (default `images.image_header`); None after reporting a bad file."""
    try:
      return (read or images.image_header)(path)
    except images.UnreadableFile as e:
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
  ) -> 'splits.Record | None':
    """The `splits.Record` of image ``source``, listed at ``location``, without boxes.

    Its size is ``read(source)`` (`image_size`); None after reporting an
    unreadable file.
    """
    size = self.image_size(location, source, read)
    if size is None:
      return None
    return splits.Record(
      key=key, source=source, location=location, label=label, size=size, group=group, split=split
    )

  def add_box(
    self,
    record: 'splits.Record',
    location: str,
    box: Sequence[float],
    subject: str,
    *,
    kind: str = 'lesion',
  ) -> None:
    """Adds pixel box (xmin, ymin, xmax, ymax) to ``record.boxes``, normalised.

    An invalid box (`box_problem`) is reported instead, as ``'<subject>:
    <problem>'`` (e.g. ``subject='image 1.png'``). ``kind='artefact'`` adds it to
    ``record.artefact_boxes`` instead.
    """
    problem = box_problem(box, *record.size)
    if problem:
      self.report(location, f'{subject}: {problem}')
      return
    target = record.artefact_boxes if kind == 'artefact' else record.boxes
    target.append(normalise_box(box, *record.size))

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


def read_box_rows(
  path: pathlib.Path, *, kinds: bool = False
) -> list[tuple[str, Row, list[float | None]]]:
  """Reads a box file, columns ``image,xmin,ymin,xmax,ymax`` (`read_csv`).

  The file may have no rows. With ``kinds``, it may have the column ``kind`` too
  (`box_kind`).

  Returns:
    ``(location, row, coordinates)`` per row: `where` the row is, the row
    and its pixel box ``BOX_COLUMNS``, None for a value that is not a number.
  """
  optional = ('kind',) if kinds else ()
  _, rows = read_csv(path, required=('image',) + BOX_COLUMNS, optional=optional, allow_no_rows=True)
  return [(where(path, row.line), row, [parse_number(row[c]) for c in BOX_COLUMNS]) for row in rows]


def box_kind(row: Row) -> str | None:
  """The ``kind`` of a box row (`BOX_KINDS`; no column or an empty cell: 'lesion'), or None
  for another value."""
  kind = row.get('kind').strip().lower() or 'lesion'
  return kind if kind in BOX_KINDS else None


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
