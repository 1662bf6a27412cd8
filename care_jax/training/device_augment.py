"""The training augmentation on the accelerator, inside the jitted step.

The same maps as `care_jax.data.augment` (its module docstring defines the
geometry, the mask of the mapped pixel centres and the colour jitter), written
in JAX for a batch, so that the host only decodes and resizes: the pipeline
then ships uint8 images and a few numbers per example, and the step warps,
jitters, normalises and rasterises the masks itself. No TensorFlow here: the
inputs are drawn by the pipeline (`augment.sample_augmentation` with the run's
`augment.AugmentSettings`: `augment.sample_geometry` and
`augment.sample_color_factors` of the seeds ``augment_example`` splits), so
given them the device path computes ``augment_example``'s output.

The augmentation inputs of a training batch (``data.augment.on_device``):

==============  ===========================  ===================================
key             dtype, shape                 content
==============  ===========================  ===================================
``image``       uint8 [B, S, S, C]           the stored image resized to S x S
                                             as the pipeline resizes it, rounded
``geometry``    float32 [B, 3, 3]            output -> input map, normalised
                                             coordinates (`sample_geometry`)
``color``       float32 [B, 4]               (b, c, s, hue delta)
                                             (`sample_color_factors`)
``boxes``       float32 [B, N, 4]            normalised (ymin, xmin, ymax,
                                             xmax), padded to a fixed N
``box_count``   int32 [B]                    the real boxes come first
``box_labels``  int32 [B, N]                 multi-label data: each box's class
``artefact_``   float32 [B, A, 4], int32     datasets with artefact boxes only:
``boxes``,      [B]                          the irrelevant regions, padded as
``artefact_``                                ``boxes``; the step adds
``count``                                    ``relevance`` (`relevance_map`)
``label_mask``  float32 [B, K]               datasets with ignored labels only
                                             (CheXpert's U-Ignore): 1 where a
                                             label counts in the loss; passed
                                             through unchanged
==============  ===========================  ===================================

`augment_batch` turns them into the batch contract of
`care_jax.data.pipeline` (normalised float32 ``image``, ``mask``,
``has_mask``). It equals the CPU path up to the uint8 rounding of the resized
image (the CPU path warps the float resize): images to float32 rounding
(``tests/training/device_augment_test.py``: below 1e-5 on the [0, 1] scale), masks bit
for bit on the CPU. Floating-point contraction (fused multiply-adds, which
XLA's GPU compiler may form) can move a mapped pixel centre by one rounding
step, so on an accelerator a pixel whose centre lies exactly on a box edge
may fall on the other side: a measure-zero set, never more than the edge
pixels.

Example::

  batch = augment_batch(batch, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
  batch['image'].dtype == jnp.float32  # and batch['mask'], batch['has_mask']
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

# The value of output pixels that show no input pixel (`augment.FILL_VALUE`).
FILL_VALUE = 0.0
# ITU-R 601 luma weights (torchvision's rgb_to_grayscale; `augment._LUMA`).
LUMA = (0.2989, 0.587, 0.114)
# The keys of the augmentation inputs, dropped by `augment_batch`.
AUGMENT_KEYS = (
  'geometry',
  'color',
  'boxes',
  'box_count',
  'box_labels',
  'artefact_boxes',
  'artefact_count',
)


def _index_transform(geometry: jax.Array, *, height: int, width: int, size: int) -> jax.Array:
  """[B, 8] projective transform of output pixel indices to input pixel indices.

  ``to_index @ geometry @ to_unit`` of `augment.warp_image` (normalised
  coordinates with pixel centres at ``(j + 0.5) / S``), written out as
  products and sums instead of a matmul: the zeros of the two outer matrices
  are exact, and a float32 matmul may run at reduced precision (TF32) on a GPU.
  """
  g = geometry.astype(jnp.float32)
  # to_index = [[W, 0, -0.5], [0, H, -0.5], [0, 0, 1]].
  t = jnp.stack(
    [
      jnp.float32(width) * g[:, 0] - 0.5 * g[:, 2],
      jnp.float32(height) * g[:, 1] - 0.5 * g[:, 2],
      g[:, 2],
    ],
    axis=1,
  )
  # to_unit = [[1/S, 0, 0.5/S], [0, 1/S, 0.5/S], [0, 0, 1]], rounded to float32 as TF does.
  unit, half = jnp.float32(1 / size), jnp.float32(0.5 / size)
  m = jnp.stack(
    [t[:, :, 0] * unit, t[:, :, 1] * unit, t[:, :, 0] * half + t[:, :, 1] * half + t[:, :, 2]],
    axis=2,
  )
  return m.reshape(-1, 9)[:, :8] / m[:, 2, 2, None]


def warp_images(
  images01: jax.Array, geometry: jax.Array, *, size: int, fill_value: float = FILL_VALUE
) -> jax.Array:
  """Resamples each image through its geometry: `augment.warp_image` for a batch.

  TensorFlow's ``ImageProjectiveTransformV3`` with ``BILINEAR`` and
  ``fill_mode='CONSTANT'``: output pixel (i, j) samples the input at the
  mapped index ``(x, y)`` (pixel centres at integers) by the four taps around
  it, and a tap outside the input reads ``fill_value``; so a sample point
  within one pixel of the border blends the image with the fill, and one
  farther out is the fill.

  Args:
    images01: float32 [B, H, W, C], on the [0, 1] scale.
    geometry: float32 [B, 3, 3], output -> input map in normalised
      coordinates (`augment.sample_geometry`).
    size: side S of the square output.
    fill_value: what taps outside the input read.

  Returns:
    float32 [B, S, S, C]: output pixel (i, j) shows the input at
    ``geometry @ ((j + 0.5) / S, (i + 0.5) / S, 1)``.
  """
  images01 = jnp.asarray(images01, jnp.float32)
  batch, height, width, channels = images01.shape
  t = _index_transform(geometry, height=height, width=width, size=size)
  t = t[:, :, None, None]  # Broadcast against [B, S, S].
  out = jnp.arange(size, dtype=jnp.float32)
  ox, oy = out[None, None, :], out[None, :, None]
  projection = t[:, 6] * ox + t[:, 7] * oy + 1.0
  x = (t[:, 0] * ox + t[:, 1] * oy + t[:, 2]) / projection
  y = (t[:, 3] * ox + t[:, 4] * oy + t[:, 5]) / projection
  x0, y0 = jnp.floor(x), jnp.floor(y)
  x1, y1 = x0 + 1, y0 + 1
  flat = images01.reshape(batch, height * width, channels)

  def tap(yi, xi):
    inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
    yi = jnp.clip(yi, 0, height - 1).astype(jnp.int32)
    xi = jnp.clip(xi, 0, width - 1).astype(jnp.int32)
    index = (yi * width + xi).reshape(batch, size * size, 1)
    value = jnp.take_along_axis(flat, index, axis=1, mode='clip')
    value = value.reshape(batch, size, size, channels)
    return jnp.where(inside[..., None], value, jnp.float32(fill_value))

  # TF's order of operations: along x on both rows, then along y.
  wx0, wx1 = (x1 - x)[..., None], (x - x0)[..., None]
  top = wx0 * tap(y0, x0) + wx1 * tap(y0, x1)
  bottom = wx0 * tap(y1, x0) + wx1 * tap(y1, x1)
  warped = (y1 - y)[..., None] * top + (y - y0)[..., None] * bottom
  # TF returns the fill value where the projection is 0 (a point at infinity).
  return jnp.where((projection == 0)[..., None], jnp.float32(fill_value), warped)


def boxes_masks(
  boxes: jax.Array,
  box_count: jax.Array,
  geometry: jax.Array,
  *,
  size: int,
  box_labels: jax.Array | None = None,
  num_classes: int | None = None,
) -> jax.Array:
  """The boxes rasterised after the warp: `augment.warp_boxes_mask` for a batch.

  Output pixel (i, j) is 1 when its centre, mapped through the geometry, lies
  in a half-open box ``[ymin, ymax) x [xmin, xmax)``; the test runs in output
  pixel units with the arithmetic of `augment.warp_boxes_mask`, so the masks
  equal its masks bit for bit (on the CPU; see the module docstring).

  Args:
    boxes: float32 [B, N, 4] normalised (ymin, xmin, ymax, xmax) of the input.
    box_count: int [B]: boxes ``[:box_count]`` of each example are real, the
      rest padding (ignored).
    geometry: float32 [B, 3, 3] (`augment.sample_geometry`).
    size: side S of the output.
    box_labels: optional int [B, N], the class of each box (multi-label data),
      with ``num_classes`` K: one mask per class (`augment.union_by_class`).
    num_classes: K, with ``box_labels``.

  Returns:
    float32 [B, S, S] binary union of the boxes (all 0 without a box); with
    ``box_labels``, uint8 [B, K, S, S].
  """
  if (box_labels is None) != (num_classes is None):
    raise ValueError('boxes_masks: give box_labels and num_classes together.')
  g = jnp.asarray(geometry, jnp.float32)[:, :, :, None, None]  # Against [B, S, S].
  boxes = jnp.asarray(boxes, jnp.float32)
  centres = jnp.arange(size, dtype=jnp.float32) + 0.5
  x, y = centres[None, None, :], centres[None, :, None]
  side = jnp.float32(size)
  mapped = lambda r: g[:, r, 0] * x + g[:, r, 1] * y + g[:, r, 2] * side
  weight = g[:, 2, 0] * (x / side) + g[:, 2, 1] * (y / side) + g[:, 2, 2]
  vx, vy = (mapped(0) / weight)[:, None], (mapped(1) / weight)[:, None]  # [B, 1, S, S]
  corner = lambda k: (boxes[:, :, k] * side)[:, :, None, None]  # [B, N, 1, 1]
  inside = (corner(0) <= vy) & (vy < corner(2)) & (corner(1) <= vx) & (vx < corner(3))
  real = jnp.arange(boxes.shape[1]) < jnp.asarray(box_count)[:, None]
  inside = inside & real[:, :, None, None]
  if box_labels is None:
    return jnp.any(inside, axis=1).astype(jnp.float32)
  one_hot = jax.nn.one_hot(box_labels, num_classes, dtype=jnp.float32)
  # Counts of small integers: exact at any matmul precision.
  covered = jnp.einsum('bnk,bnhw->bkhw', one_hot, inside.astype(jnp.float32))
  return (covered > 0).astype(jnp.uint8)


def _gray(images: jax.Array) -> jax.Array:
  """ITU-R 601 luma, [..., 3] -> [..., 1], summed in TF's order."""
  return (
    images[..., 0:1] * jnp.float32(LUMA[0])
    + images[..., 1:2] * jnp.float32(LUMA[1])
    + images[..., 2:3] * jnp.float32(LUMA[2])
  )


