"""What every command shares: quiet logs (our INFO, everyone's warnings), help that exits 0."""

import logging
import os

import care_jax
from care_jax.commands import _app


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
