"""ImageNet-pretrained backbones from PyTorch checkpoints: torchvision/timm ResNets, DenseNets, VGG.

``load_pretrained`` builds a ``Classifier`` with ``get_model`` and fills its variables from a local
state dict, so that ``model.apply(variables, images, train=False)`` gives the PyTorch model's
eval-mode logits (to float32 rounding) for the same images::

  model, variables = load_pretrained('resnet50', 'resnet50.safetensors', num_classes=7)
  images = (images_01 - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)   # NHWC, RGB in [0, 1]
  logits, intermediates = model.apply(variables, images, train=False)

Layer mapping (torch -> Flax; '.' block indices become '_'):

- conv ``weight`` [O, I, kh, kw] -> ``kernel`` [kh, kw, I, O]; linear ``weight`` [out, in] ->
  ``kernel`` [in, out]; ``bias`` -> ``bias``.
- BatchNorm ``weight``/``bias`` -> ``params`` ``scale``/``bias``; ``running_mean``/
  ``running_var`` -> ``batch_stats`` ``mean``/``var``; ``num_batches_tracked`` is ignored.
- ResNets: ``conv1``, ``bn1``, ``layer2.0.conv1`` -> ``layer2_0/conv1``, ``layer2.0.downsample.0/1``
  -> ``layer2_0/downsample_conv``/``downsample_bn``, ``fc`` -> ``head/fc``. timm's plain
  ``resnet18 ... resnet152`` (e.g. ``resnet50.a1_in1k``) use exactly these names; its deep-stem
  (``resnet50d``, ``...c/s/t``), avg-pool-shortcut and SE variants are other architectures and
  are rejected with a hint.
- VGG-19: ``features.{0, 2, 5, ..., 34}`` -> ``conv1_1 ... conv5_4``; ``classifier.0/3/6`` ->
  ``head/fc1``/``fc2``/``fc3``.
- DenseNet-121/161/169/201: ``features.X`` -> ``backbone/X`` with '.' -> '/' (``features.conv0``,
  ``features.denseblock1.denselayer1.norm1``, ``features.transition1.conv``, ``features.norm5``),
  ``classifier`` -> ``head/fc``. timm's plain ``densenet121`` ... ``densenet201`` (e.g.
  ``densenet121.ra_in1k``, ``.tv_in1k``) use these names too (its ``BatchNormAct2d`` holds
  BatchNorm's parameters under the same names). The files torchvision downloads
  (``densenet121-a639ec97.pth``) still carry the legacy names ``denselayer1.norm.1``,
  ``conv.2``, ...; they are read as ``norm1``, ``conv2``, as torchvision and timm do. timm's
  deep-stem variants (``densenetblur121d``, ``densenet264d``) are rejected with a hint.

The classifier is optional: it is loaded when ``num_classes`` is None or equals the checkpoint's
class count, and freshly initialised otherwise (or when the checkpoint has none); VGG's hidden
``classifier.0/3`` are loaded either way. Heads without a torch counterpart ('bn_linear', or
'linear' on VGG-19) are always initialised. ``LoadReport`` lists what was loaded and initialised.

Checkpoints: ``.safetensors`` is read without torch; ``.pth``/``.pt``/``.bin``/``.tar``/``.ckpt``
need torch and are read with ``torch.load(..., weights_only=True)`` (no arbitrary unpickling).
State dicts wrapped as ``{'state_dict': ...}`` or ``{'model': ...}`` and a DataParallel
``module.`` prefix are accepted. Nothing is ever downloaded. The readers are
`care_jax.models.torch_files`'s (``read_safetensors``, ``load_state_dict``).
"""

import dataclasses
import functools
import logging
import os
import pathlib
import re
from typing import Any, Mapping

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from care_jax import _deprecated
from care_jax.models import backbones
from care_jax.models import classifier as classifier_lib
from care_jax.models import densenet
from care_jax.models import heads as heads_lib
from care_jax.models import layers
from care_jax.models import torch_files
from care_jax.models import vgg

# torchvision's ImageNet preprocessing, applied to RGB images scaled to [0, 1].
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Every architecture with a torchvision counterpart (all but tiny_cnn) read by this module; the
# backbones with their own weight reader (ConvNeXt, EfficientNet) are read by theirs.
PRETRAINED_MODEL_NAMES: tuple[str, ...] = tuple(
  name
  for name in classifier_lib.MODEL_NAMES
  if name != 'tiny_cnn' and backbones.resolve(name).weight_reader is None
)

