"""The foreground maps of the box generators, batched under `jax.jit`.

Each map takes a batch of images [N, H, W, C] to a foreground mask [N, h, w]
that `care_jax.boxes.geometry.boxes_from_foreground` boxes on the host:

* `otsu_contrast_foreground`: an Otsu threshold (`otsu_foreground`) of a
  lesion-contrast channel (`contrast_channel`), optionally blurred;
* `spectral_residual_foreground`: spectral-residual saliency
  (`spectral_residual_saliency`) above ``k`` times its mean;
* `grad_cam_foreground`: a classifier's attention map of the true class
  (`grad_cam_maps`) above ``fraction`` of its maximum.

`care_jax.boxes.generators.foreground_fn` picks one by method name and checks
its parameters (`check_contrast_channels`, `check_luma_channels`).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

CONTRASTS = ('log_red_green', 'darkness', 'brightness')
# Rec. 601 luma, as MATLAB's rgb2gray (used by Hou & Zhang) and PIL's 'L'.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _filter_matrix(size: int, kind: str, width: float, mode: str) -> np.ndarray:
  """[size, size] matrix M with ``M @ x == scipy.ndimage.<kind>_filter1d(x)``.

  Applying a separable filter as two small matmuls keeps it batched and jitted,
  with scipy's exact boundary handling (``mode``).
  """
  # Imported here: the config checks import this module, and scipy is needed only to build
  # the matrices (benchmarks/gpu.py runs where scipy is not installed).
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

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


def _luma(images: jax.Array) -> jax.Array:
  """[N, H, W]: Rec. 601 luma of RGB images, or the single channel."""
  if images.shape[-1] == 1:
    return images[..., 0]
  return jnp.einsum('nhwc,c->nhw', images, jnp.asarray(_LUMA))


def check_luma_channels(num_channels: int) -> None:
  if num_channels not in (1, 3):
    raise ValueError(f'images must have 1 (grey) or 3 (RGB) channels, got {num_channels}.')


def check_contrast_channels(num_channels: int, contrast: str) -> None:
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
  check_contrast_channels(images.shape[-1], contrast)
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
def otsu_contrast_foreground(images, *, contrast, sigma, num_bins):
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
  check_luma_channels(images.shape[-1])
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
def spectral_residual_foreground(images, *, work_size, sigma, k):
  saliency = spectral_residual_saliency(images, work_size=work_size, sigma=sigma)
  mean = saliency.mean(axis=(1, 2), keepdims=True)
  return (saliency > k * mean) & (mean > 0)


# The model (a hashable flax module) is static; the variables are arguments,
# not compile-time constants, so one compilation serves every chunk and call.
@functools.partial(jax.jit, static_argnums=0, static_argnames=('fraction', 'attention'))
def grad_cam_foreground(model, variables, images, labels, *, fraction, attention):
  maps = grad_cam_maps(model, variables, images, labels, attention=attention)
  peak = maps.max(axis=(1, 2), keepdims=True)
  # A constant map (all zeros after min-max) has no foreground.
  return (maps >= fraction * peak) & (peak > 0)


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
  features, head_inputs = intermediates['features'], intermediates.get('head_inputs')
  labels = jnp.asarray(labels, jnp.int32)
  maps = model.attention_maps(
    variables, features, labels, method=attention, head_inputs=head_inputs
  )
  return jax.image.resize(maps, images.shape[:3], 'bilinear')
