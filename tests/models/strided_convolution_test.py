"""care_jax.models.strided_convolution: lax's values and derivatives (to the second order, RRR's
double backprop), in XLA's fast CPU forms, and only inside `second_order_forms`."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax.models import convolution
from care_jax.models import strided_convolution

NHWC = ('NHWC', 'HWIO', 'NHWC')
# (input shape, kernel shape, strides, padding): ResNet's 3x3/2 and 7x7/2 stem, a non-square
# input with uneven padding and strides.
CASES = {
  '3x3/2': ((2, 9, 9, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1))),
  '7x7/2 stem': ((2, 12, 12, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),
  'uneven': ((2, 7, 10, 2), (2, 3, 2, 3), (3, 2), ((0, 1), (2, 0))),
}


def _lax(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _closed(x, w, strides, padding):
  return strided_convolution.strided_convolution(x, w, strides, padding)


def _rrr_value_and_gradient(conv, x, w, strides, padding, irrelevant):
  """A double backprop: d/dW of sum (irrelevant * d/dx sum tanh(conv(x, W)))^2, and the value."""

  def penalty(w):
    grads = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w, strides, padding))))(x)
    return jnp.sum(jnp.square(irrelevant * grads))

  return jax.value_and_grad(penalty)(w)


def _inputs(case, dtype=jnp.float64):
  x_shape, w_shape, strides, padding = CASES[case]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), dtype)
  w = jnp.asarray(rng.normal(size=w_shape) / np.sqrt(np.prod(w_shape[:3])), dtype)
  irrelevant = jnp.asarray(rng.random(x_shape) < 0.4, dtype)
  return x, w, strides, padding, irrelevant


@pytest.mark.parametrize('case', CASES)
def test_value_and_derivatives_to_the_second_order_equal_lax(case):
  with jax.enable_x64(True):
    x, w, strides, padding, irrelevant = _inputs(case)
    np.testing.assert_allclose(
      _closed(x, w, strides, padding), _lax(x, w, strides, padding), rtol=1e-12, atol=1e-12
    )
    cotangent = jnp.ones_like(_lax(x, w, strides, padding))
    ours = jax.vjp(lambda x, w: _closed(x, w, strides, padding), x, w)[1](cotangent)
    theirs = jax.vjp(lambda x, w: _lax(x, w, strides, padding), x, w)[1](cotangent)
    for a, b in zip(ours, theirs):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    value, grad = _rrr_value_and_gradient(_closed, x, w, strides, padding, irrelevant)
    lax_value, lax_grad = _rrr_value_and_gradient(_lax, x, w, strides, padding, irrelevant)
  assert float(value) > 0
  np.testing.assert_allclose(value, lax_value, rtol=1e-12)
  np.testing.assert_allclose(grad, lax_grad, rtol=1e-10, atol=1e-12)


def test_the_third_derivative_equals_lax():
  """The three maps are closed under differentiation: any order works, not just two."""
  with jax.enable_x64(True):
    x, w, strides, padding, irrelevant = _inputs('3x3/2')

    def third(conv):
      def penalty(w):
        return _rrr_value_and_gradient(conv, x, w, strides, padding, irrelevant)[1]

      return jax.grad(lambda w: jnp.sum(jnp.sin(penalty(w))))(w)

    np.testing.assert_allclose(third(_closed), third(_lax), rtol=1e-9, atol=1e-12)


def test_double_backprop_has_no_reversed_kernel_convolution_where_lax_has_one():
  """XLA's CPU compiler runs the reversed-kernel form 15-30x slower (module docstring)."""
  x, w, strides, padding, irrelevant = _inputs('3x3/2', jnp.float32)

  def hlo(conv):
    fn = jax.jit(lambda w: _rrr_value_and_gradient(conv, x, w, strides, padding, irrelevant))
    return fn.lower(w).compile().as_text()

  assert 'rhs_reversal' in hlo(_lax)
  assert 'rhs_reversal' not in hlo(_closed)


def test_convolution_takes_the_closed_form_inside_second_order_forms_only():
  x, w, strides, padding, _ = _inputs('3x3/2', jnp.float32)

  def jaxpr(strides):
    # A new function each time: JAX caches traces by function, not by the context.
    ours = lambda x, w: convolution.convolution(x, w, strides, padding, dimension_numbers=NHWC)
    return str(jax.make_jaxpr(ours)(x, w))

  assert 'custom_vjp' not in jaxpr(strides)
  with strided_convolution.second_order_forms():
    assert strided_convolution.second_order_forms_on()
    inside, stride_one = jaxpr(strides), jaxpr((1, 1))
    closed = jax.jit(
      lambda x, w: convolution.convolution(x, w, strides, padding, dimension_numbers=NHWC)
    )(x, w)
  assert not strided_convolution.second_order_forms_on()
  assert 'custom_vjp' in inside
  assert 'custom_vjp' not in stride_one
  np.testing.assert_allclose(closed, _lax(x, w, strides, padding), rtol=1e-5, atol=1e-5)
  # Forward-mode differentiation, which the custom VJP rules out, keeps working outside.
  outside = lambda x, w: convolution.convolution(x, w, strides, padding, dimension_numbers=NHWC)
  jax.jvp(outside, (x, w), (x, w))
