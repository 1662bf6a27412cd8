"""The tfds builder shared by the datasets built from files the user already has.

`folder`, `isic2018`, `rsna_pneumonia` and `nih_chestxray14` are tfds builders
that read the user's files (the tfds ``manual_dir``, ``data.dir`` in the
config) and never download anything. They share the conventions below (the
rows of their files: `care_jax.data._files.rows`; their images and masks:
`care_jax.data._files.images`; their splits: `care_jax.data._files.splits`).

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
size, 255 = lesion, 0 = not (`images.stored_mask`), or empty bytes for none. Like
``boxes``, only training images of the box classes carry one; where an example
has a mask, the pipeline makes CARE's inner mask from it instead of from its
boxes.

**Cache.** The prepared data live in the tfds data dir (``data.cache_dir``;
None: the tfds default, ``~/tensorflow_datasets``) under
``<dataset>/<config>/<version>``. The config name hashes every parameter, the
bytes of the annotation files and the path of ``data.dir``, so changing any of
them prepares the data anew instead of reusing stale data. Replacing image
files in place (same names, same CSV files) is not detected: delete the cache.
"""

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import hashlib
import json
import logging
import os
import pathlib
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from care_jax.data import _local
from care_jax.data._files import images
from care_jax.data._files import multilabel
from care_jax.data._files import rows
from care_jax.data._files import splits

# The parameters of every dataset here (``data.<dataset>.<name>``), checked by
# `check_parameters`; their defaults are in `care_jax.config`.
COMMON_PARAMETERS = (
  'split_seed',
  'test_fraction',
  'validation_fraction',
  'skip_bad_rows',
  'stored_size',
)


