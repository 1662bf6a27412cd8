"""`isic2018`: ISIC 2018 Task 3 (HAM10000), 7 skin lesion classes, 10015 images.

Read from the user's files (``data.dir``; see `MANUAL_DOWNLOAD_INSTRUCTIONS`):

- ``ISIC2018_Task3_Training_GroundTruth.csv`` (also accepted inside the
  ``ISIC2018_Task3_Training_GroundTruth/`` folder of the zip): header
  ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, one one-hot row per image (floats).
- Images ``ISIC_#######.jpg`` (600x450) in ``ISIC2018_Task3_Training_Input/``
  or HAM10000's ``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/``.
- Boxes (``box_source``): ``'masks'`` derives each image's box from its
  HAM10000 lesion segmentation ``ISIC_#######_segmentation.png`` in
  ``HAM10000_segmentations_lesion_tschandl/``: the bounding box of the largest
  8-connected component of the mask (> 127; a mask of any size with the
  image's aspect ratio, the box being normalised); ``'csv'`` reads pixel boxes
  from ``box_csv`` (columns ``image,xmin,ymin,xmax,ymax``, image id with or
  without ``.jpg``, several rows per image allowed).
- Supervision (``supervision``): ``'box'`` (default) trains CARE with the
  boxes, M_in rasterised from them; ``'mask'`` with the segmentation masks
  themselves: the mask of every rare-class training image (read from
  ``HAM10000_segmentations_lesion_tschandl/`` whatever ``box_source`` is;
  pixels > 127 are lesion) is resized to the stored image's size and stored as
  its annotation ``mask``, and M_in is that mask (resized and warped with the
  image by the pipeline). The boxes stay in ``boxes`` and ``lesion_boxes``
  (the attention metrics score boxes in both modes). A rare training image
  whose mask is missing, unreadable or empty is a bad row in both modes where
  the mask is needed.
- Splits (``split``): ``'lesion'`` (default) makes the stratified split by
  lesion, using ``HAM10000_metadata.csv`` (``lesion_id,image_id,dx,...``), so
  that the images of one lesion (HAM10000 has up to 6 per lesion) never sit in
  both train and test; ``'stratified'`` splits images (the paper's 80/20
  stratified split, which can leak a lesion across splits); ``'folds'``
  reads the CARE authors' 5-fold files ``split_data/split_data_{fold}_fold_
  {train,test}.csv`` (columns ``,image_train,label_train`` and
  ``,image_test,label_test``; labels index the ground-truth column order).
  Validation is held out of train (``validation_fraction``, grouped by lesion
  for 'lesion').

Classes (label order, sorted): AKIEC, BCC, BKL, DF, MEL, NV, VASC. Boxes
(``boxes``) go to the training images of the rare classes (``data.rare_classes``,
default DF, dermatofibroma, as in the paper); every image's box goes to
``lesion_boxes`` when known (a missing mask there is no error). Images are
stored as JPEG (quality 95), the longer side at most ``stored_size`` (600
keeps them as distributed).

Example::

  care-jax train --config=configs/isic2018_care.py --workdir=runs/isic \\
      --config.data.dir=/data/isic2018 --config.model.pretrained=resnet50.safetensors
"""

import logging
import pathlib
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from care_jax.data._files import builder
from care_jax.data._files import images
from care_jax.data._files import rows
from care_jax.data._files import splits

# The ground-truth columns in file order; the authors' fold files index it.
GROUND_TRUTH_COLUMNS = ('MEL', 'NV', 'BCC', 'AKIEC', 'BKL', 'DF', 'VASC')
CLASS_NAMES = tuple(sorted(GROUND_TRUTH_COLUMNS))
DEFAULT_RARE_CLASSES = ('DF',)
SPLIT_MODES = ('lesion', 'stratified', 'folds')
BOX_SOURCES = ('masks', 'csv')
SUPERVISIONS = ('box', 'mask')

GROUND_TRUTH = 'ISIC2018_Task3_Training_GroundTruth.csv'
METADATA = 'HAM10000_metadata.csv'
IMAGE_DIRS = ('ISIC2018_Task3_Training_Input', 'HAM10000_images_part_1', 'HAM10000_images_part_2')
MASK_DIR = 'HAM10000_segmentations_lesion_tschandl'

