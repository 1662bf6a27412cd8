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
``module.`` prefix are accepted. Nothing is ever downloaded.
"""

import dataclasses
import functools
import json
import logging
import os
import pathlib
import pickle
import re
import struct
from typing import Any, Mapping

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from care_jax.models import classifier as classifier_lib
from care_jax.models import densenet
from care_jax.models import heads as heads_lib
from care_jax.models import layers
from care_jax.models import vgg

# torchvision's ImageNet preprocessing, applied to RGB images scaled to [0, 1].
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Every architecture with a torchvision counterpart (all but tiny_cnn).
PRETRAINED_MODEL_NAMES: tuple[str, ...] = tuple(
  name for name in classifier_lib.MODEL_NAMES if name != 'tiny_cnn'
)

_TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.tar', '.ckpt')
_SAFETENSORS_DTYPES: dict[str, np.dtype] = {
  'F64': np.dtype('<f8'),
  'F32': np.dtype('<f4'),
  'F16': np.dtype('<f2'),
  'BF16': np.dtype(ml_dtypes.bfloat16),
  'I64': np.dtype('<i8'),
  'I32': np.dtype('<i4'),
  'I16': np.dtype('<i2'),
  'I8': np.dtype('i1'),
  'U8': np.dtype('u1'),
  'BOOL': np.dtype('?'),
}
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


# ---------------------------------------------------------------- reading checkpoints


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into numpy arrays, without torch or the safetensors package.

  Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
  N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}``,
  then the little-endian tensor bytes, offsets relative to the end of the header. F16 stays
  ``float16`` and BF16 becomes ``ml_dtypes.bfloat16``. The arrays are read-only views of the file's
  bytes.

  Example: ``read_safetensors('model.safetensors')['fc.weight'].shape == (1000, 512)``.

  Raises:
    ValueError: a truncated or malformed file, naming the tensor at fault.
  """
  data = pathlib.Path(path).read_bytes()
  if len(data) < 8:
    raise ValueError(f'{path}: not a safetensors file ({len(data)} bytes, no header).')
  (header_size,) = struct.unpack('<Q', data[:8])
  if header_size > len(data) - 8:
    raise ValueError(
      f'{path}: header length {header_size} exceeds the file size {len(data)}; not a '
      'safetensors file, or truncated.'
    )
  try:
    header = json.loads(data[8 : 8 + header_size])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: the safetensors header is not valid JSON ({e}).') from e
  buffer_start = 8 + header_size
  buffer_size = len(data) - buffer_start
  tensors = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    dtype = _SAFETENSORS_DTYPES.get(entry.get('dtype'))
    if dtype is None:
      raise ValueError(
        f'{path}: tensor {name!r} has dtype {entry.get("dtype")!r}; supported: '
        f'{", ".join(_SAFETENSORS_DTYPES)}.'
      )
    shape = tuple(entry['shape'])
    begin, end = entry['data_offsets']
    size = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= buffer_size or end - begin != size * dtype.itemsize:
      raise ValueError(
        f'{path}: tensor {name!r} ({entry["dtype"]} {shape}) has data_offsets [{begin}, {end}], '
        f'which do not fit its {size * dtype.itemsize} bytes in a {buffer_size}-byte buffer.'
      )
    tensors[name] = np.frombuffer(
      data, dtype=dtype, count=size, offset=buffer_start + begin
    ).reshape(shape)
  return tensors


