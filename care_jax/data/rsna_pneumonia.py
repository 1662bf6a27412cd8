"""`rsna_pneumonia`: RSNA Pneumonia Detection Challenge chest X-rays (3 classes).

Read from the user's files (``data.dir``; see `MANUAL_DOWNLOAD_INSTRUCTIONS`):

- ``stage_2_detailed_class_info.csv`` (``patientId,class``): the label, one of
  'Lung Opacity', 'No Lung Opacity / Not Normal', 'Normal' (the file repeats a
  patient once per box; repeats must agree).
- ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``): one
  row per lung-opacity box (``Target=1``, pixels of the 1024x1024 image), or
  one row with ``Target=0`` and empty x, y, width, height. ``Target=1`` must go
  with 'Lung Opacity' and the other classes with ``Target=0``.
- ``stage_2_train_images/<patientId>.dcm``: one DICOM per patient.

Each patient is one example, so the stratified split (``test_fraction``, then
``validation_fraction``) is patient-level. Boxes (``boxes``) go to the training
images of the rare classes (``data.rare_classes``, default 'Lung Opacity');
all boxes of every split go to ``lesion_boxes``.

DICOM pixels (`dicom_to_rgb`): the stored values ``v`` (``BitsStored`` bits,
signed when ``PixelRepresentation=1``) map linearly from their full range to
[0, 255]; MONOCHROME1 (white = low) is inverted so that bone is bright as in
MONOCHROME2. The modality rescale ``slope * v + intercept`` is linear too, so
it moves the range with the pixels and leaves the result unchanged (a negative
slope flips it). RSNA's files are 8-bit MONOCHROME2 JPEG-baseline DICOMs,
stored as they are. Images are stored as JPEG (quality 95), the longer side at
most ``stored_size`` (default 512).

Example::

  care-jax train --config=configs/rsna_pneumonia_care.py --workdir=runs/rsna \\
      --config.data.dir=/data/rsna --config.model.pretrained=resnet50.safetensors
"""

import collections
import pathlib
from typing import Any

import ml_collections
import numpy as np

from care_jax.data._files import builder
from care_jax.data._files import images
from care_jax.data._files import rows
from care_jax.data._files import splits

CLASS_NAMES = ('Lung Opacity', 'No Lung Opacity / Not Normal', 'Normal')
DEFAULT_RARE_CLASSES = ('Lung Opacity',)
LABELS = 'stage_2_train_labels.csv'
CLASS_INFO = 'stage_2_detailed_class_info.csv'
IMAGES = 'stage_2_train_images'

# The names of the data.rsna_pneumonia parameters (their defaults: care_jax.config).
PARAMETERS = builder.COMMON_PARAMETERS

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the RSNA Pneumonia Detection Challenge data
(https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data, e.g.
`kaggle competitions download -c rsna-pneumonia-detection-challenge`), unzip it
into a directory DATA_DIR and pass --config.data.dir=DATA_DIR:

  DATA_DIR/{LABELS}
  DATA_DIR/{CLASS_INFO}
  DATA_DIR/{IMAGES}/<patientId>.dcm ...
