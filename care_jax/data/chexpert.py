"""`chexpert`: CheXpert v1.0 chest X-rays (Irvin et al. 2019), multi-label, uncertainty policies.

**Files.** The Stanford release unpacks to ``CheXpert-v1.0-small/`` (the downsampled copy) or
``CheXpert-v1.0/`` (full size), each with ``train.csv``, ``valid.csv`` and the images under
``train/`` and ``valid/``. ``data.dir`` is that folder (or the folder holding it). Both CSV files
have the header::

  Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,
  Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,
  Pleural Effusion,Pleural Other,Fracture,Support Devices

``Path`` is ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``: the
release's folder name (dropped here, so either layout reads the same), the split, the patient,
the study and the view. Each of the 14 observations (`OBSERVATIONS`) is ``1.0`` (positive),
``0.0`` (negative), ``-1.0`` (uncertain) or blank (not mentioned, read as negative, as the
labeller's paper does). Only ``Path``, ``Frontal/Lateral`` and the observations are read.

**Classes.** ``data.chexpert.observations``, sorted by name as every dataset here orders its
classes; by default the five of the CheXpert competition (`COMPETITION`): Atelectasis,
Cardiomegaly, Consolidation, Edema, Pleural Effusion, the ones valid.csv has positives of.
Every class needs positive images in every split, so observations without positives in
valid.csv (Fracture) cannot be chosen.

**Uncertain labels** (``data.chexpert.uncertainty``, Irvin et al. 2019, Section 4): ``'U-Ones'``
reads -1 as positive, ``'U-Zeros'`` as negative, and ``'U-Ignore'`` leaves the finding out of
the loss for that image: it is not among the image's ``labels`` and is listed in the extra
feature ``ignored_labels`` (the mask of the finding's binary decision), which the training
batches carry as ``label_mask`` (`care_jax.data.pipeline`) for the multi-label loss to average
over the counted findings only (`care_jax.classification_loss.masked_class_mean`). valid.csv
('test') has no uncertain labels, so evaluation needs no mask there.

**Splits.** 'test' is valid.csv (the 234 images radiologists labelled, where the literature
reports its results); 'train' is train.csv less 'validation': about ``validation_fraction`` of
its images, held out by patient (the ``patientNNNNN`` folder), stratified by each image's
rarest class (`care_jax.data._files.multilabel.rarest_label_strata`). ``test_fraction`` is not
used. ``frontal_only`` (default) keeps the rows whose ``Frontal/Lateral`` is ``Frontal``.

**Boxes.** CheXpert has none; an optional ``boxes.csv`` in ``data.dir`` (columns
``image,label,xmin,ymin,xmax,ymax``: ``image`` the ``Path`` value, ``label`` an observation
positive for that image, pixel edges of the original image as every box file here) gives them:
the boxes of the observations in ``data.rare_classes`` (default: every class) become the
training images' ``boxes``. Features as `care_jax.data._files.multilabel.multilabel_features`
(``patient_id`` the patient folder).

Bad rows (`care_jax.data._files.rows.Problems`, ``skip_bad_rows``) name file and line: an
observation value other than 1, 0, -1 or blank, a ``Frontal/Lateral`` other than
``Frontal``/``Lateral``, a path without a ``patientNNNNN`` folder, a missing or unreadable
image, a bad box, a box of an image not in train.csv/valid.csv or of an observation the image
does not have. An image listed twice, in one file or in both, always raises.

Example::

  care-jax train --config=chexpert_care --workdir=runs/chexpert \\
      --config.data.dir=/data/CheXpert-v1.0-small --config.model.pretrained=densenet121.pth
"""

from collections.abc import Iterator, Sequence
import logging
import pathlib
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from care_jax.data._files import builder
from care_jax.data._files import multilabel
from care_jax.data._files import rows

