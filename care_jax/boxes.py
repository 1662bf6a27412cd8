r"""Automatic lesion boxes for CARE: classical saliency, Grad-CAM, segmentation masks.

Manual lesion boxes are CARE's main cost. The authors' journal version
(Neurocomputing 2023) reports that boxes generated automatically work about as
well. Every generator here maps a batch of images ``[N, H, W, C]`` to a
foreground mask, keeps its largest connected component and returns its
bounding box:

===========================  ================================================
generator                    foreground
===========================  ================================================
`otsu_boxes`                 Otsu (1979) threshold of a lesion-contrast
                             channel (default: log red/green chromaticity),
                             per image
`spectral_residual_boxes`    Hou & Zhang (CVPR 2007) spectral-residual
                             saliency ``> k * mean`` saliency
`grad_cam_boxes`             the stage-1 model's Grad-CAM map of the true
                             class ``>= fraction * max``
`mask_boxes`                 a user segmentation mask ``> 0``
===========================  ================================================

All return ``(boxes, found)``: ``boxes`` float32 [N, 4] normalised
``(ymin, xmin, ymax, xmax)`` (the tfds convention; a component covering pixel
rows ``r0..r1`` and columns ``c0..c1`` gives ``(r0 / H, c0 / W, (r1 + 1) / H,
(c1 + 1) / W)``) and ``found`` bool [N]. An image without any foreground
component is *not found*: it gets no box (all-zero row), never a silent
full-image box.

The maps and thresholds run batched under `jax.jit` (fixed-size chunks, so one
compilation serves a whole dataset); the connected components are labelled on
the host with `scipy.ndimage.label` in one call per chunk (8-connectivity
within each image, never across images).

For training, `replace_boxes` implements ``config.data.box_source``: it swaps
the manual boxes of the training split for generated ones (rare-class images
only), cached on disk (`generated_boxes`). ``care-jax boxes`` writes the same
boxes to a ``boxes.csv`` in the folder format (DESIGN 3.1) for inspection and
editing::

  care-jax boxes --method=otsu --config=configs/synthetic_care.py --out=boxes.csv

On `synthetic_lesions` the Otsu boxes reach a mean IoU of 0.93 with the true
lesion boxes (docs/results.md, ``benchmarks/boxes.py``).

Example::

  boxes, found = otsu_boxes(images)                       # images [N, H, W, 3]
  iou = box_iou(boxes[found], true_boxes[found])
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
import csv
import dataclasses
import functools
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import ml_collections
from ml_collections import config_dict
import numpy as np
from scipy import ndimage

METHODS = ('otsu', 'spectral_residual', 'grad_cam', 'mask')
CONTRASTS = ('log_red_green', 'darkness', 'brightness')
BOX_SOURCES = ('manual',) + METHODS
CSV_COLUMNS = ('image', 'xmin', 'ymin', 'xmax', 'ymax')
# Rec. 601 luma, as MATLAB's rgb2gray (used by Hou & Zhang) and PIL's 'L'.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# 8-connectivity inside each image of an [N, H, W] stack, none across images.
_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = True


# ----------------------------------------------------------------------------
# Shared post-processing (host side).
# ----------------------------------------------------------------------------


def largest_components(foreground: ArrayLike) -> np.ndarray:
  """Keeps the largest 8-connected component of each [H, W] mask of a stack.

  One `scipy.ndimage.label` call labels the whole [N, H, W] stack with a
  structure that connects pixels within an image only; component sizes come
  from one `np.bincount`. Ties go to the component met first in raster order.

  Args:
    foreground: [N, H, W] masks (nonzero = foreground).

  Returns:
    bool [N, H, W], each image's largest component (all False without one).
  """
  foreground = np.asarray(foreground).astype(bool)
  if foreground.ndim != 3:
    raise ValueError(
        f'foreground must have shape [N, H, W], got {foreground.shape}.')
  labels, num = ndimage.label(foreground, structure=_STRUCTURE)
  if num == 0:
    return foreground
  n = foreground.shape[0]
  sizes = np.bincount(labels.ravel(), minlength=num + 1)
  # The image each component lies in: component ids grow in raster order,
  # so the first pixel of each id is found via np.unique's first index.
  ids, first = np.unique(labels.ravel(), return_index=True)
  ids, first = ids[1:], first[1:]  # Drop the background (id 0).
  owner = first // labels[0].size
  # Per image: the largest size, then the smallest id of that size.
  best_size = np.zeros(n, np.int64)
  np.maximum.at(best_size, owner, sizes[ids])
  winners = sizes[ids] == best_size[owner]
  chosen = np.full(n, num + 1, np.int64)
  np.minimum.at(chosen, owner[winners], ids[winners])
  return labels == chosen[:, None, None]


def expand_boxes(boxes: ArrayLike, *, margin: float) -> np.ndarray:
  """Grows each box by ``margin`` times its size on every side, inside [0, 1].

  ``ymin - margin * (ymax - ymin)``, ..., then clipped to the image. All-zero
  rows (boxes not found) stay all zero.

  Args:
    boxes: [N, 4] normalised (ymin, xmin, ymax, xmax).
    margin: fraction of the box's height (width) added above and below (left
      and right); >= 0.

  Returns:
    float32 [N, 4].
  """
  if not margin >= 0.0:
    raise ValueError(f'margin must be >= 0, got {margin}.')
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  size = boxes[:, 2:] - boxes[:, :2]
  grown = np.concatenate([boxes[:, :2] - margin * size,
                          boxes[:, 2:] + margin * size], axis=1)
  return np.clip(grown, 0.0, 1.0).astype(np.float32)


def boxes_from_foreground(
    foreground: ArrayLike,
    *,
    largest_component: bool = True,
    margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Bounding boxes of foreground masks: the post-processing of all generators.

  Args:
    foreground: [N, H, W] masks (nonzero = foreground).
    largest_component: box the largest 8-connected component only (else all
      foreground pixels).
    margin: see `expand_boxes`.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    all zero where ``found`` (bool [N]) is False (no foreground).

  Example:
    >>> mask = np.zeros((1, 4, 8), bool); mask[0, 1:3, 2:6] = True
    >>> boxes_from_foreground(mask)[0]
    array([[0.25, 0.25, 0.75, 0.75]], dtype=float32)
  """
  foreground = np.asarray(foreground).astype(bool)
  if foreground.ndim != 3:
    raise ValueError(
        f'foreground must have shape [N, H, W], got {foreground.shape}.')
  if largest_component:
    foreground = largest_components(foreground)
  _, height, width = foreground.shape
  rows, cols = foreground.any(axis=2), foreground.any(axis=1)
  found = rows.any(axis=1)
  # First and one-past-last foreground row/column of each image.
  boxes = np.stack([
      rows.argmax(axis=1) / height,
      cols.argmax(axis=1) / width,
      (height - rows[:, ::-1].argmax(axis=1)) / height,
      (width - cols[:, ::-1].argmax(axis=1)) / width,
  ], axis=1).astype(np.float32)
  boxes[~found] = 0.0
  if margin:
    boxes = expand_boxes(boxes, margin=margin)
  return boxes, found


