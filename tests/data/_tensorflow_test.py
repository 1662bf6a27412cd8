"""Which of TensorFlow's start-up lines are shown at a given TF_CPP_MIN_LOG_LEVEL; no Keras."""

import importlib
import sys

import pytest

from care_jax.data import _tensorflow

_INFO = 'I0000 00:00:1796652089.221508    2507 port.cc:153] oneDNN custom operations are on.\n'
_ERROR = 'E0000 00:00:1796652155.618945    3818 cuda_platform.cc:52] failed call to cuInit: ...\n'
_WARNING = 'W1207 14:02:37.639323    3818 some_op.cc:12] something to look at\n'
_NOTICE = 'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n'


def test_level_1_hides_info_lines_and_abseils_notice_but_keeps_warnings_and_errors():
  assert not _tensorflow._shown(_INFO, 1, [])
  assert not _tensorflow._shown(_NOTICE, 1, [])
  assert _tensorflow._shown(_WARNING, 1, [])
  assert _tensorflow._shown(_ERROR, 1, [])


def test_level_0_shows_every_line_even_known_noise():
  for line in (_INFO, _NOTICE, _WARNING, _ERROR):
    assert _tensorflow._shown(line, 0, ['failed call to cuInit'])


def test_known_noise_is_dropped_at_level_1():
  assert not _tensorflow._shown(_ERROR, 1, ['failed call to cuInit'])


def test_lines_that_are_not_cpp_log_lines_are_always_shown():
  python_log_line = 'I1207 14:11:08.880451 140518731524992 _local.py:15] preparing x\n'
  for line in ('Traceback (most recent call last):\n', 'UserWarning: x\n', python_log_line):
    assert _tensorflow._shown(line, 3, ['x'])


def test_keras_cannot_be_imported_while_tensorflow_loads_and_can_afterwards(monkeypatch):
  monkeypatch.delitem(sys.modules, 'keras', raising=False)
  with _tensorflow._keras_left_out():
    with pytest.raises(ImportError):
      importlib.import_module('keras')
  assert 'keras' not in sys.modules  # Not imported, and no longer blocked.


def test_an_imported_keras_is_left_alone(monkeypatch):
  keras = object()
  monkeypatch.setitem(sys.modules, 'keras', keras)
  with _tensorflow._keras_left_out():
    assert sys.modules['keras'] is keras
  assert sys.modules['keras'] is keras