# Flax (collection, leaf) -> torch parameter/buffer name.
_LEAF_NAMES = {
  ('params', 'kernel'): 'weight',
  ('params', 'scale'): 'weight',
  ('params', 'bias'): 'bias',
  ('batch_stats', 'mean'): 'running_mean',
  ('batch_stats', 'var'): 'running_var',
}
# Our ResNet projection shortcut -> torchvision's ``downsample`` Sequential.
_RESNET_SHORTCUT = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
# Our VGG head layer -> torchvision's ``classifier`` index.
_VGG_HEAD = {'fc1': 'classifier.0', 'fc2': 'classifier.3', 'fc3': 'classifier.6'}
# Key patterns of timm ResNet variants that are other architectures than ours.
_TIMM_VARIANT_HINTS = (
  (r'^conv1\.\d+\.', "a deep 3x3 stem ('conv1.0', ...): timm's resnet*c/d/s/t variants"),
  (r'\.downsample\.2\.', "an avg-pool shortcut ('downsample.1/2'): timm's resnet*d/e/t variants"),
  (r'\.se\.', "squeeze-excitation layers ('.se.'): timm's SE-ResNets"),
)
_RESNET_SUPPORTED = 'only the plain 7x7-stem ResNets (torchvision, timm resnet18 ... resnet152)'
# The same for timm's DenseNet variants.
_TIMM_DENSENET_HINTS = (
  (
    r'^features\.(conv|norm)[12]\.',
    "a deep 3x3 stem ('features.conv1', 'features.conv2'): timm's densenetblur121d and "
    'densenet264d',
  ),
)
_DENSENET_SUPPORTED = (
  'only the plain 7x7-stem DenseNets (torchvision, timm densenet121/161/169/201)'
)
# torchvision's own DenseNet files: 'denselayer1.norm.1.weight' for today's 'denselayer1.norm1'.
_DENSENET_LEGACY_KEY = re.compile(r'(\.denselayer\d+\.(?:norm|relu|conv))\.([12])\.')

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What ``load_pretrained`` did with each layer of the model.

  Attributes:
    path: the checkpoint file.
    model_name: the architecture, one of ``PRETRAINED_MODEL_NAMES``.
    num_classes: the model's number of logits.
    checkpoint_num_classes: the checkpoint classifier's output size, None if it has no classifier.
    loaded: our layer path (e.g. 'backbone/layer2_0/downsample_conv') -> the torch module it was
      filled from (e.g. 'layer2.0.downsample.0'), ordered by torch module name.
    initialised: our layers given a fresh random initialisation (e.g. ('head/fc',)).
    ignored: checkpoint keys left unused (a replaced classifier; never ``num_batches_tracked``).
  """

  path: str
  model_name: str
  num_classes: int
  checkpoint_num_classes: int | None
  loaded: Mapping[str, str]
  initialised: tuple[str, ...]
  ignored: tuple[str, ...]

  def __str__(self) -> str:
    classes = (
      'no classifier'
      if self.checkpoint_num_classes is None
      else f'{self.checkpoint_num_classes} classes'
    )
    lines = [
      f'{self.model_name} from {self.path} (checkpoint: {classes}; model: '
      f'{self.num_classes} classes): loaded {len(self.loaded)} layers, initialised '
      f'{len(self.initialised)}.'
    ]
    if self.initialised:
      lines.append(f'  initialised: {", ".join(self.initialised)}')
    if self.ignored:
      lines.append(f'  ignored checkpoint keys: {", ".join(self.ignored)}')
    return '\n'.join(lines)


# ---------------------------------------------------------------- torch <-> Flax names and layouts


@functools.cache
def _vgg_feature_indices() -> dict[str, int]:
  """'conv{b}_{i}' -> index in torchvision's ``features`` (conv+ReLU pairs, a maxpool per block)."""
  indices, position = {}, 0
  for block, channels in enumerate(vgg.VGG19_BLOCKS):
    for index in range(len(channels)):
      indices[f'conv{block + 1}_{index + 1}'] = position
      position += 2
    position += 1
  return indices


