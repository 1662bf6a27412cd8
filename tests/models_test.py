"""care_jax.models: shapes, torchvision layout/counts/padding/init, heads, dtypes, axis_name.

Big models are only traced (``jax.eval_shape``); numeric checks use small models and parameters
filled from numpy (random init compiles slowly on CPU), compared with independent numpy references.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import attention
from care_jax.models import ATTENTION_METHODS
from care_jax.models import MODEL_NAMES
from care_jax.models import VGG
from care_jax.models import BasicBlock
from care_jax.models import BatchNormLinearHead
from care_jax.models import Bottleneck
from care_jax.models import Classifier
from care_jax.models import LinearHead
from care_jax.models import NormedLinearHead
from care_jax.models import ResNet
from care_jax.models import VGGHead
from care_jax.models import adaptive_avg_pool
from care_jax.models import get_model
from care_jax.models import resolve_head

RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
DENSENETS = ('densenet121', 'densenet161', 'densenet169', 'densenet201')
# Input size / feature map size, as documented by each backbone.
FEATURE_STRIDE = {'tiny_cnn': 8, 'vgg19': 16, **{name: 32 for name in RESNETS + DENSENETS}}
KEY = jax.random.key(0)


def _images(batch: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def _abstract_variables(model: nn.Module, images) -> dict:
  return jax.eval_shape(
    functools.partial(model.init, train=False), {'params': KEY, 'dropout': KEY}, images
  )


@functools.cache
def _abstract_model(name: str) -> tuple[Classifier, dict]:
  """A 1000-class model and its variables' shapes for a [2, 64, 64, 3] input (traced once)."""
  model = get_model(name, num_classes=1000)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  return model, _abstract_variables(model, images)


def _fake_variables(model: nn.Module, images, seed: int = 0) -> dict:
  """Variables of the right tree and shapes from numpy: He-scaled kernels, non-trivial BN state."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    shape = leaf.shape
    if name == 'kernel':
      values = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name in ('scale', 'var'):
      values = rng.uniform(0.5, 1.5, size=shape)
    else:  # bias, mean
      values = rng.normal(size=shape) * 0.1
    return jnp.asarray(values, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model, images))


def _num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _np_conv(x: np.ndarray, kernel: np.ndarray, *, stride: int, pad: int) -> np.ndarray:
  """NHWC cross-correlation with symmetric zero padding, as torch.nn.Conv2d(padding=pad)."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kernel = np.asarray(kernel, np.float64)
  kh, kw = kernel.shape[:2]
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
      out += patch @ kernel[i, j]
  return out


# ---------------------------------------------------------------- shapes, dtypes, batch_stats


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_every_model_gives_float32_logits_and_documented_feature_size(name):
  model, variables = _abstract_model(name)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  side = 64 // FEATURE_STRIDE[name]

  (logits, inter), updates = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': KEY}),
    variables,
    images,
  )
  eval_logits, eval_inter = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), variables, images
  )

  for out, features in ((logits, inter['features']), (eval_logits, eval_inter['features'])):
    assert out.shape == (2, 1000) and out.dtype == jnp.float32
    assert features.shape[:3] == (2, side, side)
  # Train mode returns new running statistics for every BatchNorm (VGG-19 has none).
  assert jax.tree.structure(updates.get('batch_stats', {})) == jax.tree.structure(
    variables.get('batch_stats', {})
  )
  assert ('batch_stats' in variables) == (name != 'vgg19')


def _small_resnet(block_cls: type[nn.Module], head: str = 'linear') -> Classifier:
  """The ResNet code path with narrow stages: stem, layer1_0, layer2_0 (strided, projected)."""
  head_cls = {'linear': LinearHead, 'bn_linear': BatchNormLinearHead}[head]
  return Classifier(
    backbone=ResNet(stage_sizes=(1, 1), block_cls=block_cls, widths=(8, 16)),
    head=head_cls(num_classes=3),
  )


