"""The non-finite guard: a non-finite step is skipped and counted, finite steps are the plain
optax update, and a run of them stops training with a diagnostic."""

import chex
import jax
import numpy as np
import pytest

from care_jax import training
from tests.helpers import steps


def _nan_batch(seed=0):
  batch = steps.batch(seed=seed)
  batch['image'][3, 5, 7, 1] = np.nan
  return batch


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
def test_a_non_finite_step_is_skipped_and_counted(parallel):
  config = steps.make_config(alpha=0.5)
  model, state, step = steps.setup(config, parallel=parallel)
  runner = steps.parallel_runner(config, model, step, parallel)
  before = jax.device_get(state)
  with runner.scope():
    placed, metrics = runner.train_step(runner.put_state(state), runner.put_batch(_nan_batch()))
  after, guard = runner.get_state(placed), runner.fetch(metrics['guard'])
  for part in ('params', 'opt_state', 'batch_stats'):
    chex.assert_trees_all_equal(getattr(after, part), getattr(before, part))
  assert int(after.step) == 1  # The data position moves on.
  assert int(after.skipped_steps) == 1 and int(after.consecutive_nonfinite) == 1
  assert int(guard['image_nonfinite']) == 1 and not bool(guard['finite_update'])
  # A finite batch afterwards is applied and resets the run of bad steps.
  with runner.scope():
    placed, _ = runner.train_step(placed, runner.put_batch(steps.batch(seed=1)))
  after = runner.get_state(placed)
  assert int(after.consecutive_nonfinite) == 0 and int(after.skipped_steps) == 1
  assert not np.array_equal(
    after.params['head']['fc']['kernel'], before.params['head']['fc']['kernel']
  )


def test_finite_steps_equal_the_plain_optax_update():
  config = steps.make_config(alpha=0.5)
  model, state, step = steps.setup(config)
  batch = steps.batch()
  new_state, _ = jax.jit(step)(state, batch)

  @jax.jit
  def reference(state):
    def loss(params):
      return steps.reference_loss(
        model, state.replace(params=params), batch, config, (0.2, 0.3, 0.5)
      )[0]

    return state.apply_gradients(grads=jax.grad(loss)(state.params))

  expected = reference(state)
  chex.assert_trees_all_close(new_state.params, expected.params, rtol=1e-5, atol=1e-6)


def test_consecutive_non_finite_steps_freeze_the_state_and_stop_with_a_diagnostic():
  config = steps.make_config(alpha=0.5)
  config.train.max_consecutive_nonfinite = 2
  _, state, step = steps.setup(config)
  jitted = jax.jit(step)
  recent = []
  for i, batch in enumerate(
    [steps.batch(seed=9), _nan_batch(1), _nan_batch(2), steps.batch(seed=3)]
  ):
    state, metrics = jitted(state, batch)
    recent.append((i + 1, metrics))
  assert int(state.consecutive_nonfinite) == 2  # The good 4th batch did not reset it.
  assert int(state.skipped_steps) == 3 and int(state.step) == 4
  fetcher = type('Fetch', (), {'fetch': staticmethod(jax.device_get)})
  with pytest.raises(FloatingPointError) as error:
    training.check_nonfinite(recent, fetcher, limit=2)
  assert str(error.value) == (
    '2 consecutive training steps had a non-finite loss or gradient '
    '(train.max_consecutive_nonfinite = 2); the last at step 3: non-finite ce, loss, '
    'gradients (ce = nan, care = 0.0). Batch: images in [-4.253, 4.015] with 1 non-finite '
    'pixels, labels in [0, 2], 5 boxed images. 2 steps skipped in all; parameters are those '
    'before the first of these steps. Lower train.learning_rate or check the data.'
  )
  training.check_nonfinite(recent[:1], fetcher, limit=2)  # A finite step passes.
