"""Imbalance losses against independent numpy implementations of their published formulas."""

import importlib
import inspect
import re
import types
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from care_jax import classification_loss
from care_jax import imbalance

COUNTS = np.array([500, 120, 30, 8])
K = len(COUNTS)


def _batch(seed=0, batch=16, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.standard_normal((batch, K))).astype(np.float32)
  labels = np.concatenate([np.arange(K), rng.integers(0, K, batch - K)]).astype(np.int32)
  return logits, labels


# Independent numpy references (float64), written from the papers' formulas.


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(axis=1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def np_ce(z, y):
  return -np_log_softmax(z)[np.arange(len(y)), y]


def np_focal(z, y, gamma, alpha=None):
  """Lin et al. 2017, Eq. 5: -alpha_t (1 - p_t)^gamma log p_t."""
  p = np.exp(np_log_softmax(z))[np.arange(len(y)), y]
  a = 1.0 if alpha is None else np.asarray(alpha, np.float64)[y]
  return -a * (1.0 - p) ** gamma * np.log(p)


def np_class_balanced_weights(n, beta):
  """Cui et al. 2019: (1 - beta) / (1 - beta^n), normalised to sum K."""
  n = np.asarray(n, np.float64)
  w = (1.0 - beta) / (1.0 - np.power(beta, n))
  return w / w.sum() * len(n)


def np_logit_adjusted(z, y, priors, tau):
  """Menon et al. 2021, Eq. 10: -log softmax(z + tau log pi)_y."""
  return np_ce(np.asarray(z, np.float64) + tau * np.log(priors), y)


def np_balanced_softmax(z, y, n):
  """Ren et al. 2020, Eq. 4: -log( n_y e^{z_y} / sum_j n_j e^{z_j} )."""
  e = np.asarray(n, np.float64) * np.exp(np.asarray(z, np.float64))
  return -np.log(e[np.arange(len(y)), y] / e.sum(axis=1))


def np_ldam_margins(n, max_margin):
  """Cao et al. 2019, Eq. 12: C / n_j^{1/4}, C chosen so the largest margin is max_margin."""
  raw = 1.0 / np.asarray(n, np.float64) ** 0.25
  return raw * max_margin / raw.max()


def np_ldam(z, y, margins, s):
  """Cao et al. 2019, Eq. 13 with the logit scale s: the true logit lowered by m_y."""
  z = np.array(z, np.float64)
  z[np.arange(len(y)), y] -= np.asarray(margins)[y]
  return np_ce(s * z, y)


def np_inverse_frequency(n):
  w = 1.0 / np.asarray(n, np.float64)
  return w / w.sum()


def _weighted_mean(values, weights):
  """PyTorch's cross_entropy(weight=w) reduction: sum_i w_i l_i / sum_i w_i."""
  return float(np.sum(np.asarray(weights) * np.asarray(values)) / np.sum(weights))


def _batch_mean(values, weights):
  """Cui et al.'s and Lin et al.'s reduction of class-weighted losses: sum_i w_i l_i / B."""
  return float(np.sum(np.asarray(weights) * np.asarray(values)) / len(values))


# The pure losses.


@pytest.mark.parametrize('gamma', [0.5, 1.0, 2.0, 5.0])
def test_focal_loss_matches_lin_et_al(gamma):
  logits, labels = _batch()
  np.testing.assert_allclose(
    imbalance.focal_loss(logits, labels, gamma=gamma),
    np_focal(logits, labels, gamma),
    rtol=1e-5,
    atol=1e-7,
  )


def test_focal_loss_with_class_alpha():
  logits, labels = _batch(1)
  alpha = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
  np.testing.assert_allclose(
    imbalance.focal_loss(logits, labels, gamma=2.0, alpha=alpha),
    np_focal(logits, labels, 2.0, alpha),
    rtol=1e-5,
    atol=1e-7,
  )


def test_focal_loss_with_gamma_zero_is_exactly_cross_entropy():
  logits, labels = _batch(2)
  np.testing.assert_array_equal(
    imbalance.focal_loss(logits, labels, gamma=0.0), imbalance.cross_entropy(logits, labels)
  )
  np.testing.assert_allclose(
    imbalance.focal_loss(logits, labels, gamma=0.0), np_ce(logits, labels), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize('beta', [0.9, 0.99, 0.999, 0.9999])
def test_class_balanced_weights_match_cui_et_al(beta):
  np.testing.assert_allclose(
    imbalance.class_balanced_weights(COUNTS, beta=beta),
    np_class_balanced_weights(COUNTS, beta),
    rtol=1e-5,
  )


def test_class_balanced_weights_with_beta_zero_are_uniform():
  np.testing.assert_array_equal(imbalance.class_balanced_weights(COUNTS, beta=0.0), np.ones(K))


def test_class_balanced_weights_approach_inverse_frequency_as_beta_goes_to_one():
  weights = imbalance.class_balanced_weights(COUNTS, beta=1 - 1e-9)
  np.testing.assert_allclose(weights / weights.sum(), np_inverse_frequency(COUNTS), rtol=1e-4)


@pytest.mark.parametrize('tau', [0.5, 1.0, 2.0])
def test_logit_adjusted_loss_matches_menon_et_al(tau):
  logits, labels = _batch(3)
  priors = COUNTS / COUNTS.sum()
  np.testing.assert_allclose(
    imbalance.logit_adjusted_loss(logits, labels, class_priors=priors, tau=tau),
    np_logit_adjusted(logits, labels, priors, tau),
    rtol=1e-5,
    atol=1e-6,
  )


def test_logit_adjusted_loss_with_tau_zero_is_cross_entropy():
  logits, labels = _batch(4)
  np.testing.assert_allclose(
    imbalance.logit_adjusted_loss(logits, labels, class_priors=COUNTS / COUNTS.sum(), tau=0.0),
    np_ce(logits, labels),
    rtol=1e-6,
    atol=1e-6,
  )


def test_posthoc_logit_adjustment_matches_menon_et_al_and_favours_rare_classes():
  priors = COUNTS / COUNTS.sum()
  logits, _ = _batch(5)
  adjusted = imbalance.posthoc_logit_adjustment(logits, class_priors=priors, tau=1.0)
  np.testing.assert_allclose(adjusted, logits - np.log(priors), rtol=1e-6, atol=1e-6)
  # A near tie between the most frequent and the rarest class goes to the rare one.
  tie = np.array([[1.0, 0.0, 0.0, 0.9]], np.float32)
  assert int(np.argmax(tie)) == 0
  assert int(jnp.argmax(imbalance.posthoc_logit_adjustment(tie, class_priors=priors))) == 3
  np.testing.assert_array_equal(
    imbalance.posthoc_logit_adjustment(logits, class_priors=priors, tau=0.0), logits
  )


def test_balanced_softmax_matches_ren_et_al_and_equals_logit_adjustment_with_tau_one():
  logits, labels = _batch(6)
  values = imbalance.balanced_softmax_loss(logits, labels, class_counts=COUNTS)
  np.testing.assert_allclose(
    values, np_balanced_softmax(logits, labels, COUNTS), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    values, np_logit_adjusted(logits, labels, COUNTS / COUNTS.sum(), 1.0), rtol=1e-5, atol=1e-6
  )


def test_ldam_margins_match_cao_et_al():
  margins = imbalance.ldam_margins(COUNTS, max_margin=0.5)
  np.testing.assert_allclose(margins, np_ldam_margins(COUNTS, 0.5), rtol=1e-6)
  assert margins.max() == pytest.approx(0.5) and np.argmax(margins) == K - 1
  # m_j n_j^{1/4} is the same constant C for every class.
  np.testing.assert_allclose(margins * COUNTS**0.25, 0.5 * 8**0.25, rtol=1e-6)


@pytest.mark.parametrize('s', [1.0, 30.0])
def test_ldam_loss_matches_cao_et_al(s):
  logits, labels = _batch(7, scale=0.3)
  margins = np_ldam_margins(COUNTS, 0.5)
  np.testing.assert_allclose(
    imbalance.ldam_loss(logits, labels, margins=margins, s=s),
    np_ldam(logits, labels, margins, s),
    rtol=1e-5,
    atol=1e-6,
  )


def test_ldam_with_zero_margins_is_scaled_cross_entropy():
  logits, labels = _batch(8)
  np.testing.assert_allclose(
    imbalance.ldam_loss(logits, labels, margins=np.zeros(K), s=2.0),
    np_ce(2.0 * logits, labels),
    rtol=1e-5,
    atol=1e-6,
  )


def test_drw_weights_switch_at_the_start_step():
  _, labels = _batch(9)
  class_weights = np_class_balanced_weights(COUNTS, 0.9999)
  for step, expected in (
    (0, np.ones(len(labels))),
    (9, np.ones(len(labels))),
    (10, class_weights[labels]),
    (50, class_weights[labels]),
  ):
    np.testing.assert_allclose(
      imbalance.drw_weights(labels, step, class_weights=class_weights, start_step=10),
      expected,
      rtol=1e-6,
    )


# Robustness: bf16 logits, gradients, jit.

_PURE_LOSSES = {
  'focal': lambda z, y: imbalance.focal_loss(z, y, gamma=2.0),
  'focal_gamma_0.5': lambda z, y: imbalance.focal_loss(z, y, gamma=0.5),
  'focal_gamma_0': lambda z, y: imbalance.focal_loss(z, y, gamma=0.0),
  'logit_adjusted': lambda z, y: imbalance.logit_adjusted_loss(
    z, y, class_priors=COUNTS / COUNTS.sum()
  ),
  'balanced_softmax': lambda z, y: imbalance.balanced_softmax_loss(z, y, class_counts=COUNTS),
  'ldam': lambda z, y: imbalance.ldam_loss(z, y, margins=np_ldam_margins(COUNTS, 0.5)),
}


@pytest.mark.parametrize('name', sorted(_PURE_LOSSES))
def test_bfloat16_logits_give_float32_losses(name):
  logits, labels = _batch(10, scale=1.0)
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  values = _PURE_LOSSES[name](bf16, labels)
  assert values.dtype == jnp.float32
  # Identical to float32 on the bf16-rounded logits: the math runs in float32.
  np.testing.assert_allclose(
    values, _PURE_LOSSES[name](bf16.astype(jnp.float32), labels), rtol=1e-6
  )


@pytest.mark.parametrize('name', sorted(_PURE_LOSSES))
def test_gradients_are_finite_for_confident_and_wrong_logits(name):
  logits, labels = _batch(11)
  extreme = np.zeros((4, K), np.float32)
  extreme[0, 0] = 1e4  # p_y rounds to 1: CE is exactly 0.
  extreme[1, 1] = -1e4  # hopelessly wrong
  extreme[2] = 0.0  # uniform
  extreme[3, 3] = 60.0
  logits = np.concatenate([logits, extreme])
  labels = np.concatenate([labels, np.array([0, 1, 2, 3], np.int32)])
  grads = jax.grad(lambda z: jnp.sum(_PURE_LOSSES[name](z, labels)))(jnp.asarray(logits))
  assert np.all(np.isfinite(grads)), grads
  assert np.all(np.isfinite(_PURE_LOSSES[name](logits, labels)))


@pytest.mark.parametrize('name', sorted(_PURE_LOSSES))
def test_losses_jit(name):
  logits, labels = _batch(12)
  np.testing.assert_allclose(
    jax.jit(_PURE_LOSSES[name])(logits, labels), _PURE_LOSSES[name](logits, labels), rtol=1e-6
  )


def test_shape_and_value_errors_name_the_argument():
  logits, labels = _batch()
  with pytest.raises(ValueError, match=r'class_priors must have shape \[K\] = \(4,\)'):
    imbalance.logit_adjusted_loss(logits, labels, class_priors=np.ones(3) / 3)
  with pytest.raises(ValueError, match='margins must have shape'):
    imbalance.ldam_loss(logits, labels, margins=np.ones(5))
  with pytest.raises(ValueError, match='gamma must be >= 0'):
    imbalance.focal_loss(logits, labels, gamma=-1.0)
  with pytest.raises(ValueError, match='beta must lie in'):
    imbalance.class_balanced_weights(COUNTS, beta=1.0)
  with pytest.raises(ValueError, match='class index 2 has count 0'):
    imbalance.class_priors([3, 1, 0])


# The seam: make_classification_loss + the weighted mean = the published batch loss.

# The published defaults of the hyperparameters (Lin et al., Cui et al., Menon et al., Cao et al.).
PUBLISHED_DEFAULTS = {
  'gamma': 2.0,
  'focal_alpha': None,
  'beta': 0.9999,
  'tau': 1.0,
  'posthoc_tau': 0.0,
  'ldam_max_margin': 0.5,
  'ldam_s': 30.0,
  'drw_start': 0.8,
}


def _loss(name='ce', *, num_steps=10, **fields):
  return classification_loss.make_classification_loss(
    name, class_counts=COUNTS, num_steps=num_steps, **fields
  )


def _np_batch_loss(name, logits, labels, step, num_steps, **fields):
  """The published batch loss of each loss name (numpy)."""
  config = types.SimpleNamespace(**{**PUBLISHED_DEFAULTS, **fields})
  ones = np.ones(len(labels))
  if name == 'ce':
    return _weighted_mean(np_ce(logits, labels), ones)
  if name == 'weighted_ce':
    return _weighted_mean(np_ce(logits, labels), np_inverse_frequency(COUNTS)[labels])
  if name == 'class_balanced':
    # Cui et al.'s code: the effective-number weight of each example, averaged over the batch.
    return _batch_mean(
      np_ce(logits, labels), np_class_balanced_weights(COUNTS, config.beta)[labels]
    )
  if name == 'focal':
    alpha = {
      None: None,
      'inverse_frequency': np_inverse_frequency(COUNTS),
      'class_balanced': np_class_balanced_weights(COUNTS, config.beta),
    }[config.focal_alpha]
    # alpha_y FL_y averaged over the batch (Lin et al.; Cui et al.'s CB focal loss divides by B).
    return _batch_mean(np_focal(logits, labels, config.gamma, alpha), ones)
  if name == 'logit_adjusted':
    return _weighted_mean(
      np_logit_adjusted(logits, labels, COUNTS / COUNTS.sum(), config.tau), ones
    )
  if name == 'balanced_softmax':
    return _weighted_mean(np_balanced_softmax(logits, labels, COUNTS), ones)
  if name == 'ldam_drw':
    values = np_ldam(logits, labels, np_ldam_margins(COUNTS, config.ldam_max_margin), config.ldam_s)
    drw = step >= config.drw_start * num_steps
    weights = np_class_balanced_weights(COUNTS, config.beta)[labels] if drw else ones
    return _weighted_mean(values, weights)
  raise AssertionError(name)


_SEAM_CASES = [
  ('ce', {}),
  ('weighted_ce', {}),
  ('class_balanced', {}),
  ('class_balanced', {'beta': 0.99}),
  ('focal', {}),
  ('focal', {'gamma': 1.0, 'focal_alpha': 'inverse_frequency'}),
  ('focal', {'focal_alpha': 'class_balanced', 'beta': 0.999}),
  ('logit_adjusted', {}),
  ('logit_adjusted', {'tau': 2.0}),
  ('balanced_softmax', {}),
  ('ldam_drw', {'ldam_s': 1.0}),
  ('ldam_drw', {'ldam_s': 30.0, 'ldam_max_margin': 0.3}),
]


@pytest.mark.parametrize('name, fields', _SEAM_CASES)
def test_classification_loss_weighted_mean_is_the_published_batch_loss(name, fields):
  scale = 0.3 if name == 'ldam_drw' else 3.0  # s = 30 multiplies the logits.
  logits, labels = _batch(13, scale=scale)
  loss = jax.jit(_loss(name, num_steps=100, **fields))
  for step in (0, 79, 80, 99):  # DRW starts at 0.8 * 100.
    values, weights = loss(jnp.asarray(logits), jnp.asarray(labels), jnp.int32(step))
    assert values.shape == weights.shape == (len(labels),)
    assert values.dtype == weights.dtype == jnp.float32
    np.testing.assert_allclose(
      float(jnp.sum(weights * values) / jnp.sum(weights)),
      _np_batch_loss(name, logits, labels, step, 100, **fields),
      rtol=2e-5,
    )


def test_ce_and_weighted_ce_are_bitwise_todays_train_step():
  logits, labels = _batch(14)
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  class_weights = imbalance.inverse_frequency_weights(COUNTS)
  # What make_train_step computed before the seam.
  ce = imbalance.cross_entropy(logits, labels)
  for name, example_weight in (
    ('ce', jnp.ones_like(ce)),
    ('weighted_ce', jnp.asarray(class_weights, jnp.float32)[labels]),
  ):
    loss = _loss(name)
    values, weights = loss(logits, labels, jnp.int32(0))
    np.testing.assert_array_equal(values, ce)
    np.testing.assert_array_equal(weights, example_weight)
    expected = jnp.sum(example_weight * ce) / jnp.sum(example_weight)
    assert (
      np.asarray(jnp.sum(weights * values) / jnp.sum(weights)).tobytes()
      == np.asarray(expected).tobytes()
    )


def test_drw_switch_is_traced_one_compilation_for_both_phases():
  logits, labels = _batch(15, scale=0.3)
  loss = _loss('ldam_drw')
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
  assert float(after) == pytest.approx(_np_batch_loss('ldam_drw', logits, labels, 8, 10), rel=2e-5)


def test_drw_start_one_never_reweights_plain_ldam():
  logits, labels = _batch(16, scale=0.3)
  loss = _loss('ldam_drw', drw_start=1.0)
  _, weights = loss(logits, labels, jnp.int32(9))
  np.testing.assert_array_equal(weights, np.ones(len(labels)))


def test_classification_loss_accepts_bfloat16_logits_and_has_finite_gradients():
  logits, labels = _batch(17, scale=0.3)
  for name, fields in _SEAM_CASES:
    loss = _loss(name, **fields)

    def batch_loss(z, loss=loss):
      values, weights = loss(z, labels, jnp.int32(9))
      return jnp.sum(weights * values) / jnp.sum(weights)

    bf16 = jnp.asarray(logits, jnp.bfloat16)
    value, grad = jax.value_and_grad(batch_loss)(bf16)
    assert value.dtype == jnp.float32, name
    np.testing.assert_allclose(value, batch_loss(bf16.astype(jnp.float32)), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad, np.float32))), name


