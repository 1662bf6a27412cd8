"""The `care-jax` command: `care-jax COMMAND [flags]`, COMMAND one of `COMMANDS`.

`care-jax --help` lists the commands, `care-jax COMMAND --help` shows a command's flags (both exit
with status 0), `care-jax --version` prints the version and `care-jax configs` the packaged
configs that `--config=NAME` accepts.
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
  'configs': (None, 'list the packaged configs (--config=NAME)'),
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
    if args[1:] and args[1:] != ['--help']:
      sys.exit(f'care-jax configs takes no flags, got {args[1:]}')
    _list_configs()
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
