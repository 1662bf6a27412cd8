"""`nih_chestxray14`: NIH ChestX-ray14, its boxed subset or all of it, multi-label.

Two modes (``data.nih_chestxray14.mode``):

- ``'boxed'``: the about 900 images of ``BBox_List_2017.csv``,
  one label each (8 findings), a generated patient-level split.
- ``'multilabel'``: all 112120 images of ``Data_Entry_2017.csv`` with their
  14 findings (several per image, none for ``No Finding``), the official
  split of ``train_val_list.txt`` / ``test_list.txt``.
- ``'auto'`` (the default): the mode of ``config.task``, as
  `care_jax.config.resolve_dependent_keys` resolves it; a data config read here
  unresolved (it has no task) is the single-label ``'boxed'``.

**The box list.** ChestX-ray14 ships about 1000 boxes (984) of eight findings
for about 900 (880) of its frontal chest X-rays, in ``BBox_List_2017.csv``;
its header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (unquoted, so
that ``Bbox [x,y,w,h]`` spans the box columns; trailing empty columns) and
each row holds an image name, a finding and the box's x, y, w, h in pixels of
the 1024x1024 PNG. Boxes are stored normalised, ``(ymin, xmin, ymax, xmax)``.

**Boxed mode.** The images of the box list, labelled by their finding, for
training CARE on a ChestX-ray14 finding: set ``data.rare_classes`` to it (e.g.
``('Nodule',)``) and only its training images carry ``boxes``; by default
every class does (every image here has a box). All boxes of an image go to
``lesion_boxes``. An image with boxes of several findings has no single label:
it is left out, and the count is logged. Classes are `CLASS_NAMES`, with the
box list's spelling ``Infiltrate``. The split is stratified by finding and
grouped by patient (the 8-digit prefix of the image name): ``test_fraction``,
then ``validation_fraction``.

**Multi-label mode.** Every image of ``Data_Entry_2017.csv`` (header ``Image
Index,Finding Labels,Follow-up #,Patient ID,...,OriginalImagePixelSpacing[x,y]``,
with or without the trailing comma, i.e. an empty last column, of some copies
such as Kaggle's; only the columns ``Image Index``, ``Finding Labels`` and
``Patient ID`` are read). ``Finding Labels`` is ``No Finding`` or findings
joined by ``|``. The classes are `FINDINGS`, the 14 findings sorted by name as
every dataset here orders its classes (`CHEXNET_FINDINGS` is the order of
CheXNet's tables). The box list spells ``Infiltrate`` what ``Data_Entry``
calls ``Infiltration``: both are the class ``Infiltration`` here (`BOX_ALIASES`).
The features are `care_jax.data._files.multilabel.multilabel_features`: ``labels`` (the
image's findings, sorted), ``boxes``/``box_labels`` (training images only, the
boxes of the findings in ``data.rare_classes``, default `BOX_FINDINGS`),
``lesion_boxes``/``lesion_box_labels`` (every box, every split), ``image_id``
and ``patient_id`` (the ``Patient ID`` column).

Splits: 'test' is ``test_list.txt`` and 'train' is ``train_val_list.txt``
(one image name a line), less 'validation': about ``validation_fraction`` of
its images, held out by patient (`care_jax.data._files.splits.holdout` grouped by
``Patient ID``, stratified by each image's rarest finding,
`care_jax.data._files.multilabel.rarest_label_strata`). ``test_fraction`` is not used.
``boxed_images`` says where the images of the box list go:

- ``'test'`` (default): where the official lists put them (all in
  ``test_list.txt``, as the literature evaluates localisation on them); no
  image moves.
- ``'train'``: to 'train', so that CARE can use their boxes. Patients stay
  whole: every image of a patient with a boxed image moves to 'train' with it
  (the count is logged), and these patients are never held out for
  'validation'. 'test' keeps the rest of ``test_list.txt``.

Either way no patient has images in two splits; official lists that put a
patient's images in both raise an error.

Bad rows (`care_jax.data._files.rows.Problems`, ``skip_bad_rows``): an unknown
finding, ``No Finding`` with a finding, an empty ``Patient ID``, a missing or
unreadable image, an image in neither list, a list name missing from
``Data_Entry_2017.csv``, a bad box, a box of an image not in
``Data_Entry_2017.csv``, and a box whose finding is not among the image's
``Finding Labels`` (the box is skipped, the image kept). An image listed twice
(in ``Data_Entry_2017.csv``, in a list, or in both lists) always raises.
Every finding needs images in every split
(`care_jax.data._files.multilabel.check_multilabel_coverage`).

Images are looked up by name in ``images/`` (the NIH tarballs
``images_001.tar.gz`` ... ``images_012.tar.gz`` unpack there) and
``images_*/images/`` (the Kaggle copy). Images are stored as JPEG (quality
95), the longer side at most ``stored_size`` (default 512).

Example::

  care-jax train --config=configs/rsna_pneumonia_care.py --workdir=runs/nih \\
      --config.data.name=nih_chestxray14 --config.data.dir=/data/chestxray14 \\
      --config.data.rare_classes="('Nodule',)" --config.model.pretrained=r50.safetensors
"""