def test_predict_logits_is_identity_without_posthoc_and_adjusts_with_it():
  logits, _ = _batch(18)
  plain = _loss()
  np.testing.assert_array_equal(plain.predict_logits(logits), logits)
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  assert plain.predict_logits(bf16).dtype == jnp.bfloat16  # untouched
  adjusted = _loss('focal', posthoc_tau=0.5)
  np.testing.assert_allclose(
    jax.jit(adjusted.predict_logits)(logits),
    logits - 0.5 * np.log(COUNTS / COUNTS.sum()),
    rtol=1e-6,
    atol=1e-6,
  )


def test_make_classification_loss_defaults_are_the_published_ones():
  parameters = inspect.signature(classification_loss.make_classification_loss).parameters
  assert {key: parameters[key].default for key in PUBLISHED_DEFAULTS} == PUBLISHED_DEFAULTS
  for key in ('class_counts', 'num_steps', *PUBLISHED_DEFAULTS):
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
      assert _loss(name, focal_alpha=focal_alpha).name == name


BAD_ARGUMENTS = [
  ('name', 'focall'),
  ('gamma', -0.5),
  ('focal_alpha', 'inverse'),
  ('beta', 1.0),
  ('tau', -1.0),
  ('posthoc_tau', -0.1),
  ('ldam_max_margin', -0.1),
  ('ldam_s', 0.0),
  ('drw_start', 1.5),
]