def box_iou(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Intersection over union of boxes ``(ymin, xmin, ymax, xmax)``, broadcast.

  ``|a n b| / |a u b|``, 0 where the union is empty. Works on normalised or
  pixel coordinates alike (both boxes in the same units).

  Example:
    >>> float(box_iou([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]))  # 1 / 7
    0.1428...
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.shape[-1] != 4 or b.shape[-1] != 4:
    raise ValueError(
        f'boxes must have a last axis of 4, got shapes {a.shape} and {b.shape}.')
  low = jnp.maximum(a[..., :2], b[..., :2])
  high = jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.clip(high - low, 0.0), axis=-1)
  area_a = jnp.prod(jnp.clip(a[..., 2:] - a[..., :2], 0.0), axis=-1)
  area_b = jnp.prod(jnp.clip(b[..., 2:] - b[..., :2], 0.0), axis=-1)
  union = area_a + area_b - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


# ----------------------------------------------------------------------------
# Batched maps and thresholds (jit).
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _filter_matrix(size: int, kind: str, width: float, mode: str) -> np.ndarray:
  """[size, size] matrix M with ``M @ x == scipy.ndimage.<kind>_filter1d(x)``.

  Applying a separable filter as two small matmuls keeps it batched and jitted,
  with scipy's exact boundary handling (``mode``).
  """
  eye = np.eye(size, dtype=np.float64)
  if kind == 'gaussian':
    matrix = ndimage.gaussian_filter1d(eye, width, axis=0, mode=mode)
  else:
    matrix = ndimage.uniform_filter1d(eye, int(width), axis=0, mode=mode)
  matrix = matrix.astype(np.float32)
  matrix.setflags(write=False)  # Cached and shared: keep it immutable.
  return matrix


def _separable_filter(maps: jax.Array, kind: str, width: float,
                      mode: str) -> jax.Array:
  """Filters [N, H, W] maps along H and W (see `_filter_matrix`)."""
  rows = jnp.asarray(_filter_matrix(maps.shape[1], kind, width, mode))
  cols = jnp.asarray(_filter_matrix(maps.shape[2], kind, width, mode))
  return jnp.einsum('hH,nHW,wW->nhw', rows, maps, cols,
                    precision=jax.lax.Precision.HIGHEST)


def _host_images(images: ArrayLike) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(
        f'images must have shape [N, H, W, C], got {images.shape}.')
  return images


def _luma(images: jax.Array) -> jax.Array:
  """[N, H, W]: Rec. 601 luma of RGB images, or the single channel."""
  if images.shape[-1] == 1:
    return images[..., 0]
  return jnp.einsum('nhwc,c->nhw', images, jnp.asarray(_LUMA))


def _check_luma_channels(num_channels: int) -> None:
  if num_channels not in (1, 3):
    raise ValueError(f'images must have 1 (grey) or 3 (RGB) channels, got'
                     f' {num_channels}.')


def _check_channels(num_channels: int, contrast: str) -> None:
  needed = (3,) if contrast == 'log_red_green' else (1, 3)
  if contrast not in CONTRASTS:
    raise ValueError(f'contrast must be one of {CONTRASTS}, got {contrast!r}.')
  if num_channels not in needed:
    raise ValueError(
        f'contrast={contrast!r} needs images with {" or ".join(map(str, needed))}'
        f' channels, got {num_channels}.')


