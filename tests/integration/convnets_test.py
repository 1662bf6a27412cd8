"""ConvNeXt, EfficientNet and ViT through the CARE train step: jitted, in bfloat16 (the small
registered variants of tests/helpers/model_fixtures.py; mesh and pmap: training/parallel_test.py),
and their `care-jax export` artifacts (the ViT's class token flows beside the feature map).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import inference
from care_jax import training
from tests.helpers import model_fixtures as mf
from tests.helpers import steps


@pytest.mark.parametrize(
  'backbone, first_layer',
  [
    (mf.SMALL_CONVNEXT, 'stem_conv'),
    (mf.SMALL_EFFICIENTNET, 'stem_conv'),
    # Beside the pmap step of training/parallel_test.py: out of CI's budget (17 s of CPU).
    pytest.param(mf.SMALL_VIT, 'patch_embed', marks=pytest.mark.heavy),
  ],
)
def test_care_step_trains_under_jit_in_bfloat16(backbone, first_layer):
  config = steps.make_config(alpha=0.5)
  config.model.name = backbone
  config.dtype = 'bfloat16'
  model, state, step = steps.setup(config)
  batch = steps.batch()
  _, inter = model.apply(
    {'params': state.params, 'batch_stats': state.batch_stats}, batch['image'][:2], train=False
  )
  assert inter['features'].dtype == jnp.bfloat16

  new_state, metrics = jax.device_get(jax.jit(step)(state, batch))

  for key in ('loss', 'ce', 'care'):
    assert np.isfinite(metrics[key]), key
  assert metrics['care'] != 0  # the boxed images' attention loss enters the step
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), new_state.params, state.params)
  assert all(jax.tree.leaves(moved['head']))
  assert all(jax.tree.leaves(moved['backbone'][first_layer]))
  assert {leaf.dtype for leaf in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(
  'backbone, grid', [(mf.SMALL_CONVNEXT, 4), (mf.SMALL_EFFICIENTNET, 4), (mf.SMALL_VIT, 2)]
)
def test_the_exported_artifact_reproduces_the_predictor(tmp_path, backbone, grid):
  config = steps.make_config()
  config.model.name = backbone
  config.data.image_size = steps.IMAGE
  model = training.create_model(config, steps.NUM_CLASSES)
  images = steps.batch()['image'][:3]
  variables = mf.fake_variables(model, images)  # numpy-filled: no compiled random init
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  predictor = inference.Predictor(config, model, variables, ('a', 'b', 'c'), 0)
  inference.export(predictor, str(tmp_path), platforms=('cpu',))  # what `care-jax export` calls
  exported = jax.export.deserialize(bytearray((tmp_path / inference.EXPORT_MODEL).read_bytes()))
  probabilities, _, maps = predictor.predict(images, attention=True)
  np.testing.assert_allclose(exported.call(images), probabilities, atol=1e-6)
  assert maps.shape == (3, grid, grid) and np.all(np.ptp(maps, axis=(1, 2)) > 0)
