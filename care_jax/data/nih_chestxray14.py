"""`nih_chestxray14`: the boxed subset of NIH ChestX-ray14 (8 findings).

ChestX-ray14 ships about 1000 boxes of eight findings for about 900 of its
112120 frontal chest X-rays, in ``BBox_List_2017.csv``; its header is
``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (unquoted, so that ``Bbox
[x,y,w,h]`` spans the box columns; trailing empty columns) and each row
holds an image name, a finding and the box's x, y, w, h in pixels of the
1024x1024 PNG. This dataset is those images, labelled by their finding,
for training CARE on a ChestX-ray14 finding: set ``data.rare_classes`` to it
(e.g. ``('Nodule',)``) and only its training images carry ``boxes``; by
default every class does (every image here has a box). All boxes of an image
go to ``lesion_boxes``. An image with boxes of several findings has no single
label: it is left out, and the count is logged.

Images are looked up in ``images/`` (the NIH tarballs ``images_001.tar.gz``
... unpack there) or ``images_*/images/`` (the Kaggle copy). The split is
stratified by finding and grouped by patient (the 8-digit prefix of the image
name), so a patient's images never sit in train and test. Images are stored as
JPEG (quality 95), the longer side at most ``stored_size`` (default 512).

Example::

  python -m care_jax.main --config=configs/rsna_pneumonia_care.py --workdir=runs/nih \\
      --config.data.name=nih_chestxray14 --config.data.dir=/data/chestxray14 \\
      --config.data.rare_classes="('Nodule',)" --config.model.pretrained=r50.safetensors
"""

import collections
import logging
import pathlib
from typing import Any

import ml_collections

from care_jax.data import _files

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
BOXES = 'BBox_List_2017.csv'
# The header, unquoted: "Bbox [x,y,w,h]" spans the four box columns, and
# three empty columns follow.
HEADER = 'Image Index,Finding Label,Bbox [x,y,w,h]'


# The names of the data.nih_chestxray14 parameters (their defaults: care_jax.config).
PARAMETERS = _files.COMMON_PARAMETERS

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download NIH ChestX-ray14 (https://nihcc.app.box.com/v/ChestXray-NIHCC: {BOXES}
and the images_*.tar.gz archives; or the Kaggle copy "nih-chest-xrays/data"),
unpack it into a directory DATA_DIR and pass --config.data.dir=DATA_DIR:

  DATA_DIR/{BOXES}
  DATA_DIR/images/00000001_000.png ...   (or DATA_DIR/images_001/images/...)
"""


def nih_chestxray14_config(
  data_dir: pathlib.Path, *, rare_classes: str | tuple[str, ...] = (), **parameters: Any
) -> _files.FilesConfig:
  """The builder config of the ChestX-ray14 box list and images in ``data_dir``.

  Args:
    data_dir: the directory with the box list and the images.
    rare_classes: ``data.rare_classes``, the findings whose training images
      carry ``boxes`` (empty: all findings).
    **parameters: ``data.nih_chestxray14``: every name of `PARAMETERS`.

  Raises:
    ValueError: for unknown, missing or bad parameters, unknown rare classes
      or a missing box list (with the download instructions).
  """
  params = _files.check_parameters('nih_chestxray14', parameters, PARAMETERS)
  path = data_dir / BOXES
  _files.require_files([path], MANUAL_DOWNLOAD_INSTRUCTIONS)
  return _files.fixed_classes_config(
    data_dir,
    tag='boxed',
    class_names=CLASS_NAMES,
    rare_classes=rare_classes,
    default_rare_classes=CLASS_NAMES,
    parameters=params,
    files=[path],
  )


class NihChestxray14(_files.FilesBuilder):
  """NIH ChestX-ray14 images that have finding boxes, labelled by finding."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  ENCODING = 'jpeg'
  HOMEPAGE = 'https://nihcc.app.box.com/v/ChestXray-NIHCC'

  def _labels_file(self) -> str:
    return str(self.manual_dir / BOXES)

  def _image_index(self) -> dict[str, pathlib.Path]:
    directories = [self.manual_dir / 'images'] + sorted(self.manual_dir.glob('images_*/images'))
    return _files.image_index(directories, '*.png')

  def _read_records(self, problems: _files.Problems) -> list[_files.Record]:
    path = self.manual_dir / BOXES
    header, rows = _files.read_rows(path)
    if ','.join(header).rstrip(',') != HEADER:
      raise ValueError(
        f'{path}, line 1: expected the header {HEADER},,, (as NIH ships'
        f' it), got {",".join(header)}.'
      )
    images = self._image_index()
    boxes = collections.defaultdict(list)  # name -> [(location, finding, box)]
    for line, fields in rows:
      location = _files.where(path, line)
      if len(fields) < 6 or any(fields[6:]):
        problems.report(
          location, f'expected 6 fields (image, finding, x, y, w, h), got {len(fields)}: {fields}'
        )
        continue
      name, finding = fields[0], fields[1]
      if finding not in CLASS_NAMES:
        problems.report(location, f'unknown finding {finding!r}; expected one of {CLASS_NAMES}')
        continue
      numbers = [_files.parse_number(v) for v in fields[2:6]]
      if None in numbers:
        problems.report(location, f'x, y, w, h must be numbers, got {fields[2:6]}')
        continue
      x, y, width, height = numbers
      boxes[name].append((location, finding, (x, y, x + width, y + height)))

    records = []
    several = []
    for name, entries in boxes.items():
      location = entries[0][0]
      findings = sorted({finding for _, finding, _ in entries})
      if len(findings) > 1:
        several.append(f'{name} ({location}): {findings}')
        continue
      if name not in images:
        problems.report(
          location,
          f'image {name} not found in {self.manual_dir / "images"} or'
          f' {self.manual_dir / "images_*" / "images"}',
        )
        continue
      record = problems.image_record(
        location,
        images[name],
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


def from_data_config(data_config: ml_collections.ConfigDict) -> NihChestxray14:
  """The (unprepared) builder of ``data.dir``, ``data.nih_chestxray14`` params."""
  return _files.builder_from_data_config(
    data_config,
    'nih_chestxray14',
    builder_cls=NihChestxray14,
    make_config=nih_chestxray14_config,
    instructions=MANUAL_DOWNLOAD_INSTRUCTIONS,
  )