def _rgb_to_hv(r, g, b):
  """(h in [0, 6), v_min, v_max) with the comparisons of TF's AdjustHue kernel."""
  # Each branch of the kernel: (condition, (v_max, v_mid, v_min, category)).
  # r < g: b < r -> (g, r, b, 1); b > g -> (b, g, r, 3); else (g, b, r, 2).
  # r >= g: b < g -> (r, g, b, 0); b > r -> (b, r, g, 4); else (r, b, g, 5).
  branches = (
    (r < g) & (b < r),
    (r < g) & ~(b < r) & (b > g),
    (r < g) & ~(b < r) & ~(b > g),
    ~(r < g) & (b < g),
    ~(r < g) & ~(b < g) & (b > r),
  )
  pick = lambda *values: jnp.select(branches, values[:5], values[5])
  v_max = pick(g, b, g, r, b, r)
  v_mid = pick(r, g, b, g, r, b)
  v_min = pick(b, r, r, b, g, g)
  category = pick(*(jnp.float32(c) for c in (1, 3, 2, 0, 4, 5)))
  flat = v_max == v_min
  ratio = (v_mid - v_min) / jnp.where(flat, 1.0, v_max - v_min)
  increase = (category == 0) | (category == 2) | (category == 4)
  h = category + jnp.where(increase, ratio, 1 - ratio)
  return jnp.where(flat, 0.0, h), v_min, v_max


