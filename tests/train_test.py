"""Train and eval steps: loss composition, two stages, and data parallelism.

conftest.py gives this process 8 simulated CPU devices; the single-device
reference runs with plain `jax.jit` on device 0.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import attention
from care_jax import classification_loss
from care_jax import config as config_lib
from care_jax import imbalance
from care_jax import losses
from care_jax import models
from care_jax import training

NUM_CLASSES = 3
IMAGE = 32


def _config(**care):
  config = config_lib.default_config()
  config.model.name = 'tiny_cnn'
  # SGD: Adam's first update is ~lr * sign(g), which would magnify rounding
  # noise of near-zero gradients into parameter differences.
  config.train.optimizer = 'sgd'
  config.train.learning_rate = 1e-2
  config.loss.name = 'weighted_ce'
  for key, value in care.items():
    config.care[key] = value
  return config


def _batch(batch_size=16, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
  mask = np.zeros((batch_size, IMAGE, IMAGE), np.float32)
  # Boxes only on a few images, unevenly spread over the 8 shards, so a
  # per-shard mean would differ from the global one.
  boxed = np.array([0, 1, 2, 5, 13])
  for i in boxed:
    y0, x0 = rng.integers(0, IMAGE // 2, 2)
    mask[i, y0 : y0 + rng.integers(4, IMAGE // 2), x0 : x0 + rng.integers(4, IMAGE // 2)] = 1.0
  return {
    'image': rng.normal(size=(batch_size, IMAGE, IMAGE, 3)).astype(np.float32),
    'label': labels,
    'mask': mask,
    'has_mask': mask.sum((1, 2)) > 0,
  }


def _setup(config, *, parallel=None, class_weights=(0.2, 0.3, 0.5)):
  config.parallel = parallel or 'mesh'
  model = training.create_model(config, NUM_CLASSES)
  state = training.create_train_state(config, model, (IMAGE, IMAGE, 3), 10, jax.random.key(0))
  weighted_ce = classification_loss.ClassificationLoss(
    'weighted_ce', imbalance.cross_entropy, class_weights=np.asarray(class_weights, np.float32)
  )
  step = training.make_train_step(
    model,
    training.StepConfig.from_config(config),
    classification_loss=weighted_ce,
    axis_name=training.PMAP_AXIS if parallel == 'pmap' else None,
  )
  return model, state, step


def _reference_loss(model, state, batch, config, class_weights):
  """The global loss written out directly from the formulas."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  (logits, inter), _ = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
  labels = jnp.asarray(batch['label'])
  log_p = jax.nn.log_softmax(logits)
  w = jnp.asarray(class_weights)[labels]
  ce = -jnp.sum(w * log_p[jnp.arange(len(labels)), labels]) / jnp.sum(w)
  maps = attention.cam(inter['features'], state.params['head']['fc']['kernel'], labels)
  care = losses.care_loss(maps, batch['mask'], tau=config.care.tau, lam=config.care.lam)
  alpha = config.care.alpha
  return (1 - alpha) * ce + alpha * care, ce, care


def test_loss_is_the_weighted_sum_of_ce_and_the_attention_loss():
  config = _config(alpha=0.5)
  model, state, step = _setup(config)
  batch = _batch()
  _, metrics = jax.jit(step)(state, batch)
  loss, ce, care = _reference_loss(model, state, batch, config, (0.2, 0.3, 0.5))
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics['care'], care, rtol=1e-5)
  assert metrics['boxed'] == 5


def test_alpha_zero_trains_with_cross_entropy_only():
  config = _config(alpha=0.0)
  _, state, step = _setup(config)
  _, metrics = jax.jit(step)(state, _batch())
  assert 'care' not in metrics
  np.testing.assert_allclose(metrics['loss'], metrics['ce'])


def test_two_stages_share_one_compilation_and_switch_at_start_step():
  config = _config(alpha=0.5, start_step=2)
  _, state, step = _setup(config)
  traces = []

  def counted(state, batch):
    traces.append(1)
    return step(state, batch)

  jitted = jax.jit(counted)
  alphas = []
  for i in range(4):
    batch = _batch(seed=i)
    state, metrics = jitted(state, batch)
    alphas.append(float(metrics['alpha']))
    if i < 2:
      np.testing.assert_allclose(metrics['loss'], metrics['ce'], rtol=1e-6)
  assert alphas == [0.0, 0.0, 0.5, 0.5]
  assert len(traces) == 1


