"""`folder`: the user's own images, labels and (optional) lesion boxes.

Three layouts of DATA_DIR, told apart by one rule: with a ``labels.csv`` it is the labels.csv
layout below (any folders are then just where the images are); without one, its folders are a
class-folder tree (`care_jax.data._files.class_folders`)::

  DATA_DIR/<class>/<image>            classes from folder names; splits generated
  DATA_DIR/<split>/<class>/<image>    split folders train, val (or validation), test

In a tree, classes are the folder names sorted (torchvision's ``ImageFolder`` order), an image's
``image_id`` (and the ``image`` column of ``boxes.csv``) is its path relative to DATA_DIR, e.g.
``train/PNEUMONIA/person1_bacteria_1.jpeg``; without a 'validation' split folder, validation is
held out of train; without split folders, the splits are generated as for a labels.csv without
a ``split`` column. ``boxes.csv`` is optional as below; masks need the labels.csv layout.

The labels.csv layout (DESIGN 3.1)::

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
  validation/test images are kept in ``lesion_boxes`` only. An optional ``kind``
  column says ``lesion`` (the default, also when empty) or ``artefact``: an
  irrelevant region (a ruler, a text label); with any artefact row the dataset
  stores ``artefact_boxes`` and its training batches carry ``relevance``
  (`care_jax.data.pipeline`).
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

import functools
import pathlib
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from care_jax.data._files import builder
from care_jax.data._files import class_folders
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
Or, without {LABELS}, one folder per class (PNG or JPEG files inside):

  DATA_DIR/<class>/<image>  or  DATA_DIR/<train|val|test>/<class>/<image>

Then pass --config.data.dir=DATA_DIR.
"""


def _read_labels(root: pathlib.Path) -> tuple[list[str], list[rows.Row]]:
  path = root / LABELS
  builder.require_files([path], MANUAL_DOWNLOAD_INSTRUCTIONS)
  return rows.read_csv(path, required=('image', 'label'), optional=OPTIONAL_COLUMNS)