# The 14 observations in the CSV files' order.
OBSERVATIONS = (
  'No Finding',
  'Enlarged Cardiomediastinum',
  'Cardiomegaly',
  'Lung Opacity',
  'Lung Lesion',
  'Edema',
  'Consolidation',
  'Pneumonia',
  'Atelectasis',
  'Pneumothorax',
  'Pleural Effusion',
  'Pleural Other',
  'Fracture',
  'Support Devices',
)
# The five observations of the CheXpert competition (Irvin et al. 2019, Section 5).
COMPETITION = ('Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion')
COLUMNS = ('Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA') + OBSERVATIONS
POLICIES = ('U-Ones', 'U-Zeros', 'U-Ignore')
# The CSV values: positive, negative, uncertain; blank is not mentioned (negative).
_VALUES = {1.0: 'positive', 0.0: 'negative', -1.0: 'uncertain'}
VIEWS = ('Frontal', 'Lateral')

TRAIN = 'train.csv'
VALID = 'valid.csv'
BOXES = 'boxes.csv'
BOX_COLUMNS = ('image', 'label') + rows.BOX_COLUMNS
RELEASES = ('CheXpert-v1.0-small', 'CheXpert-v1.0')
# The names of the data.chexpert parameters (their defaults: care_jax.config).
PARAMETERS = ('uncertainty', 'frontal_only', 'observations') + builder.COMMON_PARAMETERS

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download CheXpert v1.0 (https://stanfordmlgroup.github.io/competitions/chexpert/, after
registering: CheXpert-v1.0-small.zip or the full CheXpert-v1.0), unpack it and pass
--config.data.dir=DATA_DIR, the folder with:

  DATA_DIR/{TRAIN}, DATA_DIR/{VALID}      header {','.join(COLUMNS[:6])},...
  DATA_DIR/train/patient00001/study1/view1_frontal.jpg ...
  DATA_DIR/valid/...
  DATA_DIR/{BOXES}                         (optional) {','.join(BOX_COLUMNS)}
"""


def release_dir(data_dir: pathlib.Path) -> pathlib.Path:
  """The folder with train.csv: ``data_dir`` or its ``CheXpert-v1.0[-small]`` folder."""
  for candidate in (data_dir, *(data_dir / name for name in RELEASES)):
    if (candidate / TRAIN).is_file():
      return candidate
  return data_dir


def _check_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
  params = builder.check_parameters('chexpert', parameters, PARAMETERS)
  if params['uncertainty'] not in POLICIES:
    raise ValueError(
      f'data.chexpert.uncertainty = {params["uncertainty"]!r}: must be one of {POLICIES}.'
    )
  observations = params['observations']
  if isinstance(observations, str):
    observations = (observations,)
  unknown = [name for name in observations if name not in OBSERVATIONS]
  if not observations or unknown or len(set(observations)) < len(observations):
    raise ValueError(
      f'data.chexpert.observations = {params["observations"]!r}: must be distinct names'
      f' of {OBSERVATIONS}' + (f'; unknown: {unknown}' if unknown else '') + '.'
    )
  params['observations'] = tuple(sorted(observations))
  params['frontal_only'] = bool(params['frontal_only'])
  return params


def chexpert_config(
  data_dir: pathlib.Path, *, rare_classes: str | tuple[str, ...] = (), **parameters: Any
) -> builder.FilesConfig:
  """The builder config of the CheXpert files in ``data_dir`` (or its release folder).

  Args:
    data_dir: ``data.dir``.
    rare_classes: ``data.rare_classes``: the observations whose boxes (boxes.csv)
      feed the CARE masks (empty: every class).
    **parameters: ``data.chexpert``: every name of `PARAMETERS`.

  Raises:
    ValueError: for unknown, missing or bad parameters, unknown rare classes
      or a missing train.csv/valid.csv (with the download instructions).
  """
  params = _check_parameters(parameters)
  root = release_dir(data_dir)
  files = [root / TRAIN, root / VALID]
  builder.require_files(files, MANUAL_DOWNLOAD_INSTRUCTIONS)
  class_names = params['observations']
  return builder.FilesConfig(
    tag='chexpert',
    class_names=class_names,
    box_classes=builder.requested_classes(rare_classes, class_names, class_names),
    parameters={name: value for name, value in params.items() if name != 'test_fraction'},
    files_fingerprint=builder.fingerprint(root, [*files, root / BOXES]),
  )


def image_file(root: pathlib.Path, path: str, location: str) -> tuple[str, pathlib.Path]:
  """``Path`` of a CSV row -> (the key: the path without the release folder, the file)."""
  key, _ = rows.relative_path(root, path, location)
  parts = key.split('/')
  if parts[0] in RELEASES:
    parts = parts[1:]
  return '/'.join(parts), root.joinpath(*parts)


def patient_of(key: str) -> str | None:
  """The ``patientNNNNN`` folder of an image key, or None."""
  return next((part for part in key.split('/') if part.startswith('patient')), None)


def observation_values(row: rows.Row) -> dict[str, float] | str:
  """The 14 observations of a row as 1, 0, -1 (blank: 0), or the problem."""
  values = {}
  for name in OBSERVATIONS:
    text = row[name]
    value = rows.parse_number(text) if text else 0.0
    if value not in _VALUES:
      return (
        f'{name} = {text!r}: expected 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank'
      )
    values[name] = value
  return values


def policy_labels(
  values: dict[str, float], class_names: Sequence[str], policy: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(positive classes, ignored classes) of an image's observation values under ``policy``.

  'U-Ones': -1 is positive; 'U-Zeros': -1 is negative; 'U-Ignore': -1 is
  ignored (neither positive nor negative). Blank was read as 0 (negative).

  Examples:
    >>> values = {'Atelectasis': 1.0, 'Edema': -1.0}
    >>> policy_labels(values, ('Atelectasis', 'Edema'), 'U-Ones')
    ((0, 1), ())
    >>> policy_labels(values, ('Atelectasis', 'Edema'), 'U-Ignore')
    ((0,), (1,))
  """
  positive, ignored = [], []
  for k, name in enumerate(class_names):
    value = values[name]
    if value == 1.0 or (value == -1.0 and policy == 'U-Ones'):
      positive.append(k)
    elif value == -1.0 and policy == 'U-Ignore':
      ignored.append(k)
  return tuple(positive), tuple(ignored)


