"""The paper's two stages in one run: when stage 1 ends, what stage 2 starts from, resuming."""

import json
import math
import os

import chex
import flax
import ml_collections
import numpy as np
import pytest

from care_jax import checkpoint
from care_jax import config as config_lib
from care_jax import trained_run
from care_jax import training
from care_jax.training import inputs as inputs_lib
from care_jax.training import stages
from tests.helpers import runs

NUM_STEPS = 16
EVERY = 2
TWO_STAGE = [
  'care.protocol=two_stage',
  f'train.num_steps={NUM_STEPS}',
  f'train.eval_every_steps={EVERY}',
  'care.stage1_patience=2',
  'care.stage1_max_fraction=0.5',
  # Every step saved and kept: resuming from the very step that ends stage 1
  # is tested, and stage 2's first state can be read back.
  'checkpoint.every_steps=1',
  'checkpoint.keep=100',
  'checkpoint.async_save=False',
  'train.log_every_steps=1',
]


def _two_stage(every=10, patience=3, fraction=0.5, num_steps=100):
  config = config_lib.default_config()
  config.care.protocol = 'two_stage'
  config.train.eval_every_steps = every
  config.care.stage1_patience = patience
  config.care.stage1_max_fraction = fraction
  return stages.TwoStage.from_config(config, num_steps)


def test_stage1_ends_patience_validations_after_the_best_one():
  two_stage = _two_stage(every=10, patience=3)
  assert two_stage.switch_step(10) == 40
  assert two_stage.switch_step(20) == 50


def test_stage1_ends_after_the_max_fraction_of_training_at_the_latest():
  two_stage = _two_stage(every=15, patience=3, fraction=0.5, num_steps=101)
  assert two_stage.last_stage1_step == 50
  assert two_stage.switch_step(30) == 50
  assert two_stage.switch_step(None) == 50  # Before the first validation.


def test_without_validations_stage1_lasts_the_max_fraction():
  assert _two_stage(every=0, fraction=0.3, num_steps=100).switch_step(None) == 30


def test_from_step_protocol_has_no_stages():
  assert stages.TwoStage.from_config(config_lib.default_config(), 100) is None


def test_an_undefined_metric_scores_minus_infinity():
  config = config_lib.default_config()
  config.care.protocol, config.train.eval_every_steps = 'two_stage', 10
  config.care.stage1_metric = 'rare_recall'
  two_stage = stages.TwoStage.from_config(config, 100)
  assert two_stage.score({'rare_recall': None}) == -math.inf
  assert two_stage.score({'rare_recall': 0.25}) == 0.25


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


def _state(value):
  return _State(params={'w': np.full(3, value, np.float32)}, batch_stats={})


def test_the_best_stage1_state_is_kept_and_only_a_better_one_replaces_it(tmp_path):
  config = config_lib.default_config()
  with stages.Stage1Best(str(tmp_path), config, meta={}) as best:
    assert best.step is None and best.score is None
    assert best.offer(4, -math.inf, _state(0.0), train_seconds=1.0)  # The first is always kept.
    assert best.score is None  # Undefined: JSON null in metrics.json, not -Infinity.
    assert best.offer(8, 0.5, _state(1.0), train_seconds=2.0)
    assert not best.offer(12, 0.5, _state(2.0), train_seconds=3.0)  # Not better.
    assert (best.step, best.score) == (8, 0.5)
  with stages.Stage1Best(str(tmp_path), config, meta={}) as reopened:
    assert (reopened.step, reopened.score) == (8, 0.5)
    restored = reopened.restore(checkpoint.abstract_tree(_state(0.0)))
  np.testing.assert_array_equal(restored.params['w'], np.ones(3))


def _config(tmp_path, *extra) -> ml_collections.ConfigDict:
  overrides = runs.TINY_DATA + TWO_STAGE + [f'data.dir={tmp_path / "tfds"}', *extra]
  return config_lib.apply_overrides(config_lib.default_config(), overrides)


class _Crash(Exception):
  pass


