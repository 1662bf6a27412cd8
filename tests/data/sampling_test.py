"""Tests of the training samplers: promised class frequencies and determinism."""

import numpy as np
import pytest
import tensorflow as tf

from care_jax import config as config_lib
from care_jax.data import sampling

# Class 2 is empty, and so is the last class 5 (bincount stops at 4 anyway).
COUNTS = np.array([60, 12, 0, 3, 125])
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(5), COUNTS))


def _draw(labels, method, num, *, seed=7, start=0):
  """Indices at positions [start, start + num), keyed like the pipeline."""
  index_of = sampling.make_sampler(labels, sampling=method, seed=seed)

  def index(position):
    keys = tf.random.experimental.stateless_split(
      tf.stack([tf.constant(seed, tf.int64), position]), 2
    )
    return index_of(position, keys[0])

  ds = tf.data.Dataset.range(start, start + num).map(index).batch(num)
  return next(iter(ds)).numpy()


def test_class_probabilities_follow_the_formulas():
  counts = [1, 4, 0, 9]
  np.testing.assert_allclose(
    sampling.class_probabilities(counts, sampling='instance'), [1 / 14, 4 / 14, 0, 9 / 14]
  )
  np.testing.assert_allclose(
    sampling.class_probabilities(counts, sampling='sqrt'), [1 / 6, 2 / 6, 0, 3 / 6]
  )
  np.testing.assert_allclose(
    sampling.class_probabilities(counts, sampling='class_balanced'), [1 / 3, 1 / 3, 0, 1 / 3]
  )


@pytest.mark.parametrize('method', ['class_balanced', 'sqrt'])
def test_resampled_class_frequencies_within_four_standard_errors(method):
  num = 20000
  indices = _draw(LABELS, method, num)
  assert indices.min() >= 0 and indices.max() < len(LABELS)
  frequencies = np.bincount(LABELS[indices], minlength=5) / num
  weights = {'class_balanced': COUNTS > 0, 'sqrt': np.sqrt(COUNTS)}[method]
  promised = weights / weights.sum()
  standard_error = np.sqrt(promised * (1 - promised) / num)
  assert np.all(np.abs(frequencies - promised) <= 4 * standard_error + 1e-12), (
    frequencies,
    promised,
  )
  assert frequencies[2] == 0  # An empty class is never drawn.


def test_examples_within_a_class_are_drawn_uniformly():
  num = 20000
  indices = _draw(LABELS, 'class_balanced', num)
  # Class 3 has 3 examples, drawn with probability 1/4: each ~ 1/12.
  members = np.flatnonzero(LABELS == 3)
  hits = np.array([(indices == m).sum() for m in members]) / num
  p = 1 / 12
  assert np.all(np.abs(hits - p) <= 4 * np.sqrt(p * (1 - p) / num)), hits
  assert set(indices[np.isin(LABELS[indices], 3)]) == set(members)


def test_instance_sampling_is_one_permutation_per_epoch():
  indices = _draw(LABELS, 'instance', 3 * len(LABELS))
  epochs = indices.reshape(3, len(LABELS))
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(len(LABELS)))
  assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.parametrize('method', sampling.SAMPLING)
def test_a_position_gives_the_same_index_wherever_the_stream_starts(method):
  whole = _draw(LABELS, method, 300)
  np.testing.assert_array_equal(_draw(LABELS, method, 100, start=200), whole[200:])
  other_seed = _draw(LABELS, method, 300, seed=8)
  assert not np.array_equal(whole, other_seed)


def test_bad_sampling_names_the_key_and_the_choices():
  with pytest.raises(ValueError, match=r"data\.sampling.*'class_balanced'.*'oversample'"):
    sampling.make_sampler(LABELS, sampling='oversample', seed=0)
  with pytest.raises(ValueError, match='class_counts'):
    sampling.class_probabilities([0, 0], sampling='sqrt')
  with pytest.raises(ValueError, match='labels'):
    sampling.make_sampler(np.array([], np.int64), sampling='sqrt', seed=0)


def test_the_config_schema_knows_exactly_these_samplers():
  # care_jax.config cannot import this module (TensorFlow): it keeps its own list.
  assert config_lib.SAMPLING == sampling.SAMPLING
