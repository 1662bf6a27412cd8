"""The `care-jax` command: `care-jax COMMAND [flags]`, COMMAND one of `COMMANDS`."""

import runpy
import sys

COMMANDS = {
  'train': 'care_jax.main',
  'compare': 'care_jax.compare',
  'experiments': 'care_jax.experiments',
  'visualize': 'care_jax.visualize',
  'boxes': 'care_jax.boxes',
  'predict': 'care_jax.predict',
  'evaluate': 'care_jax.evaluate',
  'export': 'care_jax.export',
}


def main() -> None:
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    names = ', '.join(COMMANDS)
    sys.exit(f'usage: care-jax {{{names}}} [flags]   (care-jax COMMAND --help for its flags)')
  module_name = COMMANDS[sys.argv[1]]
  # absl parses sys.argv: present the subcommand as the program name. Running
  # the module as __main__ makes its flags and docstring those of --help.
  sys.argv = [f'care-jax {sys.argv[1]}'] + sys.argv[2:]
  runpy.run_module(module_name, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
