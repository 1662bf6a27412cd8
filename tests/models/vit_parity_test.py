"""Our ViT-B/16 and DeiT-S/16 against torchvision's and timm's own models: parameter counts,
eval-mode logits through `care_jax.models.weight_maps.read_vit_weights`, and the position
embedding resampled as timm's ``resample_abs_pos_embed`` (tests/helpers/torch_vit_reference.py
exports them; DeiT-S alone for CI, ViT-B/16 for the heavy tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax.models import get_model
from care_jax.models import torch_files
from care_jax.models import weight_maps
from tests.helpers import convnet_parity
from tests.helpers import model_fixtures as mf
from tests.helpers import torch_venv


def _exports(torch_python, name):
  return torch_venv.torch_exports(torch_python, torch_venv.VIT_REFERENCE_SCRIPT, args=(name,))


@pytest.fixture(scope='module')
def deit_exported(torch_python):
  return _exports(torch_python, 'deit_s_16')


def _our_parameter_count(name):
  model = get_model(name, num_classes=1000)
  variables = mf.abstract_variables(model, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  return mf.num_params(variables['params'])


def test_deit_s_parameter_count_equals_timms_model(deit_exported):
  counts = convnet_parity.reference_parameter_counts(deit_exported)
  assert counts == {'deit_s_16.timm': _our_parameter_count('deit_s_16')}


def test_deit_s_eval_logits_equal_timm_at_224(deit_exported):
  convnet_parity.assert_logits_match(
    deit_exported, 'deit_s_16', 224, family='vit', sources=('timm',)
  )


@pytest.mark.parametrize('side', [4, 24])  # 64 px and 384 px
def test_position_embedding_is_resampled_as_timm_resamples_it(deit_exported, side):
  state = torch_files.load_state_dict(deit_exported / 'deit_s_16.timm.safetensors')
  ours = weight_maps.resample_position_embedding(state['pos_embed'], side=side)
  expected = np.load(deit_exported / f'deit_s_16.timm.pos_embed_{side}.npy')
  assert ours.shape == expected.shape == (1, 1 + side * side, 384)
  np.testing.assert_array_equal(ours[:, 0], state['pos_embed'][:, 0])  # the class row kept
  torch_venv.assert_close_to_torch(ours, expected)


@pytest.mark.heavy
def test_deit_s_eval_logits_at_64_px_equal_timms_with_its_embedding_resampled(deit_exported):
  # The 224-px checkpoint read into a model of 64-px images; timm resamples at run time.
  convnet_parity.assert_logits_match(
    deit_exported, 'deit_s_16', 64, family='vit', sources=('timm',)
  )


@pytest.mark.heavy
def test_vit_b_parameter_count_and_eval_logits_equal_torchvision_and_timm(torch_python):
  exported = _exports(torch_python, 'vit_b_16')
  counts = convnet_parity.reference_parameter_counts(exported)
  expected = _our_parameter_count('vit_b_16')
  assert counts == {'vit_b_16.torchvision': expected, 'vit_b_16.timm': expected}
  convnet_parity.assert_logits_match(exported, 'vit_b_16', 224, family='vit')
