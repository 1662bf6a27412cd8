"""Checkpoints of a run: save/restore onto a mesh, retention, config checks, init_from,
load_model, the messages of bad inputs (another model, incompatible config,
unwritable workdir, full disk, SIGTERM), and the runs written by 0.1 and 0.2."""

import errno
import json
import os
import shutil
import signal

from architecture_test import ADDED_SECTIONS_SINCE_0_1
from architecture_test import ADDED_SINCE_0_1
import jax
import numpy as np
import pytest

from care_jax import checkpoint
from care_jax import config as config_lib
from care_jax import models
from care_jax import trained_run
from care_jax import training
from care_jax.training import outputs
from care_jax.training import preemption

CLASSES = ['a', 'b', 'c']


def _config(*overrides):
  return config_lib.apply_overrides(
    config_lib.default_config(),
    ['checkpoint.async_save=False', 'checkpoint.keep=2', 'checkpoint.keep_best=1', *overrides],
  )


def _state(config, num_classes=3, seed=0):
  model = training.create_model(config, num_classes)
  return training.create_train_state(config, model, (16, 16, 3), 10, jax.random.key(seed))


def _save_run(workdir, config, scores, *, num_classes=3):
  """Saves a state per (step, validation score); params differ per step."""
  states = {}
  with checkpoint.RunCheckpoints(
    str(workdir), config, meta={'class_names': CLASSES[:num_classes]}
  ) as ckpts:
    for step, score in scores:
      states[step] = _state(config, num_classes, seed=step)
      ckpts.save(step, states[step], selection_score=score)
  return states


def _assert_tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_restore_onto_the_replicated_mesh_sharding(tmp_path):
  config = _config()
  states = _save_run(tmp_path, config, [(3, None)])
  runner = training.make_parallel(config, lambda s, b: (s, b), lambda s, b: b)
  with checkpoint.RunCheckpoints(str(tmp_path), config, meta={}) as ckpts:
    restored, meta = ckpts.restore(3, runner.abstract_state(_state(config)))
  assert meta['class_names'] == CLASSES and meta['step'] == 3
  replicated = jax.NamedSharding(runner.mesh, jax.P())
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding == replicated
  _assert_tree_equal(jax.device_get(restored.params), states[3].params)
  _assert_tree_equal(jax.device_get(restored.opt_state), states[3].opt_state)


def test_keeps_the_latest_and_the_best_and_finds_the_best(tmp_path):
  config = _config()
  states = _save_run(
    tmp_path, config, [(1, 0.5), (2, None), (3, 0.9), (4, 0.2), (5, None), (6, None)]
  )
  assert sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints')) == [3, 5, 6]
  _, _, best = trained_run.load_model(str(tmp_path))
  _assert_tree_equal(best['params'], states[3].params)
  _, model, latest = trained_run.load_model(str(tmp_path), which='latest')
  _assert_tree_equal(latest['batch_stats'], states[6].batch_stats)
  assert model.head.num_classes == 3 and model.head.dtype == np.float32


def test_load_model_returns_the_runs_config_and_falls_back_to_latest(tmp_path):
  config = _config('care.lam=0.3', 'model.head=bn_linear', 'data.image_size=16')
  states = _save_run(tmp_path, config, [(1, None), (2, None)], num_classes=2)
  loaded, model, variables = trained_run.load_model(str(tmp_path))  # No scores: latest.
  assert loaded.care.lam == 0.3 and loaded.data.mean == (0.5, 0.5, 0.5)
  config_lib.validate(loaded)
  _assert_tree_equal(variables['params'], states[2].params)
  logits, _ = model.apply(variables, np.zeros((1, 16, 16, 3), np.float32), train=False)
  assert logits.shape == (1, 2)


def test_an_ldam_drw_run_is_rebuilt_with_its_cosine_head(tmp_path):
  """loss.name='ldam_drw' with model.head='default' trains and loads the 'normed_linear' head."""
  config = _config('loss.name=ldam_drw', 'data.image_size=16')
  trained = training.create_model(config, 3)
  assert isinstance(trained.head, models.NormedLinearHead)
  states = _save_run(tmp_path, config, [(1, None)])
  _, model, variables = trained_run.load_model(str(tmp_path))
  assert model == trained  # the same module, head included
  _assert_tree_equal(variables['params'], states[1].params)
  images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  logits, _ = model.apply(variables, images, train=False)
  expected, _ = trained.apply(
    {'params': states[1].params, 'batch_stats': states[1].batch_stats}, images, train=False
  )
  np.testing.assert_array_equal(logits, expected)
  assert np.all(np.abs(logits) <= 1.0 + 1e-6)  # cosine logits


