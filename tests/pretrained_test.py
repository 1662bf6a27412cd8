"""Tests for care_jax.models.pretrained (and its readers, care_jax.models.torch_files): PyTorch
checkpoints -> Flax variables.

Fast tests build torchvision-layout state dicts in numpy (written here from torchvision's naming,
independently of the loader's mapping) and check every variable, the head handling, the readers
and the errors. The slow tests compare eval-mode logits and features with PyTorch itself: a
session fixture makes (once, cached in .torch-venv/) a Python 3.11 venv with torch 2.13.0 and runs
``tests/torch_reference.py`` there; the comparison runs here, without torch.
"""

import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import types

import jax
import ml_dtypes
import numpy as np
import pytest

from care_jax.models import IMAGENET_MEAN
from care_jax.models import IMAGENET_STD
from care_jax.models import PRETRAINED_MODEL_NAMES
from care_jax.models import load_pretrained
from care_jax.models.torch_files import read_safetensors

REPO = pathlib.Path(__file__).resolve().parents[1]
TORCH_VENV = REPO / '.torch-venv'
TORCH_REQUIREMENTS = ('torch==2.13.0', 'safetensors', 'numpy')
REFERENCE_SCRIPT = pathlib.Path(__file__).with_name('torch_reference.py')
ARCHITECTURES = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'vgg19')
# Tested in densenet_test.py (its own torch reference export).
DENSENETS = ('densenet121', 'densenet161', 'densenet169', 'densenet201')
RESNET18 = (2, 2, 2, 2)
RESNET34 = (3, 4, 6, 3)


# ---------------------------------------------------------------- independent helpers


def _resnet_state_dict(
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


_SAFETENSORS_DTYPE_NAMES = {
  np.dtype(np.float64): 'F64',
  np.dtype(np.float32): 'F32',
  np.dtype(np.float16): 'F16',
  np.dtype(ml_dtypes.bfloat16): 'BF16',
  np.dtype(np.int64): 'I64',
}


def _write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray], metadata=None) -> None:
  """The safetensors format from its spec: u64 LE header size, JSON header (space-padded), data."""
  header = {'__metadata__': metadata} if metadata else {}
  chunks, offset = [], 0
  for name, array in tensors.items():
    raw = np.ascontiguousarray(array).tobytes()  # this machine is little-endian, as the format
    header[name] = {
      'dtype': _SAFETENSORS_DTYPE_NAMES[array.dtype],
      'shape': list(array.shape),
      'data_offsets': [offset, offset + len(raw)],
    }
    chunks.append(raw)
    offset += len(raw)
  header_bytes = json.dumps(header).encode()
  header_bytes += b' ' * (-len(header_bytes) % 8)
  path.write_bytes(struct.pack('<Q', len(header_bytes)) + header_bytes + b''.join(chunks))


def _flax_leaf(key: str, array: np.ndarray) -> tuple[str, ...]:
  """Where a torchvision ResNet key lives in our variables (the documented naming)."""
  module, name = key.rsplit('.', 1)
  module = re.sub(r'^(layer\d+)\.(\d+)', r'\1_\2', module)
  module = module.replace('downsample.0', 'downsample_conv')
  module = module.replace('downsample.1', 'downsample_bn')
  part = 'head' if module == 'fc' else 'backbone'
  if name in ('running_mean', 'running_var'):
    return ('batch_stats', part, *module.split('.'), name.removeprefix('running_'))
  if name == 'weight':
    name = 'scale' if array.ndim == 1 else 'kernel'
  return ('params', part, *module.split('.'), name)


def _torch_to_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # [out, in, kh, kw] -> [kh, kw, in, out]
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:  # [out, in] -> [in, out]
    return array.T
  return array


def _get(variables: dict, path: tuple[str, ...]) -> np.ndarray:
  for name in path:
    variables = variables[name]
  return np.asarray(variables)


def _flat_paths(variables: dict, prefix=()) -> set[tuple[str, ...]]:
  paths = set()
  for name, value in variables.items():
    if isinstance(value, dict):
      paths |= _flat_paths(value, prefix + (name,))
    else:
      paths.add(prefix + (name,))
  return paths


def _assert_close_to_torch(ours, reference: np.ndarray) -> None:
  """1e-4 relative error, measured against the reference's largest magnitude."""
  np.testing.assert_allclose(
    np.asarray(ours), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max()
  )


