"""tf.data input pipelines that yield numpy batches for JAX.

The batch contract: every batch is a dict of numpy arrays

=============  ==========================  =================================
key            dtype, shape                content
=============  ==========================  =================================
``image``      float32 [B, S, S, C]        ``(x / 255 - mean) / std``, per
                                           channel, ``x`` the uint8 pixels
                                           resized (bilinear) to S x S
``label``      int32 [B]                   class index (label order = class
                                           names sorted)
``mask``       float32 [B, S, S]           ``M_in``: union of the example's
                                           boxes rasterised at S x S, zeros
                                           without a box
                                           (`preprocess.rasterize_boxes`);
                                           binary. For an example with a
                                           segmentation ``mask`` feature
                                           instead: that mask resized to
                                           S x S as the image (bilinear,
                                           antialiased), >= 0.5
``has_mask``   bool [B]                    ``mask`` is not all zeros (with
                                           or without augmentation: a crop
                                           may drop the box, and a box
                                           narrower than a pixel may cover
                                           no pixel centre)
``valid``      bool [B]                    eval batches only: False on the
                                           padding rows of the last batch
=============  ==========================  =================================

**Relevance** (only datasets with an ``artefact_boxes`` feature, e.g. ``decoy_digits``;
every other dataset's batches are exactly as above): training batches also hold
``relevance``, float32 [B, S, S] (multi-label: [B, K, S, S]), the three-valued map of the
explanation-guidance methods: ``-1`` on the artefact boxes (the irrelevant regions, moved
with the image by the augmentation as the boxes are), else ``+1`` inside and ``-1`` outside
the lesion mask where the example (finding) has one, else ``0`` (unknown)
(`augment.relevance_map`); ``has_mask`` then says ``relevance`` is not all zeros. The train
step derives the same map from ``mask`` for the other datasets
(`care_jax.guidance_losses.relevance_of`). Eval batches have no ``relevance``.

Eval batches also hold ``lesion_mask``, float32 [B, S, S]: the ground-truth
lesion box(es) rasterised like ``mask``, to score attention maps (the
dataset's ``lesion_boxes`` or ``lesion_box`` feature when it has one -- every
known box, in every split -- else its annotation ``boxes``), and
``has_lesion_mask``, bool [B]: ``lesion_mask`` is not all zeros.

Padding rows have ``valid=False``, label 0, a zero image and a zero mask, so
evaluation runs with static shapes and still counts every example once.

**Multi-label datasets** (those with a ``labels`` feature: a list of positive
classes per image, and ``box_labels``, the class of each box; e.g.
``synthetic_multilabel`` and ``nih_chestxray14``'s multi-label mode) yield
``label`` float32 [B, K] (multi-hot), ``mask`` uint8 [B, K, S, S] (class k's
boxes rasterised like ``mask`` above, after augmentation), ``has_mask`` bool
[B, K], and in eval batches ``lesion_mask`` uint8 [B, K, S, S] and
``has_lesion_mask`` bool [B, K]; `info.DatasetInfo.task` is then 'multilabel'.
Training draws them with ``data.sampling='instance'`` only. A multi-label dataset with an
``ignored_labels`` feature (CheXpert under U-Ignore) adds ``label_mask`` float32 [B, K] to
its training batches (host and on-device paths alike): 0 where the label is left out of the
loss, 1 elsewhere (`reading.SplitTable.label_masks`); no other dataset's batches have it, and
evaluation batches never do.

**On-device augmentation** (``data.augment.enabled`` and ``data.augment.on_device`` True,
as `care_jax.config.resolve_recipe` resolves 'auto'; `augment.on_device`):
training batches hold the augmentation's inputs instead of its result, for the train step
to apply on the accelerator (`care_jax.training.device_augment`): ``image`` uint8
[B, S, S, C] (resized, not augmented; a stored JPEG at least twice S on both sides is
decoded at 1/2, 1/4 or 1/8 of its size first, `preprocess.decode_fn`), ``geometry``
float32 [B, 3, 3] and ``color`` float32 [B, 4] (`augment.sample_augmentation`, the very
draws the host path applies), ``boxes`` float32 [B, N, 4] zero-padded to the split's most
boxes per image with ``box_count`` int32 [B], and for multi-label data ``box_labels``
int32 [B, N]; for datasets with artefact boxes, ``artefact_boxes`` float32 [B, A, 4] and
``artefact_count`` int32 [B] likewise; no ``mask``/``has_mask``/``relevance`` (the step
makes them).
`preprocess.device_augment_example_fn` builds the rows.

Only the annotation ``boxes`` feeds the masks (for the built-in datasets, the
rare-class training images); ground-truth lesion boxes never do: they only feed
``lesion_mask``, which evaluation uses to score attention maps.

**Segmentation masks.** Multi-class datasets may store an annotation
``mask`` feature (`folder`'s mask column, `isic2018` with
``supervision='mask'``): PNG bytes of a single-channel mask at the stored
image's size (255 = lesion), or empty bytes. Where an example has one, its
``mask`` row is made from it and its boxes are not used for it: the mask is
resized to S x S exactly as the image is (bilinear, antialiased, on the 0..255
scale, then divided by 255), and without augmentation thresholded at 0.5
(`augment.MASK_THRESHOLD`); with augmentation the resized soft mask is warped
by the image's own geometry (`augment.warp_mask`: the bilinear warp of the
image, then the threshold), so image and mask move together and an image whose
pixels encode the mask moves identically. The result is binary either way and
``has_mask`` is again ``mask`` not all zeros. Examples without a mask keep the
box rasterisation exactly, and ``lesion_mask`` stays the rasterised lesion
*boxes* for every example (the attention metrics score boxes whatever the
training supervision). ``data.box_scale`` scales boxes only; with
``data.box_source`` other than 'manual' the generated boxes replace every
manual annotation, masks included (a warning says how many masks are left
out).

Training order: stream position ``p`` of the infinite example stream holds
example ``index_shuffle(p mod N, seed=(seed, p div N))`` of the N training
examples with ``data.sampling='instance'`` (the default), i.e. each epoch is a
fresh permutation derived from ``(seed, epoch)`` and the stream runs on across
epoch ends; 'class_balanced' and 'sqrt' draw the class with probability
proportional to ``n_k^0`` or ``n_k^(1/2)`` and then an example of it, from
the stateless key of ``(seed, p)`` (`care_jax.data.sampling`). With
``data.augment.enabled`` the example at ``p`` is augmented
(`care_jax.data.augment`: crop, flips, rotation, colour jitter; the mask
rasterised after the geometry) with random numbers drawn from a second,
independent key of ``(seed, p)``. Global batch ``k`` is stream positions
``[k G, (k + 1) G)`` with ``G = batch_size * process_count``; process ``i``
takes rows ``[i batch_size, (i + 1) batch_size)`` of it. Resuming at
``start_step`` therefore computes its first position directly, without
reading the skipped examples, and sees the same examples, augmented the same.

The parts of the pipelines have modules of their own: `care_jax.data.registry` (the datasets
by ``data.name``), `care_jax.data.reading` (a split into memory), `care_jax.data.preprocess`
(the rows of the batches), `care_jax.data.info` (`info.DatasetInfo`) and
`care_jax.data.file_input` (image files for inference, preprocessed as ``eval_batches`` does).

Example::

  config = care_jax.config.default_data_config()
  info = care_jax.data.get_dataset_info(config)
  batches = train_batches(config, batch_size=32, seed=0)
  batch = next(batches)  # batch['image'].shape == (32, 64, 64, 3)
"""

