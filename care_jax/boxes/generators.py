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

This module is pure: arrays in, boxes out, no files and no datasets
(`care_jax.boxes.dataset` runs these generators over a dataset for
``config.data.box_source``, and ``care-jax boxes`` writes them to a
``boxes.csv``). `foreground_fn` and `chunked_boxes` are the two halves every
generator is made of, for callers that stream their own chunks of images.

On `synthetic_lesions` the Otsu boxes reach a mean IoU of 0.93 with the true
lesion boxes (docs/results.md, ``benchmarks/boxes.py``).

Example::

  boxes, found = otsu_boxes(images)                       # images [N, H, W, 3]
  iou = box_iou(boxes[found], true_boxes[found])
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
import csv
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
from scipy import ndimage

METHODS = ('otsu', 'spectral_residual', 'grad_cam', 'mask')
CONTRASTS = ('log_red_green', 'darkness', 'brightness')
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
    raise ValueError(f'foreground must have shape [N, H, W], got {foreground.shape}.')
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
  grown = np.concatenate([boxes[:, :2] - margin * size, boxes[:, 2:] + margin * size], axis=1)
  return np.clip(grown, 0.0, 1.0).astype(np.float32)


def boxes_from_foreground(
  foreground: ArrayLike, *, largest_component: bool = True, margin: float = 0.0
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

  Examples:
    >>> mask = np.zeros((1, 4, 8), bool); mask[0, 1:3, 2:6] = True
    >>> boxes_from_foreground(mask)[0]
    array([[0.25, 0.25, 0.75, 0.75]], dtype=float32)
  """
  foreground = np.asarray(foreground).astype(bool)
  if foreground.ndim != 3:
    raise ValueError(f'foreground must have shape [N, H, W], got {foreground.shape}.')
  if largest_component:
    foreground = largest_components(foreground)
  _, height, width = foreground.shape
  rows, cols = foreground.any(axis=2), foreground.any(axis=1)
  found = rows.any(axis=1)
  # First and one-past-last foreground row/column of each image.
  boxes = np.stack(
    [
      rows.argmax(axis=1) / height,
      cols.argmax(axis=1) / width,
      (height - rows[:, ::-1].argmax(axis=1)) / height,
      (width - cols[:, ::-1].argmax(axis=1)) / width,
    ],
    axis=1,
  ).astype(np.float32)
  boxes[~found] = 0.0
  if margin:
    boxes = expand_boxes(boxes, margin=margin)
  return boxes, found


def box_iou(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Intersection over union of boxes ``(ymin, xmin, ymax, xmax)``, broadcast.

  ``|a n b| / |a u b|``, 0 where the union is empty. Works on normalised or
  pixel coordinates alike (both boxes in the same units).

  Examples:
    >>> float(box_iou([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]))  # 1 / 7
    0.1428...
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.shape[-1] != 4 or b.shape[-1] != 4:
    raise ValueError(f'boxes must have a last axis of 4, got shapes {a.shape} and {b.shape}.')
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


def _separable_filter(maps: jax.Array, kind: str, width: float, mode: str) -> jax.Array:
  """Filters [N, H, W] maps along H and W (see `_filter_matrix`)."""
  rows = jnp.asarray(_filter_matrix(maps.shape[1], kind, width, mode))
  cols = jnp.asarray(_filter_matrix(maps.shape[2], kind, width, mode))
  return jnp.einsum('hH,nHW,wW->nhw', rows, maps, cols, precision=jax.lax.Precision.HIGHEST)


def _host_images(images: ArrayLike) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must have shape [N, H, W, C], got {images.shape}.')
  return images


def _luma(images: jax.Array) -> jax.Array:
  """[N, H, W]: Rec. 601 luma of RGB images, or the single channel."""
  if images.shape[-1] == 1:
    return images[..., 0]
  return jnp.einsum('nhwc,c->nhw', images, jnp.asarray(_LUMA))


def _check_luma_channels(num_channels: int) -> None:
  if num_channels not in (1, 3):
    raise ValueError(f'images must have 1 (grey) or 3 (RGB) channels, got {num_channels}.')


def _check_channels(num_channels: int, contrast: str) -> None:
  needed = (3,) if contrast == 'log_red_green' else (1, 3)
  if contrast not in CONTRASTS:
    raise ValueError(f'contrast must be one of {CONTRASTS}, got {contrast!r}.')
  if num_channels not in needed:
    raise ValueError(
      f'contrast={contrast!r} needs images with {" or ".join(map(str, needed))}'
      f' channels, got {num_channels}.'
    )


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
    valid, (mu[:, -1:] * omega - mu) ** 2 / jnp.where(valid, denominator, 1.0), -1.0
  )
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
  images: ArrayLike, *, work_size: int = 64, sigma: float = 2.5
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
  gray = jax.image.resize(gray, (gray.shape[0], work_size, work_size), 'linear', antialias=True)
  spectrum = jnp.fft.fft2(gray)
  amplitude = jnp.abs(spectrum)
  safe_amplitude = jnp.maximum(amplitude, 1e-12)
  log_amplitude = jnp.log(safe_amplitude)
  residual = log_amplitude - _separable_filter(log_amplitude, 'uniform', 3, 'nearest')
  # exp(R + iP) = exp(R) * F / |F|.
  saliency = jnp.abs(jnp.fft.ifft2(jnp.exp(residual) * spectrum / safe_amplitude)) ** 2
  if sigma > 0:
    saliency = _separable_filter(saliency, 'gaussian', sigma, 'reflect')
  return saliency


@functools.partial(jax.jit, static_argnames=('work_size', 'sigma', 'k'))
def _spectral_residual(images, *, work_size, sigma, k):
  saliency = spectral_residual_saliency(images, work_size=work_size, sigma=sigma)
  mean = saliency.mean(axis=(1, 2), keepdims=True)
  return (saliency > k * mean) & (mean > 0)


# The model (a hashable flax module) is static; the variables are arguments,
# not compile-time constants, so one compilation serves every chunk and call.
@functools.partial(jax.jit, static_argnums=0, static_argnames=('fraction', 'attention'))
def _grad_cam_foreground(model, variables, images, labels, *, fraction, attention):
  maps = grad_cam_maps(model, variables, images, labels, attention=attention)
  peak = maps.max(axis=(1, 2), keepdims=True)
  # A constant map (all zeros after min-max) has no foreground.
  return (maps >= fraction * peak) & (peak > 0)


def _slices(arrays: Sequence[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, ...]]:
  for start in range(0, arrays[0].shape[0], size):
    yield tuple(a[start : start + size] for a in arrays)


def chunked_boxes(
  foreground: Callable[..., jax.Array],
  chunks: Iterable[Sequence[np.ndarray]],
  *,
  chunk_size: int,
  largest_component: bool = True,
  margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Runs a `foreground_fn` on each chunk and boxes its output on the host.

  Chunks shorter than ``chunk_size`` are padded by repeating their first row,
  so that one compiled shape serves a whole dataset; padding rows are dropped.

  Args:
    foreground: ``f(*chunk) -> bool [n, h, w]``, e.g. from `foreground_fn`.
    chunks: tuples of arrays with a leading axis of at most ``chunk_size``
      (images, and for 'grad_cam' their labels).
    chunk_size: rows of every call of ``foreground`` (>= 1).
    largest_component: see `boxes_from_foreground`.
    margin: see `boxes_from_foreground`.

  Returns:
    ``(boxes, found)`` of all chunks' rows, in order.
  """
  _check_common(chunk_size, margin)
  boxes, found = [np.zeros((0, 4), np.float32)], [np.zeros((0,), bool)]
  for parts in chunks:
    rows = parts[0].shape[0]
    if rows < chunk_size:
      parts = [np.concatenate([p, np.repeat(p[:1], chunk_size - rows, axis=0)]) for p in parts]
    mask = np.asarray(foreground(*parts))[:rows]
    chunk_boxes, chunk_found = boxes_from_foreground(
      mask, largest_component=largest_component, margin=margin
    )
    boxes.append(chunk_boxes)
    found.append(chunk_found)
  return np.concatenate(boxes), np.concatenate(found)


def _check_common(batch_size: int, margin: float) -> None:
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if not margin >= 0.0:
    raise ValueError(f'margin must be >= 0, got {margin}.')


def foreground_fn(
  method: str,
  *,
  num_channels: int,
  model: Any = None,
  variables: dict[str, Any] | None = None,
  **params: Any,
) -> Callable[..., jax.Array]:
  """The jitted foreground map of a generator: ``f(images[, labels]) -> bool [n, h, w]``.

  Args:
    method: 'otsu', 'spectral_residual' or 'grad_cam' ('mask' reads files:
      see `mask_boxes`).
    num_channels: C of the images it will see (checked against the method).
    model: the classifier of 'grad_cam'.
    variables: the classifier's variables.
    **params: all of the method's parameters, the keywords of its
      ``*_boxes`` function: ``contrast``, ``sigma``, ``num_bins`` (otsu);
      ``work_size``, ``sigma``, ``k`` (spectral_residual); ``fraction``,
      ``attention`` (grad_cam).

  Raises:
    ValueError: an unknown method or parameter, a parameter out of range, or
      images whose channels the method cannot use.
  """
  if method not in _PARAMS:
    raise ValueError(f'method must be one of {tuple(_PARAMS)}, got {method!r}.')
  if set(params) != set(_PARAMS[method]):
    raise ValueError(
      f'{method} takes the parameters {list(_PARAMS[method])}, got {sorted(params)}.'
    )
  if method == 'otsu':
    _check_channels(num_channels, params['contrast'])
    return functools.partial(
      _otsu,
      contrast=params['contrast'],
      sigma=float(params['sigma']),
      num_bins=int(params['num_bins']),
    )
  if method == 'spectral_residual':
    _check_luma_channels(num_channels)
    if not params['k'] > 0:
      raise ValueError(f'k must be > 0, got {params["k"]}.')
    return functools.partial(
      _spectral_residual,
      work_size=int(params['work_size']),
      sigma=float(params['sigma']),
      k=float(params['k']),
    )
  if not 0.0 < params['fraction'] <= 1.0:
    raise ValueError(f'fraction must lie in (0, 1], got {params["fraction"]}.')
  return functools.partial(
    _grad_cam_foreground,
    model,
    variables,
    fraction=float(params['fraction']),
    attention=params['attention'],
  )


# The parameters of each `foreground_fn` method (keywords of its `*_boxes`
# function, where their defaults are).
_PARAMS = {
  'otsu': ('contrast', 'sigma', 'num_bins'),
  'spectral_residual': ('work_size', 'sigma', 'k'),
  'grad_cam': ('fraction', 'attention'),
}


def _boxes_of_arrays(
  method: str,
  arrays: Sequence[np.ndarray],
  *,
  largest_component: bool,
  margin: float,
  batch_size: int,
  **params: Any,
):
  """`foreground_fn` of `method` over ``arrays`` in chunks of ``batch_size``."""
  _check_common(batch_size, margin)
  fn = foreground_fn(method, num_channels=arrays[0].shape[-1], **params)
  size = min(batch_size, max(len(arrays[0]), 1))
  return chunked_boxes(
    fn, _slices(arrays, size), chunk_size=size, largest_component=largest_component, margin=margin
  )


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
    largest_component: see `boxes_from_foreground`.
    margin: see `boxes_from_foreground`.
    batch_size: images per jitted chunk.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N].

  Examples:
    >>> images = np.full((1, 16, 16, 3), (220, 190, 170), np.uint8)
    >>> images[0, 4:10, 6:12] = (120, 60, 50)  # a dark, reddish lesion on skin
    >>> boxes, found = otsu_boxes(images, sigma=0.0)
    >>> boxes, found
    (array([[0.25 , 0.375, 0.625, 0.75 ]], dtype=float32), array([ True]))
  """
  return _boxes_of_arrays(
    'otsu',
    [_host_images(images)],
    contrast=contrast,
    sigma=sigma,
    num_bins=num_bins,
    largest_component=largest_component,
    margin=margin,
    batch_size=batch_size,
  )


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
  return _boxes_of_arrays(
    'spectral_residual',
    [_host_images(images)],
    work_size=work_size,
    sigma=sigma,
    k=k,
    largest_component=largest_component,
    margin=margin,
    batch_size=batch_size,
  )


def grad_cam_maps(
  model: Any,
  variables: dict[str, Any],
  images: ArrayLike,
  labels: ArrayLike,
  *,
  attention: str = 'auto',
) -> jax.Array:
  """The model's attention maps of ``labels``, at the images' resolution.

  `care_jax.models.Classifier.attention_maps` (CAM for a GAP + linear head,
  Grad-CAM via the head's VJP otherwise; min-max normalised per image) on the
  last conv stage, upsampled bilinearly with half-pixel centres to [N, H, W].

  Args:
    model: a `care_jax.models.Classifier` (run in inference mode).
    variables: its ``{'params': ..., 'batch_stats': ...}``.
    images: [N, H, W, C] model inputs (normalised as for training).
    labels: [N] int classes whose maps are wanted.
    attention: 'auto', 'cam' or 'grad_cam' (see `Classifier.attention_maps`).

  Returns:
    float32 [N, H, W] in [0, 1].
  """
  images = jnp.asarray(images, jnp.float32)
  _, intermediates = model.apply(variables, images, train=False)
  maps = model.attention_maps(
    variables, intermediates['features'], jnp.asarray(labels, jnp.int32), method=attention
  )
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
    model: see `grad_cam_maps`.
    variables: see `grad_cam_maps`.
    images: see `grad_cam_maps`.
    labels: see `grad_cam_maps`.
    attention: see `grad_cam_maps`.
    fraction: threshold relative to each map's maximum, in (0, 1].
    largest_component: see `boxes_from_foreground`.
    margin: see `boxes_from_foreground`.
    batch_size: images per jitted chunk.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N].
  """
  images = _host_images(images)
  labels = np.asarray(labels)
  if labels.shape != images.shape[:1]:
    raise ValueError(
      f'labels must have shape [{images.shape[0]}] (one per image), got {labels.shape}.'
    )
  return _boxes_of_arrays(
    'grad_cam',
    [images, labels],
    model=model,
    variables=variables,
    fraction=fraction,
    attention=attention,
    largest_component=largest_component,
    margin=margin,
    batch_size=batch_size,
  )


def mask_boxes(
  masks: ArrayLike, *, largest_component: bool = True, margin: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
  """Bounding boxes of user segmentation masks (nonzero = lesion).

  Args:
    masks: [N, H, W] or [N, H, W, C] (a pixel is lesion where any channel is
      nonzero), e.g. HAM10000's ``*_segmentation.png`` (0 / 255).
    largest_component: see `boxes_from_foreground`.
    margin: see `boxes_from_foreground`.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N] (False for an empty mask).
  """
  masks = np.asarray(masks)
  if masks.ndim == 4:
    masks = (masks != 0).any(axis=-1)
  if masks.ndim != 3:
    raise ValueError(f'masks must have shape [N, H, W] or [N, H, W, C], got {masks.shape}.')
  return boxes_from_foreground(masks != 0, largest_component=largest_component, margin=margin)


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
    raise ValueError(
      f'image_sizes must have one (height, width) per box:'
      f' {len(sizes)} sizes for {len(boxes)} boxes.'
    )
  height, width = sizes[:, 0], sizes[:, 1]
  return np.stack(
    [boxes[:, 1] * width, boxes[:, 0] * height, boxes[:, 3] * width, boxes[:, 2] * height], axis=1
  )


def write_boxes_csv(path: str, image_names: Sequence[str], boxes_pixels: ArrayLike) -> None:
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
    raise ValueError(
      f'image_names has {len(names)} entries but boxes_pixels has {len(values)} rows.'
    )
  for row, (name, (xmin, ymin, xmax, ymax)) in enumerate(zip(names, values)):
    if not (0 <= xmin < xmax and 0 <= ymin < ymax):
      raise ValueError(
        f'box {row} of image {name!r} is not a valid box (need 0 <= xmin <'
        f' xmax and 0 <= ymin < ymax): {(xmin, ymin, xmax, ymax)}.'
      )
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for name, box in zip(names, values):
      writer.writerow([name, *(f'{v:.6g}' for v in box)])
