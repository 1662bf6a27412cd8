"""The ResNets as torchvision's: parameter counts and names, output sizes, the residual blocks
against a numpy forward pass of their definition."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax.models import BasicBlock
from care_jax.models import Bottleneck
from care_jax.models import get_model
from tests.helpers import model_fixtures as mf


@pytest.mark.parametrize(
  'name, expected',
  [
    # torchvision.models.<name>(num_classes=1000): sum(p.numel() for p in m.parameters()).
    ('resnet18', 11_689_512),
    ('resnet34', 21_797_672),
    ('resnet50', 25_557_032),
    ('resnet101', 44_549_160),
    ('resnet152', 60_192_808),
  ],
)
def test_parameter_counts_match_torchvision(name, expected):
  _, variables = mf.abstract_model(name)
  # torch's parameters() excludes running statistics, which live in 'batch_stats' here.
  assert mf.num_params(variables['params']) == expected


def test_parameter_tree_uses_torchvision_names_and_shapes():
  r18, r50 = (mf.abstract_model(name)[1]['params'] for name in ('resnet18', 'resnet50'))

  assert r18['backbone']['conv1']['kernel'].shape == (7, 7, 3, 64)
  assert 'bias' not in r18['backbone']['conv1']
  assert set(r18['backbone']['layer1_0']) == {'conv1', 'bn1', 'conv2', 'bn2'}
  assert r18['backbone']['layer2_0']['downsample_conv']['kernel'].shape == (1, 1, 64, 128)
  assert r18['head']['fc']['kernel'].shape == (512, 1000)
  # Bottleneck: layer1_0 projects 64 -> 256 channels; the stride sits on the 3x3 conv2.
  assert r50['backbone']['layer1_0']['downsample_conv']['kernel'].shape == (1, 1, 64, 256)
  assert r50['backbone']['layer4_2']['conv3']['kernel'].shape == (1, 1, 512, 2048)
  assert 'layer3_5' in r50['backbone'] and 'layer3_6' not in r50['backbone']
  assert r50['head']['fc']['kernel'].shape == (2048, 1000)


def test_odd_input_sizes_follow_torch_output_sizes():
  """torch: out = floor((in + 2p - k) / s) + 1: 225 -> stem 113 -> maxpool 57 -> ... -> layer4 8."""
  model = get_model('resnet18', num_classes=2)
  images = jax.ShapeDtypeStruct((1, 225, 225, 3), jnp.float32)
  variables = mf.abstract_variables(model, images)
  (_, inter), state = jax.eval_shape(
    lambda v, x: model.apply(
      v,
      x,
      train=False,
      capture_intermediates=lambda module, method: (
        method == '__call__' and module.name in ('conv1', 'layer1_0')
      ),
    ),
    variables,
    images,
  )
  captured = state['intermediates']['backbone']
  assert captured['conv1']['__call__'][0].shape == (1, 113, 113, 64)
  assert captured['layer1_0']['__call__'][0].shape == (1, 57, 57, 64)
  assert inter['features'].shape == (1, 8, 8, 512)


def _np_block(x, params, stats, *, bottleneck: bool, stride: int) -> np.ndarray:
  """torchvision BasicBlock / Bottleneck (v1.5) in eval mode, in float64 numpy."""
  relu = lambda a: np.maximum(a, 0.0)

  def conv_bn(y, index, *, stride, pad, conv=None, bn=None):
    conv, bn = conv or f'conv{index}', bn or f'bn{index}'
    y = mf.np_conv(y, params[conv]['kernel'], stride=stride, pad=pad)
    scale = params[bn]['scale'] / np.sqrt(np.asarray(stats[bn]['var'], np.float64) + 1e-5)
    return (y - stats[bn]['mean']) * scale + params[bn]['bias']

  if bottleneck:
    y = relu(conv_bn(x, 1, stride=1, pad=0))
    y = relu(conv_bn(y, 2, stride=stride, pad=1))
    y = conv_bn(y, 3, stride=1, pad=0)
  else:
    y = relu(conv_bn(x, 1, stride=stride, pad=1))
    y = conv_bn(y, 2, stride=1, pad=1)
  if 'downsample_conv' in params:
    x = conv_bn(x, 0, stride=stride, pad=0, conv='downsample_conv', bn='downsample_bn')
  return relu(y + x)


@pytest.mark.parametrize(
  'block_cls, in_channels, stride, projects',
  [
    (BasicBlock, 8, 1, False),
    (BasicBlock, 8, 2, True),
    (Bottleneck, 32, 1, False),
    (Bottleneck, 8, 1, True),  # layer1_0 of ResNet-50: channels 64 -> 256 at stride 1
    (Bottleneck, 32, 2, True),
  ],
)
def test_residual_blocks_match_torchvision_definition(block_cls, in_channels, stride, projects):
  block = block_cls(planes=8, stride=stride)
  x = np.random.default_rng(5).normal(size=(2, 8, 8, in_channels)).astype(np.float32)
  variables = mf.fake_variables(block, x)

  out = jax.jit(functools.partial(block.apply, train=False))(variables, x)

  assert ('downsample_conv' in variables['params']) == projects
  expected = _np_block(
    x,
    variables['params'],
    variables['batch_stats'],
    bottleneck=block_cls is Bottleneck,
    stride=stride,
  )
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