@pytest.mark.parametrize('key, value', BAD_ARGUMENTS)
def test_make_classification_loss_names_the_bad_argument(key, value):
  arguments = {'name': 'ce', key: value}
  with pytest.raises(ValueError, match=rf'^{key} = {value!r}: must'):
    classification_loss.make_classification_loss(**arguments, class_counts=COUNTS, num_steps=10)


def test_make_classification_loss_checks_steps_and_counts():
  with pytest.raises(ValueError, match='num_steps must be >= 1, got 0'):
    _loss(num_steps=0)
  with pytest.raises(ValueError, match='class index 1 has count 0'):
    classification_loss.make_classification_loss('ce', class_counts=[3, 0], num_steps=10)


# check_loss_hyperparameters and the table of builders.


def _hyperparameters(**fields):
  return {'name': 'ce', **PUBLISHED_DEFAULTS, **fields}


def test_check_loss_hyperparameters_passes_the_defaults_and_takes_only_keywords():
  assert classification_loss.check_loss_hyperparameters(**_hyperparameters()) is None
  parameters = inspect.signature(classification_loss.check_loss_hyperparameters).parameters
  assert list(parameters) == ['name', *PUBLISHED_DEFAULTS]
  for parameter in parameters.values():
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, parameter.name
    assert parameter.default is inspect.Parameter.empty, parameter.name


