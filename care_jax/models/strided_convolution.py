"""Strided convolutions whose derivatives of every order take XLA's fast CPU forms.

The input gradient of a strided convolution is a convolution of the output gradient dilated by
the stride (``lhs_dilation``). Differentiating that input gradient again with respect to the
kernel -- RRR's double backpropagation (`care_jax.training.guidance_terms.rrr_term`) -- makes
JAX's transpose rule emit a convolution with a reversed, dilated right-hand side and
batch-as-feature dimensions (``rhs_reversal=1x1``, ``dim_labels=01fb_o01i->f01b``), for which
XLA's CPU compiler has no fast kernel: 15 to 30 times the forward's time (ResNet-50's 7x7/2 stem
and 3x3/2 convolutions at 224 px, batch 16: 2.4 to 3.1 s of CPU each against 0.1 to 0.2 s for
the kernel gradient of the same size). Yet that product is the kernel gradient of the forward
convolution itself. Three bilinear maps are closed under differentiation::

    y  = conv(x, W)            the forward convolution
    dx = input_grad(g, W)      its transpose in x:  <c, input_grad(g, W)> = <conv(c, W), g>
    dW = kernel_grad(x, g)     its transpose in W:  <V, kernel_grad(x, g)> = <conv(x, V), g>

so each gets a custom VJP written with the three (``d/dW <c, input_grad(g, W)> =
kernel_grad(c, g)``, ...), and every derivative of any order is one of them, in the forms JAX
emits for a first derivative (which XLA runs fast). The values are lax's convolution and its
transposes (`jax.linear_transpose`), so they equal lax's to float round-off.

The custom VJP rules out forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) through these
convolutions, so `care_jax.models.convolution.convolution` takes this form only inside
`second_order_forms()` (the RRR train step's forward pass), on CPU.
"""

from collections.abc import Iterator
import contextlib
import contextvars
import dataclasses
from typing import Any

import jax
from jax import lax

_SECOND_ORDER = contextvars.ContextVar('second_order_forms', default=False)
_NHWC = ('NHWC', 'HWIO', 'NHWC')


@contextlib.contextmanager
def second_order_forms() -> Iterator[None]:
  """Strided convolutions traced inside take the closed custom-VJP form (on CPU).

  Use it around the forward pass whose input gradient is differentiated again; the choice is
  made at trace time, so the derivatives taken later (outside the block) keep it.
  """
  token = _SECOND_ORDER.set(True)
  try:
    yield
  finally:
    _SECOND_ORDER.reset(token)


def second_order_forms_on() -> bool:
  """Whether the caller is tracing inside `second_order_forms`."""
  return _SECOND_ORDER.get()


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The static part of a 2-D NHWC/HWIO convolution: strides, explicit padding, precision,
  and the input's and kernel's shapes and dtype (to transpose into)."""

  strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  precision: Any
  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  dtype: Any


def _lax(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  return lax.conv_general_dilated(
    x, w, geometry.strides, geometry.padding, dimension_numbers=_NHWC, precision=geometry.precision
  )


def _input_grad_value(g, w, geometry):
  like = jax.ShapeDtypeStruct(geometry.lhs_shape, geometry.dtype)
  return jax.linear_transpose(lambda x: _lax(x, w, geometry), like)(g)[0]


def _kernel_grad_value(x, g, geometry):
  like = jax.ShapeDtypeStruct(geometry.rhs_shape, geometry.dtype)
  return jax.linear_transpose(lambda w: _lax(x, w, geometry), like)(g)[0]


def _bilinear(value, transposes):
  """``value(a, b, geometry)`` with the custom VJP ``transposes(geometry, a, b, cotangent)``."""
  fn = jax.custom_vjp(value, nondiff_argnums=(2,))
  fn.defvjp(
    lambda a, b, geometry: (fn(a, b, geometry), (a, b)),
    lambda geometry, residuals, cotangent: transposes(geometry, *residuals, cotangent),
  )
  return fn


# The three maps and their VJPs in terms of each other (the module docstring's identities); the
# names in the lambdas resolve when a VJP is taken, after all three exist.
_conv = _bilinear(
  _lax, lambda geometry, x, w, g: (_input_grad(g, w, geometry), _kernel_grad(x, g, geometry))
)
_input_grad = _bilinear(
  _input_grad_value, lambda geometry, g, w, c: (_conv(c, w, geometry), _kernel_grad(c, g, geometry))
)
_kernel_grad = _bilinear(
  _kernel_grad_value, lambda geometry, x, g, v: (_input_grad(g, v, geometry), _conv(x, v, geometry))
)


def applies(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides,
  *,
  dilations,
  dimension_numbers,
  groups: tuple[int, int],
  preferred_element_type,
) -> bool:
  """Whether `care_jax.models.convolution.convolution` takes `strided_convolution` for these
  arguments: inside `second_order_forms`, a 2-D NHWC/HWIO convolution with a stride above 1, no
  dilation, no groups, one dtype and no ``preferred_element_type``."""
  if not second_order_forms_on() or lhs.ndim != 4 or rhs.ndim != 4:
    return False
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
    return False
  if any(d != 1 for dilation in dilations for d in (dilation or ())) or groups != (1, 1):
    return False
  plain = preferred_element_type is None and lhs.dtype == rhs.dtype
  return plain and any(s > 1 for s in window_strides)


def strided_convolution(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: tuple[int, ...],
  padding: tuple[tuple[int, int], ...],
  *,
  precision=None,
) -> jax.Array:
  """An NHWC input with an HWIO kernel (same dtype), lax's convolution with the closed VJP.

  Equals ``lax.conv_general_dilated(lhs, rhs, window_strides, padding, dimension_numbers=
  ('NHWC', 'HWIO', 'NHWC'))``; its gradients of every order are lax's first-order forms.

  >>> import jax.numpy as jnp
  >>> x, w = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1))
  >>> strided_convolution(x, w, (2, 2), ((1, 1), (1, 1)))[0, :, :, 0].tolist()
  [[4.0, 6.0], [6.0, 9.0]]
  """
  geometry = Geometry(
    tuple(window_strides),
    tuple(tuple(p) for p in padding),
    precision,
    tuple(lhs.shape),
    tuple(rhs.shape),
    lhs.dtype,
  )
  return _conv(lhs, rhs, geometry)
