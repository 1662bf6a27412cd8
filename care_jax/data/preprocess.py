"""From a stored example to the row of a batch: resize, normalise, rasterise, augment.

The rows follow the batch contract of `care_jax.data.pipeline` (its module docstring): every
path resizes the image the same way (bilinear, antialiased), normalises it with ``data.mean``
and ``data.std`` (`normalisation`) and makes the mask from the example's boxes
(`rasterize_boxes`) or its segmentation mask; with augmentation, `care_jax.data.augment`
warps them first. `device_augment_example_fn` makes the rows of ``data.augment.on_device``
instead.
"""

from collections.abc import Callable
import dataclasses

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from care_jax.data import augment
from care_jax.data import reading
from care_jax.data._tensorflow import tf


def normalisation(
  data_config: ml_collections.ConfigDict, num_channels: int
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (mean, std), each float32 [C], checked against the channels."""
  stats = []
  for key in ('mean', 'std'):
    value = np.asarray(data_config[key], np.float32).reshape(-1)
    if value.shape[0] not in (1, num_channels):
      raise ValueError(
        f'data.{key} must have 1 or {num_channels} (channels) values, got {tuple(value.tolist())}.'
      )
    stats.append(np.broadcast_to(value, (num_channels,)))
  if np.any(stats[1] <= 0):
    raise ValueError(f'data.std must be positive, got {tuple(stats[1])}.')
  return stats[0], stats[1]


def image_size(data_config: ml_collections.ConfigDict) -> int:
  """``data.image_size``, S: the side of the images the pipelines yield (checked)."""
  size = data_config.image_size
  if not isinstance(size, int) or size < 1:
    raise ValueError(f'data.image_size must be a positive int, got {size!r}.')
  return size


def rasterize_boxes(
  boxes: tf.Tensor,
  size: int | tuple[int, int],
  *,
  classes: tf.Tensor | None = None,
  num_classes: int | None = None,
) -> tf.Tensor:
  """Rasterises the union of normalised boxes into a binary mask.

  Pixel ``(i, j)`` of an ``H x W`` mask is inside box ``(ymin, xmin, ymax,
  xmax)`` (the tfds convention, coordinates in [0, 1]) when its centre lies
  in the half-open box ``[ymin, ymax) x [xmin, xmax)``: ``ymin H <= i + 0.5 <
  ymax H`` and ``xmin W <= j + 0.5 < xmax W``. So an edge through a pixel
  centre keeps that pixel at ``min`` and drops it at ``max``, boxes that tile
  the image cover every pixel exactly once, and a box between two pixel
  centres (narrower than a pixel) covers none. Apply it after any geometric
  augmentation, to the transformed boxes.

  Example: ``rasterize_boxes([[0.0, 0.0, 0.5, 0.25]], 4)`` is 1 on rows 0-1
  of column 0 only (row centres 0.5, 1.5 < 2; column centre 0.5 < 1).

  Args:
    boxes: [N, 4] normalised (ymin, xmin, ymax, xmax); N may be 0.
    size: H = W, or (H, W).
    classes: optional int [N], the class of each box (multi-label data), with
      ``num_classes`` K: one mask per class (`augment.union_by_class`).

  Returns:
    float32 [H, W], 1 inside at least one box, 0 elsewhere (all 0 for N = 0);
    with ``classes``, uint8 [K, H, W].
  """
  height, width = (size, size) if isinstance(size, int) else size
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  if boxes.shape.rank != 2 or boxes.shape[-1] != 4:
    raise ValueError(f'boxes must have shape [N, 4], got {boxes.shape}.')
  rows = tf.range(height, dtype=tf.float32) + 0.5
  cols = tf.range(width, dtype=tf.float32) + 0.5
  in_rows = (boxes[:, 0:1] * height <= rows) & (rows < boxes[:, 2:3] * height)
  in_cols = (boxes[:, 1:2] * width <= cols) & (cols < boxes[:, 3:4] * width)
  inside = in_rows[:, :, None] & in_cols[:, None, :]
  if classes is not None:
    return augment.union_by_class(inside, classes, num_classes)
  return tf.cast(tf.reduce_any(inside, axis=0), tf.float32)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """float32 [S, S, C]: ``image`` resized as every pipeline path resizes it."""
  image = tf.cast(image, tf.float32)
  if tuple(image.shape[:2]) != (size, size):
    # Antialiased, so that downsizing averages instead of aliasing.
    image = tf.image.resize(image, (size, size), 'bilinear', antialias=True)
  return image


# The scales libjpeg decodes at directly (its DCT scaling): 1/8, 1/4, 1/2.
JPEG_RATIOS = (8, 4, 2)


def decode_fn(
  image_feature: tfds.features.Image, size: int, *, reduced: bool
) -> Callable[[tf.Tensor], tf.Tensor]:
  """Returns f(encoded image, a tf.string scalar): the stored image decoded.

  Without ``reduced`` (or for a PNG dataset), f is the feature's own decode: uint8
  [H, W, C]. With it (the host side of ``data.augment.on_device``), f returns the image
  already resized to ``size``, float32 [S, S, C] on the 0..255 scale: a JPEG whose sides are
  both at least ``r`` S is decoded at 1/r of its size, for the largest ``r`` in `JPEG_RATIOS`
  (libjpeg's DCT scaling, ``tf.io.decode_jpeg(ratio=r)``, which averages r x r blocks as a
  downsizing does), then resized bilinearly without antialiasing (what is left to shrink is
  less than r); a smaller one is decoded whole and resized as `example_fn` resizes
  (antialiased). A 600x450 JPEG for 224 px training thus decodes at 300x225: about 4x fewer
  pixels to decode and a resize at a third of the cost. The result differs slightly from the
  full decode resized.
  """
  if not reduced or image_feature.encoding_format != 'jpeg':
    return image_feature.decode_example
  channels = image_feature.shape[-1]

  def at_ratio(encoded, r):
    image = tf.io.decode_jpeg(encoded, channels=channels, ratio=r)
    return tf.image.resize(image, (size, size), 'bilinear', antialias=False)

  def decode(encoded):
    shape = tf.image.extract_jpeg_shape(encoded)
    smaller = tf.minimum(shape[0], shape[1])
    cases = [(smaller >= r * size, lambda r=r: at_ratio(encoded, r)) for r in JPEG_RATIOS]
    whole = lambda: _resize(image_feature.decode_example(encoded), size)
    image = tf.case(cases, default=whole, exclusive=False)
    return tf.ensure_shape(image, [size, size, channels])

  return decode


def example_fn(
  data_config: ml_collections.ConfigDict,
  num_channels: int,
  *,
  augment_settings: augment.AugmentSettings | None = None,
  num_classes: int | None = None,
) -> Callable[..., dict[str, tf.Tensor]]:
  """Returns f(uint8 image [H, W, C], label, boxes [N, 4], key=None, box_labels=None, mask=None).

  f returns the row. With ``augment_settings`` (`augment.augment_settings`), f
  augments the resized image (`augment.augment_example`) with the stateless
  seed ``key`` (int [2]) and rasterises the mask after the transform;
  otherwise ``key`` is ignored. With ``num_classes`` K (a multi-label
  dataset), ``label`` is the float32 [K] multi-hot vector, ``box_labels`` int
  [N] the class of each box, and the row's mask is uint8 [K, S, S],
  ``has_mask`` bool [K]. ``mask`` (multi-class only): a tf.string scalar, the
  example's encoded annotation mask (the ``mask`` feature: a single-channel
  PNG at the image's size, or empty for none); where it is not empty, the
  row's mask is made from it (the module docstring of `care_jax.data.pipeline`)
  instead of from ``boxes``. ``artefact_boxes`` [A, 4] (keyword; datasets with artefact
  boxes): the row also holds ``relevance`` (`_with_relevance`).
  """
  size = image_size(data_config)
  mean, std = normalisation(data_config, num_channels)
  per_class = {} if num_classes is None else {'num_classes': num_classes}

  def soft_mask(encoded):
    # The mask resized exactly as the image, on [0, 1]: float32 [S, S].
    return _resize(tf.io.decode_png(encoded, channels=1), size)[..., 0] / 255.0

  def example(image, label, boxes, key=None, box_labels=None, mask=None):
    if mask is not None and num_classes is not None:
      raise ValueError('Segmentation masks are not supported for multi-label data.')
    image = _resize(image, size)
    classes = {} if num_classes is None else {'classes': box_labels, **per_class}
    given = None if mask is None else tf.strings.length(mask) > 0
    if augment_settings is None:
      image = (image / 255.0 - mean) / std
      if given is None:
        mask = rasterize_boxes(boxes, size, **classes)
      else:
        encoded = mask
        mask = tf.cond(
          given,
          lambda: augment.threshold_mask(soft_mask(encoded)),
          lambda: rasterize_boxes(boxes, size),
        )
    else:
      augmented = lambda **m: augment.augment_example(
        image / 255.0, boxes, key, size=size, settings=augment_settings, **classes, **m
      )
      if given is None:
        image, mask = augmented()
      else:
        encoded = mask
        # The geometry and colours depend on the key only: both branches
        # transform the image alike.
        image, mask = tf.cond(given, lambda: augmented(mask=soft_mask(encoded)), augmented)
      image = (image - mean) / std
    # A box may cover no pixel centre (a tiny box, or one a crop moved out of
    # view): then there is nothing to supervise, on both paths.
    has_mask = tf.reduce_any(mask > 0, axis=(-2, -1))
    label = tf.cast(label, tf.int32) if num_classes is None else tf.cast(label, tf.float32)
    return dict(image=image, label=label, mask=mask, has_mask=has_mask)

  return _with_relevance(example, size, augment_settings)


def _with_relevance(
  example: Callable[..., dict[str, tf.Tensor]],
  size: int,
  augment_settings: augment.AugmentSettings | None,
) -> Callable[..., dict[str, tf.Tensor]]:
  """``example`` that, given ``artefact_boxes`` [A, 4], adds the row's ``relevance``.

  The artefact boxes are rasterised after the example's own geometry (the draw of ``key``,
  as `augment.augment_example` makes it), and `augment.relevance_map` combines them with the
  row's lesion mask; ``has_mask`` becomes "relevance not all 0". Without ``artefact_boxes``
  the row is ``example``'s as it is.
  """

  def with_relevance(image, label, boxes, key=None, box_labels=None, mask=None, **artefact):
    row = example(image, label, boxes, key, box_labels=box_labels, mask=mask)
    if artefact.get('artefact_boxes') is None:
      return row
    artefacts = tf.reshape(tf.cast(artefact['artefact_boxes'], tf.float32), [-1, 4])
    if augment_settings is None:
      artefact_mask = rasterize_boxes(artefacts, size)
    else:
      geometry, _ = augment.sample_augmentation(key, augment_settings)
      artefact_mask = augment.warp_boxes_mask(artefacts, geometry, size=size)
    relevance, has_mask = augment.relevance_map(row['mask'], artefact_mask)
    return dict(row, relevance=relevance, has_mask=has_mask)

  return with_relevance


def device_augment_example_fn(
  data_config: ml_collections.ConfigDict,
  *,
  augment_settings: augment.AugmentSettings,
  max_boxes: int,
  num_classes: int | None = None,
  max_artefacts: int = 1,
) -> Callable[..., dict[str, tf.Tensor]]:
  """Returns f(uint8 image [H, W, C], label, boxes [N, 4], key, box_labels=None,
  artefact_boxes=None) -> row of the inputs of the on-device augmentation
  (``data.augment.on_device``).

  The row holds ``image`` uint8 [S, S, C] (resized as `example_fn` resizes, rounded; an
  image the pipeline hands over at S x S already, from `decode_fn`'s reduced decode, only
  rounded),
  ``label``, ``geometry`` float32 [3, 3] and ``color`` float32 [4] (`augment.
  sample_augmentation` of ``key``: the draws `augment_example` would apply), ``boxes``
  float32 [max_boxes, 4] zero-padded with ``box_count`` int32 the real ones first, and for
  multi-label data ``box_labels`` int32 [max_boxes]; given ``artefact_boxes`` [A, 4], also
  ``artefact_boxes`` float32 [max_artefacts, 4] zero-padded and ``artefact_count`` int32 (the
  step makes ``relevance`` from them). The train step applies them
  (`care_jax.training.device_augment.augment_batch`) and normalises.
  """
  size = image_size(data_config)

  def example(image, label, boxes, key, box_labels=None, artefact_boxes=None):
    image = _resize(image, size)
    geometry, color = augment.sample_augmentation(key, augment_settings)
    count = tf.shape(boxes)[0]
    padding = [[0, max_boxes - count], [0, 0]]
    row = dict(
      image=tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
      label=tf.cast(label, tf.int32) if num_classes is None else tf.cast(label, tf.float32),
      geometry=geometry,
      color=color,
      boxes=tf.ensure_shape(tf.pad(tf.cast(boxes, tf.float32), padding), [max_boxes, 4]),
      box_count=tf.cast(count, tf.int32),
    )
    if num_classes is not None:
      classes = tf.pad(tf.cast(box_labels, tf.int32), padding[:1])
      row['box_labels'] = tf.ensure_shape(classes, [max_boxes])
    if artefact_boxes is not None:
      artefacts = tf.reshape(tf.cast(artefact_boxes, tf.float32), [-1, 4])
      extra = [[0, max_artefacts - tf.shape(artefacts)[0]], [0, 0]]
      row['artefact_boxes'] = tf.ensure_shape(tf.pad(artefacts, extra), [max_artefacts, 4])
      row['artefact_count'] = tf.shape(artefacts, out_type=tf.int32)[0]
    return row

  return example


def scale_boxes(table: reading.SplitTable, scale: float) -> reading.SplitTable:
  """The table with every box scaled by ``scale`` about its centre, clipped."""
  if not (isinstance(scale, (int, float)) and scale > 0):
    raise ValueError(f'data.box_scale must be a positive number, got {scale!r}.')
  if scale == 1.0 or not len(table.box_values):
    return table
  boxes = table.box_values
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
  scaled = np.concatenate([centre - half, centre + half], axis=1)
  return dataclasses.replace(table, box_values=np.clip(scaled, 0.0, 1.0).astype(np.float32))
