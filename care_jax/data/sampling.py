"""Which training example sits at each position of the training stream.

Three samplers (``data.sampling``), all pure functions of ``(seed, position)``
so that any stream position can be computed directly (resuming, several
processes) and the class frequencies are exact in expectation:

================== ============================================================
``instance``       epoch-wise permutations: position ``p`` holds example
                   ``index_shuffle(p mod N, seed=(seed, p div N))``; every
                   example once per epoch, so class k has frequency n_k / N.
``sqrt``           square-root resampling: class k with probability
                   ``sqrt(n_k) / sum_j sqrt(n_j)`` (Mahajan et al. 2018; Kang et al. 2020).
``class_balanced`` class k with probability ``1 / K'``, K' the number of
                   classes with at least one training example.
================== ============================================================

Both resampling modes follow ``P(k) = n_k^q / sum_j n_j^q`` (q = 1/2 or 0;
q = 1 is the instance frequency) and draw, independently at every position,
the class from that distribution and then one of its n_k examples uniformly
(with replacement), each from its own stateless stream split off the
position's ``key``.

Example::

  index_of = make_sampler(labels, sampling='sqrt', seed=0)
  index = index_of(position, key)  # key: int64 [2], e.g. [seed, position]
"""

from collections.abc import Callable

import numpy as np

from care_jax.data._tensorflow import tf

SAMPLING = ('instance', 'class_balanced', 'sqrt')
# Exponent q of P(k) ~ n_k^q for each mode.
_EXPONENT = {'instance': 1.0, 'sqrt': 0.5, 'class_balanced': 0.0}


def check_sampling(sampling: str) -> str:
  """Returns ``sampling`` if it is one of `SAMPLING`, else a ValueError."""
  if sampling not in SAMPLING:
    raise ValueError(f'data.sampling must be one of {SAMPLING}, got {sampling!r}.')
  return sampling


def class_probabilities(class_counts: np.ndarray, *, sampling: str) -> np.ndarray:
  """The class frequencies a sampler promises.

  ``P(k) = n_k^q / sum_j n_j^q`` over the classes with ``n_k > 0`` (the
  others get 0), q = 1 (instance), 1/2 (sqrt) or 0 (class_balanced).

  Example: ``class_probabilities([1, 4, 0], sampling='sqrt')`` is
  ``[1/3, 2/3, 0]``.

  Args:
    class_counts: [K] training examples per class, at least one positive.
    sampling: one of `SAMPLING`.

  Returns:
    float64 [K] summing to 1.
  """
  counts = np.asarray(class_counts, np.float64)
  if counts.ndim != 1 or np.any(counts < 0) or not np.any(counts > 0):
    raise ValueError(
      f'class_counts must be non-negative [K] counts with one > 0, got {counts.tolist()}.'
    )
  weights = np.where(counts > 0, counts ** _EXPONENT[check_sampling(sampling)], 0.0)
  return weights / weights.sum()


def make_sampler(
  labels: np.ndarray, *, sampling: str, seed: int | tf.Tensor
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """Returns ``index_of(position, key)``: the example at a stream position.

  Args:
    labels: int [N] training labels (N > 0), in the stored example order.
    sampling: one of `SAMPLING` (module docstring).
    seed: the run's seed (the instance permutations are keyed by it).

  Returns:
    A TF function of an int64 scalar ``position`` and an int32/int64 [2]
    stateless ``key`` unique to that position (unused by 'instance') to the
    int64 example index in ``[0, N)``.
  """
  check_sampling(sampling)
  labels = np.asarray(labels, np.int64)
  if labels.ndim != 1 or not labels.size or labels.min() < 0:
    raise ValueError(
      f'labels must be a non-empty [N] array of class indices, got shape {labels.shape}.'
    )
  num_examples = np.int64(labels.size)
  if sampling == 'instance':
    seed = tf.constant(seed, tf.int64)

    def permuted(position, key):
      del key  # The permutation of each epoch is keyed by (seed, epoch).
      return tf.random.experimental.index_shuffle(
        position % num_examples,
        seed=tf.stack([seed, position // num_examples]),
        max_index=num_examples - 1,
      )

    return permuted

  counts = np.bincount(labels)
  probabilities = class_probabilities(counts, sampling=sampling)
  cdf = tf.constant(np.cumsum(probabilities), tf.float64)
  # Rounding may leave cdf[-1] a hair below 1: fall back to the last class
  # that has examples, never to an empty one.
  last_class = np.int64(np.flatnonzero(counts)[-1])
  by_class = tf.constant(np.argsort(labels, kind='stable'))
  starts = tf.constant(np.cumsum(counts) - counts)
  counts = tf.constant(counts)

  def resampled(position, key):
    del position  # The key already identifies the position.
    class_key, member_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    u = tf.random.stateless_uniform([1], class_key, dtype=tf.float64)
    k = tf.searchsorted(cdf, u, side='right', out_type=tf.int64)[0]
    k = tf.minimum(k, last_class)
    member = tf.random.stateless_uniform([], member_key, minval=0, maxval=counts[k], dtype=tf.int64)
    return by_class[starts[k] + member]

  return resampled
