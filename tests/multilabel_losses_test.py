"""Multi-label losses: sigmoid BCE, positive weights, sigmoid focal, and CARE per (image, finding).

References are written out in numpy from the formulas (PyTorch's ``BCEWithLogitsLoss`` with
``pos_weight``, Lin et al.'s sigmoid focal loss, and the CARE terms on the bilinearly upsampled
map of each pair).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from care_jax import classification_loss
from care_jax import imbalance
from care_jax import losses


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _numpy_bce(z, y, pos_weight=None):
  z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
  p = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
  return -(p * y * np.log(_sigmoid(z)) + (1 - y) * np.log(1 - _sigmoid(z)))


def _numpy_focal(z, y, gamma, alpha=None):
  z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
  prob = _sigmoid(z)
  p_t = prob * y + (1 - prob) * (1 - y)
  alpha_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
  return alpha_t * (1 - p_t) ** gamma * _numpy_bce(z, y)


def _random(shape, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(0, 2, shape).astype(np.float32), (rng.uniform(size=shape) < 0.3).astype(
    np.float32
  )


def test_sigmoid_bce_is_pytorchs_bce_with_logits_with_pos_weight():
  z, y = _random((6, 4))
  pos_weight = np.array([1.0, 3.0, 0.5, 9.0], np.float32)
  np.testing.assert_allclose(
    imbalance.sigmoid_binary_cross_entropy(z, y), _numpy_bce(z, y), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    imbalance.sigmoid_binary_cross_entropy(z, y, pos_weight=pos_weight),
    _numpy_bce(z, y, pos_weight),
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
  z, y = _random((5, 3), seed=1)
  np.testing.assert_allclose(
    imbalance.sigmoid_focal_loss(z, y, gamma=gamma, alpha=alpha),
    _numpy_focal(z, y, gamma, alpha),
    rtol=1e-5,
    atol=1e-7,
  )


@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0])
@pytest.mark.parametrize('alpha', [None, 0.25])
def test_sigmoid_losses_agree_with_optax(gamma, alpha):
  # Soft labels too: both take labels in [0, 1].
  z, y = _random((8, 5), seed=3)
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


def test_multilabel_losses_average_each_example_over_its_classes():
  z, y = _random((6, 4), seed=2)
  counts = y.sum(0).astype(int) + 1  # Every class positive at least once, never always.
  num_examples = 12
  expected = {
    'ce': _numpy_bce(z, y).mean(-1),
    'weighted_ce': _numpy_bce(z, y, (num_examples - counts) / counts).mean(-1),
    'focal': _numpy_focal(z, y, 2.0).mean(-1),
  }
  for name, want in expected.items():
    loss = classification_loss.make_classification_loss(
      name, class_counts=counts, num_steps=10, task='multilabel', num_examples=num_examples
    )
    values, weights = loss(z, y, step=0)
    np.testing.assert_allclose(values, want, rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(weights, 1.0)
    assert loss.task == 'multilabel'


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


def _upsample(f, size):
  """Half-pixel bilinear upsampling, as jax.image.resize (an independent path)."""
  return np.asarray(jax.image.resize(jnp.asarray(f, jnp.float32), (size, size), 'bilinear'))


def _brute_force_pair_loss(f, m, tau, lam, outer=None):
  """L_in + lam L_out of one (image, finding) pair on the upsampled map, in numpy."""
  up = _upsample(f, m.shape[0]).astype(np.float64)
  outer = 1.0 - m if outer is None else outer
  inner = -min((m * up).sum() / m.sum(), tau) if m.sum() > 0 else 0.0
  out = (outer * up).sum() / outer.sum() if outer.sum() > 0 else 0.0
  return inner + lam * out


def _pairs(batch=3, classes=4, h=4, size=16, seed=3):
  rng = np.random.default_rng(seed)
  maps = rng.uniform(size=(batch, classes, h, h)).astype(np.float32)
  masks = np.zeros((batch, classes, size, size), np.float32)
  for b in range(batch):
    for k in range(classes):
      if rng.uniform() < 0.6:
        y0, x0 = rng.integers(0, size - 4, 2)
        masks[b, k, y0 : y0 + rng.integers(2, 8), x0 : x0 + rng.integers(2, 8)] = 1.0
  masks[0, 0] = 1.0  # A full mask: no outside.
  masks[1, 1] = 0.0  # An empty one.
  return maps, masks


def test_care_loss_per_image_and_finding_equals_the_brute_force_pair_losses():
  maps, masks = _pairs()
  has_mask = masks.sum((2, 3)) > 0
  has_mask[2, 3] = False  # A box that does not count (e.g. a negative finding).
  per_pair = losses.care_loss_per_example(maps, masks, tau=0.6, lam=0.7, has_mask=has_mask)
  assert per_pair.shape == (3, 4)
  expected = np.array(
    [
      [
        _brute_force_pair_loss(maps[b, k], masks[b, k], 0.6, 0.7) if has_mask[b, k] else 0.0
        for k in range(4)
      ]
      for b in range(3)
    ]
  )
  np.testing.assert_allclose(per_pair, expected, rtol=1e-5, atol=1e-6)
  mean = losses.care_loss(maps, masks, tau=0.6, lam=0.7, has_mask=has_mask)
  np.testing.assert_allclose(mean, expected[has_mask].mean(), rtol=1e-5)


def test_care_loss_per_pair_with_the_distance_outer_mask_equals_the_brute_force():
  maps, masks = _pairs(seed=4)
  outer = losses.distance_outer_mask(masks, start=1.0, delta=0.1)
  for b in range(masks.shape[0]):
    slice_outer = losses.distance_outer_mask(masks[b], start=1.0, delta=0.1)
    np.testing.assert_allclose(outer[b], slice_outer)
  got = losses.care_loss_per_example(maps, masks, tau=0.5, lam=0.7, outer_mask=outer)
  outer = np.asarray(outer)
  for b in range(masks.shape[0]):
    for k in range(masks.shape[1]):
      want = _brute_force_pair_loss(maps[b, k], masks[b, k], 0.5, 0.7, outer[b, k])
      if masks[b, k].sum() == 0:
        want = 0.0
      np.testing.assert_allclose(got[b, k], want, rtol=1e-5, atol=1e-6, err_msg=(b, k))


def test_care_loss_per_pair_gradient_is_finite_for_empty_and_full_masks():
  maps, masks = _pairs(seed=5)
  grads = jax.grad(lambda f: losses.care_loss(f, masks))(jnp.asarray(maps))
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(grads[1, 1], 0.0)  # The empty mask's map gets no gradient.


def test_care_loss_per_pair_rejects_mismatched_batch_shapes():
  with pytest.raises(ValueError, match=r'mask batch size \(2, 3\).*feature_map'):
    losses.care_loss(np.zeros((2, 4, 4, 4)), np.zeros((2, 3, 8, 8)))
  with pytest.raises(ValueError, match=r'has_mask must have shape \[2, 4\]'):
    losses.care_loss(np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 8, 8)), has_mask=np.ones(2, bool))
