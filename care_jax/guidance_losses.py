"""Losses on attention maps of CARE's family of explanation-guided methods.

Each loss compares attention maps ``F`` ([B, h, w], or [B, K, h, w]: one per image and class)
with a relevance map ``r`` at image size ([B(, K), H, W], ``H >= h``): ``+1`` relevant (``R =
max(r, 0)``, "look here"), ``-1`` irrelevant (``I = max(-r, 0)``, "do not look here"), ``0``
unknown. A lesion box alone is +1 inside and -1 outside; an artefact box is -1 on it and 0
elsewhere (:func:`relevance_of`). Every loss is ``loss(maps, relevance, *, has_mask=None,
**hyperparameters) -> [B] (or [B, K])``, like ``care_jax.losses.care_loss_per_example``: the
official batch loss is the mean (or, where the official code sums over images, the sum) of the
values over the maps with ``has_mask`` (default ``any(r != 0)``); the others get exactly 0 and no
gradient. Computed in float32 (bfloat16 maps are upcast); pure, under ``jit``, ``grad``, ``vmap``.

Resolution: CARE (through the adjoint resize) and the losses of Rao et al., GAIN and the typology
(on the bilinearly upsampled map ``up(F)``, as their official code: an ``O(B K H W)`` einsum) are
exact at the relevance resolution. RES thresholds and blurs on the map grid, as its official code,
with the relevance pulled onto the grid as the area average ``Ry^T r Rx / Ry^T 1 Rx``. Relevance
at the map resolution gives the official 7x7 form of RES, GRADIA and HAICS (docs/guidance.md).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from care_jax import _checks
from care_jax import _numerics
from care_jax import attention
from care_jax import losses

__all__ = [
  'MAP_LOSSES',
  'NORMALIZATIONS',
  'care_map_loss',
  'energy_loss',
  'gradia_loss',
  'haics_loss',
  'hint_loss',
  'normalize_maps',
  'relevance_of',
  'res_loss',
  'res_threshold',
  'rrr_g_loss',
]

NORMALIZATIONS = ('minmax', 'relu_minmax', 'maxabs', 'relu_maxabs', 'none')
_IMPUTATIONS = ('gaussian', 'none')
# The official codes' constants: torch.nn.BCELoss's floor of log p; the positive mass below which
# Rao et al.'s Energy is 1 - num; RES's offset of the candidates from irrelevant pixels (so that
# they satisfy themselves); RES-G's target blur / (max blur + 1e-6).
_LOG_FLOOR = -100.0
_ENERGY_MIN_MASS = 1e-7
_RES_EPSILON = 1e-4
_RES_TARGET_EPS = 1e-6


def relevance_of(batch) -> jax.Array:
  """The three-valued relevance map of a batch: ``batch['relevance']`` or one from its mask.

  A batch without a ``'relevance'`` key (every dataset before guidance methods) gets
  ``r = 2 * mask - 1`` on the images with ``has_mask`` (a lesion box: +1 inside, -1 outside) and
  ``r = 0`` (unknown) on the others.

  Args:
    batch: a mapping with ``'relevance'`` ([B(, K), H, W] in [-1, 1]), or with ``'mask'``
      (binary, [B(, K), H, W]) and ``'has_mask'`` ([B] or [B, K] bool).

  Returns:
    float32 relevance of the mask's shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> batch = {'mask': jnp.array([[[1, 0]], [[1, 0]]]), 'has_mask': jnp.array([True, False])}
    >>> relevance_of(batch)
    Array([[[ 1., -1.]],
    <BLANKLINE>
           [[ 0.,  0.]]], dtype=float32)
  """
  if 'relevance' in batch:
    relevance = jnp.asarray(batch['relevance'])
    return relevance.astype(_numerics.compute_dtype(relevance))
  mask = jnp.asarray(batch['mask'])
  mask = mask.astype(_numerics.compute_dtype(mask))
  has_mask = jnp.asarray(batch['has_mask']).astype(bool)
  has_mask = has_mask.reshape(has_mask.shape + (1,) * (mask.ndim - has_mask.ndim))
  return jnp.where(has_mask, 2.0 * mask - 1.0, jnp.zeros_like(mask))


def normalize_maps(maps: ArrayLike, mode: str) -> jax.Array:
  """Per-map normalisation of attention maps, as each method's official code does it.

  ``'minmax'``: ``(F - min F) / (max F - min F)``, no ReLU (CARE, RES, typology), constant maps
  to 0 (``care_jax.attention.minmax_normalize``; RES adds 1e-6 to the range instead);
  ``'relu_minmax'``: that of ``max(F, 0)`` (GAIN); ``'maxabs'``: ``F / max |F|``, zero maps kept
  (Rao et al.'s Energy, RRR*); ``'relu_maxabs'``: ``max(F, 0) / max F`` (Rao et al.'s L1, PPCE);
  ``'none'``: ``F`` in float32.

  Args:
    maps: [B, h, w] or [B, K, h, w] maps, any float dtype.
    mode: one of :data:`NORMALIZATIONS`.

  Returns:
    float32 maps of the input's shape.

  Raises:
    ValueError: for an unknown ``mode`` or maps of rank < 3.

  Examples:
    >>> import jax.numpy as jnp
    >>> normalize_maps(jnp.array([[[-2.0, 1.0]]]), 'maxabs')
    Array([[[-1. ,  0.5]]], dtype=float32)
  """
  if mode not in NORMALIZATIONS:
    raise ValueError(f'mode must be one of {NORMALIZATIONS}, got {mode!r}.')
  maps = jnp.asarray(maps)
  if maps.ndim < 3:
    raise ValueError(f'maps must have shape [B, h, w] or [B, K, h, w], got shape {maps.shape}.')
  maps = maps.astype(_numerics.compute_dtype(maps))
  if mode.startswith('relu_'):
    maps = jax.nn.relu(maps)
  if mode.endswith('minmax'):
    flat = maps.reshape(-1, *maps.shape[-2:])
    return attention.minmax_normalize(flat).reshape(maps.shape)
  if mode.endswith('maxabs'):
    scale = jnp.max(jnp.abs(maps), axis=(-2, -1), keepdims=True)
    return _numerics.safe_mean(maps, scale)  # All-zero maps stay 0.
  return maps


def _prepare(maps, relevance, has_mask):
  """Validated [N, h, w] maps, [N, H, W] relevance, [N] has_mask and the batch shape."""
  maps = jnp.asarray(maps)
  relevance = jnp.asarray(relevance)
  if maps.ndim < 3:
    raise ValueError(f'maps must have shape [B, h, w] or [B, K, h, w], got shape {maps.shape}.')
  small, big = maps.shape[-2:], relevance.shape[-2:]
  if relevance.shape[:-2] != maps.shape[:-2] or big[0] < small[0] or big[1] < small[1]:
    raise ValueError(
      f'relevance must have shape [B, H, W] (or [B, K, H, W]) with the batch shape of maps'
      f' {maps.shape} and H, W at least theirs (maps are upsampled), got shape {relevance.shape}.'
    )
  _checks.check_range(
    'relevance', relevance, low=-1, high=1, what='+1 relevant, -1 irrelevant, 0 unknown'
  )
  batch_shape = maps.shape[:-2]
  flat = lambda x: x.reshape(-1, *x.shape[-2:])
  maps = flat(maps.astype(_numerics.compute_dtype(maps)))
  relevance = flat(relevance.astype(maps.dtype))
  if has_mask is None:
    has_mask = jnp.any(relevance != 0, axis=(1, 2))
  else:
    has_mask = jnp.asarray(has_mask)
    if has_mask.shape != batch_shape:
      raise ValueError(f'has_mask must have shape {list(batch_shape)}, got {has_mask.shape}.')
    has_mask = has_mask.reshape(-1).astype(bool)
  return maps, relevance, has_mask, batch_shape


def _finish(per_map, has_mask, batch_shape):
  """Zero (value and gradient) for maps without a mask, reshaped to the batch shape."""
  return jnp.where(has_mask, per_map, jnp.zeros_like(per_map)).reshape(batch_shape)


def _upsample(maps, height, width):
  """``up(F) = Ry F Rx^T``: half-pixel bilinear upsampling of [N, h, w] maps to [N, H, W]."""
  h, w = maps.shape[1:]
  if h != height:
    ry = jnp.asarray(_numerics.bilinear_matrix(h, height), maps.dtype)
    maps = jnp.einsum('Hh,nhw->nHw', ry, maps, precision=_numerics.HIGHEST)
  if w != width:
    rx = jnp.asarray(_numerics.bilinear_matrix(w, width), maps.dtype)
    maps = jnp.einsum('nhw,Ww->nhW', maps, rx, precision=_numerics.HIGHEST)
  return maps


def _on_upsampled(maps, relevance, has_mask, loss_per_map):
  """``loss_per_map(up(F), r)`` on [N, H, W] arrays, zero without a mask, in the batch shape."""
  maps, relevance, has_mask, batch_shape = _prepare(maps, relevance, has_mask)
  per_map = loss_per_map(_upsample(maps, *relevance.shape[1:]), relevance)
  return _finish(per_map, has_mask, batch_shape)


def _on_grid(relevance, h, w):
  """[N, H, W] relevance as the area average ``Ry^T r Rx / Ry^T 1 Rx`` on the [h, w] grid."""
  big_h, big_w = relevance.shape[1:]
  area = np.outer(
    _numerics.bilinear_matrix(h, big_h).sum(axis=0), _numerics.bilinear_matrix(w, big_w).sum(axis=0)
  )
  return _numerics.resize_adjoint(relevance, h, w) / jnp.asarray(area, relevance.dtype)


def _safe_log(p):
  """``max(log p, -100)`` (torch's BCELoss) with a finite gradient at p = 0."""
  positive = p > 0
  log = jnp.log(jnp.where(positive, p, jnp.ones_like(p)))
  return jnp.where(positive, jnp.maximum(log, _LOG_FLOOR), _LOG_FLOOR)


def care_map_loss(
  maps: ArrayLike,
  relevance: ArrayLike,
  *,
  tau: float = 0.5,
  lam: float = 0.7,
  has_mask: ArrayLike | None = None,
) -> jax.Array:
  """CARE's attention loss with ``M_in = max(r, 0)`` and ``M_out = max(-r, 0)``.

  ``L_in + lam * L_out`` of ``care_jax.losses.care_loss_per_example`` (Zhuang et al., MIDL
  2019, Eq. 2-3), with ``L_in = -min(sum M_in F / sum M_in, tau)`` and ``L_out = sum M_out F /
  sum M_out``, each 0 where its mask is empty. For a binary lesion mask ``m`` and ``r = 2 m - 1``
  this equals ``care_loss_per_example(maps, m)`` exactly. Unknown pixels (``r = 0``) are in
  neither term, and an artefact box alone (``r = -1`` on it) pushes attention out of it.

  Args:
    maps: [B, h, w] or [B, K, h, w] min-max normalised attention maps.
    relevance: [B, H, W] or [B, K, H, W] relevance in [-1, 1], ``H >= h``, ``W >= w``.
    tau: cap on the mean attention inside the relevant region.
    lam: weight of the irrelevant-region term.
    has_mask: [B] (or [B, K]) bool; default ``any(r != 0)`` per map.

  Returns:
    [B] (or [B, K]) float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> f = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
    >>> r = jnp.array([[[1.0, -1.0], [-1.0, -1.0]]])
    >>> care_map_loss(f, r)
    Array([-0.5], dtype=float32)
  """
  maps = jnp.asarray(maps)
  relevance = jnp.asarray(relevance)
  if has_mask is None and relevance.ndim == maps.ndim:
    has_mask = jnp.any(relevance != 0, axis=(-2, -1))
  _checks.check_range(
    'relevance', relevance, low=-1, high=1, what='+1 relevant, -1 irrelevant, 0 unknown'
  )
  relevance = relevance.astype(_numerics.compute_dtype(relevance))
  inner, outer = jax.nn.relu(relevance), jax.nn.relu(-relevance)
  return losses.care_loss_per_example(
    maps, inner, tau=tau, lam=lam, outer_mask=outer, has_mask=has_mask
  )


def gradia_loss(
  maps: ArrayLike, relevance: ArrayLike, *, has_mask: ArrayLike | None = None
) -> jax.Array:
  """GRADIA's L1 loss: the mean over all pixels of ``|up(F) - R|``.

  ``L = mean_ij |up(F)_ij - max(r_ij, 0)|`` (Gao et al., "GRADIA", CSCW 2022, arXiv
  2202.02838); Rao et al. (ICCV 2023) use it as "L1" with ``F = max(E, 0) / max E``
  (``normalize_maps(E, 'relu_maxabs')``). As in both official codes (YuyangGao/RES ``RES.py``,
  ``attention_criterion`` on ``Y * (Y > 0)``; sukrutrao/Model-Guidance ``losses.py``,
  ``GradiaBBMultipleLoss``), unknown and irrelevant pixels are both target 0.

  Args:
    maps: [B, h, w] or [B, K, h, w] maps in [0, 1].
    relevance: [B, H, W] or [B, K, H, W] relevance in [-1, 1], ``H >= h``, ``W >= w``.
    has_mask: [B] (or [B, K]) bool; default ``any(r != 0)`` per map.

  Returns:
    [B] (or [B, K]) float32 losses; the official batch loss is their mean over masked maps.

  Examples:
    >>> import jax.numpy as jnp
    >>> gradia_loss(jnp.array([[[1.0, 0.5]]]), jnp.array([[[1.0, -1.0]]]))
    Array([0.25], dtype=float32)
  """
  l1 = lambda up, r: jnp.mean(jnp.abs(up - jax.nn.relu(r)), axis=(1, 2))
  return _on_upsampled(maps, relevance, has_mask, l1)


def haics_loss(
  maps: ArrayLike, relevance: ArrayLike, *, has_mask: ArrayLike | None = None, ppce: bool = False
) -> jax.Array:
  """HAICS's binary cross-entropy on the known pixels, or Rao et al.'s PPCE.

  ``ppce=False`` (HAICS, DOI 10.1145/3411763.3451798, as YuyangGao/RES ``RES.py``)::

    L = mean_ij [r_ij != 0] * -(R log up(F) + (1 - R) log(1 - up(F)))

  ``ppce=True`` (Rao et al., ICCV 2023, sukrutrao/Model-Guidance ``losses.py``,
  ``HAICSBBMultipleLoss``): ``L = mean over r > 0 of -log up(F)``, 0 where no pixel is relevant
  (the official code returns NaN there). ``log`` is clamped at -100 as in ``torch.nn.BCELoss``;
  maps are clipped to [0, 1], where the cross-entropy is defined.

  Deliberate deviation: ``RES.py``'s ``nn.BCELoss()`` already averages (``reduction='mean'``)
  before the product with ``[Y != 0]``; we take the per-pixel product that it intends. Both agree
  when every pixel is known (a lesion box's ``r = +-1``).

  Args:
    maps: [B, h, w] or [B, K, h, w] maps in [0, 1].
    relevance: [B, H, W] or [B, K, H, W] relevance in [-1, 1], ``H >= h``, ``W >= w``.
    has_mask: [B] (or [B, K]) bool; default ``any(r != 0)`` per map.
    ppce: Rao et al.'s positive-only form instead of HAICS.

  Returns:
    [B] (or [B, K]) float32 losses; their mean (HAICS) or sum (PPCE) is the official one.

  Examples:
    >>> import jax.numpy as jnp
    >>> f, r = jnp.array([[[0.5, 0.5]]]), jnp.array([[[1.0, 0.0]]])
    >>> print(f'{float(haics_loss(f, r)[0]):.4f} {float(haics_loss(f, r, ppce=True)[0]):.4f}')
    0.3466 0.6931
  """

  def cross_entropy(up, relevance):
    up, target = jnp.clip(up, 0.0, 1.0), jax.nn.relu(relevance)
    if ppce:
      total = jnp.sum(-target * _safe_log(up), axis=(1, 2))
      return _numerics.safe_mean(total, jnp.sum(target, axis=(1, 2)))
    bce = -(target * _safe_log(up) + (1.0 - target) * _safe_log(1.0 - up))
    return jnp.mean(bce * (relevance != 0), axis=(1, 2))

  return _on_upsampled(maps, relevance, has_mask, cross_entropy)


def energy_loss(
  maps: ArrayLike, relevance: ArrayLike, *, has_mask: ArrayLike | None = None
) -> jax.Array:
  """Rao et al.'s Energy loss: one minus the share of positive attribution on relevant pixels.

  With ``E+ = max(up(F), 0)``::

    L = 1 - sum_ij R_ij E+_ij / sum_ij E+_ij      (1 - sum R E+ when sum E+ < 1e-7)

  Reference: Rao, Boehle, Parchami-Araghi, Schiele, "Studying How to Efficiently and Effectively
  Guide Models with Explanations", ICCV 2023, Eq. 5; official code sukrutrao/Model-Guidance
  ``losses.py``, ``EnergyPointingGameBBMultipleLoss`` (maps ``normalize_maps(E, 'maxabs')`` or
  ``'none'``). A map without relevant pixels (an artefact box alone) gets 1 and no gradient.

  Args:
    maps: [B, h, w] or [B, K, h, w] maps (signed; only the positive part counts).
    relevance: [B, H, W] or [B, K, H, W] relevance in [-1, 1], ``H >= h``, ``W >= w``.
    has_mask: [B] (or [B, K]) bool; default ``any(r != 0)`` per map.

  Returns:
    [B] (or [B, K]) float32 losses in [0, 1]; their sum is the official batch loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> energy_loss(jnp.array([[[3.0, 1.0, -2.0]]]), jnp.array([[[1.0, -1.0, -1.0]]]))
    Array([0.25], dtype=float32)
  """

  def energy(up, relevance):
    positive = jax.nn.relu(up)
    inside = jnp.sum(jax.nn.relu(relevance) * positive, axis=(1, 2))
    total = jnp.sum(positive, axis=(1, 2))
    enough = total >= _ENERGY_MIN_MASS
    share = inside / jnp.where(enough, total, jnp.ones_like(total))
    return 1.0 - jnp.where(enough, share, inside)

  return _on_upsampled(maps, relevance, has_mask, energy)


def rrr_g_loss(
  maps: ArrayLike, relevance: ArrayLike, *, has_mask: ArrayLike | None = None
) -> jax.Array:
  """RRR on Grad-CAM: the summed squared attention on irrelevant pixels.

  ``L = sum_ij (I_ij up(F)_ij)^2`` with ``I = max(-r, 0)`` (Schramowski et al., "Making deep
  neural networks right for the right scientific reasons", Nature Machine Intelligence 2020;
  official code ml-research/A-Typology-for-Exploring-the-Mitigation-of-Shortcut-Behavior
  ``xil_methods/xil_loss.py``, ``RRRGradCamLoss``, on the [0, 1]-normalised Grad-CAM of the
  predicted class; Rao et al.'s "RRR*" in sukrutrao/Model-Guidance ``losses.py`` is the same sum
  on ``normalize_maps(E, 'maxabs')``).

  Deliberate deviation: the typology code sums on the map grid; we sum at the relevance resolution
  (as Rao et al.), about ``H W / (h w)`` times more (relevance at map size gives its scale).

  Args:
    maps: [B, h, w] or [B, K, h, w] maps.
    relevance: [B, H, W] or [B, K, H, W] relevance in [-1, 1], ``H >= h``, ``W >= w``.
    has_mask: [B] (or [B, K]) bool; default ``any(r != 0)`` per map.

  Returns:
    [B] (or [B, K]) float32 losses; the official batch loss is their sum over masked maps.

  Examples:
    >>> import jax.numpy as jnp
    >>> rrr_g_loss(jnp.array([[[0.5, 1.0]]]), jnp.array([[[-1.0, 1.0]]]))
    Array([0.25], dtype=float32)
  """
  outside = lambda up, r: jnp.sum(jnp.square(jax.nn.relu(-r) * up), axis=(1, 2))
  return _on_upsampled(maps, relevance, has_mask, outside)


def hint_loss(
  maps: ArrayLike, relevance: ArrayLike, *, has_mask: ArrayLike | None = None
) -> jax.Array:
  """HINT-style mean squared error to the relevant mask; GAIN's ``L_e``.

  ``L = mean_ij (up(F)_ij - R_ij)^2``: GAIN (Li et al., "Tell Me Where to Look", CVPR 2018, Eq.
  7; ilyak93/GAIN-pytorch ``main_MedT.py``, ``handle_EX_loss``, on ``normalize_maps(G,
  'relu_minmax')``). The typology's simplified HINT (Selvaraju et al., ICCV 2019;
  ml-research/A-Typology-for-Exploring-the-Mitigation-of-Shortcut-Behavior
  ``xil_methods/xil_loss.py``, ``HINTLoss``, ``reduction='sum'``) is ``H W`` times their sum.
  HINT's original ranking loss is not implemented.

  Args:
    maps: [B, h, w] or [B, K, h, w] maps in [0, 1].
    relevance: [B, H, W] or [B, K, H, W] relevance in [-1, 1], ``H >= h``, ``W >= w``.
    has_mask: [B] (or [B, K]) bool; default ``any(r != 0)`` per map.

  Returns:
    [B] (or [B, K]) float32 losses; GAIN's batch loss is their mean over masked maps.

  Examples:
    >>> import jax.numpy as jnp
    >>> hint_loss(jnp.array([[[0.5, 1.0]]]), jnp.array([[[1.0, -1.0]]]))
    Array([0.625], dtype=float32)
  """
  squared = lambda up, r: jnp.mean(jnp.square(up - jax.nn.relu(r)), axis=(1, 2))
  return _on_upsampled(maps, relevance, has_mask, squared)


def _blur3(x):
  """OpenCV's ``GaussianBlur(x, (3, 3), 0)`` per [N, h, w] map: the kernel [1/4, 1/2, 1/4] along
  each axis with the border reflected without repeating the edge (BORDER_REFLECT_101)."""
  for axis in (1, 2):
    size = x.shape[axis]
    if size == 1:  # A single pixel reflects onto itself: the blur keeps it.
      continue
    padding = [(0, 0)] * 3
    padding[axis] = (1, 1)
    padded = jnp.pad(x, padding, mode='reflect')
    part = lambda start: jax.lax.slice_in_dim(padded, start, start + size, axis=axis)
    x = 0.25 * part(0) + 0.5 * part(1) + 0.25 * part(2)
  return x


def _threshold(values, labels, valid):
  """RES's ``BF_solver`` on flat arrays, vectorised: one sort per sign and a binary search.

  Candidate ``v`` scores ``#{Y_i < 0: v > g_i} / |N| + #{Y_j > 0: v <= g_j} / |P|``; the counts of
  values below ``v`` are ``searchsorted`` positions in the sorted values of each sign (others set
  to +inf, so they sort last and are never below ``v``).
  """
  negative = valid & (labels < 0)
  positive = valid & (labels > 0)
  inf = jnp.full_like(values, jnp.inf)
  sorted_negative = jnp.sort(jnp.where(negative, values, inf))
  sorted_positive = jnp.sort(jnp.where(positive, values, inf))
  # The official order of the candidates: irrelevant pixels (offset by 1e-4), then relevant ones.
  candidates = jnp.concatenate([values + jnp.asarray(_RES_EPSILON, values.dtype), values])
  is_candidate = jnp.concatenate([negative, positive])
  num_negative = jnp.maximum(jnp.sum(negative), 1)
  num_positive = jnp.sum(positive)
  below = jnp.searchsorted(sorted_negative, candidates, side='left')
  at_or_above = num_positive - jnp.searchsorted(sorted_positive, candidates, side='left')
  num_positive = jnp.maximum(num_positive, 1)
  if values.size**2 // 2 < 2**31:
    # Scores times |N| |P| (at most M^2 / 2), exact in int32: ties go to the first candidate.
    score = below * num_positive + at_or_above * num_negative
  else:
    score = below / num_negative + at_or_above / num_positive
  score = jnp.where(is_candidate, score, -1)
  best = jnp.argmax(score)
  # The loop keeps a = 0 unless a candidate satisfies a constraint (score > 0).
  return jnp.where(score[best] > 0, candidates[best], jnp.zeros((), values.dtype))


def _gather(x, axis_name):
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _total(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _grid_threshold(maps, relevance, has_mask, axis_name):
  """The relevance on the map grid, the [N, h, w] masked pixels and RES's batch threshold."""
  labels = _on_grid(relevance, *maps.shape[1:])
  valid = jnp.broadcast_to(has_mask[:, None, None], maps.shape)
  flat = lambda x: _gather(x, axis_name).reshape(-1)
  return labels, valid, _threshold(flat(maps), flat(labels), flat(valid))


def res_threshold(
  maps: ArrayLike,
  relevance: ArrayLike,
  *,
  has_mask: ArrayLike | None = None,
  axis_name: str | None = None,
) -> jax.Array:
  """RES's batch threshold ``a*``: the value that best separates irrelevant from relevant pixels.

  Over the map-grid pixels of every masked map of the batch, with ``N = {Y < 0}`` and ``P = {Y >
  0}`` (``Y`` the relevance on the grid)::

    a* = argmax_v  #{i in N: v > g_i} / |N| + #{j in P: v <= g_j} / |P|
    v in {g_i + 1e-4: i in N} then {g_j: j in P}; the first best; 0 if no v scores > 0

  The official ``BF_solver`` (YuyangGao/RES ``RES.py``) tries every candidate against every pixel,
  ``O(M^2)`` for ``M`` pixels; here the two counts come from one sort per sign and a
  ``searchsorted``, ``O(M log M)``. Scores are compared exactly as integers (times ``|N| |P|``,
  while ``M^2 / 2`` fits in int32), so ties go to the first candidate as in the loop; the
  official float32 accumulation can break exact ties differently.

  Args:
    maps: [B, h, w] or [B, K, h, w] maps ``g`` on the map grid (min-max normalised).
    relevance: [B, H, W] or [B, K, H, W] relevance in [-1, 1], ``H >= h``, ``W >= w``.
    has_mask: [B] (or [B, K]) bool; default ``any(r != 0)`` per map.
    axis_name: the ``pmap``/``shard_map`` axis over which the batch is split: the threshold is
      then that of the whole batch, gathered across devices.

  Returns:
    Scalar float32 threshold (with zero gradient in :func:`res_loss`).

  Examples:
    >>> import jax.numpy as jnp
    >>> g = jnp.array([[[0.1, 0.2, 0.6, 0.9]]])
    >>> print(f'{float(res_threshold(g, jnp.array([[[-1.0, -1.0, 1.0, 1.0]]]))):.4f}')
    0.2001
  """
  maps, relevance, has_mask, _ = _prepare(maps, relevance, has_mask)
  return _grid_threshold(maps, relevance, has_mask, axis_name)[2]


def res_loss(
  maps: ArrayLike,
  relevance: ArrayLike,
  *,
  has_mask: ArrayLike | None = None,
  eta: float = 0.0,
  tanh_scale: float = 5.0,
  impute: str = 'gaussian',
  axis_name: str | None = None,
) -> jax.Array:
  """RES (robust explanation supervision): thresholded alignment with slack, plus imputation.

  On the map grid, with ``Y`` the relevance there, ``a*`` from :func:`res_threshold` (a constant)
  and ``n`` masked maps holding ``|Y != 0|`` known pixels in all::

    L_align = max(0, sum_{b, ij: Y != 0} |tanh(s (g - a*)) - Y| / |Y != 0| - eta)
    L_imp   = mean_b mean_ij |g - Yhat|,  Yhat = blur(max(Y, 0)) / (max blur + 1e-6)
    L       = L_align + L_imp

  ``blur`` is OpenCV's 3x3 ``GaussianBlur`` (RES-G). Reference: Gao, Sun, Bai, Gu, Hong, Zhao,
  "RES: A Robust Framework for Guiding Visual Explanation", KDD 2022; official code
  YuyangGao/RES ``RES.py``, ``model_train_with_map`` (``--transforms Gaussian``), whose
  ``--eta`` defaults to 0 (its README runs use 0.1).

  ``L_align`` is a batch term: map ``b`` gets ``[L_align > 0] (n S_b / |Y != 0| - eta)`` (``S_b``
  its summed errors), whose mean over the masked maps is the official loss and gradient.
  Deviations: the relevance is area-averaged onto the grid (the official code samples it
  nearest-neighbour); RES-L's learned imputation is not here (``impute='none'`` drops ``L_imp``).
  A masked map with all-unknown relevance gets ``L_imp = mean |g|``.

  Args:
    maps: [B, h, w] or [B, K, h, w] maps ``g``, min-max normalised.
    relevance: [B, H, W] or [B, K, H, W] relevance in [-1, 1], ``H >= h``, ``W >= w``.
    has_mask: [B] (or [B, K]) bool; default ``any(r != 0)`` per map.
    eta: slack: alignment errors below it cost nothing.
    tanh_scale: ``s``, the steepness of the surrogate of the step at ``a*``.
    impute: ``'gaussian'`` (RES-G) or ``'none'``.
    axis_name: the ``pmap``/``shard_map`` axis the batch is split over: the threshold, ``n`` and
      ``|Y != 0|`` are then those of the whole batch.

  Returns:
    [B] (or [B, K]) float32 shares; their mean over masked maps is the official batch loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> g = jnp.array([[[0.1, 0.2, 0.6, 0.9]]])
    >>> res_loss(g, jnp.array([[[-1.0, -1.0, 1.0, 1.0]]]), impute='none')
    Array([0.39370537], dtype=float32)
  """
  if impute not in _IMPUTATIONS:
    raise ValueError(f'impute must be one of {_IMPUTATIONS}, got {impute!r}.')
  maps, relevance, has_mask, batch_shape = _prepare(maps, relevance, has_mask)
  labels, valid, threshold = _grid_threshold(maps, relevance, has_mask, axis_name)
  threshold = jax.lax.stop_gradient(threshold)

  known = ((labels != 0) & valid).astype(maps.dtype)
  errors = jnp.abs(jnp.tanh(tanh_scale * (maps - threshold)) - labels)
  errors = jnp.sum(errors * known, axis=(1, 2))
  total_known = _total(jnp.sum(known), axis_name)
  num_maps = _total(jnp.sum(has_mask.astype(maps.dtype)), axis_name)
  mean_error = _numerics.safe_mean(_total(jnp.sum(errors), axis_name), total_known)
  share = num_maps * _numerics.safe_mean(errors, total_known) - eta
  per_map = jnp.where(mean_error > eta, share, jnp.zeros_like(share))
  if impute == 'gaussian':
    blurred = _blur3(jax.nn.relu(labels))
    target = blurred / (jnp.max(blurred, axis=(1, 2), keepdims=True) + _RES_TARGET_EPS)
    per_map = per_map + jnp.mean(jnp.abs(maps - target), axis=(1, 2))
  return _finish(per_map, has_mask, batch_shape)


MAP_LOSSES = {
  'care': care_map_loss,
  'gradia': gradia_loss,
  'haics': haics_loss,
  'energy': energy_loss,
  'rrr_g': rrr_g_loss,
  'hint': hint_loss,
  'res': res_loss,
}
"""The map losses by method name, each ``loss(maps, relevance, *, has_mask=None, **hp) -> [B]``."""
