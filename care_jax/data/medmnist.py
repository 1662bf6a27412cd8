"""`medmnist`: the 2D datasets of MedMNIST+ (v3) from the user's ``.npz`` files.

MedMNIST+ (Yang et al., "MedMNIST v2", Scientific Data 2023; the larger sizes: Doerrich et al.
2024) ships each dataset ("flag") as one NumPy archive per image size, which the ``medmnist``
package downloads from Zenodo (https://zenodo.org/records/10519652)::

  DATA_DIR/<flag>.npz           size 28
  DATA_DIR/<flag>_<size>.npz    size 64, 128 or 224

with the arrays ``train_images``, ``val_images``, ``test_images`` (uint8 [N, S, S] greyscale or
[N, S, S, 3] RGB) and ``train_labels``, ``val_labels``, ``test_labels`` (integers [N, 1]: the
class index; ChestMNIST: 0/1 [N, 14], one column per finding). ``data.medmnist.flag`` names the
dataset (`FLAGS`) and ``data.medmnist.size`` the file (`SIZES`); nothing is ever downloaded, a
missing file is an error naming the path and the ``medmnist`` call that fetches it.

**Classes** are the dataset's own label table (``medmnist/info.py`` of the MedMNIST repository,
transcribed in `CLASS_NAMES`) in the file's label order: label k is ``CLASS_NAMES[flag][k]``,
*not* sorted by name as the other datasets here (a label of the file is its label here).
ChestMNIST is multi-label (``config.task = 'multilabel'``; the features of
`care_jax.data._files.multilabel.multilabel_features`: ``labels`` holds an image's positive
findings); the other flags are single-label. RetinaMNIST's five grades are ordinal (MedMNIST
scores them as ordinal regression); here they are five classes of a multi-class task.

**Splits** are the files' own: ``train``, ``val`` (-> 'validation') and ``test``; every class
needs examples in every split. ``image_id`` is ``<split>/<index>``: the row of the example in the
file's arrays (``val/3`` is ``val_images[3]``).

**Boxes.** The files have none: every example has empty ``boxes`` and ``lesion_boxes``. CARE
trains on the automatic boxes of ``data.box_source`` (`care_jax.boxes`), drawn on the training
images of ``data.rare_classes``, which must then name the rare classes.

Images are stored as PNG (lossless) at the file's size, greyscale repeated to three channels.
Preparing reads the images one at a time from the archive (never a whole array in memory).

Example::

  care-jax train --config=dermamnist_care --workdir=runs/dermamnist \\
      --config.data.dir=/data/medmnist
"""

from collections.abc import Iterator
import hashlib
import logging
import math
import pathlib
from typing import Any
import zipfile

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from care_jax.data._files import builder
from care_jax.data._files import images
from care_jax.data._files import multilabel
from care_jax.data._files import splits

