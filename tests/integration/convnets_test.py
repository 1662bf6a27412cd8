"""ConvNeXt and EfficientNet through the CARE train step: jitted, in bfloat16 (the small
registered variants of tests/helpers/model_fixtures.py; mesh and pmap: training/parallel_test.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import model_fixtures as mf
from tests.helpers import steps


@pytest.mark.parametrize('backbone', [mf.SMALL_CONVNEXT, mf.SMALL_EFFICIENTNET])
def test_care_step_trains_under_jit_in_bfloat16(backbone):
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
  assert all(jax.tree.leaves(moved['backbone']['stem_conv']))
  assert {leaf.dtype for leaf in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