from collections.abc import Callable, Iterator
import dataclasses
import logging
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from care_jax import _deprecated
from care_jax.data import augment
from care_jax.data import preprocess
from care_jax.data import reading
from care_jax.data import registry
from care_jax.data import sampling
from care_jax.data._tensorflow import tf


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index must lie in [0, process_count={process_count}), got {process_index}.'
    )


def _training_table(
  data_config: ml_collections.ConfigDict,
  builder: tfds.core.DatasetBuilder,
  boxes_fn: Callable[[ml_collections.ConfigDict, Any, Any], Any] | None,
) -> reading.SplitTable:
  """The training split in memory, its boxes generated (``data.box_source``) and scaled.

  Raises:
    ValueError: a generated ``data.box_source`` without ``boxes_fn``, or a bad
      ``data.box_scale``.
  """
  table = reading.read_split(builder, 'train')
  box_source = data_config.get('box_source', 'manual')
  if box_source != 'manual':
    if boxes_fn is None:
      raise ValueError(
        f'data.box_source={box_source!r} needs boxes_fn ='
        ' care_jax.boxes.replace_boxes (the care-jax commands pass it; pass it'
        ' to care_jax.training.train_and_evaluate as boxes_fn=...).'
      )
    table = boxes_fn(data_config, builder, table)
    if table.masks is not None:
      logging.warning(
        'data.box_source=%r: the generated boxes replace the manual annotations; %d'
        ' segmentation mask(s) of the training images are not used.',
        box_source,
        sum(len(m) > 0 for m in table.masks),
      )
      table = dataclasses.replace(table, masks=None)
  return preprocess.scale_boxes(table, data_config.get('box_scale', 1.0))


