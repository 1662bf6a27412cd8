"""The mesh (jit) and pmap back-ends on 8 simulated devices: a data-parallel step and evaluation
equal one device on the whole batch."""

import chex
import jax
import numpy as np
import pytest

from care_jax import training
from tests.helpers import steps


def _single_device_step(config):
  _, state, step = steps.setup(config)
  new_state, metrics = jax.jit(step)(state, steps.batch())
  return jax.device_get(new_state), jax.device_get(metrics)


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
def test_data_parallel_step_matches_one_device(parallel):
  assert jax.device_count() == 8, 'conftest sets 8 simulated devices'
  config = steps.make_config(alpha=0.5)
  expected_state, expected_metrics = _single_device_step(config)

  config = steps.make_config(alpha=0.5)
  model, state, step = steps.setup(config, parallel=parallel)
  runner = steps.parallel_runner(config, model, step, parallel)
  state = runner.put_state(state)
  with runner.scope():
    state, metrics = runner.train_step(state, runner.put_batch(steps.batch()))
  state = runner.get_state(state)
  metrics = runner.fetch(metrics)
  for key in ('loss', 'ce', 'care', 'accuracy'):
    np.testing.assert_allclose(metrics[key], expected_metrics[key], rtol=1e-5, err_msg=key)
  chex.assert_trees_all_close(state.params, expected_state.params, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(state.batch_stats, expected_state.batch_stats, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
def test_data_parallel_eval_counts_every_valid_example_once(parallel):
  config = steps.make_config(alpha=0.5)
  model, state, step = steps.setup(config, parallel=parallel)
  batch = steps.batch()
  batch['valid'] = np.arange(16) < 11
  batch['lesion_mask'], batch['has_lesion_mask'] = batch['mask'], batch['has_mask']
  single_confusion, single_quality, single_rows = jax.jit(
    training.make_eval_step(model, num_classes=steps.NUM_CLASSES)
  )(state, batch)
  runner = steps.parallel_runner(config, model, step, parallel)
  with runner.scope():
    confusion, quality, rows = runner.fetch(
      runner.eval_step(runner.put_state(state), runner.put_batch(batch))
    )
  np.testing.assert_array_equal(confusion, single_confusion)
  # The rows of the global batch in its order, gathered from every device.
  np.testing.assert_array_equal(rows['label'], batch['label'])
  np.testing.assert_array_equal(rows['valid'], batch['valid'])
  np.testing.assert_allclose(rows['probabilities'], single_rows['probabilities'], rtol=1e-5)
  np.testing.assert_allclose(rows['probabilities'].sum(-1), 1.0, rtol=1e-5)
  assert confusion.sum() == 11
  # Attention quality: the valid rows with a lesion mask, summed over devices.
  assert quality.compute()['num_images'] == int(np.sum(batch['valid'] & batch['has_mask'])) > 0
  for key, value in single_quality.compute().items():
    np.testing.assert_allclose(quality.compute()[key], value, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
@pytest.mark.parametrize('case', [0, 4], ids=['class_balanced_bn_linear', 'ldam_drw_normed'])
def test_data_parallel_class_weighted_step_matches_one_device(parallel, case):
  """Batch means over the global batch, and the train-mode Grad-CAM of BatchNorm/cosine heads."""
  name, fields, head = steps.STEP_LOSS_CASES[case]
  _, _, state, step = steps.loss_setup(name, fields, head)
  expected_state, expected = jax.device_get(jax.jit(step)(state, steps.batch()))

  config, model, state, step = steps.loss_setup(name, fields, head, parallel=parallel)
  runner = steps.parallel_runner(config, model, step, parallel)
  with runner.scope():
    placed, metrics = runner.train_step(runner.put_state(state), runner.put_batch(steps.batch()))
  metrics = runner.fetch(metrics)
  for key in ('loss', 'ce', 'care', 'accuracy'):
    np.testing.assert_allclose(metrics[key], expected[key], rtol=1e-5, err_msg=key)
  chex.assert_trees_all_close(
    runner.get_state(placed).params, expected_state.params, rtol=1e-5, atol=1e-5
  )