"""


def rsna_pneumonia_config(
  data_dir: pathlib.Path, *, rare_classes: str | tuple[str, ...] = (), **parameters: Any
) -> builder.FilesConfig:
  """The builder config of the RSNA challenge files in ``data_dir``.

  Args:
    data_dir: the directory with the label files and the DICOM images.
    rare_classes: ``data.rare_classes`` (empty: Lung Opacity).
    **parameters: ``data.rsna_pneumonia``: every name of `PARAMETERS`.

  Raises:
    ValueError: for unknown, missing or bad parameters, unknown rare classes
      or a missing label file (with the download instructions).
  """
  params = builder.check_parameters('rsna_pneumonia', parameters, PARAMETERS)
  files = [data_dir / LABELS, data_dir / CLASS_INFO]
  builder.require_files(files, MANUAL_DOWNLOAD_INSTRUCTIONS)
  return builder.fixed_classes_config(
    data_dir,
    tag='patients',
    class_names=CLASS_NAMES,
    rare_classes=rare_classes,
    default_rare_classes=DEFAULT_RARE_CLASSES,
    parameters=params,
    files=files,
  )


def dicom_header(path: pathlib.Path) -> tuple[int, int]:
  """(height, width) = (Rows, Columns) of a DICOM file, without its pixels.

  Raises:
    UnreadableFile: the file is missing or not a DICOM image.
  """
  import pydicom  # pylint: disable=g-import-not-at-top

  try:
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return int(dataset.Rows), int(dataset.Columns)
  except FileNotFoundError as e:
    raise images.UnreadableFile(f'DICOM file {path} does not exist') from e
  except (
    pydicom.errors.InvalidDicomError,
    OSError,
    ValueError,
    AttributeError,  # No Rows or Columns.
    TypeError,
  ) as e:
    raise images.UnreadableFile(f'cannot read DICOM file {path}: {e}') from e


def dicom_to_rgb(path: pathlib.Path) -> np.ndarray:
  """Decodes a single-frame greyscale DICOM to uint8 [H, W, 3].

  ``grey = 255 (m(v) - m_lo) / (m_hi - m_lo)`` with ``m(v) = slope v +
  intercept`` (RescaleSlope/Intercept, default 1 and 0) and ``m_lo, m_hi`` the
  smaller and larger of ``m`` at the ends of the stored range (``[0, 2^b - 1]``,
  or ``[-2^(b-1), 2^(b-1) - 1]`` when signed, ``b = BitsStored``); MONOCHROME1
  gives ``255 - grey``. Rounded, clipped to [0, 255], repeated to 3 channels.

  Raises:
    UnreadableFile: not a DICOM, undecodable pixel data (e.g. a compression
      without a decoder installed), several frames, or a photometric
      interpretation other than MONOCHROME1/2.
  """
  import pydicom  # pylint: disable=g-import-not-at-top

  try:
    dataset = pydicom.dcmread(path)
    photometric = str(dataset.get('PhotometricInterpretation', ''))
    frames = int(dataset.get('NumberOfFrames', 1) or 1)
    if photometric not in ('MONOCHROME1', 'MONOCHROME2') or frames != 1:
      raise images.UnreadableFile(
        f'DICOM file {path}: expected one MONOCHROME1/2 frame, got'
        f' {frames} frame(s) of {photometric or "(none)"}'
      )
    stored = dataset.pixel_array.astype(np.float64)
    bits = int(dataset.BitsStored)
    signed = int(dataset.get('PixelRepresentation', 0)) == 1
    slope = float(dataset.get('RescaleSlope', 1.0))
    intercept = float(dataset.get('RescaleIntercept', 0.0))
  except FileNotFoundError as e:
    raise images.UnreadableFile(f'DICOM file {path} does not exist') from e
  except images.UnreadableFile:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # pydicom's decoders raise many types (RuntimeError, NotImplementedError,
    # ValueError, ...) for corrupt or undecodable pixel data.
    raise images.UnreadableFile(f'cannot decode DICOM file {path}: {type(e).__name__}: {e}') from e
  if slope == 0:
    raise images.UnreadableFile(f'DICOM file {path}: RescaleSlope is 0')
  low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
  values = slope * stored + intercept
  ends = sorted((slope * low + intercept, slope * high + intercept))
  grey = 255.0 * (values - ends[0]) / (ends[1] - ends[0])
  if photometric == 'MONOCHROME1':
    grey = 255.0 - grey
  grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


class RsnaPneumonia(builder.FilesBuilder):
  """RSNA Pneumonia Detection Challenge chest X-rays with opacity boxes."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  ENCODING = 'jpeg'
  HOMEPAGE = 'https://www.kaggle.com/c/rsna-pneumonia-detection-challenge'

  def _labels_file(self) -> str:
    return str(self.manual_dir / CLASS_INFO)

  def _load(self, record: splits.Record) -> np.ndarray:
    return dicom_to_rgb(record.source)

  def _read_classes(self, problems: rows.Problems) -> dict[str, tuple[str, str]]:
    """patientId -> (class, location of its first row)."""
    path = self.manual_dir / CLASS_INFO
    _, csv_rows = rows.read_csv(path, required=('patientId', 'class'))
    classes = {}
    for row in csv_rows:
      location = rows.where(path, row.line)
      patient, name = row['patientId'], row['class']
      if name not in CLASS_NAMES:
        problems.report(location, f'unknown class {name!r}; expected one of {CLASS_NAMES}')
        continue
      if patient in classes and classes[patient][0] != name:
        raise ValueError(
          f'{location}: patient {patient} has class {name!r}, but'
          f' {classes[patient][1]} says {classes[patient][0]!r}.'
        )
      classes.setdefault(patient, (name, location))
    return classes

  def _read_targets(
    self, problems: rows.Problems
  ) -> tuple[dict[str, list[tuple[str, str, tuple[float, ...] | None]]], set[str]]:
    """patientId -> its rows' (location, Target, pixel box or None), and every patient listed."""
    path = self.manual_dir / LABELS
    _, csv_rows = rows.read_csv(path, required=('patientId', 'x', 'y', 'width', 'height', 'Target'))
    columns = ('x', 'y', 'width', 'height')
    by_patient = collections.defaultdict(list)
    listed = set()  # Every patient of the file, even with skipped rows.
    for row in csv_rows:
      location = rows.where(path, row.line)
      listed.add(row['patientId'])
      target = row['Target']
      values = [row[c] for c in columns]
      if target == '0' and any(values):
        problems.report(location, f'Target=0 with a box {values}; expected empty x..height')
        continue
      box = None
      if target == '1':
        numbers = [rows.parse_number(v) for v in values]
        if None in numbers:
          problems.report(location, f'Target=1 needs numbers in {columns}, got {values}')
          continue
        x, y, width, height = numbers
        box = (x, y, x + width, y + height)
      elif target != '0':
        problems.report(location, f'Target must be 0 or 1, got {target!r}')
        continue
      by_patient[row['patientId']].append((location, target, box))
    return by_patient, listed

  def _patient_record(
    self,
    patient: str,
    entries: list[tuple[str, str, tuple[float, ...] | None]],
    classes: dict[str, tuple[str, str]],
    problems: rows.Problems,
  ) -> splits.Record | None:
    """The record of ``patient`` with its boxes; None after reporting a bad patient."""
    location = entries[0][0]
    if patient not in classes:
      problems.report(location, f'patient {patient!r} is not in {CLASS_INFO}')
      return None
    name = classes[patient][0]
    targets = {target for _, target, _ in entries}
    expected = '1' if name == 'Lung Opacity' else '0'
    if targets != {expected}:
      problems.report(
        location,
        f'patient {patient}: Target {sorted(targets)} does not match class'
        f' {name!r} ({classes[patient][1]})',
      )
      return None
    _, source = rows.relative_path(self.manual_dir / IMAGES, f'{patient}.dcm', location)
    record = problems.image_record(
      location, source, key=patient, label=CLASS_NAMES.index(name), group=patient, read=dicom_header
    )
    if record is None:
      return None
    for box_location, _, box in entries:
      if box is not None:
        problems.add_box(record, box_location, box, f'patient {patient}')
    return record

  def _read_records(self, problems: rows.Problems) -> list[splits.Record]:
    classes = self._read_classes(problems)
    by_patient, listed = self._read_targets(problems)
    records = []
    for patient, entries in by_patient.items():
      record = self._patient_record(patient, entries, classes, problems)
      if record is not None:
        records.append(record)
    for patient in sorted(classes.keys() - listed):
      problems.report(classes[patient][1], f'patient {patient!r} is not in {LABELS}')
    return records


def from_data_config(data_config: ml_collections.ConfigDict) -> RsnaPneumonia:
  """The (unprepared) builder of ``data.dir``, ``data.rsna_pneumonia`` params."""
  return builder.builder_from_data_config(
    data_config,
    'rsna_pneumonia',
    builder_cls=RsnaPneumonia,
    make_config=rsna_pneumonia_config,
    instructions=MANUAL_DOWNLOAD_INSTRUCTIONS,
  )
