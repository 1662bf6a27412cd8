"""care_jax.models.pooling.max_pool: flax's max pool in value and gradient, ties included."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax.models import pooling

# (input shape, window, strides, padding): the ResNet stem's 3x3/2 pad 1 on odd and even sizes,
# VGG's 2x2/2, uneven strides and padding, a stride larger than the window leaves pixels out.
CASES = {
  'resnet stem, odd': ((2, 9, 7, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
  'resnet stem, even': ((2, 10, 10, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
  'vgg 2x2/2': ((1, 8, 6, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),
  'uneven': ((1, 7, 9, 2), (2, 3), (1, 2), ((0, 1), (1, 0))),
  'stride > window': ((1, 8, 8, 2), (2, 2), (3, 3), ((0, 0), (1, 0))),
}


def _inputs(shape, data, seed=0):
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  if data == 'ties':
    # What the stem pools: ReLU outputs, here rounded so that most windows hold equal maxima.
    x = np.maximum(np.round(x), 0.0)
  return jnp.asarray(x)


@pytest.mark.parametrize('data', ['distinct', 'ties'])
@pytest.mark.parametrize('case', CASES, ids=str)
def test_max_pool_equals_flax_in_value_and_gradient(case, data):
  shape, window, strides, padding = CASES[case]
  x = _inputs(shape, data)
  ours = lambda x: pooling.max_pool(x, window, strides=strides, padding=padding)
  flax = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
  np.testing.assert_array_equal(ours(x), flax(x))
  g = _inputs(flax(x).shape, 'distinct', seed=1)
  # Each window's cotangent goes to one input (the first maximum), as in XLA's own gradient.
  grad_ours = jax.jit(jax.grad(lambda x: jnp.sum(ours(x) * g)))(x)
  grad_flax = jax.jit(jax.grad(lambda x: jnp.sum(flax(x) * g)))(x)
  np.testing.assert_allclose(grad_ours, grad_flax, rtol=1e-6, atol=1e-6)


def test_a_window_of_equal_maxima_sends_its_cotangent_to_the_first():
  x = jnp.zeros((1, 2, 2, 1))
  grad = jax.grad(
    lambda x: jnp.sum(pooling.max_pool(x, (2, 2), strides=(2, 2), padding=((0, 0), (0, 0))))
  )(x)
  np.testing.assert_array_equal(grad[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])


def test_max_pool_keeps_bfloat16():
  x = _inputs((2, 9, 9, 4), 'distinct').astype(jnp.bfloat16)
  y = pooling.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
    np.asarray(y, np.float32),
    np.asarray(nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))), np.float32),
  )
  grad = jax.grad(
    lambda x: jnp.sum(pooling.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))))
  )(x)
  assert grad.dtype == jnp.bfloat16


def _lowered_ops(fn, x, platform: str) -> set[str]:
  text = jax.jit(fn).trace(x).lower(lowering_platforms=(platform,)).as_text()
  return set(re.findall(r'stablehlo\.(\w+)', text))


@pytest.mark.parametrize('platform', ['cpu', 'cuda', 'tpu'])
def test_the_slices_are_lowered_for_cpu_and_flax_max_pool_for_accelerators(platform):
  # Chosen when lowering for `platform`, not from the host's default backend: this CPU host
  # lowers the accelerators' form for 'cuda' and 'tpu'.
  x = _inputs((2, 9, 9, 4), 'distinct')
  loss = lambda x: jnp.sum(pooling.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))))
  ops = _lowered_ops(jax.value_and_grad(loss), x, platform)
  flax_form = {'reduce_window', 'select_and_scatter'}  # Flax's pool and its gradient.
  if platform == 'cpu':
    assert not ops & flax_form and {'slice', 'maximum', 'compare'} <= ops
  else:
    assert flax_form <= ops and 'case' not in ops


def test_max_pool_can_be_differentiated_twice_like_flax():
  # A Grad-CAM through a pooled head differentiates the pool's gradient again.
  shape, window, strides, padding = CASES['resnet stem, odd']
  x = _inputs(shape, 'distinct')

  def second_order(pool):
    inner = jax.grad(lambda x: jnp.sum(pool(x, window, strides=strides, padding=padding) ** 3))
    return jax.grad(lambda x: jnp.sum(inner(x) ** 2))(x)

  np.testing.assert_allclose(
    second_order(pooling.max_pool), second_order(nn.max_pool), rtol=1e-5, atol=1e-5
  )
