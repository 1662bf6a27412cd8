"""Training-time data augmentation that moves lesion boxes with the image.

The paper's DA (rotation, horizontal and vertical flips, colour jitter) plus a
random resized crop, in TensorFlow for the tf.data pipeline. All randomness
is stateless, drawn from a ``seed`` tensor of shape [2] (the pipeline derives
it from ``(seed, stream position)``), so an example's augmentation is a pure
function of that seed: resumed and multi-process runs see the same batches.

**Geometry.** One affine map per example, in normalised coordinates ((x, y)
in [0, 1]^2, x to the right, y down, pixel centres at ``(j + 0.5) / W``),
from a point ``u`` of the output image to the point ``v`` of the input image
it shows::

    v = t + diag(w, h) F R(-theta) (u - 0.5)

read right to left as undoing, in reverse order, the forward steps *crop the
box of size (w, h) centred at t and resize it to the output, flip, rotate by
theta about the centre*. ``F = diag(+-1, +-1)`` flips each axis with
probability 1/2, ``theta ~ U(-rotation, rotation)`` degrees, and the crop is
torchvision's ``RandomResizedCrop`` in continuous coordinates: area fraction
``a ~ U(crop_scale)``, ``log(w / h) ~ U(log crop_ratio)``, ``w = sqrt(a r)``,
``h = sqrt(a / r)`` relative to the (square) input, the first of 10 draws
that fits, else torchvision's fallback (the whole image when 1 lies in
``crop_ratio``), centre uniform over the positions that keep the crop inside
the image. ``crop_scale=(1, 1)`` therefore disables the crop (and
``crop_ratio`` then does not matter when it contains 1).

The image is warped with this map (``ImageProjectiveTransformV3``, bilinear)
and the parts of the output that fall outside the input are filled with
`FILL_VALUE` (black, on the [0, 1] scale before normalisation): dermoscopy
images already have dark vignetted corners, and a constant fill, unlike
reflection, never puts a mirrored copy of the lesion outside its box.

The mask is rasterised at the output resolution *after* the transform, by
`warp_boxes_mask`: each output pixel centre is mapped through the same map
and tested against the input boxes. This is the exact rasterisation of the
rotated, flipped and cropped boxes by pixel centres (the half-open convention
of `care_jax.data.preprocess.rasterize_boxes`, which it equals for the identity
map), stays binary and costs a few comparisons per pixel; warping a rendered
mask instead would need a second interpolation and a threshold, and its edge
would depend on the interpolation.

**Segmentation masks** (an example's annotation mask instead of its boxes)
move with the image by `warp_mask`: the soft mask (values in [0, 1], already
resized to the image's resolution as the image is) is warped exactly as the
image (`warp_image`: the same map, bilinear, 0 outside the input) and then
thresholded: a pixel is lesion where the warped value is at least
`MASK_THRESHOLD` (0.5). So an image whose pixels encode the mask moves
identically, and the result is binary. Along a straight mask edge (pixel edges
of the input) this keeps an output pixel exactly when its mapped centre lies on
the lesion side of the edge, as `warp_boxes_mask` does for a box with that
edge; the two differ only where the mapped centre lies within half an input
pixel of two edges (bilinear interpolation rounds a box corner off: such a
pixel may drop out) and at exact ties on an edge (the threshold keeps the
pixel on both sides, the half-open box only on its min side).

**Colour jitter** (image only, after the geometry, on the [0, 1] scale,
clipped to [0, 1] after each step as torchvision does), with torchvision's
``ColorJitter`` formulas and factor ranges but a fixed order: brightness
``x b``, contrast ``c x + (1 - c) mean(gray(x))``, saturation
``s x + (1 - s) gray(x)``, hue ``x`` in HSV with ``H + delta mod 1``, where
``b ~ U(max(0, 1 - brightness), 1 + brightness)`` (likewise ``c``, ``s``),
``delta ~ U(-hue, hue)`` and ``gray`` the ITU-R 601 luma (0.2989, 0.587,
0.114). Saturation and hue apply to RGB images only.

Example::

  seed = tf.constant([0, 17], tf.int64)
  settings = augment_settings(config.data.augment)
  image01, mask = augment_example(image01, boxes, seed, size=224, settings=settings)
"""