class _CrashingInputs:
  """The pipeline's inputs, whose training batches stop after step `crash_after`."""

  def __init__(self, config, crash_after):
    self._inputs = inputs_lib.PipelineInputs(config)
    self._crash_after = crash_after
    self.info = self._inputs.info

  def train_batches(self, *, batch_size, start_step):
    batches = self._inputs.train_batches(batch_size=batch_size, start_step=start_step)
    for step in range(start_step + 1, self._crash_after + 1):
      del step
      yield next(batches)
    raise _Crash

  def __getattr__(self, name):
    return getattr(self._inputs, name)


def _train(config, workdir, crash_after=None):
  if crash_after is None:
    return training.train_and_evaluate(config, str(workdir))
  inputs = _CrashingInputs(config, crash_after)
  with pytest.raises(_Crash):
    training.run(training.create_experiment(config, inputs.info), inputs, str(workdir))
  return None


def _final_params(workdir):
  return trained_run.load_run(str(workdir), which=NUM_STEPS).variables


def _without_times(metrics):
  return {k: v for k, v in metrics.items() if k != 'train_seconds'}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  root = tmp_path_factory.mktemp('two_stage')
  config = _config(root)
  metrics = _train(config, root / 'run')
  return root, config, metrics


@pytest.mark.slow
def test_stage1_trains_ce_alone_and_stage2_adds_the_attention_loss(uninterrupted):
  root, config, metrics = uninterrupted
  record = metrics['stages']
  two_stage = stages.TwoStage.from_config(config, NUM_STEPS)
  assert record['stage2_start_step'] == two_stage.switch_step(record['stage1_best_step'])
  assert record['stage1_best_step'] % EVERY == 0
  assert record['stage2_start_step'] <= two_stage.last_stage1_step == 8
  log = [json.loads(line) for line in open(root / 'run' / 'train_log.jsonl')]
  start = record['stage2_start_step']
  assert all('care' not in r for r in log if r['step'] <= start)
  assert all(r['alpha'] == 0.5 and 'care' in r for r in log if r['step'] > start)
  # Only the best stage-1 state is kept, with its score.
  assert sorted(os.listdir(root / 'run' / stages.STAGE1_DIR)) == [str(record['stage1_best_step'])]


@pytest.mark.slow
def test_stage2_continues_from_the_best_stage1_state(uninterrupted):
  root, config, metrics = uninterrupted
  start = metrics['stages']['stage2_start_step']
  inputs = inputs_lib.PipelineInputs(config)
  experiment = training.create_experiment(config, inputs.info)
  parallel = experiment.parallel
  with stages.Stage1Best(str(root / 'run'), experiment.config, meta={}) as kept:
    best = kept.restore(parallel.abstract_state(experiment.state))
  # Stage 2's first step, written out: the CARE step on the best stage-1
  # state, at the step counter of the switch, with the batch of that step.
  best = best.replace(step=np.asarray(start, best.step.dtype))
  batch = next(inputs.train_batches(batch_size=config.train.batch_size, start_step=start))
  with parallel.scope():
    after, _ = parallel.train_step(parallel.put_state(best), parallel.put_batch(batch))
  saved = trained_run.load_run(str(root / 'run'), which=start + 1).variables
  chex.assert_trees_all_equal(parallel.get_state(after).params, saved['params'])


# A run killed inside stage 1 is tests/integration/resume_test.py's (two SIGKILLs of a two-stage
# run before its switch); here the kills that only a two-stage run has.
@pytest.mark.slow
@pytest.mark.parametrize('where', ['switch', 'stage2'])
def test_a_run_killed_at_or_after_the_switch_resumes_to_the_uninterrupted_result(
  uninterrupted, tmp_path, where
):
  root, config, metrics = uninterrupted
  start = metrics['stages']['stage2_start_step']
  crash_after = {'switch': start, 'stage2': start + 5}[where]
  workdir = tmp_path / 'run'
  _train(config, workdir, crash_after=crash_after)
  resumed = _train(config, workdir)
  assert _without_times(resumed) == _without_times(metrics)
  chex.assert_trees_all_equal(_final_params(workdir), _final_params(root / 'run'))