def _torch_module(model_name: str, head: nn.Module, layer: tuple[str, ...]) -> str | None:
  """The torch module name of one of our layers, e.g. ('backbone', 'layer2_0', 'downsample_bn') ->
  'layer2.0.downsample.1'; None for a head layer without a torch counterpart."""
  part, rest = layer[0], layer[1:]
  if part == 'head':
    if model_name == 'vgg19' and isinstance(head, heads_lib.VGGHead):
      return _VGG_HEAD[rest[0]]
    if model_name != 'vgg19' and isinstance(head, heads_lib.LinearHead):
      return _classifier_modules(model_name)[-1]  # 'fc' ('classifier' for DenseNets)
    return None
  if model_name == 'vgg19':
    return f'features.{_vgg_feature_indices()[rest[0]]}'
  if _is_densenet(model_name):
    return '.'.join(('features', *rest))
  names = []
  for name in rest:
    block = re.fullmatch(r'(layer\d+)_(\d+)', name)
    if block:
      names.extend(block.groups())
    else:
      names.append(_RESNET_SHORTCUT.get(name, name))
  return '.'.join(names)


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Our kernel shape in torch's layout: HWIO -> OIHW, [in, out] -> [out, in]."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return (shape[1], shape[0])
  return shape


def _to_flax(array: np.ndarray, dtype: Any) -> np.ndarray:
  """A torch tensor in our layout: OIHW -> HWIO, [out, in] -> [in, out]; cast to ``dtype``."""
  if array.ndim == 4:
    array = array.transpose(2, 3, 1, 0)
  elif array.ndim == 2:
    array = array.T
  return np.ascontiguousarray(array, dtype=dtype)


def _natural_key(key: str) -> list[Any]:
  """Sorts 'layer3.10' after 'layer3.9'."""
  return [int(token) if token.isdigit() else token for token in re.split(r'(\d+)', key)]


def _is_densenet(model_name: str) -> bool:
  return model_name in densenet.DENSENET_CONFIGS


def _classifier_modules(model_name: str) -> tuple[str, ...]:
  """The torch architecture's classifier modules, the last one producing the logits."""
  if model_name == 'vgg19':
    return tuple(_VGG_HEAD.values())
  return ('classifier',) if _is_densenet(model_name) else ('fc',)


