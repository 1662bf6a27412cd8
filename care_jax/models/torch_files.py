"""PyTorch state dicts read as numpy arrays: ``.safetensors`` without torch, pickles with torch.

``.safetensors`` is read without torch (nor the safetensors package); ``.pth``/``.pt``/``.bin``/
``.tar``/``.ckpt`` need torch and are read with ``torch.load(..., weights_only=True)`` (no
arbitrary unpickling). State dicts wrapped as ``{'state_dict': ...}`` or ``{'model': ...}`` and a
DataParallel ``module.`` prefix are accepted. Nothing is ever downloaded. ``load_pretrained``
(`care_jax.models.pretrained`) fills a model from what these readers return.
"""

from collections.abc import Mapping
import json
import os
import pathlib
import pickle
import struct
from typing import Any

import ml_dtypes
import numpy as np

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
