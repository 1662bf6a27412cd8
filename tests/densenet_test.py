"""care_jax.models.densenet and its torchvision/timm weights: layout, numerics, loading, CAM.

Fast tests trace the full-size models (``jax.eval_shape``), run a narrow DenseNet against a numpy
forward pass written here from the paper, and load torchvision-layout state dicts built in numpy
(keys written here from torchvision's naming, independently of the loader's mapping). The slow
test compares eval-mode logits and features of DenseNet-121 with a PyTorch DenseNet-121 of
torchvision's layout (``tests/torch_reference.py``, run under the torch venv of
``tests/pretrained_test.py``) on a small input.
"""

import functools
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from pretrained_test import _assert_close_to_torch
from pretrained_test import _run
from pretrained_test import _write_safetensors
import pytest

from care_jax import attention
from care_jax.models import MODEL_NAMES
from care_jax.models import PRETRAINED_MODEL_NAMES
from care_jax.models import Classifier
from care_jax.models import DenseNet
from care_jax.models import LinearHead
from care_jax.models import get_model
from care_jax.models import load_pretrained

DENSENETS = {
  # name: (block sizes, growth rate, stem channels)
  'densenet121': ((6, 12, 24, 16), 32, 64),
  'densenet161': ((6, 12, 36, 24), 48, 96),
  'densenet169': ((6, 12, 32, 32), 32, 64),
  'densenet201': ((6, 12, 48, 32), 32, 64),
}
KEY = jax.random.key(0)
REFERENCE_SCRIPT = pathlib.Path(__file__).with_name('torch_reference.py')


def _abstract(model: nn.Module, shape=(2, 64, 64, 3), dtype=jnp.float32) -> dict:
  images = jax.ShapeDtypeStruct(shape, dtype)
  return jax.eval_shape(functools.partial(model.init, train=False), KEY, images)


@functools.cache
def _abstract_densenet121() -> dict:
  return _abstract(get_model('densenet121', num_classes=1000))


def _num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# ---------------------------------------------------------------- names, shapes, dtypes


def test_densenets_are_registered_models_with_pretrained_weights():
  for name in DENSENETS:
    assert name in MODEL_NAMES and name in PRETRAINED_MODEL_NAMES


@pytest.mark.parametrize(
  'name, expected',
  [
    # torchvision.models.<name>(num_classes=1000): sum(p.numel() for p in m.parameters()).
    ('densenet121', 7_978_856),
    ('densenet161', 28_681_000),
    ('densenet169', 14_149_480),
    ('densenet201', 20_013_928),
  ],
)
def test_parameter_counts_match_torchvision(name, expected):
  variables = _abstract(get_model(name, num_classes=1000))
  assert _num_params(variables['params']) == expected
  # Every BatchNorm has running statistics, none of the convs a bias (torchvision's bias=False).
  blocks, growth, _ = DENSENETS[name]
  num_batch_norms = 1 + 2 * sum(blocks) + (len(blocks) - 1) + 1  # norm0, 2 per layer, norm5
  assert len(jax.tree.leaves(variables['batch_stats'])) == 2 * num_batch_norms


def test_parameter_tree_uses_torchvision_names_and_shapes():
  params = _abstract_densenet121()['params']
  backbone = params['backbone']
  assert set(backbone) == {
    'conv0',
    'norm0',
    *(f'denseblock{b}' for b in range(1, 5)),
    *(f'transition{b}' for b in range(1, 4)),
    'norm5',
  }
  assert backbone['conv0']['kernel'].shape == (7, 7, 3, 64) and 'bias' not in backbone['conv0']
  assert set(backbone['denseblock1']) == {f'denselayer{i}' for i in range(1, 7)}
  assert set(backbone['denseblock3']) == {f'denselayer{i}' for i in range(1, 25)}
  layer = backbone['denseblock1']['denselayer1']
  assert set(layer) == {'norm1', 'conv1', 'norm2', 'conv2'}
  assert layer['norm1']['scale'].shape == (64,)
  assert layer['conv1']['kernel'].shape == (1, 1, 64, 128)  # bn_size 4 x growth 32
  assert layer['conv2']['kernel'].shape == (3, 3, 128, 32)
  # Block 4 starts from 512 channels (1024 // 2); its last layer sees 512 + 15 * 32.
  assert backbone['denseblock4']['denselayer16']['norm1']['scale'].shape == (992,)
  assert backbone['transition1']['conv']['kernel'].shape == (1, 1, 256, 128)
  assert backbone['transition3']['conv']['kernel'].shape == (1, 1, 1024, 512)
  assert backbone['norm5']['scale'].shape == (1024,)
  assert params['head']['fc']['kernel'].shape == (1024, 1000)