def _rename_densenet_legacy_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision's downloadable DenseNet files' 'denselayer1.norm.1.weight' -> 'norm1.weight'."""
  renamed = {}
  for key, value in state.items():
    new_key = _DENSENET_LEGACY_KEY.sub(r'\1\2.', key)
    if new_key != key and new_key in state:
      raise ValueError(f'Checkpoint has both {key!r} and {new_key!r}.')
    renamed[new_key] = value
  return renamed


def _mismatch_error(
  path: pathlib.Path,
  model_name: str,
  missing: list[str],
  unexpected: list[str],
  mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> ValueError:
  lines = [f'Checkpoint {path} does not fit {model_name}:']
  if missing:
    lines.append(f'  {len(missing)} missing keys, the first: {missing[0]!r}')
  if unexpected:
    lines.append(f'  {len(unexpected)} unexpected keys, the first: {unexpected[0]!r}')
  for key, got, expected in mismatched[:5]:
    lines.append(f'  shape mismatch for {key!r}: checkpoint {got}, expected {expected}')
  if len(mismatched) > 5:
    lines.append(f'  ... and {len(mismatched) - 5} more shape mismatches')
  hints, supported = (
    (_TIMM_DENSENET_HINTS, _DENSENET_SUPPORTED)
    if _is_densenet(model_name)
    else (_TIMM_VARIANT_HINTS, _RESNET_SUPPORTED)
  )
  for pattern, description in hints:
    if any(re.search(pattern, key) for key in unexpected):
      lines.append(f'  The checkpoint has {description}; {supported} are supported.')
  return ValueError('\n'.join(lines))


# ---------------------------------------------------------------- load_pretrained


def load_pretrained(
  model_name: str,
  path: str | os.PathLike[str],
  *,
  num_classes: int | None = None,
  dtype: layers.Dtype = jnp.float32,
  head: str | None = None,
  axis_name: str | None = None,
  rng: jax.Array | None = None,
  image_shape: tuple[int, int] = (224, 224),
  return_report: bool = False,
) -> (
  tuple[classifier_lib.Classifier, dict[str, Any]]
  | tuple[classifier_lib.Classifier, dict[str, Any], LoadReport]
):
  """A ``Classifier`` and its variables filled from a torchvision/timm PyTorch checkpoint.

  ``model.apply(variables, images, train=False)`` returns ``(logits, {'features': ...})`` equal to
  the PyTorch model's eval-mode output for NHWC float32 ``images`` normalised with
  ``IMAGENET_MEAN``/``IMAGENET_STD`` (the torch model gets the same images as NCHW).

  Args:
    model_name: one of ``PRETRAINED_MODEL_NAMES``, or a backbone with its own weight reader
      (``care_jax.models.backbones``: the reader fills the initialised variables from ``path``).
    path: a ``.safetensors`` file (read without torch) or a torch pickle (needs torch).
    num_classes: logits of the model. None (or the checkpoint's class count) loads the
      checkpoint's classifier; any other value keeps the backbone (and VGG's hidden layers) and
      initialises a fresh final layer.
    dtype: computation dtype, as in ``get_model``; parameters are float32 whatever the checkpoint
      stores (F16/BF16 weights are upcast exactly).
    head: as in ``get_model``. 'bn_linear' (and 'linear' on VGG-19) has no torch counterpart and
      is always initialised fresh.
    axis_name: as in ``get_model``.
    rng: key for freshly initialised layers; None uses ``jax.random.key(0)``.
    image_shape: (height, width) of the images the model will run on: a ViT's position
      embedding is made for its patch grid, and a checkpoint's embedding of another grid is
      resampled to it (``weight_maps.resample_position_embedding``).
    return_report: also return the ``LoadReport`` (it is logged at INFO level either way).

  Returns:
    ``(model, variables)``, or ``(model, variables, report)`` when ``return_report``.

  Raises:
    ValueError: an unsupported ``model_name``; a checkpoint of another architecture (naming the
      first missing key, the first unexpected key, and the shape mismatches with the checkpoint's
      and the expected torch shape); a checkpoint without a classifier and ``num_classes`` None.
    ImportError: a torch pickle and no torch installed.
  """
  if model_name not in PRETRAINED_MODEL_NAMES:
    model, variables, report = _load_with_reader(
      model_name,
      path,
      num_classes=num_classes,
      dtype=dtype,
      head=head,
      axis_name=axis_name,
      rng=rng,
      image_shape=image_shape,
    )
    return (model, variables, report) if return_report else (model, variables)
  path = pathlib.Path(path)
  state, final_module, checkpoint_classes, num_classes = _read_checkpoint(
    model_name, path, num_classes
  )
  model = classifier_lib.get_model(
    model_name, num_classes=num_classes, dtype=dtype, head=head, axis_name=axis_name
  )
  # Shapes only: a real random init of the big models is slow to compile and thrown away.
  image_spec = jax.ShapeDtypeStruct((1, *image_shape, 3), jnp.float32)
  abstract = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), image_spec
  )
  layer_leaves, loaded, fresh = _plan_layers(
    model_name,
    model,
    abstract,
    state,
    final_module=final_module,
    checkpoint_classes=checkpoint_classes,
    num_classes=num_classes,
  )
  expected, ignored = _check_against_state(path, model_name, state, layer_leaves, loaded)
  variables = _assemble(model, abstract, image_spec, state, expected, fresh, rng)
  report = _report(path, model_name, num_classes, checkpoint_classes, loaded, fresh, ignored)
  _log.info('load_pretrained: %s', report)
  if return_report:
    return model, variables, report
  return model, variables


def _load_with_reader(
  model_name: str,
  path: str | os.PathLike[str],
  *,
  num_classes: int | None,
  rng,
  image_shape: tuple[int, int],
  **model_kwargs,
) -> tuple[classifier_lib.Classifier, dict[str, Any], LoadReport]:
  """A backbone's own weight reader (``care_jax.models.backbones``) on the initialised model.

  The report lists as loaded the layers whose values the reader changed.
  """
  spec = backbones.resolve(model_name)
  if spec.weight_reader is None:
    raise ValueError(
      f'No pretrained weights mapping for model {model_name!r}: the torchvision/timm weights are '
      f'read for {", ".join(PRETRAINED_MODEL_NAMES)}; a custom backbone needs its own weight '
      'reader (a read_weights(path, variables) static method on its class, or '
      'register_backbone(..., weight_reader=...)).'
    )
  if num_classes is None:
    raise ValueError(f'{model_name!r} has its own weight reader: pass num_classes.')
  model = classifier_lib.get_model(model_name, num_classes=num_classes, **model_kwargs)
  image = jnp.zeros((1, *image_shape, 3), jnp.float32)
  initial = jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(0) if rng is None else rng, image
  )
  variables = backbones.read_weights(spec, path, jax.device_get(initial))
  before = flax.traverse_util.flatten_dict(jax.device_get(initial))
  after = flax.traverse_util.flatten_dict(variables)
  changed = {key[1:-1] for key in before if not np.array_equal(before[key], after.get(key))}
  report = LoadReport(
    path=str(path),
    model_name=model_name,
    num_classes=num_classes,
    checkpoint_num_classes=None,
    loaded={'/'.join(layer): 'read_weights' for layer in sorted(changed)},
    initialised=tuple(
      sorted({'/'.join(key[1:-1]) for key in before} - set(map('/'.join, changed)))
    ),
    ignored=(),
  )
  return model, variables, report


# Our layers, each with its leaves: layer path -> [(collection, leaf name, abstract leaf)].
_LayerLeaves = dict[tuple[str, ...], list[tuple[str, str, jax.ShapeDtypeStruct]]]
# torch key -> (collection, our layer, leaf name, abstract leaf).
_Expected = dict[str, tuple[str, tuple[str, ...], str, jax.ShapeDtypeStruct]]


def _read_checkpoint(
  model_name: str, path: pathlib.Path, num_classes: int | None
) -> tuple[dict[str, np.ndarray], str, int | None, int]:
  """Phase 1, read: ``(state dict, final classifier module, its class count, num_classes)``.

  The class count is None for a checkpoint without a classifier; ``num_classes`` None becomes
  the checkpoint's.
  """
  state = torch_files.load_state_dict(path)
  if _is_densenet(model_name):
    state = _rename_densenet_legacy_keys(state)
  final_module = _classifier_modules(model_name)[-1]
  final_weight = state.get(f'{final_module}.weight')
  has_classifier = final_weight is not None and final_weight.ndim > 0
  checkpoint_classes = int(final_weight.shape[0]) if has_classifier else None
  if num_classes is None:
    if checkpoint_classes is None:
      raise ValueError(
        f'Checkpoint {path} has no classifier ({final_module!r}); pass num_classes to '
        'initialise a fresh head.'
      )
    num_classes = checkpoint_classes
  return state, final_module, checkpoint_classes, num_classes


def _plan_layers(
  model_name: str,
  model: classifier_lib.Classifier,
  abstract: dict[str, Any],
  state: Mapping[str, np.ndarray],
  *,
  final_module: str,
  checkpoint_classes: int | None,
  num_classes: int,
) -> tuple[_LayerLeaves, dict[tuple[str, ...], str], list[tuple[str, ...]]]:
  """Phase 2, plan the layers: ``(layer leaves, loaded: layer -> torch module, fresh layers)``.

  A layer is initialised fresh when it has no torch counterpart, when it is the final
  classifier (``final_module``) and the model has another class count than the checkpoint, or
  when it is a head layer the checkpoint lacks.
  """
  layer_leaves: _LayerLeaves = {}
  for (collection, *names, leaf), value in flax.traverse_util.flatten_dict(abstract).items():
    layer_leaves.setdefault(tuple(names), []).append((collection, leaf, value))

  loaded: dict[tuple[str, ...], str] = {}
  fresh: list[tuple[str, ...]] = []
  for layer, leaves in layer_leaves.items():
    module = _torch_module(model_name, model.head, layer)
    if module is None:
      fresh.append(layer)
      continue
    keys = [f'{module}.{_LEAF_NAMES[collection, leaf]}' for collection, leaf, _ in leaves]
    replaced = module == final_module and checkpoint_classes != num_classes
    absent_from_checkpoint = layer[0] == 'head' and not any(key in state for key in keys)
    if replaced or absent_from_checkpoint:
      fresh.append(layer)
    else:
      loaded[layer] = module
  return layer_leaves, loaded, fresh


def _check_against_state(
  path: pathlib.Path,
  model_name: str,
  state: Mapping[str, np.ndarray],
  layer_leaves: _LayerLeaves,
  loaded: Mapping[tuple[str, ...], str],
) -> tuple[_Expected, list[str]]:
  """Phase 3, check against the state dict: ``(expected torch keys, ignored keys)``.

  Raises the `_mismatch_error` of missing, unexpected or mis-shaped keys.
  """
  expected: _Expected = {}
  for layer, module in loaded.items():
    for collection, leaf, value in layer_leaves[layer]:
      expected[f'{module}.{_LEAF_NAMES[collection, leaf]}'] = (collection, layer, leaf, value)
  # Classifier keys are optional: used when their layer is loaded, otherwise ignored.
  classifier_prefixes = tuple(f'{module}.' for module in _classifier_modules(model_name))
  ignored = sorted(
    (key for key in state if key not in expected and key.startswith(classifier_prefixes)),
    key=_natural_key,
  )
  missing = sorted((key for key in expected if key not in state), key=_natural_key)
  unexpected = sorted(
    (
      key
      for key in state
      if key not in expected and key not in ignored and not key.endswith('.num_batches_tracked')
    ),
    key=_natural_key,
  )
  mismatched = [
    (key, tuple(state[key].shape), _torch_shape(value.shape))
    for key, (_, _, _, value) in sorted(expected.items(), key=lambda item: _natural_key(item[0]))
    if key in state and tuple(state[key].shape) != _torch_shape(value.shape)
  ]
  if missing or unexpected or mismatched:
    raise _mismatch_error(path, model_name, missing, unexpected, mismatched)
  return expected, ignored


def _assemble(
  model: classifier_lib.Classifier,
  abstract: dict[str, Any],
  image_spec: jax.ShapeDtypeStruct,
  state: Mapping[str, np.ndarray],
  expected: _Expected,
  fresh: list[tuple[str, ...]],
  rng: jax.Array | None,
) -> dict[str, Any]:
  """Phase 4, assemble: the variables, the checkpoint's tensors in our layout and fresh layers."""
  flat: dict[tuple[str, ...], Any] = {}
  for key, (collection, layer, leaf, value) in expected.items():
    flat[(collection, *layer, leaf)] = jnp.asarray(_to_flax(state[key], value.dtype))
  if fresh:
    flat.update(_init_fresh(model, abstract, image_spec, fresh, rng))
  return flax.traverse_util.unflatten_dict(flat)


