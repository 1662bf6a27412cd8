"""The train step of every guidance method: CARE's step unchanged, the data-parallel back-ends
equal one device, bfloat16, multi-label, and guidance.weight = 'auto'."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import classification_loss
from care_jax import models
from care_jax import training
from care_jax.config import schema
from care_jax.models.tiny import TinyCNN
from care_jax.training import step as step_lib
from tests.helpers import steps

METHODS = (*schema.GUIDANCE_MAP_METHODS, *schema.GUIDANCE_FORWARD_METHODS)
# The methods whose parameter gradients the parallel test compares (the map losses share
# `guidance_terms.map_term`: their values are compared, and RES's gradient, the one with
# batch-wide statistics). Each gradient costs a compiled backward pass.
_GRADIENT_CHECKED = ('res', 'rrr', 'gain', 'sgt')
# The StepConfig fields of config.guidance (CARE's step leaves them at their defaults).
_GUIDANCE_FIELDS = (
  'method',
  'weight',
  'auto_weight',
  'classes',
  'normalize',
  'stop_gradient_weights',
  'hyperparameters',
)


def _config(method, **guidance):
  config = steps.make_config(alpha=0.5)
  config.guidance.method = method
  for key, value in guidance.items():
    config.guidance[key] = value
  return config


def _small_model(parallel=None, dtype=jnp.float32):
  """Two narrow conv stages and a linear head: the step's code paths at a fraction of tiny_cnn's
  compile time."""
  axis_name = training.PMAP_AXIS if parallel == 'pmap' else None
  return models.Classifier(
    backbone=TinyCNN(widths=(8, 8), strides=(2, 2), axis_name=axis_name, dtype=dtype),
    head=models.LinearHead(num_classes=steps.NUM_CLASSES, dtype=dtype),
  )


def _all_methods_step(
  parallel=None, dtype=jnp.float32, task='multiclass', with_gradients=_GRADIENT_CHECKED
):
  """(model, state, step): one program holding the train step of each of `methods`.

  One compiled program per back-end (XLA shares its forward passes) instead of one per method;
  the gradients of the methods in `with_gradients` only (each costs a compiled backward pass).
  """
  model = _small_model(parallel, dtype)
  config = _config('care')
  config.task = task
  state = training.create_train_state(
    config, model, (steps.IMAGE, steps.IMAGE, 3), 10, jax.random.key(0)
  )
  axis_name = training.PMAP_AXIS if parallel == 'pmap' else None
  method_losses = {
    method: functools.partial(
      step_lib._loss,
      model,
      dataclasses.replace(step_lib.StepConfig.from_config(_config(method)), task=task),
      classification_loss.make_classification_loss(
        'ce', class_counts=steps.TRAIN_COUNTS, num_steps=10, task=task
      ),
      axis_name,
    )
    for method in METHODS
  }

  def step(state, batch):
    # What make_train_step does before its update: the loss and gradient, summed over devices.
    key = jax.random.wrap_key_data(state.dropout_key)
    outputs = {}
    for method, loss_fn in method_losses.items():
      if method in with_gradients:
        (loss, (terms, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, state, batch, key, key
        )
      else:
        (loss, (terms, _)), grads = loss_fn(state.params, state, batch, key, key), {}
      terms = {k: terms[k] for k in ('ce', 'guidance')}
      outputs[method] = jax.tree.map(
        lambda x: step_lib.global_sum(x, axis_name), (grads, {'loss': loss, **terms})
      )
    return {m: g for m, (g, _) in outputs.items()}, {m: t for m, (_, t) in outputs.items()}

  return model, state, step


def _params_after_steps(config, num_steps=2):
  model = _small_model()
  state = training.create_train_state(
    config, model, (steps.IMAGE, steps.IMAGE, 3), 10, jax.random.key(0)
  )
  step = jax.jit(training.make_train_step(model, step_lib.StepConfig.from_config(config)))
  for seed in range(num_steps):
    state, _ = step(state, steps.batch(seed=seed))
  return jax.device_get((state.params, state.batch_stats))


def test_care_ignores_every_guidance_key_bit_for_bit():
  """CARE's step (the default) reads care.* alone: the guidance keys change no bit.

  (The step of a default config was also checked bit for bit against the step of commit
  2b2d06c, before guidance existed, on this model and batches.)
  """
  default = step_lib.StepConfig.from_config(steps.make_config())
  for field in _GUIDANCE_FIELDS:
    assert getattr(default, field) == getattr(step_lib.StepConfig(), field), field
  changed = _config('care', weight=5.0, classes='predicted', normalize='maxabs')
  changed.guidance.stop_gradient_weights = False
  chex.assert_trees_all_equal(
    _params_after_steps(steps.make_config(alpha=0.5)), _params_after_steps(changed)
  )


def test_method_none_is_the_ce_step_bit_for_bit():
  chex.assert_trees_all_equal(
    _params_after_steps(steps.make_config(alpha=0.0)), _params_after_steps(_config('none'))
  )


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:Some donated buffers were not usable')
def test_every_methods_loss_and_gradient_equal_on_mesh_pmap_and_one_device():
  """The loss of every method, of the global batch split over 8 devices, on the mesh back-end
  and in the per-device step of the pmap one; the gradients of _GRADIENT_CHECKED on pmap, whose
  code sums the devices' shares itself (the mesh back-end's gradient is XLA's partition of the
  one-device program: its values suffice, and compile at a third of the cost)."""
  assert jax.device_count() == 8, 'conftest sets 8 simulated devices'
  batch = steps.batch()
  _, state, step = _all_methods_step()
  expected_grads, expected = jax.device_get(jax.jit(step)(state, batch))
  for method in METHODS:
    assert np.isfinite(expected[method]['loss']), method
    assert expected[method]['guidance'] > 0, method
  for parallel in ('mesh', 'pmap'):
    config = _config('care')
    config.parallel = parallel
    with_gradients = _GRADIENT_CHECKED if parallel == 'pmap' else ()
    model, state, step = _all_methods_step(parallel=parallel, with_gradients=with_gradients)
    runner = steps.parallel_runner(config, model, step, parallel)
    with runner.scope():
      grads, metrics = runner.train_step(runner.put_state(state), runner.put_batch(batch))
    grads, metrics = runner.fetch((grads, metrics))
    for method in METHODS:
      for key in ('loss', 'ce', 'guidance'):
        np.testing.assert_allclose(
          metrics[method][key], expected[method][key], rtol=2e-5, err_msg=f'{parallel} {method}'
        )
      if method in with_gradients:
        chex.assert_trees_all_close(
          grads[method], expected_grads[method], rtol=1e-4, atol=1e-6, custom_message=method
        )
    assert {m for m, g in grads.items() if g} == set(with_gradients)


def _multilabel_batch(batch_size=8, seed=0):
  """Multi-hot labels of 3 findings, a box per present finding on half the images."""
  rng = np.random.default_rng(seed)
  labels = (rng.random((batch_size, steps.NUM_CLASSES)) < 0.5).astype(np.float32)
  mask = np.zeros((batch_size, steps.NUM_CLASSES, steps.IMAGE, steps.IMAGE), np.float32)
  for i, k in zip(*np.nonzero(labels[: batch_size // 2])):
    y0, x0 = rng.integers(0, steps.IMAGE // 2, 2)
    mask[i, k, y0 : y0 + 8, x0 : x0 + 8] = 1.0
  return {
    'image': rng.normal(size=(batch_size, steps.IMAGE, steps.IMAGE, 3)).astype(np.float32),
    'label': labels,
    'mask': mask,
    'has_mask': mask.sum((2, 3)) > 0,
  }


@pytest.mark.slow
def test_every_method_is_finite_in_bfloat16_on_multilabel_data():
  # The gradient of RRR's double backprop, the one most exposed to bfloat16 rounding.
  _, state, step = _all_methods_step(dtype=jnp.bfloat16, task='multilabel', with_gradients=('rrr',))
  grads, metrics = jax.device_get(jax.jit(step)(state, _multilabel_batch()))
  for method in METHODS:
    for key, value in metrics[method].items():
      assert np.isfinite(value), (method, key)
    assert metrics[method]['guidance'] > 0, method
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads['rrr']))


def test_auto_weight_makes_the_term_start_equal_to_ce():
  config = _config('gradia', weight='auto')
  step_config = step_lib.StepConfig.from_config(config)
  assert step_config.auto_weight
  model = _small_model()
  state = training.create_train_state(
    config, model, (steps.IMAGE, steps.IMAGE, 3), 10, jax.random.key(0)
  )
  with pytest.raises(ValueError, match=r"config.guidance.weight = 'auto'.*calibrate_weight"):
    training.make_train_step(model, step_config)
  calibrated = step_lib.calibrate_weight(model, step_config, state, steps.batch())
  assert not calibrated.auto_weight
  _, metrics = jax.jit(training.make_train_step(model, calibrated))(state, steps.batch())
  np.testing.assert_allclose(metrics['weight'] * metrics['guidance'], metrics['ce'], rtol=1e-5)
  # A number is left as it is.
  fixed = step_lib.StepConfig.from_config(_config('gradia', weight=3.0))
  assert step_lib.calibrate_weight(model, fixed, state, steps.batch()) is fixed


def test_from_config_resolves_each_methods_official_choices():
  rrr_g = step_lib.StepConfig.from_config(_config('rrr_g'))
  assert (rrr_g.classes, rrr_g.normalize, rrr_g.stop_gradient_weights) == (
    'predicted',
    'minmax',
    True,
  )
  energy = step_lib.StepConfig.from_config(_config('energy', normalize='none'))
  assert (energy.normalize, energy.stop_gradient_weights, energy.alpha) == ('none', False, 1.0)
  gain = step_lib.StepConfig.from_config(_config('gain'))
  assert dict(gain.hyperparameters) == {'sigma': 0.5, 'omega': 10.0, 'fill': 0.0, 'ext_weight': 1.0}
  assert step_lib.StepConfig.from_config(_config('none')).alpha == 0.0