# The names of the data.isic2018 parameters (their defaults: care_jax.config).
PARAMETERS = ('split', 'fold', 'box_source', 'box_csv', 'supervision') + builder.COMMON_PARAMETERS

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download ISIC 2018 Task 3 (https://challenge.isic-archive.com/data/#2018:
"Training Data" and "Training Ground Truth" of Task 3) or HAM10000
(https://doi.org/10.7910/DVN/DBW86T: images, {METADATA} and the lesion
segmentations), unzip them into one directory DATA_DIR and pass
--config.data.dir=DATA_DIR:

  DATA_DIR/{GROUND_TRUTH}
  DATA_DIR/{IMAGE_DIRS[0]}/ISIC_0024306.jpg ...   (or {IMAGE_DIRS[1]}/, {IMAGE_DIRS[2]}/)
  DATA_DIR/{METADATA}                          (split='lesion', the default)
  DATA_DIR/{MASK_DIR}/ISIC_0024306_segmentation.png ...   (box_source='masks' or supervision='mask')
  DATA_DIR/boxes.csv                           (box_source='csv': image,xmin,ymin,xmax,ymax)
  DATA_DIR/split_data/split_data_1_fold_train.csv ...     (split='folds')
"""


def _find(root: pathlib.Path, *candidates: str) -> pathlib.Path:
  """The first candidate path that exists, else the first (for messages)."""
  for candidate in candidates:
    if (root / candidate).exists():
      return root / candidate
  return root / candidates[0]


def _fold_files(root: pathlib.Path, fold: int) -> dict[str, pathlib.Path]:
  return {
    split: _find(
      root, f'split_data/split_data_{fold}_fold_{split}.csv', f'split_data_{fold}_fold_{split}.csv'
    )
    for split in ('train', 'test')
  }


def _annotation_files(root: pathlib.Path, params: dict[str, Any]) -> list[pathlib.Path]:
  """The files that define the dataset with these parameters."""
  files = [_find(root, GROUND_TRUTH, f'{GROUND_TRUTH[:-4]}/{GROUND_TRUTH}')]
  if params['split'] == 'lesion':
    files.append(root / METADATA)
  if params['split'] == 'folds':
    files.extend(_fold_files(root, params['fold']).values())
  if params['box_source'] == 'csv':
    files.append(root / params['box_csv'])
  for path in files:
    if not path.is_file():
      raise ValueError(
        f'{path} does not exist (needed for split={params["split"]!r},'
        f' box_source={params["box_source"]!r}).\n'
        f'{MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
  return files


def isic2018_config(
  data_dir: pathlib.Path, *, rare_classes: str | tuple[str, ...] = (), **parameters: Any
) -> builder.FilesConfig:
  """The builder config of the ISIC 2018 / HAM10000 files in ``data_dir``.

  Args:
    data_dir: the directory with the ground truth, images, metadata, masks.
    rare_classes: ``data.rare_classes`` (empty: DF).
    **parameters: ``data.isic2018``: every name of `PARAMETERS`.

  Raises:
    ValueError: for unknown, missing or bad parameters, unknown rare classes
      or a missing annotation file (with the download instructions).
  """
  params = builder.check_parameters('isic2018', parameters, PARAMETERS)
  if params['split'] not in SPLIT_MODES:
    raise ValueError(f'data.isic2018.split = {params["split"]!r}: must be one of {SPLIT_MODES}.')
  if params['box_source'] not in BOX_SOURCES:
    raise ValueError(
      f'data.isic2018.box_source = {params["box_source"]!r}: must be one of {BOX_SOURCES}.'
    )
  if params['supervision'] not in SUPERVISIONS:
    raise ValueError(
      f'data.isic2018.supervision = {params["supervision"]!r}: must be one of {SUPERVISIONS}.'
    )
  if params['fold'] not in range(1, 6):
    raise ValueError(f'data.isic2018.fold = {params["fold"]!r}: must be 1, 2, 3, 4 or 5.')
  return builder.fixed_classes_config(
    data_dir,
    tag=params['split'],
    class_names=CLASS_NAMES,
    rare_classes=rare_classes,
    default_rare_classes=DEFAULT_RARE_CLASSES,
    parameters=params,
    files=_annotation_files(data_dir, params),
  )


def largest_component_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
  """Normalised (ymin, xmin, ymax, xmax) of the largest blob of a bool mask.

  Components are 8-connected; ties go to the first in raster order. The box
  holds the component's pixels exactly (edges ``rows[0]`` to ``rows[-1] +
  1``). None when the mask is empty.
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  components, count = ndimage.label(mask, structure=np.ones((3, 3)))
  if count == 0:
    return None
  largest = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
  rows, cols = ndimage.find_objects(components)[largest - 1]
  height, width = mask.shape
  return (rows.start / height, cols.start / width, rows.stop / height, cols.stop / width)


