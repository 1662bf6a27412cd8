"""ViT-B/16 and DeiT-S/16: parameter counts, the small ViT of tests/helpers/model_fixtures.py
against a numpy transcription, Grad-CAM of the patch tokens through the 'vit_token' head, and
the head-inputs protocol (the logit parity with timm and torchvision: weight_maps' tests)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax.models import Classifier
from care_jax.models import backbones
from care_jax.models import get_model
from care_jax.models import vit
from tests.helpers import model_fixtures as mf

# timm's vit_base_patch16_224 and deit_small_patch16_224 (torchvision's vit_b_16 has as many).
PARAMETERS = {'vit_b_16': 86_567_656, 'deit_s_16': 22_050_664}


@pytest.mark.parametrize('name', sorted(PARAMETERS))
def test_parameter_counts_at_224_equal_timm(name):
  model = get_model(name, num_classes=1000)
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = mf.abstract_variables(model, image)
  assert mf.num_params(variables['params']) == PARAMETERS[name]
  assert set(variables) == {'params'}  # no BatchNorm statistics
  logits, intermediates = jax.eval_shape(
    functools.partial(model.apply, train=False), variables, image
  )
  width = vit.VIT_CONFIGS[name]['hidden_dim']
  assert intermediates['features'].shape == (1, 14, 14, width)
  assert intermediates['head_inputs']['class_token'].shape == (1, width)
  assert logits.shape == (1, 1000)


def _np_layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _np_dense(x, p):
  return x @ p['kernel'] + p['bias']


def _np_block(x, p, num_heads):
  """timm's Block in float64: pre-norm attention and MLP, LayerNorm eps 1e-6, erf GELU."""
  batch, tokens, channels = x.shape
  d = channels // num_heads
  qkv = _np_dense(_np_layer_norm(x, p['norm1']), p['attn']['qkv'])
  q, k, v = qkv.reshape(batch, tokens, 3, num_heads, d).transpose(2, 0, 3, 1, 4)  # [B, h, N, d]
  scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, channels)
  x = x + _np_dense(out, p['attn']['proj'])
  y = _np_dense(_np_layer_norm(x, p['norm2']), p['mlp']['fc1'])
  y = 0.5 * y * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))  # torch's nn.GELU()
  return x + _np_dense(y, p['mlp']['fc2'])


def _small_vit(seed: int = 0):
  model = get_model(mf.SMALL_VIT, num_classes=3)
  images = mf.images(size=32, seed=seed)
  variables = mf.fake_variables(model, images, seed=seed + 1)
  return model, images, variables


def test_the_small_vit_equals_a_numpy_transcription_of_timm():
  model, images, variables = _small_vit()
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
  backbone, head = p['backbone'], p['head']
  embed = backbone['patch_embed']  # a 16x16/16 convolution (timm's patch_embed.proj)
  tokens = mf.np_conv(images, embed['kernel'], stride=16, pad=0) + embed['bias']
  tokens = tokens.reshape(2, 4, 32)  # row-major patch order
  cls = np.broadcast_to(backbone['cls_token'], (2, 1, 32))
  x = np.concatenate([cls, tokens], axis=1) + backbone['pos_embed']
  x = _np_block(x, backbone['blocks_0'], num_heads=2)
  features, class_token = x[:, 1:].reshape(2, 2, 2, 32), x[:, 0]
  x = _np_block(x, head['block'], num_heads=2)
  expected = _np_dense(_np_layer_norm(x[:, 0], head['norm']), head['fc'])

  logits, intermediates = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  np.testing.assert_allclose(intermediates['features'], features, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
    intermediates['head_inputs']['class_token'], class_token, rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
  head_logits = model.apply(
    variables,
    intermediates['features'],
    method=Classifier.apply_head,
    head_inputs=intermediates['head_inputs'],
  )
  np.testing.assert_allclose(head_logits, logits, rtol=1e-6, atol=1e-6)


def test_attention_maps_are_brute_force_grad_cam_of_the_patch_tokens_class_token_held():
  model, images, variables = _small_vit(seed=3)
  _, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  features, head_inputs, labels = inter['features'], inter['head_inputs'], np.array([2, 0])

  expected = mf.brute_force_grad_cam(model, variables, features, labels, head_inputs)
  # 'auto' is Grad-CAM: the head is not GAP + linear.
  maps = jax.jit(functools.partial(model.attention_maps, head_inputs=head_inputs))(
    variables, features, labels
  )
  np.testing.assert_allclose(maps, expected, atol=1e-5)
  assert np.ptp(expected, axis=(1, 2)).min() > 0.5  # not a constant map
  with pytest.raises(ValueError, match='needs a GAP \\+ linear head'):
    model.attention_maps(variables, features, labels, method='cam', head_inputs=head_inputs)


def test_conv_backbones_return_no_head_inputs():
  model = get_model('tiny_cnn', num_classes=3)
  images = mf.images(size=32)
  _, intermediates = jax.eval_shape(
    functools.partial(model.apply, train=False), mf.abstract_variables(model, images), images
  )
  assert set(intermediates) == {'features'}


def test_the_flatten_head_reads_the_patch_tokens_alone():
  model = get_model(mf.SMALL_VIT, num_classes=3, head='flatten')
  images = mf.images(size=32)
  variables = mf.abstract_variables(model, images)
  assert variables['params']['head']['fc']['kernel'].shape == (2 * 2 * 32, 3)
  logits, _ = jax.eval_shape(functools.partial(model.apply, train=False), variables, images)
  assert logits.shape == (2, 3)


@pytest.mark.parametrize(
  'size, message',
  [
    (40, r'needs images whose sides are multiples of 16; got 40x40: set data.image_size'),
    (48, r'pos_embed was initialised for another number of patches than the 9 of 48x48 images'),
  ],
)
def test_images_of_the_wrong_size_are_refused_in_one_line(size, message):
  model, _, variables = _small_vit()
  with pytest.raises(ValueError, match=message) as raised:
    jax.eval_shape(functools.partial(model.apply, train=False), variables, mf.images(size=size))
  assert '\n' not in str(raised.value)


def test_stochastic_depth_grows_linearly_to_the_last_block_in_the_head():
  assert [vit.block_drop_path_rate(0.1, i, 12) for i in (0, 6, 11)] == [0.0, 0.1 * 6 / 11, 0.1]
  assert get_model('vit_b_16', num_classes=2).head.drop_path_rate == 0.0  # timm's default: off
  backbones.register_backbone(
    'vit_dropping_test',
    functools.partial(
      vit.ViT, hidden_dim=32, depth=2, num_heads=2, mlp_dim=64, stochastic_depth_prob=0.5
    ),
    heads=('vit_token',),
    default_head='vit_token',
    replace=True,
  )
  model = get_model('vit_dropping_test', num_classes=3)
  assert (model.head.num_heads, model.head.mlp_dim, model.head.drop_path_rate) == (2, 64, 0.5)
  images = mf.images(batch=8, size=32)
  variables = mf.fake_variables(model, images)
  apply = jax.jit(model.apply, static_argnames='train')
  evaluated, _ = apply(variables, images, train=False)
  trained, _ = apply(variables, images, train=True, rngs={'dropout': mf.KEY})
  assert not np.allclose(trained, evaluated)
  del backbones._REGISTRY['vit_dropping_test']  # pylint: disable=protected-access
