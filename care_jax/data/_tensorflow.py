"""TensorFlow as the input pipelines run it: on the CPU, loaded after JAX owns the accelerator.

Every module of care-jax that uses TensorFlow imports it from here (``from
care_jax.data._tensorflow import tf``; tests/integration/device_owner_test.py checks that no
other module imports it), so whichever path reads data first (a command,
`care_jax.training.train_and_evaluate`, a notebook) gets the same order:

1. JAX starts its backends (`jax.devices()`): on a GPU host it loads CUDA, cuDNN and the other
   CUDA libraries of its own plugin, and takes its share of the GPU memory.
2. TensorFlow is imported, then told to see no GPU (`tf.config.set_visible_devices`), so it keeps
   off the GPU memory.

The order matters because both frameworks load CUDA libraries into the one process, and the
first to load a library fixes its version for the other: TensorFlow imported before JAX broke
JAX's cuDNN ("DNN library is not found", jax-ml/jax#9454). Hiding GPUs from TensorFlow does not
stop it loading its CUDA libraries at import; starting JAX first does.

Starting JAX's backends here means that `jax.distributed.initialize` (several processes) and
`care_jax.host_memory.keep_freed_memory` must come before the first data is read, as they must
come before any other JAX work; `care-jax train` calls both before it reads data.

TensorFlow's C++ start-up lines (the oneDNN notice and "Could not find cuda drivers", twice, each
under "All log messages before absl::InitializeLog() is called are written to STDERR") ignore
``TF_CPP_MIN_LOG_LEVEL`` in TF 2.21: abseil writes every message logged before its
``InitializeLog`` to stderr whatever the level (abseil/abseil-cpp#1957). So this module applies
the level itself to the lines written while TensorFlow loads (`_start_up_lines_filtered`): the
level defaults to 1 (INFO lines hidden, warnings and errors kept), and ``TF_CPP_MIN_LOG_LEVEL=0``
shows them all. TensorFlow's first look for GPUs, at its first operation, logs ``E ... failed call
to cuInit`` on a machine without a CUDA driver, whatever the level: an error line about a GPU that
TensorFlow would not be given anyway, so that look is made here, inside the filter, and the line
is dropped when no GPU is found (`_hide_gpus`; shown at level 0).
"""

from collections.abc import Iterator, Sequence
import contextlib
import logging
import os
import re
import sys
import tempfile

import jax

# TensorFlow's C++ log level for the lines logged after start-up, which it honours itself.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

# abseil's notice above its unfiltered start-up lines.
_ABSL_NOTICE = 'WARNING: All log messages before absl::InitializeLog() is called'
# A C++ log line (absl/TSL format): severity letter, MMDD, time (before abseil's InitializeLog:
# 00:00:<seconds since the epoch>), thread, C++ file:line]. (absl-python's lines end in .py.)
_LOG_LINE = re.compile(r'([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+\.(?:cc|cpp|h):\d+\] ')
_SEVERITY = {'I': 0, 'W': 1, 'E': 2, 'F': 3}


def _min_log_level() -> int:
  """TF_CPP_MIN_LOG_LEVEL as a number (0: all lines, 1: no INFO, 2: no WARNING, 3: no ERROR)."""
  try:
    return int(os.environ.get('TF_CPP_MIN_LOG_LEVEL', '1'))
  except ValueError:
    return 0  # TensorFlow reads an unparsable level as 0 too.


def _shown(line: str, min_level: int, noise: Sequence[str]) -> bool:
  """Whether a line written to stderr during TensorFlow's start-up is shown.

  Args:
    line: the line.
    min_level: `_min_log_level`.
    noise: texts of C++ log lines known to mean nothing here (dropped unless ``min_level`` is 0).
  """
  if line.startswith(_ABSL_NOTICE):
    return min_level < 1
  match = _LOG_LINE.match(line)
  if not match:
    return True  # Not a C++ log line (a Python warning, a traceback): always shown.
  if min_level >= 1 and any(text in line for text in noise):
    return False
  severity = _SEVERITY[match.group(1)]
  return severity == _SEVERITY['F'] or severity >= min_level


@contextlib.contextmanager
def _start_up_lines_filtered() -> Iterator[list[str]]:
  """Holds back what is written to file descriptor 2, then writes back the lines `_shown`.

  The C++ libraries write to the descriptor, not to `sys.stderr`, so the descriptor is redirected
  to a temporary file while the body runs. Lines that do not look like C++ log lines (a Python
  warning, a traceback) are written back unchanged and in order.

  Yields:
    A list to which the body adds the texts of C++ log lines to drop (``noise`` of `_shown`).
  """
  min_level = _min_log_level()
  noise = []
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):  # No descriptor 2 (pythonw, a closed stderr).
    yield noise
    return
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield noise
    finally:
      with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      lines = held.read().decode('utf-8', 'replace').splitlines(keepends=True)
      kept = ''.join(line for line in lines if _shown(line, min_level, noise))
      if kept:
        os.write(2, kept.encode())


def _jax_started() -> bool:
  """Whether JAX has started its backends (False where this jax cannot tell)."""
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  started = getattr(xla_bridge, 'backends_are_initialized', None)
  return bool(started and started())


def _claim_devices_for_jax() -> None:
  """Starts JAX's backends before TensorFlow loads (see the module docstring)."""
  if 'tensorflow' in sys.modules and not _jax_started():  # TF came first (a notebook cell?).
    logging.warning(
      'TensorFlow was imported before care-jax started JAX: on a GPU host its CUDA libraries '
      'may be the ones JAX gets. Import care_jax (or call jax.devices()) before tensorflow.'
    )
  jax.devices()


def _hide_gpus(tf_module, noise: list[str]) -> None:
  """Leaves the GPUs (and their memory) to JAX; TF's failed GPU probe is noise where it has none.

  Listing the GPUs makes TensorFlow probe CUDA now, inside `_start_up_lines_filtered`, rather than
  at its first operation. Where it finds none (no CUDA driver: ``failed call to cuInit``), that
  error line says nothing a care-jax user needs: TensorFlow only ever runs on the CPU here.
  """
  if not tf_module.config.list_physical_devices('GPU'):
    noise.append('failed call to cuInit')
    return
  try:
    tf_module.config.set_visible_devices([], 'GPU')
  except RuntimeError as e:  # TF already initialised its devices elsewhere.
    logging.warning('Could not hide GPUs from TensorFlow: %s', e)


@contextlib.contextmanager
def _keras_left_out() -> Iterator[None]:
  """Makes ``import keras`` fail inside the body, unless Keras is already imported.

  TensorFlow 2.21's ``__init__`` imports ``keras.src.optimizers`` eagerly (inside ``try: ...
  except ImportError``), and Keras imports its scikit-learn wrappers, and scikit-learn where it
  is installed: 1.5 to 2 s of CPU at each start of a process that reads data, for an input
  pipeline that never uses Keras. A ``None`` in `sys.modules` makes that import raise
  ImportError; it is taken out afterwards, so ``tf.keras`` (loaded lazily) and ``import keras``
  still work.
  """
  if 'keras' in sys.modules:
    yield
    return
  sys.modules['keras'] = None
  try:
    yield
  finally:
    if 'keras' in sys.modules and sys.modules['keras'] is None:
      del sys.modules['keras']


_claim_devices_for_jax()

with _start_up_lines_filtered() as _noise, _keras_left_out():
  import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

  _hide_gpus(tf, _noise)