@pytest.mark.parametrize(
  'size, side',
  [
    (224, 7),  # 112 -> 56 -> 28 -> 14 -> 7
    (64, 2),
    (72, 2),  # 36 -> 18 -> 9 -> 4 (the 2x2 average pool drops the odd row) -> 2
    (33, 1),  # 17 -> 9 -> 4 -> 2 -> 1
  ],
)
def test_feature_map_is_stride_32_with_torch_output_sizes(size, side):
  model = get_model('densenet121', num_classes=1000)
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  logits, inter = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), _abstract_densenet121(), images
  )
  assert logits.shape == (1, 1000) and inter['features'].shape == (1, side, side, 1024)


def test_bfloat16_features_float32_params_and_logits_and_train_mode_batch_stats():
  model = get_model('densenet121', num_classes=3, dtype=jnp.bfloat16)
  variables = _abstract(model)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  (logits, inter), updates = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), variables, images
  )
  assert logits.dtype == jnp.float32 and inter['features'].dtype == jnp.bfloat16
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])


# ---------------------------------------------------------------- numerics (narrow DenseNet, numpy)

SMALL = dict(block_sizes=(2, 3), growth_rate=4, num_init_features=8, bn_size=2)


def _fake_variables(model: nn.Module, images, seed: int) -> dict:
  """Variables of the right tree from numpy: He-scaled kernels, non-trivial BatchNorm state."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      values = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    elif name in ('scale', 'var'):
      values = rng.uniform(0.5, 1.5, size=leaf.shape)
    else:  # bias, mean
      values = rng.normal(size=leaf.shape) * 0.1
    return jnp.asarray(values, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract(model, images.shape))


def _np_conv(x, kernel, *, stride=1):
  """NHWC cross-correlation with torch's symmetric padding kernel_size // 2."""
  kh, kw = kernel.shape[:2]
  x = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      out += x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride] @ kernel[i, j]
  return out


