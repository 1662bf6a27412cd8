"""Every per-example classification loss and class weight of care_jax.imbalance against
independent numpy implementations of their published formulas (tests/helpers/loss_references.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from care_jax import imbalance
from tests.helpers import loss_references as ref

K = len(ref.COUNTS)


@pytest.mark.parametrize('gamma', [0.5, 1.0, 2.0, 5.0])
def test_focal_loss_matches_lin_et_al(gamma):
  logits, labels = ref.batch()
  np.testing.assert_allclose(
    imbalance.focal_loss(logits, labels, gamma=gamma),
    ref.np_focal(logits, labels, gamma),
    rtol=1e-5,
    atol=1e-7,
  )


def test_focal_loss_with_class_alpha():
  logits, labels = ref.batch(1)
  alpha = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
  np.testing.assert_allclose(
    imbalance.focal_loss(logits, labels, gamma=2.0, alpha=alpha),
    ref.np_focal(logits, labels, 2.0, alpha),
    rtol=1e-5,
    atol=1e-7,
  )


def test_focal_loss_with_gamma_zero_is_exactly_cross_entropy():
  logits, labels = ref.batch(2)
  np.testing.assert_array_equal(
    imbalance.focal_loss(logits, labels, gamma=0.0), imbalance.cross_entropy(logits, labels)
  )
  np.testing.assert_allclose(
    imbalance.focal_loss(logits, labels, gamma=0.0), ref.np_ce(logits, labels), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize('beta', [0.9, 0.99, 0.999, 0.9999])
def test_class_balanced_weights_match_cui_et_al(beta):
  np.testing.assert_allclose(
    imbalance.class_balanced_weights(ref.COUNTS, beta=beta),
    ref.np_class_balanced_weights(ref.COUNTS, beta),
    rtol=1e-5,
  )


def test_class_balanced_weights_with_beta_zero_are_uniform():
  np.testing.assert_array_equal(imbalance.class_balanced_weights(ref.COUNTS, beta=0.0), np.ones(K))


def test_class_balanced_weights_approach_inverse_frequency_as_beta_goes_to_one():
  weights = imbalance.class_balanced_weights(ref.COUNTS, beta=1 - 1e-9)
  np.testing.assert_allclose(
    weights / weights.sum(), ref.np_inverse_frequency(ref.COUNTS), rtol=1e-4
  )


@pytest.mark.parametrize('tau', [0.5, 1.0, 2.0])
def test_logit_adjusted_loss_matches_menon_et_al(tau):
  logits, labels = ref.batch(3)
  priors = ref.COUNTS / ref.COUNTS.sum()
  np.testing.assert_allclose(
    imbalance.logit_adjusted_loss(logits, labels, class_priors=priors, tau=tau),
    ref.np_logit_adjusted(logits, labels, priors, tau),
    rtol=1e-5,
    atol=1e-6,
  )


def test_logit_adjusted_loss_with_tau_zero_is_cross_entropy():
  logits, labels = ref.batch(4)
  np.testing.assert_allclose(
    imbalance.logit_adjusted_loss(
      logits, labels, class_priors=ref.COUNTS / ref.COUNTS.sum(), tau=0.0
    ),
    ref.np_ce(logits, labels),
    rtol=1e-6,
    atol=1e-6,
  )


def test_posthoc_logit_adjustment_matches_menon_et_al_and_favours_rare_classes():
  priors = ref.COUNTS / ref.COUNTS.sum()
  logits, _ = ref.batch(5)
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
  logits, labels = ref.batch(6)
  values = imbalance.balanced_softmax_loss(logits, labels, class_counts=ref.COUNTS)
  np.testing.assert_allclose(
    values, ref.np_balanced_softmax(logits, labels, ref.COUNTS), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    values,
    ref.np_logit_adjusted(logits, labels, ref.COUNTS / ref.COUNTS.sum(), 1.0),
    rtol=1e-5,
    atol=1e-6,
  )


def test_ldam_margins_match_cao_et_al():
  margins = imbalance.ldam_margins(ref.COUNTS, max_margin=0.5)
  np.testing.assert_allclose(margins, ref.np_ldam_margins(ref.COUNTS, 0.5), rtol=1e-6)
  assert margins.max() == pytest.approx(0.5) and np.argmax(margins) == K - 1
  # m_j n_j^{1/4} is the same constant C for every class.
  np.testing.assert_allclose(margins * ref.COUNTS**0.25, 0.5 * 8**0.25, rtol=1e-6)


@pytest.mark.parametrize('s', [1.0, 30.0])
def test_ldam_loss_matches_cao_et_al(s):
  logits, labels = ref.batch(7, scale=0.3)
  margins = ref.np_ldam_margins(ref.COUNTS, 0.5)
  np.testing.assert_allclose(
    imbalance.ldam_loss(logits, labels, margins=margins, s=s),
    ref.np_ldam(logits, labels, margins, s),
    rtol=1e-5,
    atol=1e-6,
  )


def test_ldam_with_zero_margins_is_scaled_cross_entropy():
  logits, labels = ref.batch(8)
  np.testing.assert_allclose(
    imbalance.ldam_loss(logits, labels, margins=np.zeros(K), s=2.0),
    ref.np_ce(2.0 * logits, labels),
    rtol=1e-5,
    atol=1e-6,
  )


def test_drw_weights_switch_at_the_start_step():
  _, labels = ref.batch(9)
  class_weights = ref.np_class_balanced_weights(ref.COUNTS, 0.9999)
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


_PURE_LOSSES = {
  'focal': lambda z, y: imbalance.focal_loss(z, y, gamma=2.0),
  'focal_gamma_0.5': lambda z, y: imbalance.focal_loss(z, y, gamma=0.5),
  'focal_gamma_0': lambda z, y: imbalance.focal_loss(z, y, gamma=0.0),
  'logit_adjusted': lambda z, y: imbalance.logit_adjusted_loss(
    z, y, class_priors=ref.COUNTS / ref.COUNTS.sum()
  ),
  'balanced_softmax': lambda z, y: imbalance.balanced_softmax_loss(z, y, class_counts=ref.COUNTS),
  'ldam': lambda z, y: imbalance.ldam_loss(z, y, margins=ref.np_ldam_margins(ref.COUNTS, 0.5)),
}


@pytest.mark.parametrize('name', sorted(_PURE_LOSSES))
def test_bfloat16_logits_give_float32_losses(name):
  logits, labels = ref.batch(10, scale=1.0)
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  values = _PURE_LOSSES[name](bf16, labels)
  assert values.dtype == jnp.float32
  # Identical to float32 on the bf16-rounded logits: the math runs in float32.
  np.testing.assert_allclose(
    values, _PURE_LOSSES[name](bf16.astype(jnp.float32), labels), rtol=1e-6
  )


@pytest.mark.parametrize('name', sorted(_PURE_LOSSES))
def test_gradients_are_finite_for_confident_and_wrong_logits(name):
  logits, labels = ref.batch(11)
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
  logits, labels = ref.batch(12)
  np.testing.assert_allclose(
    jax.jit(_PURE_LOSSES[name])(logits, labels), _PURE_LOSSES[name](logits, labels), rtol=1e-6
  )


def test_shape_and_value_errors_name_the_argument():
  logits, labels = ref.batch()
  with pytest.raises(ValueError, match=r'class_priors must have shape \[K\] = \(4,\)'):
    imbalance.logit_adjusted_loss(logits, labels, class_priors=np.ones(3) / 3)
  with pytest.raises(ValueError, match='margins must have shape'):
    imbalance.ldam_loss(logits, labels, margins=np.ones(5))
  with pytest.raises(ValueError, match='gamma must be >= 0'):
    imbalance.focal_loss(logits, labels, gamma=-1.0)
  with pytest.raises(ValueError, match='beta must lie in'):
    imbalance.class_balanced_weights(ref.COUNTS, beta=1.0)
  with pytest.raises(ValueError, match='class index 2 has count 0'):
    imbalance.class_priors([3, 1, 0])


# Class weights and cross-entropy.


def np_torch_weighted_ce_mean(logits, labels, weights):
  """torch.nn.CrossEntropyLoss(weight=w, reduction='mean'), from its docs:
  sum_n w[y_n] * -log p_n[y_n] / sum_n w[y_n]."""
  nll = -ref.np_log_softmax(logits)[np.arange(len(labels)), labels]
  w = np.asarray(weights, np.float64)[labels]
  return np.sum(w * nll) / np.sum(w)


def test_inverse_frequency_weights_match_numpy():
  counts = np.array([327, 4693, 115, 514, 1113, 6705, 142])  # ISIC-like.
  got = imbalance.inverse_frequency_weights(counts)
  expected = (1 / counts) / np.sum(1 / counts)
  assert got.dtype == np.float32 and got.shape == (7,)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-6)
  # The rarest class gets the largest weight.
  assert np.argmax(got) == np.argmin(counts)


def test_inverse_frequency_weights_reject_empty_classes():
  with pytest.raises(ValueError, match='class index 2'):
    imbalance.inverse_frequency_weights([10, 5, 0, 3])
  with pytest.raises(ValueError, match='class index 0'):
    imbalance.inverse_frequency_weights([-1, 5])
  with pytest.raises(ValueError, match='class_counts'):
    imbalance.inverse_frequency_weights(np.ones((2, 2)))


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(15)
  logits = rng.normal(size=(6, 4)).astype(np.float32) * 3
  labels = rng.integers(0, 4, size=6)
  weights = rng.uniform(0.1, 2.0, size=4).astype(np.float32)
  nll = -ref.np_log_softmax(logits)[np.arange(6), labels]
  np.testing.assert_allclose(imbalance.cross_entropy(logits, labels), nll, rtol=1e-5)
  np.testing.assert_allclose(
    imbalance.cross_entropy(logits, labels, class_weights=weights), weights[labels] * nll, rtol=1e-5
  )
  bf16 = imbalance.cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
  assert bf16.dtype == jnp.float32


def test_weighted_cross_entropy_matches_torch_weighted_mean():
  rng = np.random.default_rng(16)
  logits = rng.normal(size=(8, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=8)
  weights = imbalance.inverse_frequency_weights([50, 10, 3])
  got = jax.jit(imbalance.weighted_cross_entropy_loss)(logits, labels, class_weights=weights)
  np.testing.assert_allclose(got, np_torch_weighted_ce_mean(logits, labels, weights), rtol=1e-5)


def test_weighted_cross_entropy_where_drops_padded_examples():
  rng = np.random.default_rng(17)
  logits = rng.normal(size=(8, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=8)
  weights = np.array([0.2, 0.3, 0.5], np.float32)
  valid = np.array([True] * 5 + [False] * 3)
  loss_fn = lambda z: imbalance.weighted_cross_entropy_loss(
    z, labels, class_weights=weights, where=valid
  )
  value, grad = jax.value_and_grad(loss_fn)(logits)
  np.testing.assert_allclose(
    value, np_torch_weighted_ce_mean(logits[:5], labels[:5], weights), rtol=1e-5
  )
  np.testing.assert_array_equal(grad[5:], 0.0)
  # No valid example: exactly zero with a zero gradient.
  value, grad = jax.value_and_grad(
    lambda z: imbalance.weighted_cross_entropy_loss(
      z, labels, class_weights=weights, where=np.zeros(8, bool)
    )
  )(logits)
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize(
  'logits_shape,labels,weights,where,match',
  [
    ((4,), np.zeros(4, int), np.ones(3), None, r'logits .*\(4,\)'),
    ((4, 3), np.zeros(5, int), np.ones(3), None, r'labels .*\(5,\)'),
    ((4, 3), np.zeros(4), np.ones(3), None, r'labels .*integer'),
    ((4, 3), np.zeros(4, int), np.ones(2), None, r'class_weights .*\(2,\)'),
    ((4, 3), np.zeros(4, int), np.ones(3), np.ones(3, bool), r'where .*\(3,\)'),
  ],
)
def test_cross_entropy_shape_errors_name_the_argument(logits_shape, labels, weights, where, match):
  with pytest.raises(ValueError, match=match):
    imbalance.weighted_cross_entropy_loss(
      np.zeros(logits_shape), labels, class_weights=weights, where=where
    )


# Multi-label: sigmoid BCE, positive weights, sigmoid focal.


def test_sigmoid_bce_is_pytorchs_bce_with_logits_with_pos_weight():
  z, y = ref.random_multilabel((6, 4))
  pos_weight = np.array([1.0, 3.0, 0.5, 9.0], np.float32)
  np.testing.assert_allclose(
    imbalance.sigmoid_binary_cross_entropy(z, y), ref.np_bce(z, y), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    imbalance.sigmoid_binary_cross_entropy(z, y, pos_weight=pos_weight),
    ref.np_bce(z, y, pos_weight),
    rtol=1e-5,
    atol=1e-6,
  )


def test_sigmoid_bce_is_stable_and_finite_for_extreme_logits_and_bf16():
  z = jnp.array([[-200.0, 200.0, 0.0]])
  y = jnp.array([[1.0, 0.0, 1.0]])
  values = imbalance.sigmoid_binary_cross_entropy(z, y)
  np.testing.assert_allclose(values, [[200.0, 200.0, np.log(2)]], rtol=1e-6)
  grads = jax.grad(lambda z: imbalance.sigmoid_binary_cross_entropy(z, y).sum())(z)
  assert np.all(np.isfinite(grads))
  bf16 = imbalance.sigmoid_binary_cross_entropy(z.astype(jnp.bfloat16), y)
  assert bf16.dtype == jnp.float32


def test_sigmoid_bce_rejects_bad_shapes_and_labels():
  with pytest.raises(ValueError, match=r'shape \[B, K\].*\(2, 3\).*\(2,\)'):
    imbalance.sigmoid_binary_cross_entropy(np.zeros((2, 3)), np.zeros(2))
  with pytest.raises(ValueError, match=r'labels values must lie in \[0, 1\]'):
    imbalance.sigmoid_binary_cross_entropy(np.zeros((1, 2)), np.array([[0.0, 2.0]]))
  with pytest.raises(ValueError, match=r'pos_weight must have shape \[K\] = \(3,\)'):
    imbalance.sigmoid_binary_cross_entropy(
      np.zeros((1, 3)), np.zeros((1, 3)), pos_weight=np.ones(2)
    )


def test_positive_weights_are_negatives_over_positives():
  np.testing.assert_allclose(imbalance.positive_weights([10, 50, 99], 100), [9.0, 1.0, 1 / 99])
  with pytest.raises(ValueError, match='class index 1 has 0 positives'):
    imbalance.positive_weights([10, 0], 100)
  with pytest.raises(ValueError, match='class index 0 has 100 positives'):
    imbalance.positive_weights([100, 3], 100)


@pytest.mark.parametrize('gamma,alpha', [(0.0, None), (2.0, None), (2.0, 0.25), (0.5, 0.8)])
def test_sigmoid_focal_loss_matches_the_formula(gamma, alpha):
  z, y = ref.random_multilabel((5, 3), seed=1)
  np.testing.assert_allclose(
    imbalance.sigmoid_focal_loss(z, y, gamma=gamma, alpha=alpha),
    ref.np_sigmoid_focal(z, y, gamma, alpha),
    rtol=1e-5,
    atol=1e-7,
  )


@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0])
@pytest.mark.parametrize('alpha', [None, 0.25])
def test_sigmoid_losses_agree_with_optax(gamma, alpha):
  # Soft labels too: both take labels in [0, 1].
  z, y = ref.random_multilabel((8, 5), seed=3)
  y = np.where(np.arange(5) == 4, 0.3, y).astype(np.float32)
  np.testing.assert_allclose(
    imbalance.sigmoid_binary_cross_entropy(z, y),
    optax.losses.sigmoid_binary_cross_entropy(z, y),
    rtol=1e-5,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    imbalance.sigmoid_focal_loss(z, y, gamma=gamma, alpha=alpha),
    optax.losses.sigmoid_focal_loss(z, y, alpha=alpha, gamma=gamma),
    rtol=1e-5,
    atol=1e-6,
  )


def test_sigmoid_focal_loss_gradient_is_finite_where_p_t_rounds_to_one():
  z = jnp.array([[60.0, -60.0]])
  y = jnp.array([[1.0, 0.0]])
  for gamma in (0.5, 2.0):
    grads = jax.grad(lambda z: imbalance.sigmoid_focal_loss(z, y, gamma=gamma).sum())(z)
    assert np.all(np.isfinite(grads)), gamma