def contrast_channel(images: ArrayLike, contrast: str) -> jax.Array:
  """The lesion-contrast channel [N, H, W] of images [N, H, W, C].

  * ``'log_red_green'``: ``log(R + e) - log(G + e)``, ``e = max / 255`` of the
    image (1 for uint8 images that reach 255). A grey multiplicative
    illumination (vignetting, uneven light) cancels in the ratio, and skin
    lesions absorb green far more than red (melanin and haemoglobin), so they
    stand out whatever the brightness (Madooei et al., 2012, use such
    log-chromaticity for illumination-invariant lesion segmentation).
  * ``'darkness'``: ``-luma`` (Rec. 601): lesions are darker than skin, but so
    are badly lit corners.
  * ``'brightness'``: ``luma``, for bright findings (e.g. X-ray opacities).

  Higher values are lesion. Any scale: only ratios and ranks matter.
  """
  images = jnp.asarray(images, jnp.float32)
  _check_channels(images.shape[-1], contrast)
  if contrast == 'log_red_green':
    guard = jnp.max(images, axis=(1, 2, 3), keepdims=True) / 255.0
    guard = jnp.where(guard > 0, guard, 1.0)
    logs = jnp.log(images[..., :2] + guard)
    return logs[..., 0] - logs[..., 1]
  return _luma(images) if contrast == 'brightness' else -_luma(images)


def otsu_foreground(values: ArrayLike, *, num_bins: int = 256) -> jax.Array:
  """Otsu's threshold per image: the pixels above it, [N, H, W] -> bool.

  Each image's values are binned into ``num_bins`` equal bins between its own
  min and max (so any scale works), and the threshold bin ``t`` maximises the
  between-class variance (Otsu, IEEE SMC 1979)::

      t = argmax_t (mu_T w(t) - mu(t))^2 / (w(t) (1 - w(t)))

  with ``w(t)`` the fraction of pixels in bins ``<= t``, ``mu(t)`` their
  summed bin index over the pixel count and ``mu_T = mu(num_bins - 1)``.
  Pixels in bins ``> t`` are foreground. A constant image has none.
  """
  values = jnp.asarray(values, jnp.float32)
  if values.ndim != 3:
    raise ValueError(f'values must have shape [N, H, W], got {values.shape}.')
  low = values.min(axis=(1, 2), keepdims=True)
  span = values.max(axis=(1, 2), keepdims=True) - low
  varies = span > 0
  scaled = (values - low) / jnp.where(varies, span, 1.0)
  bins = jnp.clip((scaled * num_bins).astype(jnp.int32), 0, num_bins - 1)
  hist = jax.vmap(lambda b: jnp.bincount(b.ravel(), length=num_bins))(bins)
  p = hist.astype(jnp.float32) / bins[0].size
  omega = jnp.cumsum(p, axis=1)
  mu = jnp.cumsum(p * jnp.arange(num_bins, dtype=jnp.float32), axis=1)
  denominator = omega * (1.0 - omega)
  valid = denominator > 0
  between = jnp.where(
      valid,
      (mu[:, -1:] * omega - mu) ** 2 / jnp.where(valid, denominator, 1.0),
      -1.0)
  threshold = jnp.argmax(between, axis=1)
  return (bins > threshold[:, None, None]) & varies


@functools.partial(jax.jit, static_argnames=('contrast', 'sigma', 'num_bins'))
def _otsu(images, *, contrast, sigma, num_bins):
  values = contrast_channel(images, contrast)
  if sigma > 0:
    pixels = sigma * min(values.shape[1:])
    values = _separable_filter(values, 'gaussian', pixels, 'reflect')
  return otsu_foreground(values, num_bins=num_bins)


def spectral_residual_saliency(
    images: ArrayLike,
    *,
    work_size: int = 64,
    sigma: float = 2.5,
) -> jax.Array:
  """Spectral-residual saliency (Hou & Zhang, CVPR 2007), batched.

  On the luma resized to ``work_size`` x ``work_size``::

      A = log |FFT(I)|,   P = angle FFT(I),   R = A - h_3 * A
      S = g_sigma * |IFFT(exp(R + i P))|^2

  with ``h_3`` the 3x3 mean filter (replicated borders) and ``g_sigma`` a
  Gaussian, as in the authors' MATLAB code (64 px wide input, sigma 2.5).

  Args:
    images: [N, H, W, C] (C = 1 or 3), any scale.
    work_size: side of the square working resolution.
    sigma: Gaussian smoothing of the saliency, in working pixels (0: none).

  Returns:
    float32 [N, work_size, work_size] saliency (>= 0).
  """
  images = jnp.asarray(images, jnp.float32)
  _check_luma_channels(images.shape[-1])
  gray = _luma(images)
  gray = jax.image.resize(gray, (gray.shape[0], work_size, work_size),
                          'linear', antialias=True)
  spectrum = jnp.fft.fft2(gray)
  amplitude = jnp.abs(spectrum)
  safe_amplitude = jnp.maximum(amplitude, 1e-12)
  log_amplitude = jnp.log(safe_amplitude)
  residual = log_amplitude - _separable_filter(log_amplitude, 'uniform', 3,
                                               'nearest')
  # exp(R + iP) = exp(R) * F / |F|.
  saliency = jnp.abs(
      jnp.fft.ifft2(jnp.exp(residual) * spectrum / safe_amplitude)) ** 2
  if sigma > 0:
    saliency = _separable_filter(saliency, 'gaussian', sigma, 'reflect')
  return saliency


