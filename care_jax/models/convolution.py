"""The convolution of every model, in the form that is fastest for its static shapes.

XLA's CPU convolution is slow in two places that ResNets hit: on tiny feature maps (a 3x3
convolution of a 2x2 map with 512 channels, ResNet layer4 at 64x64 input, runs 33 times slower,
forward and backward, than the same product written as a matmul) and on 1x1 kernels (2 to 5.6
times slower than the matmul they are, on ResNet-50's bottlenecks at 224x224). Written as
patches times a matrix -- the ``kh * kw`` shifted slices of the padded input side by side, then
one matrix product with the kernel reshaped to ``[kh * kw * C_in, C_out]`` -- both become plain
matmuls, which XLA runs at full speed, and the gradient is slices, pads and matmuls again. The
product is written in 2-D (``[B*H*W, kh*kw*C_in]`` times ``[kh*kw*C_in, C_out]``), so that its
weight gradient is a plain contraction over rows. For a 1x1 kernel the patches are the input
itself (strided for stride 2): nothing is copied. For a larger kernel on a larger map the patch
form copies the input ``kh * kw`` times and loses to XLA's own, so the form is chosen at trace
time from the static shapes (`uses_patch_form`), as measured by ``benchmarks/conv_forms.py``
(docs/benchmarks.md).

The platform is chosen later, where JAX knows it: `convolution` stages out both forms with
`jax.lax.platform_dependent` (the patch form for 'cpu', lax's convolution for every other
platform), and the lowering keeps the one of the platform it lowers for. So a step jitted on a
GPU host but run on CPU arrays gets the CPU form, and one `jax.export` artifact for
``('cpu', 'cuda', 'tpu')`` carries the patch form in its CPU module and cuDNN's and the TPU's
convolutions in theirs (a Python test of `jax.default_backend()` at trace time would bake the
tracing host's form into all of them).

`convolution` has `jax.lax.conv_general_dilated`'s signature, so it plugs into
``flax.linen.Conv(conv_general_dilated=convolution)``; the parameters keep Flax's layout (HWIO
kernels), so checkpoints and torchvision weights load unchanged.

Example::

  y = convolution(x, kernel, (1, 1), ((1, 1), (1, 1)),
                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))   # == lax.conv_general_dilated
"""

from collections.abc import Sequence
import functools

import jax
from jax import lax
import jax.numpy as jnp

from care_jax.models import _windows
from care_jax.models import strided_convolution

# Kernels larger than 1x1 take the patch form on CPU for output maps of at most this many
# pixels (H_out * W_out). Measured on the ResNet-18/50 shapes (docs/benchmarks.md): the patch
# form wins 1.2x to 33x at 4x4 and 2x2 outputs and loses up to 2.4x at 8x8 to 56x56 (stride 1).
PATCH_FORM_MAX_OUTPUT_PIXELS = 16
# Depthwise convolutions (ConvNeXt's 7x7, EfficientNet's 3x3/5x5) on CPU as the sum of the kernel
# taps' slices times per-channel weights (`depthwise_convolution`) instead of XLA's grouped
# convolution: measured with benchmarks/conv_forms.py (docs/benchmarks.md).
DEPTHWISE_TAP_FORM = True

_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ('NHWC', 'HWIO', 'NHWC'))