class Isic2018(builder.FilesBuilder):
  """ISIC 2018 Task 3 / HAM10000 dermoscopy images (7 classes) with boxes."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  ENCODING = 'jpeg'
  HOMEPAGE = 'https://challenge.isic-archive.com/data/#2018'
  MASKS = True
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': "The annotation `mask` feature (supervision='mask'); masks of any size.",
  }

  def _labels_file(self) -> str:
    return str(_find(self.manual_dir, GROUND_TRUTH))

  def _image_index(self) -> dict[str, pathlib.Path]:
    return images.image_index([self.manual_dir / name for name in IMAGE_DIRS], '*.jpg')

  def _read_records(self, problems: rows.Problems) -> list[splits.Record]:
    params = self.builder_config.parameters
    root = self.manual_dir
    path = _find(root, GROUND_TRUTH, f'{GROUND_TRUTH[:-4]}/{GROUND_TRUTH}')
    _, csv_rows = rows.read_csv(path, required=('image',) + GROUND_TRUTH_COLUMNS)
    image_files = self._image_index()
    records = {}
    first_line = {}
    for row in csv_rows:
      location = rows.where(path, row.line)
      key = row['image']
      if key in first_line:
        raise ValueError(
          f'{location}: image {key!r} is listed again (first on line {first_line[key]}).'
        )
      first_line[key] = row.line
      values = [rows.parse_number(row[c]) for c in GROUND_TRUTH_COLUMNS]
      if None in values or sorted(values) != [0.0] * 6 + [1.0]:
        problems.report(
          location,
          f'{key}: expected one 1.0 and six 0.0 in {GROUND_TRUTH_COLUMNS},'
          f' got {[row[c] for c in GROUND_TRUTH_COLUMNS]}',
        )
        continue
      name = GROUND_TRUTH_COLUMNS[values.index(1.0)]
      if f'{key}.jpg' not in image_files:
        problems.report(
          location, f'image {key}.jpg not found in any of {[str(root / d) for d in IMAGE_DIRS]}'
        )
        continue
      record = problems.image_record(
        location, image_files[f'{key}.jpg'], key=key, label=CLASS_NAMES.index(name), group=key
      )
      if record is not None:
        records[key] = record
    if params['split'] == 'lesion':
      self._read_lesions(records, problems)
    elif params['split'] == 'folds':
      self._read_folds(records, first_line, problems)
    if params['box_source'] == 'csv':
      self._read_box_csv(records, first_line, problems)
    return list(records.values())

  def _read_lesions(self, records: dict[str, splits.Record], problems: rows.Problems) -> None:
    """Sets ``group`` to the lesion; drops (reports) images without one."""
    path = self.manual_dir / METADATA
    _, csv_rows = rows.read_csv(path, required=('lesion_id', 'image_id', 'dx'), allow_extra=True)
    lesions = set()
    for row in csv_rows:
      record = records.get(row['image_id'])
      if record is None:
        continue  # Not in the ground truth (or its row was skipped).
      diagnosis = row['dx'].upper()
      if diagnosis != CLASS_NAMES[record.label]:
        problems.report(
          rows.where(path, row.line),
          f'{record.key}: dx={row["dx"]!r}, but {record.location} says {CLASS_NAMES[record.label]}',
        )
        del records[record.key]
        continue
      record.group = row['lesion_id'] or record.key
      lesions.add(record.key)
    for key in [k for k in records if k not in lesions]:
      problems.report(records[key].location, f'image {key} is not listed in {path}')
      del records[key]

  def _read_folds(
    self, records: dict[str, splits.Record], listed: dict[str, int], problems: rows.Problems
  ) -> None:
    """Sets ``split`` from the fold files; drops images in neither."""
    fold_labels = {str(i): name for i, name in enumerate(GROUND_TRUTH_COLUMNS)}
    assigned = {}
    for split, path in _fold_files(self.manual_dir, self.builder_config.parameters['fold']).items():
      image_column, label_column = f'image_{split}', f'label_{split}'
      _, csv_rows = rows.read_csv(path, required=(image_column, label_column), allow_extra=True)
      for row in csv_rows:
        location = rows.where(path, row.line)
        key = row[image_column].removesuffix('.jpg')
        if key in assigned:
          raise ValueError(f'{location}: image {key} is already in {assigned[key]}.')
        assigned[key] = location
        if key not in listed:
          problems.report(location, f'image {key} is not in {GROUND_TRUTH}')
          continue
        record = records.get(key)
        if record is None:
          continue  # Its ground-truth row was skipped.
        expected = fold_labels.get(row[label_column], row[label_column])
        if expected != CLASS_NAMES[record.label]:
          problems.report(
            location,
            f'{key}: label {row[label_column]!r} ({expected}), but'
            f' {record.location} says {CLASS_NAMES[record.label]}',
          )
          del records[key]
          continue
        record.split = split
    for key in [k for k in records if records[k].split is None]:
      problems.report(
        records[key].location,
        f'image {key} is in neither fold file of fold {self.builder_config.parameters["fold"]}',
      )
      del records[key]

  def _read_box_csv(
    self, records: dict[str, splits.Record], listed: dict[str, int], problems: rows.Problems
  ) -> None:
    path = self.manual_dir / self.builder_config.parameters['box_csv']
    for location, row, coordinates in rows.read_box_rows(path):
      key = row['image'].removesuffix('.jpg')
      if key not in listed:
        problems.report(location, f'image {key!r} is not in {GROUND_TRUTH}')
        continue
      record = records.get(key)
      if record is None:
        continue  # Its image was skipped (and reported) already.
      if None in coordinates:
        columns = rows.BOX_COLUMNS
        problems.report(location, f'{columns} must be numbers, got {[row[c] for c in columns]}')
        continue
      problems.add_box(record, location, coordinates, f'image {key}')

  def _add_boxes(self, records: list[splits.Record], problems: rows.Problems) -> None:
    """Boxes (box_source='masks') and annotation masks (supervision='mask').

    Masks are required for the rare training images only: a bad one is
    reported there (skipping drops the image's annotation, not the image).
    """
    params = self.builder_config.parameters
    derive_boxes = params['box_source'] == 'masks'
    supervise = params['supervision'] == 'mask'
    if not (derive_boxes or supervise):
      return
    config = self.builder_config
    box_labels = {config.class_names.index(n) for n in config.box_classes}
    uses = ' and '.join(use for use, on in (('box', derive_boxes), ('mask', supervise)) if on)
    missing = 0
    for record in records:
      needed = record.split == 'train' and record.label in box_labels
      if not (derive_boxes or needed):
        continue
      path = self.manual_dir / MASK_DIR / f'{record.key}_segmentation.png'
      try:
        mask = self._read_mask(path, record.size)
      except images.UnreadableFile as e:
        if needed:
          problems.report(record.location, f'{e} ({uses} of a rare class image)')
        missing += 1
        continue
      if derive_boxes:
        record.boxes.append(largest_component_box(mask))
      if supervise and needed:
        record.mask = path
    if missing:
      # Only rare training images need a mask; the others lose lesion_boxes.
      logging.info('isic2018: %d image(s) without a usable mask.', missing)

  @staticmethod
  def _read_mask(path: pathlib.Path, size: tuple[int, int]) -> np.ndarray:
    """bool [h, w] mask of any size with the aspect ratio of an image of ``size``."""
    mask = images.load_mask(path)
    problem = images.mask_size_problem(mask.shape, size)
    if problem:
      raise images.UnreadableFile(f'{problem}: {path}')
    return mask


def from_data_config(data_config: ml_collections.ConfigDict) -> Isic2018:
  """The (unprepared) builder of ``data.dir`` with ``data.isic2018`` params."""
  return builder.builder_from_data_config(
    data_config,
    'isic2018',
    builder_cls=Isic2018,
    make_config=isic2018_config,
    instructions=MANUAL_DOWNLOAD_INSTRUCTIONS,
  )