def _training_example_fn(
  data_config: ml_collections.ConfigDict,
  table: reading.SplitTable,
  num_channels: int,
  settings: augment.AugmentSettings,
  num_classes: int | None,
) -> Callable[..., dict[str, tf.Tensor]]:
  """``f(image, label, boxes, key, box_labels=, mask=)``: the row of a training example.

  The row of `preprocess.example_fn` (augmented with ``data.augment.enabled``), or with
  ``data.augment.on_device`` the augmentation's inputs
  (`preprocess.device_augment_example_fn`).

  Raises:
    ValueError: ``on_device`` for a dataset that supervises with segmentation masks.
  """
  if augment.on_device(data_config.augment):
    if table.masks is not None and any(len(m) for m in table.masks):
      raise ValueError(
        f'data.augment.on_device = {data_config.augment.on_device!r} augments on the'
        ' accelerator, which warps boxes only; this dataset supervises with segmentation'
        ' masks: set data.augment.on_device=False (the host warps them).'
      )
    most = lambda splits: max(1, int(np.max(np.diff(splits), initial=0)))
    device_example = preprocess.device_augment_example_fn(
      data_config,
      augment_settings=settings,
      max_boxes=most(table.box_splits),
      num_classes=num_classes,
      max_artefacts=1 if table.artefacts is None else most(table.artefacts[1]),
    )
    return lambda image, label, boxes, key, box_labels, mask, **artefact: device_example(
      image, label, boxes, key, box_labels=box_labels, **artefact
    )
  return preprocess.example_fn(
    data_config,
    num_channels,
    augment_settings=(settings if data_config.augment.enabled else None),
    num_classes=num_classes,
  )


def _training_stream(
  table: reading.SplitTable,
  decode: Callable[[tf.Tensor], tf.Tensor],
  make_example: Callable[..., dict[str, tf.Tensor]],
  index_of: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
  *,
  multilabel: bool,
  seed: int,
  batch_size: int,
  start_step: int,
  process_index: int,
  process_count: int,
) -> tf.data.Dataset:
  """This process's training batches from ``start_step`` on (module docstring: the order).

  Stream position ``p`` holds example ``index_of(p, sample_key)``, its image decoded by
  ``decode`` and made into a row by ``make_example`` with the augmentation's key; both keys
  are stateless streams of ``(seed, p)``.
  """
  images = tf.constant(table.images.tolist(), tf.string)
  labels = tf.constant(table.labels)
  box_values = tf.constant(table.box_values.reshape(-1, 4))
  box_splits = tf.constant(table.box_splits)
  box_labels = tf.constant(table.box_labels if multilabel else np.zeros(0, np.int64))
  masks = None if table.masks is None else tf.constant(table.masks.tolist(), tf.string)
  artefacts = None
  if table.artefacts is not None:
    artefacts = tuple(tf.constant(a) for a in table.artefacts)
  label_masks = None if table.label_masks is None else tf.constant(table.label_masks, tf.float32)
  seed = tf.constant(seed, tf.int64)
  global_batch = batch_size * process_count

  def example(count):
    # count-th example of this process -> stream position -> example index.
    step = start_step + count // batch_size
    position = step * global_batch + process_index * batch_size + count % batch_size
    # Independent stateless streams of this position for the sampler and
    # the augmentation.
    sample_key, augment_key = tf.unstack(
      tf.random.experimental.stateless_split(tf.stack([seed, position]), 2)
    )
    index = index_of(position, sample_key)
    boxes = box_values[box_splits[index] : box_splits[index + 1]]
    image = decode(images[index])
    classes = box_labels[box_splits[index] : box_splits[index + 1]] if multilabel else None
    mask = None if masks is None else masks[index]
    # Only datasets with artefact boxes make relevance maps: the others' rows stay as they were.
    artefact = {}
    if artefacts is not None:
      values, splits = artefacts
      artefact['artefact_boxes'] = values[splits[index] : splits[index + 1]]
    row = make_example(
      image, labels[index], boxes, augment_key, box_labels=classes, mask=mask, **artefact
    )
    # Only datasets with ignored labels carry a mask: the others' rows stay as they were.
    if label_masks is not None:
      row['label_mask'] = label_masks[index]
    return row

  ds = tf.data.Dataset.counter(dtype=tf.int64)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
  # Parallel batching copies the rows on several threads (the order is kept: deterministic).
  ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(reading.read_options())