@pytest.mark.parametrize('key, value', BAD_ARGUMENTS)
def test_check_loss_hyperparameters_names_the_bad_argument_and_its_value(key, value):
  with pytest.raises(ValueError, match=rf'^{key} = {re.escape(repr(value))}: must'):
    classification_loss.check_loss_hyperparameters(**_hyperparameters(**{key: value}))


def test_every_loss_name_has_a_builder_in_its_table():
  assert tuple(classification_loss._LOSSES) == classification_loss.LOSS_NAMES
  assert tuple(classification_loss._MULTILABEL_LOSSES) == classification_loss.MULTILABEL_LOSS_NAMES
  # A multi-label name must pass the check of the names (the table of the multi-class losses).
  assert set(classification_loss.MULTILABEL_LOSS_NAMES) <= set(classification_loss.LOSS_NAMES)
  for name in classification_loss.LOSS_NAMES:
    loss = _loss(name)
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
    _loss('hinge')
  with pytest.raises(ValueError, match=r"^task = 'ranking': must be one of \('multiclass'"):
    _loss('ce', task='ranking')


# The names that moved from care_jax.imbalance (deprecated, removed in 0.3).

MOVED_TO_CLASSIFICATION_LOSS = (
  'ClassificationLoss',
  'FOCAL_ALPHAS',
  'LOSS_NAMES',
  'MULTILABEL_LOSS_NAMES',
  'TASKS',
)


