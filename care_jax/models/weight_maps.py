"""Weight readers of ConvNeXt, EfficientNet and ViT: torchvision and timm state dicts, local files.

``read_convnext_weights(path, variables)``, ``read_efficientnet_weights(path, variables)`` and
``read_vit_weights(path, variables)`` are the backbones' weight readers
(``care_jax.models.backbones``): they take the initialised variables of a whole ``Classifier``
and return them filled from a torchvision or timm checkpoint (``.safetensors`` without torch, or
a torch pickle; `torch_files.load_state_dict`). The naming scheme is detected from the keys
(``source='auto'``) or named ('torchvision', 'timm'). Nothing is downloaded.

Layouts: conv ``weight`` [O, I/groups, kh, kw] -> ``kernel`` [kh, kw, I/groups, O] (a depthwise
conv's [C, 1, kh, kw] -> [kh, kw, 1, C]); linear [out, in] -> [in, out]; LayerNorm and
BatchNorm ``weight`` -> ``scale``; ``running_mean``/``running_var`` -> ``batch_stats``
``mean``/``var``; torchvision's ConvNeXt ``layer_scale`` [C, 1, 1] (timm's ``gamma`` [C]) ->
``layer_scale`` [C]; a ViT's position embedding [1, 1 + n*n, C] for another patch grid than the
model's is resampled to it (`resample_position_embedding`, as timm does).

Names (ours -> torchvision | timm):

- ConvNeXt: ``stem_conv``/``stem_norm`` -> ``features.0.0/1`` | ``stem.0/1``;
  ``downsample{s}_norm/conv`` -> ``features.{2s}.0/1`` | ``stages.{s}.downsample.0/1``;
  ``stage{s}_{j}/dwconv, norm, fc1, fc2`` -> ``features.{2s+1}.{j}.block.0/2/3/5`` |
  ``stages.{s}.blocks.{j}.conv_dw/norm/mlp.fc1/mlp.fc2``; ``head/norm, fc`` ->
  ``classifier.0/2`` | ``head.norm/fc``.
- EfficientNet: ``stem_conv/bn`` -> ``features.0.0/1`` | ``conv_stem``/``bn1``;
  ``stage{s}_{j}/expand, dw, se, project`` -> ``features.{s}.{j}.block.{0..3}`` (expand absent
  for ratio 1: ``block.{0..2}``) | ``blocks.{s-1}.{j}.conv_pw/bn1, conv_dw/bn2, se.conv_reduce/
  conv_expand, conv_pwl/bn3`` (ratio 1: ``conv_dw/bn1, se, conv_pw/bn2``); ``head_conv/bn`` ->
  ``features.8.0/1`` | ``conv_head``/``bn2``; ``head/fc`` -> ``classifier.1`` | ``classifier``.
- ViT (torchvision's ``vit_b_16``; timm's ``vit_base_patch16_224``, ``deit_small_patch16_224``):
  ``patch_embed`` -> ``conv_proj`` | ``patch_embed.proj``; ``cls_token``, ``pos_embed`` ->
  ``class_token``, ``encoder.pos_embedding`` | ``cls_token``, ``pos_embed``; ``blocks_{i}`` (and
  the head's ``block``, the last) ``/norm1, attn/qkv, attn/proj, norm2, mlp/fc1, mlp/fc2`` ->
  ``encoder.layers.encoder_layer_{i}.ln_1, self_attention.in_proj_{weight,bias},
  self_attention.out_proj, ln_2, mlp.0, mlp.3`` | ``blocks.{i}.norm1, attn.qkv, attn.proj,
  norm2, mlp.fc1, mlp.fc2``; ``head/norm, fc`` -> ``encoder.ln``, ``heads.head`` | ``norm``,
  ``head``.

The classifier is loaded when its shapes fit the model's head (same class count), and left as
initialised otherwise (a new task); a head without a checkpoint counterpart stays initialised.
(A ViT's head also holds its last block and final LayerNorm: those are always read.)

Example::

  model = get_model('convnext_tiny', num_classes=7)
  variables = model.init(key, jnp.zeros((1, 224, 224, 3)), train=False)
  variables = read_convnext_weights('convnext_tiny.safetensors', variables)  # 7 classes: new fc
"""

import functools
import logging
import math
import os
import re
from typing import Any, Callable