def fingerprint(
  root: pathlib.Path, files: Iterable[pathlib.Path], *, listing: Sequence[str] = ()
) -> str:
  """sha256 of the data directory's path, the given files' names/bytes and ``listing``.

  ``listing`` (e.g. the images of a class-folder tree, which has no label file)
  counts only when not empty, so that fingerprints without it stay as they were.
  """
  digest = hashlib.sha256(str(root.resolve()).encode())
  for path in files:
    digest.update(b'\0' + str(path.relative_to(root)).encode() + b'\0')
    digest.update(path.read_bytes() if path.is_file() else b'<absent>')
  if listing:
    digest.update(b'\0<listing>\0' + '\n'.join(listing).encode())
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
  class_names: Sequence[str], encoding: str, *, masks: bool = False, artefacts: bool = False
) -> tfds.features.FeaturesDict:
  """The features of every dataset built from files (module docstring).

  ``masks`` adds ``mask``: the encoded annotation mask (PNG bytes, or empty); ``artefacts``
  adds ``artefact_boxes``: the boxes of irrelevant regions (boxes.csv's ``kind=artefact``).
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
  if artefacts:
    features['artefact_boxes'] = tfds.features.Sequence(tfds.features.BBoxFeature())
  return tfds.features.FeaturesDict(features)


class FilesBuilder(_local.LocalData, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A tfds builder over the user's files (see the module docstring).

  Subclasses define `_read_records` (read and check the annotation files and
  image headers) and may override `_add_boxes` (boxes that need the split)
  and `_load` (decode one image). A multi-label dataset (`medmnist`'s ChestMNIST,
  `nih_chestxray14`'s multilabel mode, `chexpert`) overrides `_multilabel` (and sets
  `IGNORED_LABELS`): its features are `multilabel.multilabel_features`, its examples
  `_multilabel_examples`.

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
  # Whether the examples have the annotation `mask` feature (`splits.Record.mask`).
  MASKS = False
  # Whether multi-label examples have ``ignored_labels``, the classes neither positive nor
  # negative (`multilabel.multilabel_features`; CheXpert's uncertain findings).
  IGNORED_LABELS = False

  def __init__(
    self,
    *,
    config: FilesConfig,
    manual_dir: os.PathLike[str] | str,
    data_dir: os.PathLike[str] | str | None = None,
  ):
    self.manual_dir = pathlib.Path(manual_dir)
    super().__init__(config=config, data_dir=data_dir)

  @property
  def _multilabel(self) -> bool:
    """Whether the examples are multi-label (a property, as the config may decide)."""
    return False

  def _info(self) -> tfds.core.DatasetInfo:
    """`example_features`, or `multilabel.multilabel_features` where `_multilabel`."""
    config = self.builder_config
    if self._multilabel:
      features = multilabel.multilabel_features(
        config.class_names, self.ENCODING, ignored=self.IGNORED_LABELS
      )
    else:
      features = example_features(
        config.class_names,
        self.ENCODING,
        masks=self.MASKS,
        artefacts=getattr(config, 'artefacts', False),
      )
    return self.dataset_info_from_configs(
      description=(type(self).__doc__ or '').strip(),
      features=features,
      supervised_keys=('image', 'labels' if self._multilabel else 'label'),
      homepage=self.HOMEPAGE or None,
    )

  def _problems(self) -> rows.Problems:
    return rows.Problems(
      skip=self.builder_config.parameters['skip_bad_rows'], option=f'data.{self.name}.skip_bad_rows'
    )

  @abc.abstractmethod
  def _read_records(self, problems: rows.Problems) -> list[splits.Record]:
    """Reads and checks the annotations; returns the examples to write."""

  @abc.abstractmethod
  def _labels_file(self) -> str:
    """The file that lists the examples, named in coverage errors."""

  def _add_boxes(self, records: list[splits.Record], problems: rows.Problems) -> None:
    """Adds boxes that depend on the split (default: none to add)."""
    del records, problems

  def _load(self, record: splits.Record) -> np.ndarray:
    """Decodes ``record.source`` to uint8 [H, W, 3]; raises images.UnreadableFile."""
    return images.load_rgb(record.source)

  def _decoded(
    self, records: Iterable[Any], problems: rows.Problems
  ) -> Iterator[tuple[Any, np.ndarray]]:
    """``(record, image)`` of every record whose image decodes (`_load`); reports the others."""
    for record in records:
      try:
        image = self._load(record)
      except images.UnreadableFile as e:
        problems.report(record.location, str(e))
        continue
      yield record, image

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The files are the user's (self.manual_dir).
    params = self.builder_config.parameters
    problems = self._problems()
    records = self._read_records(problems)
    splits.assign_splits(
      records,
      test_fraction=params['test_fraction'],
      validation_fraction=params['validation_fraction'],
      seed=params['split_seed'],
    )
    self._add_boxes(records, problems)
    problems.log(f'{self.name}: reading {self.manual_dir}')
    counts = splits.check_coverage(records, self.builder_config.class_names, self._labels_file())
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
    self, records: Sequence[splits.Record], split: str
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    config = self.builder_config
    box_labels = {config.class_names.index(n) for n in config.box_classes}
    stored_size = config.parameters['stored_size']
    problems = self._problems()
    for record, image in self._decoded(records, problems):
      boxes = np.array(record.boxes, np.float32).reshape(-1, 4)
      annotated = split == 'train' and record.label in box_labels
      image = images.shrink(image, stored_size)
      example = dict(
        image=images.encode(image, self.ENCODING),
        label=record.label,
        boxes=boxes if annotated else np.zeros((0, 4), np.float32),
        lesion_boxes=boxes,
        image_id=record.key,
      )
      if getattr(config, 'artefacts', False):
        example['artefact_boxes'] = np.array(record.artefact_boxes, np.float32).reshape(-1, 4)
      if self.MASKS:
        example['mask'] = b''
        if annotated and record.mask is not None:
          try:
            example['mask'] = images.stored_mask(images.load_mask(record.mask), image.shape[:2])
          except images.UnreadableFile as e:
            problems.report(record.location, str(e))
            continue
      yield record.key, example
    problems.log(f'{self.name}: writing split {split!r}')

  def _multilabel_examples(
    self, records: Sequence[multilabel.MultilabelRecord], split: str
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    """The examples of a multi-label dataset (`multilabel.multilabel_example`).

    With `IGNORED_LABELS` they have ``ignored_labels``.
    """
    config = self.builder_config
    box_labels = {config.class_names.index(name) for name in config.box_classes}
    problems = self._problems()
    for record, image in self._decoded(records, problems):
      yield (
        record.key,
        multilabel.multilabel_example(
          record,
          image,
          split=split,
          box_labels=box_labels,
          encoding=self.ENCODING,
          stored_size=config.parameters['stored_size'],
          ignored=self.IGNORED_LABELS,
        ),
      )
    problems.log(f'{self.name}: writing split {split!r}')