def _save(tmp_path: pathlib.Path, state: dict[str, np.ndarray], name='model') -> pathlib.Path:
  path = tmp_path / f'{name}.safetensors'
  _write_safetensors(path, state)
  return path


# ---------------------------------------------------------------- mapping (fast, numpy references)


def test_resnet18_checkpoint_fills_every_variable_with_the_transposed_tensor(tmp_path):
  state = _resnet_state_dict(RESNET18)
  model, variables, report = load_pretrained('resnet18', _save(tmp_path, state), return_report=True)

  weights = {key: value for key, value in state.items() if not key.endswith('num_batches_tracked')}
  expected_paths = {_flax_leaf(key, value): key for key, value in weights.items()}
  assert _flat_paths(variables) == set(expected_paths)  # nothing left over, nothing missing
  for path, key in expected_paths.items():
    leaf = _get(variables, path)
    assert leaf.dtype == np.float32, path
    np.testing.assert_array_equal(leaf, _torch_to_flax(state[key]), err_msg=key)

  assert model.head.num_classes == 1000
  assert report.checkpoint_num_classes == 1000 and report.num_classes == 1000
  assert report.loaded['backbone/layer2_0/downsample_conv'] == 'layer2.0.downsample.0'
  assert report.loaded['head/fc'] == 'fc'
  assert len(report.loaded) == 41  # stem 2 + 8 blocks x 4 + 3 projections x 2 + fc
  assert report.initialised == () and report.ignored == ()


@pytest.mark.parametrize('dtype', [np.float16, ml_dtypes.bfloat16], ids=['F16', 'BF16'])
def test_half_precision_checkpoint_loads_as_exact_float32(tmp_path, dtype):
  state = {
    key: value.astype(dtype) if value.dtype == np.float32 else value
    for key, value in _resnet_state_dict(RESNET18, seed=1).items()
  }
  _, variables = load_pretrained('resnet18', _save(tmp_path, state))

  for key in ('conv1.weight', 'layer3.0.downsample.1.running_var', 'fc.weight'):
    leaf = _get(variables, _flax_leaf(key, state[key]))
    assert leaf.dtype == np.float32
    np.testing.assert_array_equal(leaf, _torch_to_flax(state[key].astype(np.float32)))


def test_new_class_count_initialises_only_the_final_layer(tmp_path):
  state = _resnet_state_dict(RESNET18)
  path = _save(tmp_path, state)
  _, loaded = load_pretrained('resnet18', path)
  model, variables, report = load_pretrained(
    'resnet18', path, num_classes=3, rng=jax.random.key(1), return_report=True
  )
  _, again = load_pretrained('resnet18', path, num_classes=3, rng=jax.random.key(1))
  _, other = load_pretrained('resnet18', path, num_classes=3, rng=jax.random.key(2))

  jax.tree.map(
    np.testing.assert_array_equal, variables['params']['backbone'], loaded['params']['backbone']
  )
  jax.tree.map(np.testing.assert_array_equal, variables['batch_stats'], loaded['batch_stats'])
  kernel = np.asarray(variables['params']['head']['fc']['kernel'])
  assert model.head.num_classes == 3 and kernel.shape == (512, 3)
  # torch.nn.Linear's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias 0.
  assert np.abs(kernel).max() <= 1 / np.sqrt(512) and kernel.std() > 0.1 / np.sqrt(512)
  np.testing.assert_array_equal(variables['params']['head']['fc']['bias'], np.zeros(3))
  np.testing.assert_array_equal(kernel, again['params']['head']['fc']['kernel'])
  assert not np.array_equal(kernel, other['params']['head']['fc']['kernel'])
  assert report.initialised == ('head/fc',)
  assert report.ignored == ('fc.bias', 'fc.weight')
  assert report.checkpoint_num_classes == 1000 and report.num_classes == 3
  assert 'head/fc' not in report.loaded and len(report.loaded) == 40
  assert 'initialised: head/fc' in str(report)


def test_checkpoint_without_classifier_needs_num_classes(tmp_path):
  state = _resnet_state_dict(RESNET18)
  del state['fc.weight'], state['fc.bias']
  path = _save(tmp_path, state)

  with pytest.raises(ValueError, match="no classifier \\('fc'\\); pass num_classes"):
    load_pretrained('resnet18', path)
  model, variables, report = load_pretrained('resnet18', path, num_classes=4, return_report=True)
  assert variables['params']['head']['fc']['kernel'].shape == (512, 4)
  assert report.checkpoint_num_classes is None and report.initialised == ('head/fc',)
  assert report.ignored == ()