@pytest.mark.parametrize('name', ['tiny_cnn', 'basic_resnet', 'bottleneck_resnet'])
def test_train_mode_updates_every_batch_stat_and_eval_mode_none(name):
  model = {
    'tiny_cnn': get_model('tiny_cnn', num_classes=3, head='bn_linear'),
    'basic_resnet': _small_resnet(BasicBlock, head='bn_linear'),
    'bottleneck_resnet': _small_resnet(Bottleneck, head='bn_linear'),
  }[name]
  images = _images()
  variables = _fake_variables(model, images)

  # One compiled program each: op-by-op execution compiles every conv shape separately.
  apply = jax.jit(functools.partial(model.apply, mutable=['batch_stats']), static_argnames='train')
  (logits, _), updates = apply(variables, images, train=True)
  _, eval_updates = apply(variables, images, train=False)

  assert np.all(np.isfinite(logits))
  changed = jax.tree.map(
    lambda new, old: not np.allclose(new, old), updates['batch_stats'], variables['batch_stats']
  )
  assert all(jax.tree.leaves(changed))
  jax.tree.map(np.testing.assert_array_equal, eval_updates['batch_stats'], variables['batch_stats'])


def test_batchnorm_running_stats_use_torch_momentum():
  """running = 0.9 * running + 0.1 * batch statistic (torch momentum 0.1), biased batch variance."""
  model = get_model('tiny_cnn', num_classes=3)
  images = _images()
  variables = _fake_variables(model, images)

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


# ---------------------------------------------------------------- torchvision layout


@pytest.mark.parametrize(
  'name, expected',
  [
    # torchvision.models.<name>(num_classes=1000): sum(p.numel() for p in m.parameters()).
    ('resnet18', 11_689_512),
    ('resnet34', 21_797_672),
    ('resnet50', 25_557_032),
    ('resnet101', 44_549_160),
    ('resnet152', 60_192_808),
    ('vgg19', 143_667_240),
  ],
)
def test_parameter_counts_match_torchvision(name, expected):
  _, variables = _abstract_model(name)
  # torch's parameters() excludes running statistics, which live in 'batch_stats' here.
  assert _num_params(variables['params']) == expected


def test_parameter_tree_uses_torchvision_names_and_shapes():
  r18, r50, vgg = (_abstract_model(name)[1]['params'] for name in ('resnet18', 'resnet50', 'vgg19'))

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
  assert vgg['backbone']['conv5_4']['kernel'].shape == (3, 3, 512, 512)
  assert vgg['head']['fc1']['kernel'].shape == (512 * 7 * 7, 4096)
  assert vgg['head']['fc3']['kernel'].shape == (4096, 1000)


def test_odd_input_sizes_follow_torch_output_sizes():
  """torch: out = floor((in + 2p - k) / s) + 1: 225 -> stem 113 -> maxpool 57 -> ... -> layer4 8."""
  model = get_model('resnet18', num_classes=2)
  images = jax.ShapeDtypeStruct((1, 225, 225, 3), jnp.float32)
  variables = _abstract_variables(model, images)
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


def test_strided_convs_use_torch_symmetric_padding():
  """Stride-2 convs on even inputs pad (p, p) like torch, where 'SAME' would pad (p - 1, p)."""
  model = _small_resnet(BasicBlock)
  images = _images()
  variables = _fake_variables(model, images)
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
    stem, _np_conv(images, params['conv1']['kernel'], stride=2, pad=3), rtol=1e-4, atol=1e-4
  )
  block_input = captured['layer1_0']['__call__'][0]  # 16x16, feeds layer2_0
  for conv, pad in (('conv1', 1), ('downsample_conv', 0)):
    np.testing.assert_allclose(
      captured['layer2_0'][conv]['__call__'][0],
      _np_conv(block_input, params['layer2_0'][conv]['kernel'], stride=2, pad=pad),
      rtol=1e-4,
      atol=1e-4,
    )


def _np_block(x, params, stats, *, bottleneck: bool, stride: int) -> np.ndarray:
  """torchvision BasicBlock / Bottleneck (v1.5) in eval mode, in float64 numpy."""
  relu = lambda a: np.maximum(a, 0.0)

  def conv_bn(y, index, *, stride, pad, conv=None, bn=None):
    conv, bn = conv or f'conv{index}', bn or f'bn{index}'
    y = _np_conv(y, params[conv]['kernel'], stride=stride, pad=pad)
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
  variables = _fake_variables(block, x)

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