def _explicit_padding(padding, lhs_shape, rhs_shape, strides) -> tuple[tuple[int, int], ...] | None:
  if isinstance(padding, str):
    try:
      return tuple(lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding))
    except (TypeError, ValueError):
      return None
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def uses_patch_form(
  lhs_shape: Sequence[int],
  rhs_shape: Sequence[int],
  window_strides: Sequence[int],
  padding,
  *,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  backend: str = 'cpu',
) -> bool:
  """Whether `convolution` computes this convolution as patches times a matrix on ``backend``.

  True on CPU for a 2-D NHWC/HWIO convolution without dilation or groups whose kernel is 1x1
  (a matmul whatever the map), tiles the input (kernel = stride, no padding) or whose output map
  has at most `PATCH_FORM_MAX_OUTPUT_PIXELS` pixels; other platforms ('cuda', 'rocm', 'tpu')
  keep their own convolution (cuDNN and the TPU have no such slowdowns to work around).

  Args:
    backend: the platform the convolution runs on (``jax.lax.platform_dependent``'s names:
      'cpu', 'cuda', 'tpu', ...). `convolution` asks for 'cpu' and leaves the platform to the
      lowering; no test of `jax.default_backend()` is made.
  """
  if backend != 'cpu' or len(lhs_shape) != 4 or len(rhs_shape) != 4:
    return False
  if lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) != _NHWC:
    return False
  if any(d != 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1)))):
    return False
  if feature_group_count != 1 or batch_group_count != 1:
    return False
  strides = tuple(window_strides)
  pads = _explicit_padding(padding, lhs_shape, rhs_shape, strides)
  if pads is None or any(p < 0 for pair in pads for p in pair):
    return False
  out = [
    _windows.output_size(lhs_shape[1 + i] + sum(pads[i]), rhs_shape[i], strides[i])
    for i in range(2)
  ]
  if out[0] < 1 or out[1] < 1:
    return False
  # A kernel as large as its stride without padding (ConvNeXt's 4x4/4 stem and 2x2/2
  # downsampling) tiles the input: its patches are a reshape, nothing is copied (1.3-2.3x faster).
  tiles = tuple(rhs_shape[:2]) == strides and not any(p for pair in pads for p in pair)
  return tuple(rhs_shape[:2]) == (1, 1) or tiles or out[0] * out[1] <= PATCH_FORM_MAX_OUTPUT_PIXELS


