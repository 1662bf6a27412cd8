"""The training loop: checks before training, one compilation per step, the test block's
checkpoint."""

import pytest

from care_jax import inference
from care_jax import trained_run
from care_jax import training
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
