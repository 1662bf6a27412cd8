"""The flags every command shares: ``--config=NAME`` and ``--seeds=0-4``.

`parse_flags` is the absl flag parser of the commands that take ``--config``: it accepts a
packaged config's name (``--config=synthetic_care``) as well as a file, and turns an override
of an unknown key (``--config.care.alphaa=1``) into an `absl.flags.Error` instead of
ml_collections' traceback; `care_jax.commands._app.run` answers it in one line, exit status 2.
"""

import re
import sys

from absl import flags

from care_jax import config as config_lib


def _resolve_config_flag(argv: list[str]) -> list[str]:
  """`argv` with `--config=NAME[:ARGS]` (or `--config NAME`) turned into the config's path."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if re.fullmatch(r'--?config', arg) and i + 1 < len(argv):
      target, prefix, value = i + 1, '', argv[i + 1]
    elif re.match(r'--?config=', arg):
      target, (flag, _, value) = i, arg.partition('=')
      prefix = flag + '='
    else:
      continue
    # ml_collections passes `path:ARGS` to get_config(ARGS); a path itself never holds ':' here.
    name, colon, config_args = value.partition(':')
    try:
      argv[target] = prefix + config_lib.config_file(name) + colon + config_args
    except FileNotFoundError as e:
      raise flags.Error(f'--config: {e}') from None
  return argv


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flag parser: `--config=` takes a packaged name, unknown keys are flag errors.

  `--config=synthetic_care` names `care_jax/configs/synthetic_care.py` (:func:`config_file`).
  ml_collections raises a bare AttributeError (a traceback ending in
  `AttributeError: "'alphaa'"`) for an override of a key the config lacks; this raises an
  `absl.flags.Error` naming the key, as absl does for its own flags. Use as
  `_app.run(main, flags_parser=_flags.parse_flags)`.

  Raises:
    absl.flags.Error: an unknown flag or config key, a bad value, a missing config file.
  """
  argv = _resolve_config_flag(argv)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    message = e
    while isinstance(message, BaseException) and message.args:  # Unwrap nested errors.
      message = message.args[0]
    name, _, hint = str(message).partition('\n')
    name = name.strip('\'"')
    given = [
      arg.split('=', 1)[0]
      for arg in argv[1:]
      if re.match(rf'--?(no)?\w+\.([\w.]*\.)?{re.escape(name)}(=|\.|$)', arg)
    ]
    if not given:  # Not an override of ours (e.g. a bug in a config file).
      raise
    raise flags.Error(
      f'unknown config key {name!r} in {", ".join(given)}. {hint}'.strip()
    ) from None


def define_checkpoint() -> None:
  """``--checkpoint``, the one definition of the commands that load a run's model."""
  flags.DEFINE_string(
    'checkpoint',
    'best',
    "The run's checkpoint: 'best' (the default: the highest validation MCA, or the latest when"
    " no validation scored one), 'latest', or a step. (care-jax visualize draws 'latest' by"
    ' default, the model that metrics.json scores.)',
  )
  # Listed in the command's own --help (absl's help shows the main module's key flags).
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS['checkpoint'])


def parse_seeds(text: str) -> list[int]:
  """The seeds of a `--seeds` flag: `'0-4'` -> [0..4]; `'0,5,7'`; `'0-2,9'`; `'3'` -> [3].

  Raises:
    ValueError: for text that is not a comma list of seeds and ranges `a-b` (`a <= b`), for no
      seeds, and for a seed given twice.
  """
  seeds = []
  for item in filter(str.strip, text.split(',')):
    match = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', item)
    first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, -1)
    if last < first:
      raise ValueError(
        f'--seeds={text!r}: give seeds and ranges separated by commas, e.g. 0-4 or 0,5,7'
      )
    seeds.extend(range(first, last + 1))
  if not seeds:
    raise ValueError(f'--seeds={text!r}: no seeds to run')
  if len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds={text!r}: a seed is repeated')
  return seeds
