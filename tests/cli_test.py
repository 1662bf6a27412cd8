"""The `care-jax` command: help, version, packaged configs, quiet logs."""

import logging
import os
import subprocess
import sys

from main_test import REPO
import pytest

import care_jax
from care_jax import config as config_lib
from care_jax.commands import _app
from care_jax.commands import _flags
from care_jax.commands import cli


def _care_jax(*args):
  return subprocess.run(
    [sys.executable, '-m', 'care_jax.commands.cli', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize('flag', ['--help', '-h', 'help'])
def test_help_lists_every_command_and_exits_0(flag):
  proc = _care_jax(flag)
  assert proc.returncode == 0, proc.stderr
  for command, (_, what) in cli.COMMANDS.items():
    assert f'  {command} ' in proc.stdout and what in proc.stdout


def test_version_is_the_package_version():
  proc = _care_jax('--version')
  assert proc.returncode == 0
  assert proc.stdout == f'care-jax {care_jax.__version__}\n'


def test_configs_lists_every_packaged_config_with_its_summary():
  proc = _care_jax('configs')
  assert proc.returncode == 0, proc.stderr
  names = sorted(f[:-3] for f in os.listdir(config_lib.CONFIGS_DIR) if f.endswith('.py'))
  names.remove('__init__')
  listed = [line.split()[0] for line in proc.stdout.splitlines()]
  assert listed == names and 'synthetic_care' in names
  assert 'two stages' in next(
    line for line in proc.stdout.splitlines() if 'synthetic_care ' in line
  )


def test_the_clones_configs_folder_is_the_packaged_one():
  assert os.path.samefile(os.path.join(REPO, 'configs'), config_lib.CONFIGS_DIR)


def test_config_file_takes_a_path_or_a_packaged_name():
  path = os.path.join(REPO, 'configs', 'default.py')
  assert config_lib.config_file(path) == path
  assert os.path.samefile(
    config_lib.config_file('synthetic_care'), path.replace('default', 'synthetic_care')
  )
  with pytest.raises(
    FileNotFoundError, match="config 'synthetic_cre' does not exist; the packaged"
  ):
    config_lib.config_file('synthetic_cre')
  with pytest.raises(FileNotFoundError, match="config file 'nope.py' does not exist"):
    config_lib.config_file('nope.py')


def test_config_flag_resolves_names_and_keeps_paths_and_config_args():
  path = config_lib.config_file('default')
  resolve = _flags._resolve_config_flag  # pylint: disable=protected-access
  assert resolve(['prog', '--config=default', '--config.care.alpha=0.1']) == [
    'prog',
    f'--config={path}',
    '--config.care.alpha=0.1',
  ]
  assert resolve(['prog', '--config', 'default:arg']) == ['prog', '--config', f'{path}:arg']
  assert resolve(['prog', f'--config={path}']) == ['prog', f'--config={path}']


def test_an_unknown_config_name_is_a_usage_error_that_lists_the_names():
  proc = _care_jax('train', '--config=synthetic_cre', '--workdir=unused')
  assert proc.returncode == 1
  assert "FATAL Flags parsing error: --config: config 'synthetic_cre' does not exist" in proc.stderr
  assert 'synthetic_care' in proc.stderr and 'Traceback' not in proc.stderr


def _record(pathname, level, message='message', args=None):
  return logging.LogRecord('absl', level, pathname, 1, message, args, None)


def test_quiet_logs_keep_our_info_and_everyones_warnings():
  quiet = _app._OursOrWarnings()  # pylint: disable=protected-access
  ours = os.path.join(os.path.dirname(care_jax.__file__), 'training', 'loop.py')
  theirs = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert quiet.filter(_record(ours, logging.INFO))
  assert not quiet.filter(_record(theirs, logging.INFO))
  assert quiet.filter(_record(theirs, logging.WARNING))
  assert quiet.filter(_record(theirs, logging.ERROR))
  tfds = '/site-packages/tensorflow_datasets/core/dataset_builder.py'
  assert not quiet.filter(
    _record(tfds, logging.WARNING, 'Using custom data configuration: %s', ('c',))
  )
  unscored = 'Requested `tracked_metric`; did not provide metrics.'
  assert not quiet.filter(_record(theirs, logging.WARNING, unscored))
  deprecation = '/site-packages/tensorflow/python/util/deprecation.py'
  from_tfds = 'From /site-packages/tensorflow_datasets/core/reader.py:102: CounterV2 is deprecated'
  assert not quiet.filter(_record(deprecation, logging.WARNING, from_tfds))
  from_user = 'From /home/me/train.py:7: CounterV2 is deprecated'
  assert quiet.filter(_record(deprecation, logging.WARNING, from_user))


def test_asks_for_help_knows_absls_help_flags():
  assert _app.asks_for_help(['prog', '--workdir=w', '--helpfull'])
  assert _app.asks_for_help(['prog', '-?'])
  assert not _app.asks_for_help(['prog', '--workdir=--help'])
  assert not _app.asks_for_help(['--help'])  # the program name is not a flag