def _np_densenet(variables: dict, x: np.ndarray) -> np.ndarray:
  """The eval-mode DenseNet-BC forward pass from the paper, in float64 numpy."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params']['backbone'])
  stats = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['batch_stats']['backbone'])

  def bn_relu(y, p, s):
    y = (y - s['mean']) / np.sqrt(s['var'] + 1e-5) * p['scale'] + p['bias']
    return np.maximum(y, 0.0)

  y = bn_relu(_np_conv(x, params['conv0']['kernel'], stride=2), params['norm0'], stats['norm0'])
  # Max pool 3x3/2, padding 1 with -inf.
  y = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  out_h, out_w = (y.shape[1] - 3) // 2 + 1, (y.shape[2] - 3) // 2 + 1
  y = np.max(
    [y[:, i : i + 2 * out_h : 2, j : j + 2 * out_w : 2] for i in range(3) for j in range(3)], axis=0
  )
  num_blocks = len(SMALL['block_sizes'])
  for block, num_layers in enumerate(SMALL['block_sizes']):
    p_block, s_block = params[f'denseblock{block + 1}'], stats[f'denseblock{block + 1}']
    for index in range(num_layers):
      p, s = p_block[f'denselayer{index + 1}'], s_block[f'denselayer{index + 1}']
      z = _np_conv(bn_relu(y, p['norm1'], s['norm1']), p['conv1']['kernel'])
      z = _np_conv(bn_relu(z, p['norm2'], s['norm2']), p['conv2']['kernel'])
      y = np.concatenate([y, z], axis=-1)  # earlier channels first
    if block < num_blocks - 1:
      p, s = params[f'transition{block + 1}'], stats[f'transition{block + 1}']
      z = _np_conv(bn_relu(y, p['norm'], s['norm']), p['conv']['kernel'])
      h, w = z.shape[1] // 2, z.shape[2] // 2
      y = z[:, : 2 * h, : 2 * w].reshape(z.shape[0], h, 2, w, 2, -1).mean(axis=(2, 4))
  return bn_relu(y, params['norm5'], stats['norm5'])


def _small_classifier() -> Classifier:
  return Classifier(backbone=DenseNet(**SMALL), head=LinearHead(num_classes=3))


def test_narrow_densenet_matches_a_numpy_forward_pass_on_odd_sizes():
  model = _small_classifier()
  # 19 -> conv0 10 -> pool 5 -> transition 2 (floor): odd sizes in the stem and the transition.
  images = np.random.default_rng(0).normal(size=(2, 19, 19, 3)).astype(np.float32)
  variables = _fake_variables(model, images, seed=1)
  logits, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)

  expected = _np_densenet(variables, images.astype(np.float64))
  # 8 stem channels + 2 x 4 -> transition 8 -> + 3 x 4.
  assert inter['features'].shape == expected.shape == (2, 2, 2, 20)
  assert np.all(np.asarray(inter['features']) >= 0)  # after norm5's ReLU
  np.testing.assert_allclose(inter['features'], expected, rtol=1e-4, atol=1e-5)
  head = variables['params']['head']['fc']
  expected_logits = expected.mean(axis=(1, 2)) @ np.asarray(head['kernel']) + head['bias']
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)


def test_cam_of_densenet_is_the_normalised_grad_cam():
  model = _small_classifier()
  images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
  variables = _fake_variables(model, images, seed=3)
  _, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  features, labels = inter['features'], jnp.array([2, 0])
  assert features.shape == (2, 8, 8, 20)

  maps = model.attention_maps(variables, features, labels)  # 'auto': the closed-form CAM
  kernel = variables['params']['head']['fc']['kernel']
  np.testing.assert_array_equal(maps, attention.cam(features, kernel, labels))
  head_fn = lambda f: model.apply(variables, f, train=False, method=Classifier.apply_head)
  np.testing.assert_allclose(maps, attention.grad_cam(head_fn, features, labels), atol=1e-5)
  np.testing.assert_allclose(
    maps, model.attention_maps(variables, features, labels, method='grad_cam'), atol=1e-5
  )
  assert maps.shape == (2, 8, 8) and float(maps.min()) == 0.0 and float(maps.max()) == 1.0


# ---------------------------------------------------------------- loading (numpy state dicts)


def _densenet_state_dict(
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


def _flax_leaf(key: str, array: np.ndarray) -> tuple[str, ...]:
  """Where a (current-name) torchvision DenseNet key lives in our variables."""
  module, name = key.rsplit('.', 1)
  if module == 'classifier':
    part, names = 'head', ['fc']
  else:
    part, names = 'backbone', module.removeprefix('features.').split('.')
  if name in ('running_mean', 'running_var'):
    return ('batch_stats', part, *names, name.removeprefix('running_'))
  if name == 'weight':
    name = 'scale' if array.ndim == 1 else 'kernel'
  return ('params', part, *names, name)


def _torch_to_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # [out, in, kh, kw] -> [kh, kw, in, out]
    return np.transpose(array, (2, 3, 1, 0))
  return array.T if array.ndim == 2 else array


def _get(variables: dict, path: tuple[str, ...]) -> np.ndarray:
  for name in path:
    variables = variables[name]
  return np.asarray(variables)


def _save(tmp_path: pathlib.Path, state: dict[str, np.ndarray], name='model') -> pathlib.Path:
  path = tmp_path / f'{name}.safetensors'
  _write_safetensors(path, state)
  return path


@functools.cache
def _densenet121_state() -> dict[str, np.ndarray]:
  return _densenet_state_dict('densenet121')


def _assert_fills_every_variable(variables: dict, state: dict[str, np.ndarray]) -> None:
  weights = {key: value for key, value in state.items() if not key.endswith('num_batches_tracked')}
  expected = {_flax_leaf(key, value): key for key, value in weights.items()}
  paths = {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(variables)}
  assert paths == set(expected), paths ^ set(expected)  # nothing left over, nothing missing
  for path, key in expected.items():
    leaf = _get(variables, path)
    assert leaf.dtype == np.float32, path
    np.testing.assert_array_equal(leaf, _torch_to_flax(state[key]), err_msg=key)


def test_densenet121_checkpoint_fills_every_variable_with_the_transposed_tensor(tmp_path):
  state = _densenet121_state()
  model, variables, report = load_pretrained(
    'densenet121', _save(tmp_path, state), return_report=True
  )
  _assert_fills_every_variable(variables, state)
  assert model.head.num_classes == 1000 and report.checkpoint_num_classes == 1000
  assert report.loaded['backbone/denseblock2/denselayer3/conv1'] == (
    'features.denseblock2.denselayer3.conv1'
  )
  assert report.loaded['backbone/transition1/conv'] == 'features.transition1.conv'
  assert report.loaded['backbone/norm5'] == 'features.norm5'
  assert report.loaded['head/fc'] == 'classifier'
  assert len(report.loaded) == 2 + 4 * 58 + 2 * 3 + 1 + 1  # stem, layers, transitions, norm5, fc
  assert report.initialised == () and report.ignored == ()


def test_torchvision_legacy_key_names_load_the_same_variables(tmp_path):
  """torchvision's densenet121-a639ec97.pth says 'denselayer1.norm.1', as in this state dict."""
  legacy = _densenet_state_dict('densenet121', legacy=True)
  assert 'features.denseblock1.denselayer1.norm.1.weight' in legacy
  _, variables = load_pretrained('densenet121', _save(tmp_path, legacy))
  _assert_fills_every_variable(variables, _densenet121_state())