def test_init_follows_torchvision():
  """Convs: N(0, 2 / fan_out); BatchNorm: scale 1, bias 0; Linear head: U(+-1/sqrt(fan_in))."""
  model = get_model('tiny_cnn', num_classes=10)
  # Same distributions, much faster CPU compilation of the random bits.
  with jax.threefry_partitionable(False):
    variables = model.init({'params': KEY, 'dropout': KEY}, _images(), train=False)
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


def test_vgg_head_init_is_normal_0_01():
  head = VGGHead(num_classes=3, hidden_size=256)
  with jax.threefry_partitionable(False):
    params = head.init(KEY, jnp.zeros((1, 4, 4, 16)))['params']
  np.testing.assert_allclose(np.std(params['fc1']['kernel']), 0.01, rtol=0.02)
  np.testing.assert_array_equal(params['fc1']['bias'], 0.0)


# ---------------------------------------------------------------- heads


def _small_vgg_classifier(num_classes: int = 3) -> Classifier:
  return Classifier(
    backbone=VGG(blocks=((8,), (8,), (16,), (16,), (16,))),
    head=VGGHead(num_classes=num_classes, hidden_size=32),
  )


@pytest.mark.parametrize(
  'name, head',
  [
    ('tiny_cnn', 'linear'),
    ('tiny_cnn', 'bn_linear'),
    ('bottleneck_resnet', 'bn_linear'),
    ('small_vgg', 'vgg'),
  ],
)
def test_apply_head_on_features_reproduces_logits(name, head):
  if name == 'small_vgg':
    model = _small_vgg_classifier()
  elif name == 'bottleneck_resnet':
    model = _small_resnet(Bottleneck, head=head)
  else:
    model = get_model(name, num_classes=3, head=head)
  images = _images()
  variables = _fake_variables(model, images)

  logits, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  head_logits = model.apply(variables, inter['features'], train=False, method=Classifier.apply_head)

  assert head_logits.dtype == jnp.float32
  # Only rounding differs: the full forward pass is one compiled (fused) program.
  np.testing.assert_allclose(head_logits, logits, rtol=1e-5, atol=1e-5)


def test_linear_head_is_global_average_pool_then_dense():
  features = np.random.default_rng(1).normal(size=(2, 3, 5, 8)).astype(np.float32)
  head = LinearHead(num_classes=4)
  variables = _fake_variables(head, features)
  kernel = np.asarray(variables['params']['fc']['kernel'], np.float64)
  bias = np.asarray(variables['params']['fc']['bias'], np.float64)

  expected = features.astype(np.float64).mean(axis=(1, 2)) @ kernel + bias
  np.testing.assert_allclose(head.apply(variables, features), expected, rtol=1e-5, atol=1e-6)


def test_batchnorm_linear_head_normalises_with_running_stats_in_eval():
  features = np.random.default_rng(2).normal(size=(2, 3, 3, 6)).astype(np.float32)
  head = BatchNormLinearHead(num_classes=4)
  variables = _fake_variables(head, features)
  bn, stats, fc = (
    variables['params']['bn'],
    variables['batch_stats']['bn'],
    variables['params']['fc'],
  )

  pooled = features.astype(np.float64).mean(axis=(1, 2))
  normed = (pooled - stats['mean']) / np.sqrt(np.asarray(stats['var'], np.float64) + 1e-5)
  expected = (normed * bn['scale'] + bn['bias']) @ fc['kernel'] + fc['bias']
  np.testing.assert_allclose(
    head.apply(variables, features, train=False), expected, rtol=1e-5, atol=1e-5
  )


def test_vgg_head_matches_torchvision_classifier_in_eval():
  """maxpool 2x2 -> AdaptiveAvgPool(7x7) -> flatten (C, H, W) -> fc1, ReLU, fc2, ReLU, fc3."""
  features = np.random.default_rng(3).normal(size=(2, 4, 6, 5)).astype(np.float32)
  head = VGGHead(num_classes=3, hidden_size=8)
  variables = _fake_variables(head, features)
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])

  pooled = features.reshape(2, 2, 2, 3, 2, 5).max(axis=(2, 4))  # [2, 2, 3, 5]
  grid = np.zeros((2, 7, 7, 5))
  for i in range(7):  # torch AdaptiveAvgPool2d windows
    h0, h1 = (i * 2) // 7, -(-(i + 1) * 2 // 7)
    for j in range(7):
      w0, w1 = (j * 3) // 7, -(-(j + 1) * 3 // 7)
      grid[:, i, j] = pooled[:, h0:h1, w0:w1].mean(axis=(1, 2))
  x = grid.transpose(0, 3, 1, 2).reshape(2, -1)
  for name in ('fc1', 'fc2'):
    x = np.maximum(x @ params[name]['kernel'] + params[name]['bias'], 0)
  expected = x @ params['fc3']['kernel'] + params['fc3']['bias']

  np.testing.assert_allclose(
    head.apply(variables, features, train=False), expected, rtol=1e-5, atol=1e-5
  )


