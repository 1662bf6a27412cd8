"""Generated boxes of a dataset: ``config.data.box_source`` and ``care-jax boxes``.

The glue between the pure generators of `care_jax.boxes.generators` and a
dataset: `generated_boxes` runs a generator over the rare-class training images
of ``config.data`` (decoded and resized as the input pipeline feeds them) and
caches the result on disk; `replace_boxes` swaps the manual training boxes for
them (the trainer's ``boxes_fn``); `GeneratedBoxes.write_csv` writes them to
a ``boxes.csv`` in the folder format (DESIGN 3.1).

Multi-label data (a ``labels`` feature, e.g. ChestMNIST, CheXpert): the rare
images are those positive for any rare finding, and each gets one box per
positive rare finding (the same box, ``box_labels`` its finding), so the
pipeline's per-finding masks [K, S, S] hold it in the planes of those findings.
Only the class-agnostic generators (`MULTILABEL_METHODS`) apply there. Their
``boxes.csv`` has one row per box with its finding in the column ``label``
(``image,label,xmin,ymin,xmax,ymax``, as `care_jax.data.chexpert` reads it).

Example::

  result = generated_boxes(config.data, method='otsu', box_config=config.data.boxes)
  result.write_csv('boxes.csv')
"""

from collections.abc import Sequence
import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from care_jax import config
from care_jax import trained_run
from care_jax.boxes import generators
from care_jax.config import checks as config_checks
from care_jax.data import info as info_lib
from care_jax.data import preprocess
from care_jax.data import reading
from care_jax.data import registry
from care_jax.data._tensorflow import tf

# The generators whose box does not depend on the class: one box per image serves
# each of its findings. Grad-CAM explains one class per image (its label): a
# multi-label image would need a map per finding.
MULTILABEL_METHODS = tuple(m for m in config_checks.MULTILABEL_BOX_SOURCES if m != 'manual')


@dataclasses.dataclass(frozen=True)
class GeneratedBoxes:
  """Generated boxes of a training split's rare-class images.

  Attributes:
    num_examples: N, the examples of the training split.
    indices: int64 [T] positions of the rare-class images in the split, in
      the order `care_jax.data.reading.read_split` reads it (ascending).
    image_ids: [T] str identifiers (see `image_ids`).
    image_sizes: int64 [T, 2] (height, width) of the stored images.
    boxes: float32 [T, 4] normalised (ymin, xmin, ymax, xmax); zero rows
      where not found.
    found: bool [T].
    findings: bool [T, K], each image's positive rare findings (multi-label
      data), or None (single-label data).
    class_names: the dataset's K class names, in label order.
  """

  num_examples: int
  indices: np.ndarray
  image_ids: np.ndarray
  image_sizes: np.ndarray
  boxes: np.ndarray
  found: np.ndarray
  findings: np.ndarray | None = None
  class_names: tuple[str, ...] = ()

  def _boxes_per_image(self) -> np.ndarray:
    """int64 [T]: 0 where not found, else 1 (multi-label: its positive rare findings)."""
    per_image = np.ones(len(self.found), np.int64)
    if self.findings is not None:
      per_image = self.findings.sum(axis=1, dtype=np.int64)
    return np.where(self.found, per_image, 0)

  def table_boxes(self) -> tuple[np.ndarray, np.ndarray]:
    """``(box_values [M, 4], box_splits [N + 1])`` as the pipeline's table holds.

    One box per found image (multi-label: one per positive rare finding, the
    same box), none for every other example.
    """
    per_image = self._boxes_per_image()
    counts = np.zeros(self.num_examples, np.int64)
    counts[self.indices] = per_image
    splits = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return np.repeat(self.boxes, per_image, axis=0).astype(np.float32), splits

  def table_box_labels(self) -> np.ndarray | None:
    """int64 [M], the finding of each of `table_boxes`' boxes; None for single-label data."""
    if self.findings is None:
      return None
    return np.nonzero(self.findings & self.found[:, None])[1].astype(np.int64)

  def csv_rows(self) -> tuple[list[str], np.ndarray]:
    """``(image names, [M, 4] pixel boxes)`` of `table_boxes`' boxes, for boxes.csv.

    One row per found image (multi-label: one per positive rare finding of it, the same box;
    `csv_labels` names the finding of each).
    """
    per_image = self._boxes_per_image()[self.found]
    pixels = generators.pixel_boxes(self.boxes[self.found], self.image_sizes[self.found])
    return (
      [str(i) for i in np.repeat(self.image_ids[self.found], per_image)],
      np.repeat(pixels, per_image, axis=0),
    )

  def csv_labels(self) -> list[str] | None:
    """The finding's name of each of `csv_rows`' boxes; None for single-label data."""
    box_labels = self.table_box_labels()
    return None if box_labels is None else [self.class_names[k] for k in box_labels]

  def write_csv(self, path: str) -> None:
    """Writes `csv_rows` to the boxes.csv ``path``, multi-label with its ``label`` column."""
    names, pixels = self.csv_rows()
    generators.write_boxes_csv(path, names, pixels, labels=self.csv_labels())


