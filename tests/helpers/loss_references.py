"""Numpy references of the classification losses, written from the papers' formulas.

Independent of care_jax: float64 numpy from each paper's equation (Lin et al., Cui et al., Menon
et al., Ren et al., Cao et al.; PyTorch's BCEWithLogitsLoss with pos_weight), a random batch, the
published defaults of the hyperparameters and the batch loss that each loss name stands for.
The tests of care_jax.imbalance, care_jax.classification_loss, the config checks of the loss and
the deprecated loss names share them.
"""

import types

import numpy as np

from care_jax import classification_loss

COUNTS = np.array([500, 120, 30, 8])
K = len(COUNTS)


def batch(seed=0, batch=16, scale=3.0):
  """[batch, K] float32 logits and labels holding every class."""
  rng = np.random.default_rng(seed)
  logits = (scale * rng.standard_normal((batch, K))).astype(np.float32)
  labels = np.concatenate([np.arange(K), rng.integers(0, K, batch - K)]).astype(np.int32)
  return logits, labels


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


def weighted_mean(values, weights):
  """PyTorch's cross_entropy(weight=w) reduction: sum_i w_i l_i / sum_i w_i."""
  return float(np.sum(np.asarray(weights) * np.asarray(values)) / np.sum(weights))


def batch_mean(values, weights):
  """Cui et al.'s and Lin et al.'s reduction of class-weighted losses: sum_i w_i l_i / B."""
  return float(np.sum(np.asarray(weights) * np.asarray(values)) / len(values))


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


def make_loss(name='ce', *, num_steps=10, **fields):
  """make_classification_loss of `name` for COUNTS."""
  return classification_loss.make_classification_loss(
    name, class_counts=COUNTS, num_steps=num_steps, **fields
  )


def np_batch_loss(name, logits, labels, step, num_steps, **fields):
  """The published batch loss of each loss name (numpy)."""
  config = types.SimpleNamespace(**{**PUBLISHED_DEFAULTS, **fields})
  ones = np.ones(len(labels))
  if name == 'ce':
    return weighted_mean(np_ce(logits, labels), ones)
  if name == 'weighted_ce':
    return weighted_mean(np_ce(logits, labels), np_inverse_frequency(COUNTS)[labels])
  if name == 'class_balanced':
    # Cui et al.'s code: the effective-number weight of each example, averaged over the batch.
    return batch_mean(np_ce(logits, labels), np_class_balanced_weights(COUNTS, config.beta)[labels])
  if name == 'focal':
    alpha = {
      None: None,
      'inverse_frequency': np_inverse_frequency(COUNTS),
      'class_balanced': np_class_balanced_weights(COUNTS, config.beta),
    }[config.focal_alpha]
    # alpha_y FL_y averaged over the batch (Lin et al.; Cui et al.'s CB focal loss divides by B).
    return batch_mean(np_focal(logits, labels, config.gamma, alpha), ones)
  if name == 'logit_adjusted':
    return weighted_mean(np_logit_adjusted(logits, labels, COUNTS / COUNTS.sum(), config.tau), ones)
  if name == 'balanced_softmax':
    return weighted_mean(np_balanced_softmax(logits, labels, COUNTS), ones)
  if name == 'ldam_drw':
    values = np_ldam(logits, labels, np_ldam_margins(COUNTS, config.ldam_max_margin), config.ldam_s)
    drw = step >= config.drw_start * num_steps
    weights = np_class_balanced_weights(COUNTS, config.beta)[labels] if drw else ones
    return weighted_mean(values, weights)
  raise AssertionError(name)


SEAM_CASES = [
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


def sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def np_bce(z, y, pos_weight=None):
  z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
  p = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
  return -(p * y * np.log(sigmoid(z)) + (1 - y) * np.log(1 - sigmoid(z)))


def np_sigmoid_focal(z, y, gamma, alpha=None):
  z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
  prob = sigmoid(z)
  p_t = prob * y + (1 - prob) * (1 - y)
  alpha_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
  return alpha_t * (1 - p_t) ** gamma * np_bce(z, y)


def random_multilabel(shape, seed=0):
  """Logits of `shape` and 0/1 float32 labels (a third positive)."""
  rng = np.random.default_rng(seed)
  return rng.normal(0, 2, shape).astype(np.float32), (rng.uniform(size=shape) < 0.3).astype(
    np.float32
  )
