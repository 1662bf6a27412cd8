"""`folder`: the user's own images, labels and (optional) lesion boxes.

The layout (DESIGN 3.1)::

  DATA_DIR/labels.csv   image,label[,split][,group][,mask]
  DATA_DIR/boxes.csv    image,xmin,ymin,xmax,ymax      (optional)
  DATA_DIR/<images>     PNG or JPEG, any size, RGB or greyscale
  DATA_DIR/<masks>      PNG (or JPEG), any size        (optional)

- ``image``: path relative to DATA_DIR (no absolute paths, no ``..``).
- ``label``: class name; classes are ordered by name.
- ``split`` (optional column): 'train', 'validation' or 'test' on every row.
  Without it, a stratified split is made from ``split_seed``
  (``test_fraction``, then ``validation_fraction`` of the rest); with it but
  without 'validation' rows, validation is held out of train.
- ``group`` (optional column): e.g. a patient id; the generated splits keep a
  group's rows together.
- ``boxes.csv``: pixel boxes of the original images (edges: a box over columns
  10..19 has ``xmin=10, xmax=20``), one row per box, several per image
  allowed. The boxes of *training* images become the annotation ``boxes``
  (CARE masks) whatever their class: the file says which images carry boxes,
  so ``data.rare_classes`` defaults to the classes with boxes. Boxes of
  validation/test images are kept in ``lesion_boxes`` only.
- ``mask`` (optional column; may be empty on any row): the path, relative to
  DATA_DIR like ``image``, of the image's lesion segmentation mask, of any
  size with the image's aspect ratio; a pixel is lesion when its grey level is
  > 127 (0/255 masks; see `care_jax.data._files.images` for 16-bit and colour files).
  The mask of a *training* image becomes its annotation ``mask`` (resized to
  the stored image), and CARE's inner mask M_in is then that mask (resized and
  warped with the image by the pipeline) instead of the image's boxes: with
  both a box and a mask, the mask wins for M_in and the box still goes to
  ``boxes`` and ``lesion_boxes`` (the attention metrics score boxes). An image
  with a mask counts as annotated: its class is a default rare class. Masks of
  validation/test images are checked (the file must exist, be PNG/JPEG and fit
  the image) but not stored.

Bad rows raise ``ValueError`` naming the file and line (a missing, unreadable
or empty mask, or one whose aspect ratio is not its image's, is a bad row of
labels.csv); with
``data.folder.skip_bad_rows=True`` the row-level ones are skipped, counted and
logged instead (see `care_jax.data._files.rows`). Images are stored losslessly
(PNG), the longer side shrunk to ``stored_size``.

Example::

  care-jax train --config=configs/folder.py --workdir=runs/mine \\
      --config.data.dir=/path/to/DATA_DIR
"""

import pathlib
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from care_jax.data._files import builder
from care_jax.data._files import images
from care_jax.data._files import rows
from care_jax.data._files import splits

LABELS = 'labels.csv'
BOXES = 'boxes.csv'

# The names of the data.folder parameters (their defaults: care_jax.config).
PARAMETERS = builder.COMMON_PARAMETERS
# The optional columns of labels.csv.
OPTIONAL_COLUMNS = ('split', 'group', 'mask')

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put your images and a {LABELS} file into one directory DATA_DIR:

  DATA_DIR/{LABELS}   columns image,label[,split][,group][,mask]
  DATA_DIR/{BOXES}    columns image,xmin,ymin,xmax,ymax (optional; pixels)