def test_vgg_dropout_is_active_only_in_train_mode():
  features = np.random.default_rng(4).normal(size=(2, 2, 2, 4)).astype(np.float32)
  head = VGGHead(num_classes=3, hidden_size=64)
  variables = _fake_variables(head, features)

  eval_a = head.apply(variables, features, train=False)
  eval_b = head.apply(variables, features, train=False, rngs={'dropout': jax.random.key(9)})
  train_a = head.apply(variables, features, train=True, rngs={'dropout': jax.random.key(1)})
  train_b = head.apply(variables, features, train=True, rngs={'dropout': jax.random.key(2)})

  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, eval_a)


@pytest.mark.parametrize('in_size, out_size', [(2, 7), (5, 3), (14, 7), (7, 7)])
def test_adaptive_avg_pool_matches_torch_windows(in_size, out_size):
  row = np.arange(1.0, in_size + 1)
  x = np.broadcast_to(row[None, None, :, None], (1, 1, in_size, 1)).astype(np.float32)
  expected = {
    (2, 7): [1, 1, 1, 1.5, 2, 2, 2],  # windows [0,1) x3, [0,2), [1,2) x3
    (5, 3): [1.5, 3, 4.5],  # windows [0,2), [1,4), [3,5)
    (14, 7): [1.5 + 2 * k for k in range(7)],
    (7, 7): list(range(1, 8)),
  }[(in_size, out_size)]
  out = adaptive_avg_pool(x, (1, out_size))
  np.testing.assert_allclose(out[0, 0, :, 0], expected, rtol=1e-6)


# ---------------------------------------------------------------- dtypes and parallelism


@pytest.mark.parametrize('name', ['tiny_cnn', 'resnet18', 'vgg19'])
def test_bfloat16_keeps_float32_params_and_logits(name):
  model = get_model(name, num_classes=4, dtype=jnp.bfloat16)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = _abstract_variables(model, images)
  (logits, inter), _ = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': KEY}),
    variables,
    images,
  )
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert inter['features'].dtype == jnp.bfloat16
  assert logits.dtype == jnp.float32


def test_bfloat16_logits_are_close_to_float32():
  images = _images()
  f32 = get_model('tiny_cnn', num_classes=4)
  bf16 = get_model('tiny_cnn', num_classes=4, dtype=jnp.bfloat16)
  variables = _fake_variables(f32, images)
  expected, _ = jax.jit(functools.partial(f32.apply, train=False))(variables, images)
  logits, _ = jax.jit(functools.partial(bf16.apply, train=False))(variables, images)
  np.testing.assert_allclose(logits, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())


def test_axis_name_averages_batch_statistics_across_the_mapped_axis():
  """Two shards under vmap(axis_name) give the single-device result on the whole batch."""
  images = _images(batch=4)
  shards = images.reshape(2, 2, *images.shape[1:])
  reference = get_model('tiny_cnn', num_classes=3, head='bn_linear')
  variables = _fake_variables(reference, images)
  (expected, _), expected_updates = jax.jit(
    lambda v, x: reference.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, images)

  def sharded(axis_name):
    model = get_model('tiny_cnn', num_classes=3, head='bn_linear', axis_name=axis_name)
    step = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
    return jax.jit(jax.vmap(step, in_axes=(None, 0), axis_name='batch'))(variables, shards)

  (logits, _), updates = sharded('batch')
  np.testing.assert_allclose(logits.reshape(4, 3), expected, rtol=1e-4, atol=1e-4)
  jax.tree.map(
    lambda new, ref: np.testing.assert_allclose(new[0], ref, rtol=1e-4, atol=1e-5),
    updates,
    expected_updates,
  )
  # Without axis_name each shard normalises with its own statistics.
  (local_logits, _), _ = sharded(None)
  assert not np.allclose(local_logits.reshape(4, 3), expected, rtol=1e-4, atol=1e-4)