# The label tables of MedMNIST+ v3's 2D datasets (medmnist/info.py, INFO[flag]['label']), in
# label order.
_ORGANS = (
  'bladder',
  'femur-left',
  'femur-right',
  'heart',
  'kidney-left',
  'kidney-right',
  'liver',
  'lung-left',
  'lung-right',
  'pancreas',
  'spleen',
)
CLASS_NAMES: dict[str, tuple[str, ...]] = {
  'pathmnist': (
    'adipose',
    'background',
    'debris',
    'lymphocytes',
    'mucus',
    'smooth muscle',
    'normal colon mucosa',
    'cancer-associated stroma',
    'colorectal adenocarcinoma epithelium',
  ),
  'chestmnist': (
    'atelectasis',
    'cardiomegaly',
    'effusion',
    'infiltration',
    'mass',
    'nodule',
    'pneumonia',
    'pneumothorax',
    'consolidation',
    'edema',
    'emphysema',
    'fibrosis',
    'pleural',
    'hernia',
  ),
  'dermamnist': (
    'actinic keratoses and intraepithelial carcinoma',
    'basal cell carcinoma',
    'benign keratosis-like lesions',
    'dermatofibroma',
    'melanoma',
    'melanocytic nevi',
    'vascular lesions',
  ),
  'octmnist': ('choroidal neovascularization', 'diabetic macular edema', 'drusen', 'normal'),
  'pneumoniamnist': ('normal', 'pneumonia'),
  'retinamnist': ('0', '1', '2', '3', '4'),
  'breastmnist': ('malignant', 'normal, benign'),
  'bloodmnist': (
    'basophil',
    'eosinophil',
    'erythroblast',
    'immature granulocytes(myelocytes, metamyelocytes and promyelocytes)',
    'lymphocyte',
    'monocyte',
    'neutrophil',
    'platelet',
  ),
  'tissuemnist': (
    'Collecting Duct, Connecting Tubule',
    'Distal Convoluted Tubule',
    'Glomerular endothelial cells',
    'Interstitial endothelial cells',
    'Leukocytes',
    'Podocytes',
    'Proximal Tubule Segments',
    'Thick Ascending Limb',
  ),
  'organamnist': _ORGANS,
  'organcmnist': _ORGANS,
  'organsmnist': _ORGANS,
}
FLAGS = tuple(CLASS_NAMES)
# The medmnist package's class of each flag (INFO[flag]['python_class']).
PYTHON_CLASSES = {
  'pathmnist': 'PathMNIST',
  'chestmnist': 'ChestMNIST',
  'dermamnist': 'DermaMNIST',
  'octmnist': 'OCTMNIST',
  'pneumoniamnist': 'PneumoniaMNIST',
  'retinamnist': 'RetinaMNIST',
  'breastmnist': 'BreastMNIST',
  'bloodmnist': 'BloodMNIST',
  'tissuemnist': 'TissueMNIST',
  'organamnist': 'OrganAMNIST',
  'organcmnist': 'OrganCMNIST',
  'organsmnist': 'OrganSMNIST',
}
SIZES = (28, 64, 128, 224)
# The multi-label flags (MedMNIST's task 'multi-label, binary-class').
MULTILABEL_FLAGS = ('chestmnist',)
# The names of the data.medmnist parameters (their defaults: care_jax.config).
PARAMETERS = ('flag', 'size')
# The files' split names -> the splits here.
SPLIT_NAMES = {'train': 'train', 'val': 'validation', 'test': 'test'}
ZENODO = 'https://zenodo.org/records/10519652/files'


def file_name(flag: str, size: int) -> str:
  """The file of ``flag`` at ``size``: ``<flag>.npz`` (28) or ``<flag>_<size>.npz``."""
  return f'{flag}.npz' if size == 28 else f'{flag}_{size}.npz'


def instructions(flag: str, size: int) -> str:
  """How to fetch ``flag`` at ``size`` into DATA_DIR (the ``medmnist`` call and the URL)."""
  name = file_name(flag, size)
  return (
    f'Fetch {name} once, e.g. with the medmnist package (pip install medmnist):\n'
    f"  python -c \"import medmnist; medmnist.{PYTHON_CLASSES[flag]}(split='train',"
    f" download=True, size={size}, root='DATA_DIR')\"\n"
    f'or from {ZENODO}/{name}, and pass --config.data.dir=DATA_DIR.'
  )


def check_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
  """Checks ``data.medmnist``: exactly `PARAMETERS`, a flag of `FLAGS`, a size of `SIZES`.

  Raises:
    ValueError: naming ``data.medmnist.<key>`` and the valid values.
  """
  unknown = sorted(set(parameters) - set(PARAMETERS))
  missing = sorted(set(PARAMETERS) - set(parameters))
  if unknown or missing:
    raise ValueError(
      f'data.medmnist has unknown parameter(s) {unknown} and lacks {missing}; it takes'
      f' exactly {list(PARAMETERS)}.'
    )
  flag, size = parameters['flag'], parameters['size']
  if flag not in FLAGS:
    raise ValueError(f'data.medmnist.flag = {flag!r}: must be one of {FLAGS}.')
  if size not in SIZES:
    raise ValueError(f'data.medmnist.size = {size!r}: must be one of {SIZES}.')
  return {'flag': flag, 'size': int(size)}


