"""The `care-jax` command: `care-jax train ...` and `care-jax compare ...`."""

import sys

COMMANDS = {
    'train': 'care_jax.main',
    'compare': 'care_jax.compare',
}


def main() -> None:
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    names = ', '.join(COMMANDS)
    sys.exit(f'usage: care-jax {{{names}}} [flags]   (care-jax COMMAND --help for its flags)')
  module_name = COMMANDS[sys.argv[1]]
  # absl parses sys.argv: present the subcommand as the program name.
  sys.argv = [f'care-jax {sys.argv[1]}'] + sys.argv[2:]
  module = __import__(module_name, fromlist=['run'])
  module.run()