import flax.traverse_util
import jax
import numpy as np

from care_jax.models import torch_files

SOURCES: tuple[str, ...] = ('auto', 'torchvision', 'timm')
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_STATS = {'mean': 'running_mean', 'var': 'running_var'}
# Keys of the classifier in each (family, source): optional in a checkpoint.
_CLASSIFIER = {
  ('convnext', 'torchvision'): 'classifier.2.',
  ('convnext', 'timm'): 'head.fc.',
  ('efficientnet', 'torchvision'): 'classifier.1.',
  ('efficientnet', 'timm'): 'classifier.',
  ('vit', 'torchvision'): 'heads.head.',
  ('vit', 'timm'): 'head.',
}
# A key of each family's (torchvision, timm) state dicts that tells the two apart.
_SOURCE_KEYS = {
  'convnext': ('features.0.0.weight', 'stem.0.weight'),
  'efficientnet': ('features.0.0.weight', 'conv_stem.weight'),
  'vit': ('conv_proj.weight', 'patch_embed.proj.weight'),
}
# timm's names of the EfficientNet block layers, with and without the expansion conv.
_TIMM_MBCONV = {
  'expand_conv': 'conv_pw',
  'expand_bn': 'bn1',
  'dw_conv': 'conv_dw',
  'dw_bn': 'bn2',
  'project_conv': 'conv_pwl',
  'project_bn': 'bn3',
}
_TIMM_DS = {'dw_conv': 'conv_dw', 'dw_bn': 'bn1', 'project_conv': 'conv_pw', 'project_bn': 'bn2'}
_TIMM_SE = {'se_reduce': 'se.conv_reduce', 'se_expand': 'se.conv_expand'}

# A ViT block's layers (ours, '/'-joined) -> (torchvision's, timm's) module in the block.
_VIT_BLOCK = {
  'norm1': ('ln_1', 'norm1'),
  'attn/qkv': ('self_attention.in_proj', 'attn.qkv'),  # torchvision: in_proj_weight, _bias
  'attn/proj': ('self_attention.out_proj', 'attn.proj'),
  'norm2': ('ln_2', 'norm2'),
  'mlp/fc1': ('mlp.0', 'mlp.fc1'),
  'mlp/fc2': ('mlp.3', 'mlp.fc2'),
}
_VIT_TOP = {  # (torchvision's, timm's) names of the layers and leaves outside the blocks
  'patch_embed': ('conv_proj', 'patch_embed.proj'),
  'cls_token': ('class_token', 'cls_token'),
  'pos_embed': ('encoder.pos_embedding', 'pos_embed'),
  'norm': ('encoder.ln', 'norm'),
  'fc': ('heads.head', 'head'),
}

_log = logging.getLogger(__name__)


def _convnext_module(layer: tuple[str, ...], source: str) -> str | None:
  """The torch module of one of our ConvNeXt layers, e.g. ('backbone', 'stem_conv') ->
  'features.0.0' (torchvision) or 'stem.0' (timm)."""
  part, name = layer[0], layer[1]
  timm = source == 'timm'
  if part == 'head':
    return {
      'norm': 'head.norm' if timm else 'classifier.0',
      'fc': 'head.fc' if timm else ('classifier.2'),
    }.get(name)
  if name in ('stem_conv', 'stem_norm'):
    return ('stem.' if timm else 'features.0.') + ('0' if name == 'stem_conv' else '1')
  down = re.fullmatch(r'downsample(\d+)_(norm|conv)', name)
  if down:
    stage, index = int(down[1]), '0' if down[2] == 'norm' else '1'
    return f'stages.{stage}.downsample.{index}' if timm else f'features.{2 * stage}.{index}'
  block = re.fullmatch(r'stage(\d+)_(\d+)', name)
  stage, index = int(block[1]), int(block[2])
  prefix = f'stages.{stage}.blocks.{index}' if timm else f'features.{2 * stage + 1}.{index}'
  if len(layer) == 2:  # the block's own parameter, layer_scale
    return prefix
  sub = {'dwconv': ('conv_dw', '0'), 'norm': ('norm', '2'), 'fc1': ('mlp.fc1', '3')}
  sub['fc2'] = ('mlp.fc2', '5')
  timm_name, torchvision_index = sub[layer[2]]
  return f'{prefix}.{timm_name}' if timm else f'{prefix}.block.{torchvision_index}'


