"""care_jax.models.weight_maps: torchvision and timm names and layouts of a small ConvNeXt,
EfficientNet and ViT, written here by hand from the libraries' module trees; the head kept or
replaced; a ViT's position embedding resampled; clear errors. (Parity with the real libraries'
models: convnext_test.py, efficientnet_test.py, vit_parity_test.py.)"""

import functools
import re

import jax
import numpy as np
import pytest

from care_jax.models import get_model
from care_jax.models import load_pretrained
from care_jax.models import weight_maps
from tests.helpers import model_fixtures as mf
from tests.helpers import torch_venv


def _ln(state, key, c, rng):
  state[f'{key}.weight'], state[f'{key}.bias'] = rng.normal(size=(2, c)).astype(np.float32)


def _bn(state, key, c, rng):
  _ln(state, key, c, rng)
  state[f'{key}.running_mean'] = rng.normal(size=c).astype(np.float32)
  state[f'{key}.running_var'] = rng.uniform(0.5, 1.5, size=c).astype(np.float32)


def _w(state, key, shape, rng, bias=True):
  state[f'{key}.weight'] = rng.normal(size=shape).astype(np.float32)
  if bias:
    state[f'{key}.bias'] = rng.normal(size=shape[0]).astype(np.float32)


def _convnext_torchvision(classes=3):
  """torchvision's ConvNeXt(depths=(1, 1), dims=(8, 16)) state dict: features.0 stem, 1 stage,
  2 downsample, 3 stage, classifier [LayerNorm2d, Flatten, Linear]."""
  rng, state = np.random.default_rng(0), {}
  _w(state, 'features.0.0', (8, 3, 4, 4), rng)
  _ln(state, 'features.0.1', 8, rng)
  for index, c in ((1, 8), (3, 16)):
    block = f'features.{index}.0'
    state[f'{block}.layer_scale'] = rng.normal(size=(c, 1, 1)).astype(np.float32)
    _w(state, f'{block}.block.0', (c, 1, 7, 7), rng)
    _ln(state, f'{block}.block.2', c, rng)
    _w(state, f'{block}.block.3', (4 * c, c), rng)
    _w(state, f'{block}.block.5', (c, 4 * c), rng)
  _ln(state, 'features.2.0', 8, rng)
  _w(state, 'features.2.1', (16, 8, 2, 2), rng)
  _ln(state, 'classifier.0', 16, rng)
  _w(state, 'classifier.2', (classes, 16), rng)
  return state


def _renamed(key, rules):
  for pattern, replacement in rules:
    key = re.sub(pattern, replacement, key)
  return key


def _convnext_timm_name(key):
  """timm's name of a torchvision ConvNeXt key (stem, stages.N.downsample, blocks.M, head)."""
  rules = (
    (r'^features\.0\.', 'stem.'),
    (r'^features\.2\.', 'stages.1.downsample.'),
    (r'^features\.(\d)\.0\.layer_scale', lambda m: f'stages.{int(m[1]) // 2}.blocks.0.gamma'),
    (
      r'^features\.(\d)\.0\.block\.(\d)',
      lambda m: (
        f'stages.{int(m[1]) // 2}.blocks.0.'
        + {'0': 'conv_dw', '2': 'norm', '3': 'mlp.fc1', '5': 'mlp.fc2'}[m[2]]
      ),
    ),
    (r'^classifier\.0', 'head.norm'),
    (r'^classifier\.2', 'head.fc'),
  )
  return _renamed(key, rules)