def test_runs_under_pmap_with_axis_name():
  model = get_model('tiny_cnn', num_classes=3, head='bn_linear', axis_name='batch')
  images = _images()
  variables = _fake_variables(model, images)
  step = jax.pmap(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']),
    axis_name='batch',
    in_axes=(None, 0),
  )
  (logits, inter), updates = step(variables, images[None])
  assert logits.shape == (1, 2, 3)
  assert inter['features'].shape == (1, 2, 8, 8, 128)
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])


# ---------------------------------------------------------------- attention maps


@functools.cache
def _attention_case(name: str, head: str) -> tuple[Classifier, dict, jax.Array, jax.Array]:
  """A small model, its (numpy-filled) variables, a feature map of 32x32 images and labels."""
  model = _small_vgg_classifier() if head == 'vgg' else get_model(name, num_classes=3, head=head)
  images = _images(size=32, seed=3)
  variables = _fake_variables(model, images, seed=4)
  _, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  return model, variables, inter['features'], jnp.array([2, 0])


def _head_fn(model: Classifier, variables: dict):
  return lambda f: model.apply(variables, f, train=False, method=Classifier.apply_head)


def test_attention_methods_constant():
  assert ATTENTION_METHODS == ('auto', 'cam', 'grad_cam')


def test_attention_maps_of_a_linear_head_are_cam_with_its_kernel():
  model, variables, features, labels = _attention_case('tiny_cnn', 'linear')
  expected = attention.cam(features, variables['params']['head']['fc']['kernel'], labels)
  for method in ('cam', 'auto'):
    maps = model.attention_maps(variables, features, labels, method=method)
    assert maps.shape == (2, 4, 4) and maps.dtype == jnp.float32
    np.testing.assert_array_equal(maps, expected)
  np.testing.assert_array_equal(model.attention_maps(variables, features, labels), expected)
  # Grad-CAM of a GAP + linear head is CAM up to a positive scale: the same normalised map.
  np.testing.assert_allclose(
    model.attention_maps(variables, features, labels, method='grad_cam'), expected, atol=1e-5
  )


@pytest.mark.parametrize('name, head', [('tiny_cnn', 'bn_linear'), ('small_vgg', 'vgg')])
def test_attention_maps_of_other_heads_are_grad_cam_of_the_head(name, head):
  model, variables, features, labels = _attention_case(name, head)
  expected = attention.grad_cam(_head_fn(model, variables), features, labels)
  for method in ('auto', 'grad_cam'):
    maps = model.attention_maps(variables, features, labels, method=method)
    assert maps.shape == features.shape[:3] and maps.dtype == jnp.float32
    np.testing.assert_array_equal(maps, expected)


def _minmax(x):
  low, high = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
  return (x - low) / (high - low)


def test_contrast_maps_of_a_linear_head_weigh_the_true_column_against_the_others():
  model, variables, features, labels = _attention_case('tiny_cnn', 'linear')
  kernel = np.asarray(variables['params']['head']['fc']['kernel'], np.float64)  # [C, K]
  a = np.asarray(features, np.float64)
  others = [[k for k in range(kernel.shape[1]) if k != y] for y in np.asarray(labels)]
  weights = np.stack(
    [kernel[:, y] - kernel[:, o].mean(axis=1) for y, o in zip(np.asarray(labels), others)]
  )
  expected = _minmax(np.einsum('bhwc,bc->bhw', a, weights))
  for method in ('cam', 'grad_cam'):
    maps = model.attention_maps(variables, features, labels, method=method, target='contrast')
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_contrast_maps_of_other_heads_are_grad_cam_of_the_centred_logits():
  model, variables, features, labels = _attention_case('tiny_cnn', 'bn_linear')
  head_fn = _head_fn(model, variables)
  centred = lambda f: head_fn(f) - jnp.mean(head_fn(f), axis=-1, keepdims=True)
  expected = attention.grad_cam(centred, features, labels)
  maps = model.attention_maps(variables, features, labels, target='contrast')
  np.testing.assert_allclose(maps, expected, atol=1e-6)
  assert not np.allclose(maps, model.attention_maps(variables, features, labels), atol=1e-3)


