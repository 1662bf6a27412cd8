"""torchvision-layout state dicts written in numpy, independently of the loader's mapping.

The keys, shapes and buffers of torchvision's ResNets and DenseNets (written here from
torchvision's naming) with random values, for the tests of care_jax.models.pretrained and its
readers (care_jax.models.torch_files).
"""

import pathlib

import numpy as np

from tests.helpers import torch_venv

RESNET18 = (2, 2, 2, 2)
RESNET34 = (3, 4, 6, 3)


def resnet_state_dict(
  stage_sizes: tuple[int, ...], *, bottleneck: bool = False, num_classes: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
  """torchvision's ResNet ``state_dict()`` (keys, shapes, buffers) with random float32 values."""
  rng = np.random.default_rng(seed)
  state = {}

  def conv(name, out_channels, in_channels, size):
    state[f'{name}.weight'] = rng.standard_normal(
      (out_channels, in_channels, size, size), np.float32
    )

  def bn(name, channels):
    state[f'{name}.weight'] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    state[f'{name}.bias'] = rng.standard_normal(channels, np.float32)
    state[f'{name}.running_mean'] = rng.standard_normal(channels, np.float32)
    state[f'{name}.running_var'] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    state[f'{name}.num_batches_tracked'] = np.array(7, np.int64)

  conv('conv1', 64, 3, 7)
  bn('bn1', 64)
  expansion = 4 if bottleneck else 1
  in_channels = 64
  for stage, (num_blocks, planes) in enumerate(zip(stage_sizes, (64, 128, 256, 512))):
    for index in range(num_blocks):
      block = f'layer{stage + 1}.{index}'
      if bottleneck:
        conv(f'{block}.conv1', planes, in_channels, 1)
        bn(f'{block}.bn1', planes)
        conv(f'{block}.conv2', planes, planes, 3)
        bn(f'{block}.bn2', planes)
        conv(f'{block}.conv3', planes * 4, planes, 1)
        bn(f'{block}.bn3', planes * 4)
      else:
        conv(f'{block}.conv1', planes, in_channels, 3)
        bn(f'{block}.bn1', planes)
        conv(f'{block}.conv2', planes, planes, 3)
        bn(f'{block}.bn2', planes)
      stride = 2 if stage > 0 and index == 0 else 1
      if stride != 1 or in_channels != planes * expansion:
        conv(f'{block}.downsample.0', planes * expansion, in_channels, 1)
        bn(f'{block}.downsample.1', planes * expansion)
      in_channels = planes * expansion
  state['fc.weight'] = rng.standard_normal((num_classes, in_channels), np.float32)
  state['fc.bias'] = rng.standard_normal(num_classes, np.float32)
  return state


DENSENETS = {
  # name: (block sizes, growth rate, stem channels)
  'densenet121': ((6, 12, 24, 16), 32, 64),
  'densenet161': ((6, 12, 36, 24), 48, 96),
  'densenet169': ((6, 12, 32, 32), 32, 64),
  'densenet201': ((6, 12, 48, 32), 32, 64),
}


def densenet_state_dict(
  name: str, *, num_classes: int | None = 1000, legacy: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
  """torchvision's DenseNet ``state_dict()`` (keys, shapes, buffers) with random float32 values.

  ``legacy``: the names of torchvision's downloadable files (``denselayer1.norm.1.weight``).
  """
  blocks, growth, channels = DENSENETS[name]
  rng = np.random.default_rng(seed)
  state = {}

  def conv(module, out_channels, in_channels, size):
    state[f'{module}.weight'] = rng.standard_normal(
      (out_channels, in_channels, size, size), np.float32
    )

  def bn(module, width):
    state[f'{module}.weight'] = rng.uniform(0.5, 1.5, width).astype(np.float32)
    state[f'{module}.bias'] = rng.standard_normal(width, np.float32)
    state[f'{module}.running_mean'] = rng.standard_normal(width, np.float32)
    state[f'{module}.running_var'] = rng.uniform(0.5, 2.0, width).astype(np.float32)
    state[f'{module}.num_batches_tracked'] = np.array(3, np.int64)

  sep = '.' if legacy else ''
  conv('features.conv0', channels, 3, 7)
  bn('features.norm0', channels)
  for block, num_layers in enumerate(blocks):
    for index in range(num_layers):
      layer = f'features.denseblock{block + 1}.denselayer{index + 1}'
      bn(f'{layer}.norm{sep}1', channels + index * growth)
      conv(f'{layer}.conv{sep}1', 4 * growth, channels + index * growth, 1)
      bn(f'{layer}.norm{sep}2', 4 * growth)
      conv(f'{layer}.conv{sep}2', growth, 4 * growth, 3)
    channels += num_layers * growth
    if block < len(blocks) - 1:
      bn(f'features.transition{block + 1}.norm', channels)
      conv(f'features.transition{block + 1}.conv', channels // 2, channels, 1)
      channels //= 2
  bn('features.norm5', channels)
  if num_classes is not None:
    state['classifier.weight'] = rng.standard_normal((num_classes, channels), np.float32)
    state['classifier.bias'] = rng.standard_normal(num_classes, np.float32)
  return state


def torch_to_flax(array: np.ndarray) -> np.ndarray:
  """A torch weight in our layout (conv kernels HWIO, linear kernels [in, out])."""
  if array.ndim == 4:  # [out, in, kh, kw] -> [kh, kw, in, out]
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:  # [out, in] -> [in, out]
    return array.T
  return array


def get(variables: dict, path: tuple[str, ...]) -> np.ndarray:
  """The leaf of `variables` at `path`, as numpy."""
  for name in path:
    variables = variables[name]
  return np.asarray(variables)


def flat_paths(variables: dict, prefix=()) -> set[tuple[str, ...]]:
  """The path of every leaf of `variables`."""
  paths = set()
  for name, value in variables.items():
    if isinstance(value, dict):
      paths |= flat_paths(value, prefix + (name,))
    else:
      paths.add(prefix + (name,))
  return paths


def save(tmp_path: pathlib.Path, state: dict[str, np.ndarray], name='model') -> pathlib.Path:
  """`state` written as tmp_path/<name>.safetensors."""
  path = tmp_path / f'{name}.safetensors'
  torch_venv.write_safetensors(path, state)
  return path