def test_bn_linear_head_has_no_torch_counterpart_and_is_initialised(tmp_path):
  state = _resnet_state_dict(RESNET18)
  model, variables, report = load_pretrained(
    'resnet18', _save(tmp_path, state), head='bn_linear', return_report=True
  )
  assert model.head.num_classes == 1000
  assert report.initialised == ('head/bn', 'head/fc') and report.ignored == ('fc.bias', 'fc.weight')
  np.testing.assert_array_equal(variables['batch_stats']['head']['bn']['mean'], np.zeros(512))
  np.testing.assert_array_equal(variables['batch_stats']['head']['bn']['var'], np.ones(512))
  np.testing.assert_array_equal(
    variables['params']['backbone']['conv1']['kernel'], _torch_to_flax(state['conv1.weight'])
  )


def test_normed_linear_head_has_no_torch_counterpart_and_is_initialised(tmp_path):
  """The cosine head of loss.name='ldam_drw': a fresh head on the pretrained backbone."""
  state = _resnet_state_dict(RESNET18)
  model, variables, report = load_pretrained(
    'resnet18', _save(tmp_path, state), num_classes=3, head='normed_linear', return_report=True
  )
  assert report.initialised == ('head',) and report.ignored == ('fc.bias', 'fc.weight')
  kernel = variables['params']['head']['kernel']
  assert kernel.shape == (512, 3)
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(
    variables['params']['backbone']['conv1']['kernel'], _torch_to_flax(state['conv1.weight'])
  )


# ---------------------------------------------------------------- wrappers, prefixes, readers