def image_ids(builder: Any, split: str = 'train') -> np.ndarray:
  """Stable identifiers of a tfds split's examples, in the pipeline's order.

  The ``image/filename`` feature where the dataset has one (tfds's
  ImageFolder convention: a path relative to the data folder), else the
  example's ``tfds_id`` (e.g. ``synthetic_lesions-train.tfrecord-00000-of-
  00001__12``: shard file and position in it), which names the example for as
  long as the prepared dataset exists (``tfds.ReadConfig(add_tfds_id=True)``
  reads it back).
  """
  return reading.example_ids(builder, split, keys=('image/filename',))


def _model_input_chunks(builder, data_config, encoded, labels, size):
  """Yields (images [n, S, S, C] as the pipeline feeds them, labels, sizes)."""
  feature = builder.info.features['image']
  make_example = preprocess.example_fn(data_config, feature.shape[-1])

  def example(image_bytes, label):
    image = feature.decode_example(image_bytes)
    row = make_example(image, label, tf.zeros((0, 4), tf.float32))
    return row['image'], row['label'], tf.shape(image)[:2]

  ds = tf.data.Dataset.from_tensor_slices(
    (tf.constant(list(encoded), tf.string), tf.constant(labels, tf.int64))
  )
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE).batch(size)
  return tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE))


_MASK_SUFFIXES = ('.png', '_segmentation.png')
_IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.dcm')


def mask_path(masks_dir: str, image_id: str) -> str | None:
  """The mask file of an image: ``<stem>.png`` or ``<stem>_segmentation.png``.

  ``stem`` is the identifier without its image extension (``a/b.jpg`` ->
  ``a/b``); HAM10000 names its masks ``ISIC_0024306_segmentation.png``.
  Returns None when neither exists.
  """
  stem, ext = os.path.splitext(image_id)
  if ext.lower() not in _IMAGE_EXTENSIONS:
    stem = image_id
  for suffix in _MASK_SUFFIXES:
    path = os.path.join(masks_dir, stem + suffix)
    if os.path.isfile(path):
      return path
  return None


def _mask_paths(masks_dir: str | None, ids: Sequence[str]) -> list[str]:
  """The mask file of every id (`mask_path`); raises naming missing ones."""
  if not masks_dir or not os.path.isdir(masks_dir):
    raise ValueError(f'data.boxes.mask.masks_dir must be a folder of masks, got {masks_dir!r}.')
  paths = [mask_path(masks_dir, i) for i in ids]
  missing = [i for i, p in zip(ids, paths) if p is None]
  if missing:
    raise ValueError(
      f'no mask in {masks_dir!r} for {len(missing)} of {len(ids)} rare-class'
      f' training images, e.g. {missing[:3]} (looked for <stem>.png and'
      f' <stem>_segmentation.png).'
    )
  return paths


def _mask_file_boxes(paths: Sequence[str], **kwargs: Any):
  """`mask_boxes` of each mask file (any size), one file at a time."""
  boxes = np.zeros((len(paths), 4), np.float32)
  found = np.zeros(len(paths), bool)
  for n, path in enumerate(paths):
    with Image.open(path) as mask:
      boxes[n : n + 1], found[n : n + 1] = generators.mask_boxes(np.asarray(mask)[None], **kwargs)
  return boxes, found


def _fingerprint(tree: Any) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()


def _cache_path(cache_dir: str, method: str, key: dict[str, Any]) -> str:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f'{method}-{digest}.npz')