def test_attention_maps_unknown_target_lists_the_valid_ones():
  model, variables, features, labels = _attention_case('tiny_cnn', 'linear')
  with pytest.raises(ValueError, match=r"'margin'.*logit, contrast"):
    model.attention_maps(variables, features, labels, target='margin')


def test_attention_maps_cam_needs_a_linear_head():
  model, variables, features, labels = _attention_case('tiny_cnn', 'bn_linear')
  with pytest.raises(ValueError, match=r'GAP \+ linear head'):
    model.attention_maps(variables, features, labels, method='cam')


def test_attention_maps_unknown_method_lists_the_valid_ones():
  model, variables, features, labels = _attention_case('tiny_cnn', 'linear')
  with pytest.raises(ValueError, match=r"'gradcam'.*auto, cam, grad_cam"):
    model.attention_maps(variables, features, labels, method='gradcam')


@pytest.mark.parametrize('head', ['linear', 'bn_linear'])
def test_attention_maps_under_jit_grad_and_pmap_with_the_model_closed_over(head):
  model, variables, features, labels = _attention_case('tiny_cnn', head)
  eager = model.attention_maps(variables, features, labels)
  maps = jax.jit(lambda v, f, y: model.attention_maps(v, f, y))(variables, features, labels)
  np.testing.assert_allclose(maps, eager, rtol=1e-6, atol=1e-6)
  static = jax.jit(lambda m, v, f, y: m.attention_maps(v, f, y), static_argnums=0)
  np.testing.assert_allclose(
    static(model, variables, features, labels), eager, rtol=1e-6, atol=1e-6
  )
  mapped = jax.pmap(lambda v, f, y: model.attention_maps(v, f, y), in_axes=(None, 0, 0))
  np.testing.assert_allclose(
    mapped(variables, features[None], labels[None])[0], eager, rtol=1e-6, atol=1e-6
  )

  def inside(f):  # what an attention loss does: weight the map, differentiate w.r.t. features
    return jnp.sum(model.attention_maps(variables, f, labels) * jnp.arange(16.0).reshape(4, 4))

  grads = jax.grad(inside)(features)
  assert grads.shape == features.shape
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)


# ---------------------------------------------------------------- bad input


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"Unknown model name 'resnet9'.*resnet18.*vgg19"):
    get_model('resnet9', num_classes=2)


@pytest.mark.parametrize('name, head', [('resnet18', 'mlp'), ('tiny_cnn', 'vgg')])
def test_unknown_or_unsupported_head_lists_valid_heads(name, head):
  with pytest.raises(ValueError, match=rf"Unknown head '{head}'.*linear, bn_linear"):
    get_model(name, num_classes=2, head=head)


def test_vgg19_defaults_to_vgg_head_and_accepts_linear():
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  default = _abstract_variables(get_model('vgg19', num_classes=2), images)['params']['head']
  linear = _abstract_variables(get_model('vgg19', num_classes=2, head='linear'), images)
  assert set(default) == {'fc1', 'fc2', 'fc3'}
  assert linear['params']['head']['fc']['kernel'].shape == (512, 2)


@pytest.mark.parametrize('num_classes', [0, -1, 2.0])
def test_bad_num_classes_raises(num_classes):
  with pytest.raises(ValueError, match='num_classes'):
    get_model('tiny_cnn', num_classes=num_classes)


@pytest.mark.parametrize('name', ['tiny_cnn', 'resnet18', 'vgg19'])
def test_images_not_rank_4_raise_with_the_shape(name):
  model = get_model(name, num_classes=2)
  with pytest.raises(ValueError, match=r'images must be rank 4.*\(64, 64, 3\)'):
    model.init({'params': KEY}, np.zeros((64, 64, 3), np.float32), train=False)


def test_apply_head_rejects_features_not_rank_4():
  model = get_model('tiny_cnn', num_classes=2)
  variables = _fake_variables(model, _images())
  with pytest.raises(ValueError, match=r'features must be rank 4.*\(2, 128\)'):
    model.apply(variables, np.zeros((2, 128), np.float32), method=Classifier.apply_head)