def _hv_to_rgb(h, v_min, v_max):
  """TF's AdjustHue kernel's inverse of `_rgb_to_hv`, h in [0, 6) -> (r, g, b)."""
  category = jnp.floor(h)  # h >= 0: the kernel's int cast.
  ratio = h - category
  ratio = jnp.where(jnp.mod(category, 2) == 0, ratio, 1 - ratio)
  v_mid = v_min + ratio * (v_max - v_min)
  cases = [category == c for c in range(5)]  # 5 and above: the kernel's default.
  pick = lambda *values: jnp.select(cases, values[:5], values[5])
  return (
    pick(v_max, v_mid, v_min, v_min, v_mid, v_max),
    pick(v_mid, v_max, v_max, v_mid, v_min, v_min),
    pick(v_min, v_min, v_mid, v_max, v_max, v_mid),
  )


def adjust_hue(images01: jax.Array, delta: jax.Array) -> jax.Array:
  """``tf.image.adjust_hue`` of float32 RGB images: H + delta mod 1 in HSV.

  As TF's CPU kernel: hue on [0, 6), shifted by ``6 delta`` and brought back
  into [0, 6) by one addition or subtraction of 6 (``|delta| <= 0.5``, as
  the config allows); saturation and value are kept (v_min, v_max of the
  pixel).

  Args:
    images01: float32 [B, H, W, 3].
    delta: float32 [B], the hue shift of each image, in [-0.5, 0.5].

  Returns:
    float32 [B, H, W, 3].
  """
  r, g, b = images01[..., 0], images01[..., 1], images01[..., 2]
  h, v_min, v_max = _rgb_to_hv(r, g, b)
  h = h + jnp.asarray(delta, jnp.float32)[:, None, None] * 6.0
  h = jnp.where(h < 0, h + 6.0, h)
  h = jnp.where(h >= 6.0, h - 6.0, h)
  return jnp.stack(_hv_to_rgb(h, v_min, v_max), axis=-1)