def _open_array(archive: zipfile.ZipFile, key: str, path: pathlib.Path):
  """The open member ``<key>.npy`` of an npz archive, its shape and dtype (header read)."""
  try:
    stream = archive.open(f'{key}.npy')
  except KeyError:
    arrays = sorted(name.removesuffix('.npy') for name in archive.namelist())
    raise ValueError(
      f'{path} has no array {key!r} (it has {arrays}); a MedMNIST file has'
      f' {[f"{s}_{kind}" for s in SPLIT_NAMES for kind in ("images", "labels")]}.'
    ) from None
  version = np.lib.format.read_magic(stream)
  read_header = (
    np.lib.format.read_array_header_1_0
    if version == (1, 0)
    else np.lib.format.read_array_header_2_0
  )
  shape, fortran_order, dtype = read_header(stream)
  if fortran_order:
    stream.close()
    raise ValueError(f'{path}: array {key!r} is in Fortran order; save it in C order.')
  return stream, shape, dtype


def array_header(path: pathlib.Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of array ``key`` of npz file ``path``, reading only its header."""
  with zipfile.ZipFile(path) as archive:
    stream, shape, dtype = _open_array(archive, key, path)
    stream.close()
  return shape, dtype


def array_rows(path: pathlib.Path, key: str) -> Iterator[np.ndarray]:
  """Yields the rows ``array[i]`` of array ``key`` of npz file ``path``, one at a time.

  Reads the archive member as a stream (compressed or not), so that memory holds one row and
  not the whole array (PathMNIST at 224 px is 13.5 GB).
  """
  with zipfile.ZipFile(path) as archive:
    stream, shape, dtype = _open_array(archive, key, path)
    with stream:
      row_shape = tuple(shape[1:])
      row_bytes = dtype.itemsize * math.prod(row_shape)
      for _ in range(shape[0]):
        yield np.frombuffer(stream.read(row_bytes), dtype).reshape(row_shape)


def read_labels(path: pathlib.Path, flag: str) -> dict[str, np.ndarray]:
  """The labels of every split of the file, checked against its images.

  Returns:
    {file split ('train', 'val', 'test'): labels}: int64 [N] class indices, or for a
    multi-label flag uint8 [N, K] 0/1.

  Raises:
    ValueError: naming the file and array for a missing array, images that are not uint8
      [N, S, S] or [N, S, S, 3], labels of another shape or count, or labels out of range.
  """
  num_classes = len(CLASS_NAMES[flag])
  result = {}
  for split in SPLIT_NAMES:
    shape, dtype = array_header(path, f'{split}_images')
    if dtype != np.uint8 or len(shape) not in (3, 4) or shape[3:] not in ((), (3,)):
      raise ValueError(
        f'{path}: {split}_images is {dtype} {list(shape)}; expected uint8 [N, S, S] or'
        ' [N, S, S, 3] as MedMNIST ships it.'
      )
    with np.load(path) as archive:
      labels = np.asarray(archive[f'{split}_labels'])
    columns = num_classes if flag in MULTILABEL_FLAGS else 1
    if labels.ndim == 1 and columns == 1:
      labels = labels[:, None]
    if labels.shape != (shape[0], columns) or labels.dtype.kind not in 'iu':
      raise ValueError(
        f'{path}: {split}_labels is {labels.dtype} {list(labels.shape)}; expected integers'
        f' [{shape[0]}, {columns}] (one row per image of {split}_images).'
      )
    high = 1 if flag in MULTILABEL_FLAGS else num_classes - 1
    bad = np.unique(labels[(labels < 0) | (labels > high)])
    if bad.size:
      raise ValueError(
        f'{path}: {split}_labels holds {bad[:5].tolist()}, outside 0..{high}'
        f' ({flag}: {num_classes} classes{", 0/1 per finding" if columns > 1 else ""}).'
      )
    result[split] = labels.astype(np.uint8) if columns > 1 else labels[:, 0].astype(np.int64)
  return result


def medmnist_config(data_dir: pathlib.Path, **parameters: Any) -> builder.FilesConfig:
  """The builder config of ``data.medmnist`` in ``data_dir``.

  Args:
    data_dir: the directory with the npz file.
    **parameters: ``data.medmnist``: ``flag`` and ``size``.

  Raises:
    ValueError: for bad parameters, or a missing file (naming it and how to fetch it).
  """
  params = check_parameters(parameters)
  path = data_dir / file_name(params['flag'], params['size'])
  builder.require_files([path], instructions(params['flag'], params['size']))
  # The file's name, size and time stand for its bytes: hashing gigabytes on every run
  # would cost more than preparing again after a touch.
  stat = path.stat()
  stamp = f'{builder.fingerprint(data_dir, [])}:{path.name}:{stat.st_size}:{stat.st_mtime_ns}'
  return builder.FilesConfig(
    tag=f'{params["flag"]}_{params["size"]}',
    class_names=CLASS_NAMES[params['flag']],
    box_classes=(),
    parameters=params,
    files_fingerprint=hashlib.sha256(stamp.encode()).hexdigest(),
  )


def _rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [S, S, 3]: greyscale repeated to three channels."""
  return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


class Medmnist(builder.FilesBuilder):
  """A MedMNIST+ dataset (``data.medmnist.flag`` at ``.size``) from the user's npz file."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = instructions('dermamnist', 224)
  ENCODING = 'png'
  HOMEPAGE = 'https://medmnist.com/'

  @property
  def _path(self) -> pathlib.Path:
    params = self.builder_config.parameters
    return self.manual_dir / file_name(params['flag'], params['size'])

  @property
  def _multilabel(self) -> bool:
    return self.builder_config.parameters['flag'] in MULTILABEL_FLAGS

  def _labels_file(self) -> str:
    return str(self._path)

  def _read_records(self, problems: Any = None) -> list[Any]:
    """One record per row of the file, in file order, with its split and label(s).

    The file has no rows to skip (``problems`` is unused): a bad file raises.
    """
    del problems
    path = self._path
    records = []
    for file_split, labels in read_labels(path, self.builder_config.parameters['flag']).items():
      shape, _ = array_header(path, f'{file_split}_images')
      for i, label in enumerate(labels):
        common = dict(
          key=f'{file_split}/{i}',
          source=path,
          location=f'{path}, {file_split}_images[{i}]',
          size=tuple(shape[1:3]),
          group=f'{file_split}/{i}',
          split=SPLIT_NAMES[file_split],
        )
        if self._multilabel:
          records.append(
            multilabel.MultilabelRecord(labels=tuple(np.flatnonzero(label).tolist()), **common)
          )
        else:
          records.append(splits.Record(label=int(label), **common))
    return records

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The file is the user's (self.manual_dir).
    records = self._read_records()
    names = self.builder_config.class_names
    if self._multilabel:
      counts = multilabel.check_multilabel_coverage(records, names, self._labels_file())
    else:
      counts = splits.check_coverage(records, names, self._labels_file())
    logging.info('%s: examples per class %s and split: %s', self.name, list(names), counts)
    return {
      split: self._generate_examples([r for r in records if r.split == split], split)
      for split in counts
    }

  def _generate_examples(self, records: list[Any], split: str) -> Iterator[tuple[str, dict]]:
    file_split = {name: file for file, name in SPLIT_NAMES.items()}[split]
    rows = array_rows(self._path, f'{file_split}_images')
    for record, image in zip(records, rows, strict=True):
      image = _rgb(image)
      if self._multilabel:
        example = multilabel.multilabel_example(
          record, image, split=split, box_labels=(), encoding=self.ENCODING, stored_size=0
        )
      else:
        no_boxes = np.zeros((0, 4), np.float32)
        example = dict(
          image=images.encode(image, self.ENCODING),
          label=record.label,
          boxes=no_boxes,
          lesion_boxes=no_boxes,
          image_id=record.key,
        )
      yield record.key, example


def from_data_config(data_config: ml_collections.ConfigDict) -> Medmnist:
  """The (unprepared) builder of ``data.dir`` with the ``data.medmnist`` params."""
  parameters = data_config.get('medmnist')
  flag = parameters.get('flag') if parameters is not None else None
  size = parameters.get('size') if parameters is not None else None
  return builder.builder_from_data_config(
    data_config,
    'medmnist',
    builder_cls=Medmnist,
    make_config=medmnist_config,
    instructions=instructions(flag, size) if flag in FLAGS and size in SIZES else '',
    rare_classes=False,
  )
