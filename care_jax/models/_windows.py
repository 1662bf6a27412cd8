"""The window taps that the patch convolution and the slice max pool share.

A window op with kernel (kh, kw) and strides (s_h, s_w) on a padded NHWC input sees, at output
pixel (i, j) and tap (u, v), the input pixel (i * s_h + u, j * s_w + v). For each tap that is
one strided slice of the padded input, ``[B, H_out, W_out, C]``.
"""

from collections.abc import Iterator, Sequence

import jax
from jax import lax


def output_size(padded: int, kernel: int, stride: int) -> int:
  """Output pixels along one axis of a window op on `padded` input pixels."""
  return (padded - kernel) // stride + 1


def taps(
  x_padded: jax.Array, window: Sequence[int], strides: Sequence[int]
) -> Iterator[tuple[tuple[int, int], jax.Array]]:
  """((u, v), the padded input under tap (u, v)) for every tap, row-major."""
  (kh, kw), (sh, sw) = tuple(window), tuple(strides)
  batch, height, width, channels = x_padded.shape
  ho, wo = output_size(height, kh, sh), output_size(width, kw, sw)
  for u in range(kh):
    for v in range(kw):
      yield (
        (u, v),
        lax.slice(
          x_padded,
          (0, u, v, 0),
          (batch, u + (ho - 1) * sh + 1, v + (wo - 1) * sw + 1, channels),
          (1, sh, sw, 1),
        ),
      )
