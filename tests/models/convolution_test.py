"""care_jax.models.convolution: the patch form equals lax's convolution and is taken where meant."""

import collections
import re

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import models
from care_jax.models import convolution

NHWC = ('NHWC', 'HWIO', 'NHWC')
# (input shape, kernel shape, strides, padding): the ResNets' convolutions at small maps (3x3
# stride 1 and 2, the 1x1 stride-2 shortcut, the 7x7 stem), a non-square input, string padding.
CASES = {
  '3x3 on 2x2': ((3, 2, 2, 16), (3, 3, 16, 8), (1, 1), ((1, 1), (1, 1))),
  '3x3/2 from 4x4': ((2, 4, 4, 8), (3, 3, 8, 6), (2, 2), ((1, 1), (1, 1))),
  '1x1/2 shortcut': ((2, 5, 5, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0))),
  '1x1 on a large map': ((2, 20, 20, 8), (1, 1, 8, 6), (1, 1), ((0, 0), (0, 0))),
  '7x7/2 stem': ((1, 7, 6, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),
  'uneven padding': ((2, 3, 4, 5), (2, 3, 5, 2), (1, 2), ((0, 1), (2, 0))),
  "'SAME'": ((2, 3, 3, 4), (2, 2, 4, 3), (1, 1), 'SAME'),
  "'VALID'": ((2, 4, 4, 4), (3, 3, 4, 3), (1, 1), 'VALID'),
}


def _lax(x, w, strides, padding):
  return lax.conv_general_dilated(
    x, w, strides, padding, dimension_numbers=NHWC, precision=lax.Precision.HIGHEST
  )


def _ours(x, w, strides, padding):
  return convolution.convolution(
    x, w, strides, padding, dimension_numbers=NHWC, precision=lax.Precision.HIGHEST
  )


def _random(shape, seed, dtype=np.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


@pytest.mark.parametrize('case', CASES, ids=str)
def test_the_patch_form_equals_lax_in_output_and_gradient(case):
  x_shape, w_shape, strides, padding = CASES[case]
  assert convolution.uses_patch_form(x_shape, w_shape, strides, padding, dimension_numbers=NHWC)
  x, w = _random(x_shape, 0), _random(w_shape, 1)
  expected = _lax(x, w, strides, padding)
  got = _ours(x, w, strides, padding)
  assert got.shape == expected.shape and got.dtype == expected.dtype
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  g = _random(expected.shape, 2)
  grads = [
    jax.grad(lambda x, w: jnp.sum(conv(x, w, strides, padding) * g), argnums=(0, 1))(x, w)
    for conv in (_lax, _ours)
  ]
  for expected_grad, got_grad in zip(*grads):
    np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_the_patch_form_computes_in_bfloat16_like_lax():
  x_shape, w_shape, strides, padding = CASES['3x3 on 2x2']
  x, w = _random(x_shape, 0, jnp.bfloat16), _random(w_shape, 1, jnp.bfloat16)
  got = _ours(x, w, strides, padding)
  assert got.dtype == jnp.bfloat16
  exact = _lax(x.astype(jnp.float32), w.astype(jnp.float32), strides, padding)
  # bfloat16 keeps 8 bits of mantissa; sums of 144 products of unit normals are O(10).
  np.testing.assert_allclose(np.asarray(got, np.float32), exact, atol=0.25)


def test_the_patch_form_is_chosen_for_1x1_kernels_and_small_outputs_on_cpu_only():
  small = ((32, 2, 2, 512), (3, 3, 512, 512), (1, 1), ((1, 1), (1, 1)))
  large = ((16, 14, 14, 256), (3, 3, 256, 256), (1, 1), ((1, 1), (1, 1)))
  pointwise = ((16, 56, 56, 256), (1, 1, 256, 64), (1, 1), ((0, 0), (0, 0)))
  assert convolution.uses_patch_form(*small, dimension_numbers=NHWC, backend='cpu')
  assert convolution.uses_patch_form(*pointwise, dimension_numbers=NHWC, backend='cpu')
  assert not convolution.uses_patch_form(*large, dimension_numbers=NHWC, backend='cpu')
  for accelerator in ('cuda', 'rocm', 'tpu'):
    for case in (small, pointwise):
      assert not convolution.uses_patch_form(*case, dimension_numbers=NHWC, backend=accelerator)
  # The bound counts output pixels: a 4x4 output takes the patch form, 5x5 does not.
  assert convolution.PATCH_FORM_MAX_OUTPUT_PIXELS == 16
  four = ((2, 8, 8, 8), (3, 3, 8, 8), (2, 2), ((1, 1), (1, 1)))
  five = ((2, 10, 10, 8), (3, 3, 8, 8), (2, 2), ((1, 1), (1, 1)))
  assert convolution.uses_patch_form(*four, dimension_numbers=NHWC, backend='cpu')
  assert not convolution.uses_patch_form(*five, dimension_numbers=NHWC, backend='cpu')
  # A kernel larger than its padded input has no output: lax reports that, not the patch form.
  empty = ((1, 2, 2, 3), (3, 3, 3, 4), (1, 1), ((0, 0), (0, 0)))
  assert not convolution.uses_patch_form(*empty, dimension_numbers=NHWC, backend='cpu')


def _lowered_op_counts(fn, args, platform: str) -> collections.Counter:
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
  return collections.Counter(re.findall(r'stablehlo\.(\w+)', text))


@pytest.mark.parametrize('platform', ['cpu', 'cuda', 'tpu'])
@pytest.mark.parametrize('case', ['3x3 on 2x2', '1x1 on a large map'])
def test_the_lowering_for_each_platform_keeps_that_platforms_form(case, platform):
  # The form is chosen when lowering for `platform` (`lax.platform_dependent`), not from the
  # host's default backend: this CPU host lowers lax's convolution for 'cuda' and 'tpu'.
  x_shape, w_shape, strides, padding = CASES[case]
  x, w = _random(x_shape, 0), _random(w_shape, 1)
  value_and_grad = jax.value_and_grad(
    lambda x, w: jnp.sum(jnp.tanh(_ours(x, w, strides, padding))), argnums=(0, 1)
  )
  ops = _lowered_op_counts(value_and_grad, (x, w), platform)
  if platform == 'cpu':
    # Forward, input and kernel gradients: three products, no convolution.
    assert ops['convolution'] == 0 and ops['dot_general'] == 3
  else:
    assert ops['convolution'] == 3 and ops['dot_general'] == 0
  assert ops['case'] == 0  # One platform: the other form is not in the module at all.


@pytest.mark.parametrize(
  'kwargs',
  [
    dict(rhs_dilation=(2, 2)),
    dict(lhs_dilation=(2, 2)),
    dict(feature_group_count=2),
    dict(dimension_numbers=('NCHW', 'OIHW', 'NCHW')),
  ],
  ids=['kernel dilation', 'input dilation', 'groups', 'NCHW'],
)
def test_other_convolutions_go_to_lax_unchanged(kwargs):
  x_shape, w_shape = (2, 4, 4, 4), (3, 3, 4, 4)
  if kwargs.get('feature_group_count') == 2:
    w_shape = (3, 3, 2, 4)
  dimension_numbers = kwargs.pop('dimension_numbers', NHWC)
  if dimension_numbers != NHWC:
    x_shape, w_shape = (2, 4, 4, 4), (4, 4, 3, 3)
  args = (_random(x_shape, 0), _random(w_shape, 1), (1, 1), ((1, 1), (1, 1)))
  assert not convolution.uses_patch_form(
    x_shape, w_shape, *args[2:], dimension_numbers=dimension_numbers, **kwargs
  )
  expected = lax.conv_general_dilated(*args, dimension_numbers=dimension_numbers, **kwargs)
  got = convolution.convolution(*args, dimension_numbers=dimension_numbers, **kwargs)
  np.testing.assert_array_equal(got, expected)


def test_flax_conv_keeps_its_parameter_layout_with_the_patch_form():
  x = _random((2, 2, 2, 3), 0)
  plain = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)))
  ours = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=convolution.convolution)
  variables = plain.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
    jnp.shape, variables
  )
  np.testing.assert_allclose(
    ours.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5
  )