def test_new_class_count_initialises_only_the_classifier(tmp_path):
  path = _save(tmp_path, _densenet121_state())
  _, loaded = load_pretrained('densenet121', path)
  model, variables, report = load_pretrained(
    'densenet121', path, num_classes=3, rng=jax.random.key(1), return_report=True
  )
  jax.tree.map(
    np.testing.assert_array_equal, variables['params']['backbone'], loaded['params']['backbone']
  )
  jax.tree.map(np.testing.assert_array_equal, variables['batch_stats'], loaded['batch_stats'])
  kernel = np.asarray(variables['params']['head']['fc']['kernel'])
  assert model.head.num_classes == 3 and kernel.shape == (1024, 3)
  assert np.abs(kernel).max() <= 1 / np.sqrt(1024)  # torch.nn.Linear's init
  np.testing.assert_array_equal(variables['params']['head']['fc']['bias'], np.zeros(3))
  assert report.initialised == ('head/fc',)
  assert report.ignored == ('classifier.bias', 'classifier.weight')
  assert 'head/fc' not in report.loaded


def test_checkpoint_without_classifier_needs_num_classes(tmp_path):
  path = _save(tmp_path, _densenet_state_dict('densenet121', num_classes=None))
  with pytest.raises(ValueError, match=r"no classifier \('classifier'\); pass num_classes"):
    load_pretrained('densenet121', path)
  _, variables, report = load_pretrained('densenet121', path, num_classes=4, return_report=True)
  assert variables['params']['head']['fc']['kernel'].shape == (1024, 4)
  assert report.checkpoint_num_classes is None and report.initialised == ('head/fc',)