def test_load_model_without_a_checkpoint_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint in .*checkpoints does not exist'):
    trained_run.load_model(str(tmp_path))
  with pytest.raises(ValueError, match="which must be 'best', 'latest' or a step, got 'first'"):
    _save_run(tmp_path, _config(), [(1, None)])
    trained_run.load_model(str(tmp_path), which='first')


def test_resume_refuses_an_incompatible_config_naming_the_keys(tmp_path):
  _save_run(tmp_path, _config(), [(2, None)])
  changed = _config(
    'care.lam=0.1',
    'train.learning_rate=0.01',
    'train.log_every_steps=7',
    'checkpoint.every_steps=3',
  )
  with checkpoint.RunCheckpoints(str(tmp_path), changed, meta={}) as ckpts:
    with pytest.raises(ValueError) as error:
      ckpts.restore(2, checkpoint.abstract_tree(_state(changed)))
  message = str(error.value)
  assert message.startswith(
    f'cannot resume from {tmp_path / "checkpoints"} (step 2): the '
    'config differs in care.lam, train.learning_rate:'
  )
  assert 'care.lam: 0.7 in the checkpoint, 0.1 now' in message
  assert 'log_every_steps' not in message.split('Keys that may')[0]


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
  _save_run(tmp_path, _config(), [(2, None)])
  other = _config('model.name=resnet18')
  with checkpoint.RunCheckpoints(str(tmp_path), other, meta={}) as ckpts:
    with pytest.raises(
      ValueError,
      match=r'config differs in model\.name:\n  model\.name: '
      r"'tiny_cnn' in the checkpoint, 'resnet18' now",
    ):
      ckpts.restore(2, checkpoint.abstract_tree(_state(_config())))


@pytest.mark.parametrize('schedule, resumable', [('constant', True), ('cosine', False)])
def test_run_length_may_change_on_resume_only_with_a_constant_learning_rate(schedule, resumable):
  saved = config_lib.to_json(_config(f'train.schedule={schedule}'))
  longer = config_lib.to_json(
    _config(
      f'train.schedule={schedule}', 'train.num_steps=5000', 'data.dir=/elsewhere', 'parallel=pmap'
    )
  )
  expected = {} if resumable else {'train.num_steps': (1000, 5000)}
  assert checkpoint.config_differences(saved, longer) == expected


def test_init_from_takes_weights_and_keeps_a_fresh_optimizer(tmp_path):
  config = _config()
  states = _save_run(tmp_path / 'stage1', config, [(4, 0.8), (6, 0.1)])
  fresh = _state(config, seed=99)
  started = trained_run.init_from(str(tmp_path / 'stage1'), fresh)
  _assert_tree_equal(started.params, states[4].params)  # The best one.
  _assert_tree_equal(started.batch_stats, states[4].batch_stats)
  _assert_tree_equal(started.opt_state, fresh.opt_state)
  assert started.step == 0


def test_init_from_refuses_another_model_naming_the_parameters(tmp_path):
  _save_run(tmp_path / 'stage1', _config(), [(4, None)], num_classes=2)
  with pytest.raises(ValueError) as error:
    trained_run.init_from(str(tmp_path / 'stage1'), _state(_config(), num_classes=3))
  assert str(error.value) == (
    f"config.init_from = '{tmp_path / 'stage1'}': step 4 holds another model than "
    'config.model builds for this data; differing parameters:\n'
    '  params/head/fc/bias: (3,) here vs (2,) in the checkpoint\n'
    '  params/head/fc/kernel: (128, 3) here vs (128, 2) in the checkpoint'
  )


def test_init_from_an_empty_directory_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    trained_run.init_from(str(tmp_path), _state(_config()))


