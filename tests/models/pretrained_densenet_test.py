"""The DenseNets' torchvision/timm weights (care_jax.models.pretrained): layout, loading, CAM.

Fast tests load torchvision-layout state dicts built in numpy (tests/helpers/torch_layout.py).
The slow test compares eval-mode logits, features and CAM of DenseNet-121 with torchvision's own
DenseNet-121 (random weights, calibrated BatchNorm statistics) on a small input: the session
fixture `torch_exports` runs tests/helpers/torch_reference.py under the torch venv."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax.models import load_pretrained
from tests.helpers import torch_layout as tl
from tests.helpers import torch_venv


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


@functools.cache
def _densenet121_state() -> dict[str, np.ndarray]:
  return tl.densenet_state_dict('densenet121')


def _assert_fills_every_variable(variables: dict, state: dict[str, np.ndarray]) -> None:
  weights = {key: value for key, value in state.items() if not key.endswith('num_batches_tracked')}
  expected = {_flax_leaf(key, value): key for key, value in weights.items()}
  paths = {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(variables)}
  assert paths == set(expected), paths ^ set(expected)  # nothing left over, nothing missing
  for path, key in expected.items():
    leaf = tl.get(variables, path)
    assert leaf.dtype == np.float32, path
    np.testing.assert_array_equal(leaf, tl.torch_to_flax(state[key]), err_msg=key)


def test_densenet121_checkpoint_fills_every_variable_with_the_transposed_tensor(tmp_path):
  state = _densenet121_state()
  model, variables, report = load_pretrained(
    'densenet121', tl.save(tmp_path, state), return_report=True
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
  legacy = tl.densenet_state_dict('densenet121', legacy=True)
  assert 'features.denseblock1.denselayer1.norm.1.weight' in legacy
  _, variables = load_pretrained('densenet121', tl.save(tmp_path, legacy))
  _assert_fills_every_variable(variables, _densenet121_state())


def test_new_class_count_initialises_only_the_classifier(tmp_path):
  path = tl.save(tmp_path, _densenet121_state())
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
  path = tl.save(tmp_path, tl.densenet_state_dict('densenet121', num_classes=None))
  with pytest.raises(ValueError, match=r"no classifier \('classifier'\); pass num_classes"):
    load_pretrained('densenet121', path)
  _, variables, report = load_pretrained('densenet121', path, num_classes=4, return_report=True)
  assert variables['params']['head']['fc']['kernel'].shape == (1024, 4)
  assert report.checkpoint_num_classes is None and report.initialised == ('head/fc',)


def test_densenet121_weights_into_densenet169_name_the_missing_keys_and_shapes(tmp_path):
  path = tl.save(tmp_path, _densenet121_state())
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
    load_pretrained('densenet121', tl.save(tmp_path, state))
  assert 'plain 7x7-stem DenseNets' in str(error.value)
  assert "'features.conv0.weight': checkpoint (32, 3, 3, 3), expected (64, 3, 7, 7)" in str(
    error.value
  )


PARITY_SIZE = 72  # torch_reference.DENSENET_SIZE: small for CI


@pytest.mark.slow
def test_densenet121_eval_logits_features_and_cam_match_torchvision(torch_exports):
  model, variables = load_pretrained('densenet121', torch_exports / 'densenet121.safetensors')
  images = np.load(torch_exports / 'densenet121_inputs.npy')
  assert images.shape == (2, PARITY_SIZE, PARITY_SIZE, 3)
  logits, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)

  torch_logits = np.load(torch_exports / 'densenet121_logits.npy')
  torch_features = np.load(torch_exports / 'densenet121_features.npy')
  assert np.abs(torch_logits).max() > 1.0  # calibrated BatchNorm: logits of a sensible scale
  torch_venv.assert_close_to_torch(logits, torch_logits)
  torch_venv.assert_close_to_torch(inter['features'], torch_features)

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