def _file_stamps(paths: Sequence[str]) -> list[tuple[str, int, int]]:
  """``(absolute path, size, modification time)`` of each file: a cache key of its contents."""
  return [(os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]


def _read_cache(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  with np.load(path) as cached:
    return cached['image_sizes'], cached['boxes'], cached['found']


def _write_cache(path: str, key: dict[str, Any], **arrays: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f'{path}.{os.getpid()}.tmp.npz'
  np.savez(temporary, **arrays, key=json.dumps(key, sort_keys=True, default=str))
  os.replace(temporary, path)  # Atomic: concurrent processes agree.


def generated_boxes(
  data_config: ml_collections.ConfigDict,
  *,
  method: str,
  box_config: ml_collections.ConfigDict | None = None,
  builder: Any = None,
  table: Any = None,
  use_cache: bool = True,
) -> GeneratedBoxes:
  """Runs a generator on the rare-class images of ``data_config``'s train split.

  The rare classes are ``data_config.rare_classes`` or, when empty, the
  classes with manual boxes, else the rarest class
  (`care_jax.data.info.default_rare_classes`, as the pipeline decides); on
  multi-label data, the images positive for any of them. Images are decoded and
  resized as the pipeline feeds them (``data.image_size``; for ``grad_cam``,
  the stage-1 run's image size and normalisation). The result is cached in
  ``box_config.cache_dir`` under a hash of the method, its parameters, the
  dataset and, for ``grad_cam``, the stage-1 weights (for ``mask``, the mask
  files' sizes and times), so training does not recompute it.

  Args:
    data_config: ``config.data``.
    method: one of `care_jax.boxes.generators.METHODS`.
    box_config: the generators' settings (`care_jax.config.default_box_config`);
      None takes ``data_config.boxes``.
    builder: the prepared tfds builder (None: built from ``data_config``).
    table: the pipeline's in-memory train split (None: read it).
    use_cache: read and write the cache.

  Returns:
    `GeneratedBoxes` in the pipeline's order of the train split.

  Raises:
    ValueError: unknown method, or one not in `MULTILABEL_METHODS` on
      multi-label data; no rare classes (no training image at all); grad_cam
      without a stage-1 workdir or with a model of another class count; mask
      without masks for every image.
  """
  if method not in generators.METHODS:
    raise ValueError(f'box method must be one of {generators.METHODS}, got {method!r}.')
  box_config = data_config.boxes if box_config is None else box_config
  config.validate_boxes(box_config)
  if builder is None:
    builder = registry.prepared_builder(data_config)
  if table is None:
    table = reading.read_split(builder, 'train')
  class_names = reading.class_names_of(builder)
  rare = _rare_classes(data_config, class_names, table, method)
  indices, findings = _rare_images(table, rare, method)
  params = box_config[method].to_dict()
  key = dict(
    method=method,
    params=params,
    margin=box_config.margin,
    largest_component=box_config.largest_component,
    dataset=builder.info.full_name,
    data_dir=builder.data_dir,
    num_examples=len(table.labels),
    rare=[class_names[k] for k in rare],
  )
  source = _Source(builder, table, indices, data_config)
  if method == 'grad_cam':
    source.model, source.variables, source.input_config = _stage1_model(
      box_config.grad_cam, data_config, num_classes=len(class_names)
    )
    key.update(stage1=_fingerprint(source.variables))
    del params['stage1_workdir']  # The weights' hash names the model.
    del params['which']
  key.update(
    image_size=source.input_config.image_size,
    mean=list(source.input_config.mean),
    std=list(source.input_config.std),
  )
  ids = image_ids(builder)[indices]
  if method == 'mask':
    params['paths'] = _mask_paths(params.pop('masks_dir'), ids)
    key.update(masks=_file_stamps(params['paths']))
  cache_dir = box_config.cache_dir or os.path.join(builder.data_dir, 'care_jax_boxes')
  path = _cache_path(cache_dir, method, key)
  if use_cache and os.path.isfile(path):
    image_sizes, boxes, found = _read_cache(path)
  else:
    boxes, found, image_sizes = _generate(method, params, box_config, source)
    if use_cache:
      _write_cache(path, key, image_sizes=image_sizes, boxes=boxes, found=found)
  return GeneratedBoxes(
    len(table.labels), indices, ids, image_sizes, boxes, found, findings, tuple(class_names)
  )


def _rare_classes(data_config, class_names, table, method) -> tuple[int, ...]:
  """``data.rare_classes``, else the boxed classes, else the rarest (as `get_dataset_info`)."""
  if table.box_labels is not None:  # Multi-label.
    boxed = np.unique(table.box_labels)
  else:
    boxed = np.unique(table.labels[np.diff(table.box_splits) > 0])
  default = info_lib.default_rare_classes(
    boxed, info_lib.train_class_counts(table, len(class_names))
  )
  rare = info_lib.resolve_rare_classes(data_config.rare_classes, class_names, default)
  if not rare:
    raise ValueError(
      f'the training split has no image of any class of {list(class_names)}: no rare-class'
      f' images to generate boxes for with {method!r}.'
    )
  return rare


def _rare_images(table, rare, method) -> tuple[np.ndarray, np.ndarray | None]:
  """``(indices [T], findings bool [T, K] or None)`` of the rare-class training images."""
  if table.box_labels is None:  # Single-label.
    return np.flatnonzero(np.isin(table.labels, rare)).astype(np.int64), None
  if method not in MULTILABEL_METHODS:
    raise ValueError(
      f'box method {method!r} does not apply to multi-label data (its box depends on the'
      f' class it explains): use one of {MULTILABEL_METHODS}, whose box serves every finding.'
    )
  findings = np.zeros(table.labels.shape, bool)
  findings[:, rare] = table.labels[:, rare] > 0
  indices = np.flatnonzero(findings.any(axis=1)).astype(np.int64)
  return indices, findings[indices]


@dataclasses.dataclass
class _Source:
  """The rare-class training images a generator runs on, and the model of 'grad_cam'."""

  builder: Any
  table: Any
  indices: np.ndarray
  input_config: ml_collections.ConfigDict  # How the images are fed (the stage-1 model's).
  model: Any = None
  variables: Any = None


def _generate(
  method: str, params: dict[str, Any], box_config: ml_collections.ConfigDict, source: _Source
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(boxes, found, image sizes)`` of the generator over ``source``'s images."""
  common = dict(largest_component=box_config.largest_component, margin=box_config.margin)
  num_channels = source.builder.info.features['image'].shape[-1]
  chunk = min(box_config.batch_size, max(len(source.indices), 1))
  # Classical methods see the pipeline's images back on the [0, 1] scale.
  mean, std = preprocess.normalisation(source.input_config, num_channels)
  sizes = [np.zeros((0, 2), np.int64)]

  def inputs():
    for images, labels, image_sizes in _model_input_chunks(
      source.builder,
      source.input_config,
      source.table.images[source.indices],
      source.table.labels[source.indices],
      chunk,
    ):
      sizes.append(image_sizes)
      yield (images, labels) if method == 'grad_cam' else (images * std + mean,)

  if method == 'mask':
    boxes, found = _mask_file_boxes(params['paths'], **common)
    for _ in inputs():  # The stored images' sizes, for pixel boxes.
      pass
  else:
    try:
      fn = generators.foreground_fn(
        method, num_channels=num_channels, model=source.model, variables=source.variables, **params
      )
    except ValueError as e:
      raise ValueError(f'data.boxes.{method}: {e}') from None
    boxes, found = generators.chunked_boxes(fn, inputs(), chunk_size=chunk, **common)
  return boxes, found, np.concatenate(sizes).astype(np.int64)


def _stage1_model(grad_cam_config, data_config, *, num_classes):
  """(model, variables, data config of its inputs) of the stage-1 run."""
  workdir = grad_cam_config.stage1_workdir
  if not workdir:
    raise ValueError(
      'box method grad_cam needs the stage-1 run: set'
      ' data.boxes.grad_cam.stage1_workdir (--stage1_workdir).'
    )
  stage1_config, model, variables = trained_run.load_model(workdir, which=grad_cam_config.which)
  if model.head.num_classes != num_classes:
    raise ValueError(
      f'the stage-1 model in {workdir!r} has {model.head.num_classes} classes,'
      f' the dataset {num_classes}.'
    )
  # Feed the images as the stage-1 model saw them in training.
  input_config = data_config.copy_and_resolve_references()
  for field in ('image_size', 'mean', 'std'):
    input_config[field] = stage1_config.data[field]
  return model, variables, input_config


def replace_boxes(data_config: ml_collections.ConfigDict, builder: Any, table: Any) -> Any:
  """The train table with ``data.box_source``'s boxes instead of manual ones.

  For ``box_source='manual'`` (or a config without it) the table itself;
  otherwise a copy whose boxes are the generated boxes of the rare-class
  images (one each, none where the generator found nothing; multi-label: one
  per positive rare finding, with its ``box_labels``) and none for any other
  image. ``table`` is the pipeline's ``read_split(builder, 'train')``.
  """
  source = data_config.get('box_source', 'manual')
  if source == 'manual':
    return table
  if source not in generators.METHODS:
    raise ValueError(
      f'data.box_source must be one of {("manual", *generators.METHODS)}, got {source!r}.'
    )
  generated = generated_boxes(data_config, method=source, builder=builder, table=table)
  box_values, box_splits = generated.table_boxes()
  return dataclasses.replace(
    table, box_values=box_values, box_splits=box_splits, box_labels=generated.table_box_labels()
  )