def train_batches(
  data_config: ml_collections.ConfigDict,
  *,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  boxes_fn: Callable[[ml_collections.ConfigDict, Any, Any], Any] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite, shuffled training batches, deterministic given ``seed``.

  See the module docstring for the order, the sampling (``data.sampling``)
  and the augmentation (``data.augment``, when ``enabled``). The global batch
  of step k is the same for any ``process_count`` and ``start_step``; each
  process yields its ``batch_size`` rows.

  Args:
    data_config: the data config (`care_jax.config.default_data_config`).
    batch_size: examples per batch *of this process*.
    seed: shuffling seed (an int64).
    start_step: index of the first batch, to resume a run: the iterator
      yields batches ``start_step, start_step + 1, ...`` of the fresh sequence.
    process_index: this process, in ``[0, process_count)``.
    process_count: number of processes sharing each global batch.
    boxes_fn: ``f(data_config, builder, table) -> table`` replacing the
      manual training boxes when ``data.box_source != 'manual'`` (pass
      `care_jax.boxes.replace_boxes`; the data package does not import it).

  Returns:
    An iterator of batches (see the module docstring), without ``valid``.

  Raises:
    ValueError: for bad arguments, ``data.sampling`` or ``data.augment``
      values (the key is named).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  _check_process(process_index, process_count)
  settings = augment.augment_settings(data_config.augment)
  builder = registry.prepared_builder(data_config)
  table = _training_table(data_config, builder, boxes_fn)
  image_feature = builder.info.features['image']
  multilabel = reading.is_multilabel(builder)
  num_classes = len(reading.class_names_of(builder)) if multilabel else None
  make_example = _training_example_fn(
    data_config, table, image_feature.shape[-1], settings, num_classes
  )
  # The device path's host side decodes JPEGs at reduced size (the host path keeps the
  # full decode, so that CPU runs compute what they always did).
  decode = preprocess.decode_fn(
    image_feature,
    preprocess.image_size(data_config),
    reduced=augment.on_device(data_config.augment),
  )
  if multilabel and data_config.sampling != 'instance':
    raise ValueError(
      f'data.sampling = {data_config.sampling!r}: class-balanced sampling draws one class per'
      " example, which a multi-label image does not have; use data.sampling='instance' (and"
      " loss.name='weighted_ce' for positive-class weights)."
    )
  # Instance sampling reads only the number of examples.
  sampler_labels = np.zeros(len(table.images), np.int64) if multilabel else table.labels
  index_of = sampling.make_sampler(sampler_labels, sampling=data_config.sampling, seed=seed)
  ds = _training_stream(
    table,
    decode,
    make_example,
    index_of,
    multilabel=multilabel,
    seed=seed,
    batch_size=batch_size,
    start_step=start_step,
    process_index=process_index,
    process_count=process_count,
  )
  return iter(tfds.as_numpy(ds))


def _eval_row_fn(
  data_config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder
) -> Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]:
  """The row of a stored example of an eval split: the training keys, ``valid`` and the lesions.

  ``lesion_mask`` rasterises the dataset's ``lesion_boxes`` or ``lesion_box``
  when it has one, else its ``boxes`` (multi-label datasets: per class).
  """
  multilabel = reading.is_multilabel(builder)
  num_classes = len(reading.class_names_of(builder))
  make_example = preprocess.example_fn(
    data_config,
    builder.info.features['image'].shape[-1],
    num_classes=num_classes if multilabel else None,
  )
  size = preprocess.image_size(data_config)
  # Ground-truth boxes of every image when the dataset has them (the file
  # datasets' `lesion_boxes`, synthetic_lesions' one `lesion_box`), else the
  # annotation boxes (e.g. the rare classes' only).
  features = builder.info.features.keys()

  def multilabel_example(ex):
    # Every known box of each class, in every split (multi-label datasets
    # always have `lesion_boxes` with their `lesion_box_labels`).
    lesion_mask = preprocess.rasterize_boxes(
      ex['lesion_boxes'], size, classes=ex['lesion_box_labels'], num_classes=num_classes
    )
    row = make_example(
      ex['image'],
      reading.multi_hot(ex['labels'], num_classes),
      ex['boxes'],
      box_labels=ex['box_labels'],
    )
    return dict(
      row,
      valid=True,
      lesion_mask=lesion_mask,
      has_lesion_mask=tf.reduce_any(lesion_mask > 0, axis=(-2, -1)),
    )

  def lesion_boxes(ex):
    if 'lesion_boxes' in features:
      return ex['lesion_boxes']
    if 'lesion_box' in features:
      return ex['lesion_box'][None]
    return ex['boxes']

  def example(ex):
    # Eval has no geometric augmentation: boxes map to the resized image as is.
    lesion_mask = preprocess.rasterize_boxes(lesion_boxes(ex), size)
    mask = ex['mask'] if 'mask' in features else None
    return dict(
      make_example(ex['image'], ex['label'], ex['boxes'], mask=mask),
      valid=True,
      lesion_mask=lesion_mask,
      has_lesion_mask=tf.reduce_any(lesion_mask > 0),
    )

  return multilabel_example if multilabel else example


