"""Trains and evaluates one configuration.

    care-jax train --config=synthetic_care --workdir=runs/care \\
        [--config.care.alpha=0.3 ...]

(also `python -m care_jax.commands.train ...`). Writes `metrics.json`, `train_log.jsonl`,
`config.json` and `checkpoints/` under the workdir, and ends by printing the
final validation and test headlines, the checkpoint the test block scored and
the paths of `metrics.json` and the test predictions. Running the same command
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
from etils import epath
import jax
from ml_collections import config_flags

from care_jax import boxes
from care_jax import training
from care_jax.commands import _app
from care_jax.commands import _flags
from care_jax.training import outputs

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
  result = training.train_and_evaluate(FLAGS.config, _WORKDIR.value, boxes_fn=boxes.replace_boxes)
  if jax.process_index() == 0:
    print('\n'.join(result_lines(result, _WORKDIR.value, FLAGS.config)), flush=True)


def objective(config) -> str:
  """What a run of `config` minimised: ``CE only (care.alpha = 0)``, ``BCE + attention loss ...``.

  The multi-label task's 'ce' is the sigmoid binary cross-entropy (BCE); other losses by name.
  """
  name = config.loss.name
  term = {'ce': 'BCE' if config.task == 'multilabel' else 'CE'}.get(name, f'loss {name!r}')
  method = config.get('guidance', {}).get('method', 'care')
  if method == 'none':
    return f"{term} only: guidance.method = 'none'"
  if method != 'care':
    return f'{term} + {method} guidance: guidance.weight = {config.guidance.weight}'
  if config.care.alpha == 0:
    return f'{term} only: care.alpha = 0'
  return f'{term} + attention loss: care.alpha = {config.care.alpha:g}'


def result_lines(result: dict, workdir: str, config=None) -> list[str]:
  """What ``care-jax train`` prints at its end: the headlines and where the results went.

  With the run's `config`, the test headline also says what the run minimised (`objective`).
  """
  workdir = epath.Path(workdir)
  lines = []
  if 'validation' in result:
    lines.append(outputs.headline(result['validation'], 'validation', step=result['step']))
  if 'test' in result:
    scored = result['test_checkpoint']
    test = outputs.headline(result['test'], 'test', step=scored['step'])
    trained = '' if config is None else f'; {objective(config)}'
    lines.append(f'{test} (train.test_checkpoint={scored["which"]!r}{trained})')
    lines.append(f'predictions: {workdir / outputs.PREDICTIONS.format(split="test")}')
  lines.append(f'metrics: {workdir / outputs.METRICS}')
  return lines


def run():
  flags.mark_flags_as_required(['config'])
  _app.run(main, flags_parser=_flags.parse_flags, reads_datasets=True)


if __name__ == '__main__':
  run()
