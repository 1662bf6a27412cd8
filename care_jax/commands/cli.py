"""The `care-jax` command: `care-jax COMMAND [flags]`, COMMAND one of `COMMANDS`.

`care-jax --help` lists the commands, `care-jax COMMAND --help` shows a command's flags (both exit
with status 0), `care-jax --version` prints the version and `care-jax configs` the packaged
configs that `--config=NAME` accepts; `care-jax configs NAME` prints one of them: its docstring
(with the command that trains it) and every key with the value a run of it uses here (the
'auto' and recipe keys resolved, `care_jax.config.resolve_recipe`).
"""

import runpy
import sys

# Command -> (module run as the program, what it does).
COMMANDS = {
  'train': ('care_jax.commands.train', 'train and evaluate one config'),
  'compare': ('care_jax.commands.compare', 'train configs over seeds and tabulate them'),
  'experiments': ('care_jax.commands.experiments', "run one of the paper's suites of rows"),
  'visualize': ('care_jax.commands.visualize', 'draw the figures of trained runs'),
  'boxes': ('care_jax.commands.boxes', 'write lesion boxes for images without them'),
  'predict': ('care_jax.commands.predict', 'apply a trained run to new images'),
  'evaluate': ('care_jax.commands.evaluate', "score a trained run's checkpoint on a split"),
  'export': ('care_jax.commands.export', 'write a trained run as a portable artifact'),
  'sample-images': (
    'care_jax.commands.sample_images',
    'write generated lesion images to try predict on',
  ),
  'configs': (None, 'list the packaged configs (--config=NAME); configs NAME prints one'),
}


def _usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [f'  {name:<{width}}  {what}' for name, (_, what) in COMMANDS.items()]
  return '\n'.join(
    [
      'usage: care-jax COMMAND [flags]   (care-jax COMMAND --help for its flags)',
      '',
      'commands:',
      *lines,
      '',
      'care-jax --version prints the version.',
    ]
  )


def _list_configs() -> None:
  from care_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  configs = config_lib.packaged_configs()
  width = max(map(len, configs))
  for name, summary in configs.items():
    print(f'{name:<{width}}  {summary}')


def config_lines(name: str) -> list[str]:
  """What ``care-jax configs NAME`` prints: the config's docstring, then ``key = value`` lines.

  Raises:
    FileNotFoundError: no packaged config (or config file) of that name; the names are listed.
  """
  import ast  # pylint: disable=g-import-not-at-top

  from care_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  path = config_lib.config_file(name)
  with open(path) as f:
    docstring = ast.get_docstring(ast.parse(f.read())) or ''
  resolved = config_lib.resolve_recipe(config_lib.load_config(path))
  values = config_lib.flatten(config_lib.to_json(resolved))
  return [
    *docstring.splitlines(),
    '',
    f'# The keys of {name} (set one with --config.KEY=VALUE):',
    *(f'{key} = {value!r}' for key, value in values.items()),
  ]


def _configs(args: list[str]) -> None:
  """``care-jax configs [NAME]``."""
  if not args:
    _list_configs()
    return
  if args == ['--help']:
    print('usage: care-jax configs [NAME]   (lists the packaged configs, or prints one)')
    return
  if len(args) > 1 or args[0].startswith('-'):
    sys.stderr.write(f'care-jax configs: takes one config name or none, got {args}\n')
    sys.exit(2)
  try:
    lines = config_lines(args[0])
  except FileNotFoundError as e:
    sys.stderr.write(f'care-jax configs: {e}\n')
    sys.exit(2)
  print('\n'.join(lines))


def main() -> None:
  args = sys.argv[1:]
  if args and args[0] in ('-h', '--help', 'help'):
    print(_usage())
    return
  if args and args[0] == '--version':
    from care_jax import __version__  # pylint: disable=g-import-not-at-top

    print(f'care-jax {__version__}')
    return
  if not args or args[0] not in COMMANDS:
    given = f'unknown command {args[0]!r}\n' if args else ''
    sys.stderr.write(f'{given}{_usage()}\n')
    sys.exit(2)
  if args[0] == 'configs':
    _configs(args[1:])
    return
  module_name = COMMANDS[args[0]][0]
  # Before the command's imports start any threads (TensorFlow's, XLA's): see host_memory.
  from care_jax import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.keep_freed_memory_if_asked()
  # absl parses sys.argv: present the subcommand as the program name. Running
  # the module as __main__ makes its flags and docstring those of --help.
  sys.argv = [f'care-jax {args[0]}'] + args[1:]
  runpy.run_module(module_name, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