class Chexpert(builder.FilesBuilder):
  """CheXpert v1.0 chest X-rays: multi-label observations with an uncertainty policy."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  ENCODING = 'jpeg'
  HOMEPAGE = 'https://stanfordmlgroup.github.io/competitions/chexpert/'
  # Every example has ``ignored_labels`` (empty unless uncertainty='U-Ignore').
  IGNORED_LABELS = True

  @property
  def _multilabel(self) -> bool:
    return True

  @property
  def _root(self) -> pathlib.Path:
    return release_dir(self.manual_dir)

  def _labels_file(self) -> str:
    return f'{self._root / TRAIN} and {VALID}'

  def _read_records(self, problems: rows.Problems) -> list[multilabel.MultilabelRecord]:
    """The images of train.csv ('train') and valid.csv ('test'), with their boxes."""
    seen = {}
    records = self._read_csv(TRAIN, 'train', seen, problems)
    records += self._read_csv(VALID, 'test', seen, problems)
    self._read_boxes({r.key: r for r in records}, seen, problems)
    return records

  def _read_csv(
    self, name: str, split: str, seen: dict[str, str], problems: rows.Problems
  ) -> list[multilabel.MultilabelRecord]:
    """The records of train.csv or valid.csv; ``seen``: image key -> where first listed."""
    path = self._root / name
    _, csv_rows = rows.read_csv(
      path, required=('Path', 'Frontal/Lateral') + OBSERVATIONS, allow_extra=True
    )
    params = self.builder_config.parameters
    class_names = self.builder_config.class_names
    records, lateral = [], 0
    for row in csv_rows:
      location = rows.where(path, row.line)
      key, source = image_file(self._root, row['Path'], location)
      if key in seen:
        raise ValueError(f'{location}: image {key!r} is listed again (first at {seen[key]}).')
      seen[key] = location
      problem = self._row_problem(row, key)
      if problem:
        problems.report(location, problem)
        continue
      if params['frontal_only'] and row['Frontal/Lateral'] == 'Lateral':
        lateral += 1
        continue
      labels, ignored = policy_labels(observation_values(row), class_names, params['uncertainty'])
      size = problems.image_size(location, source)
      if size is None:
        continue
      records.append(
        multilabel.MultilabelRecord(
          key=key,
          source=source,
          location=location,
          labels=labels,
          size=size,
          group=patient_of(key),
          split=split,
          ignored=ignored,
        )
      )
    if lateral:
      logging.info('chexpert: frontal_only: left out %d lateral image(s) of %s.', lateral, path)
    return records

  @staticmethod
  def _row_problem(row: rows.Row, key: str) -> str | None:
    values = observation_values(row)
    if isinstance(values, str):
      return values
    if row['Frontal/Lateral'] not in VIEWS:
      return f'Frontal/Lateral = {row["Frontal/Lateral"]!r}: expected one of {VIEWS}'
    if patient_of(key) is None:
      return f'Path {row["Path"]!r} has no patientNNNNN folder (the patient of the split)'
    return None

  def _read_boxes(
    self,
    records: dict[str, multilabel.MultilabelRecord],
    listed: dict[str, str],
    problems: rows.Problems,
  ) -> None:
    """Adds the boxes of the optional boxes.csv to ``records`` (keys: paths less the release)."""
    path = self._root / BOXES
    if not path.exists():
      return
    _, csv_rows = rows.read_csv(path, required=BOX_COLUMNS, allow_no_rows=True)
    class_names = self.builder_config.class_names
    for row in csv_rows:
      location = rows.where(path, row.line)
      key, _ = image_file(self._root, row['image'], location)
      record = records.get(key)
      coordinates = [rows.parse_number(row[c]) for c in rows.BOX_COLUMNS]
      if key not in listed:
        problems.report(location, f'image {key!r} is not in {TRAIN} or {VALID}')
      elif record is None:
        problems.report(location, f'box of image {key!r}, whose row ({listed[key]}) was left out')
      elif row['label'] not in class_names:
        problems.report(location, f'label {row["label"]!r} is not a class of {class_names}')
      elif class_names.index(row['label']) not in record.labels:
        given = [class_names[k] for k in record.labels]
        problems.report(
          location,
          f'a box of {row["label"]}, but {record.location} gives image {key!r} the classes {given}',
        )
      elif None in coordinates:
        problems.report(
          location,
          f'xmin, ymin, xmax, ymax must be numbers, got {[row[c] for c in rows.BOX_COLUMNS]}',
        )
      else:
        label = class_names.index(row['label'])
        record.add_box(problems, location, coordinates, label, f'image {key!r}')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The files are the user's (self.manual_dir).
    problems = self._problems()
    records = self._read_records(problems)
    problems.log(f'{self.name}: reading {self._root}')
    class_names = self.builder_config.class_names
    params = self.builder_config.parameters
    multilabel.hold_out_validation(
      [r for r in records if r.split == 'train'],
      num_classes=len(class_names),
      fraction=params['validation_fraction'],
      seed=params['split_seed'],
    )
    counts = multilabel.check_multilabel_coverage(records, class_names, self._labels_file())
    logging.info('%s: images per class %s and split: %s', self.name, list(class_names), counts)
    return {
      split: self._generate_examples([r for r in records if r.split == split], split)
      for split in counts
    }

  def _generate_examples(
    self, records: Sequence[multilabel.MultilabelRecord], split: str
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    return self._multilabel_examples(records, split)


def from_data_config(data_config: ml_collections.ConfigDict) -> Chexpert:
  """The (unprepared) builder of ``data.dir``, ``data.chexpert`` params."""
  return builder.builder_from_data_config(
    data_config,
    'chexpert',
    builder_cls=Chexpert,
    make_config=chexpert_config,
    instructions=MANUAL_DOWNLOAD_INSTRUCTIONS,
  )
