"""Evaluation: which rows of a split each global batch of several processes holds, and the next
batch dispatched before the last one is read."""

import numpy as np
import pytest


@pytest.mark.parametrize('processes, global_batch, size', [(1, 8, 21), (2, 8, 21), (4, 8, 30)])
def test_split_positions_follow_the_eval_sharding_of_several_processes(
  processes, global_batch, size
):
  from care_jax.training import evaluation  # pylint: disable=g-import-not-at-top

  # eval_batches: pad to a multiple of the global batch, process p takes every
  # P-th example from p on, batches its share; a global batch concatenates them.
  padded = np.arange(-(-size // global_batch) * global_batch)
  local = global_batch // processes
  shares = [padded[p::processes] for p in range(processes)]
  for k in range(len(padded) // global_batch):
    batch = np.concatenate([share[k * local : (k + 1) * local] for share in shares])
    np.testing.assert_array_equal(evaluation.split_positions(k, global_batch, processes), batch)


class _RecordingParallel:
  """A back-end that records when each batch is dispatched and fetched."""

  def __init__(self, runner):
    self._runner = runner
    self.events = []
    self.scope, self.put_batch = runner.scope, runner.put_batch

  def eval_step(self, state, batch):
    self.events.append('dispatch')
    return self._runner.eval_step(state, batch)

  def fetch(self, tree):
    self.events.append('fetch')
    return self._runner.fetch(tree)


def _eval_batches(count):
  from tests.helpers import steps  # pylint: disable=g-import-not-at-top

  batches = []
  for seed in range(count):
    batch = steps.batch(seed=seed)
    batch['valid'] = np.arange(16) < (16 if seed < count - 1 else 5)
    batch['lesion_mask'], batch['has_lesion_mask'] = batch['mask'], batch['has_mask']
    batches.append(batch)
  return batches


def test_evaluate_dispatches_the_next_batch_before_fetching_the_last_with_equal_metrics():
  import types  # pylint: disable=g-import-not-at-top

  from care_jax.training import evaluation  # pylint: disable=g-import-not-at-top
  from tests.helpers import steps  # pylint: disable=g-import-not-at-top

  config = steps.make_config(alpha=0.5)
  model, state, step = steps.setup(config)
  runner = steps.parallel_runner(config, model, step, 'mesh')
  state = runner.put_state(state)
  info = types.SimpleNamespace(class_names=('a', 'b', 'c'), rare_classes=(2,), task='multiclass')
  batches = _eval_batches(3)
  recording = _RecordingParallel(runner)
  result, rows = evaluation.evaluate(recording, state, batches, info=info, with_rows=True)
  assert recording.events == ['dispatch', 'dispatch', 'fetch', 'dispatch', 'fetch', 'fetch']

  # One batch at a time, fetched at once: the same metrics and rows.
  confusion, positions, probabilities = 0, [], []
  for index, batch in enumerate(batches):
    with runner.scope():
      c, _, r = runner.fetch(runner.eval_step(state, runner.put_batch(batch)))
    confusion = confusion + c
    positions.append(evaluation.split_positions(index, 16, 1)[r['valid']])
    probabilities.append(r['probabilities'][r['valid']])
  np.testing.assert_array_equal(rows['position'], np.concatenate(positions))
  np.testing.assert_array_equal(rows['probabilities'], np.concatenate(probabilities))
  np.testing.assert_array_equal(result['confusion'], confusion)
  assert result['num_examples'] == 16 + 16 + 5


def test_the_energy_in_the_box_is_averaged_over_the_counted_rows_and_findings():
  from care_jax import metrics  # pylint: disable=g-import-not-at-top
  from care_jax.training import evaluation  # pylint: disable=g-import-not-at-top

  def rows(energy, counted, labels):
    return {
      'valid': np.ones(len(labels), bool),
      'probabilities': np.full((len(labels), 2), 0.5, np.float32),
      'label': np.asarray(labels),
      'energy_in_box': np.asarray(energy, np.float32),
      'energy_counted': np.asarray(counted),
    }

  totals = evaluation._Totals(2)
  totals.add(
    0,
    np.zeros((2, 2), np.int64),
    metrics.AttentionMetrics.empty(),
    rows([0.2, 0.9], [1, 0], [0, 1]),
  )
  totals.add(1, np.zeros((2, 2), np.int64), metrics.AttentionMetrics.empty(), rows([0.4], [1], [1]))
  block = {}
  totals.add_energy(block, ('a', 'b'))
  assert block == {'energy_in_box': pytest.approx(0.3)}

  per_finding = evaluation._Totals(2, multilabel=True)
  energy, counted = [[0.2, 0.5], [0.6, 0.1]], [[True, False], [True, False]]
  per_finding.add(
    0, None, metrics.AttentionMetrics.empty(2), rows(energy, counted, [[1, 0], [1, 1]])
  )
  block = {'per_class': {'a': {}, 'b': {}}}
  per_finding.add_energy(block, ('a', 'b'))
  assert block['per_class'] == {
    'a': {'energy_in_box': pytest.approx(0.4)},
    'b': {'energy_in_box': None},
  }
  assert block['energy_in_box'] == pytest.approx(0.4)
  # No lesion masks: no energy.
  block = {}
  evaluation._Totals(2).add_energy(block, ('a', 'b'))
  assert block == {}