def _efficientnet_module(
  layer: tuple[str, ...], source: str, block_layers: frozenset[str], num_stages: int = 7
) -> str | None:
  """The torch module of one of our EfficientNet layers; ``block_layers`` are the layer names
  of its block (whether it has an expansion conv), ``num_stages`` the MBConv stages (7; the
  head conv is torchvision's ``features.{num_stages + 1}``)."""
  part, name = layer[0], layer[1]
  timm = source == 'timm'
  if part == 'head':
    return ('classifier' if timm else 'classifier.1') if name == 'fc' else None
  fixed = {
    'stem_conv': ('conv_stem', 'features.0.0'),
    'stem_bn': ('bn1', 'features.0.1'),
    'head_conv': ('conv_head', f'features.{num_stages + 1}.0'),
    'head_bn': ('bn2', f'features.{num_stages + 1}.1'),
  }
  if name in fixed:
    return fixed[name][0 if timm else 1]
  block = re.fullmatch(r'stage(\d+)_(\d+)', name)
  stage, index, sub = int(block[1]), int(block[2]), layer[2]
  expands = 'expand_conv' in block_layers
  if timm:
    names = {**(_TIMM_MBCONV if expands else _TIMM_DS), **_TIMM_SE}
    return f'blocks.{stage - 1}.{index}.{names[sub]}'
  order = (('expand',) if expands else ()) + ('dw', 'se', 'project')
  unit, _, kind = sub.partition('_')
  position = order.index(unit)
  leaf = {'conv': '0', 'bn': '1', 'reduce': 'fc1', 'expand': 'fc2'}[kind]
  return f'features.{stage}.{index}.block.{position}.{leaf}'


def _vit_key(layer: tuple[str, ...], leaf: str, source: str, depth: int) -> str | None:
  """The torch key of one of our ViT leaves, e.g. ('head', 'block', 'attn', 'qkv'), 'kernel' ->
  'encoder.layers.encoder_layer_11.self_attention.in_proj_weight' (torchvision, depth 12) or
  'blocks.11.attn.qkv.weight' (timm); None for a layer without a counterpart (another head's)."""
  timm = source == 'timm'
  if len(layer) == 1:  # the backbone's own cls_token, pos_embed
    return _VIT_TOP[leaf][timm] if leaf in _VIT_TOP else None
  part, name, sub = layer[0], layer[1], '/'.join(layer[2:])
  if name in _VIT_TOP:
    module = _VIT_TOP[name][timm]
  elif re.fullmatch(r'blocks_\d+', name) or (part, name) == ('head', 'block'):
    index = depth - 1 if part == 'head' else int(name.removeprefix('blocks_'))
    if sub not in _VIT_BLOCK:
      return None
    prefix = f'blocks.{index}' if timm else f'encoder.layers.encoder_layer_{index}'
    module = f'{prefix}.{_VIT_BLOCK[sub][timm]}'
  else:
    return None
  separator = '_' if module.endswith('in_proj') else '.'
  return f'{module}{separator}{_LEAVES[leaf]}'


def detect_source(state: dict[str, np.ndarray], family: str) -> str:
  """'torchvision' or 'timm' from a state dict's keys (e.g. 'features.0.0.weight' vs 'stem.0')."""
  torchvision_key, timm_key = _SOURCE_KEYS[family]
  if torchvision_key in state:
    return 'torchvision'
  if timm_key in state:
    return 'timm'
  raise ValueError(
    f'The checkpoint is not a torchvision or timm {family} state dict: it has neither '
    f'{torchvision_key!r} nor {timm_key!r} (its first key: {next(iter(state), None)!r}).'
  )


def _grid_side(shape: tuple[int, ...]) -> int | None:
  """n of a position embedding's shape [1, 1 + n*n, C] (a class token and a square patch grid)."""
  side = math.isqrt(max(shape[1] - 1, 0)) if len(shape) == 3 else 0
  return side if side and shape[0] == 1 and side * side == shape[1] - 1 else None