def test_a_resnet_gives_the_same_logits_and_gradients_whichever_form(monkeypatch):
  # ResNet-18 at 64x64: layer3 and layer4 (4x4 and 2x2 maps) and the 1x1 shortcuts take the
  # patch form; against the same model with lax's convolution everywhere.
  model = models.get_model('resnet18', num_classes=3)
  images = _random((2, 64, 64, 3), 0)
  variables = model.init(jax.random.key(0), images, train=False)

  def loss_and_grad():
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, images, train=False)
      return jnp.sum(logits[:, 0]), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])

  taken = []
  patch = convolution.patch_convolution
  monkeypatch.setattr(
    convolution, 'patch_convolution', lambda x, *a, **k: taken.append(x.shape) or patch(x, *a, **k)
  )
  (_, patch_logits), patch_grads = loss_and_grad()
  # The 1x1 shortcuts (from 16x16 on) and every convolution with a 4x4 or 2x2 output.
  assert {shape[1:3] for shape in taken} == {(16, 16), (8, 8), (4, 4), (2, 2)}
  monkeypatch.setattr(convolution, 'uses_patch_form', lambda *args, **kwargs: False)
  (_, lax_logits), lax_grads = loss_and_grad()
  np.testing.assert_allclose(patch_logits, lax_logits, rtol=1e-4, atol=1e-4)
  for got, expected in zip(jax.tree.leaves(patch_grads), jax.tree.leaves(lax_grads)):
    scale = float(jnp.max(jnp.abs(expected))) + 1e-6
    assert float(jnp.max(jnp.abs(got - expected))) <= 1e-4 * scale


@pytest.mark.parametrize('x_shape, kernel, stride', [((2, 9, 9, 6), 7, 1), ((2, 10, 10, 5), 5, 2)])
def test_depthwise_convolutions_take_the_tap_form_equal_to_lax(x_shape, kernel, stride):
  channels = x_shape[-1]
  x, w = _random(x_shape, 0), _random((kernel, kernel, 1, channels), 1)
  args = ((stride, stride), ((kernel // 2, kernel // 2),) * 2)
  grouped = dict(dimension_numbers=NHWC, feature_group_count=channels)
  assert convolution.is_depthwise(x.shape, w.shape, channels, NHWC)

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, *args, **grouped)))

  np.testing.assert_allclose(
    jax.jit(lambda x, w: convolution.convolution(x, w, *args, **grouped))(x, w),
    lax.conv_general_dilated(x, w, *args, **grouped),
    rtol=1e-5,
    atol=1e-5,
  )
  # Jitted: op by op, each of the 49 taps would compile on its own.
  got = jax.jit(jax.grad(loss(convolution.convolution), argnums=(0, 1)))(x, w)
  expected = jax.jit(jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(x, w)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_kernels_that_tile_the_input_take_the_patch_form():
  stem = ((2, 64, 64, 3), (4, 4, 3, 8), (4, 4))
  assert convolution.uses_patch_form(*stem, ((0, 0), (0, 0)), dimension_numbers=NHWC)
  assert not convolution.uses_patch_form(*stem, ((1, 1), (1, 1)), dimension_numbers=NHWC)