from collections.abc import Mapping
import dataclasses
import math
from typing import Any

from care_jax import _deprecated
from care_jax.data._tensorflow import tf

# Value of the output pixels that show no input pixel, on the [0, 1] scale.
FILL_VALUE = 0.0
# A soft (resized or warped) segmentation mask is lesion where it is >= this.
MASK_THRESHOLD = 0.5
# Draws of the random resized crop before its fallback (torchvision's 10).
_CROP_ATTEMPTS = 10
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)

_JITTER_KEYS = ('brightness', 'contrast', 'saturation', 'hue')
_RANGE_KEYS = ('crop_scale', 'crop_ratio')


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
  """The settings of the augmentation: ``config.data.augment`` less its switches.

  Built once by `augment_settings` and handed down whole (`sample_augmentation`,
  `augment_example`); the module docstring says what each one does.

  Attributes:
    rotation: max |theta| in degrees.
    hflip: flip x with probability 1/2.
    vflip: flip y with probability 1/2.
    brightness: the brightness factor lies in [max(0, 1 - brightness), 1 + brightness].
    contrast: likewise, the contrast factor.
    saturation: likewise, the saturation factor.
    hue: the hue shift lies in [-hue, hue] (a fraction of the colour circle).
    crop_scale: (min, max) area fraction of the crop, in (0, 1].
    crop_ratio: (min, max) width / height of the crop.
  """

  rotation: float
  hflip: bool
  vflip: bool
  brightness: float
  contrast: float
  saturation: float
  hue: float
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]


def augment_settings(config: Mapping[str, Any]) -> AugmentSettings:
  """The `AugmentSettings` of a ``data.augment`` config.

  The config's values are checked by `care_jax.config.validate_augment`
  (as part of `care_jax.config.validate`); this only converts them.
  """
  config = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  kwargs = {key: float(config[key]) for key in ('rotation', *_JITTER_KEYS)}
  kwargs.update({key: config[key] for key in ('hflip', 'vflip')})
  kwargs.update({key: (float(config[key][0]), float(config[key][1])) for key in _RANGE_KEYS})
  return AugmentSettings(**kwargs)


def on_device(config: Mapping[str, Any]) -> bool:
  """Whether the train step applies the augmentation of a resolved ``data.augment`` config.

  True when ``enabled`` and ``on_device`` is True. The rule of 'auto' is the config's
  (`care_jax.config.augment_on_device`, a layer above the data package), and
  `care_jax.config.resolve_recipe` writes its answer into the config that training hands
  to the pipeline and to the train step, so the two agree; an unresolved 'auto' augments
  on the host.
  """
  return bool(config.get('enabled', False)) and config.get('on_device', False) is True


def _crop_size(
  seed: tf.Tensor, crop_scale: tuple[float, float], crop_ratio: tuple[float, float]
) -> tf.Tensor:
  """(w, h) of torchvision's RandomResizedCrop of a square, as fractions."""
  draws = tf.random.stateless_uniform([2, _CROP_ATTEMPTS], seed, dtype=tf.float32)
  area = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * draws[0]
  log_low, log_high = math.log(crop_ratio[0]), math.log(crop_ratio[1])
  ratio = tf.exp(log_low + (log_high - log_low) * draws[1])
  sizes = tf.stack([tf.sqrt(area * ratio), tf.sqrt(area / ratio)], axis=-1)
  fits = tf.reduce_all(sizes <= 1.0, axis=-1)
  # torchvision's fallback for an aspect ratio of 1: the widest crop whose
  # ratio lies in crop_ratio.
  fallback = tf.constant((min(1.0, crop_ratio[1]), min(1.0, 1.0 / crop_ratio[0])), tf.float32)
  first = tf.argmax(tf.cast(fits, tf.int32))
  return tf.where(tf.reduce_any(fits), sizes[first], fallback)