def test_unwritable_workdir_fails_before_training(tmp_path):
  (tmp_path / 'file').write_text('')
  workdir = str(tmp_path / 'file' / 'run')
  with pytest.raises(
    OSError,
    match=f"workdir '{workdir}' is not writable \\(Not a directory\\); choose a writable --workdir",
  ):
    training.train_and_evaluate(_config(), workdir)


@pytest.mark.parametrize('async_save', [False, True])
def test_full_disk_during_a_save_names_the_step_and_keeps_the_last_checkpoint(
  tmp_path, monkeypatch, async_save
):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler  # pylint: disable=g-import-not-at-top

  config = _config(f'checkpoint.async_save={async_save}')
  states = _save_run(tmp_path, config, [(2, None)])

  async def disk_full(self, x, directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, '_save_fn', disk_full)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config, meta={'class_names': CLASSES})
  with pytest.raises(OSError) as error:
    ckpts.save(4, _state(config, seed=4))
    ckpts.close()  # An asynchronous write fails here at the latest.
  assert str(error.value) == (
    f'[Errno 28] could not write the checkpoint of step 4 to {tmp_path / "checkpoints"} '
    '(No space left on device). The last complete checkpoint (step 2) is intact: fix the '
    'cause (free disk space) and run the same command to resume from it.'
  )
  monkeypatch.undo()
  _, _, variables = trained_run.load_model(str(tmp_path), which='latest')
  _assert_tree_equal(variables['params'], states[2].params)


def test_sigterm_is_noticed_and_the_previous_handler_restored(tmp_path):
  previous = signal.getsignal(signal.SIGTERM)
  with checkpoint.RunCheckpoints(str(tmp_path), _config(), meta={}) as ckpts:
    with preemption.PreemptionWatch(ckpts) as watch:
      assert not watch.requested(1)
      os.kill(os.getpid(), signal.SIGTERM)
      assert watch.requested(2)
  assert signal.getsignal(signal.SIGTERM) == previous


def test_truncate_log_drops_records_after_the_resumed_step(tmp_path):
  log = tmp_path / 'train_log.jsonl'
  log.write_text(''.join(f'{{"step": {s}, "loss": 1.0}}\n' for s in (2, 4, 6, 8)))
  outputs.truncate_log(str(log), 5)
  assert log.read_text() == '{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 1.0}\n'


# A run written by care-jax 0.1.0 (tests/fixtures/make_v0_1_run.py) ---------------------------

V0_1_RUN = os.path.join(os.path.dirname(__file__), 'fixtures', 'v0_1_run')


def test_load_model_reads_a_run_written_by_0_1():
  config, model, variables = trained_run.load_model(V0_1_RUN, which='latest')
  with open(os.path.join(V0_1_RUN, 'config.json')) as f:
    differences = config_lib.differences(json.load(f), config_lib.to_json(config))
  # The keys added since, with defaults that keep 0.1's behaviour (and the sections of
  # datasets 0.1 did not have).
  new_sections = {k for k in differences if k.startswith(ADDED_SECTIONS_SINCE_0_1)}
  assert new_sections and all(differences[k][0] == '<missing>' for k in new_sections)
  differences = {k: v for k, v in differences.items() if k not in new_sections}
  assert differences == {k: ('<missing>', v) for k, v in ADDED_SINCE_0_1.items()}
  with open(os.path.join(V0_1_RUN, 'metrics.json')) as f:
    classes = json.load(f)['classes']
  assert model.head.num_classes == len(classes) == 5
  logits, inter = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32), train=False)
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
  maps = model.attention_maps(variables, inter['features'], np.array([0, 3]))
  assert maps.shape == (2, 4, 4)


