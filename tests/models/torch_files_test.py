"""Reading PyTorch checkpoints without torch (safetensors, decoded here) and with it (pickles,
weights only): every dtype exactly, wrappers and the DataParallel prefix, the errors."""

import sys
import types

import ml_dtypes
import numpy as np
import pytest

from care_jax.models import load_pretrained
from care_jax.models.torch_files import read_safetensors
from tests.helpers import torch_layout as tl
from tests.helpers import torch_venv


def test_dataparallel_module_prefix_is_stripped(tmp_path):
  state = tl.resnet_state_dict(tl.RESNET18)
  prefixed = {f'module.{key}': value for key, value in state.items()}
  _, variables = load_pretrained('resnet18', tl.save(tmp_path, prefixed))
  np.testing.assert_array_equal(
    variables['params']['backbone']['layer4_1']['conv2']['kernel'],
    tl.torch_to_flax(state['layer4.1.conv2.weight']),
  )


class _FakeTensor:
  """The few torch.Tensor methods the reader uses, over a numpy array."""

  def __init__(self, array: np.ndarray):
    self.array = array
    self.dtype = array.dtype

  def detach(self):
    return self

  def cpu(self):
    return self

  def numpy(self):
    return self.array


@pytest.mark.parametrize('wrapper', ['state_dict', 'model', None])
def test_torch_pickle_is_loaded_weights_only_and_unwrapped(tmp_path, monkeypatch, wrapper):
  state = tl.resnet_state_dict(tl.RESNET18)
  tensors = {f'module.{key}': _FakeTensor(value) for key, value in state.items()}
  checkpoint = {wrapper: tensors, 'epoch': 3} if wrapper else tensors
  calls = []

  def load(path, **kwargs):
    calls.append((path, kwargs))
    return checkpoint

  fake_torch = types.SimpleNamespace(Tensor=_FakeTensor, bfloat16='bfloat16', load=load)
  monkeypatch.setitem(sys.modules, 'torch', fake_torch)
  path = tmp_path / 'model.pth'
  path.write_bytes(b'stand-in: the fake torch.load does not read it')

  _, variables = load_pretrained('resnet18', path)

  assert calls == [(path, {'map_location': 'cpu', 'weights_only': True})]
  np.testing.assert_array_equal(variables['params']['head']['fc']['kernel'], state['fc.weight'].T)


def test_torch_pickle_without_torch_explains_how_to_convert(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` raise ImportError
  path = tmp_path / 'resnet18.pth'
  path.write_bytes(b'PK')
  with pytest.raises(ImportError, match=r'needs torch, which is not installed.*safetensors'):
    load_pretrained('resnet18', path)


def test_safetensors_reader_decodes_every_dtype_exactly(tmp_path):
  values = np.linspace(-3.0, 3.0, 24).reshape(2, 3, 4)
  tensors = {
    'f64': values,
    'f32': values.astype(np.float32),
    'f16': values.astype(np.float16),
    'bf16': values.astype(ml_dtypes.bfloat16),
    'i64': np.arange(-5, 7, dtype=np.int64).reshape(3, 4),
    'scalar': np.array(1.5, np.float32),
    'empty': np.zeros((0, 3), np.float32),
  }
  path = tmp_path / 'dtypes.safetensors'
  torch_venv.write_safetensors(path, tensors, metadata={'format': 'pt'})

  read = read_safetensors(path)
  assert set(read) == set(tensors)
  for name, expected in tensors.items():
    assert read[name].dtype == expected.dtype and read[name].shape == expected.shape, name
    np.testing.assert_array_equal(read[name], expected)


def test_safetensors_reader_names_the_tensor_of_a_truncated_file(tmp_path):
  path = tmp_path / 'cut.safetensors'
  torch_venv.write_safetensors(path, {'a': np.ones(4, np.float32), 'b': np.ones(4, np.float32)})
  path.write_bytes(path.read_bytes()[:-4])
  with pytest.raises(ValueError, match="tensor 'b'"):
    read_safetensors(path)


def test_unknown_checkpoint_suffix_is_rejected(tmp_path):
  path = tmp_path / 'weights.npz'
  path.write_bytes(b'')
  with pytest.raises(ValueError, match=r"unknown checkpoint suffix '\.npz'"):
    load_pretrained('resnet18', path)


@pytest.mark.slow
def test_reader_decodes_files_of_the_safetensors_package(torch_exports):
  read = read_safetensors(torch_exports / 'dtypes.safetensors')
  expected = np.load(torch_exports / 'dtypes.npz')
  dtypes = {
    'f64': np.float64,
    'f32': np.float32,
    'f16': np.float16,
    'bf16': ml_dtypes.bfloat16,
    'i64': np.int64,
    'scalar_f32': np.float32,
  }
  assert set(read) == set(dtypes)
  for name, dtype in dtypes.items():
    assert read[name].dtype == dtype, name
    np.testing.assert_array_equal(read[name].astype(expected[name].dtype), expected[name])