def test_attention_loss_gradient_reaches_the_backbone():
  config = _config(alpha=1.0)
  model, state, _ = _setup(config)
  batch = _batch()

  def care_only(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    (_, inter), _ = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
    maps = model.attention_maps(variables, inter['features'], jnp.asarray(batch['label']))
    return losses.care_loss(maps, batch['mask'])

  grads = jax.grad(care_only)(state.params)
  backbone_norm = optax_global_norm(grads['backbone'])
  assert backbone_norm > 0
  # The classifier column is a constant of the attention map (stop_gradient).
  np.testing.assert_array_equal(grads['head']['fc']['kernel'], 0.0)


def optax_global_norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree))))


def test_cam_and_grad_cam_paths_give_the_same_step():
  batch = _batch()
  results = {}
  for method in ('cam', 'grad_cam'):
    config = _config(alpha=0.5, attention=method)
    _, state, step = _setup(config)
    results[method] = jax.jit(step)(state, batch)
  chex.assert_trees_all_close(results['cam'][1], results['grad_cam'][1], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
    results['cam'][0].params, results['grad_cam'][0].params, rtol=1e-5, atol=1e-6
  )


def test_non_linear_head_uses_grad_cam():
  config = _config(alpha=0.5)
  config.model.head = 'bn_linear'
  _, state, step = _setup(config)
  _, metrics = jax.jit(step)(state, _batch())
  assert np.isfinite(metrics['care'])
  config.care.attention = 'cam'
  _, state, step = _setup(config)
  with pytest.raises(ValueError, match='GAP \\+ linear head'):
    jax.jit(step)(state, _batch())


def _single_device_step(config):
  _, state, step = _setup(config)
  new_state, metrics = jax.jit(step)(state, _batch())
  return jax.device_get(new_state), jax.device_get(metrics)


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
def test_data_parallel_step_matches_one_device(parallel):
  assert jax.device_count() == 8, 'conftest sets 8 simulated devices'
  config = _config(alpha=0.5)
  expected_state, expected_metrics = _single_device_step(config)

  config = _config(alpha=0.5)
  model, state, step = _setup(config, parallel=parallel)
  eval_step = training.make_eval_step(
    model, num_classes=NUM_CLASSES, axis_name=training.PMAP_AXIS if parallel == 'pmap' else None
  )
  runner = training.make_parallel(config, step, eval_step)
  state = runner.put_state(state)
  with runner.scope():
    state, metrics = runner.train_step(state, runner.put_batch(_batch()))
  state = runner.get_state(state)
  metrics = runner.fetch(metrics)
  for key in ('loss', 'ce', 'care', 'accuracy'):
    np.testing.assert_allclose(metrics[key], expected_metrics[key], rtol=1e-5, err_msg=key)
  chex.assert_trees_all_close(state.params, expected_state.params, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(state.batch_stats, expected_state.batch_stats, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
def test_data_parallel_eval_counts_every_valid_example_once(parallel):
  config = _config(alpha=0.5)
  model, state, step = _setup(config, parallel=parallel)
  batch = _batch()
  batch['valid'] = np.arange(16) < 11
  batch['lesion_mask'], batch['has_lesion_mask'] = batch['mask'], batch['has_mask']
  single_confusion, single_quality, single_rows = jax.jit(
    training.make_eval_step(model, num_classes=NUM_CLASSES)
  )(state, batch)
  runner = training.make_parallel(
    config,
    step,
    training.make_eval_step(
      model, num_classes=NUM_CLASSES, axis_name=training.PMAP_AXIS if parallel == 'pmap' else None
    ),
  )
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


def test_learning_rate_schedules():
  config = config_lib.default_config().train
  config.learning_rate = 1.0
  config.warmup_steps = 10
  config.schedule = 'step'
  lr = training.create_learning_rate(config, 110)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(5)), 0.5)
  np.testing.assert_allclose(float(lr(10 + 49)), 1.0)
  np.testing.assert_allclose(float(lr(10 + 51)), 0.1)
  np.testing.assert_allclose(float(lr(10 + 80)), 0.01)
  config.schedule = 'cosine'
  lr = training.create_learning_rate(config, 110)
  np.testing.assert_allclose(float(lr(60)), 0.5, atol=1e-6)
  np.testing.assert_allclose(float(lr(110)), 0.0, atol=1e-6)


def test_train_steps_import_without_tensorflow():
  # GPU images (and users' own input code) may have no TensorFlow: only
  # train_and_evaluate needs the tf.data pipeline.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  code = (
    'import sys, care_jax.train, care_jax.config; '
    'assert "tensorflow" not in sys.modules, "tensorflow was imported"'
  )
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]