def sample_geometry(seed: tf.Tensor, settings: AugmentSettings) -> tf.Tensor:
  """Draws the affine map of one example (see the module docstring).

  Args:
    seed: int32/int64 [2], the stateless seed.
    settings: the augmentation's settings; the geometry reads ``rotation``,
      ``hflip``, ``vflip``, ``crop_scale`` and ``crop_ratio``.

  Returns:
    float32 [3, 3] ``A`` with ``(v, 1) = A (u, 1)``: output point u -> input
    point v, both normalised (x, y). The identity for ``rotation=0``, no
    flips and ``crop_scale=crop_ratio=(1, 1)``.
  """
  rotation = settings.rotation
  crop_seed, centre_seed, flip_seed, angle_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, 4)
  )
  size = _crop_size(crop_seed, settings.crop_scale, settings.crop_ratio)
  centre = size / 2 + (1 - size) * tf.random.stateless_uniform([2], centre_seed)
  flip_draws = tf.random.stateless_uniform([2], flip_seed) < 0.5
  flips = tf.where(flip_draws & tf.constant([settings.hflip, settings.vflip]), -1.0, 1.0)
  theta = tf.random.stateless_uniform([], angle_seed, minval=-rotation, maxval=rotation) * (
    math.pi / 180.0
  )
  cos, sin = tf.cos(theta), tf.sin(theta)
  # diag(w, h) F R(-theta), R(-theta) = [[cos, sin], [-sin, cos]].
  scale = size * flips
  linear = tf.stack(
    [tf.stack([scale[0] * cos, scale[0] * sin]), tf.stack([-scale[1] * sin, scale[1] * cos])]
  )
  offset = centre - tf.linalg.matvec(linear, tf.constant([0.5, 0.5]))
  top = tf.concat([linear, offset[:, None]], axis=1)
  return tf.concat([top, tf.constant([[0.0, 0.0, 1.0]])], axis=0)


def warp_image(
  image: tf.Tensor, geometry: tf.Tensor, *, size: int, fill_value: float = FILL_VALUE
) -> tf.Tensor:
  """Resamples ``image`` through ``geometry`` (bilinear, ``fill_value`` outside).

  Args:
    image: float32 [H, W, C].
    geometry: float32 [3, 3], output -> input map in normalised coordinates
      (`sample_geometry`).
    size: side S of the square output.
    fill_value: the output where it shows no input pixel (`FILL_VALUE`).

  Returns:
    float32 [S, S, C]: output pixel (i, j) shows the input at
    ``geometry @ ((j + 0.5) / S, (i + 0.5) / S, 1)``.
  """
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  # The op maps output pixel indices to input pixel indices (centres at
  # integers): compose index -> normalised -> geometry -> index.
  to_unit = tf.constant(
    [[1 / size, 0, 0.5 / size], [0, 1 / size, 0.5 / size], [0, 0, 1]], tf.float32
  )
  to_index = tf.stack(
    [tf.stack([width, 0.0, -0.5]), tf.stack([0.0, height, -0.5]), tf.constant([0.0, 0.0, 1.0])]
  )
  matrix = to_index @ geometry @ to_unit
  transform = tf.reshape(matrix, [9])[:8] / matrix[2, 2]
  warped = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=transform[None],
    output_shape=tf.constant([size, size]),
    fill_value=tf.constant(fill_value, tf.float32),
    interpolation='BILINEAR',
    fill_mode='CONSTANT',
  )[0]
  warped.set_shape([size, size, image.shape[-1]])
  return warped


def threshold_mask(mask: tf.Tensor) -> tf.Tensor:
  """float32 binary mask: 1 where the soft ``mask`` is >= `MASK_THRESHOLD`."""
  return tf.cast(mask >= MASK_THRESHOLD, tf.float32)


def warp_mask(mask: tf.Tensor, geometry: tf.Tensor, *, size: int) -> tf.Tensor:
  """A segmentation mask as it appears after the warp by ``geometry``.

  The warp of `warp_image` (bilinear, 0 outside the input), then
  `threshold_mask` (see the module docstring for how its edges compare with
  `warp_boxes_mask`).

  Args:
    mask: float32 [H, W] soft mask in [0, 1] at the input's resolution.
    geometry: float32 [3, 3] (`sample_geometry`).
    size: side S of the output.

  Returns:
    float32 [S, S] binary mask.
  """
  mask = tf.convert_to_tensor(mask, tf.float32)
  return threshold_mask(warp_image(mask[..., None], geometry, size=size, fill_value=0.0)[..., 0])