def test_a_run_written_by_0_1_resumes_and_starts_stage_two(tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(V0_1_RUN, workdir)
  with open(os.path.join(V0_1_RUN, 'overrides.json')) as f:
    overrides = json.load(f)
  # data.dir may change on resume: keep the generated data out of ~/tensorflow_datasets.
  config = config_lib.apply_overrides(
    config_lib.default_config(), [*overrides, 'train.num_steps=3', f'data.dir={tmp_path / "tfds"}']
  )
  result = training.train_and_evaluate(config, str(workdir))
  assert result['step'] == 3
  with open(workdir / 'train_log.jsonl') as f:
    assert [json.loads(line)['step'] for line in f] == [2, 3]
  saved = trained_run.load_model(V0_1_RUN, which='latest')[2]
  stage2 = training.create_train_state(
    config, training.create_model(config, 5), (32, 32, 3), 3, jax.random.key(1)
  )
  stage2 = trained_run.init_from(V0_1_RUN, stage2)
  _assert_tree_equal(stage2.params, saved['params'])
  assert int(stage2.step) == 0


# A run written by care-jax 0.2 (tests/fixtures/make_v0_2_run.py) ---------------------------

V0_2_RUN = os.path.join(os.path.dirname(__file__), 'fixtures', 'v0_2_run')


def _v0_2_overrides(*more):
  with open(os.path.join(V0_2_RUN, 'overrides.json')) as f:
    return config_lib.apply_overrides(config_lib.default_config(), [*json.load(f), *more])


@pytest.mark.parametrize('which, step', [('best', 4), ('latest', 4), (2, 2)])
def test_load_model_reads_a_run_written_by_0_2(which, step):
  config, model, variables = trained_run.load_model(V0_2_RUN, which=which)
  # The config of 0.2 is today's: no key added, none changed.
  with open(os.path.join(V0_2_RUN, 'config.json')) as f:
    assert config_lib.differences(json.load(f), config_lib.to_json(config)) == {}
  # Today's defaults with the run's overrides are its config, but for the learning rate, which
  # the run resolved from the optimizer's default.
  fresh = config_lib.to_json(_v0_2_overrides())
  assert config_lib.differences(fresh, config_lib.to_json(config)) == {
    'train.learning_rate': (None, 0.001)
  }
  run = trained_run.load_run(V0_2_RUN, which=which)
  with open(os.path.join(V0_2_RUN, 'metrics.json')) as f:
    metrics = json.load(f)
  assert run.step == step and list(run.class_names) == metrics['classes']
  assert [run.class_names[k] for k in run.rare_classes] == metrics['rare_classes']
  assert run.train_class_counts is not None and len(run.train_class_counts) == 5
  _assert_tree_equal(variables, run.variables)
  logits, inter = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32), train=False)
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
  maps = model.attention_maps(variables, inter['features'], np.array([0, 3]))
  assert maps.shape == (2, 4, 4)


def test_the_best_step_of_a_run_written_by_0_2_is_found_by_its_score():
  with open(os.path.join(V0_2_RUN, 'metrics.json')) as f:
    tested = json.load(f)['test_checkpoint']
  assert tested == {'which': 'best', 'step': 4}
  # Both steps were validated (scores 0.208 and 0.216): the best is read from the scores, not
  # the fallback to the latest step of a run without them.
  scores = {}
  for step in (2, 4):
    with open(os.path.join(V0_2_RUN, 'checkpoints', str(step), 'metrics', 'metrics')) as f:
      scores[step] = json.load(f)[checkpoint.SELECTION_SCORE]
  assert max(scores, key=scores.get) == 4
  manager = checkpoint.open_manager(checkpoint.checkpoint_dir(V0_2_RUN), read_only=True)
  try:
    assert manager.best_step() == 4
  finally:
    manager.close()
  assert trained_run.load_run(V0_2_RUN, which='best').step == 4


def test_a_run_written_by_0_2_resumes_and_starts_stage_two(tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(V0_2_RUN, workdir)
  # data.dir may change on resume: keep the generated data out of ~/tensorflow_datasets.
  config = _v0_2_overrides('train.num_steps=6', f'data.dir={tmp_path / "tfds"}')
  result = training.train_and_evaluate(config, str(workdir))
  assert result['step'] == 6
  with open(workdir / 'train_log.jsonl') as f:
    steps = [json.loads(line)['step'] for line in f]
  assert steps[0] == 4 and steps[-1] == 6
  resumed = trained_run.load_run(str(workdir), which='latest')
  assert resumed.step == 6 and resumed.class_names == trained_run.load_run(V0_2_RUN).class_names
  saved = trained_run.load_model(V0_2_RUN)[2]
  stage2 = training.create_train_state(
    config, training.create_model(config, 5), (32, 32, 3), 6, jax.random.key(1)
  )
  stage2 = trained_run.init_from(V0_2_RUN, stage2)
  _assert_tree_equal(stage2.params, saved['params'])
  assert int(stage2.step) == 0
