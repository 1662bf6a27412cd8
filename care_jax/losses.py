"""The CARE attention loss and its distance-weighted outer mask.

The attention loss of CARE (Zhuang et al., "CARE: Class Attention to Regions
of Lesion for Classification on Imbalanced Data", MIDL 2019, PMLR
102:588-597), Eq. 2-4, for a batch of attention maps ``F`` and lesion masks::

    L_in  = -min( sum_ij M_in F / sum_ij M_in, tau )
    L_out =       sum_ij M_out F / sum_ij M_out
    L_a   = mean over images with a box of [ L_in + lam * L_out ]

When the masks are larger than the maps, ``F`` is bilinearly upsampled (half
pixel centres, as ``jax.image.resize(..., 'bilinear')``) to the mask
resolution. Upsampling is linear, ``up(F) = Ry @ F @ Rx^T``, so the loss is
evaluated exactly on the small grid: ``sum(M * up(F)) = sum(F * Ry^T M Rx)``;
the full-resolution map is never built.

The paper's distance-weighted outer mask (Section 2), ``M_out = start + delta * d``
outside the box with ``d`` the city-block distance to it, is :func:`distance_outer_mask`; it is
computed exactly on device with separable cumulative minima.

All functions are pure and work under ``jit``, ``vmap``, ``grad`` and inside
``pmap``/sharded steps. Computation happens in at least float32 (bfloat16
inputs are upcast) and results are float32 for float32/bfloat16 inputs.

The classification losses that CARE is combined with (cross-entropy, its
class-weighted form, the sigmoid binary cross-entropy and their weights) are
in `care_jax.imbalance`.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from care_jax import _checks
from care_jax import _deprecated
from care_jax import _numerics

__all__ = ['care_loss', 'care_loss_per_example', 'distance_outer_mask']

_REDUCTIONS = ('mean', 'sum')


def _validate_care_inputs(feature_map, mask, outer_mask, has_mask):
  if feature_map.ndim < 3:
    raise ValueError(
      f'feature_map must have shape [B, h, w] (or [B, K, h, w], one map per image and'
      f' class), got shape {feature_map.shape}.'
    )
  if feature_map.ndim == mask.ndim + 1 and feature_map.shape[-1] == 1:
    raise ValueError(
      f'feature_map must have shape [B, h, w] (or [B, K, h, w]), got shape {feature_map.shape}:'
      ' a map that kept its channel axis? Pass feature_map[..., 0].'
    )
  if mask.ndim != feature_map.ndim:
    raise ValueError(
      f'mask must have shape [B, H, W] (or [B, K, H, W]) like feature_map {feature_map.shape},'
      f' got shape {mask.shape}.'
    )
  if mask.shape[:-2] != feature_map.shape[:-2]:
    raise ValueError(
      f'mask batch size {mask.shape[:-2]} (shape {mask.shape}) does not match '
      f'feature_map batch size {feature_map.shape[:-2]} (shape '
      f'{feature_map.shape}).'
    )
  if any(big < small for big, small in zip(mask.shape[-2:], feature_map.shape[-2:])):
    raise ValueError(
      f'mask spatial shape {mask.shape[-2:]} must be at least the '
      f'feature_map spatial shape {feature_map.shape[-2:]} (maps are only '
      'upsampled to the mask resolution).'
    )
  if outer_mask is not None and outer_mask.shape != mask.shape:
    raise ValueError(f'outer_mask shape {outer_mask.shape} must equal mask shape {mask.shape}.')
  if has_mask is not None and has_mask.shape != feature_map.shape[:-2]:
    raise ValueError(
      f'has_mask must have shape {list(feature_map.shape[:-2])} (the batch shape of'
      f' feature_map), got shape {has_mask.shape}.'
    )


def care_loss_per_example(
  feature_map: ArrayLike,
  mask: ArrayLike,
  *,
  tau: float = 0.5,
  lam: float = 0.7,
  outer_mask: ArrayLike | None = None,
  has_mask: ArrayLike | None = None,
) -> jax.Array:
  """Per-image CARE attention loss ``L_in + lam * L_out``.

  For each image ``b``, with ``F`` upsampled to the mask resolution::

    L_in  = -min( sum_ij M_in F / sum_ij M_in, tau )   (0 if M_in sums to 0)
    L_out =       sum_ij M_out F / sum_ij M_out        (0 if M_out sums to 0)

  Above ``tau`` the inner term is constant, so it stops pushing attention into
  the box. Images without a mask (``has_mask`` False) get exactly 0 and no
  gradient. Value and gradient are finite for empty masks, full masks and
  constant maps.

  Reference: Zhuang et al., "CARE: Class Attention to Regions of Lesion for
  Classification on Imbalanced Data", MIDL 2019, PMLR 102:588-597, Eq. 2-3.

  Args:
    feature_map: [B, h, w] attention map ``F`` (float32 or bfloat16), already
      min-max normalised to [0, 1] by the caller; or [B, K, h, w], one map per
      image and class (multi-label CARE: each positive finding's map against
      that finding's box), which is computed as ``B * K`` images.
    mask: [B, H, W] (or [B, K, H, W]) inner mask ``M_in``, binary or soft in
      [0, 1], with ``H >= h`` and ``W >= w``. Bool/int masks are cast to float.
    tau: cap on the mean attention inside the box.
    lam: weight of the outer term.
    outer_mask: optional [B, H, W] outer mask ``M_out``, e.g. the paper's
      distance-weighted one from :func:`distance_outer_mask`; defaults to
      ``1 - mask``.
    has_mask: optional [B] (or [B, K]) bool, which images (image-class pairs)
      carry a box; defaults to ``sum(mask) > 0`` per image. Other dtypes are
      cast to bool.

  Returns:
    [B] (or [B, K]) float32 losses (float64 for float64 inputs under x64).

  Raises:
    ValueError: for a wrong rank or shape (the argument and shapes named),
      or, when ``mask``/``outer_mask`` are concrete (not traced), for a mask
      value outside [0, 1] (e.g. a 0/255 mask) or a negative outer weight,
      NaN or inf, with its index. Under ``jit`` values cannot be checked:
      out-of-range masks then give a meaningless loss. NaN in
      ``feature_map`` gives a NaN loss (the trainer's non-finite guard skips
      such steps).

  Examples:
    >>> import jax.numpy as jnp
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    >>> m = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    >>> care_loss_per_example(f, m, tau=0.5, lam=0.7)
    Array([-0.5,  0. ], dtype=float32)
  """
  return _care_per_example(
    feature_map, mask, tau=tau, lam=lam, outer_mask=outer_mask, has_mask=has_mask
  )[0]


def _care_per_example(feature_map, mask, *, tau, lam, outer_mask, has_mask):
  """Per-image losses and the [B] bool of images that carry a box."""
  feature_map = jnp.asarray(feature_map)
  mask = jnp.asarray(mask)
  outer_mask = None if outer_mask is None else jnp.asarray(outer_mask)
  has_mask = None if has_mask is None else jnp.asarray(has_mask)
  _validate_care_inputs(feature_map, mask, outer_mask, has_mask)
  # tau caps the inner mean (a cap <= 0 leaves no inner term); lam weighs the outer term.
  _check_nonnegative_scalar('tau', tau, positive=True)
  _check_nonnegative_scalar('lam', lam)
  _checks.check_range(
    'mask', mask, low=0, high=1, what='binary or soft masks; divide 0/255 masks by 255'
  )
  if outer_mask is not None:
    _checks.check_range('outer_mask', outer_mask, low=0, high=np.inf, what='non-negative weights')

  dtype = _numerics.compute_dtype(feature_map)
  batch_shape = feature_map.shape[:-2]
  # [B, K, ...] (one map per image and class) is computed as B * K images.
  flat = lambda x: x.reshape(-1, *x.shape[-2:])
  feature_map = flat(feature_map.astype(dtype))
  mask = flat(mask.astype(dtype))
  outer_mask = 1.0 - mask if outer_mask is None else flat(outer_mask.astype(dtype))
  h, w = feature_map.shape[1:]

  # Mask sums (denominators) at full mask resolution, as in the formula.
  inner_area = jnp.sum(mask, axis=(1, 2))
  outer_area = jnp.sum(outer_mask, axis=(1, 2))
  inner_sum = jnp.sum(feature_map * _numerics.resize_adjoint(mask, h, w), axis=(1, 2))
  outer_sum = jnp.sum(feature_map * _numerics.resize_adjoint(outer_mask, h, w), axis=(1, 2))

  inner_mean = _numerics.safe_mean(inner_sum, inner_area)
  loss_in = jnp.where(inner_area > 0, -jnp.minimum(inner_mean, tau), jnp.zeros_like(inner_mean))
  loss_out = _numerics.safe_mean(outer_sum, outer_area)
  loss = loss_in + lam * loss_out

  has_mask = inner_area > 0 if has_mask is None else has_mask.reshape(-1).astype(bool)
  loss = jnp.where(has_mask, loss, jnp.zeros_like(loss))
  return loss.reshape(batch_shape), has_mask.reshape(batch_shape)


def care_loss(
  feature_map: ArrayLike,
  mask: ArrayLike,
  *,
  tau: float = 0.5,
  lam: float = 0.7,
  reduction: str = 'mean',
  outer_mask: ArrayLike | None = None,
  has_mask: ArrayLike | None = None,
) -> jax.Array:
  """CARE attention loss ``L_a`` of a batch (paper Eq. 4).

  ``L_a = mean over images with a box of [L_in + lam * L_out]``; see
  :func:`care_loss_per_example` for the per-image terms and the arguments.
  When no image of the batch has a box the loss is exactly 0.0 with zero
  gradient.

  Reference: Zhuang et al., "CARE: Class Attention to Regions of Lesion for
  Classification on Imbalanced Data", MIDL 2019, PMLR 102:588-597.

  Args:
    feature_map: [B, h, w] min-max normalised attention maps, or [B, K, h, w]
      (one per image and class: the mean is then over the boxed pairs).
    mask: [B, H, W] (or [B, K, H, W]) inner masks, ``H >= h``, ``W >= w``.
    tau: cap on the mean attention inside the box.
    lam: weight of the outer term.
    outer_mask: optional [B, H, W] outer masks; default ``1 - mask``.
    has_mask: optional [B] (or [B, K]) bool; default ``sum(mask) > 0`` per
      image.
    reduction: ``'mean'`` (the paper: average over images with a box) or
      ``'sum'`` (sum over images with a box, as the official PyTorch code
      did; use it, with ``lam=1``, only for code-faithful reproduction).

  Returns:
    Scalar float32 loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> f = jnp.zeros((2, 7, 7)).at[:, 2:4, 2:4].set(1.0)
    >>> m = jnp.zeros((2, 224, 224)).at[0, 64:128, 64:128].set(1.0)
    >>> print(f'{float(care_loss(f, m, tau=0.5, lam=0.7)):.4f}')
    -0.4854
  """
  if reduction not in _REDUCTIONS:
    raise ValueError(f'reduction must be one of {_REDUCTIONS}, got {reduction!r}.')
  per_example, has_mask = _care_per_example(
    feature_map, mask, tau=tau, lam=lam, outer_mask=outer_mask, has_mask=has_mask
  )
  total = jnp.sum(per_example)
  if reduction == 'sum':
    return total
  return _numerics.safe_mean(total, jnp.sum(has_mask.astype(per_example.dtype)))


def _check_nonnegative_scalar(name: str, value, *, positive: bool = False) -> None:
  """Raises ValueError unless concrete ``value`` is a finite scalar >= 0 (> 0 if ``positive``;
  tracers pass)."""
  values = _checks.concrete(value)
  if values is None:
    return
  if values.shape != ():
    raise ValueError(f'{name} must be a scalar, got shape {values.shape}.')
  if not (np.isfinite(values) and (values > 0 if positive else values >= 0)):
    bound = '> 0' if positive else '>= 0'
    raise ValueError(f'{name} must be a finite number {bound}, got {values.item()!r}.')


def _l1_distance_1d(v: jax.Array, axis: int) -> jax.Array:
  """Exact 1-D distance transform ``d[i] = min_j (|i - j| + v[j])`` along ``axis``, in O(n).

  ``min_{j<=i} (v[j] + i - j) = i + cummin_{j<=i} (v[j] - j)`` and
  ``min_{j>=i} (v[j] + j - i) = -i + reverse-cummin_{j>=i} (v[j] + j)``.
  """
  axis = axis % v.ndim
  shape = [1] * v.ndim
  shape[axis] = v.shape[axis]
  index = jnp.arange(v.shape[axis], dtype=v.dtype).reshape(shape)
  forward = index + jax.lax.cummin(v - index, axis=axis)
  backward = -index + jax.lax.cummin(v + index, axis=axis, reverse=True)
  return jnp.minimum(forward, backward)


def distance_outer_mask(mask: ArrayLike, *, start: float, delta: float) -> jax.Array:
  """The paper's distance-weighted outer mask ``M_out``.

  With ``d(i, j)`` the city-block (L1) distance, in pixels of the mask grid,
  from pixel ``(i, j)`` to the nearest pixel with ``M_in > 0.5``::

    M_out(i, j) = 0                        if M_in(i, j) > 0.5
                  start + delta * d(i, j)  otherwise
    d(i, j)     = min_{(k, l): M_in(k, l) > 0.5} |i - k| + |j - l|

  so attention far from the lesion costs more than attention next to it.
  Only pixels with ``M_in > 0.5`` count as the box: pixels of a soft mask with
  ``0 < M_in <= 0.5`` get an outer weight (``>= start + delta``).
  ``care.outer='distance'`` uses it with the config defaults ``start=1.0``,
  ``delta=0.1`` (``care.outer_start``, ``care.outer_delta``); pass the result
  as ``outer_mask`` to :func:`care_loss`.

  An image with no pixel ``> 0.5`` has no distance and gets 0 everywhere:
  such an image carries no box, and :func:`care_loss` gives it 0 by default
  (``has_mask = sum(mask) > 0``; with an explicit ``has_mask`` its outer term
  is 0). Values and gradients of ``care_loss`` with this mask stay finite for
  empty and full masks.

  The L1 distance is separable, ``d(y, x) = min_y' (|y - y'| +
  min_x' (|x - x'| + v(y', x')))`` with ``v = 0`` on the box and ``H + W``
  (a finite "infinity") elsewhere, and each 1-D pass is exact in O(n) with
  forward and reverse cumulative minima. Computed in int32, so exact; pure,
  no Python loop over pixels, and works under ``jit`` and ``vmap``.

  Reference: Zhuang et al., "CARE: Class Attention to Regions of Lesion for
  Classification on Imbalanced Data", MIDL 2019, PMLR 102:588-597, Section 2
  (the distance-weighted outer mask).

  Args:
    mask: [B, H, W] (or [B, K, H, W]) inner mask ``M_in``, binary or soft in
      [0, 1] (bool/int masks are cast).
    start: weight of the pixels next to the box (distance 1 is
      ``start + delta``); >= 0.
    delta: weight added per pixel of distance; >= 0.

  Returns:
    float32 outer mask of the shape of ``mask`` (float64 for float64 masks
    under x64).

  Raises:
    ValueError: if ``mask`` has fewer than 3 axes (the shape is named); if
      ``start`` or ``delta`` is negative, NaN or inf (when concrete); or,
      when ``mask`` is concrete, for a mask value outside [0, 1] or
      non-finite, with its index.

  Examples:
    >>> import jax.numpy as jnp
    >>> m = jnp.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    >>> print(distance_outer_mask(m, start=1.0, delta=0.5))
    [[[0.  1.5 2. ]
      [1.5 2.  2.5]
      [2.  2.5 3. ]]]
  """
  mask = jnp.asarray(mask)
  if mask.ndim < 3:
    raise ValueError(f'mask must have shape [B, H, W] (or [B, K, H, W]), got shape {mask.shape}.')
  _checks.check_range(
    'mask', mask, low=0, high=1, what='binary or soft masks; divide 0/255 masks by 255'
  )
  _check_nonnegative_scalar('start', start)
  _check_nonnegative_scalar('delta', delta)

  dtype = _numerics.compute_dtype(mask)
  height, width = mask.shape[-2:]
  inside = mask.astype(dtype) > 0.5
  # Rows without a box pixel keep distances >= far after the first pass; every
  # true distance is <= H + W - 2 < far, so the minimum of the second pass is exact.
  far = height + width
  v = jnp.where(inside, 0, far).astype(jnp.int32)
  distance = _l1_distance_1d(_l1_distance_1d(v, axis=-1), axis=-2)

  start = jnp.asarray(start, dtype)
  delta = jnp.asarray(delta, dtype)
  weights = start + delta * distance.astype(dtype)
  no_box = ~jnp.any(inside, axis=(-2, -1), keepdims=True)
  return jnp.where(inside | no_box, jnp.zeros_like(weights), weights)


__getattr__ = _deprecated.getattr_of(__name__)
