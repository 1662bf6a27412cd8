"""care_jax.models.pretrained: torchvision/timm checkpoints -> Flax variables.

Fast tests build torchvision-layout state dicts in numpy (tests/helpers/torch_layout.py) and
check every variable, the head handling and the errors. The slow tests compare eval-mode logits
and features with torchvision's own models: the session fixture `torch_exports`
(tests/conftest.py) runs tests/helpers/torch_reference.py under the torch venv (random weights
and BatchNorm statistics); the comparison runs here, without torch."""

import re

import jax
import ml_dtypes
import numpy as np
import pytest

from care_jax.models import IMAGENET_MEAN
from care_jax.models import IMAGENET_STD
from care_jax.models import PRETRAINED_MODEL_NAMES
from care_jax.models import load_pretrained
from care_jax.models.torch_files import read_safetensors
from tests.helpers import torch_layout as tl
from tests.helpers import torch_venv

ARCHITECTURES = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'vgg19')
# Tested in pretrained_densenet_test.py (its own torch reference export).
DENSENETS = ('densenet121', 'densenet161', 'densenet169', 'densenet201')


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


def test_resnet18_checkpoint_fills_every_variable_with_the_transposed_tensor(tmp_path):
  state = tl.resnet_state_dict(tl.RESNET18)
  model, variables, report = load_pretrained(
    'resnet18', tl.save(tmp_path, state), return_report=True
  )

  weights = {key: value for key, value in state.items() if not key.endswith('num_batches_tracked')}
  expected_paths = {_flax_leaf(key, value): key for key, value in weights.items()}
  assert tl.flat_paths(variables) == set(expected_paths)  # nothing left over, nothing missing
  for path, key in expected_paths.items():
    leaf = tl.get(variables, path)
    assert leaf.dtype == np.float32, path
    np.testing.assert_array_equal(leaf, tl.torch_to_flax(state[key]), err_msg=key)

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
    for key, value in tl.resnet_state_dict(tl.RESNET18, seed=1).items()
  }
  _, variables = load_pretrained('resnet18', tl.save(tmp_path, state))

  for key in ('conv1.weight', 'layer3.0.downsample.1.running_var', 'fc.weight'):
    leaf = tl.get(variables, _flax_leaf(key, state[key]))
    assert leaf.dtype == np.float32
    np.testing.assert_array_equal(leaf, tl.torch_to_flax(state[key].astype(np.float32)))


def test_new_class_count_initialises_only_the_final_layer(tmp_path):
  state = tl.resnet_state_dict(tl.RESNET18)
  path = tl.save(tmp_path, state)
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
  state = tl.resnet_state_dict(tl.RESNET18)
  del state['fc.weight'], state['fc.bias']
  path = tl.save(tmp_path, state)

  with pytest.raises(ValueError, match="no classifier \\('fc'\\); pass num_classes"):
    load_pretrained('resnet18', path)
  model, variables, report = load_pretrained('resnet18', path, num_classes=4, return_report=True)
  assert variables['params']['head']['fc']['kernel'].shape == (512, 4)
  assert report.checkpoint_num_classes is None and report.initialised == ('head/fc',)
  assert report.ignored == ()


def test_bn_linear_head_has_no_torch_counterpart_and_is_initialised(tmp_path):
  state = tl.resnet_state_dict(tl.RESNET18)
  model, variables, report = load_pretrained(
    'resnet18', tl.save(tmp_path, state), head='bn_linear', return_report=True
  )
  assert model.head.num_classes == 1000
  assert report.initialised == ('head/bn', 'head/fc') and report.ignored == ('fc.bias', 'fc.weight')
  np.testing.assert_array_equal(variables['batch_stats']['head']['bn']['mean'], np.zeros(512))
  np.testing.assert_array_equal(variables['batch_stats']['head']['bn']['var'], np.ones(512))
  np.testing.assert_array_equal(
    variables['params']['backbone']['conv1']['kernel'], tl.torch_to_flax(state['conv1.weight'])
  )