`image` is the image's path relative to DATA_DIR (PNG or JPEG), `split` one of
train/validation/test, `mask` the path of a lesion mask (PNG, lesion > 127).
Then pass --config.data.dir=DATA_DIR.
"""


def _read_labels(root: pathlib.Path) -> tuple[list[str], list[rows.Row]]:
  path = root / LABELS
  builder.require_files([path], MANUAL_DOWNLOAD_INSTRUCTIONS)
  return rows.read_csv(path, required=('image', 'label'), optional=OPTIONAL_COLUMNS)


def folder_config(data_dir: pathlib.Path, **parameters: Any) -> builder.FilesConfig:
  """The builder config of DATA_DIR: classes from labels.csv, parameters.

  Args:
    data_dir: the directory with labels.csv.
    **parameters: ``data.folder``: every name of `PARAMETERS` (split_seed,
      test_fraction, validation_fraction, skip_bad_rows, stored_size).

  Raises:
    ValueError: for unknown, missing or bad parameters, a missing/empty
      labels.csv or a labels.csv without any label.
  """
  params = builder.check_parameters('folder', parameters, PARAMETERS)
  _, csv_rows = _read_labels(data_dir)
  class_names = sorted({row['label'] for row in csv_rows if row['label']})
  if not class_names:
    raise ValueError(f'{data_dir / LABELS}: no row has a label.')
  return builder.FilesConfig(
    tag='folder',
    class_names=class_names,
    # The user's boxes.csv decides which (training) images carry boxes.
    box_classes=class_names,
    parameters=params,
    files_fingerprint=builder.fingerprint(data_dir, [data_dir / LABELS, data_dir / BOXES]),
  )


class Folder(builder.FilesBuilder):
  """Images, labels and lesion boxes from the user's own directory."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  ENCODING = 'png'
  MASKS = True
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': 'The annotation `mask` feature: segmentation masks of the mask column.',
  }

  def _labels_file(self) -> str:
    return str(self.manual_dir / LABELS)

  def _read_records(self, problems: rows.Problems) -> list[splits.Record]:
    root = self.manual_dir
    labels_path = root / LABELS
    header, csv_rows = _read_labels(root)
    class_names = self.builder_config.class_names
    records = {}
    first_line = {}  # every listed image, skipped or not -> its line
    for row in csv_rows:
      location = rows.where(labels_path, row.line)
      key, path = rows.relative_path(root, row['image'], location)
      if key in first_line:
        raise ValueError(
          f'{location}: image {key!r} is listed again (first on line'
          f' {first_line[key]}); list every image once.'
        )
      first_line[key] = row.line
      split = row.get('split')
      if 'split' in header and split not in splits.SPLITS:
        problems.report(location, f'split {split!r} is not one of {splits.SPLITS}')
        continue
      if not row['label']:
        problems.report(location, 'empty label')
        continue
      record = problems.image_record(
        location,
        path,
        key=key,
        label=class_names.index(row['label']),
        group=row.get('group') or key,
        split=split or None,
      )
      if record is None:
        continue
      if row.get('mask'):
        _, record.mask = rows.relative_path(root, row['mask'], location, kind='mask')
        problem = self._mask_problem(record)
        if problem:
          problems.report(location, problem)
          continue
      records[key] = record
    self._read_boxes(records, first_line, problems)
    return list(records.values())

  @staticmethod
  def _mask_problem(record: splits.Record) -> str | None:
    """What is wrong with ``record.mask`` as far as its header tells, or None."""
    try:
      size = images.image_header(record.mask, kind='mask')
    except images.UnreadableFile as e:
      return str(e)
    problem = images.mask_size_problem(size, record.size)
    return f'{problem}: {record.mask}' if problem else None

  def _read_boxes(
    self, records: dict[str, splits.Record], listed: dict[str, int], problems: rows.Problems
  ) -> None:
    path = self.manual_dir / BOXES
    if not path.exists():
      return
    for location, row, coordinates in rows.read_box_rows(path):
      key, _ = rows.relative_path(self.manual_dir, row['image'], location)
      if key not in listed:
        problems.report(location, f'image {key!r} is not listed in {LABELS}')
        continue
      if key not in records:
        problems.report(
          location, f'box of image {key!r}, whose row (line {listed[key]} of {LABELS}) was skipped'
        )
        continue
      if None in coordinates:
        problems.report(
          location,
          f'xmin, ymin, xmax, ymax must be numbers, got {[row[c] for c in rows.BOX_COLUMNS]}',
        )
        continue
      problems.add_box(records[key], location, coordinates, f'image {key!r}')


def from_data_config(data_config: ml_collections.ConfigDict) -> Folder:
  """The (unprepared) builder of ``data.dir`` with ``data.folder`` params."""
  return builder.builder_from_data_config(
    data_config,
    'folder',
    builder_cls=Folder,
    make_config=folder_config,
    instructions=MANUAL_DOWNLOAD_INSTRUCTIONS,
    rare_classes=False,
  )
