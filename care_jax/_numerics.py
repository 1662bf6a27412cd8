"""Numerical helpers shared by the math modules (losses, attention, metrics, imbalance).

Private to the package: the public modules import it as ``from care_jax import _numerics`` and
never reach into each other's underscore names.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# float32 matmuls on GPU/TPU default to reduced (bf16/tf32) precision; the
# adjoint resize and the map contractions must be exact to float32.
HIGHEST = jax.lax.Precision.HIGHEST


def compute_dtype(x: jax.Array) -> jnp.dtype:
  """The dtype to compute in: at least float32.

  bfloat16/float16/ints/bools -> float32; float64 (x64 mode) stays float64.
  """
  return jnp.promote_types(x.dtype, jnp.float32)


def float_logits(logits) -> jax.Array:
  """``logits`` as a jax array in the dtype to compute in (`compute_dtype`)."""
  logits = jnp.asarray(logits)
  return logits.astype(compute_dtype(logits))


def safe_mean(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator, and 0 where denominator == 0.

  The "double where": dividing by a safe denominator keeps the untaken
  branch finite, so the backward pass never forms 0 * inf = NaN.
  """
  positive = denominator > 0
  safe = jnp.where(positive, denominator, jnp.ones_like(denominator))
  return jnp.where(positive, numerator / safe, jnp.zeros_like(numerator))


@functools.lru_cache(maxsize=64)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] half-pixel bilinear upsampling matrix (float64).

  Row ``i`` holds the triangle-kernel weights of output pixel ``i``, whose
  centre lies at ``(i + 0.5) * in_size / out_size - 0.5`` in input
  coordinates; weights are renormalised over the valid input pixels, which
  clamps at the borders. For ``out_size >= in_size`` this equals
  ``jax.image.resize(x, ..., 'bilinear')`` (no antialiasing is involved when
  upsampling).
  """
  centres = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  weights = np.maximum(0.0, 1.0 - np.abs(centres[:, None] - np.arange(in_size)[None, :]))
  weights /= weights.sum(axis=1, keepdims=True)
  weights.setflags(write=False)  # Cached and shared: keep it immutable.
  return weights


def resize_adjoint(masks: jax.Array, h: int, w: int) -> jax.Array:
  """Ry^T M Rx: pulls [B, H, W] masks back onto the [h, w] map grid.

  The adjoint of the half-pixel bilinear upsampling ``up(F) = Ry @ F @ Rx^T``
  from [h, w] to [H, W], so that ``sum(M * up(F)) = sum(F * resize_adjoint(M))``.
  """
  big_h, big_w = masks.shape[1:]
  if big_h != h:
    ry = jnp.asarray(bilinear_matrix(h, big_h), masks.dtype)
    masks = jnp.einsum('bHW,Hh->bhW', masks, ry, precision=HIGHEST)
  if big_w != w:
    rx = jnp.asarray(bilinear_matrix(w, big_w), masks.dtype)
    masks = jnp.einsum('bhW,Ww->bhw', masks, rx, precision=HIGHEST)
  return masks