def _resamples(torch_shape: tuple[int, ...], ours: tuple[int, ...]) -> bool:
  """Whether a position embedding of ``torch_shape`` is resampled to ``ours`` (another grid)."""
  return (
    tuple(torch_shape) != tuple(ours)
    and _grid_side(torch_shape) is not None
    and _grid_side(ours) is not None
    and torch_shape[2] == ours[2]
  )


def resample_position_embedding(pos_embed: jax.typing.ArrayLike, *, side: int) -> np.ndarray:
  """A ViT's position embedding resampled to a ``side`` x ``side`` patch grid, the class kept.

  ``[1, 1 + n*n, C] -> [1, 1 + side*side, C]``: the class token's row is kept apart and the
  ``n x n x C`` grid is resized by antialiased bicubic interpolation (Keys' cubic, a = -0.5,
  widened by the scale when shrinking; ``jax.image.resize``), which is timm's
  ``resample_abs_pos_embed`` (``F.interpolate(mode='bicubic', antialias=True)``;
  huggingface/pytorch-image-models, timm/layers/pos_embed.py), computed in float32.

  >>> resample_position_embedding(np.zeros((1, 197, 8)), side=4).shape
  (1, 17, 8)
  """
  pos_embed = np.asarray(pos_embed, np.float32)
  n = _grid_side(pos_embed.shape)
  if n is None:
    raise ValueError(
      f'A position embedding is [1, 1 + n*n, C] (a class token and an n x n patch grid); '
      f'got shape {pos_embed.shape}.'
    )
  grid = pos_embed[0, 1:].reshape(n, n, -1)
  resized = jax.image.resize(grid, (side, side, grid.shape[-1]), 'bicubic', antialias=True)
  return np.concatenate([pos_embed[:, :1], np.asarray(resized).reshape(1, side * side, -1)], 1)


def _fits(torch_shape: tuple[int, ...], ours: tuple[int, ...]) -> bool:
  """Whether a torch tensor of ``torch_shape`` becomes a leaf of shape ``ours`` (`_to_ours`)."""
  if _resamples(torch_shape, ours):
    return True
  if len(torch_shape) == 4:
    torch_shape = (torch_shape[2], torch_shape[3], torch_shape[1], torch_shape[0])
  elif len(torch_shape) == 2:
    torch_shape = torch_shape[::-1]
  elif len(torch_shape) == 3 and len(ours) == 1:
    torch_shape = (int(np.prod(torch_shape)),)
  return tuple(torch_shape) == tuple(ours)


