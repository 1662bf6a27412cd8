"""What every command does around `absl.app.run`: quiet logs, `--help` that exits 0, and the
opt-in persistent compilation cache (``--compilation_cache_dir``).

absl exits with status 1 after printing `--help`, and the libraries under us (orbax, tfds, jax)
log hundreds of INFO lines per run. A command run through :func:`run` shows the INFO lines of
care-jax itself (one per evaluation, resuming, the stage switch), every warning and error, and
the other libraries' INFO lines only when asked for with `--verbosity=0` (or `-v 0`; absl's
levels: -1 warnings, 0 info, 1 debug).
"""

from collections.abc import Callable, Sequence
import logging
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

from care_jax import host_memory

_COMPILATION_CACHE_DIR = flags.DEFINE_string(
  'compilation_cache_dir',
  None,
  "Keep the compiled programs in JAX's persistent compilation cache in this directory, so "
  'that a later run with the same shapes loads them instead of compiling (default: off). '
  'For the commands with --config it sets config.compilation_cache_dir. Left off, with a '
  'warning, in a run of several processes on CPUs.',
)

# absl's help flags; each prints its text and exits with status 1.
_HELP_FLAGS = frozenset(
  f'{dashes}{name}'
  for dashes in ('-', '--')
  for name in ('help', 'helpshort', 'helpfull', 'helpxml', 'h', '?')
)
_PACKAGE_DIR = str(pathlib.Path(__file__).parent.parent)  # care_jax/


class _OursOrWarnings(logging.Filter):
  """Passes warnings and errors, and the INFO lines logged from care-jax's own code.

  Three warnings of the libraries under us say nothing a user can act on, and are dropped too:
  tfds's "Using custom data configuration", since every dataset here builds its config from
  `config.data` (and hashes it into the name); TensorFlow's deprecation notices for calls
  inside tfds; and orbax's "Requested `tracked_metric`; did not provide metrics" at every
  checkpoint saved between validations, which by design carry no score (`care_jax.checkpoint`
  keeps them by recency, the scored ones by validation MCA).
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if record.pathname.startswith(_PACKAGE_DIR):
      return True
    if record.levelno < logging.WARNING:
      return False
    message = record.getMessage()
    if message.startswith(('Using custom data configuration', 'Requested `tracked_metric`')):
      return False
    return not (
      record.pathname.endswith(os.path.join('util', 'deprecation.py'))
      and f'{os.sep}tensorflow_datasets{os.sep}' in message
    )


def asks_for_help(argv: Sequence[str]) -> bool:
  """Whether the command line holds one of absl's help flags."""
  return any(arg in _HELP_FLAGS for arg in argv[1:])


def _use_compilation_cache(directory: str | None) -> None:
  """``--compilation_cache_dir``: the run's config key, or JAX's cache at once."""
  if not directory:
    return
  config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
  if config is not None and 'compilation_cache_dir' in config:
    # Training enables it (`train_and_evaluate`), after `jax.distributed.initialize`.
    config.compilation_cache_dir = directory
    return
  from care_jax.training import parallel  # pylint: disable=g-import-not-at-top

  parallel.enable_compilation_cache(directory)


def run(
  main: Callable[[list[str]], None],
  *,
  flags_parser: Callable[[list[str]], list[str]] = app.parse_flags_with_usage,
) -> None:
  """`absl.app.run(main, flags_parser=...)`, quiet unless `--verbosity` is given.

  Also keeps freed host memory in the process if ``CARE_JAX_KEEP_FREED_MEMORY=1`` asks for it
  (`care_jax.host_memory`), unless `care-jax` did so already.
  """
  host_memory.keep_freed_memory_if_asked()
  # Listed in the command's own --help (absl's help shows the main module's key flags).
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS['compilation_cache_dir'])

  def parse(argv: list[str]) -> list[str]:
    rest = flags_parser(argv)
    if not flags.FLAGS['verbosity'].present:
      absl_logging.get_absl_handler().addFilter(_OursOrWarnings())
    _use_compilation_cache(_COMPILATION_CACHE_DIR.value)
    return rest

  try:
    app.run(main, flags_parser=parse)
  except SystemExit as e:
    if e.code == 1 and asks_for_help(sys.argv):
      sys.exit(0)  # Help was asked for and given: not an error.
    raise
