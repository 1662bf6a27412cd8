"""Weight readers of ConvNeXt and EfficientNet: torchvision and timm state dicts, local files.

``read_convnext_weights(path, variables)`` and ``read_efficientnet_weights(path, variables)``
are the backbones' weight readers (``care_jax.models.backbones``): they take the initialised
variables of a whole ``Classifier`` and return them filled from a torchvision or timm checkpoint
(``.safetensors`` without torch, or a torch pickle; `torch_files.load_state_dict`). The naming
scheme is detected from the keys (``source='auto'``) or named ('torchvision', 'timm'). Nothing
is downloaded.

Layouts: conv ``weight`` [O, I/groups, kh, kw] -> ``kernel`` [kh, kw, I/groups, O] (a depthwise
conv's [C, 1, kh, kw] -> [kh, kw, 1, C]); linear [out, in] -> [in, out]; LayerNorm and
BatchNorm ``weight`` -> ``scale``; ``running_mean``/``running_var`` -> ``batch_stats``
``mean``/``var``; torchvision's ConvNeXt ``layer_scale`` [C, 1, 1] (timm's ``gamma`` [C]) ->
``layer_scale`` [C].

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

The classifier is loaded when its shapes fit the model's head (same class count), and left as
initialised otherwise (a new task); a head without a checkpoint counterpart stays initialised.

Example::

  model = get_model('convnext_tiny', num_classes=7)
  variables = model.init(key, jnp.zeros((1, 224, 224, 3)), train=False)
  variables = read_convnext_weights('convnext_tiny.safetensors', variables)  # 7 classes: new fc
"""

import functools
import logging
import os
import re
from typing import Any, Callable

import flax.traverse_util
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


def detect_source(state: dict[str, np.ndarray], family: str) -> str:
  """'torchvision' or 'timm' from a state dict's keys (e.g. 'features.0.0.weight' vs 'stem.0')."""
  torchvision_key = 'features.0.0.weight'
  timm_key = 'stem.0.weight' if family == 'convnext' else 'conv_stem.weight'
  if torchvision_key in state:
    return 'torchvision'
  if timm_key in state:
    return 'timm'
  raise ValueError(
    f'The checkpoint is not a torchvision or timm {family} state dict: it has neither '
    f'{torchvision_key!r} nor {timm_key!r} (its first key: {next(iter(state), None)!r}).'
  )


def _fits(torch_shape: tuple[int, ...], ours: tuple[int, ...]) -> bool:
  """Whether a torch tensor of ``torch_shape`` becomes a leaf of shape ``ours`` (`_to_ours`)."""
  if len(torch_shape) == 4:
    torch_shape = (torch_shape[2], torch_shape[3], torch_shape[1], torch_shape[0])
  elif len(torch_shape) == 2:
    torch_shape = torch_shape[::-1]
  elif len(torch_shape) == 3 and len(ours) == 1:
    torch_shape = (int(np.prod(torch_shape)),)
  return tuple(torch_shape) == tuple(ours)


def _to_ours(array: np.ndarray, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
  """A torch tensor in our layout: OIHW -> HWIO, [out, in] -> [in, out], [C, 1, 1] -> [C]."""
  if array.ndim == 4:
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
  """``variables`` (a ConvNeXt or EfficientNet ``Classifier``'s) filled from a checkpoint.

  Args:
    family: 'convnext' or 'efficientnet'.
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
  stages = {int(m[1]) for path in flat for m in [re.fullmatch(r'stage(\d+)_\d+', path[2])] if m}
  plan, head_keys = {}, {}
  for (collection, *layer, leaf), value in flat.items():
    layer = tuple(layer)
    if family == 'convnext':
      module = _convnext_module(layer, source)
    else:
      block = flat_block_layers(flat, layer)
      module = _efficientnet_module(layer, source, block, max(stages, default=7))
    if module is None:
      continue
    key = _torch_key(collection, layer, leaf, module)
    (head_keys if layer[0] == 'head' else plan)[key] = ((collection, *layer, leaf), value)
  # The head is loaded when every one of its leaves is in the checkpoint with our shapes.
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
    'Read %d tensors of %s (%s) from %s; head %s.',
    len(plan),
    family,
    source,
    path,
    'loaded' if set(head_keys) <= set(plan) else 'initialised',
  )
  return flax.traverse_util.unflatten_dict(filled)


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