def test_densenet121_weights_into_densenet169_name_the_missing_keys_and_shapes(tmp_path):
  path = _save(tmp_path, _densenet121_state())
  with pytest.raises(ValueError, match='does not fit densenet169') as error:
    load_pretrained('densenet169', path)
  message = str(error.value)
  missing = re.search(r"missing keys, the first: '([^']+)'", message).group(1)
  assert missing.startswith('features.denseblock3.denselayer25.')
  # Block 3 of DenseNet-169 ends at 256 + 32 * 32 channels (640 after transition 3), 121's at 1024.
  assert (
    "shape mismatch for 'features.denseblock4.denselayer1.conv1.weight': checkpoint "
    '(128, 512, 1, 1), expected (128, 640, 1, 1)'
  ) in message
  assert 'more shape mismatches' in message
  assert 'unexpected' not in message


def test_timm_deep_stem_densenet_is_explained(tmp_path):
  state = dict(_densenet121_state())
  state['features.conv0.weight'] = np.zeros((32, 3, 3, 3), np.float32)
  state['features.conv1.weight'] = np.zeros((32, 32, 3, 3), np.float32)
  state['features.conv2.weight'] = np.zeros((64, 32, 3, 3), np.float32)
  with pytest.raises(
    ValueError, match=r"(?s)unexpected keys, the first: 'features.conv1.weight'.*deep 3x3 stem"
  ) as error:
    load_pretrained('densenet121', _save(tmp_path, state))
  assert 'plain 7x7-stem DenseNets' in str(error.value)
  assert "'features.conv0.weight': checkpoint (32, 3, 3, 3), expected (64, 3, 7, 7)" in str(
    error.value
  )


# ---------------------------------------------------------------- parity with PyTorch (slow)

PARITY_SIZE = 72  # small for CI; odd 9x9 map before transition 3, 2x2 features


@pytest.fixture(scope='module')
def densenet_export(torch_python, tmp_path_factory) -> pathlib.Path:
  """torch_reference.export_densenet('densenet121', PARITY_SIZE) under the torch venv."""
  out_dir = tmp_path_factory.mktemp('densenet_export')
  code = (
    'import pathlib, sys; sys.path.insert(0, sys.argv[1]); import torch_reference; '
    'torch_reference.export_densenet(sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4]))'
  )
  _run(
    [torch_python, '-c', code, REFERENCE_SCRIPT.parent, 'densenet121', PARITY_SIZE, out_dir],
    cwd=out_dir,
  )
  return out_dir


@pytest.mark.slow
def test_densenet121_eval_logits_features_and_cam_match_pytorch(densenet_export):
  model, variables = load_pretrained('densenet121', densenet_export / 'densenet121.safetensors')
  images = np.load(densenet_export / 'densenet121_inputs.npy')
  assert images.shape == (2, PARITY_SIZE, PARITY_SIZE, 3)
  logits, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)

  torch_logits = np.load(densenet_export / 'densenet121_logits.npy')
  torch_features = np.load(densenet_export / 'densenet121_features.npy')
  assert np.abs(torch_logits).max() > 1.0  # calibrated BatchNorm: logits of a sensible scale
  _assert_close_to_torch(logits, torch_logits)
  _assert_close_to_torch(inter['features'], torch_features)

  # CAM of the loaded model: the torch features weighted by the classifier row of each label.
  labels = jnp.asarray(np.argmax(torch_logits, axis=1))
  maps = model.attention_maps(variables, inter['features'], labels)
  weights = np.asarray(variables['params']['head']['fc']['kernel'])[:, np.asarray(labels)].T
  cam = np.einsum('bhwc,bc->bhw', torch_features.astype(np.float64), weights)
  low, high = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(maps, (cam - low) / (high - low), atol=1e-4)
  np.testing.assert_allclose(
    maps, model.attention_maps(variables, inter['features'], labels, method='grad_cam'), atol=1e-5
  )