def _nan_batch(seed=0):
  batch = _batch(seed=seed)
  batch['image'][3, 5, 7, 1] = np.nan
  return batch


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
def test_a_non_finite_step_is_skipped_and_counted(parallel):
  config = _config(alpha=0.5)
  model, state, step = _setup(config, parallel=parallel)
  runner = training.make_parallel(
    config,
    step,
    training.make_eval_step(
      model, num_classes=NUM_CLASSES, axis_name=training.PMAP_AXIS if parallel == 'pmap' else None
    ),
  )
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
    placed, _ = runner.train_step(placed, runner.put_batch(_batch(seed=1)))
  after = runner.get_state(placed)
  assert int(after.consecutive_nonfinite) == 0 and int(after.skipped_steps) == 1
  assert not np.array_equal(
    after.params['head']['fc']['kernel'], before.params['head']['fc']['kernel']
  )


def test_finite_steps_equal_the_plain_optax_update():
  config = _config(alpha=0.5)
  model, state, step = _setup(config)
  batch = _batch()
  new_state, _ = jax.jit(step)(state, batch)

  @jax.jit
  def reference(state):
    def loss(params):
      return _reference_loss(model, state.replace(params=params), batch, config, (0.2, 0.3, 0.5))[0]

    return state.apply_gradients(grads=jax.grad(loss)(state.params))

  expected = reference(state)
  chex.assert_trees_all_close(new_state.params, expected.params, rtol=1e-5, atol=1e-6)


def test_consecutive_non_finite_steps_freeze_the_state_and_stop_with_a_diagnostic():
  config = _config(alpha=0.5)
  config.train.max_consecutive_nonfinite = 2
  _, state, step = _setup(config)
  jitted = jax.jit(step)
  recent = []
  for i, batch in enumerate([_batch(seed=9), _nan_batch(1), _nan_batch(2), _batch(seed=3)]):
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


# ---------------------------------------------------------------- class-weighted losses in the step

TRAIN_COUNTS = np.array([60, 25, 5])


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _np_effective_number_weights(counts, beta):
  """Cui et al. 2019: (1 - beta) / (1 - beta^n), normalised to sum K."""
  w = (1.0 - beta) / (1.0 - np.power(beta, np.asarray(counts, np.float64)))
  return w / w.sum() * len(counts)


def _np_official_ce(name, fields, logits, labels):
  """The classification term of a batch, written from each loss's official code."""
  rows = np.arange(len(labels))
  log_p = _np_log_softmax(logits)[rows, labels]
  beta = fields.get('beta', 0.9999)
  inverse = (1.0 / TRAIN_COUNTS) / np.sum(1.0 / TRAIN_COUNTS)
  if name == 'class_balanced':  # Cui et al.: mean over the batch of w_y CE (divide by B)
    return np.mean(_np_effective_number_weights(TRAIN_COUNTS, beta)[labels] * -log_p)
  if name == 'focal':  # Lin et al.: mean over the batch of -alpha_y (1 - p)^gamma log p
    alpha = {
      'inverse_frequency': inverse,
      'class_balanced': _np_effective_number_weights(TRAIN_COUNTS, beta),
    }[fields['focal_alpha']]
    return np.mean(alpha[labels] * -((1.0 - np.exp(log_p)) ** 2) * log_p)
  if name == 'weighted_ce':  # CARE: nn.CrossEntropyLoss(weight=w), sum w l / sum w
    w = inverse[labels]
    return np.sum(w * -log_p) / np.sum(w)
  if name == 'ldam_drw':  # LDAM-DRW, DRW phase: F.cross_entropy(s * (z - m_y), weight=w)
    margins = TRAIN_COUNTS**-0.25
    margins = margins * (0.5 / margins.max())
    z = np.asarray(logits, np.float64).copy()
    z[rows, labels] -= margins[labels]
    ldam = -_np_log_softmax(30.0 * z)[rows, labels]
    w = _np_effective_number_weights(TRAIN_COUNTS, beta)[labels]
    return np.sum(w * ldam) / np.sum(w)
  raise AssertionError(name)


def _loss_setup(name, fields, head, *, parallel=None):
  config = _config(alpha=0.5)
  config.model.head = head
  config.loss.name = name
  config.parallel = parallel or 'mesh'
  model = training.create_model(config, NUM_CLASSES)
  state = training.create_train_state(config, model, (IMAGE, IMAGE, 3), 10, jax.random.key(0))
  loss = classification_loss.make_classification_loss(
    name, class_counts=TRAIN_COUNTS, num_steps=10, **fields
  )
  step = training.make_train_step(
    model,
    training.StepConfig.from_config(config),
    classification_loss=loss,
    axis_name=training.PMAP_AXIS if parallel == 'pmap' else None,
  )
  return config, model, state, step


