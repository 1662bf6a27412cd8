"""Max pooling whose backward pass is fast on CPU (the ResNet stem's 3x3/2 pool).

Flax's `flax.linen.max_pool` is one XLA reduce-window; its gradient on CPU tracks the position
of each window's maximum with index arrays and scatters into the input: 252 to 342 ms forward
and backward on ResNet-50's stem at 224x224 (batch 16), against 14 ms forward alone, and 72 ms
written as below (docs/benchmarks.md). `max_pool` writes the pool as the maximum of the
``kh * kw`` strided slices of the padded input, and its gradient by hand: each window's
cotangent goes to the first tap (row-major order) that holds the window's maximum, as XLA's and
torch's max pool do; the taps' masked cotangents are summed on one grid per stride residue and
interleaved once. Accelerators keep `flax.linen.max_pool`: both forms are staged out with
`jax.lax.platform_dependent`, and the lowering keeps the one of the platform it lowers for (the
slices on 'cpu', Flax's reduce-window elsewhere), so one `jax.export` artifact for several
platforms carries each its own form.

Example::

  y = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # == nn.max_pool(...)
"""

from collections.abc import Sequence
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax.models import _windows

Window = tuple[int, int]
Padding = tuple[tuple[int, int], tuple[int, int]]


def _geometry(shape, window: Window, strides: Window, padding: Padding):
  padded = tuple(shape[1 + i] + padding[i][0] + padding[i][1] for i in range(2))
  out_hw = tuple(_windows.output_size(padded[i], window[i], strides[i]) for i in range(2))
  return padded, out_hw


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _slice_max_pool(x: jax.Array, window: Window, strides: Window, padding: Padding) -> jax.Array:
  x_padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out = None
  for _, tap in _windows.taps(x_padded, window, strides):
    out = tap if out is None else jnp.maximum(out, tap)
  return out


def _slice_max_pool_fwd(x, window, strides, padding):
  out = _slice_max_pool(x, window, strides, padding)
  return out, (x, out)


def _slice_max_pool_bwd(window, strides, padding, residuals, cotangent):
  x, out = residuals
  padded, out_hw = _geometry(x.shape, window, strides, padding)
  x_padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  (sh, sw), zero = strides, jnp.zeros((), cotangent.dtype)
  # Padded pixel (a * s_h + r, b * s_w + q) receives from the taps (u, v) with u % s_h = r and
  # v % s_w = q, at output (a - u // s_h, b - v // s_w): one grid [B, A, Bw, C] per residue
  # (r, q), each a sum of shifted masked cotangents, interleaved once at the end.
  rows, cols = out_hw[0] + (window[0] - 1) // sh, out_hw[1] + (window[1] - 1) // sw
  grids = {}
  unclaimed = jnp.ones(out.shape, bool)
  for (u, v), tap in _windows.taps(x_padded, window, strides):
    first = unclaimed & (tap == out)  # The first tap holding the maximum takes the cotangent.
    unclaimed = unclaimed & ~first
    du, dv = u // sh, v // sw
    shifted = jnp.pad(
      jnp.where(first, cotangent, zero),
      ((0, 0), (du, rows - out_hw[0] - du), (dv, cols - out_hw[1] - dv), (0, 0)),
    )
    key = (u % sh, v % sw)
    grids[key] = shifted if key not in grids else grids[key] + shifted
  empty = jnp.zeros((x.shape[0], rows, cols, x.shape[3]), cotangent.dtype)
  grid = jnp.stack(
    [jnp.stack([grids.get((r, q), empty) for q in range(sw)], axis=3) for r in range(sh)], axis=2
  )  # [B, A, s_h, Bw, s_w, C]
  grad = grid.reshape(x.shape[0], rows * sh, cols * sw, x.shape[3])
  grad = jnp.pad(
    grad[:, : padded[0], : padded[1]],
    ((0, 0), (0, max(0, padded[0] - rows * sh)), (0, max(0, padded[1] - cols * sw)), (0, 0)),
  )
  (top, _), (left, _) = padding
  return (grad[:, top : top + x.shape[1], left : left + x.shape[2], :],)


_slice_max_pool.defvjp(_slice_max_pool_fwd, _slice_max_pool_bwd)


def max_pool(
  x: jax.typing.ArrayLike,
  window: Sequence[int],
  *,
  strides: Sequence[int],
  padding: Sequence[tuple[int, int]],
) -> jax.Array:
  """`flax.linen.max_pool` of an NHWC batch (padding with -inf), fast to differentiate on CPU.

  Same value and gradient as `flax.linen.max_pool` (ties: the first maximum of a window in
  row-major order takes the window's cotangent); on CPU as slices with a hand-written
  gradient, on other platforms `flax.linen.max_pool` itself (`jax.lax.platform_dependent`).
  """
  x = jnp.asarray(x)
  window, strides = tuple(window), tuple(strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  by_flax = functools.partial(nn.max_pool, window_shape=window, strides=strides, padding=padding)
  if x.ndim != 4:
    return by_flax(x)
  by_slices = functools.partial(_slice_max_pool, window=window, strides=strides, padding=padding)
  return jax.lax.platform_dependent(x, cpu=by_slices, default=by_flax)