def test_normed_linear_head_has_no_torch_counterpart_and_is_initialised(tmp_path):
  """The cosine head of loss.name='ldam_drw': a fresh head on the pretrained backbone."""
  state = tl.resnet_state_dict(tl.RESNET18)
  model, variables, report = load_pretrained(
    'resnet18', tl.save(tmp_path, state), num_classes=3, head='normed_linear', return_report=True
  )
  assert report.initialised == ('head',) and report.ignored == ('fc.bias', 'fc.weight')
  kernel = variables['params']['head']['kernel']
  assert kernel.shape == (512, 3)
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(
    variables['params']['backbone']['conv1']['kernel'], tl.torch_to_flax(state['conv1.weight'])
  )


@pytest.mark.parametrize('name', ['tiny_cnn', 'resnet26', 'vgg16'])
def test_unsupported_model_name_lists_the_supported_ones(tmp_path, name):
  with pytest.raises(ValueError) as error:
    load_pretrained(name, tmp_path / 'never_read.safetensors')
  assert repr(name) in str(error.value)
  for supported in ARCHITECTURES:
    assert supported in str(error.value)
  assert PRETRAINED_MODEL_NAMES == (*ARCHITECTURES, *DENSENETS)


def test_resnet18_weights_into_resnet34_name_the_first_missing_key(tmp_path):
  path = tl.save(tmp_path, tl.resnet_state_dict(tl.RESNET18))
  resnet34_keys = set(tl.resnet_state_dict(tl.RESNET34))
  resnet18_keys = set(tl.resnet_state_dict(tl.RESNET18))

  with pytest.raises(ValueError, match='does not fit resnet34') as error:
    load_pretrained('resnet34', path)
  missing = re.search(r"missing keys, the first: '([^']+)'", str(error.value)).group(1)
  assert missing in resnet34_keys - resnet18_keys and missing.startswith('layer1.2.')
  assert 'unexpected' not in str(error.value)


def test_resnet34_weights_into_resnet18_name_the_first_unexpected_key(tmp_path):
  path = tl.save(tmp_path, tl.resnet_state_dict(tl.RESNET34))
  with pytest.raises(ValueError, match="unexpected keys, the first: 'layer1.2.") as error:
    load_pretrained('resnet18', path)
  assert 'missing' not in str(error.value)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
  state = tl.resnet_state_dict(tl.RESNET18)
  state['layer2.0.conv1.weight'] = np.zeros((128, 64, 5, 5), np.float32)
  with pytest.raises(
    ValueError,
    match=re.escape(
      "shape mismatch for 'layer2.0.conv1.weight': checkpoint (128, 64, 5, 5), "
      'expected (128, 64, 3, 3)'
    ),
  ):
    load_pretrained('resnet18', tl.save(tmp_path, state))


def test_timm_deep_stem_checkpoint_is_explained(tmp_path):
  state = tl.resnet_state_dict(tl.RESNET18)
  del state['conv1.weight']
  state['conv1.0.weight'] = np.zeros((32, 3, 3, 3), np.float32)
  state['conv1.3.weight'] = np.zeros((32, 32, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"(?s)the first: 'conv1.weight'.*deep 3x3 stem"):
    load_pretrained('resnet18', tl.save(tmp_path, state))


def test_imagenet_normalisation_constants_are_torchvisions():
  assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
  assert IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.mark.slow
@pytest.mark.parametrize('name', ARCHITECTURES)
def test_eval_logits_and_features_match_torchvision(torch_exports, name):
  model, variables = load_pretrained(name, torch_exports / f'{name}.safetensors')
  logits, intermediates = model.apply(variables, np.load(torch_exports / 'inputs.npy'), train=False)
  torch_venv.assert_close_to_torch(logits, np.load(torch_exports / f'{name}_logits.npy'))
  torch_venv.assert_close_to_torch(
    intermediates['features'], np.load(torch_exports / f'{name}_features.npy')
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  'name, final, hidden', [('resnet50', 'fc', ()), ('vgg19', 'fc3', ('fc1', 'fc2'))]
)
def test_fresh_head_keeps_torchvision_features(torch_exports, name, final, hidden):
  path = torch_exports / f'{name}.safetensors'
  model, variables, report = load_pretrained(name, path, num_classes=5, return_report=True)
  logits, intermediates = model.apply(variables, np.load(torch_exports / 'inputs.npy'), train=False)

  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
  torch_venv.assert_close_to_torch(
    intermediates['features'], np.load(torch_exports / f'{name}_features.npy')
  )
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
  torch_venv.assert_close_to_torch(logits, np.load(torch_exports / 'resnet18_logits.npy'))
