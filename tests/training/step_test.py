"""The pure train and eval steps: the loss is (1 - alpha) CE + alpha CARE, two stages in one
compilation, the attention maps of each head, the class-weighted CE terms, the step config."""

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from care_jax import attention
from care_jax import classification_loss
from care_jax import config as config_lib  # noqa: E402
from care_jax import losses
from care_jax import metrics
from care_jax import models
from care_jax import training  # noqa: E402
from tests.helpers import steps


def test_loss_is_the_weighted_sum_of_ce_and_the_attention_loss():
  config = steps.make_config(alpha=0.5)
  model, state, step = steps.setup(config)
  batch = steps.batch()
  _, metrics = jax.jit(step)(state, batch)
  loss, ce, care = steps.reference_loss(model, state, batch, config, (0.2, 0.3, 0.5))
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics['care'], care, rtol=1e-5)
  assert metrics['boxed'] == 5


def test_alpha_zero_trains_with_cross_entropy_only():
  config = steps.make_config(alpha=0.0)
  _, state, step = steps.setup(config)
  _, metrics = jax.jit(step)(state, steps.batch())
  assert 'care' not in metrics
  np.testing.assert_allclose(metrics['loss'], metrics['ce'])


def test_two_stages_share_one_compilation_and_switch_at_start_step():
  config = steps.make_config(alpha=0.5, start_step=2)
  _, state, step = steps.setup(config)
  traces = []

  def counted(state, batch):
    traces.append(1)
    return step(state, batch)

  jitted = jax.jit(counted)
  alphas = []
  for i in range(4):
    batch = steps.batch(seed=i)
    state, metrics = jitted(state, batch)
    alphas.append(float(metrics['alpha']))
    if i < 2:
      np.testing.assert_allclose(metrics['loss'], metrics['ce'], rtol=1e-6)
  assert alphas == [0.0, 0.0, 0.5, 0.5]
  assert len(traces) == 1


def test_attention_loss_gradient_reaches_the_backbone():
  config = steps.make_config(alpha=1.0)
  model, state, _ = steps.setup(config)
  batch = steps.batch()

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
  batch = steps.batch()
  results = {}
  for method in ('cam', 'grad_cam'):
    config = steps.make_config(alpha=0.5, attention=method)
    _, state, step = steps.setup(config)
    results[method] = jax.jit(step)(state, batch)
  chex.assert_trees_all_close(results['cam'][1], results['grad_cam'][1], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
    results['cam'][0].params, results['grad_cam'][0].params, rtol=1e-5, atol=1e-6
  )


def test_non_linear_head_uses_grad_cam():
  config = steps.make_config(alpha=0.5)
  config.model.head = 'bn_linear'
  _, state, step = steps.setup(config)
  _, metrics = jax.jit(step)(state, steps.batch())
  assert np.isfinite(metrics['care'])
  config.care.attention = 'cam'
  _, state, step = steps.setup(config)
  with pytest.raises(ValueError, match='GAP \\+ linear head'):
    jax.jit(step)(state, steps.batch())


# ---------------------------------------------------------------- class-weighted losses in the step


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
  inverse = (1.0 / steps.TRAIN_COUNTS) / np.sum(1.0 / steps.TRAIN_COUNTS)
  if name == 'class_balanced':  # Cui et al.: mean over the batch of w_y CE (divide by B)
    return np.mean(_np_effective_number_weights(steps.TRAIN_COUNTS, beta)[labels] * -log_p)
  if name == 'focal':  # Lin et al.: mean over the batch of -alpha_y (1 - p)^gamma log p
    alpha = {
      'inverse_frequency': inverse,
      'class_balanced': _np_effective_number_weights(steps.TRAIN_COUNTS, beta),
    }[fields['focal_alpha']]
    return np.mean(alpha[labels] * -((1.0 - np.exp(log_p)) ** 2) * log_p)
  if name == 'weighted_ce':  # CARE: nn.CrossEntropyLoss(weight=w), sum w l / sum w
    w = inverse[labels]
    return np.sum(w * -log_p) / np.sum(w)
  if name == 'ldam_drw':  # LDAM-DRW, DRW phase: F.cross_entropy(s * (z - m_y), weight=w)
    margins = steps.TRAIN_COUNTS**-0.25
    margins = margins * (0.5 / margins.max())
    z = np.asarray(logits, np.float64).copy()
    z[rows, labels] -= margins[labels]
    ldam = -_np_log_softmax(30.0 * z)[rows, labels]
    w = _np_effective_number_weights(steps.TRAIN_COUNTS, beta)[labels]
    return np.sum(w * ldam) / np.sum(w)
  raise AssertionError(name)


@pytest.mark.parametrize('name, fields, head', steps.STEP_LOSS_CASES)
def test_step_ce_term_is_the_official_batch_loss(name, fields, head):
  """What `_loss` finally computes: sum w l / B (CB, focal alpha) or / sum w (CSL, DRW)."""
  _, model, state, step = steps.loss_setup(name, fields, head)
  if name == 'ldam_drw':
    assert isinstance(model.head, models.NormedLinearHead)
  batch = steps.batch()
  _, metrics = jax.jit(step)(state, batch)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  (logits, _), _ = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
  expected = _np_official_ce(name, fields, logits, batch['label'])
  np.testing.assert_allclose(metrics['ce'], expected, rtol=2e-5)