def read_tree(
  root: pathlib.Path, exclude: tuple[pathlib.Path, ...] = ()
) -> list[class_folders.TreeImage] | None:
  """The images of DATA_DIR's class-folder tree, or None when it has a labels.csv.

  Raises:
    ValueError: for a DATA_DIR with neither a labels.csv nor class folders (with
      the layouts), or a bad tree (`class_folders.scan`).
  """
  if (root / LABELS).exists():
    return None
  tree = class_folders.scan(root, exclude=exclude)
  if not tree:
    raise ValueError(
      f'{root / LABELS} does not exist and {root} has no class folders.\n'
      f'{MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
  return tree


class FolderConfig(builder.FilesConfig):
  """`builder.FilesConfig` with the folders of DATA_DIR that are no class folders."""

  def __init__(self, *, exclude: tuple[pathlib.Path, ...], artefacts: bool = False, **kwargs: Any):
    self.exclude = tuple(exclude)
    # boxes.csv has artefact boxes: the dataset stores `artefact_boxes` (the files'
    # fingerprint, part of the name, already covers boxes.csv).
    self.artefacts = bool(artefacts)
    super().__init__(**kwargs)


def folder_config(
  data_dir: pathlib.Path, *, exclude: tuple[pathlib.Path, ...] = (), **parameters: Any
) -> FolderConfig:
  """The builder config of DATA_DIR: classes from labels.csv or the class folders, parameters.

  Args:
    data_dir: the directory with labels.csv, or with class (or split) folders.
    exclude: folders of DATA_DIR that are not class folders (the cache).
    **parameters: ``data.folder``: every name of `PARAMETERS` (split_seed,
      test_fraction, validation_fraction, skip_bad_rows, stored_size).

  Raises:
    ValueError: for unknown, missing or bad parameters, a missing/empty
      labels.csv or a labels.csv without any label where there are no class
      folders, or a bad class-folder tree.
  """
  params = builder.check_parameters('folder', parameters, PARAMETERS)
  tree = read_tree(data_dir, exclude)
  listing = ()
  if tree is None:
    _, csv_rows = _read_labels(data_dir)
    class_names = sorted({row['label'] for row in csv_rows if row['label']})
    if not class_names:
      raise ValueError(f'{data_dir / LABELS}: no row has a label.')
  else:
    class_names = sorted({image.label for image in tree})
    # The tree is the label file: another image list prepares the data anew.
    listing = [f'{image.key}\0{image.label}\0{image.split}' for image in tree]
  boxes_file = data_dir / BOXES
  artefacts = boxes_file.exists() and any(
    rows.box_kind(row) == 'artefact' for _, row, _ in rows.read_box_rows(boxes_file, kinds=True)
  )
  return FolderConfig(
    exclude=exclude,
    artefacts=artefacts,
    tag='folder',
    class_names=class_names,
    # The user's boxes.csv decides which (training) images carry boxes.
    box_classes=class_names,
    parameters=params,
    files_fingerprint=builder.fingerprint(
      data_dir, [data_dir / LABELS, data_dir / BOXES], listing=listing
    ),
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

  def _tree(self) -> list[class_folders.TreeImage] | None:
    """The class-folder tree of ``manual_dir`` (None: the labels.csv layout)."""
    if not hasattr(self, '_tree_images'):
      self._tree_images = read_tree(self.manual_dir, self.builder_config.exclude)
    return self._tree_images

  def _labels_file(self) -> str:
    if self._tree() is not None:
      return f'{self.manual_dir} (class folders)'
    return str(self.manual_dir / LABELS)

  def _read_records(self, problems: rows.Problems) -> list[splits.Record]:
    tree = self._tree()
    if tree is None:
      records, listed = self._read_label_rows(problems)
      self._read_boxes(records, listed, problems, f'listed in {LABELS}')
    else:
      records, listed = self._read_tree_records(tree, problems)
      self._read_boxes(records, listed, problems, 'in a class folder')
    return list(records.values())

  def _read_tree_records(
    self, tree: list[class_folders.TreeImage], problems: rows.Problems
  ) -> tuple[dict[str, splits.Record], dict[str, str]]:
    """The records of the tree's images and where each is (its path)."""
    class_names = self.builder_config.class_names
    records, listed = {}, {}
    for image in tree:
      listed[image.key] = str(image.path)
      record = problems.image_record(
        str(image.path),
        image.path,
        key=image.key,
        label=class_names.index(image.label),
        group=image.key,
        split=image.split,
      )
      if record is not None:
        records[image.key] = record
    return records, listed

  def _read_label_rows(
    self, problems: rows.Problems
  ) -> tuple[dict[str, splits.Record], dict[str, str]]:
    """The records of labels.csv and the line of every listed image, skipped or not."""
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
    return records, {key: f'line {line} of {LABELS}' for key, line in first_line.items()}

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
    self,
    records: dict[str, splits.Record],
    listed: dict[str, str],
    problems: rows.Problems,
    known: str,
  ) -> None:
    """Adds boxes.csv's boxes to ``records``.

    ``listed`` maps every image of the layout (skipped or not) to where it is;
    ``known`` says where images are (``'listed in labels.csv'``).
    """
    path = self.manual_dir / BOXES
    if not path.exists():
      return
    for location, row, coordinates in rows.read_box_rows(path, kinds=True):
      key, _ = rows.relative_path(self.manual_dir, row['image'], location)
      if key not in listed:
        problems.report(location, f'image {key!r} is not {known}')
        continue
      if key not in records:
        problems.report(location, f'box of image {key!r}, whose row ({listed[key]}) was skipped')
        continue
      if None in coordinates:
        problems.report(
          location,
          f'xmin, ymin, xmax, ymax must be numbers, got {[row[c] for c in rows.BOX_COLUMNS]}',
        )
        continue
      kind = rows.box_kind(row)
      if kind is None:
        problems.report(location, f"kind must be 'lesion' or 'artefact', got {row['kind']!r}")
        continue
      problems.add_box(records[key], location, coordinates, f'image {key!r}', kind=kind)


def from_data_config(data_config: ml_collections.ConfigDict) -> Folder:
  """The (unprepared) builder of ``data.dir`` with ``data.folder`` params."""
  cache_dir = data_config.get('cache_dir')
  # A cache inside DATA_DIR is not a class folder.
  exclude = (pathlib.Path(cache_dir).expanduser(),) if cache_dir else ()
  return builder.builder_from_data_config(
    data_config,
    'folder',
    builder_cls=Folder,
    make_config=functools.partial(folder_config, exclude=exclude),
    instructions=MANUAL_DOWNLOAD_INSTRUCTIONS,
    rare_classes=False,
  )
