"""Trains and evaluates one configuration.

    python -m care_jax.main --config=configs/synthetic_care.py --workdir=runs/care \\
        [--config.care.alpha=0.3 ...]

(also `care-jax train ...`). Writes `metrics.json`, `train_log.jsonl`,
`config.json` and `checkpoints/` under the workdir. Running the same command
again resumes from the latest checkpoint (after a crash, SIGKILL or a
preemption: SIGTERM saves a checkpoint and exits with status 143).

Several processes (hosts) train one model together after
`jax.distributed.initialize`: pass `--multihost` on TPU pod slices, SLURM or
Open MPI (the cluster is detected), or `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` to launch by hand (one process per GPU node,
or several on one machine). Every process runs the same command; each reads
its own share of every batch.
"""

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from care_jax import boxes
from care_jax import training
from care_jax.commands import _app
from care_jax.commands import _flags

FLAGS = flags.FLAGS
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for metrics and logs.', required=True)
config_flags.DEFINE_config_file(
  'config',
  None,
  'A packaged config (care-jax configs lists them) or a config file; --config.KEY=VALUE overrides.',
  lock_config=True,
)
_MULTIHOST = flags.DEFINE_bool(
  'multihost',
  False,
  'Call jax.distributed.initialize() with automatic cluster detection '
  '(TPU pod slices, SLURM, Open MPI).',
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  'HOST:PORT of process 0, to start several processes by hand '
  '(with --num_processes and --process_id).',
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')


def initialize_distributed() -> None:
  """Joins the processes of a multi-process run, if the flags ask for one."""
  manual = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in manual) and not all(v is not None for v in manual):
    raise app.UsageError('--coordinator_address, --num_processes and --process_id go together.')
  if not (_MULTIHOST.value or _COORDINATOR.value):
    return
  # Collectives between CPU processes (tests, CPU clusters) need gloo; GPU and
  # TPU backends ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(*manual)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  initialize_distributed()
  training.train_and_evaluate(FLAGS.config, _WORKDIR.value, boxes_fn=boxes.replace_boxes)


def run():
  flags.mark_flags_as_required(['config'])
  _app.run(main, flags_parser=_flags.parse_flags)


if __name__ == '__main__':
  run()
