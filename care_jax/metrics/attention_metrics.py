"""Attention quality on images with a lesion box, pure JAX.

:func:`attention_quality` scores each image (:class:`AttentionMetrics` sums
it over batches): the fraction of the attention mass inside the box
(:func:`attention_mass_inside`), the pointing game (:func:`pointing_game`)
and the IoU of the thresholded map with the box (:func:`attention_iou`).
:func:`energy_in_box` is Rao et al.'s energy pointing game on the raw map.
Multi-label (one map per finding): :meth:`AttentionMetrics.from_batch_per_class`
keeps the attention sums per finding.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from care_jax import _numerics
from care_jax import attention

__all__ = [
  'AttentionMetrics',
  'attention_iou',
  'attention_mass_inside',
  'attention_quality',
  'energy_in_box',
  'pointing_game',
]


def _attention_inputs(
  maps: jax.typing.ArrayLike, masks: jax.typing.ArrayLike
) -> tuple[jax.Array, jax.Array]:
  """Min-max normalised float32 maps [B, h, w] and bool boxes [B, H, W]."""
  maps = attention.minmax_normalize(maps)
  masks = jnp.asarray(masks)
  if masks.ndim != 3 or masks.shape[0] != maps.shape[0]:
    raise ValueError(
      f'masks must have shape [B, H, W] with B = {maps.shape[0]} (maps shape '
      f'{maps.shape}), got shape {masks.shape}.'
    )
  if masks.shape[1] < maps.shape[1] or masks.shape[2] < maps.shape[2]:
    raise ValueError(
      f'masks spatial shape {masks.shape[1:]} must be at least the maps '
      f'spatial shape {maps.shape[1:]} (maps are only upsampled).'
    )
  return maps, masks > 0.5


def _upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  # Half-pixel centres, as the CARE loss sees the map.
  return jax.image.resize(maps, (maps.shape[0], *size), 'bilinear')


def attention_mass_inside(maps: jax.typing.ArrayLike, masks: jax.typing.ArrayLike) -> jax.Array:
  """Fraction of the attention mass inside the box, per image.

  ``sum(M * up(F)) / sum(up(F))`` with ``F`` the min-max normalised map and
  ``up`` the half-pixel bilinear upsampling to the mask resolution. As in the
  CARE loss, the sums are taken on the small grid with the adjoint-resized
  mask (``sum(M * up(F)) = sum(F * up^T(M))``), so no full-size map is built.
  A constant map (zero after normalisation) counts as uniform attention: its
  mass inside is the box's area fraction.

  Args:
    maps: [B, h, w] attention maps (any scale: min-max normalised here).
    masks: [B, H, W] boxes, ``H >= h``, ``W >= w``; values > 0.5 are inside.

  Returns:
    [B] float32 fractions in [0, 1] (0 for an empty mask).

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
    >>> m = jnp.zeros((1, 4, 4)).at[0, :2, :2].set(1.0)
    >>> print(attention_mass_inside(f, m))  # up(F) = outer([1, .75, .25, 0])
    [0.765625]
  """
  maps, inside = _attention_inputs(maps, masks)
  h, w = maps.shape[1:]
  box = inside.astype(maps.dtype)
  mass_in = jnp.sum(maps * _numerics.resize_adjoint(box, h, w), axis=(1, 2))
  ones = jnp.ones((1, *box.shape[1:]), maps.dtype)
  mass = jnp.sum(maps * _numerics.resize_adjoint(ones, h, w), axis=(1, 2))
  area_fraction = jnp.mean(box, axis=(1, 2))
  varies = mass > 0
  return jnp.where(varies, mass_in / jnp.where(varies, mass, 1.0), area_fraction)


def pointing_game(maps: jax.typing.ArrayLike, masks: jax.typing.ArrayLike) -> jax.Array:
  """1.0 where the maximum of the upsampled map lies in the box, per image.

  The pointing game of Zhang et al. ("Top-down Neural Attention by
  Excitation Backprop", ECCV 2016), without tolerance, on the map bilinearly
  upsampled (half-pixel centres) to the mask resolution. Ties: a hit needs
  ``max(up(F) inside) > max(up(F) outside)``, i.e. every maximal pixel in the
  box, so a constant map (no localisation) misses unless the box fills the
  image. The full-resolution map is built here (a max is not linear).

  Args:
    maps: [B, h, w] attention maps.
    masks: [B, H, W] boxes, ``H >= h``, ``W >= w``; values > 0.5 are inside.

  Returns:
    [B] float32 of 0.0 / 1.0 (0.0 for an empty mask).

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    >>> m = jnp.zeros((2, 4, 4)).at[:, :2, :2].set(1.0)
    >>> print(pointing_game(f, m))
    [1. 0.]
  """
  maps, inside = _attention_inputs(maps, masks)
  up = _upsample(maps, inside.shape[1:])
  max_in = jnp.max(jnp.where(inside, up, -jnp.inf), axis=(1, 2))
  max_out = jnp.max(jnp.where(inside, -jnp.inf, up), axis=(1, 2))
  return (max_in > max_out).astype(jnp.float32)


def attention_iou(
  maps: jax.typing.ArrayLike, masks: jax.typing.ArrayLike, *, threshold: float = 0.5
) -> jax.Array:
  """IoU of the thresholded attention map with the box, per image.

  ``R = up(F) >= threshold * max(up(F))`` (``up``: half-pixel bilinear
  upsampling of the normalised map to the mask resolution), then
  ``|R & M| / |R | M|``. A constant map selects the whole image.

  Args:
    maps: [B, h, w] attention maps.
    masks: [B, H, W] boxes, ``H >= h``, ``W >= w``; values > 0.5 are inside.
    threshold: a Python float in [0, 1], the fraction of each map's maximum
      that a pixel must reach to be selected.

  Returns:
    [B] float32 IoUs in [0, 1] (0 for an empty mask).

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
    >>> m = jnp.zeros((1, 4, 4)).at[0, :2, :2].set(1.0)
    >>> print(attention_iou(f, m, threshold=0.2))  # 6 pixels >= 0.2, 4 in the box
    [0.6666667]
  """
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f'threshold must lie in [0, 1], got {threshold}.')
  maps, inside = _attention_inputs(maps, masks)
  up = _upsample(maps, inside.shape[1:])
  region = up >= threshold * jnp.max(up, axis=(1, 2), keepdims=True)
  intersection = jnp.sum(region & inside, axis=(1, 2))
  union = jnp.sum(region | inside, axis=(1, 2))  # >= 1: the peak is selected.
  return (intersection / union).astype(jnp.float32)


def energy_in_box(maps: jax.typing.ArrayLike, masks: jax.typing.ArrayLike) -> jax.Array:
  """Rao et al.'s energy pointing game: the share of the positive attribution in the box.

  ``EPG = sum(M * relu(up(F))) / sum(relu(up(F)))`` with ``F`` the *raw* map (no min-max: a
  negative attribution counts for nothing, as in Rao, Böhle, Parchami-Araghi and Schiele,
  "Studying How to Efficiently and Effectively Guide Models with Explanations", ICCV 2023;
  sukrutrao/Model-Guidance ``metrics.py``, ``EnergyPointingGameBase``) and ``up`` the
  half-pixel bilinear upsampling to the mask resolution. Where ``M`` is an artefact box it is
  the typology's "wrong reason" share (Friedrich et al., 2023). Unlike
  :func:`attention_mass_inside` the ReLU is taken after the upsampling, so the full-size map
  is built.

  Args:
    maps: [B, h, w] attention maps, raw (signed) attributions.
    masks: [B, H, W] boxes, ``H >= h``, ``W >= w``; values > 0.5 are inside.

  Returns:
    [B] float32 shares in [0, 1] (0 where the map has no positive attribution).

  Examples:
    >>> f = jnp.array([[[1.0, -1.0], [0.0, 0.0]]])
    >>> m = jnp.zeros((1, 2, 2)).at[0, 0, 0].set(1.0)
    >>> print(energy_in_box(f, m))
    [1.]
  """
  maps = jnp.asarray(maps, jnp.float32)
  if maps.ndim != 3:
    raise ValueError(f'maps must have shape [B, h, w], got shape {maps.shape}.')
  _, inside = _attention_inputs(maps, masks)
  energy = jax.nn.relu(_upsample(maps, inside.shape[1:]))
  total = jnp.sum(energy, axis=(1, 2))
  in_box = jnp.sum(jnp.where(inside, energy, 0.0), axis=(1, 2))
  return jnp.where(total > 0, in_box / jnp.where(total > 0, total, 1.0), 0.0)


def attention_quality(
  maps: jax.typing.ArrayLike,
  masks: jax.typing.ArrayLike,
  *,
  threshold: float = 0.5,
  valid: jax.typing.ArrayLike | None = None,
) -> dict[str, jax.Array]:
  """Per-image attention quality against lesion boxes, and which images count.

  Args:
    maps: [B, h, w] attention maps (e.g. of the true class).
    masks: [B, H, W] lesion boxes, ``H >= h``, ``W >= w``.
    threshold: IoU threshold, a fraction of each map's maximum.
    valid: optional [B] bool (e.g. ``valid & has_lesion_mask`` of an eval
      batch); images with an empty mask are left out in any case.

  Returns:
    ``{'mass_inside', 'pointing_game', 'iou'}``: [B] float32 from
    :func:`attention_mass_inside`, :func:`pointing_game`,
    :func:`attention_iou`; ``'valid'``: [B] bool, the images to average over.

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
    >>> m = jnp.zeros((2, 4, 4)).at[0, :2, :2].set(1.0)
    >>> attention_quality(f, m)['valid']
    Array([ True, False], dtype=bool)
  """
  _, inside = _attention_inputs(maps, masks)
  has_box = jnp.any(inside, axis=(1, 2))
  if valid is not None:
    valid = jnp.asarray(valid)
    if valid.shape != has_box.shape:
      raise ValueError(f'valid must have shape [B] = {has_box.shape}, got shape {valid.shape}.')
    has_box = has_box & valid.astype(bool)
  return {
    'mass_inside': attention_mass_inside(maps, masks),
    'pointing_game': pointing_game(maps, masks),
    'iou': attention_iou(maps, masks, threshold=threshold),
    'valid': has_box,
  }


class AttentionMetrics(NamedTuple):
  """Sums of the attention quality over images with a box; means on demand.

  A pytree of scalars: build one per batch inside a jitted eval step
  (:meth:`from_batch`), ``psum`` it under ``pmap``, add the batches with
  :meth:`merge` (on device or host) and read the means with :meth:`compute`.

  Multi-label: :meth:`from_batch_per_class` scores each finding's map against
  that finding's box and keeps the sums per finding (each field ``[K]``, the
  same as :meth:`from_batch` of finding k alone in slot k); they merge and
  ``psum`` the same way, and :meth:`compute_per_class` reads per-finding
  means and their mean over the findings that have boxed images.

  Examples:
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
    >>> m = jnp.zeros((1, 4, 4)).at[0, :2, :2].set(1.0)
    >>> total = AttentionMetrics.empty().merge(AttentionMetrics.from_batch(f, m))
    >>> total.compute()['pointing_game'], total.compute()['num_images']
    (1.0, 1)
  """

  mass_inside: jax.typing.ArrayLike
  pointing_game: jax.typing.ArrayLike
  iou: jax.typing.ArrayLike
  num_images: jax.typing.ArrayLike

  @classmethod
  def empty(cls, num_classes: int | None = None) -> 'AttentionMetrics':
    """Zero sums: scalars, or ``[num_classes]`` per-finding sums."""
    if num_classes is None:
      return cls(np.float64(0.0), np.float64(0.0), np.float64(0.0), np.int64(0))
    if num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
    zeros = np.zeros(num_classes, np.float64)
    return cls(zeros, zeros.copy(), zeros.copy(), np.zeros(num_classes, np.int64))

  @classmethod
  def from_batch(
    cls,
    maps: jax.typing.ArrayLike,
    masks: jax.typing.ArrayLike,
    *,
    threshold: float = 0.5,
    valid: jax.typing.ArrayLike | None = None,
  ) -> 'AttentionMetrics':
    """Sums of :func:`attention_quality` over the batch's counted images."""
    quality = attention_quality(maps, masks, threshold=threshold, valid=valid)
    counted = quality.pop('valid')
    sums = {k: jnp.sum(jnp.where(counted, v, 0.0)) for k, v in quality.items()}
    return cls(**sums, num_images=jnp.sum(counted.astype(jnp.int32)))

  @classmethod
  def from_batch_per_class(
    cls,
    maps: jax.typing.ArrayLike,
    masks: jax.typing.ArrayLike,
    valid: jax.typing.ArrayLike | None = None,
    *,
    threshold: float = 0.5,
  ) -> 'AttentionMetrics':
    """Per-finding sums of :func:`attention_quality` over the batch, fields ``[K]``.

    Slot k holds :meth:`from_batch` of ``maps[:, k]`` against
    ``masks[:, k]`` on the rows ``valid[:, k]`` (one vmapped computation, so
    it runs inside a jitted eval step). An (image, finding) pair counts
    where it is valid and its mask is not empty.

    Args:
      maps: ``[B, K, h, w]`` attention maps, one per finding (e.g. of each
        finding's logit).
      masks: ``[B, K, H, W]`` boxes of each finding, ``H >= h``, ``W >= w``.
      valid: optional bool ``[B, K]``, the pairs to score (e.g. a positive
        finding with a box, on a row that is not padding).
      threshold: IoU threshold, a fraction of each map's maximum.

    Examples:
      >>> f = jnp.zeros((1, 2, 2, 2)).at[0, :, 0, 0].set(1.0)
      >>> m = jnp.zeros((1, 2, 4, 4)).at[0, 0, :2, :2].set(1.0)
      >>> AttentionMetrics.from_batch_per_class(f, m).num_images  # no box for finding 1
      Array([1, 0], dtype=int32)
    """
    maps, masks = jnp.asarray(maps), jnp.asarray(masks)
    if maps.ndim != 4:
      raise ValueError(f'maps must have shape [B, K, h, w], got shape {maps.shape}.')
    if masks.ndim != 4 or masks.shape[:2] != maps.shape[:2]:
      raise ValueError(
        f'masks must have shape [B, K, H, W] with [B, K] = {list(maps.shape[:2])} (maps '
        f'shape {maps.shape}), got shape {masks.shape}.'
      )
    if valid is None:
      valid = jnp.ones(maps.shape[:2], bool)
    valid = jnp.asarray(valid)
    if valid.shape != maps.shape[:2]:
      raise ValueError(
        f'valid must have shape [B, K] = {list(maps.shape[:2])}, got shape {valid.shape}.'
      )

    def one_finding(f, m, v):
      return cls.from_batch(f, m, threshold=threshold, valid=v)

    return jax.vmap(one_finding, in_axes=1)(maps, masks, valid)

  def merge(self, other: 'AttentionMetrics') -> 'AttentionMetrics':
    return type(self)(*(a + b for a, b in zip(self, other)))

  def compute(self) -> dict[str, float | int | None]:
    """``{'mass_inside', 'pointing_game', 'iou'}`` means (None without
    images) and ``'num_images'``."""
    if np.ndim(self.num_images):
      raise ValueError(
        f'these are per-finding sums (shape {np.shape(self.num_images)}): read them with '
        'compute_per_class(class_names).'
      )
    count = int(self.num_images)
    means = {
      k: (float(getattr(self, k)) / count if count else None)
      for k in ('mass_inside', 'pointing_game', 'iou')
    }
    return {**means, 'num_images': count}

  def compute_per_class(self, class_names: Sequence[str]) -> dict[str, Any]:
    """Means of per-finding sums (:meth:`from_batch_per_class`), JSON-ready.

    Returns:
      ``{'mass_inside', 'pointing_game', 'iou'}``: the mean over the findings
      with at least one boxed image of each finding's mean (None without
      any); ``'num_images'``: the (image, finding) pairs scored;
      ``'num_findings'``: the findings with at least one;
      ``'per_class'``: ``{finding: {'mass_inside', 'pointing_game', 'iou',
      'num_images'}}``, as :meth:`compute` of that finding alone.

    Examples:
      >>> f = jnp.zeros((1, 2, 2, 2)).at[0, :, 0, 0].set(1.0)
      >>> m = jnp.zeros((1, 2, 4, 4)).at[0, 0, :2, :2].set(1.0)
      >>> got = AttentionMetrics.from_batch_per_class(f, m).compute_per_class(['a', 'b'])
      >>> got['pointing_game'], got['num_findings'], got['per_class']['b']['iou']
      (1.0, 1, None)
    """
    count = np.asarray(self.num_images, np.int64)
    if count.shape != (len(class_names),):
      raise ValueError(
        f'per-finding sums of shape [K] with K = len(class_names) = {len(class_names)} '
        f'expected, got shape {count.shape}.'
      )
    keys = ('mass_inside', 'pointing_game', 'iou')
    sums = {k: np.asarray(getattr(self, k), np.float64) for k in keys}
    scored = count > 0
    means = {
      k: np.divide(s, count, out=np.zeros(count.shape), where=scored) for k, s in sums.items()
    }
    per_class = {
      name: {
        **{k: (float(means[k][i]) if scored[i] else None) for k in keys},
        'num_images': int(count[i]),
      }
      for i, name in enumerate(class_names)
    }
    return {
      **{k: (float(means[k][scored].mean()) if scored.any() else None) for k in keys},
      'num_images': int(count.sum()),
      'num_findings': int(scored.sum()),
      'per_class': per_class,
    }