@pytest.mark.parametrize('name', MOVED_TO_CLASSIFICATION_LOSS)
def test_the_moved_names_of_imbalance_warn_and_are_those_of_classification_loss(name):
  with pytest.warns(
    DeprecationWarning,
    match=rf'care_jax\.imbalance\.{name} is deprecated: use care_jax\.classification_loss\.{name}',
  ):
    assert getattr(imbalance, name) is getattr(classification_loss, name)


def test_the_old_make_classification_loss_warns_and_builds_the_same_loss():
  logits, labels = _batch(20, scale=0.3)
  with pytest.warns(
    DeprecationWarning,
    match=r'care_jax\.imbalance\.make_classification_loss is deprecated: use '
    r'care_jax\.classification_loss\.make_classification_loss',
  ):
    old_function = imbalance.make_classification_loss
  new_function = classification_loss.make_classification_loss
  # The old call keeps the new function's signature (and so its defaults).
  assert inspect.signature(old_function).parameters.keys() == (
    inspect.signature(new_function).parameters.keys()
  )
  for old_parameter, new_parameter in zip(
    inspect.signature(old_function).parameters.values(),
    inspect.signature(new_function).parameters.values(),
  ):
    assert (old_parameter.kind, old_parameter.default) == (
      new_parameter.kind,
      new_parameter.default,
    ), old_parameter.name
  with warnings.catch_warnings():
    warnings.simplefilter('error', DeprecationWarning)  # The name call warns only on access.
    old = old_function('ldam_drw', class_counts=COUNTS, num_steps=100, posthoc_tau=0.5)
  new = new_function('ldam_drw', class_counts=COUNTS, num_steps=100, posthoc_tau=0.5)
  assert (old.name, old.reweight_step, old.task) == (new.name, new.reweight_step, new.task)
  np.testing.assert_array_equal(old.class_weights, new.class_weights)
  np.testing.assert_array_equal(old.posthoc_bias, new.posthoc_bias)
  for step in (0, 99):
    for got, want in zip(old(logits, labels, step), new(logits, labels, step)):
      assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    multilabel = old_function(
      'weighted_ce', class_counts=[3, 5], num_steps=10, task='multilabel', num_examples=10
    )
  assert multilabel.task == 'multilabel'