# ---------------------------------------------------------------- normed (cosine) head


def _np_normalize(x: np.ndarray, axis: int) -> np.ndarray:
  """torch.nn.functional.normalize: x / max(||x||_2, 1e-12)."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def test_normed_linear_head_is_the_cosine_of_the_pooled_feature_and_each_class_column():
  """LDAM-DRW's NormedLinear: F.normalize(x, dim=1).mm(F.normalize(W, dim=0)) on GAP(A)."""
  features = np.random.default_rng(5).normal(size=(3, 3, 5, 8)).astype(np.float32)
  features[2] = 0.0  # a zero feature vector: F.normalize's eps gives cosines 0, not NaN
  head = NormedLinearHead(num_classes=4)
  variables = _fake_variables(head, features)
  assert set(variables['params']) == {'kernel'}  # no bias
  kernel = np.asarray(variables['params']['kernel'], np.float64)
  assert kernel.shape == (8, 4)

  expected = _np_normalize(features.mean(axis=(1, 2)), 1) @ _np_normalize(kernel, 0)
  logits = head.apply(variables, features)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(logits[2], 0.0)
  assert np.all(np.abs(logits) <= 1.0 + 1e-6)
  # Finite gradients also at the zero feature vector (where d||x|| / dx is 0 / 0).
  grads = jax.grad(lambda f: jnp.sum(head.apply(variables, f) * jnp.arange(4.0)))(features)
  assert np.all(np.isfinite(grads))
  # bfloat16 features: still a float32 cosine.
  bf16 = NormedLinearHead(num_classes=4, dtype=jnp.bfloat16).apply(
    variables, jnp.asarray(features, jnp.bfloat16)
  )
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, expected, atol=2e-2)


def test_normed_linear_init_is_uniform_with_unit_norm_class_columns():
  """weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5): every column W[:, k] has norm 1."""
  head = NormedLinearHead(num_classes=5)
  kernel = head.init(KEY, jnp.zeros((1, 2, 2, 64)))['params']['kernel']
  assert kernel.shape == (64, 5) and kernel.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)
  # Directions of U(-1, 1)^64: a column scaled back by its norm spans (-1, 1), mean ~ 0.
  raw = np.asarray(kernel) * np.sqrt(64 / 3)  # E||u||^2 = 64 / 3 for u ~ U(-1, 1)^64
  assert np.abs(raw).max() < 1.5 and abs(raw.mean()) < 0.1


@pytest.mark.parametrize('name', ['tiny_cnn', 'resnet18', 'vgg19'])
def test_get_model_builds_the_normed_linear_head_for_every_model(name):
  model = get_model(name, num_classes=3, head='normed_linear')
  assert isinstance(model.head, NormedLinearHead)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = _abstract_variables(model, images)
  assert set(variables['params']['head']) == {'kernel'}
  channels = {'tiny_cnn': 128, 'resnet18': 512, 'vgg19': 512}[name]
  assert variables['params']['head']['kernel'].shape == (channels, 3)
  logits, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32


def test_tiny_cnn_with_the_normed_linear_head_gives_the_cosine_of_its_features():
  model = get_model('tiny_cnn', num_classes=3, head='normed_linear')
  images = _images(size=32)
  variables = _fake_variables(model, images)
  logits, inter = model.apply(variables, images, train=False)
  kernel = variables['params']['head']['kernel']
  expected = _np_normalize(np.asarray(inter['features']).mean(axis=(1, 2)), 1) @ _np_normalize(
    kernel, 0
  )
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_attention_maps_of_the_normed_linear_head_are_grad_cam_and_refuse_cam():
  model, variables, features, labels = _attention_case('tiny_cnn', 'normed_linear')
  expected = attention.grad_cam(_head_fn(model, variables), features, labels)
  for method in ('auto', 'grad_cam'):
    maps = model.attention_maps(variables, features, labels, method=method)
    assert maps.shape == (2, 4, 4) and maps.dtype == jnp.float32
    np.testing.assert_array_equal(maps, expected)
  # Train mode: the head has no train-dependent layer, so the same maps.
  np.testing.assert_allclose(
    model.attention_maps(variables, features, labels, train=True), expected, atol=1e-6
  )
  with pytest.raises(ValueError, match=r'GAP \+ linear head'):
    model.attention_maps(variables, features, labels, method='cam')