def _read_torch(path: pathlib.Path) -> Any:
  """``torch.load`` restricted to tensors and containers (``weights_only=True``)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  # optional: only for pickled checkpoints
  except ImportError as e:
    raise ImportError(
      f'Reading {path} (a PyTorch pickle) needs torch, which is not installed. Install torch, '
      'or convert the checkpoint once where torch is available: '
      '`from safetensors.torch import save_file; '
      'save_file(torch.load(PATH, map_location="cpu", weights_only=True), "model.safetensors")` '
      'and load the .safetensors file instead.'
    ) from e
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    # torch's message goes on to suggest weights_only=False; keep only what it refused.
    lines = str(e).splitlines() or ['']
    reason = next((line for line in lines if 'Unsupported global' in line), lines[0]).strip()
    raise ValueError(
      f'{path} holds objects other than tensors, which are never unpickled here '
      f'(torch.load(..., weights_only=True): {reason}). Re-save just the state dict.'
    ) from e

  def to_numpy(key: str, value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
      raise ValueError(
        f'{path}: state dict entry {key!r} is a {type(value).__name__}, not a tensor.'
      )
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
      value = value.float()  # numpy has no bfloat16; the upcast is exact
    return value.numpy()

  return {key: to_numpy(key, value) for key, value in _unwrap(checkpoint, path).items()}


def _unwrap(checkpoint: Any, path: pathlib.Path) -> Mapping[str, Any]:
  """The state dict inside a training checkpoint ``{'state_dict': ...}`` or ``{'model': ...}``."""
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f'{path}: expected a state dict (a mapping), got {type(checkpoint).__name__}.')
  for wrapper in ('state_dict', 'model'):
    if isinstance(checkpoint.get(wrapper), Mapping):
      return checkpoint[wrapper]
  return checkpoint


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """A PyTorch state dict as numpy arrays: ``.safetensors`` without torch, pickles with torch.

  Unwraps ``{'state_dict': ...}``/``{'model': ...}`` and strips the ``module.`` prefix that
  ``torch.nn.DataParallel`` puts on every key.

  Example: ``load_state_dict('resnet18.pth')['conv1.weight'].shape == (64, 3, 7, 7)``.

  Raises:
    FileNotFoundError: no such file.
    ImportError: a pickled checkpoint and no torch (the message explains the conversion).
    ValueError: an unknown suffix, a malformed file, or non-tensor entries.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'No checkpoint file at {path}.')
  if path.suffix == '.safetensors':
    state = read_safetensors(path)
  elif path.suffix in _TORCH_SUFFIXES:
    state = _read_torch(path)
  else:
    raise ValueError(
      f'{path}: unknown checkpoint suffix {path.suffix!r}; expected .safetensors or one of '
      f'{", ".join(_TORCH_SUFFIXES)} (PyTorch).'
    )
  prefix = 'module.'
  if state and all(key.startswith(prefix) for key in state):
    state = {key[len(prefix) :]: value for key, value in state.items()}
  return state


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
    model_name: one of ``PRETRAINED_MODEL_NAMES``.
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
    raise ValueError(
      f'No pretrained weights mapping for model {model_name!r}; supported: '
      f'{", ".join(PRETRAINED_MODEL_NAMES)}.'
    )
  path = pathlib.Path(path)
  state = load_state_dict(path)
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
  model = classifier_lib.get_model(
    model_name, num_classes=num_classes, dtype=dtype, head=head, axis_name=axis_name
  )
  # Shapes only: a real random init of the big models is slow to compile and thrown away.
  image_spec = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  abstract = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), image_spec
  )

  # Our layers, each with its leaves: layer path -> [(collection, leaf name, abstract leaf)].
  layer_leaves: dict[tuple[str, ...], list[tuple[str, str, jax.ShapeDtypeStruct]]] = {}
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

  # torch key -> (collection, our layer, leaf name, abstract leaf).
  expected: dict[str, tuple[str, tuple[str, ...], str, jax.ShapeDtypeStruct]] = {}
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

  flat: dict[tuple[str, ...], Any] = {}
  for key, (collection, layer, leaf, value) in expected.items():
    flat[(collection, *layer, leaf)] = jnp.asarray(_to_flax(state[key], value.dtype))
  if fresh:
    flat.update(_init_fresh(model, abstract, image_spec, fresh, rng))
  variables = flax.traverse_util.unflatten_dict(flat)

  report = LoadReport(
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
  _log.info('load_pretrained: %s', report)
  if return_report:
    return model, variables, report
  return model, variables


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
  features = intermediates['features']
  fresh = set(fresh)

  @jax.jit
  def init(key: jax.Array) -> dict[tuple[str, ...], jax.Array]:
    head_variables = model.init(
      {'params': key},
      jnp.zeros(features.shape, features.dtype),
      method=classifier_lib.Classifier.apply_head,
    )
    return {
      path: value
      for path, value in flax.traverse_util.flatten_dict(head_variables).items()
      if tuple(path[1:-1]) in fresh
    }

  return init(jax.random.key(0) if rng is None else rng)