def test_grad_cam_of_the_step_uses_the_heads_training_pass_and_dropout_key():
  """A VGG head (dropout): the attention loss is that of the train-mode Grad-CAM, same masks."""
  model = models.Classifier(
    backbone=models.VGG(blocks=((8,), (8,), (16,), (16,), (16,))),
    head=models.VGGHead(num_classes=steps.NUM_CLASSES, hidden_size=32),
  )
  config = steps.make_config(alpha=0.5, attention='auto')
  state = training.create_train_state(
    config, model, (steps.IMAGE, steps.IMAGE, 3), 10, jax.random.key(0)
  )
  step = training.make_train_step(model, training.StepConfig.from_config(config))
  batch = steps.batch()
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
  (grads,) = vjp(jax.nn.one_hot(labels, steps.NUM_CLASSES))
  maps = jnp.einsum('bhwc,bc->bhw', inter['features'], grads.mean(axis=(1, 2)))
  maps = attention.minmax_normalize(maps)
  care = losses.care_loss(maps, batch['mask'], tau=config.care.tau, lam=config.care.lam)
  np.testing.assert_allclose(metrics['care'], care, rtol=1e-4, atol=1e-6)
  eval_maps = model.attention_maps(variables, inter['features'], labels)
  eval_care = losses.care_loss(eval_maps, batch['mask'], tau=config.care.tau, lam=config.care.lam)
  assert abs(float(eval_care) - float(care)) > 1e-4  # eval-mode maps would give another loss


# ---------------------------------------------------------------- the step config
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_step_config_reads_on_device_from_the_config():
  config = config_lib.default_config()
  step_config = training.StepConfig.from_config(config)
  assert not step_config.device_augment
  assert step_config.mean == (0.5, 0.5, 0.5) and step_config.std == (0.5, 0.5, 0.5)
  with config.unlocked():
    config.data.augment.on_device = True
    config.data.augment.enabled = True
    config.data.mean, config.data.std = MEAN, STD
  step_config = training.StepConfig.from_config(config)
  assert step_config.device_augment and step_config.mean == MEAN and step_config.std == STD
  hash(step_config)  # Part of the jit cache key.
  with config.unlocked():
    config.data.augment.enabled = False
  assert not training.StepConfig.from_config(config).device_augment


def test_a_label_mask_leaves_ignored_findings_out_of_the_multilabel_step():
  # CheXpert's U-Ignore: the step's CE is the BCE mean over the counted (image, finding) entries.
  config = steps.make_config(alpha=0.0)
  config.task = 'multilabel'
  model = training.create_model(config, steps.NUM_CLASSES)
  state = training.create_train_state(config, model, (16, 16, 3), 10, jax.random.key(0))
  loss = classification_loss.make_classification_loss(
    'ce', class_counts=[1] * steps.NUM_CLASSES, num_steps=10, task='multilabel'
  )
  step_config = training.StepConfig.from_config(config)
  step = jax.jit(training.make_train_step(model, step_config, classification_loss=loss))
  rng = np.random.default_rng(0)
  shape = (6, steps.NUM_CLASSES)
  batch = {
    'image': rng.normal(size=(6, 16, 16, 3)).astype(np.float32),
    'label': (rng.uniform(size=shape) < 0.4).astype(np.float32),
    'mask': np.zeros((*shape, 16, 16), np.uint8),
    'has_mask': np.zeros(shape, bool),
    'label_mask': (rng.uniform(size=shape) < 0.6).astype(np.float32),
  }
  batch['label_mask'][0] = 0.0  # Every finding of image 0 ignored.
  (logits, _), _ = model.apply(
    {'params': state.params, 'batch_stats': state.batch_stats},
    batch['image'],
    train=True,
    mutable=['batch_stats'],
  )
  z, y, m = np.asarray(logits, np.float64), batch['label'], batch['label_mask']
  bce = np.logaddexp(0.0, z) - y * z
  new_state, metrics = step(state, batch)
  np.testing.assert_allclose(metrics['ce'], (bce * m).sum() / m.sum(), rtol=1e-5)
  # The ignored labels do not matter: flipped, the update is the same.
  flipped = dict(batch, label=np.where(m > 0, y, 1.0 - y))
  flipped_state, _ = step(state, flipped)
  chex.assert_trees_all_close(flipped_state.params, new_state.params)
  # A batch with every label ignored has no loss, and no NaN.
  _, none = step(state, dict(batch, label_mask=np.zeros(shape, np.float32)))
  assert none['ce'] == 0.0


def test_eval_step_scores_the_energy_in_the_box_of_the_raw_grad_cam_map():
  """Rao et al.'s energy pointing game on the unnormalised map of the true class (the min-max
  map's energy would be its mass inside), per example in the eval step's rows."""
  config = steps.make_config(alpha=0.5)
  model, state, _ = steps.setup(config)
  batch = steps.batch()
  batch['valid'] = np.ones(16, bool)
  batch['lesion_mask'], batch['has_lesion_mask'] = batch['mask'], batch['has_mask']
  _, quality, rows = jax.jit(training.make_eval_step(model, num_classes=steps.NUM_CLASSES))(
    state, batch
  )

  @jax.jit
  def reference(variables, batch):
    _, intermediates = model.apply(variables, batch['image'], train=False)
    head = lambda f: model.apply(variables, f, method=models.Classifier.apply_head)
    raw = attention.grad_cam(head, intermediates['features'], batch['label'], normalize=False)
    return metrics.energy_in_box(raw, batch['mask'])

  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  energy = np.asarray(reference(variables, batch))
  np.testing.assert_array_equal(rows['energy_counted'], batch['has_mask'])
  np.testing.assert_allclose(rows['energy_in_box'], energy, rtol=1e-5, atol=1e-7)
  mass_inside = quality.compute()['mass_inside']
  assert abs(energy[batch['has_mask']].mean() - mass_inside) > 1e-3
