"""What every command shares: quiet logs (our INFO, everyone's warnings), help that exits 0,
the opt-in compilation cache."""

import logging
import os
import subprocess
import sys

import care_jax
from care_jax.commands import _app
from tests.helpers import command_line


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


# A command that compiles one program, run as a user runs one; with 'config' it takes --config
# as train, compare and experiments do.
_COMMAND = """
import sys
import jax, jax.numpy as jnp
from absl import flags
from ml_collections import config_flags
from care_jax import config as config_lib
from care_jax.commands import _app
from tests.helpers import command_line

if sys.argv.pop(1) == 'config':
  config_flags.DEFINE_config_dict('config', config_lib.default_config())

def main(argv):
  if 'config' in flags.FLAGS:
    # Left to training, which enables it after jax.distributed.initialize.
    print('config key:', flags.FLAGS.config.compilation_cache_dir)
    print('jax dir:', jax.config.jax_compilation_cache_dir)
    return
  jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()

_app.run(main)
"""


def _run_command(kind, *args):
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'  # Keep even a fast compile.
  return subprocess.run(
    [sys.executable, '-c', _COMMAND, kind, *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_compilation_cache_dir_flag_keeps_compiled_programs_there(tmp_path):
  cache = tmp_path / 'cache'
  done = _run_command('plain', f'--compilation_cache_dir={cache}')
  assert done.returncode == 0, done.stderr[-2000:]
  assert cache.is_dir() and any(cache.iterdir())


def test_compilation_cache_dir_flag_sets_the_config_key_of_a_config_command(tmp_path):
  done = _run_command('config', f'--compilation_cache_dir={tmp_path}')
  assert done.returncode == 0, done.stderr[-2000:]
  assert f'config key: {tmp_path}\njax dir: None\n' in done.stdout


# A command whose main raises what argv[1] names, as a user's bad input or a bug would.
_RAISES = """
import sys
from care_jax.commands import _app
from tests.helpers import command_line

def main(argv):
  if argv[1] == 'chained':
    try:
      open('/nonexistent/7.png')
    except FileNotFoundError as e:
      raise ValueError('labels.csv, line 9: image file 7.png does not exist') from e
  if argv[1] == 'missing':
    raise FileNotFoundError("config file 'nope.py' does not exist")
  if argv[1] == 'usage':
    from absl import app
    raise app.UsageError('--a and --b go together.')
  if argv[1] == 'resume':
    from tests.helpers import checkpoints as ckpt_fx
    from care_jax import checkpoint
    ckpt_fx.save_run(argv[2], ckpt_fx.config(), [(2, None)])
    changed = ckpt_fx.config('care.lam=0.1')
    with checkpoint.RunCheckpoints(argv[2], changed, meta={}) as ckpts:
      ckpts.restore(2, checkpoint.abstract_tree(ckpt_fx.state(changed)))
  print('partial output', flush=True)
  raise KeyError('a bug')

_app.run(main)
"""


def _run_raising(*args, traceback=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  env.pop(_app.TRACEBACK_ENV, None)
  if traceback is not None:
    env[_app.TRACEBACK_ENV] = traceback
  return subprocess.run(
    [sys.executable, '-c', _RAISES, *args],
    cwd=os.path.dirname(os.path.dirname(care_jax.__file__)),
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_a_user_error_ends_in_its_outermost_message_and_exit_status_2():
  done = _run_raising('chained')
  assert done.returncode == 2
  assert command_line.error_lines(done.stderr) == [
    'care-jax: labels.csv, line 9: image file 7.png does not exist'
  ]
  done = _run_raising('missing')
  assert done.returncode == 2
  assert command_line.error_lines(done.stderr) == ["care-jax: config file 'nope.py' does not exist"]


def test_a_usage_error_is_one_line_that_points_to_the_help_and_exit_status_2():
  done = _run_raising('usage')
  assert done.returncode == 2
  assert command_line.error_lines(done.stderr) == [
    'care-jax: --a and --b go together. (care-jax --helpshort lists the flags)'
  ]


def test_care_jax_traceback_keeps_the_traceback_of_a_user_error():
  done = _run_raising('chained', traceback='1')
  assert done.returncode == 1
  assert 'Traceback' in done.stderr and 'direct cause of the following exception' in done.stderr
  assert done.stderr.rstrip().endswith('line 9: image file 7.png does not exist')
  assert _run_raising('chained', traceback='0').returncode == 2


def test_a_bug_keeps_its_traceback():
  done = _run_raising('bug')
  assert done.returncode == 1
  assert done.stdout == 'partial output\n'
  assert 'Traceback (most recent call last)' in done.stderr
  assert done.stderr.rstrip().endswith("KeyError: 'a bug'")


def test_a_refused_resume_ends_in_one_message(tmp_path):
  done = _run_raising('resume', str(tmp_path))
  assert done.returncode == 2, done.stderr[-3000:]
  assert 'Traceback' not in done.stderr
  message = '\n'.join(command_line.error_lines(done.stderr))
  assert message.startswith(
    f'care-jax: cannot resume from {tmp_path / "checkpoints"} (step 2): the config differs in '
    'care.lam:\n  care.lam: 0.7 in the checkpoint, 0.1 now\n'
  )


def test_user_errors_are_prefixed_with_the_command_that_raised_them():
  from care_jax.commands import predict  # pylint: disable=g-import-not-at-top

  assert _app._command_name(predict.main) == 'care-jax predict'  # pylint: disable=protected-access
  assert _app._command_name(lambda argv: None) == 'care-jax'  # pylint: disable=protected-access
