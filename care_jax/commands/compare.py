"""Trains several configurations over several seeds and tabulates them.

    care-jax compare --workdir=runs/demo --configs=synthetic_baseline,synthetic_care \\
        --seeds=0-2 [--config.train.num_steps=500 ...]

(also `python -m care_jax.commands.compare ...`). `--configs` takes packaged config names or
config files; every `--config.KEY=VALUE` overrides KEY of every config; `--seeds` lists seeds
and ranges (`0-4`, `0,5,7`, `0-2,9`). Each run goes to `WORKDIR/<config name>/seed_<s>`; runs
whose `metrics.json` exists are not repeated, so an interrupted comparison resumes. Prints a
table of test rare-class recall and MCA (mean ± std over seeds), each seed's rare recall, and
(for two or more configs) each config against the first seed by seed: mean difference, paired
t-test and the seeds it wins; writes them to `WORKDIR/summary.md` and `WORKDIR/summary.json`
(`care_jax.comparison.compare`).
"""

import re

from absl import app
from absl import flags
from absl import logging

from care_jax import comparison
from care_jax import config as config_lib
from care_jax.commands import _app
from care_jax.commands import _flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when this module runs as the program, so that importing it
  # (tests, notebooks) adds no flags that could clash.
  flags.DEFINE_string('workdir', None, 'Output directory.', required=True)
  flags.DEFINE_list(
    'configs',
    ['synthetic_baseline', 'synthetic_care'],
    'Configs to compare: packaged names (care-jax configs) or files defining get_config().',
  )
  flags.DEFINE_string(
    'seeds', '0', 'Seeds (config.seed) to run each config with: e.g. 0-4, 0,5,7 or 0-2,9.'
  )
  flags.DEFINE_multi_string(
    'set',
    [],
    'Deprecated spelling of --config.KEY=VALUE (removed in 0.3): --set=KEY=VALUE overrides '
    'KEY of every config.',
  )
  flags.DEFINE_string('split', 'test', 'Split whose metrics are tabulated.')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parser, with `--config.KEY=VALUE` taken as an override of every config."""
  if any(re.match(r'--?set(=|$)', arg) for arg in argv[1:]):
    logging.warning('--set=KEY=VALUE is deprecated (removed in 0.3): pass --config.KEY=VALUE')
  rewritten = [argv[0]]
  for arg in argv[1:]:
    match = re.fullmatch(r'--?config\.([\w.]+)=(.*)', arg, flags=re.DOTALL)
    if match:
      rewritten.append(f'--set={match[1]}={match[2]}')
    elif re.match(r'--?config\.', arg):
      raise flags.Error(f'{arg!r}: give --config.KEY=VALUE')
    else:
      rewritten.append(arg)
  return flags.FLAGS(rewritten)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    seeds = _flags.parse_seeds(FLAGS.seeds)
    config_paths = [config_lib.config_file(c) for c in FLAGS.configs]
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  summary = comparison.compare(
    config_paths, seeds, FLAGS.workdir, overrides=FLAGS.set, split=FLAGS.split
  )
  print(comparison.format_table(summary, FLAGS.split) + '\n\n' + comparison.format_seeds(summary))


def run():
  _define_flags()
  _app.run(main, flags_parser=parse_flags, reads_datasets=True)


if __name__ == '__main__':
  run()