def eval_batches(
  data_config: ml_collections.ConfigDict,
  split: str,
  *,
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over ``split`` in a fixed order; the last batch is padded.

  Every example appears exactly once with ``valid=True``; the padding rows of
  the last batch have ``valid=False``, label 0, zero image and zero masks.
  Besides the training keys, batches hold ``lesion_mask`` and
  ``has_lesion_mask`` (see the module docstring): the dataset's
  ``lesion_boxes`` or ``lesion_box`` rasterised when it has one, else its
  ``boxes`` (never the segmentation masks, which feed ``mask`` as in
  training).
  With several processes, each yields ``batch_size`` rows of every global
  batch (example ``i`` goes to process ``i mod process_count``) and all
  processes yield the same number of batches.

  Raises:
    ValueError: when ``split`` does not exist (the splits are named).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  _check_process(process_index, process_count)
  builder = registry.prepared_builder(data_config)
  if split not in builder.info.splits:
    raise ValueError(f'split {split!r} does not exist; splits: {list(builder.info.splits)}.')
  row = _eval_row_fn(data_config, builder)
  ds = builder.as_dataset(split=split, shuffle_files=False, read_config=reading.read_config())
  ds = ds.map(row, num_parallel_calls=tf.data.AUTOTUNE)
  global_batch = batch_size * process_count
  num_padding = -builder.info.splits[split].num_examples % global_batch
  if num_padding:
    padding = {key: tf.zeros(spec.shape, spec.dtype) for key, spec in ds.element_spec.items()}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  if process_count > 1:
    ds = ds.shard(process_count, process_index)
  ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(reading.read_options())
  return iter(tfds.as_numpy(ds))


__getattr__ = _deprecated.getattr_of(__name__)