def _efficientnet_torchvision(classes=3):
  """torchvision's EfficientNet of mf.SMALL_EFFICIENTNET (B0's first three stages at width
  0.25): features.0 stem, 1-3 MBConv stages, 4 head conv, classifier [Dropout, Linear]."""
  rng, state = np.random.default_rng(1), {}
  _w(state, 'features.0.0', (8, 3, 3, 3), rng, bias=False)
  _bn(state, 'features.0.1', 8, rng)
  for stage, (expanded, kernel, out) in enumerate(((8, 3, 8), (48, 3, 8), (48, 5, 16)), 1):
    prefix, index, c_in = f'features.{stage}.0.block', 0, 8
    if expanded != c_in:
      _w(state, f'{prefix}.0.0', (expanded, c_in, 1, 1), rng, bias=False)
      _bn(state, f'{prefix}.0.1', expanded, rng)
      index = 1
    _w(state, f'{prefix}.{index}.0', (expanded, 1, kernel, kernel), rng, bias=False)
    _bn(state, f'{prefix}.{index}.1', expanded, rng)
    _w(state, f'{prefix}.{index + 1}.fc1', (c_in // 4, expanded, 1, 1), rng)
    _w(state, f'{prefix}.{index + 1}.fc2', (expanded, c_in // 4, 1, 1), rng)
    _w(state, f'{prefix}.{index + 2}.0', (out, expanded, 1, 1), rng, bias=False)
    _bn(state, f'{prefix}.{index + 2}.1', out, rng)
  _w(state, 'features.4.0', (64, 16, 1, 1), rng, bias=False)
  _bn(state, 'features.4.1', 64, rng)
  _w(state, 'classifier.1', (classes, 64), rng)
  return state


def _efficientnet_timm_name(key):
  """timm's name of a torchvision EfficientNet key (conv_stem, blocks.N.M.conv_pw, ...)."""
  fixed = {'features.0.0': 'conv_stem', 'features.0.1': 'bn1', 'features.4.0': 'conv_head'}
  fixed.update({'features.4.1': 'bn2', 'classifier.1': 'classifier'})
  module, leaf = key.rsplit('.', 1)
  if module in fixed:
    return f'{fixed[module]}.{leaf}'
  stage, rest = re.fullmatch(r'features\.(\d)\.0\.block\.(.*)', module).groups()
  names = (
    {'0.0': 'conv_dw', '0.1': 'bn1', '1.fc1': 'se.conv_reduce', '1.fc2': 'se.conv_expand'}
    | {'2.0': 'conv_pw', '2.1': 'bn2'}
    if stage == '1'
    else {'0.0': 'conv_pw', '0.1': 'bn1', '1.0': 'conv_dw', '1.1': 'bn2'}
    | {'2.fc1': 'se.conv_reduce', '2.fc2': 'se.conv_expand', '3.0': 'conv_pwl', '3.1': 'bn3'}
  )
  return f'blocks.{int(stage) - 1}.0.{names[rest]}.{leaf}'


def _vit_torchvision(classes=3, grid=2):
  """torchvision's VisionTransformer state dict of mf.SMALL_VIT (2 layers, width 32, MLP 64) for
  a grid x grid patch grid: conv_proj, class_token, encoder.{pos_embedding, layers, ln},
  heads.head."""
  rng, state, c = np.random.default_rng(2), {}, 32
  _w(state, 'conv_proj', (c, 3, 16, 16), rng)
  state['class_token'] = rng.normal(size=(1, 1, c)).astype(np.float32)
  state['encoder.pos_embedding'] = rng.normal(size=(1, 1 + grid * grid, c)).astype(np.float32)
  for index in range(2):
    layer = f'encoder.layers.encoder_layer_{index}'
    _ln(state, f'{layer}.ln_1', c, rng)
    attention = f'{layer}.self_attention'
    state[f'{attention}.in_proj_weight'] = rng.normal(size=(3 * c, c)).astype(np.float32)
    state[f'{attention}.in_proj_bias'] = rng.normal(size=3 * c).astype(np.float32)
    _w(state, f'{attention}.out_proj', (c, c), rng)
    _ln(state, f'{layer}.ln_2', c, rng)
    _w(state, f'{layer}.mlp.0', (2 * c, c), rng)
    _w(state, f'{layer}.mlp.3', (c, 2 * c), rng)
  _ln(state, 'encoder.ln', c, rng)
  _w(state, 'heads.head', (classes, c), rng)
  return state


def _vit_timm_name(key):
  """timm's name of a torchvision ViT key (patch_embed.proj, blocks.N.attn.qkv, norm, head)."""
  rules = (
    (r'^conv_proj', 'patch_embed.proj'),
    (r'^class_token', 'cls_token'),
    (r'^encoder\.pos_embedding', 'pos_embed'),
    (r'^encoder\.layers\.encoder_layer_(\d+)\.', r'blocks.\1.'),
    (r'\.ln_(\d)\.', r'.norm\1.'),
    (r'self_attention\.in_proj_', 'attn.qkv.'),
    (r'self_attention\.out_proj', 'attn.proj'),
    (r'mlp\.0\.', 'mlp.fc1.'),
    (r'mlp\.3\.', 'mlp.fc2.'),
    (r'^encoder\.ln', 'norm'),
    (r'^heads\.head', 'head'),
  )
  return _renamed(key, rules)


CASES = {
  'convnext': (mf.SMALL_CONVNEXT, _convnext_torchvision, _convnext_timm_name),
  'efficientnet': (mf.SMALL_EFFICIENTNET, _efficientnet_torchvision, _efficientnet_timm_name),
  'vit': (mf.SMALL_VIT, _vit_torchvision, _vit_timm_name),
}


@functools.cache
def _zeros(name, classes=3):
  model = get_model(name, num_classes=classes)
  abstract = mf.abstract_variables(model, jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract)


def _write(tmp_path, state, name='model.safetensors'):
  path = tmp_path / name
  torch_venv.write_safetensors(path, state)
  return path


@pytest.mark.parametrize('family', CASES)
def test_torchvision_and_timm_names_fill_every_leaf_alike(tmp_path, family):
  name, torchvision_state, timm_name = CASES[family]
  state = torchvision_state()
  zeros = _zeros(name)
  ours = weight_maps.read_weights(family, _write(tmp_path, state), zeros)
  timm_state = {timm_name(key): value for key, value in state.items()}
  from_timm = weight_maps.read_weights(
    family, _write(tmp_path, timm_state, 'timm.safetensors'), zeros
  )

  jax.tree.map(np.testing.assert_array_equal, ours, from_timm)
  leaves = jax.tree.leaves(ours)
  assert len(leaves) == len(state) and all(np.any(leaf != 0) for leaf in leaves)
  params = ours['params']
  if (
    family == 'convnext'
  ):  # OIHW -> HWIO (depthwise [C, 1, 7, 7] -> [7, 7, 1, C]), [C, 1, 1] -> [C]
    block = params['backbone']['stage1_0']
    np.testing.assert_array_equal(
      block['dwconv']['kernel'], state['features.3.0.block.0.weight'].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(block['layer_scale'], state['features.3.0.layer_scale'][:, 0, 0])
    np.testing.assert_array_equal(params['head']['fc']['kernel'], state['classifier.2.weight'].T)
  elif family == 'vit':  # [3C, C] -> [C, 3C] (q, k, v columns); the last layer is the head's
    qkv = 'encoder.layers.encoder_layer_1.self_attention.in_proj_weight'
    np.testing.assert_array_equal(params['head']['block']['attn']['qkv']['kernel'], state[qkv].T)
    np.testing.assert_array_equal(params['backbone']['cls_token'], state['class_token'])
    patch_kernel = params['backbone']['patch_embed']['kernel']
    np.testing.assert_array_equal(patch_kernel, state['conv_proj.weight'].transpose(2, 3, 1, 0))
  else:
    stats = ours['batch_stats']['backbone']['stage3_0']['project_bn']
    np.testing.assert_array_equal(stats['var'], state['features.3.0.block.3.1.running_var'])
    np.testing.assert_array_equal(params['head']['fc']['bias'], state['classifier.1.bias'])


@pytest.mark.parametrize('family', CASES)
def test_a_checkpoint_of_other_classes_keeps_the_initialised_classifier(tmp_path, family):
  name, torchvision_state, _ = CASES[family]
  variables = weight_maps.read_weights(
    family, _write(tmp_path, torchvision_state(classes=5)), _zeros(name)
  )
  np.testing.assert_array_equal(variables['params']['head']['fc']['kernel'], 0.0)
  assert all(np.any(leaf != 0) for leaf in jax.tree.leaves(variables['params']['backbone']))
  if family == 'vit':  # the last block and the final norm are read all the same
    head = variables['params']['head']
    assert all(np.any(leaf != 0) for leaf in jax.tree.leaves((head['block'], head['norm'])))


def test_a_vit_position_embedding_of_another_grid_is_resampled_to_the_models(tmp_path):
  state = _vit_torchvision(grid=4)  # a 64-px checkpoint; the model's grid is 2 x 2 (32 px)
  variables = weight_maps.read_vit_weights(_write(tmp_path, state), _zeros(mf.SMALL_VIT))
  expected = weight_maps.resample_position_embedding(state['encoder.pos_embedding'], side=2)
  np.testing.assert_array_equal(variables['params']['backbone']['pos_embed'], expected)
  state['encoder.pos_embedding'] = state['encoder.pos_embedding'][:, :-1]  # 15 patches: no grid
  with pytest.raises(ValueError, match=r"'encoder.pos_embedding': checkpoint \(1, 16, 32\)"):
    weight_maps.read_vit_weights(_write(tmp_path, state), _zeros(mf.SMALL_VIT))


def test_a_pretrained_vit_is_made_for_the_runs_image_size(tmp_path):
  state = _vit_torchvision(grid=2)  # a 32-px checkpoint, loaded for 64-px images (a 4 x 4 grid)
  _, variables = load_pretrained(
    mf.SMALL_VIT, _write(tmp_path, state), num_classes=3, image_shape=(64, 64)
  )
  expected = weight_maps.resample_position_embedding(state['encoder.pos_embedding'], side=4)
  np.testing.assert_array_equal(variables['params']['backbone']['pos_embed'], expected)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
  state = _convnext_torchvision()
  del state['features.1.0.layer_scale']
  state['features.9.weight'] = np.zeros(3, np.float32)
  state['features.2.1.weight'] = np.zeros((16, 8, 3, 3), np.float32)
  with pytest.raises(ValueError) as error:
    weight_maps.read_weights('convnext', _write(tmp_path, state), _zeros(mf.SMALL_CONVNEXT))
  message = str(error.value)
  assert "1 missing keys, the first: 'features.1.0.layer_scale'" in message
  assert "1 unexpected keys, the first: 'features.9.weight'" in message
  assert "shape mismatch for 'features.2.1.weight': checkpoint (16, 8, 3, 3)" in message


def test_unknown_source_and_foreign_checkpoints_are_refused(tmp_path):
  path = _write(tmp_path, {'conv1.weight': np.zeros((8, 3, 7, 7), np.float32)})
  with pytest.raises(ValueError, match="not a torchvision or timm convnext.*'conv1.weight'"):
    weight_maps.read_weights('convnext', path, _zeros(mf.SMALL_CONVNEXT))
  with pytest.raises(ValueError, match="not a torchvision or timm vit.*'conv_proj.weight'"):
    weight_maps.read_vit_weights(path, _zeros(mf.SMALL_VIT))
  with pytest.raises(ValueError, match="Unknown weight source 'hub'.*torchvision, timm"):
    weight_maps.read_weights('convnext', path, _zeros(mf.SMALL_CONVNEXT), source='hub')
