"""Reading a finished run back: load_model, load_run, init_from, checkpoints by name or step,
and the runs written by 0.1 and 0.2."""

import json
import os

import numpy as np
import pytest

from care_jax import checkpoint
from care_jax import config as config_lib
from care_jax import models
from care_jax import trained_run
from care_jax import training
from tests.helpers import checkpoints as ckpt_fx
from tests.helpers import folder_run as fr
from tests.helpers import versions


def test_load_model_returns_the_runs_config_and_falls_back_to_latest(tmp_path):
  config = ckpt_fx.config('care.lam=0.3', 'model.head=bn_linear', 'data.image_size=16')
  states = ckpt_fx.save_run(tmp_path, config, [(1, None), (2, None)], num_classes=2)
  loaded, model, variables = trained_run.load_model(str(tmp_path))  # No scores: latest.
  assert loaded.care.lam == 0.3 and loaded.data.mean == (0.5, 0.5, 0.5)
  config_lib.validate(loaded)
  ckpt_fx.assert_tree_equal(variables['params'], states[2].params)
  logits, _ = model.apply(variables, np.zeros((1, 16, 16, 3), np.float32), train=False)
  assert logits.shape == (1, 2)


def test_an_ldam_drw_run_is_rebuilt_with_its_cosine_head(tmp_path):
  """loss.name='ldam_drw' with model.head='default' trains and loads the 'normed_linear' head."""
  config = ckpt_fx.config('loss.name=ldam_drw', 'data.image_size=16')
  trained = training.create_model(config, 3)
  assert isinstance(trained.head, models.NormedLinearHead)
  states = ckpt_fx.save_run(tmp_path, config, [(1, None)])
  _, model, variables = trained_run.load_model(str(tmp_path))
  assert model == trained  # the same module, head included
  ckpt_fx.assert_tree_equal(variables['params'], states[1].params)
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
    ckpt_fx.save_run(tmp_path, ckpt_fx.config(), [(1, None)])
    trained_run.load_model(str(tmp_path), which='first')


def test_init_from_takes_weights_and_keeps_a_fresh_optimizer(tmp_path):
  config = ckpt_fx.config()
  states = ckpt_fx.save_run(tmp_path / 'stage1', config, [(4, 0.8), (6, 0.1)])
  fresh = ckpt_fx.state(config, seed=99)
  started = trained_run.init_from(str(tmp_path / 'stage1'), fresh)
  ckpt_fx.assert_tree_equal(started.params, states[4].params)  # The best one.
  ckpt_fx.assert_tree_equal(started.batch_stats, states[4].batch_stats)
  ckpt_fx.assert_tree_equal(started.opt_state, fresh.opt_state)
  assert started.step == 0


def test_init_from_refuses_another_model_naming_the_parameters(tmp_path):
  ckpt_fx.save_run(tmp_path / 'stage1', ckpt_fx.config(), [(4, None)], num_classes=2)
  with pytest.raises(ValueError) as error:
    trained_run.init_from(str(tmp_path / 'stage1'), ckpt_fx.state(ckpt_fx.config(), num_classes=3))
  assert str(error.value) == (
    f"config.init_from = '{tmp_path / 'stage1'}': step 4 holds another model than "
    'config.model builds for this data; differing parameters:\n'
    '  params/head/fc/bias: (3,) here vs (2,) in the checkpoint\n'
    '  params/head/fc/kernel: (128, 3) here vs (128, 2) in the checkpoint'
  )


def test_init_from_an_empty_directory_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    trained_run.init_from(str(tmp_path), ckpt_fx.state(ckpt_fx.config()))


def test_load_model_reads_a_run_written_by_0_1():
  config, model, variables = trained_run.load_model(versions.V0_1_RUN, which='latest')
  with open(os.path.join(versions.V0_1_RUN, 'config.json')) as f:
    differences = config_lib.differences(json.load(f), config_lib.to_json(config))
  # The keys added since, with defaults that keep 0.1's behaviour (and the sections of
  # datasets 0.1 did not have).
  new_sections = {k for k in differences if k.startswith(versions.ADDED_SECTIONS_SINCE_0_1)}
  assert new_sections and all(differences[k][0] == '<missing>' for k in new_sections)
  differences = {k: v for k, v in differences.items() if k not in new_sections}
  assert differences == {k: ('<missing>', v) for k, v in versions.LOADED_SINCE_0_1.items()}
  with open(os.path.join(versions.V0_1_RUN, 'metrics.json')) as f:
    classes = json.load(f)['classes']
  assert model.head.num_classes == len(classes) == 5
  logits, inter = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32), train=False)
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
  maps = model.attention_maps(variables, inter['features'], np.array([0, 3]))
  assert maps.shape == (2, 4, 4)