def adjust_color(images01: jax.Array, factors: jax.Array) -> jax.Array:
  """Brightness, contrast, saturation, hue: `augment.adjust_color` for a batch.

  In this order, clipped to [0, 1] after each step: ``x b``, ``c x + (1 - c)
  mean(gray(x))``, ``s x + (1 - s) gray(x)``, hue ``H + delta mod 1``
  (`adjust_hue`); saturation and hue for RGB images only.

  Args:
    images01: float32 [B, H, W, C] on the [0, 1] scale, C = 1 or 3.
    factors: float32 [B, 4], (b, c, s, delta) of each image
      (`augment.sample_color_factors`); (1, 1, 1, 0) keeps the image.

  Returns:
    float32 [B, H, W, C] in [0, 1].
  """
  images01 = jnp.asarray(images01, jnp.float32)
  factors = jnp.asarray(factors, jnp.float32)
  f = lambda k: factors[:, k, None, None, None]
  blend = lambda x, other, w: jnp.clip(w * x + (1 - w) * other, 0.0, 1.0)
  rgb = images01.shape[-1] == 3
  gray = _gray if rgb else (lambda x: x)
  images = jnp.clip(images01 * f(0), 0.0, 1.0)
  images = blend(images, jnp.mean(gray(images), axis=(1, 2, 3), keepdims=True), f(1))
  if rgb:
    images = blend(images, _gray(images), f(2))
    images = jnp.clip(adjust_hue(images, factors[:, 3]), 0.0, 1.0)
  return images