import collections
from collections.abc import Iterator, Sequence
import logging
import pathlib
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from care_jax.data._files import builder
from care_jax.data._files import images
from care_jax.data._files import multilabel
from care_jax.data._files import rows
from care_jax.data._files import splits

# The classes of the boxed mode: the box list's findings, sorted, as it spells them.
CLASS_NAMES = (
  'Atelectasis',
  'Cardiomegaly',
  'Effusion',
  'Infiltrate',
  'Mass',
  'Nodule',
  'Pneumonia',
  'Pneumothorax',
)
# The 14 findings of the multi-label mode in the order of CheXNet's tables.
CHEXNET_FINDINGS = (
  'Atelectasis',
  'Cardiomegaly',
  'Effusion',
  'Infiltration',
  'Mass',
  'Nodule',
  'Pneumonia',
  'Pneumothorax',
  'Consolidation',
  'Edema',
  'Emphysema',
  'Fibrosis',
  'Pleural_Thickening',
  'Hernia',
)
# The classes of the multi-label mode, in label order: sorted by name.
FINDINGS = tuple(sorted(CHEXNET_FINDINGS))
# Box-list spellings of Data_Entry findings.
BOX_ALIASES = {'Infiltrate': 'Infiltration'}
# The findings with boxes (Data_Entry's spelling): the default rare classes.
BOX_FINDINGS = tuple(sorted(BOX_ALIASES.get(name, name) for name in CLASS_NAMES))
NO_FINDING = 'No Finding'

BOXES = 'BBox_List_2017.csv'
# The header, unquoted: "Bbox [x,y,w,h]" spans the four box columns, and
# three empty columns follow.
HEADER = 'Image Index,Finding Label,Bbox [x,y,w,h]'
DATA_ENTRY = 'Data_Entry_2017.csv'
DATA_ENTRY_COLUMNS = ('Image Index', 'Finding Labels', 'Patient ID')
TRAIN_VAL_LIST = 'train_val_list.txt'
TEST_LIST = 'test_list.txt'

MODES = ('boxed', 'multilabel')
BOXED_IMAGES = ('test', 'train')
# The names of the data.nih_chestxray14 parameters (their defaults: care_jax.config).
PARAMETERS = ('mode', 'boxed_images') + builder.COMMON_PARAMETERS

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download NIH ChestX-ray14 (https://nihcc.app.box.com/v/ChestXray-NIHCC: {BOXES},
{DATA_ENTRY}, {TRAIN_VAL_LIST}, {TEST_LIST} and the archives images_001.tar.gz ...
images_012.tar.gz; or the Kaggle copy "nih-chest-xrays/data"), unpack it into a
directory DATA_DIR and pass --config.data.dir=DATA_DIR:

  DATA_DIR/{BOXES}
  DATA_DIR/{DATA_ENTRY}                    (mode='multilabel')
  DATA_DIR/{TRAIN_VAL_LIST}, DATA_DIR/{TEST_LIST}   (mode='multilabel')
  DATA_DIR/images/00000001_000.png ...   (or DATA_DIR/images_001/images/...)