def _legacy_config(**fields):
  """A config.loss ConfigDict as the config module builds it (a typed placeholder focal_alpha)."""
  config = ml_collections.ConfigDict(
    dict(
      name='ce',
      focal_alpha=ml_collections.config_dict.placeholder(str),
      **{key: value for key, value in PUBLISHED_DEFAULTS.items() if key != 'focal_alpha'},
    )
  )
  config.update(fields)
  return config


@pytest.mark.parametrize('name, fields', _SEAM_CASES + [('focal', {'posthoc_tau': 0.5})])
def test_deprecated_config_call_warns_and_gives_the_same_loss(name, fields):
  logits, labels = _batch(19, scale=0.3)
  new = _loss(name, num_steps=100, **fields)
  with pytest.warns(DeprecationWarning, match=r'care_jax\.classification_loss'):
    old_function = imbalance.make_classification_loss
  for config in (_legacy_config(name=name, **fields), dict(name=name, **fields)):
    with pytest.warns(DeprecationWarning, match='make_classification_loss.*keyword'):
      old = old_function(config, class_counts=COUNTS, num_steps=100)
    assert old.name == new.name
    assert old.reweight_step == new.reweight_step
    for attribute in ('class_weights', 'posthoc_bias'):
      if getattr(new, attribute) is None:
        assert getattr(old, attribute) is None, attribute
      else:
        np.testing.assert_array_equal(getattr(old, attribute), getattr(new, attribute))
    for step in (0, 99):
      got = old(logits, labels, jnp.int32(step))
      want = new(logits, labels, jnp.int32(step))
      for got_array, want_array in zip(got, want):
        assert np.asarray(got_array).tobytes() == np.asarray(want_array).tobytes()
    np.testing.assert_array_equal(old.predict_logits(logits), new.predict_logits(logits))


