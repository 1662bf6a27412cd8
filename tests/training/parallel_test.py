"""The mesh (jit) and pmap (shard_map) back-ends on 8 simulated devices: a data-parallel step and
evaluation equal one device on the whole batch, the two back-ends equal each other; the opt-in
compilation cache."""

import chex
import jax
import numpy as np
import pytest

from care_jax import training
from care_jax.training import parallel as parallel_lib
from tests.helpers import model_fixtures as mf
from tests.helpers import steps


def _single_device_step(config):
  _, state, step = steps.setup(config)
  new_state, metrics = jax.jit(step)(state, steps.batch())
  return jax.device_get(new_state), jax.device_get(metrics)


@pytest.mark.parametrize(
  'parallel, backbone',
  [
    ('mesh', 'tiny_cnn'),
    ('pmap', 'tiny_cnn'),
    # ConvNeXt (LayerNorm head) and EfficientNet (BatchNorm over the pmap axis, dropout head):
    # pmap in CI, whose per-device statistics could differ; the mesh back-end (plain jit,
    # sharded) compiles 2-3x longer for them on CPU (60-80 s): heavy.
    pytest.param('pmap', mf.SMALL_CONVNEXT, marks=pytest.mark.slow),
    pytest.param('pmap', mf.SMALL_EFFICIENTNET, marks=pytest.mark.slow),
    pytest.param('mesh', mf.SMALL_CONVNEXT, marks=pytest.mark.heavy),
    pytest.param('mesh', mf.SMALL_EFFICIENTNET, marks=pytest.mark.heavy),
    # The ViT: its class token goes to the head beside the feature map on each device. CI trains
    # it with pmap (a ViT train step under CARE, equal to one device); mesh is heavy (13-17 s).
    pytest.param('mesh', mf.SMALL_VIT, marks=pytest.mark.heavy),
    pytest.param('pmap', mf.SMALL_VIT, marks=pytest.mark.slow),
  ],
)
def test_data_parallel_step_matches_one_device(parallel, backbone):
  assert jax.device_count() == 8, 'conftest sets 8 simulated devices'
  config = steps.make_config(alpha=0.5)
  config.model.name = backbone
  expected_state, expected_metrics = _single_device_step(config)

  config = steps.make_config(alpha=0.5)
  config.model.name = backbone
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


def _two_steps(parallel):
  config = steps.make_config(alpha=0.5)
  model, state, step = steps.setup(config, parallel=parallel)
  runner = steps.parallel_runner(config, model, step, parallel)
  state = runner.put_state(state)
  with runner.scope():
    for _ in range(2):
      state, metrics = runner.train_step(state, runner.put_batch(steps.batch()))
  return runner, state, metrics


def test_pmap_back_end_equals_mesh_back_end_over_two_steps():
  _, mesh_state, mesh_metrics = _two_steps('mesh')
  runner, pmap_state, pmap_metrics = _two_steps('pmap')
  # No leading device axis: the state is the mesh back-end's replicated array.
  for mesh_leaf, pmap_leaf in zip(jax.tree.leaves(mesh_state), jax.tree.leaves(pmap_state)):
    assert pmap_leaf.shape == mesh_leaf.shape
    assert pmap_leaf.sharding.is_fully_replicated
  chex.assert_trees_all_close(
    runner.get_state(pmap_state).params, runner.get_state(mesh_state).params, rtol=1e-5, atol=1e-5
  )
  chex.assert_trees_all_close(
    runner.fetch(pmap_metrics), runner.fetch(mesh_metrics), rtol=1e-5, atol=1e-5
  )


def test_the_compilation_cache_goes_where_asked_but_stays_off_across_cpu_processes(
  tmp_path, monkeypatch
):
  from care_jax.training import parallel as parallel_lib  # pylint: disable=g-import-not-at-top

  warnings = []
  monkeypatch.setattr(parallel_lib.logging, 'warning', lambda *a: warnings.append(a[0] % a[1:]))
  previous = jax.config.jax_compilation_cache_dir
  try:
    assert not parallel_lib.enable_compilation_cache(None)
    assert jax.config.jax_compilation_cache_dir == previous and not warnings
    # Several CPU processes that all load their train step from the cache hang: left off.
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    assert not parallel_lib.enable_compilation_cache(str(tmp_path))
    assert jax.config.jax_compilation_cache_dir == previous
    assert len(warnings) == 1 and 'left off in a run of 2 processes on CPUs' in warnings[0]
    monkeypatch.setattr(jax, 'process_count', lambda: 1)
    assert parallel_lib.enable_compilation_cache(str(tmp_path))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
  finally:
    jax.config.update('jax_compilation_cache_dir', previous)


def test_device_prefetch_yields_every_put_batch_in_order_and_puts_two_ahead():
  puts = []

  def put(batch):
    puts.append(batch)
    return ('on device', batch)

  prefetched = parallel_lib.device_prefetch(iter(range(5)), put)
  assert puts == []  # Nothing is read before the loop asks.
  seen = []
  for value in prefetched:
    seen.append(value)
    # The batch the loop holds and the next one are on the devices (until the end).
    assert puts == list(range(min(len(seen) + 1, 5)))
  assert seen == [('on device', k) for k in range(5)]


@pytest.mark.parametrize('depth', [1, 3])
def test_device_prefetch_puts_depth_batches_ahead_of_a_list(depth):
  puts = []
  prefetched = parallel_lib.device_prefetch(
    [0, 1, 2, 3], lambda b: puts.append(b) or b, depth=depth
  )
  assert next(prefetched) == 0
  assert puts == list(range(depth))
  assert list(prefetched) == [1, 2, 3]


def test_device_prefetch_needs_a_positive_depth():
  with pytest.raises(ValueError, match='depth must be >= 1, got 0'):
    next(parallel_lib.device_prefetch(iter([1]), lambda b: b, depth=0))
