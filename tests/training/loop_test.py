"""The training loop: checks before training, one compilation per step, no fetch between log
steps, the test block's checkpoint, the measured guidance weight, the train step's memory."""

import contextlib
import json

import jax
from jax._src import array as array_lib
import ml_collections
import numpy as np
import pytest

from care_jax import inference
from care_jax import trained_run
from care_jax import training
from care_jax.training import loop as loop_lib
from care_jax.training import parallel as parallel_lib
from care_jax.training import step as step_lib
from tests.helpers import folder_run as fr
from tests.helpers import runs


def test_batch_size_must_split_over_the_devices(tmp_path):
  config = runs.tiny_config(tmp_path, 'train.batch_size=12')  # 8 simulated devices
  with pytest.raises(ValueError, match='train.batch_size = 12 must be divisible'):
    training.train_and_evaluate(config, str(tmp_path / 'w'))


@pytest.mark.slow
def test_training_compiles_each_step_once(tmp_path, monkeypatch):
  traces = {'train': 0, 'eval': 0}
  make_train, make_eval = training.make_train_step, training.make_eval_step

  def counting(kind, make):
    def wrapped(*args, **kwargs):
      step = make(*args, **kwargs)

      def traced(*a):
        traces[kind] += 1  # Python runs only while jax traces the step.
        return step(*a)

      return traced

    return wrapped

  # The loop builds its steps through care_jax.training.step.
  monkeypatch.setattr(step_lib, 'make_train_step', counting('train', make_train))
  monkeypatch.setattr(step_lib, 'make_eval_step', counting('eval', make_eval))
  # Stage switch at step 3 and evaluations in between: still one compilation each.
  config = runs.tiny_config(tmp_path, 'care.start_step=3', 'train.eval_every_steps=2')
  training.train_and_evaluate(config, str(tmp_path / 'w'))
  assert traces == {'train': 1, 'eval': 1}


def test_the_test_block_can_score_the_best_checkpoint(folder_run, tmp_path):
  _, root, rows, last = folder_run
  workdir = tmp_path / 'best'
  config = fr.config(root, tmp_path / 'tfds', 'train.test_checkpoint=best')
  metrics = training.train_and_evaluate(config, str(workdir))
  best = trained_run.load_run(str(workdir), which='best').step
  assert metrics['test_checkpoint'] == {'which': 'best', 'step': best}
  assert last['test_checkpoint'] == {'which': 'last', 'step': 6}
  fr.write_test_csv(root, rows, tmp_path / 'test.csv')
  inference.predict(str(workdir), str(tmp_path / 'test.csv'), str(tmp_path / 'p.csv'))
  assert fr.confusion(root, rows, tmp_path / 'p.csv', tmp_path) == metrics['test']['confusion']


class _NoDeviceToHost:
  """`jax.transfer_guard_device_to_host('disallow')` while active, also where it cannot see.

  On the CPU backend a fetch aliases host memory and the transfer guard lets it pass, so
  reading an array's value (``np.asarray``, ``float``, `jax.device_get`: `ArrayImpl._value`)
  raises here too.
  """

  def __init__(self, monkeypatch):
    self._stack = contextlib.ExitStack()
    self.active = False
    value = array_lib.ArrayImpl._value

    def guarded_value(array):
      if self.active:
        raise AssertionError('a device-to-host transfer between two log steps')
      return value.fget(array)

    monkeypatch.setattr(array_lib.ArrayImpl, '_value', property(guarded_value))

  def start(self):
    self._stack.enter_context(jax.transfer_guard_device_to_host('disallow'))
    self.active = True

  def stop(self):
    self._stack.close()
    self.active = False


@pytest.mark.slow
@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
def test_the_steps_between_two_log_steps_transfer_nothing_to_the_host(
  tmp_path, monkeypatch, parallel
):
  """From the end of one log step to the next: batches go in, steps run, nothing comes back."""
  guard = _NoDeviceToHost(monkeypatch)
  after_step, guarded_steps = loop_lib._after_step, []

  def after_step_with_guard(context, state, step, *args):
    log_step = step % context.experiment.config.train.log_every_steps == 0
    if log_step or step == context.experiment.num_steps:
      guard.stop()  # A log step fetches its metrics.
    else:
      guarded_steps.append(step)
    state = after_step(context, state, step, *args)
    guard.start()
    return state

  monkeypatch.setattr(loop_lib, '_after_step', after_step_with_guard)
  config = runs.tiny_config(
    tmp_path,
    'train.num_steps=7',
    'train.log_every_steps=3',
    'train.progress=True',
    f'parallel={parallel}',
  )
  try:
    training.train_and_evaluate(config, str(tmp_path / 'w'))
  finally:
    guard.stop()
  # Guarded: steps 2-3 and 5-7 (batch, dispatch), the bookkeeping after steps 2 and 5 too.
  assert guarded_steps == [1, 2, 4, 5]


def test_an_auto_guidance_weight_starts_the_term_equal_to_the_loss(tmp_path):
  config = runs.tiny_config(
    tmp_path,
    'guidance.method=gradia',
    "guidance.weight='auto'",
    'care.start_step=0',
    'train.num_steps=2',
    'train.log_every_steps=1',
  )
  training.train_and_evaluate(config, str(tmp_path / 'run'))
  with open(tmp_path / 'run' / 'train_log.jsonl') as f:
    first = json.loads(f.readline())
  # Measured on the run's first batch at the fresh state: the step-1 record's own terms.
  assert first['weight'] != 1.0
  np.testing.assert_allclose(first['weight'] * first['guidance'], first['ce'], rtol=1e-4)


def test_metrics_json_records_the_train_steps_memory(folder_run):
  with open(folder_run.workdir / 'metrics.json') as f:
    memory = json.load(f)['train_step_memory']
  assert memory['temp_bytes'] > 0
  # The state (replicated) and the device's share of the batch go in; the state is donated.
  assert memory['argument_bytes'] > memory['alias_bytes'] > 0
  assert memory['output_bytes'] > memory['alias_bytes']


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
def test_step_memory_measures_the_step_of_either_back_end(parallel):
  def train_step(state, batch):
    hidden = jax.numpy.tanh(batch @ state)
    return state - hidden.T @ batch, {'loss': jax.numpy.mean(hidden)}

  back_end = parallel_lib.make_parallel(
    ml_collections.ConfigDict({'parallel': parallel}), train_step, train_step
  )
  state = back_end.put_state(np.ones((64, 64), np.float32))
  batch = back_end.put_batch(np.ones((16, 64), np.float32))
  with back_end.scope():
    memory = loop_lib.step_memory(back_end.train_step, state, batch)
  # Per device: the whole state, an eighth of the batch (8 simulated devices).
  assert memory['argument_bytes'] == 4 * (64 * 64 + 2 * 64)
  assert memory['temp_bytes'] > 0


def test_step_memory_is_none_where_the_back_end_gives_no_analysis():
  class NoAnalysis:
    def lower(self, *args):
      return self

    def compile(self):
      return self

    def memory_analysis(self):
      return None  # What jax's Compiled.memory_analysis returns where the back-end has none.

  assert loop_lib.step_memory(NoAnalysis(), None, None) is None
