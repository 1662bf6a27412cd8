"""What every command does around `absl.app.run`: quiet logs, `--help` that exits 0, one-line
user errors, and the opt-in persistent compilation cache (``--compilation_cache_dir``).

absl exits with status 1 after printing `--help`, and the libraries under us (orbax, tfds, jax)
log hundreds of INFO lines per run. A command run through :func:`run` shows the INFO lines of
care-jax itself (one per evaluation, resuming, the stage switch), every warning and error, and
the other libraries' INFO lines only when asked for with `--verbosity=0` (or `-v 0`; absl's
levels: -1 warnings, 0 info, 1 debug).

A user error (:data:`USER_ERRORS`: a bad config value, dataset row, file, a refused resume)
ends the command with its message on stderr, ``care-jax COMMAND: MESSAGE`` (one line, or the
few lines of a message that lists keys), no traceback, and exit status 2, as `care-jax` with an
unknown command. So does a usage error: a flag absl cannot parse (an unknown flag or config key,
a bad value, a required flag left out) or an `absl.app.UsageError` of the command, in one line
that ends by pointing to ``--helpshort``. Every other exception is a bug of ours and keeps its
traceback.
``CARE_JAX_TRACEBACK=1`` keeps the traceback of user errors too (docs/errors.md).
"""

from collections.abc import Callable, Sequence
import logging
import os
import pathlib
import sys
from typing import NoReturn

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

# What bad input raises in care-jax: ValueError for values, rows and refused resumes
# (`care_jax.data` reports unreadable files as a subclass), OSError for files and directories
# (missing, unwritable, a full disk). Its message names the key, file or row and the fix, so the
# traceback adds nothing for a user. TypeError, KeyError, AssertionError and the rest are bugs:
# they keep theirs.
USER_ERRORS = (ValueError, OSError)
# Set to 1 to see the traceback of a user error as well (for a bug report, or to debug).
TRACEBACK_ENV = 'CARE_JAX_TRACEBACK'
USER_ERROR_EXIT_CODE = 2  # As `care-jax` with an unknown command, and argparse's usage errors.


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


def _command_name(main: Callable[..., object]) -> str:
  """``care-jax predict`` for the `main` of `care_jax.commands.predict`, however it was run."""
  # Run by `care-jax predict` or `python -m`, the module is __main__ and only its spec is named.
  spec = getattr(main, '__globals__', {}).get('__spec__')
  module = spec.name if spec else main.__module__
  package, _, command = module.rpartition('.')
  if package == __package__ and not command.startswith('_'):
    return f'care-jax {command}'
  return 'care-jax'


def usage_exit(program: str, error: Exception | str) -> NoReturn:
  """Ends a command's usage error: one line on stderr naming the flag, exit status 2."""
  message = ' '.join(line.strip() for line in str(error).splitlines() if line.strip())
  sys.stdout.flush()
  sys.stderr.write(f'{program}: {message} ({program} --helpshort lists the flags)\n')
  sys.exit(USER_ERROR_EXIT_CODE)


def _exit_on_user_error(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """``main`` that ends a user error with one line on stderr and exit status 2.

  Only the outermost message is shown: care-jax's messages already name the file and line of a
  chained cause (the missing file behind a dataset row).
  """

  def guarded(argv: list[str]) -> None:
    try:
      main(argv)
    except app.UsageError as e:
      usage_exit(_command_name(main), e)
    except USER_ERRORS as e:
      if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
        raise
      sys.stdout.flush()
      sys.stderr.write(f'{_command_name(main)}: {e}\n')
      sys.exit(USER_ERROR_EXIT_CODE)

  return guarded


def hide_dataset_progress_bars() -> None:
  """No tfds progress bars while a dataset is downloaded or prepared.

  A command's first run on a dataset otherwise prints ~30 bar lines into its log (a nohup or
  SLURM file keeps every redraw); the library, in a notebook, keeps them. tfds imports
  without TensorFlow, so JAX still starts first (`care_jax.data._tensorflow`).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()


def run(
  main: Callable[[list[str]], None],
  *,
  flags_parser: Callable[[list[str]], list[str]] = flags.FLAGS,
  reads_datasets: bool = False,
) -> None:
  """`absl.app.run(main, flags_parser=...)`, quiet unless `--verbosity` is given.

  A user error (:data:`USER_ERRORS`) raised by ``main`` ends in one line on stderr and exit
  status 2, unless ``CARE_JAX_TRACEBACK=1``; so does a `absl.flags.Error` raised by
  ``flags_parser`` (which, unlike absl's `app.parse_flags_with_usage`, lets it through) and an
  `absl.app.UsageError` raised by ``main``. A command that ``reads_datasets`` shows no tfds
  progress bars (:func:`hide_dataset_progress_bars`; not for ``--help``).

  Also keeps freed host memory in the process if ``CARE_JAX_KEEP_FREED_MEMORY=1`` asks for it
  (`care_jax.host_memory`), unless `care-jax` did so already.
  """
  host_memory.keep_freed_memory_if_asked()
  # Listed in the command's own --help (absl's help shows the main module's key flags).
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS['compilation_cache_dir'])

  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags_parser(argv)
    except flags.Error as e:
      usage_exit(_command_name(main), e)
    if not flags.FLAGS['verbosity'].present:
      absl_logging.get_absl_handler().addFilter(_OursOrWarnings())
    _use_compilation_cache(_COMPILATION_CACHE_DIR.value)
    if reads_datasets:
      hide_dataset_progress_bars()
    return rest

  try:
    app.run(_exit_on_user_error(main), flags_parser=parse)
  except SystemExit as e:
    if e.code == 1 and asks_for_help(sys.argv):
      sys.exit(0)  # Help was asked for and given: not an error.
    raise