def test_resolve_head_gives_ldam_drw_the_cosine_head_for_default():
  assert resolve_head('default', loss='ldam_drw') == 'normed_linear'
  assert resolve_head(None, loss='ldam_drw') == 'normed_linear'
  for loss in ('ce', 'weighted_ce', 'focal', 'class_balanced', None):
    assert resolve_head('default', loss=loss) is None  # the architecture's own head
  for head in ('linear', 'bn_linear', 'vgg', 'normed_linear'):  # an explicit head is kept
    assert resolve_head(head, loss='ldam_drw') == head


# ---------------------------------------------------------------- train-mode Grad-CAM


def _np_grad_cam_train(model, variables, features, labels, key):
  """Grad-CAM of the head in train mode written out: VJP of the summed true-class logits."""

  def head(f):
    logits, _ = model.apply(
      variables,
      f,
      train=True,
      method=Classifier.apply_head,
      mutable=['batch_stats'],
      rngs={'dropout': key},
    )
    return logits

  logits, vjp = jax.vjp(head, features)
  (grads,) = vjp(jax.nn.one_hot(labels, logits.shape[1]))  # d sum_b logits[b, y_b] / dA
  weights = np.asarray(grads, np.float64).mean(axis=(1, 2))  # [B, C]
  maps = np.einsum('bhwc,bc->bhw', np.asarray(features, np.float64), weights)
  low = maps.min(axis=(1, 2), keepdims=True)
  high = maps.max(axis=(1, 2), keepdims=True)
  return (maps - low) / (high - low), logits


@pytest.mark.parametrize('head', ['bn_linear', 'vgg'])
def test_train_mode_attention_maps_are_grad_cam_of_the_head_in_the_training_pass(head):
  model, variables, _, labels = _attention_case('tiny_cnn', head)
  images = _images(size=32, seed=3)
  key = jax.random.key(11)
  # The training forward pass: its logits, features and the head's dropout masks.
  (logits, inter), _ = model.apply(
    variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': key}
  )
  features = inter['features']
  expected, head_logits = _np_grad_cam_train(model, variables, features, labels, key)
  # The head alone, with the pass's rngs, reproduces the pass's logits: the same dropout masks
  # (flax derives the head's keys from its module path) and the same batch statistics.
  np.testing.assert_allclose(head_logits, logits, rtol=1e-5, atol=1e-6)

  maps = model.attention_maps(
    variables, features, labels, method='auto', train=True, rngs={'dropout': key}
  )
  assert maps.shape == features.shape[:3] and maps.dtype == jnp.float32
  np.testing.assert_allclose(maps, expected, atol=1e-5)
  # Train mode matters: running statistics / no dropout give other maps.
  eval_maps = model.attention_maps(variables, features, labels)
  assert not np.allclose(maps, eval_maps, atol=1e-3)
  if head == 'vgg':  # another dropout key, other masks, other maps
    other = model.attention_maps(
      variables, features, labels, train=True, rngs={'dropout': jax.random.key(12)}
    )
    assert not np.allclose(maps, other, atol=1e-3)


def test_train_mode_attention_maps_under_jit_and_grad():
  model, variables, features, labels = _attention_case('tiny_cnn', 'bn_linear')
  eager = model.attention_maps(variables, features, labels, train=True)
  jitted = jax.jit(lambda v, f, y: model.attention_maps(v, f, y, train=True))
  # Channels that ReLU left constant over the batch have zero batch variance: their 1/sqrt(eps)
  # amplifies the compiled program's rounding to ~1e-3 on some CPUs. Eval-mode statistics would
  # move the maps by far more (~0.8), so this tolerance still tells the two modes apart.
  maps = jitted(variables, features, labels)
  np.testing.assert_allclose(maps, eager, atol=1e-2)
  eval_maps = model.attention_maps(variables, features, labels, train=False)
  assert np.abs(maps - eval_maps).max() > 0.1

  def inside(f):  # what the train step's attention loss does
    return jnp.sum(
      model.attention_maps(variables, f, labels, train=True) * jnp.arange(16.0).reshape(4, 4)
    )

  grads = jax.grad(inside)(features)
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)