def union_by_class(inside: tf.Tensor, classes: tf.Tensor, num_classes: int) -> tf.Tensor:
  """Per-class unions of box masks: [N, H, W] bool and [N] classes -> uint8 [K, H, W].

  Slot k is 1 where at least one box of class k covers the pixel (all 0 for a
  class without boxes, and for N = 0).
  """
  one_hot = tf.one_hot(tf.cast(classes, tf.int32), num_classes, dtype=tf.float32)
  covered = tf.einsum('nk,nhw->khw', one_hot, tf.cast(inside, tf.float32))
  return tf.cast(covered > 0, tf.uint8)


def relevance_map(mask: tf.Tensor, artefact: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """The three-valued relevance of an example from its lesion mask and artefact mask.

  ``r = -1`` on an artefact (the irrelevant region wins where it overlaps a lesion box); else,
  where the example (per class: multi-label) has a lesion mask, ``+1`` inside it and ``-1``
  outside (CARE's M_in and M_out); else ``0`` (unknown). Both masks come from the same
  geometry, so the relevance moves with the image.

  Args:
    mask: the lesion mask, float32 [S, S] or uint8 [K, S, S] (binary).
    artefact: float32 [S, S], the union of the artefact boxes (binary).

  Returns:
    (relevance float32 [S, S] or [K, S, S], has_mask bool [] or [K]: relevance not all 0).
  """
  mask = tf.cast(mask, tf.float32)
  lesion = tf.reduce_any(mask > 0, axis=(-2, -1), keepdims=True)
  relevance = tf.where(lesion, 2.0 * mask - 1.0, tf.zeros_like(mask))
  relevance = tf.where(artefact > 0, -1.0, relevance)
  return relevance, tf.reduce_any(relevance != 0, axis=(-2, -1))


def warp_boxes_mask(
  boxes: tf.Tensor,
  geometry: tf.Tensor,
  *,
  size: int,
  classes: tf.Tensor | None = None,
  num_classes: int | None = None,
) -> tf.Tensor:
  """Rasterises the boxes as they appear after the warp by ``geometry``.

  Output pixel (i, j) is 1 when its centre, mapped through ``geometry``, lies
  in at least one half-open box ``[ymin, ymax) x [xmin, xmax)``, as in
  `care_jax.data.preprocess.rasterize_boxes`: ``ymin <= v_y < ymax`` and
  ``xmin <= v_x < xmax`` with ``v = geometry @ ((j + 0.5) / S, (i + 0.5) /
  S, 1)``. The test runs in output pixel units (``ymin S <= S v_y < ymax
  S``, with ``S v`` computed from the centres ``i + 0.5``, ``j + 0.5``), so
  for the identity map it is `rasterize_boxes` to the bit, ties on an edge
  included.

  Args:
    boxes: float32 [N, 4] normalised (ymin, xmin, ymax, xmax) of the input.
    geometry: float32 [3, 3] (`sample_geometry`).
    size: side S of the output.
    classes: optional int [N], the class of each box (multi-label data), with
      ``num_classes`` K: then one mask per class (`union_by_class`).

  Returns:
    float32 [S, S] binary mask (all 0 for N = 0); with ``classes``, uint8
    [K, S, S].
  """
  # Pixel units: S v w = A[:2] (j + 0.5, i + 0.5, S) and w = A[2] (u, 1); the
  # identity gives S v = the centres exactly, as rasterize_boxes compares.
  centres = tf.range(size, dtype=tf.float32) + 0.5
  x, y = centres[None, :], centres[:, None]  # Broadcast to [S, S].
  mapped = lambda r: geometry[r, 0] * x + geometry[r, 1] * y + geometry[r, 2] * size
  weight = geometry[2, 0] * (x / size) + geometry[2, 1] * (y / size) + geometry[2, 2]
  vx, vy = mapped(0) / weight, mapped(1) / weight
  boxes = tf.reshape(tf.convert_to_tensor(boxes, tf.float32), [-1, 4])
  corner = lambda k: boxes[:, k, None, None] * size
  inside = (corner(0) <= vy) & (vy < corner(2)) & (corner(1) <= vx) & (vx < corner(3))
  if classes is not None:
    return union_by_class(inside, classes, num_classes)
  return tf.cast(tf.reduce_any(inside, axis=0), tf.float32)


def sample_color_factors(seed: tf.Tensor, settings: AugmentSettings) -> tf.Tensor:
  """Draws float32 [4] (b, c, s, delta) of `adjust_color` (module docstring).

  The draws read ``settings.brightness``, ``contrast``, ``saturation`` and ``hue``.
  """
  brightness, contrast = settings.brightness, settings.contrast
  saturation, hue = settings.saturation, settings.hue
  low = tf.constant(
    [max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue], tf.float32
  )
  high = tf.constant([1 + brightness, 1 + contrast, 1 + saturation, hue], tf.float32)
  return low + (high - low) * tf.random.stateless_uniform([4], seed)


def adjust_color(image: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation, hue by ``factors`` (b, c, s, delta).

  Args:
    image: float32 [H, W, C] on the [0, 1] scale, C = 1 or 3.
    factors: float32 [4]; (1, 1, 1, 0) leaves the image unchanged.

  Returns:
    float32 [H, W, C] in [0, 1]. Saturation and hue change RGB images only.
  """
  blend = lambda x, other, f: tf.clip_by_value(f * x + (1 - f) * other, 0, 1)
  rgb = image.shape[-1] == 3
  gray = lambda x: tf.reduce_sum(x * tf.constant(_LUMA), axis=-1, keepdims=True) if rgb else x
  image = tf.clip_by_value(image * factors[0], 0, 1)
  image = blend(image, tf.reduce_mean(gray(image)), factors[1])
  if rgb:
    image = blend(image, gray(image), factors[2])
    image = tf.clip_by_value(tf.image.adjust_hue(image, factors[3]), 0, 1)
  return image


def sample_augmentation(seed: tf.Tensor, settings: AugmentSettings) -> tuple[tf.Tensor, tf.Tensor]:
  """The random draws of one example's augmentation: (geometry [3, 3], colour factors [4]).

  From the two halves of the stateless ``seed`` (int [2]): `sample_geometry`
  and `sample_color_factors` with ``settings`` (`augment_settings`). What
  `augment_example` applies on the host, and what ``data.augment.on_device``
  hands the accelerator to apply (`care_jax.training.device_augment`).
  """
  geometry_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  geometry = sample_geometry(geometry_seed, settings)
  factors = sample_color_factors(color_seed, settings)
  return geometry, factors


def augment_example(
  image: tf.Tensor,
  boxes: tf.Tensor,
  seed: tf.Tensor,
  *,
  size: int,
  settings: AugmentSettings,
  classes: tf.Tensor | None = None,
  num_classes: int | None = None,
  mask: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Augments one example: warped image, colour jitter, mask of the boxes.

  Args:
    image: float32 [H, W, C] on the [0, 1] scale.
    boxes: float32 [N, 4] normalised (ymin, xmin, ymax, xmax); N may be 0.
    seed: int32/int64 [2] stateless seed of this example.
    size: side S of the output.
    settings: the augmentation's settings (`augment_settings`).
    classes, num_classes: the class of each box and K, for one mask per class
      (multi-label data; `warp_boxes_mask`).
    mask: optional float32 [H, W] soft segmentation mask in [0, 1] of the
      image: the returned mask is then its warp by the image's geometry
      (`warp_mask`) and ``boxes`` are not used (not with ``classes``).

  Returns:
    (image float32 [S, S, C] in [0, 1], mask float32 [S, S] binary, or uint8
    [K, S, S] with ``classes``).
  """
  if mask is not None and classes is not None:
    raise ValueError('augment_example: a segmentation mask has no per-class form (classes).')
  geometry, factors = sample_augmentation(seed, settings)
  image = adjust_color(warp_image(image, geometry, size=size), factors)
  if mask is not None:
    return image, warp_mask(mask, geometry, size=size)
  mask = warp_boxes_mask(boxes, geometry, size=size, classes=classes, num_classes=num_classes)
  return image, mask


__getattr__ = _deprecated.getattr_of(__name__)
