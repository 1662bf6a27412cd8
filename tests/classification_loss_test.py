"""The train step's classification term: make_classification_loss and the weighted mean of its
(values, weights) against the published batch loss of each name, its checks, its table of
builders, and the multi-label task."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import classification_loss
from care_jax import imbalance
from tests.helpers import loss_references as ref


@pytest.mark.parametrize('name, fields', ref.SEAM_CASES)
def test_classification_loss_weighted_mean_is_the_published_batch_loss(name, fields):
  scale = 0.3 if name == 'ldam_drw' else 3.0  # s = 30 multiplies the logits.
  logits, labels = ref.batch(13, scale=scale)
  loss = jax.jit(ref.make_loss(name, num_steps=100, **fields))
  for step in (0, 79, 80, 99):  # DRW starts at 0.8 * 100.
    values, weights = loss(jnp.asarray(logits), jnp.asarray(labels), jnp.int32(step))
    assert values.shape == weights.shape == (len(labels),)
    assert values.dtype == weights.dtype == jnp.float32
    np.testing.assert_allclose(
      float(jnp.sum(weights * values) / jnp.sum(weights)),
      ref.np_batch_loss(name, logits, labels, step, 100, **fields),
      rtol=2e-5,
    )


def test_ce_and_weighted_ce_are_bitwise_todays_train_step():
  logits, labels = ref.batch(14)
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  class_weights = imbalance.inverse_frequency_weights(ref.COUNTS)
  # What make_train_step computed before the seam.
  ce = imbalance.cross_entropy(logits, labels)
  for name, example_weight in (
    ('ce', jnp.ones_like(ce)),
    ('weighted_ce', jnp.asarray(class_weights, jnp.float32)[labels]),
  ):
    loss = ref.make_loss(name)
    values, weights = loss(logits, labels, jnp.int32(0))
    np.testing.assert_array_equal(values, ce)
    np.testing.assert_array_equal(weights, example_weight)
    expected = jnp.sum(example_weight * ce) / jnp.sum(example_weight)
    assert (
      np.asarray(jnp.sum(weights * values) / jnp.sum(weights)).tobytes()
      == np.asarray(expected).tobytes()
    )


def test_drw_switch_is_traced_one_compilation_for_both_phases():
  logits, labels = ref.batch(15, scale=0.3)
  loss = ref.make_loss('ldam_drw')
  traces = []

  @jax.jit
  def batch_loss(z, y, step):
    traces.append(1)
    values, weights = loss(z, y, step)
    return jnp.sum(weights * values) / jnp.sum(weights)

  before = batch_loss(logits, labels, jnp.int32(7))
  after = batch_loss(logits, labels, jnp.int32(8))
  assert len(traces) == 1
  assert float(before) != pytest.approx(float(after))
  assert float(after) == pytest.approx(
    ref.np_batch_loss('ldam_drw', logits, labels, 8, 10), rel=2e-5
  )


def test_drw_start_one_never_reweights_plain_ldam():
  logits, labels = ref.batch(16, scale=0.3)
  loss = ref.make_loss('ldam_drw', drw_start=1.0)
  _, weights = loss(logits, labels, jnp.int32(9))
  np.testing.assert_array_equal(weights, np.ones(len(labels)))


def test_classification_loss_accepts_bfloat16_logits_and_has_finite_gradients():
  logits, labels = ref.batch(17, scale=0.3)
  for name, fields in ref.SEAM_CASES:
    loss = ref.make_loss(name, **fields)

    def batch_loss(z, loss=loss):
      values, weights = loss(z, labels, jnp.int32(9))
      return jnp.sum(weights * values) / jnp.sum(weights)

    bf16 = jnp.asarray(logits, jnp.bfloat16)
    value, grad = jax.value_and_grad(batch_loss)(bf16)
    assert value.dtype == jnp.float32, name
    np.testing.assert_allclose(value, batch_loss(bf16.astype(jnp.float32)), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad, np.float32))), name


def test_predict_logits_is_identity_without_posthoc_and_adjusts_with_it():
  logits, _ = ref.batch(18)
  plain = ref.make_loss()
  np.testing.assert_array_equal(plain.predict_logits(logits), logits)
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  assert plain.predict_logits(bf16).dtype == jnp.bfloat16  # untouched
  adjusted = ref.make_loss('focal', posthoc_tau=0.5)
  np.testing.assert_allclose(
    jax.jit(adjusted.predict_logits)(logits),
    logits - 0.5 * np.log(ref.COUNTS / ref.COUNTS.sum()),
    rtol=1e-6,
    atol=1e-6,
  )


def test_make_classification_loss_defaults_are_the_published_ones():
  parameters = inspect.signature(classification_loss.make_classification_loss).parameters
  assert {key: parameters[key].default for key in ref.PUBLISHED_DEFAULTS} == ref.PUBLISHED_DEFAULTS
  for key in ('class_counts', 'num_steps', *ref.PUBLISHED_DEFAULTS):
    assert parameters[key].kind is inspect.Parameter.KEYWORD_ONLY, key
  assert classification_loss.LOSS_NAMES == (
    'ce',
    'weighted_ce',
    'focal',
    'class_balanced',
    'logit_adjusted',
    'balanced_softmax',
    'ldam_drw',
  )
  assert classification_loss.FOCAL_ALPHAS == ('inverse_frequency', 'class_balanced')
  for name in classification_loss.LOSS_NAMES:
    for focal_alpha in (None, *classification_loss.FOCAL_ALPHAS):
      assert ref.make_loss(name, focal_alpha=focal_alpha).name == name


@pytest.mark.parametrize('key, value', ref.BAD_ARGUMENTS)
def test_make_classification_loss_names_the_bad_argument(key, value):
  arguments = {'name': 'ce', key: value}
  with pytest.raises(ValueError, match=rf'^{key} = {value!r}: must'):
    classification_loss.make_classification_loss(**arguments, class_counts=ref.COUNTS, num_steps=10)


def test_make_classification_loss_checks_steps_and_counts():
  with pytest.raises(ValueError, match='num_steps must be >= 1, got 0'):
    ref.make_loss(num_steps=0)
  with pytest.raises(ValueError, match='class index 1 has count 0'):
    classification_loss.make_classification_loss('ce', class_counts=[3, 0], num_steps=10)


def _hyperparameters(**fields):
  return {'name': 'ce', **ref.PUBLISHED_DEFAULTS, **fields}


def test_check_loss_hyperparameters_passes_the_defaults_and_takes_only_keywords():
  assert classification_loss.check_loss_hyperparameters(**_hyperparameters()) is None
  parameters = inspect.signature(classification_loss.check_loss_hyperparameters).parameters
  assert list(parameters) == ['name', *ref.PUBLISHED_DEFAULTS]
  for parameter in parameters.values():
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, parameter.name
    assert parameter.default is inspect.Parameter.empty, parameter.name


@pytest.mark.parametrize('key, value', ref.BAD_ARGUMENTS)
def test_check_loss_hyperparameters_names_the_bad_argument_and_its_value(key, value):
  with pytest.raises(ValueError, match=rf'^{key} = {re.escape(repr(value))}: must'):
    classification_loss.check_loss_hyperparameters(**_hyperparameters(**{key: value}))


def test_every_loss_name_has_a_builder_in_its_table():
  assert tuple(classification_loss._LOSSES) == classification_loss.LOSS_NAMES
  assert tuple(classification_loss._MULTILABEL_LOSSES) == classification_loss.MULTILABEL_LOSS_NAMES
  # A multi-label name must pass the check of the names (the table of the multi-class losses).
  assert set(classification_loss.MULTILABEL_LOSS_NAMES) <= set(classification_loss.LOSS_NAMES)
  for name in classification_loss.LOSS_NAMES:
    loss = ref.make_loss(name)
    assert isinstance(loss, classification_loss.ClassificationLoss)
    assert (loss.name, loss.task) == (name, 'multiclass')
  for name in classification_loss.MULTILABEL_LOSS_NAMES:
    loss = classification_loss.make_classification_loss(
      name, class_counts=[3, 5], num_steps=10, task='multilabel', num_examples=10
    )
    assert (loss.name, loss.task) == (name, 'multilabel')


def test_an_unknown_loss_name_is_refused_naming_the_valid_ones():
  names = re.escape(repr(classification_loss.LOSS_NAMES))
  with pytest.raises(ValueError, match=rf"^name = 'hinge': must be one of {names}$"):
    ref.make_loss('hinge')
  with pytest.raises(ValueError, match=r"^task = 'ranking': must be one of \('multiclass'"):
    ref.make_loss('ce', task='ranking')


# The multi-label task.


def test_multilabel_losses_average_each_example_over_its_classes():
  z, y = ref.random_multilabel((6, 4), seed=2)
  counts = y.sum(0).astype(int) + 1  # Every class positive at least once, never always.
  num_examples = 12
  expected = {
    'ce': ref.np_bce(z, y).mean(-1),
    'weighted_ce': ref.np_bce(z, y, (num_examples - counts) / counts).mean(-1),
    'focal': ref.np_sigmoid_focal(z, y, 2.0).mean(-1),
  }
  for name, want in expected.items():
    loss = classification_loss.make_classification_loss(
      name, class_counts=counts, num_steps=10, task='multilabel', num_examples=num_examples
    )
    values, weights = loss(z, y, step=0)
    np.testing.assert_allclose(values, want, rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(weights, 1.0)
    assert loss.task == 'multilabel'


def test_masked_class_mean_is_the_numpy_mean_over_counted_classes_and_zero_when_none():
  rng = np.random.default_rng(4)
  values = rng.uniform(0, 3, (5, 4)).astype(np.float32)
  mask = rng.uniform(size=(5, 4)) < 0.6
  mask[0] = False  # A row with every class ignored.
  mask[1] = True
  mean, share = classification_loss.masked_class_mean(values, mask)
  counted = mask.sum(-1)
  want = np.where(counted > 0, (values * mask).sum(-1) / np.maximum(counted, 1), 0.0)
  np.testing.assert_allclose(mean, want, rtol=1e-6)
  np.testing.assert_allclose(share, counted / 4)
  np.testing.assert_allclose(mean[1], values[1].mean(), rtol=1e-6)
  # The all-masked row has no NaN in its gradient either (the double where of safe_mean).
  grad = jax.grad(
    lambda v: classification_loss.masked_class_mean(v, mask.astype(np.float32))[0].sum()
  )
  gradient = grad(jnp.asarray(values))
  assert np.all(np.isfinite(gradient)) and np.all(gradient[0] == 0)
  np.testing.assert_array_equal(gradient[~mask], 0.0)
  with pytest.raises(ValueError, match=r'label_mask must have the shape \[B, K\] = \(5, 4\)'):
    classification_loss.masked_class_mean(values, mask[:, :3])


def test_a_label_mask_leaves_ignored_entries_out_of_the_multilabel_batch_loss():
  # CheXpert's U-Ignore: the batch loss is the mean over the counted (example, class) entries.
  z, y = ref.random_multilabel((6, 4), seed=3)
  mask = (np.random.default_rng(3).uniform(size=(6, 4)) < 0.7).astype(np.float32)
  mask[2] = 0.0  # An image whose every finding is uncertain contributes nothing.
  counts, num_examples = y.sum(0).astype(int) + 1, 12
  elementwise = {
    'ce': ref.np_bce(z, y),
    'weighted_ce': ref.np_bce(z, y, (num_examples - counts) / counts),
    'focal': ref.np_sigmoid_focal(z, y, 2.0),
  }
  for name, entries in elementwise.items():
    loss = classification_loss.make_classification_loss(
      name, class_counts=counts, num_steps=10, task='multilabel', num_examples=num_examples
    )
    values, weights = loss(z, y, step=0, label_mask=mask)
    batch_loss = np.sum(np.asarray(weights) * np.asarray(values)) / np.sum(weights)
    want = (entries * mask).sum() / mask.sum()
    np.testing.assert_allclose(batch_loss, want, rtol=1e-5, err_msg=name)
    assert weights[2] == 0 and values[2] == 0
    # A mask of ones is the unmasked loss.
    ones, ones_weights = loss(z, y, step=0, label_mask=np.ones_like(mask, bool))
    np.testing.assert_allclose(ones, loss(z, y, step=0)[0], rtol=1e-6, err_msg=name)
    np.testing.assert_array_equal(ones_weights, 1.0)


def test_a_label_mask_is_refused_by_the_multiclass_losses():
  loss = classification_loss.make_classification_loss('ce', class_counts=[3, 4], num_steps=10)
  with pytest.raises(ValueError, match="label_mask: the multiclass loss 'ce' takes no per-label"):
    loss(jnp.zeros((2, 2)), jnp.array([0, 1]), step=0, label_mask=jnp.ones((2, 2)))


@pytest.mark.parametrize(
  'kwargs,match',
  [
    ({'name': 'ldam_drw'}, 'softmax loss over exclusive classes'),
    ({'name': 'focal', 'focal_alpha': 'inverse_frequency'}, 'focal_alpha'),
    ({'name': 'ce', 'posthoc_tau': 1.0}, 'posthoc_tau'),
    ({'name': 'weighted_ce', 'num_examples': None}, 'needs num_examples'),
  ],
)
def test_multilabel_task_refuses_what_it_cannot_take(kwargs, match):
  kwargs = {'num_examples': 10, **kwargs}
  with pytest.raises(ValueError, match=match):
    classification_loss.make_classification_loss(
      class_counts=np.array([3, 4]), num_steps=10, task='multilabel', **kwargs
    )
