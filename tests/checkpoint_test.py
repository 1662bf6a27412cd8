"""Writing checkpoints: save and restore onto a mesh, retention, what may change on resume,
an unwritable workdir, a full disk."""

import errno
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from care_jax import checkpoint
from care_jax import config as config_lib
from care_jax import trained_run
from care_jax import training
from tests.helpers import checkpoints as ckpt_fx


def test_restore_onto_the_replicated_mesh_sharding(tmp_path):
  config = ckpt_fx.config()
  states = ckpt_fx.save_run(tmp_path, config, [(3, None)])
  runner = training.make_parallel(config, lambda s, b: (s, b), lambda s, b: b)
  with checkpoint.RunCheckpoints(str(tmp_path), config, meta={}) as ckpts:
    restored, meta = ckpts.restore(3, runner.abstract_state(ckpt_fx.state(config)))
  assert meta['class_names'] == ckpt_fx.CLASSES and meta['step'] == 3
  replicated = jax.NamedSharding(runner.mesh, jax.P())
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding == replicated
  ckpt_fx.assert_tree_equal(jax.device_get(restored.params), states[3].params)
  ckpt_fx.assert_tree_equal(jax.device_get(restored.opt_state), states[3].opt_state)


# Reads a run's weights in a fresh Python with one CPU device and saves them as .npz.
_READ_ON_ONE_DEVICE = """
import sys, jax, numpy as np
from care_jax import trained_run
assert jax.device_count() == 1
params = trained_run.load_run(sys.argv[1]).variables['params']
np.savez(sys.argv[2], *jax.tree.leaves(params))
"""


def test_the_device_state_saved_asynchronously_reads_back_on_any_device_count(tmp_path):
  config = ckpt_fx.config('checkpoint.async_save=True')
  runner = training.make_parallel(config, lambda s, b: (s, b), lambda s, b: b)
  host = ckpt_fx.state(config)
  placed = runner.put_state(host)
  with checkpoint.RunCheckpoints(str(tmp_path), config, meta={'class_names': ['a']}) as ckpts:
    ckpts.save(3, placed)
    # The next train step donates the state: the save holds its own host copy.
    jax.tree.map(lambda x: x.delete(), placed)
  ckpt_fx.assert_tree_equal(trained_run.load_run(str(tmp_path)).variables['params'], host.params)
  with checkpoint.RunCheckpoints(str(tmp_path), config, meta={}) as ckpts:
    restored, _ = ckpts.restore(3, runner.abstract_state(host))
  ckpt_fx.assert_tree_equal(jax.device_get(restored.opt_state), host.opt_state)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = tmp_path / 'params.npz'
  done = subprocess.run(
    [sys.executable, '-c', _READ_ON_ONE_DEVICE, str(tmp_path), str(out)],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  with np.load(out) as read:
    for index, leaf in enumerate(jax.tree.leaves(host.params)):
      np.testing.assert_array_equal(read[f'arr_{index}'], leaf)


def test_keeps_the_latest_and_the_best_and_finds_the_best(tmp_path):
  config = ckpt_fx.config()
  states = ckpt_fx.save_run(
    tmp_path, config, [(1, 0.5), (2, None), (3, 0.9), (4, 0.2), (5, None), (6, None)]
  )
  assert sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints')) == [3, 5, 6]
  _, _, best = trained_run.load_model(str(tmp_path))
  ckpt_fx.assert_tree_equal(best['params'], states[3].params)
  _, model, latest = trained_run.load_model(str(tmp_path), which='latest')
  ckpt_fx.assert_tree_equal(latest['batch_stats'], states[6].batch_stats)
  assert model.head.num_classes == 3 and model.head.dtype == np.float32


def test_resume_refuses_an_incompatible_config_naming_the_keys(tmp_path):
  ckpt_fx.save_run(tmp_path, ckpt_fx.config(), [(2, None)])
  changed = ckpt_fx.config(
    'care.lam=0.1',
    'train.learning_rate=0.01',
    'train.log_every_steps=7',
    'checkpoint.every_steps=3',
  )
  with checkpoint.RunCheckpoints(str(tmp_path), changed, meta={}) as ckpts:
    with pytest.raises(ValueError) as error:
      ckpts.restore(2, checkpoint.abstract_tree(ckpt_fx.state(changed)))
  message = str(error.value)
  assert message.startswith(
    f'cannot resume from {tmp_path / "checkpoints"} (step 2): the '
    'config differs in care.lam, train.learning_rate:'
  )
  assert 'care.lam: 0.7 in the checkpoint, 0.1 now' in message
  assert 'log_every_steps' not in message.split('Keys that may')[0]


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
  ckpt_fx.save_run(tmp_path, ckpt_fx.config(), [(2, None)])
  other = ckpt_fx.config('model.name=resnet18')
  with checkpoint.RunCheckpoints(str(tmp_path), other, meta={}) as ckpts:
    with pytest.raises(
      ValueError,
      match=r'config differs in model\.name:\n  model\.name: '
      r"'tiny_cnn' in the checkpoint, 'resnet18' now",
    ):
      ckpts.restore(2, checkpoint.abstract_tree(ckpt_fx.state(ckpt_fx.config())))


@pytest.mark.parametrize('schedule, resumable', [('constant', True), ('cosine', False)])
def test_run_length_may_change_on_resume_only_with_a_constant_learning_rate(schedule, resumable):
  saved = config_lib.to_json(ckpt_fx.config(f'train.schedule={schedule}'))
  longer = config_lib.to_json(
    ckpt_fx.config(
      f'train.schedule={schedule}', 'train.num_steps=5000', 'data.dir=/elsewhere', 'parallel=pmap'
    )
  )
  expected = {} if resumable else {'train.num_steps': (1000, 5000)}
  assert checkpoint.config_differences(saved, longer) == expected


def test_unwritable_workdir_fails_before_training(tmp_path):
  (tmp_path / 'file').write_text('')
  workdir = str(tmp_path / 'file' / 'run')
  with pytest.raises(
    OSError,
    match=f"workdir '{workdir}' is not writable \\(Not a directory\\); choose a writable --workdir",
  ):
    training.train_and_evaluate(ckpt_fx.config(), workdir)


@pytest.mark.parametrize('async_save', [False, True])
def test_full_disk_during_a_save_names_the_step_and_keeps_the_last_checkpoint(
  tmp_path, monkeypatch, async_save
):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler  # pylint: disable=g-import-not-at-top

  config = ckpt_fx.config(f'checkpoint.async_save={async_save}')
  states = ckpt_fx.save_run(tmp_path, config, [(2, None)])

  async def disk_full(self, x, directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, '_save_fn', disk_full)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config, meta={'class_names': ckpt_fx.CLASSES})
  with pytest.raises(OSError) as error:
    ckpts.save(4, ckpt_fx.state(config, seed=4))
    ckpts.close()  # An asynchronous write fails here at the latest.
  assert str(error.value) == (
    f'[Errno 28] could not write the checkpoint of step 4 to {tmp_path / "checkpoints"} '
    '(No space left on device). The last complete checkpoint (step 2) is intact: fix the '
    'cause (free disk space) and run the same command to resume from it.'
  )
  monkeypatch.undo()
  _, _, variables = trained_run.load_model(str(tmp_path), which='latest')
  ckpt_fx.assert_tree_equal(variables['params'], states[2].params)