def test_dataparallel_module_prefix_is_stripped(tmp_path):
  state = _resnet_state_dict(RESNET18)
  prefixed = {f'module.{key}': value for key, value in state.items()}
  _, variables = load_pretrained('resnet18', _save(tmp_path, prefixed))
  np.testing.assert_array_equal(
    variables['params']['backbone']['layer4_1']['conv2']['kernel'],
    _torch_to_flax(state['layer4.1.conv2.weight']),
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
  state = _resnet_state_dict(RESNET18)
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
  _write_safetensors(path, tensors, metadata={'format': 'pt'})

  read = read_safetensors(path)
  assert set(read) == set(tensors)
  for name, expected in tensors.items():
    assert read[name].dtype == expected.dtype and read[name].shape == expected.shape, name
    np.testing.assert_array_equal(read[name], expected)


def test_safetensors_reader_names_the_tensor_of_a_truncated_file(tmp_path):
  path = tmp_path / 'cut.safetensors'
  _write_safetensors(path, {'a': np.ones(4, np.float32), 'b': np.ones(4, np.float32)})
  path.write_bytes(path.read_bytes()[:-4])
  with pytest.raises(ValueError, match="tensor 'b'"):
    read_safetensors(path)


def test_unknown_checkpoint_suffix_is_rejected(tmp_path):
  path = tmp_path / 'weights.npz'
  path.write_bytes(b'')
  with pytest.raises(ValueError, match=r"unknown checkpoint suffix '\.npz'"):
    load_pretrained('resnet18', path)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize('name', ['tiny_cnn', 'resnet26', 'vgg16'])
def test_unsupported_model_name_lists_the_supported_ones(tmp_path, name):
  with pytest.raises(ValueError) as error:
    load_pretrained(name, tmp_path / 'never_read.safetensors')
  assert repr(name) in str(error.value)
  for supported in ARCHITECTURES:
    assert supported in str(error.value)
  assert PRETRAINED_MODEL_NAMES == (*ARCHITECTURES, *DENSENETS)


def test_resnet18_weights_into_resnet34_name_the_first_missing_key(tmp_path):
  path = _save(tmp_path, _resnet_state_dict(RESNET18))
  resnet34_keys = set(_resnet_state_dict(RESNET34))
  resnet18_keys = set(_resnet_state_dict(RESNET18))

  with pytest.raises(ValueError, match='does not fit resnet34') as error:
    load_pretrained('resnet34', path)
  missing = re.search(r"missing keys, the first: '([^']+)'", str(error.value)).group(1)
  assert missing in resnet34_keys - resnet18_keys and missing.startswith('layer1.2.')
  assert 'unexpected' not in str(error.value)


def test_resnet34_weights_into_resnet18_name_the_first_unexpected_key(tmp_path):
  path = _save(tmp_path, _resnet_state_dict(RESNET34))
  with pytest.raises(ValueError, match="unexpected keys, the first: 'layer1.2.") as error:
    load_pretrained('resnet18', path)
  assert 'missing' not in str(error.value)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
  state = _resnet_state_dict(RESNET18)
  state['layer2.0.conv1.weight'] = np.zeros((128, 64, 5, 5), np.float32)
  with pytest.raises(
    ValueError,
    match=re.escape(
      "shape mismatch for 'layer2.0.conv1.weight': checkpoint (128, 64, 5, 5), "
      'expected (128, 64, 3, 3)'
    ),
  ):
    load_pretrained('resnet18', _save(tmp_path, state))


def test_timm_deep_stem_checkpoint_is_explained(tmp_path):
  state = _resnet_state_dict(RESNET18)
  del state['conv1.weight']
  state['conv1.0.weight'] = np.zeros((32, 3, 3, 3), np.float32)
  state['conv1.3.weight'] = np.zeros((32, 32, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"(?s)the first: 'conv1.weight'.*deep 3x3 stem"):
    load_pretrained('resnet18', _save(tmp_path, state))


def test_imagenet_normalisation_constants_are_torchvisions():
  assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
  assert IMAGENET_STD == (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- parity with PyTorch (slow)


def _ci() -> bool:
  return os.environ.get('CI', '').lower() not in ('', '0', 'false')


def _run(command: list, **kwargs) -> None:
  result = subprocess.run(
    [str(part) for part in command], capture_output=True, text=True, check=False, **kwargs
  )
  if result.returncode:
    pytest.fail(
      f'{" ".join(map(str, command))} exited {result.returncode}:\n'
      f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    )


def _find_python311() -> tuple[str, dict[str, str]] | None:
  """pyenv's first 3.11 (PYENV_VERSION=... python3.11), else a python3.11 on PATH."""
  environments = []
  if shutil.which('pyenv'):
    versions = subprocess.run(
      ['pyenv', 'versions', '--bare'], capture_output=True, text=True, check=False
    ).stdout.split()
    version = next((v for v in versions if v.startswith('3.11')), None)
    if version:
      environments.append({**os.environ, 'PYENV_VERSION': version})
  environments.append(dict(os.environ))
  for env in environments:
    python = shutil.which('python3.11', path=env.get('PATH'))
    check = [python, '-c', 'import sys; assert sys.version_info[:2] == (3, 11)'] if python else None
    if check and subprocess.run(check, env=env, capture_output=True, check=False).returncode == 0:
      return python, env
  return None


def _torch_venv_python() -> pathlib.Path:
  """.torch-venv/bin/python with torch 2.13.0 (pip takes this machine's local CPU wheel)."""
  python = TORCH_VENV / 'bin' / 'python'
  marker = TORCH_VENV / '.installed'
  if python.exists() and marker.is_file() and marker.read_text() == ' '.join(TORCH_REQUIREMENTS):
    return python
  found = _find_python311()
  if found is None:
    message = 'No Python 3.11 (pyenv or python3.11 on PATH) for the torch 2.13.0 reference venv.'
    if _ci():
      pytest.fail(message)
    pytest.skip(message)
  python311, env = found
  _run([python311, '-m', 'venv', TORCH_VENV], env=env)
  _run([python, '-m', 'pip', 'install', '--quiet', *TORCH_REQUIREMENTS])
  marker.write_text(' '.join(TORCH_REQUIREMENTS))
  return python


@pytest.fixture(scope='session')
def torch_exports(torch_python) -> pathlib.Path:
  """torch_reference.py's outputs, cached under .torch-venv/exports/<hash of the script>/."""
  digest = hashlib.sha256(REFERENCE_SCRIPT.read_bytes()).hexdigest()[:16]
  exports = TORCH_VENV / 'exports' / digest
  TORCH_VENV.mkdir(exist_ok=True)
  with open(TORCH_VENV / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers share the venv and the exports
    if not (exports / 'manifest.json').is_file():
      partial = exports.with_name(f'{digest}.partial')
      shutil.rmtree(partial, ignore_errors=True)
      _run([torch_python, REFERENCE_SCRIPT, partial])
      for stale in exports.parent.iterdir():  # exports of older scripts: ~1.3 GB each
        if stale != partial:
          shutil.rmtree(stale)
      partial.rename(exports)
  return exports


@pytest.mark.slow
@pytest.mark.parametrize('name', ARCHITECTURES)
def test_eval_logits_and_features_match_pytorch(torch_exports, name):
  model, variables = load_pretrained(name, torch_exports / f'{name}.safetensors')
  logits, intermediates = model.apply(variables, np.load(torch_exports / 'inputs.npy'), train=False)
  _assert_close_to_torch(logits, np.load(torch_exports / f'{name}_logits.npy'))
  _assert_close_to_torch(intermediates['features'], np.load(torch_exports / f'{name}_features.npy'))


@pytest.mark.slow
@pytest.mark.parametrize(
  'name, final, hidden', [('resnet50', 'fc', ()), ('vgg19', 'fc3', ('fc1', 'fc2'))]
)
def test_fresh_head_keeps_pytorch_features(torch_exports, name, final, hidden):
  path = torch_exports / f'{name}.safetensors'
  model, variables, report = load_pretrained(name, path, num_classes=5, return_report=True)
  logits, intermediates = model.apply(variables, np.load(torch_exports / 'inputs.npy'), train=False)

  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
  _assert_close_to_torch(intermediates['features'], np.load(torch_exports / f'{name}_features.npy'))
  assert report.initialised == (f'head/{final}',)
  assert variables['params']['head'][final]['kernel'].shape[-1] == 5
  state = read_safetensors(path)
  for layer, index in zip(hidden, (0, 3)):  # VGG's hidden layers stay pretrained
    np.testing.assert_array_equal(
      variables['params']['head'][layer]['kernel'], state[f'classifier.{index}.weight'].T
    )


@pytest.mark.slow
def test_training_checkpoint_pth_matches_pytorch(torch_exports):
  pytest.importorskip('torch', reason='reading a .pth needs torch in this environment')
  model, variables = load_pretrained('resnet18', torch_exports / 'resnet18.pth')
  logits, _ = model.apply(variables, np.load(torch_exports / 'inputs.npy'), train=False)
  _assert_close_to_torch(logits, np.load(torch_exports / 'resnet18_logits.npy'))


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


@pytest.mark.slow
def test_fine_tuning_from_a_checkpoint_on_synthetic_lesions_lowers_the_loss(
  torch_exports, tmp_path
):
  from care_jax import config as config_lib
  from care_jax import training

  config = config_lib.apply_overrides(
    config_lib.default_config(),
    [
      'model.name=resnet18',
      f'model.pretrained={torch_exports / "resnet18.safetensors"}',
      f'data.mean={IMAGENET_MEAN}',
      f'data.std={IMAGENET_STD}',
      f'data.dir={tmp_path / "tfds"}',
      'data.image_size=32',
      'data.synthetic.image_size=32',
      'data.synthetic.train_counts=(24, 24, 8, 24, 8)',
      'data.synthetic.validation_counts=(0, 0, 0, 0, 0)',
      'data.synthetic.test_counts=(4, 4, 4, 4, 4)',
      'train.batch_size=16',
      'train.eval_batch_size=16',
      'train.num_steps=24',
      'train.log_every_steps=4',
      'train.progress=False',
    ],
  )
  # The train state starts from the checkpoint, with a fresh 5-class head.
  model = training.create_model(config, 5)
  state = training.create_train_state(config, model, (32, 32, 3), 24, jax.random.key(0))
  checkpoint = read_safetensors(torch_exports / 'resnet18.safetensors')
  np.testing.assert_array_equal(
    state.params['backbone']['conv1']['kernel'], checkpoint['conv1.weight'].transpose(2, 3, 1, 0)
  )
  assert state.params['head']['fc']['kernel'].shape == (512, 5)

  result = training.train_and_evaluate(config, str(tmp_path / 'run'))
  log = [json.loads(line) for line in open(tmp_path / 'run' / 'train_log.jsonl')]
  assert result['step'] == 24 and 'validation' not in result
  first, last = np.mean([r['ce'] for r in log[:2]]), np.mean([r['ce'] for r in log[-2:]])
  assert last < first, [r['ce'] for r in log]