def test_deprecated_config_call_still_names_the_bad_field():
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    with pytest.raises(ValueError, match=r'gamma = -0\.5'):
      imbalance.make_classification_loss(
        _legacy_config(gamma=-0.5), class_counts=COUNTS, num_steps=10
      )


_CONFIG_NOT_MIGRATED = pytest.mark.skipif(
  not hasattr(importlib.import_module('care_jax.config'), 'default_loss_config'),
  reason='config not yet migrated',
)


@_CONFIG_NOT_MIGRATED
def test_deprecated_default_loss_config_is_the_config_modules():
  from care_jax import config as config_lib  # pylint: disable=import-outside-toplevel

  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.default_loss_config'):
    config = imbalance.default_loss_config()
  assert config.to_dict() == config_lib.default_loss_config().to_dict()
  assert config.to_dict() == {'name': 'ce', **PUBLISHED_DEFAULTS}
  config.focal_alpha = 'class_balanced'  # a typed placeholder: strings can be set
  with pytest.warns(DeprecationWarning):
    # The old call still builds the same loss from it.
    loss = imbalance.make_classification_loss(config, class_counts=COUNTS, num_steps=10)
  assert loss.name == 'ce'


@_CONFIG_NOT_MIGRATED
@pytest.mark.parametrize('key, value', BAD_ARGUMENTS)
def test_deprecated_validate_loss_config_is_the_config_modules(key, value):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    config = imbalance.default_loss_config()
  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.validate_loss'):
    imbalance.validate_loss_config(config)  # the defaults are valid
  config[key] = value
  with pytest.warns(DeprecationWarning):
    with pytest.raises(ValueError, match=rf'config\.loss\.{key} = {value!r}'):
      imbalance.validate_loss_config(config)