def patch_convolution(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding: Sequence[tuple[int, int]],
  *,
  precision=None,
  preferred_element_type=None,
) -> jax.Array:
  """An NHWC input with an HWIO kernel, as patches times a matrix; equals lax's convolution.

  The patch of output pixel (i, j) is the concatenation over kernel taps (u, v) of the padded
  input at (i * s_h + u, j * s_w + v): ``[B, H_out, W_out, kh * kw * C_in]`` in the order of
  the HWIO kernel's reshape to ``[kh * kw * C_in, C_out]``.
  """
  kh, kw, c_in, c_out = rhs.shape
  pads = tuple(tuple(p) for p in padding)
  x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
  taps = [tap for _, tap in _windows.taps(x, (kh, kw), window_strides)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  batch, height, width, depth = patches.shape
  # A 2-D product, not a dot_general over [B, H, W, K]: autodiff turns the 4-D one into a weight
  # gradient contracting three dimensions, for which XLA's CPU compiler writes the incoming
  # gradient transposed from inside the BatchNorm backward that produces it (a slow strided
  # write); the 2-D one is contracted in place. Same values, 1.2x faster ResNet-50 step.
  out = lax.dot_general(
    patches.reshape(batch * height * width, depth),
    rhs.reshape(kh * kw * c_in, c_out),
    (((1,), (0,)), ((), ())),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  return out.reshape(batch, height, width, c_out)


def is_depthwise(lhs_shape, rhs_shape, feature_group_count: int, dimension_numbers=None) -> bool:
  """Whether this is a 2-D NHWC/HWIO depthwise convolution: one input channel per group and
  as many groups as input and output channels (torch's ``groups == in == out``)."""
  if len(lhs_shape) != 4 or len(rhs_shape) != 4 or feature_group_count == 1:
    return False
  if lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) != _NHWC:
    return False
  return rhs_shape[2] == 1 and feature_group_count == lhs_shape[3] == rhs_shape[3]


def depthwise_convolution(
  lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Sequence[tuple[int, int]]
) -> jax.Array:
  """A depthwise NHWC convolution (HWIO kernel [kh, kw, 1, C]) as the sum over the kernel taps
  of the strided input slice times that tap's per-channel weights; equals lax's convolution with
  ``feature_group_count = C``. Products are accumulated in float32 (as lax's convolution does
  for bfloat16), and the gradient is slices, pads and elementwise products again."""
  kh, kw = rhs.shape[:2]
  pads = tuple(tuple(p) for p in padding)
  x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
  weights = rhs.astype(jnp.float32)
  out = None
  for (u, v), tap in _windows.taps(x, (kh, kw), window_strides):
    term = tap.astype(jnp.float32) * weights[u, v, 0]
    out = term if out is None else out + term
  return out.astype(jnp.result_type(lhs, rhs))


def _lax_or_second_order_form(lhs: jax.Array, rhs: jax.Array, by_lax: functools.partial):
  """``by_lax(lhs, rhs)``; inside `strided_convolution.second_order_forms` (the RRR step's
  forward), a strided convolution on CPU in the closed form whose second derivatives XLA's CPU
  compiler runs fast (`strided_convolution.applies`)."""
  if not strided_convolution.second_order_forms_on():
    return by_lax(lhs, rhs)
  args = by_lax.keywords
  strides = tuple(args['window_strides'])
  pads = _explicit_padding(args['padding'], lhs.shape, rhs.shape, strides)
  applies = pads is not None and strided_convolution.applies(
    lhs,
    rhs,
    strides,
    dilations=(args['lhs_dilation'], args['rhs_dilation']),
    dimension_numbers=args['dimension_numbers'],
    groups=(args['feature_group_count'], args['batch_group_count']),
    preferred_element_type=args['preferred_element_type'],
  )
  if not applies:
    return by_lax(lhs, rhs)
  closed = functools.partial(
    strided_convolution.strided_convolution,
    window_strides=strides,
    padding=pads,
    precision=args['precision'],
  )
  return lax.platform_dependent(lhs, rhs, cpu=closed, default=by_lax)


def convolution(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
  **kwargs,
) -> jax.Array:
  """`jax.lax.conv_general_dilated`, as patches times a matrix where that is faster.

  Same arguments and result (up to float round-off) as `jax.lax.conv_general_dilated`. Where
  `uses_patch_form` holds for CPU, both forms are staged out with `jax.lax.platform_dependent`:
  the patch form runs on CPU, lax's convolution on any other platform (the lowering keeps only
  the branch of the platform it lowers for). Other keyword arguments (e.g. lax's
  ``out_sharding``) go to lax.
  """
  lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  by_lax = functools.partial(
    lax.conv_general_dilated,
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
    **kwargs,
  )
  if (
    not kwargs
    and DEPTHWISE_TAP_FORM
    and is_depthwise(lhs.shape, rhs.shape, feature_group_count, dimension_numbers)
  ):
    pads = _explicit_padding(padding, lhs.shape, rhs.shape, tuple(window_strides))
    if pads is not None and not any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
      # Rematerialised: autodiff would keep every tap's slice (kh * kw copies of the input, 49
      # for a 7x7 kernel) for the weight gradient; slicing the input again is cheap.
      by_taps = jax.checkpoint(
        functools.partial(depthwise_convolution, window_strides=window_strides, padding=pads)
      )
      return lax.platform_dependent(lhs, rhs, cpu=by_taps, default=by_lax)
  if kwargs or not uses_patch_form(
    lhs.shape,
    rhs.shape,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
  ):
    return by_lax(lhs, rhs) if kwargs else _lax_or_second_order_form(lhs, rhs, by_lax)
  by_patches = functools.partial(
    patch_convolution,
    window_strides=window_strides,
    padding=_explicit_padding(padding, lhs.shape, rhs.shape, tuple(window_strides)),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  return lax.platform_dependent(lhs, rhs, cpu=by_patches, default=by_lax)