_STEP_LOSS_CASES = [
  ('class_balanced', {'beta': 0.99}, 'bn_linear'),
  ('focal', {'focal_alpha': 'inverse_frequency'}, 'default'),
  ('focal', {'focal_alpha': 'class_balanced', 'beta': 0.99}, 'default'),
  ('weighted_ce', {}, 'default'),
  # drw_start = 0: the DRW phase from step 0; 'default' is the cosine head 'normed_linear'.
  ('ldam_drw', {'drw_start': 0.0, 'beta': 0.99}, 'default'),
]


@pytest.mark.parametrize('name, fields, head', _STEP_LOSS_CASES)
def test_step_ce_term_is_the_official_batch_loss(name, fields, head):
  """What `_loss` finally computes: sum w l / B (CB, focal alpha) or / sum w (CSL, DRW)."""
  _, model, state, step = _loss_setup(name, fields, head)
  if name == 'ldam_drw':
    assert isinstance(model.head, models.NormedLinearHead)
  batch = _batch()
  _, metrics = jax.jit(step)(state, batch)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  (logits, _), _ = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
  expected = _np_official_ce(name, fields, logits, batch['label'])
  np.testing.assert_allclose(metrics['ce'], expected, rtol=2e-5)


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
@pytest.mark.parametrize('case', [0, 4], ids=['class_balanced_bn_linear', 'ldam_drw_normed'])
def test_data_parallel_class_weighted_step_matches_one_device(parallel, case):
  """Batch means over the global batch, and the train-mode Grad-CAM of BatchNorm/cosine heads."""
  name, fields, head = _STEP_LOSS_CASES[case]
  _, _, state, step = _loss_setup(name, fields, head)
  expected_state, expected = jax.device_get(jax.jit(step)(state, _batch()))

  config, model, state, step = _loss_setup(name, fields, head, parallel=parallel)
  eval_step = training.make_eval_step(
    model, num_classes=NUM_CLASSES, axis_name=training.PMAP_AXIS if parallel == 'pmap' else None
  )
  runner = training.make_parallel(config, step, eval_step)
  with runner.scope():
    placed, metrics = runner.train_step(runner.put_state(state), runner.put_batch(_batch()))
  metrics = runner.fetch(metrics)
  for key in ('loss', 'ce', 'care', 'accuracy'):
    np.testing.assert_allclose(metrics[key], expected[key], rtol=1e-5, err_msg=key)
  chex.assert_trees_all_close(
    runner.get_state(placed).params, expected_state.params, rtol=1e-5, atol=1e-5
  )


def test_grad_cam_of_the_step_uses_the_heads_training_pass_and_dropout_key():
  """A VGG head (dropout): the attention loss is that of the train-mode Grad-CAM, same masks."""
  model = models.Classifier(
    backbone=models.VGG(blocks=((8,), (8,), (16,), (16,), (16,))),
    head=models.VGGHead(num_classes=NUM_CLASSES, hidden_size=32),
  )
  config = _config(alpha=0.5, attention='auto')
  state = training.create_train_state(config, model, (IMAGE, IMAGE, 3), 10, jax.random.key(0))
  step = training.make_train_step(model, training.StepConfig.from_config(config))
  batch = _batch()
  _, metrics = jax.jit(step)(state, batch)

  # train_step's dropout key of this step, written out.
  key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  (logits, inter), _ = model.apply(
    variables, batch['image'], train=True, mutable=['batch_stats'], rngs={'dropout': key}
  )
  labels = jnp.asarray(batch['label'])

  def head(f):
    return model.apply(
      variables, f, train=True, method=models.Classifier.apply_head, rngs={'dropout': key}
    )

  head_logits, vjp = jax.vjp(head, inter['features'])
  np.testing.assert_allclose(head_logits, logits, rtol=1e-5, atol=1e-6)  # the same masks
  (grads,) = vjp(jax.nn.one_hot(labels, NUM_CLASSES))
  maps = jnp.einsum('bhwc,bc->bhw', inter['features'], grads.mean(axis=(1, 2)))
  maps = attention.minmax_normalize(maps)
  care = losses.care_loss(maps, batch['mask'], tau=config.care.tau, lam=config.care.lam)
  np.testing.assert_allclose(metrics['care'], care, rtol=1e-4, atol=1e-6)
  eval_maps = model.attention_maps(variables, inter['features'], labels)
  eval_care = losses.care_loss(eval_maps, batch['mask'], tau=config.care.tau, lam=config.care.lam)
  assert abs(float(eval_care) - float(care)) > 1e-4  # eval-mode maps would give another loss