"""


class NihConfig(builder.FilesConfig):
  """`builder.FilesConfig` with the mode ('boxed' or 'multilabel')."""

  def __init__(self, *, mode: str, **kwargs: Any):
    self.mode = mode
    super().__init__(**kwargs)


def nih_chestxray14_config(
  data_dir: pathlib.Path, *, rare_classes: str | tuple[str, ...] = (), **parameters: Any
) -> NihConfig:
  """The builder config of the ChestX-ray14 files in ``data_dir``.

  Args:
    data_dir: the directory with the annotation files and the images.
    rare_classes: ``data.rare_classes``, the findings whose training images
      (boxed mode) or boxes (multi-label mode) feed the CARE masks (empty:
      all findings with boxes).
    **parameters: ``data.nih_chestxray14``: every name of `PARAMETERS`.

  Raises:
    ValueError: for unknown, missing or bad parameters, unknown rare classes
      or a missing annotation file (with the download instructions).
  """
  params = builder.check_parameters('nih_chestxray14', parameters, PARAMETERS)
  if params['mode'] == 'auto':  # Unresolved: no task says multi-label.
    params['mode'] = 'boxed'
  for key, valid in (('mode', MODES), ('boxed_images', BOXED_IMAGES)):
    if params[key] not in valid:
      raise ValueError(f'data.nih_chestxray14.{key} = {params[key]!r}: must be one of {valid}.')
  mode = params['mode']
  if mode == 'boxed':
    files = [data_dir / BOXES]
    class_names = CLASS_NAMES
    # The boxed mode's parameters as before the modes existed (so that its
    # prepared data keep their name); boxed_images does not apply to it.
    hashed = {name: params[name] for name in builder.COMMON_PARAMETERS}
  else:
    files = [data_dir / name for name in (DATA_ENTRY, TRAIN_VAL_LIST, TEST_LIST, BOXES)]
    class_names = FINDINGS
    hashed = {name: value for name, value in params.items() if name != 'test_fraction'}
  builder.require_files(files, MANUAL_DOWNLOAD_INSTRUCTIONS)
  default_rare = CLASS_NAMES if mode == 'boxed' else BOX_FINDINGS
  return NihConfig(
    mode=mode,
    tag=mode,
    class_names=class_names,
    box_classes=builder.requested_classes(rare_classes, class_names, default_rare),
    parameters=hashed,
    files_fingerprint=builder.fingerprint(data_dir, files),
  )


def _read_boxes(
  path: pathlib.Path, problems: rows.Problems, class_names: Sequence[str], aliases: dict[str, str]
) -> dict[str, list[tuple[str, str, tuple[float, float, float, float]]]]:
  """Image name -> [(location, finding, pixel box)] of the box list.

  Findings are mapped through ``aliases`` and must then be in ``class_names``.
  """
  header, csv_rows = rows.read_rows(path)
  if ','.join(header).rstrip(',') != HEADER:
    raise ValueError(
      f'{path}, line 1: expected the header {HEADER},,, (as NIH ships it), got {",".join(header)}.'
    )
  boxes = collections.defaultdict(list)
  for line, fields in csv_rows:
    location = rows.where(path, line)
    if len(fields) < 6 or any(fields[6:]):
      problems.report(
        location, f'expected 6 fields (image, finding, x, y, w, h), got {len(fields)}: {fields}'
      )
      continue
    name, finding = fields[0], aliases.get(fields[1], fields[1])
    if finding not in class_names:
      expected = tuple(class_names) + tuple(aliases)
      problems.report(location, f'unknown finding {fields[1]!r}; expected one of {expected}')
      continue
    numbers = [rows.parse_number(v) for v in fields[2:6]]
    if None in numbers:
      problems.report(location, f'x, y, w, h must be numbers, got {fields[2:6]}')
      continue
    x, y, width, height = numbers
    boxes[name].append((location, finding, (x, y, x + width, y + height)))
  return boxes


def _read_list(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, image name) of a split list; raises for a name listed twice."""
  try:
    lines = path.read_text(encoding='utf-8-sig').splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'Cannot read {path}: {e}') from e
  first = {}
  names = []
  for line, text in enumerate(lines, 1):
    name = text.strip()
    if not name:
      continue
    if name in first:
      raise ValueError(
        f'{rows.where(path, line)}: image {name} is listed again (first on line {first[name]}).'
      )
    first[name] = line
    names.append((line, name))
  if not names:
    raise ValueError(f'{path} is empty: it needs one image name a line.')
  return names