def augment_batch(
  batch: Mapping[str, jax.Array],
  *,
  mean: Sequence[float],
  std: Sequence[float],
  num_classes: int | None = None,
) -> dict[str, jax.Array]:
  """The training batch of the step from the augmentation inputs (module docstring).

  Per example: the uint8 image on the [0, 1] scale, warped by its geometry
  (`warp_images`), colour-jittered (`adjust_color`) and normalised ``(x -
  mean) / std``; the mask of its real boxes after the warp (`boxes_masks`)
  and ``has_mask`` (any mask pixel; per class with ``box_labels``).

  Args:
    batch: 'image' uint8 [B, S, S, C], 'geometry', 'color', 'boxes',
      'box_count', optionally 'box_labels', and any other keys ('label', ...).
    mean: per-channel mean (1 or C values), as ``data.mean``.
    std: per-channel standard deviation (1 or C values), as ``data.std``.
    num_classes: K of the per-class masks; None: the last axis of 'label'
      where the batch has 'box_labels'.

  Returns:
    The batch with 'image' float32 [B, S, S, C] normalised, 'mask' (float32
    [B, S, S], or uint8 [B, K, S, S] with 'box_labels'), 'has_mask' (bool [B]
    or [B, K]), with 'artefact_boxes' also 'relevance' (`relevance_map`; 'has_mask' then
    says relevance is not all 0), the other keys unchanged and the augmentation inputs
    dropped.
  """
  images = jnp.asarray(batch['image'])
  size = images.shape[1]
  if images.shape[2] != size:
    raise ValueError(f'augment_batch: images must be square, got shape {images.shape}.')
  images01 = images.astype(jnp.float32) / 255.0
  images01 = adjust_color(warp_images(images01, batch['geometry'], size=size), batch['color'])
  mean = jnp.asarray(mean, jnp.float32).reshape(-1)
  std = jnp.asarray(std, jnp.float32).reshape(-1)
  per_class = {}
  if 'box_labels' in batch:
    k = num_classes if num_classes is not None else batch['label'].shape[-1]
    per_class = {'box_labels': batch['box_labels'], 'num_classes': k}
  mask = boxes_masks(batch['boxes'], batch['box_count'], batch['geometry'], size=size, **per_class)
  out = {key: value for key, value in batch.items() if key not in AUGMENT_KEYS}
  out.update(image=(images01 - mean) / std, mask=mask, has_mask=jnp.any(mask > 0, axis=(-2, -1)))
  if 'artefact_boxes' in batch:
    artefact = boxes_masks(
      batch['artefact_boxes'], batch['artefact_count'], batch['geometry'], size=size
    )
    out['relevance'], out['has_mask'] = relevance_map(mask, artefact)
  return out


def relevance_map(mask: jax.Array, artefact: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`care_jax.data.augment.relevance_map` for a batch: the three-valued relevance.

  ``-1`` on an artefact; else, where the example (per class) has a lesion mask, ``2 mask -
  1``; else ``0``.

  Args:
    mask: the lesion masks, float32 [B, S, S] or uint8 [B, K, S, S] (binary).
    artefact: float32 [B, S, S], the artefact boxes' union (binary).

  Returns:
    (relevance float32 [B, S, S] or [B, K, S, S], has_mask bool [B] or [B, K]: not all 0).
  """
  mask = jnp.asarray(mask, jnp.float32)
  artefact = jnp.asarray(artefact).reshape(
    artefact.shape[:1] + (1,) * (mask.ndim - 3) + artefact.shape[1:]
  )
  lesion = jnp.any(mask > 0, axis=(-2, -1), keepdims=True)
  relevance = jnp.where(lesion, 2.0 * mask - 1.0, 0.0)
  relevance = jnp.where(artefact > 0, -1.0, relevance)
  return relevance, jnp.any(relevance != 0, axis=(-2, -1))
