"""Runs one of the paper's suites of experiments (`care_jax.suites`) and prints its report.

    care-jax experiments --suite=table1 --config.data.name=isic2018 \\
        --seeds=0-2 --workdir=runs/table1 [--config.a.b=value ...] [--rows=baseline,CARE]

(also `python -m care_jax.commands.experiments ...`). The rows of `--suite` (see
`care_jax.suites.SUITES`) are applied on top of the base config (`--config`, a packaged name or
a file, default `default`, with its `--config.a.b=value` overrides; a row's own overrides win
over them), for each of the seeds `--seeds` lists (as in `care-jax compare`: `0-2`, `0,5,7`).
Runs go to `WORKDIR/<row>/seed_<s>` and resume; the report to `WORKDIR/report.{md,json,png}`.
"""

from absl import app
from absl import flags
from absl import logging

from care_jax import config as config_lib
from care_jax import suites
from care_jax.commands import _app
from care_jax.commands import _flags

FLAGS = flags.FLAGS
_DEFAULT_CONFIG = str(config_lib.CONFIGS_DIR / 'default.py')


def _define_flags() -> None:
  # Defined only when this module runs as the program: importing it (tests,
  # notebooks) adds no flags that could clash with other entry points.
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_enum('suite', None, list(suites.SUITES), 'The suite to run.', required=True)
  flags.DEFINE_string(
    'workdir', None, 'Output directory of the runs and the report.', required=True
  )
  flags.DEFINE_string('seeds', '0-2', 'Seeds (config.seed) of every row: e.g. 0-4, 0,5,7 or 0-2,9.')
  flags.DEFINE_list('rows', [], 'Run only these rows of the suite (default: all).')
  flags.DEFINE_string('split', 'test', "Split reported: 'test' or 'validation'.")
  flags.DEFINE_multi_string(
    'pretrained',
    [],
    'MODEL=PATH: local weights for the rows whose model.name is MODEL (repeat per model).',
  )
  config_flags.DEFINE_config_file(
    'config',
    _DEFAULT_CONFIG,
    'Base config file; --config.a.b=value overrides it.',
    lock_config=True,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  pretrained = {}
  for item in FLAGS.pretrained:
    model, sep, path = item.partition('=')
    if not sep or not path:
      raise app.UsageError(f'--pretrained={item!r} is not of the form MODEL=PATH')
    pretrained[model] = path
  try:
    seeds = _flags.parse_seeds(FLAGS.seeds)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if FLAGS.seeds.strip().isdigit() and seeds[0] > 0:
    # Until 0.2 a bare number N here counted seeds (`--seeds=3`: seeds 0-2), unlike `compare`.
    logging.warning(
      '--seeds=%d runs seed %d alone; for seeds 0..%d pass --seeds=0-%d',
      seeds[0],
      seeds[0],
      seeds[0] - 1,
      seeds[0] - 1,
    )
  report = suites.run_suite(
    FLAGS.suite,
    FLAGS.config,
    seeds,
    FLAGS.workdir,
    rows=FLAGS.rows,
    split=FLAGS.split,
    pretrained=pretrained,
  )
  print(suites.format_report(report))


def run():
  _define_flags()
  _app.run(main, flags_parser=_flags.parse_flags, reads_datasets=True)


if __name__ == '__main__':
  run()