@pytest.mark.parametrize('which, step', [('best', 4), ('latest', 4), (2, 2)])
def test_load_model_reads_a_run_written_by_0_2(which, step):
  config, model, variables = trained_run.load_model(versions.V0_2_RUN, which=which)
  # The config of 0.2 is today's but for the keys added since, at their defaults.
  with open(os.path.join(versions.V0_2_RUN, 'config.json')) as f:
    differences = config_lib.differences(json.load(f), config_lib.to_json(config))
  new_sections = {k for k in differences if k.startswith(versions.ADDED_SECTIONS_SINCE_0_2)}
  assert new_sections and all(differences[k][0] == '<missing>' for k in new_sections)
  differences = {k: v for k, v in differences.items() if k not in new_sections}
  assert differences == {k: ('<missing>', v) for k, v in versions.ADDED_SINCE_0_2.items()}
  # Today's defaults with the run's overrides are its config, but for the values left to the
  # recipe, which the run holds resolved: the learning rate, (0.2 had no 'auto') the host
  # augmentation that 'auto' is on a CPU, and the keys that follow its multi-class task.
  fresh = config_lib.to_json(versions.v0_2_config())
  assert config_lib.differences(fresh, config_lib.to_json(config)) == {
    'train.learning_rate': (None, 0.001),
    'data.augment.on_device': ('auto', False),
    'care.stage1_metric': ('auto', 'mca'),
    'data.nih_chestxray14.mode': ('auto', 'boxed'),
  }
  assert (
    config_lib.differences(
      config_lib.to_json(config_lib.resolve_recipe(versions.v0_2_config())),
      config_lib.to_json(config),
    )
    == {}
  )
  run = trained_run.load_run(versions.V0_2_RUN, which=which)
  with open(os.path.join(versions.V0_2_RUN, 'metrics.json')) as f:
    metrics = json.load(f)
  assert run.step == step and list(run.class_names) == metrics['classes']
  assert [run.class_names[k] for k in run.rare_classes] == metrics['rare_classes']
  assert run.train_class_counts is not None and len(run.train_class_counts) == 5
  ckpt_fx.assert_tree_equal(variables, run.variables)
  logits, inter = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32), train=False)
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
  maps = model.attention_maps(variables, inter['features'], np.array([0, 3]))
  assert maps.shape == (2, 4, 4)


def test_the_best_step_of_a_run_written_by_0_2_is_found_by_its_score():
  with open(os.path.join(versions.V0_2_RUN, 'metrics.json')) as f:
    tested = json.load(f)['test_checkpoint']
  assert tested == {'which': 'best', 'step': 4}
  # Both steps were validated (scores 0.208 and 0.216): the best is read from the scores, not
  # the fallback to the latest step of a run without them.
  scores = {}
  for step in (2, 4):
    with open(os.path.join(versions.V0_2_RUN, 'checkpoints', str(step), 'metrics', 'metrics')) as f:
      scores[step] = json.load(f)[checkpoint.SELECTION_SCORE]
  assert max(scores, key=scores.get) == 4
  manager = checkpoint.open_manager(checkpoint.checkpoint_dir(versions.V0_2_RUN), read_only=True)
  try:
    assert manager.best_step() == 4
  finally:
    manager.close()
  assert trained_run.load_run(versions.V0_2_RUN, which='best').step == 4


def test_checkpoints_are_chosen_by_name_or_step(folder_run):
  workdir = str(folder_run.workdir)
  assert trained_run.load_run(workdir, which='latest').step == 6
  assert trained_run.load_run(workdir, which=3).step == 3
  assert trained_run.load_run(workdir, which='3').step == 3
  run = trained_run.load_run(workdir, which='best')
  assert run.class_names == fr.CLASSES and run.train_class_counts == (8, 8, 8)
  with pytest.raises(ValueError, match=r'no checkpoint of step 4 .*its steps: \[3, 6\]'):
    trained_run.load_run(workdir, which=4)
  with pytest.raises(ValueError, match="which must be 'best', 'latest' or a step"):
    trained_run.load_run(workdir, which='first')
