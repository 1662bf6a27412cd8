"""The layers the backbones share, as torchvision's: BatchNorm's momentum, symmetric padding of
strided convs, the initialisers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from care_jax.models import BasicBlock
from care_jax.models import densenet
from care_jax.models import get_model
from care_jax.models import layers
from tests.helpers import model_fixtures as mf


def test_batchnorm_running_stats_use_torch_momentum():
  """running = 0.9 * running + 0.1 * batch statistic (torch momentum 0.1), biased batch variance."""
  model = get_model('tiny_cnn', num_classes=3)
  images = mf.images()
  variables = mf.fake_variables(model, images)

  _, state = jax.jit(
    lambda v, x: model.apply(
      v,
      x,
      train=True,
      mutable=['batch_stats', 'intermediates'],
      capture_intermediates=lambda module, method: module.name == 'stage1_conv',
    )
  )(variables, images)
  conv = np.asarray(state['intermediates']['backbone']['stage1_conv']['__call__'][0], np.float64)
  old = variables['batch_stats']['backbone']['stage1_bn']
  new = state['batch_stats']['backbone']['stage1_bn']

  np.testing.assert_allclose(
    new['mean'], 0.9 * old['mean'] + 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    new['var'], 0.9 * old['var'] + 0.1 * conv.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )


def test_strided_convs_use_torch_symmetric_padding():
  """Stride-2 convs on even inputs pad (p, p) like torch, where 'SAME' would pad (p - 1, p)."""
  model = mf.small_resnet(BasicBlock)
  images = mf.images()
  variables = mf.fake_variables(model, images)
  _, state = jax.jit(
    lambda v, x: model.apply(
      v, x, train=False, capture_intermediates=lambda module, method: method == '__call__'
    )
  )(variables, images)
  captured = state['intermediates']['backbone']
  params = variables['params']['backbone']

  stem = captured['conv1']['__call__'][0]
  assert stem.shape == (2, 32, 32, 8)
  np.testing.assert_allclose(
    stem, mf.np_conv(images, params['conv1']['kernel'], stride=2, pad=3), rtol=1e-4, atol=1e-4
  )
  block_input = captured['layer1_0']['__call__'][0]  # 16x16, feeds layer2_0
  for conv, pad in (('conv1', 1), ('downsample_conv', 0)):
    np.testing.assert_allclose(
      captured['layer2_0'][conv]['__call__'][0],
      mf.np_conv(block_input, params['layer2_0'][conv]['kernel'], stride=2, pad=pad),
      rtol=1e-4,
      atol=1e-4,
    )


def test_init_follows_torchvision():
  """Convs: N(0, 2 / fan_out); BatchNorm: scale 1, bias 0; Linear head: U(+-1/sqrt(fan_in))."""
  model = get_model('tiny_cnn', num_classes=10)
  # Same distributions, much faster CPU compilation of the random bits.
  with jax.threefry_partitionable(False):
    variables = model.init({'params': mf.KEY, 'dropout': mf.KEY}, mf.images(), train=False)
  backbone = variables['params']['backbone']

  kernel = np.asarray(backbone['stage4_conv']['kernel'])  # [3, 3, 64, 128]
  assert abs(kernel.mean()) < 0.01 * kernel.std()
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (3 * 3 * 128)), rtol=0.02)
  np.testing.assert_array_equal(backbone['stage1_bn']['scale'], np.ones(16))
  np.testing.assert_array_equal(backbone['stage1_bn']['bias'], np.zeros(16))
  np.testing.assert_array_equal(variables['batch_stats']['backbone']['stage1_bn']['var'], 1.0)
  fc = np.asarray(variables['params']['head']['fc']['kernel'])  # [128, 10]
  bound = 1.0 / np.sqrt(128)
  assert np.abs(fc).max() <= bound and np.abs(fc).max() > 0.9 * bound


def test_a_layer_hands_its_dtypes_and_batchnorm_axis_to_its_sub_layers():
  """`layers.Layer`: every block of a DenseNet gets the net's dtype, param_dtype and axis_name."""
  seen = set()

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, layers.Layer):
      seen.add((type(module).__name__, module.dtype, module.param_dtype, module.axis_name))
    return next_fun(*args, **kwargs)

  net = densenet.DenseNet(
    block_sizes=(1, 1), growth_rate=4, num_init_features=8, dtype=jnp.bfloat16, axis_name='b'
  )
  with nn.intercept_methods(record):
    jax.eval_shape(
      functools.partial(net.init, train=False), jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )
  assert {name for name, *_ in seen} == {'DenseNet', 'DenseBlock', 'DenseLayer', 'Transition'}
  assert {tuple(rest) for _, *rest in seen} == {(jnp.bfloat16, jnp.float32, 'b')}