def _to_ours(array: np.ndarray, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
  """A torch tensor in our layout: OIHW -> HWIO, [out, in] -> [in, out], [C, 1, 1] -> [C], a
  position embedding resampled to our grid."""
  if _resamples(array.shape, shape):
    array = resample_position_embedding(array, side=_grid_side(shape))
  elif array.ndim == 4:
    array = array.transpose(2, 3, 1, 0)
  elif array.ndim == 2:
    array = array.T
  elif array.ndim == 3 and len(shape) == 1:
    array = array.reshape(-1)
  return np.ascontiguousarray(array, dtype=dtype)


def _torch_key(collection: str, layer: tuple[str, ...], leaf: str, module: str) -> str:
  if leaf == 'layer_scale':
    return module + ('.layer_scale' if module.startswith('features.') else '.gamma')
  names = _STATS if collection == 'batch_stats' else _LEAVES
  return f'{module}.{names[leaf]}'


def read_weights(
  family: str, path: str | os.PathLike[str], variables: dict[str, Any], *, source: str = 'auto'
) -> dict[str, Any]:
  """``variables`` (a ConvNeXt, EfficientNet or ViT ``Classifier``'s) filled from a checkpoint.

  Args:
    family: 'convnext', 'efficientnet' or 'vit'.
    path: a torchvision or timm checkpoint (``.safetensors``, or a torch pickle: needs torch).
    variables: the classifier's initialised variables (``params``, ``batch_stats``).
    source: 'auto' (from the keys), 'torchvision' or 'timm'.

  Returns:
    The variables with every backbone leaf (and the head's, where its shapes fit) from the file.

  Raises:
    ValueError: an unknown ``source``; a checkpoint of another architecture or variant (naming
      the first missing and unexpected keys and the shape mismatches).
  """
  if source not in SOURCES:
    raise ValueError(f'Unknown weight source {source!r}; valid sources: {", ".join(SOURCES)}.')
  state = torch_files.load_state_dict(path)
  if source == 'auto':
    source = detect_source(state, family)
  flat = flax.traverse_util.flatten_dict(variables)
  plan, head_keys = _plan(family, flat, source)
  # The classifier is loaded when every one of its leaves is in the checkpoint with our shapes.
  if head_keys and all(
    key in state and _fits(state[key].shape, np.shape(value))
    for key, (_, value) in head_keys.items()
  ):
    plan.update(head_keys)
  _check(path, family, source, state, plan, set(head_keys))
  filled = dict(flat)
  for key, (flat_path, value) in plan.items():
    filled[flat_path] = _to_ours(state[key], np.shape(value), np.asarray(value).dtype)
  _log.info(
    'Read %d tensors of %s (%s) from %s; classifier %s.',
    len(plan),
    family,
    source,
    path,
    'loaded' if set(head_keys) <= set(plan) else 'initialised',
  )
  return flax.traverse_util.unflatten_dict(filled)


def _plan(family: str, flat: dict, source: str) -> tuple[dict, dict]:
  """``(required, classifier)``: torch key -> (our flat path, our leaf), for every leaf of ours
  with a checkpoint counterpart; the classifier's leaves (the whole head but a ViT's, whose last
  block and final norm are the backbone's in torch) apart."""
  stages = {int(m[1]) for path in flat for m in [re.fullmatch(r'stage(\d+)_\d+', path[2])] if m}
  depth = 1 + len({path[2] for path in flat if re.fullmatch(r'blocks_\d+', path[2])})
  plan, head_keys = {}, {}
  for (collection, *layer, leaf), value in flat.items():
    layer = tuple(layer)
    if family == 'vit':
      key = _vit_key(layer, leaf, source, depth)
    else:
      if family == 'convnext':
        module = _convnext_module(layer, source)
      else:
        block = flat_block_layers(flat, layer)
        module = _efficientnet_module(layer, source, block, max(stages, default=7))
      key = None if module is None else _torch_key(collection, layer, leaf, module)
    if key is None:
      continue
    classifier = layer[:2] == ('head', 'fc') if family == 'vit' else layer[0] == 'head'
    (head_keys if classifier else plan)[key] = ((collection, *layer, leaf), value)
  return plan, head_keys


def flat_block_layers(flat: dict[tuple[str, ...], Any], layer: tuple[str, ...]) -> frozenset[str]:
  """The layer names inside the block of ``layer`` (('backbone', 'stage2_0', ...) -> its
  sublayers); empty outside blocks."""
  if len(layer) < 3:
    return frozenset()
  return frozenset(path[3] for path in flat if tuple(path[1:3]) == layer[:2] and len(path) > 4)


def _check(path, family, source, state, plan, head_keys) -> None:
  classifier_prefix = _CLASSIFIER[family, source]
  missing = sorted(key for key in plan if key not in state)
  unexpected = sorted(
    key
    for key in state
    if key not in plan
    and key not in head_keys
    and not key.startswith(classifier_prefix)
    and not key.endswith('num_batches_tracked')
  )
  mismatched = [
    (key, tuple(state[key].shape), np.shape(value))
    for key, (_, value) in plan.items()
    if key in state and not _fits(state[key].shape, np.shape(value))
  ]
  if not (missing or unexpected or mismatched):
    return
  lines = [f'Checkpoint {path} does not fit this {family} ({source} names):']
  if missing:
    lines.append(f'  {len(missing)} missing keys, the first: {missing[0]!r}')
  if unexpected:
    lines.append(f'  {len(unexpected)} unexpected keys, the first: {unexpected[0]!r}')
  for key, got, expected in mismatched[:5]:
    lines.append(f'  shape mismatch for {key!r}: checkpoint {got}, ours {expected}')
  lines.append('  Check the variant (e.g. convnext_tiny vs convnext_small) and the source.')
  raise ValueError('\n'.join(lines))


read_convnext_weights: Callable[..., dict[str, Any]] = functools.partial(read_weights, 'convnext')
read_efficientnet_weights: Callable[..., dict[str, Any]] = functools.partial(
  read_weights, 'efficientnet'
)
read_vit_weights: Callable[..., dict[str, Any]] = functools.partial(read_weights, 'vit')