def _report(
  path: pathlib.Path,
  model_name: str,
  num_classes: int,
  checkpoint_classes: int | None,
  loaded: Mapping[tuple[str, ...], str],
  fresh: list[tuple[str, ...]],
  ignored: list[str],
) -> LoadReport:
  """The `LoadReport` of a load: our layer paths joined by '/', ordered by torch module name."""
  return LoadReport(
    path=str(path),
    model_name=model_name,
    num_classes=num_classes,
    checkpoint_num_classes=checkpoint_classes,
    loaded={
      '/'.join(layer): module
      for layer, module in sorted(loaded.items(), key=lambda item: _natural_key(item[1]))
    },
    initialised=tuple('/'.join(layer) for layer in fresh),
    ignored=tuple(ignored),
  )


def _init_fresh(
  model: classifier_lib.Classifier,
  abstract: dict[str, Any],
  image_spec: jax.ShapeDtypeStruct,
  fresh: list[tuple[str, ...]],
  rng: jax.Array | None,
) -> dict[tuple[str, ...], jax.Array]:
  """Initialises the head alone (on a zero feature map) and keeps the ``fresh`` layers' leaves.

  Jitted so that XLA drops the random draws of head layers that the checkpoint fills (VGG's
  100M-parameter fc1); Flax derives each layer's key from its name, so the kept values do not
  depend on what is dropped.
  """
  _, intermediates = jax.eval_shape(
    functools.partial(model.apply, train=False), abstract, image_spec
  )
  zeros = lambda spec: jnp.zeros(spec.shape, spec.dtype)
  features = intermediates['features']
  head_inputs = intermediates.get('head_inputs')
  fresh = set(fresh)

  @jax.jit
  def init(key: jax.Array) -> dict[tuple[str, ...], jax.Array]:
    head_variables = model.init(
      {'params': key},
      zeros(features),
      method=classifier_lib.Classifier.apply_head,
      head_inputs=None if head_inputs is None else jax.tree.map(zeros, head_inputs),
    )
    return {
      path: value
      for path, value in flax.traverse_util.flatten_dict(head_variables).items()
      if tuple(path[1:-1]) in fresh
    }

  return init(jax.random.key(0) if rng is None else rng)


__getattr__ = _deprecated.getattr_of(__name__)
