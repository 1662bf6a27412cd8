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
stop it loading its CUDA libraries at import; starting JAX first does. (The package,
`care_jax.data`, quiets TensorFlow's start-up INFO lines before any of its modules imports it.)

Starting JAX's backends here means that `jax.distributed.initialize` (several processes) and
`care_jax.host_memory.keep_freed_memory` must come before the first data is read, as they must
come before any other JAX work; `care-jax train` calls both before it reads data.
"""

import logging
import sys

import jax


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


_claim_devices_for_jax()

import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

try:
  # TF must leave the accelerator (and its memory) to JAX.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError as e:  # TF already initialised its devices elsewhere.
  logging.warning('Could not hide GPUs from TensorFlow: %s', e)
