"""Trains and evaluates one configuration.

    python -m care_jax.main --config=configs/synthetic_care.py --workdir=runs/care \\
        [--config.care.alpha=0.3 ...]

(also `care-jax train ...`). Writes `metrics.json`, `train_log.jsonl` and
`config.json` under the workdir.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from care_jax import train

FLAGS = flags.FLAGS
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for metrics and logs.', required=True)
config_flags.DEFINE_config_file('config', None, 'Path to a configs/*.py file.',
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  train.train_and_evaluate(FLAGS.config, _WORKDIR.value)


def run():
  flags.mark_flags_as_required(['config'])
  app.run(main)


if __name__ == '__main__':
  run()