class NihChestxray14(builder.FilesBuilder):
  """NIH ChestX-ray14 chest X-rays: the boxed subset (one finding each) or all, multi-label."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  ENCODING = 'jpeg'
  HOMEPAGE = 'https://nihcc.app.box.com/v/ChestXray-NIHCC'

  @property
  def _multilabel(self) -> bool:
    return self.builder_config.mode == 'multilabel'

  def _labels_file(self) -> str:
    return str(self.manual_dir / (DATA_ENTRY if self._multilabel else BOXES))

  def _image_index(self) -> dict[str, pathlib.Path]:
    directories = [self.manual_dir / 'images'] + sorted(self.manual_dir.glob('images_*/images'))
    return images.image_index(directories, '*.png')

  def _not_found(self, name: str) -> str:
    return (
      f'image {name} not found in {self.manual_dir / "images"} or'
      f' {self.manual_dir / "images_*" / "images"}'
    )

  # The boxed mode.

  def _read_records(self, problems: rows.Problems) -> list[splits.Record]:
    boxes = _read_boxes(self.manual_dir / BOXES, problems, CLASS_NAMES, {})
    image_files = self._image_index()
    records = []
    several = []
    for name, entries in boxes.items():
      location = entries[0][0]
      findings = sorted({finding for _, finding, _ in entries})
      if len(findings) > 1:
        several.append(f'{name} ({location}): {findings}')
        continue
      if name not in image_files:
        problems.report(location, self._not_found(name))
        continue
      record = problems.image_record(
        location,
        image_files[name],
        key=name,
        label=CLASS_NAMES.index(findings[0]),
        group=name.split('_')[0],  # The patient id.
      )
      if record is None:
        continue
      for box_location, _, box in entries:
        problems.add_box(record, box_location, box, f'image {name}')
      records.append(record)
    if several:
      logging.warning(
        'nih_chestxray14: left out %d image(s) with boxes of several'
        ' findings (no single label); the first ones:\n  %s',
        len(several),
        '\n  '.join(several[:5]),
      )
    return records

  # The multi-label mode.

  def _read_data_entry(
    self, problems: rows.Problems
  ) -> tuple[dict[str, multilabel.MultilabelRecord], set[str]]:
    """The records of Data_Entry_2017.csv by name, and every name it lists."""
    path = self.manual_dir / DATA_ENTRY
    _, csv_rows = rows.read_csv(path, required=DATA_ENTRY_COLUMNS, allow_extra=True)
    image_files = self._image_index()
    records = {}
    first_line = {}
    for row in csv_rows:
      location = rows.where(path, row.line)
      name, text, patient = (row[column] for column in DATA_ENTRY_COLUMNS)
      if name in first_line:
        raise ValueError(
          f'{location}: image {name!r} is listed again (first on line {first_line[name]}).'
        )
      first_line[name] = row.line
      findings = [finding.strip() for finding in text.split('|')]
      if findings == [NO_FINDING]:
        findings = []
      elif not all(findings) or NO_FINDING in findings:
        problems.report(
          location, f'Finding Labels {text!r}: expected {NO_FINDING!r} or findings joined by "|"'
        )
        continue
      unknown = [finding for finding in findings if finding not in FINDINGS]
      if unknown:
        problems.report(location, f'unknown finding(s) {unknown}; expected some of {FINDINGS}')
        continue
      if not patient:
        problems.report(location, f'image {name}: empty Patient ID')
        continue
      if name not in image_files:
        problems.report(location, self._not_found(name))
        continue
      size = problems.image_size(location, image_files[name])
      if size is None:
        continue
      records[name] = multilabel.MultilabelRecord(
        key=name,
        source=image_files[name],
        location=location,
        labels=tuple(sorted({FINDINGS.index(finding) for finding in findings})),
        size=size,
        group=patient,
      )
    return records, set(first_line)

  def _official_splits(
    self, records: dict[str, multilabel.MultilabelRecord], listed: set[str], problems: rows.Problems
  ) -> None:
    """Sets ``split`` to 'train' or 'test' from the lists; drops unlisted records."""
    where_listed = {}
    for split, file in (('train', TRAIN_VAL_LIST), ('test', TEST_LIST)):
      path = self.manual_dir / file
      for line, name in _read_list(path):
        location = rows.where(path, line)
        if name in where_listed:
          raise ValueError(
            f'{location}: image {name} is also in {where_listed[name]}; an image'
            ' belongs to one of the two lists.'
          )
        where_listed[name] = location
        if name not in listed:
          problems.report(location, f'image {name} is not in {DATA_ENTRY}')
        elif name in records:
          records[name].split = split
    for name, record in list(records.items()):
      if record.split is None:
        problems.report(
          record.location, f'image {name} is in neither {TRAIN_VAL_LIST} nor {TEST_LIST}'
        )
        del records[name]

  def _add_multilabel_boxes(
    self, records: dict[str, multilabel.MultilabelRecord], listed: set[str], problems: rows.Problems
  ) -> None:
    boxes = _read_boxes(self.manual_dir / BOXES, problems, FINDINGS, BOX_ALIASES)
    for name, entries in boxes.items():
      record = records.get(name)
      for location, finding, box in entries:
        if name not in listed:
          problems.report(location, f'image {name} is not in {DATA_ENTRY}')
        elif record is None:
          continue  # The image's own row was reported (or is in no list).
        elif FINDINGS.index(finding) not in record.labels:
          given = [FINDINGS[k] for k in record.labels] or NO_FINDING
          problems.report(
            location,
            f'a box of {finding}, but {record.location} gives image {name} the findings {given}',
          )
        else:
          record.add_box(problems, location, box, FINDINGS.index(finding), f'image {name}')

  def _assign_multilabel_splits(self, records: list[multilabel.MultilabelRecord]) -> None:
    """Moves boxed patients (boxed_images), checks patients, holds out validation."""
    params = self.builder_config.parameters
    boxed = {r.group for r in records if r.boxes}
    if params['boxed_images'] == 'train':
      moved = [r for r in records if r.group in boxed and r.split == 'test']
      for record in moved:
        record.split = 'train'
      logging.info(
        'nih_chestxray14: boxed_images=train: moved %d image(s) of %d patient(s) with boxes'
        ' from %s to train.',
        len(moved),
        len({r.group for r in moved}),
        TEST_LIST,
      )
    first = {}
    for record in records:
      other = first.setdefault(record.group, record)
      if other.split != record.split:
        raise ValueError(
          f'Patient {record.group} has images in both {TRAIN_VAL_LIST} and {TEST_LIST}:'
          f' {other.key} ({other.location}) and {record.key} ({record.location}); the'
          ' official split is patient-level, so a patient belongs to one list.'
        )
    if params['validation_fraction'] <= 0:
      return
    kept = boxed if params['boxed_images'] == 'train' else set()
    candidates = [r for r in records if r.split == 'train' and r.group not in kept]
    strata = multilabel.rarest_label_strata([r.labels for r in candidates], len(FINDINGS))
    held = splits.holdout(
      strata,
      [r.group for r in candidates],
      fraction=params['validation_fraction'],
      seed=params['split_seed'],
      salt=1,
    )
    for record, is_held in zip(candidates, held):
      if is_held:
        record.split = 'validation'

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if not self._multilabel:
      return super()._split_generators(dl_manager)
    problems = self._problems()
    by_name, listed = self._read_data_entry(problems)
    self._official_splits(by_name, listed, problems)
    self._add_multilabel_boxes(by_name, listed, problems)
    problems.log(f'{self.name}: reading {self.manual_dir}')
    records = list(by_name.values())
    self._assign_multilabel_splits(records)
    counts = multilabel.check_multilabel_coverage(
      records, self.builder_config.class_names, self._labels_file()
    )
    logging.info('%s: images per finding %s and split: %s', self.name, list(FINDINGS), counts)
    return {
      split: self._generate_examples([r for r in records if r.split == split], split)
      for split in counts
    }

  def _generate_examples(self, records: Sequence[Any], split: str) -> Iterator[tuple[str, dict]]:
    if not self._multilabel:
      yield from super()._generate_examples(records, split)
      return
    yield from self._multilabel_examples(records, split)


def from_data_config(data_config: ml_collections.ConfigDict) -> NihChestxray14:
  """The (unprepared) builder of ``data.dir``, ``data.nih_chestxray14`` params."""
  return builder.builder_from_data_config(
    data_config,
    'nih_chestxray14',
    builder_cls=NihChestxray14,
    make_config=nih_chestxray14_config,
    instructions=MANUAL_DOWNLOAD_INSTRUCTIONS,
  )