@functools.partial(jax.jit, static_argnames=('work_size', 'sigma', 'k'))
def _spectral_residual(images, *, work_size, sigma, k):
  saliency = spectral_residual_saliency(images, work_size=work_size,
                                        sigma=sigma)
  mean = saliency.mean(axis=(1, 2), keepdims=True)
  return (saliency > k * mean) & (mean > 0)


# The model (a hashable flax module) is static; the variables are arguments,
# not compile-time constants, so one compilation serves every chunk and call.
@functools.partial(jax.jit, static_argnums=0,
                   static_argnames=('fraction', 'attention'))
def _grad_cam_foreground(model, variables, images, labels, *, fraction,
                         attention):
  maps = grad_cam_maps(model, variables, images, labels, attention=attention)
  peak = maps.max(axis=(1, 2), keepdims=True)
  # A constant map (all zeros after min-max) has no foreground.
  return (maps >= fraction * peak) & (peak > 0)


def _slices(arrays: Sequence[np.ndarray],
            size: int) -> Iterator[tuple[np.ndarray, ...]]:
  for start in range(0, arrays[0].shape[0], size):
    yield tuple(a[start:start + size] for a in arrays)


def _chunked_boxes(
    foreground_fn: Callable[..., jax.Array],
    chunks: Iterable[Sequence[np.ndarray]],
    *,
    chunk_size: int,
    largest_component: bool,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
  """Runs ``foreground_fn`` on each chunk and boxes its output on the host.

  Chunks shorter than ``chunk_size`` are padded by repeating their first row,
  so that one compiled shape serves a whole dataset; padding rows are dropped.
  """
  boxes, found = [np.zeros((0, 4), np.float32)], [np.zeros((0,), bool)]
  for parts in chunks:
    rows = parts[0].shape[0]
    if rows < chunk_size:
      parts = [np.concatenate([p, np.repeat(p[:1], chunk_size - rows, axis=0)])
               for p in parts]
    foreground = np.asarray(foreground_fn(*parts))[:rows]
    chunk_boxes, chunk_found = boxes_from_foreground(
        foreground, largest_component=largest_component, margin=margin)
    boxes.append(chunk_boxes)
    found.append(chunk_found)
  return np.concatenate(boxes), np.concatenate(found)


def _check_common(batch_size: int, margin: float) -> None:
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if not margin >= 0.0:
    raise ValueError(f'margin must be >= 0, got {margin}.')


# ----------------------------------------------------------------------------
# The generators.
# ----------------------------------------------------------------------------


def otsu_boxes(
    images: ArrayLike,
    *,
    contrast: str = 'log_red_green',
    sigma: float = 0.05,
    num_bins: int = 256,
    largest_component: bool = True,
    margin: float = 0.0,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
  """Boxes from an Otsu threshold of a lesion-contrast channel, per image.

  See `contrast_channel` for the channels and why ``'log_red_green'`` is the
  default for dermoscopy. A Gaussian blur before the threshold keeps noise
  and lesion texture from fragmenting the lesion; its default width (5% of
  the image side, 3.2 px at 64 px) was chosen on a development copy of
  `synthetic_lesions` (seed 1), not on the data reported in docs/results.md.

  Args:
    images: [N, H, W, C] uint8 or float, any scale.
    contrast: 'log_red_green' (RGB only), 'darkness' or 'brightness'.
    sigma: standard deviation of the Gaussian blur, as a fraction of the
      image's shorter side (0: none).
    num_bins: Otsu histogram bins.
    largest_component, margin: see `boxes_from_foreground`.
    batch_size: images per jitted chunk.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N].

  Example:
    >>> boxes, found = otsu_boxes(images)            # images [N, H, W, 3]
  """
  images = _host_images(images)
  _check_channels(images.shape[-1], contrast)
  _check_common(batch_size, margin)
  fn = functools.partial(_otsu, contrast=contrast, sigma=float(sigma),
                         num_bins=int(num_bins))
  size = min(batch_size, max(len(images), 1))
  return _chunked_boxes(fn, _slices([images], size), chunk_size=size,
                        largest_component=largest_component, margin=margin)


def spectral_residual_boxes(
    images: ArrayLike,
    *,
    work_size: int = 64,
    sigma: float = 0.5,
    k: float = 1.5,
    largest_component: bool = True,
    margin: float = 0.0,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
  """Boxes from spectral-residual saliency above ``k`` times its mean.

  Hou & Zhang's object map is ``S > 3 E[S]`` with sigma 2.5; such maps keep
  only the most salient edges of a lesion that fills a good part of the
  image. The defaults (sigma 0.5, k 1.5) were chosen on a development copy of
  `synthetic_lesions` (seed 1). The box is found at the working resolution
  (see `spectral_residual_saliency`) and returned normalised.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N].
  """
  images = _host_images(images)
  _check_luma_channels(images.shape[-1])
  _check_common(batch_size, margin)
  if not k > 0:
    raise ValueError(f'k must be > 0, got {k}.')
  fn = functools.partial(_spectral_residual, work_size=int(work_size),
                         sigma=float(sigma), k=float(k))
  size = min(batch_size, max(len(images), 1))
  return _chunked_boxes(fn, _slices([images], size), chunk_size=size,
                        largest_component=largest_component, margin=margin)


def grad_cam_maps(
    model: Any,
    variables: dict[str, Any],
    images: ArrayLike,
    labels: ArrayLike,
    *,
    attention: str = 'auto',
) -> jax.Array:
  """The model's attention maps of ``labels``, at the images' resolution.

  `care_jax.train.attention_maps` (CAM for a GAP + linear head, Grad-CAM via
  the head's VJP otherwise; min-max normalised per image) on the last conv
  stage, upsampled bilinearly with half-pixel centres to [N, H, W].

  Args:
    model: a `care_jax.models.Classifier` (run in inference mode).
    variables: its ``{'params': ..., 'batch_stats': ...}``.
    images: [N, H, W, C] model inputs (normalised as for training).
    labels: [N] int classes whose maps are wanted.
    attention: 'auto', 'cam' or 'grad_cam' (see `train.attention_maps`).

  Returns:
    float32 [N, H, W] in [0, 1].
  """
  from care_jax import train  # pylint: disable=g-import-not-at-top
  images = jnp.asarray(images, jnp.float32)
  _, intermediates = model.apply(variables, images, train=False)
  maps = train.attention_maps(model, variables, intermediates['features'],
                              jnp.asarray(labels, jnp.int32), method=attention)
  return jax.image.resize(maps, images.shape[:3], 'bilinear')


def grad_cam_boxes(
    model: Any,
    variables: dict[str, Any],
    images: ArrayLike,
    labels: ArrayLike,
    *,
    fraction: float = 0.6,
    attention: str = 'auto',
    largest_component: bool = True,
    margin: float = 0.0,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
  """Boxes where the model's true-class map reaches ``fraction`` of its max.

  The map is `grad_cam_maps` (min-max normalised, upsampled to the input
  size); foreground is ``map >= fraction * max(map)``. The model is CARE's
  stage-1 model (cross-entropy only), so the boxes show where it already
  looks: on data with a shortcut (a ruler next to rare lesions) they box the
  shortcut as readily as the lesion. The default ``fraction`` (0.6) was
  chosen on a development copy of `synthetic_lesions` (seed 1).

  Args:
    model, variables, images, labels, attention: see `grad_cam_maps`.
    fraction: threshold relative to each map's maximum, in (0, 1].
    largest_component, margin: see `boxes_from_foreground`.
    batch_size: images per jitted chunk.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N].
  """
  images = _host_images(images)
  labels = np.asarray(labels)
  if labels.shape != images.shape[:1]:
    raise ValueError(f'labels must have shape [{images.shape[0]}] (one per'
                     f' image), got {labels.shape}.')
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'fraction must lie in (0, 1], got {fraction}.')
  _check_common(batch_size, margin)
  fn = functools.partial(_grad_cam_foreground, model, variables,
                         fraction=float(fraction), attention=attention)
  size = min(batch_size, max(len(images), 1))
  return _chunked_boxes(fn, _slices([images, labels], size), chunk_size=size,
                        largest_component=largest_component, margin=margin)


def mask_boxes(
    masks: ArrayLike,
    *,
    largest_component: bool = True,
    margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Bounding boxes of user segmentation masks (nonzero = lesion).

  Args:
    masks: [N, H, W] or [N, H, W, C] (a pixel is lesion where any channel is
      nonzero), e.g. HAM10000's ``*_segmentation.png`` (0 / 255).
    largest_component, margin: see `boxes_from_foreground`.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N] (False for an empty mask).
  """
  masks = np.asarray(masks)
  if masks.ndim == 4:
    masks = (masks != 0).any(axis=-1)
  if masks.ndim != 3:
    raise ValueError(
        f'masks must have shape [N, H, W] or [N, H, W, C], got {masks.shape}.')
  return boxes_from_foreground(masks != 0, largest_component=largest_component,
                               margin=margin)


# ----------------------------------------------------------------------------
# boxes.csv (DESIGN 3.1).
# ----------------------------------------------------------------------------


def pixel_boxes(boxes: ArrayLike, image_sizes: ArrayLike) -> np.ndarray:
  """Normalised (ymin, xmin, ymax, xmax) -> pixel (xmin, ymin, xmax, ymax).

  Args:
    boxes: [N, 4] normalised boxes.
    image_sizes: [N, 2] (height, width) of each image in pixels.

  Returns:
    float64 [N, 4] in the column order of boxes.csv.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  sizes = np.asarray(image_sizes, np.float64).reshape(-1, 2)
  if len(sizes) != len(boxes):
    raise ValueError(f'image_sizes must have one (height, width) per box:'
                     f' {len(sizes)} sizes for {len(boxes)} boxes.')
  height, width = sizes[:, 0], sizes[:, 1]
  return np.stack([boxes[:, 1] * width, boxes[:, 0] * height,
                   boxes[:, 3] * width, boxes[:, 2] * height], axis=1)


def write_boxes_csv(path: str, image_names: Sequence[str],
                    boxes_pixels: ArrayLike) -> None:
  """Writes ``image,xmin,ymin,xmax,ymax`` rows (DESIGN 3.1), one per box.

  Coordinates are pixels of the original image (edges: a box covering pixel
  columns ``c0..c1`` has ``xmin = c0``, ``xmax = c1 + 1``), written with up
  to 6 significant digits.

  Args:
    path: the CSV file to write (its folder must exist).
    image_names: [M] image identifiers, one per box (repeat a name for
      several boxes of one image).
    boxes_pixels: [M, 4] (xmin, ymin, xmax, ymax) in pixels.

  Raises:
    ValueError: for a count mismatch, or a box with xmin >= xmax, ymin >= ymax
      or a negative coordinate (the row is named).
  """
  names = [str(name) for name in image_names]
  values = np.asarray(boxes_pixels, np.float64).reshape(-1, 4)
  if len(names) != len(values):
    raise ValueError(f'image_names has {len(names)} entries but boxes_pixels'
                     f' has {len(values)} rows.')
  for row, (name, (xmin, ymin, xmax, ymax)) in enumerate(zip(names, values)):
    if not (0 <= xmin < xmax and 0 <= ymin < ymax):
      raise ValueError(
          f'box {row} of image {name!r} is not a valid box (need 0 <= xmin <'
          f' xmax and 0 <= ymin < ymax): {(xmin, ymin, xmax, ymax)}.')
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for name, box in zip(names, values):
      writer.writerow([name, *(f'{v:.6g}' for v in box)])


# ----------------------------------------------------------------------------
# Datasets: config.data.box_source and the `care-jax boxes` command.
# ----------------------------------------------------------------------------


def default_box_config() -> ml_collections.ConfigDict:
  """``config.data.boxes``: the generators' settings for ``data.box_source``.

  ``margin``, ``largest_component`` and ``batch_size`` apply to all methods;
  each method's sub-dict holds its own parameters (see its ``*_boxes``
  function). ``cache_dir`` (None: ``<prepared dataset dir>/care_jax_boxes``)
  holds the generated boxes, keyed by method, parameters and inputs.
  """
  return ml_collections.ConfigDict(dict(
      margin=0.0,
      largest_component=True,
      batch_size=256,
      cache_dir=config_dict.placeholder(str),
      otsu=dict(contrast='log_red_green', sigma=0.05, num_bins=256),
      spectral_residual=dict(work_size=64, sigma=0.5, k=1.5),
      grad_cam=dict(stage1_workdir=config_dict.placeholder(str),
                    which='best', fraction=0.6, attention='auto'),
      mask=dict(masks_dir=config_dict.placeholder(str)),
  ))


@dataclasses.dataclass(frozen=True)
class GeneratedBoxes:
  """Generated boxes of a training split's rare-class images.

  Attributes:
    num_examples: N, the examples of the training split.
    indices: int64 [T] positions of the rare-class images in the split, in
      the order `care_jax.data.pipeline._read_split` reads it (ascending).
    image_ids: [T] str identifiers (see `image_ids`).
    image_sizes: int64 [T, 2] (height, width) of the stored images.
    boxes: float32 [T, 4] normalised (ymin, xmin, ymax, xmax); zero rows
      where not found.
    found: bool [T].
  """

  num_examples: int
  indices: np.ndarray
  image_ids: np.ndarray
  image_sizes: np.ndarray
  boxes: np.ndarray
  found: np.ndarray

  def table_boxes(self) -> tuple[np.ndarray, np.ndarray]:
    """``(box_values [M, 4], box_splits [N + 1])`` as the pipeline's table holds.

    One box per found image, none for every other example.
    """
    counts = np.zeros(self.num_examples, np.int64)
    counts[self.indices[self.found]] = 1
    splits = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return self.boxes[self.found].astype(np.float32), splits

  def csv_rows(self) -> tuple[list[str], np.ndarray]:
    """``(image names, [M, 4] pixel boxes)`` of the found boxes, for boxes.csv."""
    return ([str(i) for i in self.image_ids[self.found]],
            pixel_boxes(self.boxes[self.found], self.image_sizes[self.found]))


def image_ids(builder: Any, split: str = 'train') -> np.ndarray:
  """Stable identifiers of a tfds split's examples, in the pipeline's order.

  The ``image/filename`` feature where the dataset has one (tfds's
  ImageFolder convention: a path relative to the data folder), else the
  example's ``tfds_id`` (e.g. ``synthetic_lesions-train.tfrecord-00000-of-
  00001__12``: shard file and position in it), which names the example for as
  long as the prepared dataset exists (``tfds.ReadConfig(add_tfds_id=True)``
  reads it back).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  key = 'image/filename' if 'image/filename' in builder.info.features else 'tfds_id'
  ds = builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(options=pipeline._options(),  # pylint: disable=protected-access
                                  add_tfds_id=True))
  ds = ds.map(lambda ex: ex[key])
  return np.array([i.decode() for i in tfds.as_numpy(ds)], dtype=object)


def _model_input_chunks(builder, data_config, encoded, labels, size):
  """Yields (images [n, S, S, C] as the pipeline feeds them, labels, sizes)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  feature = builder.info.features['image']
  make_example = pipeline._example_fn(data_config, feature.shape[-1])  # pylint: disable=protected-access

  def example(image_bytes, label):
    image = feature.decode_example(image_bytes)
    row = make_example(image, label, tf.zeros((0, 4), tf.float32))
    return row['image'], row['label'], tf.shape(image)[:2]

  ds = tf.data.Dataset.from_tensor_slices(
      (tf.constant(list(encoded), tf.string), tf.constant(labels, tf.int64)))
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
    raise ValueError(f'data.boxes.mask.masks_dir must be a folder of masks,'
                     f' got {masks_dir!r}.')
  paths = [mask_path(masks_dir, i) for i in ids]
  missing = [i for i, p in zip(ids, paths) if p is None]
  if missing:
    raise ValueError(
        f'no mask in {masks_dir!r} for {len(missing)} of {len(ids)} rare-class'
        f' training images, e.g. {missing[:3]} (looked for <stem>.png and'
        f' <stem>_segmentation.png).')
  return paths


def _mask_file_boxes(paths: Sequence[str], **kwargs: Any):
  """`mask_boxes` of each mask file (any size), one file at a time."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  boxes = np.zeros((len(paths), 4), np.float32)
  found = np.zeros(len(paths), bool)
  for n, path in enumerate(paths):
    with Image.open(path) as mask:
      boxes[n:n + 1], found[n:n + 1] = mask_boxes(np.asarray(mask)[None],
                                                  **kwargs)
  return boxes, found


def _fingerprint(tree: Any) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()


def _cache_path(cache_dir: str, method: str, key: dict[str, Any]) -> str:
  digest = hashlib.sha256(
      json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f'{method}-{digest}.npz')


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
  classes with manual boxes (as the pipeline decides). Images are decoded and
  resized as the pipeline feeds them (``data.image_size``; for ``grad_cam``,
  the stage-1 run's image size and normalisation). The result is cached in
  ``box_config.cache_dir`` under a hash of the method, its parameters, the
  dataset and, for ``grad_cam``, the stage-1 weights (for ``mask``, the mask
  files' sizes and times), so training does not recompute it.

  Args:
    data_config: ``config.data``.
    method: one of `METHODS`.
    box_config: the generators' settings (`default_box_config`); None takes
      ``data_config.boxes`` or the defaults.
    builder: the prepared tfds builder (None: built from ``data_config``).
    table: the pipeline's in-memory train split (None: read it).
    use_cache: read and write the cache.

  Returns:
    `GeneratedBoxes` in the pipeline's order of the train split.

  Raises:
    ValueError: unknown method; no rare classes (no manual boxes and empty
      ``data.rare_classes``); grad_cam without a stage-1 workdir or with a
      model of another class count; mask without masks for every image.
  """
  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if method not in METHODS:
    raise ValueError(f'box method must be one of {METHODS}, got {method!r}.')
  if box_config is None:
    box_config = (data_config.boxes if 'boxes' in data_config
                  else default_box_config())
  _check_common(box_config.batch_size, box_config.margin)
  if builder is None:
    builder = pipeline._prepared_builder(data_config)  # pylint: disable=protected-access
  if table is None:
    table = pipeline._read_split(builder, 'train')  # pylint: disable=protected-access
  class_names = tuple(builder.info.features['label'].names)
  boxed = np.unique(table.labels[np.diff(table.box_splits) > 0])
  if not data_config.rare_classes and not boxed.size:
    raise ValueError(
        f'data.rare_classes is empty and the dataset has no manual boxes to'
        f' infer the rare classes from: set data.rare_classes (class names of'
        f' {list(class_names)}) to generate boxes with {method!r}.')
  rare = pipeline._rare_classes(data_config.rare_classes, class_names, boxed)  # pylint: disable=protected-access
  indices = np.flatnonzero(np.isin(table.labels, rare)).astype(np.int64)
  params = box_config[method].to_dict()
  key = dict(method=method, params=params, margin=box_config.margin,
             largest_component=box_config.largest_component,
             dataset=builder.info.full_name, data_dir=builder.data_dir,
             num_examples=len(table.labels), rare=[class_names[k] for k in rare])

  input_config, model, variables = data_config, None, None
  if method == 'grad_cam':
    model, variables, input_config = _stage1_model(
        box_config.grad_cam, data_config, num_classes=len(class_names))
    key.update(stage1=_fingerprint(variables))
    del params['stage1_workdir']  # The weights' hash names the model.
  key.update(image_size=input_config.image_size, mean=list(input_config.mean),
             std=list(input_config.std))
  ids = image_ids(builder)[indices]
  if method == 'mask':
    paths = _mask_paths(params['masks_dir'], ids)
    key.update(masks=[(os.path.abspath(p), os.stat(p).st_size,
                       os.stat(p).st_mtime_ns) for p in paths])

  cache_dir = box_config.cache_dir or os.path.join(builder.data_dir,
                                                   'care_jax_boxes')
  path = _cache_path(cache_dir, method, key)
  if use_cache and os.path.isfile(path):
    with np.load(path) as cached:
      return GeneratedBoxes(len(table.labels), indices, ids,
                            cached['image_sizes'], cached['boxes'],
                            cached['found'])

  common = dict(largest_component=box_config.largest_component,
                margin=box_config.margin)
  num_channels = builder.info.features['image'].shape[-1]
  fn = None  # The mask method reads files instead.
  if method == 'otsu':
    _check_channels(num_channels, params['contrast'])
    fn = functools.partial(_otsu, contrast=params['contrast'],
                           sigma=float(params['sigma']),
                           num_bins=int(params['num_bins']))
  elif method == 'spectral_residual':
    fn = functools.partial(
        _spectral_residual, work_size=int(params['work_size']),
        sigma=float(params['sigma']), k=float(params['k']))
  elif method == 'grad_cam':
    if not 0.0 < params['fraction'] <= 1.0:
      raise ValueError(f'data.boxes.grad_cam.fraction must lie in (0, 1],'
                       f' got {params["fraction"]}.')
    fn = functools.partial(
        _grad_cam_foreground, model, variables,
        fraction=float(params['fraction']), attention=params['attention'])
  chunk = min(box_config.batch_size, max(len(indices), 1))
  # Classical methods see the pipeline's images back on the [0, 1] scale.
  mean, std = pipeline._normalisation(input_config, num_channels)  # pylint: disable=protected-access
  sizes = [np.zeros((0, 2), np.int64)]

  def inputs():
    for images, labels, image_sizes in _model_input_chunks(
        builder, input_config, table.images[indices], table.labels[indices],
        chunk):
      sizes.append(image_sizes)
      yield (images, labels) if method == 'grad_cam' else (images * std + mean,)

  if method == 'mask':
    boxes, found = _mask_file_boxes(paths, **common)
    for _ in inputs():  # The stored images' sizes, for pixel boxes.
      pass
  else:
    boxes, found = _chunked_boxes(fn, inputs(), chunk_size=chunk, **common)
  image_sizes = np.concatenate(sizes).astype(np.int64)
  if use_cache:
    os.makedirs(cache_dir, exist_ok=True)
    temporary = f'{path}.{os.getpid()}.tmp.npz'
    np.savez(temporary, image_sizes=image_sizes, boxes=boxes, found=found,
             key=json.dumps(key, sort_keys=True, default=str))
    os.replace(temporary, path)  # Atomic: concurrent processes agree.
  return GeneratedBoxes(len(table.labels), indices, ids, image_sizes, boxes,
                        found)


def _stage1_model(grad_cam_config, data_config, *, num_classes):
  """(model, variables, data config of its inputs) of the stage-1 run."""
  workdir = grad_cam_config.stage1_workdir
  if not workdir:
    raise ValueError('box method grad_cam needs the stage-1 run: set'
                     ' data.boxes.grad_cam.stage1_workdir (--stage1_workdir).')
  from care_jax import checkpoint  # pylint: disable=g-import-not-at-top
  stage1_config, model, variables = checkpoint.load_model(
      workdir, which=grad_cam_config.which)
  if model.head.num_classes != num_classes:
    raise ValueError(
        f'the stage-1 model in {workdir!r} has {model.head.num_classes} classes,'
        f' the dataset {num_classes}.')
  # Feed the images as the stage-1 model saw them in training.
  input_config = data_config.copy_and_resolve_references()
  for field in ('image_size', 'mean', 'std'):
    input_config[field] = stage1_config.data[field]
  return model, variables, input_config


def replace_boxes(data_config: ml_collections.ConfigDict, builder: Any,
                  table: Any) -> Any:
  """The train table with ``data.box_source``'s boxes instead of manual ones.

  For ``box_source='manual'`` (or a config without it) the table itself;
  otherwise a copy whose boxes are the generated boxes of the rare-class
  images (one each, none where the generator found nothing) and none for any
  other image. ``table`` is the pipeline's ``_read_split(builder, 'train')``.
  """
  source = data_config.get('box_source', 'manual')
  if source not in BOX_SOURCES:
    raise ValueError(
        f'data.box_source must be one of {BOX_SOURCES}, got {source!r}.')
  if source == 'manual':
    return table
  generated = generated_boxes(data_config, method=source, builder=builder,
                              table=table)
  box_values, box_splits = generated.table_boxes()
  return dataclasses.replace(table, box_values=box_values,
                             box_splits=box_splits)


def _main() -> None:
  """``care-jax boxes``: generated boxes of a config's dataset -> boxes.csv."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flag = config_flags.DEFINE_config_file(
      'config', None, 'Path to a configs/*.py file (its data config is used).',
      lock_config=True)
  method = flags.DEFINE_enum('method', None, METHODS, 'Box generator.')
  out = flags.DEFINE_string('out', None, 'The boxes.csv file to write.')
  stage1 = flags.DEFINE_string(
      'stage1_workdir', None,
      'grad_cam: workdir of the stage-1 (cross-entropy) run.')
  masks = flags.DEFINE_string(
      'masks_dir', None,
      'mask: folder of masks <stem>.png or <stem>_segmentation.png.')
  margin = flags.DEFINE_float(
      'margin', None, 'Grow each box by this fraction of its size per side'
      ' (default: config.data.boxes.margin, 0).')
  flags.mark_flags_as_required(['config', 'method', 'out'])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    data_config = config_flag.value.data
    box_config = (data_config.boxes if 'boxes' in data_config
                  else default_box_config()).copy_and_resolve_references()
    if stage1.value is not None:
      box_config.grad_cam.stage1_workdir = stage1.value
    if masks.value is not None:
      box_config.mask.masks_dir = masks.value
    if margin.value is not None:
      box_config.margin = margin.value
    result = generated_boxes(data_config, method=method.value,
                             box_config=box_config)
    names, pixels = result.csv_rows()
    write_boxes_csv(out.value, names, pixels)
    print(f'{int(result.found.sum())} of {len(result.found)} rare-class'
          f' training images boxed by {method.value}; wrote {out.value}')

  # config imports this module: import it only when run as the program.
  from care_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=config_lib.parse_flags)


if __name__ == '__main__':
  _main()
