"""Scores a checkpoint of a trained run on a split of its dataset.

    care-jax evaluate --workdir=RUN [--split=test] [--checkpoint=best|latest|STEP] \\
        [--batch_size=128] [--output=FILE]

(also `python -m care_jax.commands.evaluate ...`). Writes the metrics block of that checkpoint
(as in ``metrics.json``: accuracy, MCA, rare-class recall, per-class recall,
precision, AUROC and AP, macro AUROC, ECE and its bins, confusion matrix,
attention metrics) with its ``step`` to ``--output`` (default
``RUN/evaluation_<split>_step<step>.json``) and prints the headline numbers.
"""

from absl import app
from absl import flags
from etils import epath

from care_jax import training
from care_jax.commands import _app
from care_jax.commands import _flags
from care_jax.training import outputs

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when this module runs as the program: importing it (tests,
  # notebooks) adds no flags that could clash with other entry points.
  flags.DEFINE_string('workdir', None, 'The trained run.', required=True)
  flags.DEFINE_string('split', 'test', "The split to score: 'test', 'validation' or 'train'.")
  _flags.define_checkpoint()
  flags.DEFINE_integer('batch_size', None, "Global eval batch (default: the run's).")
  flags.DEFINE_string(
    'output', None, 'The JSON file to write (default RUN/evaluation_<split>_step<step>.json).'
  )


def evaluate(
  workdir: str,
  *,
  split: str = 'test',
  checkpoint: str = 'best',
  batch_size: int | None = None,
  output: str | None = None,
) -> tuple[dict, str]:
  """Writes the metrics block of a checkpoint; returns it and the file's path."""
  block = training.evaluate_checkpoint(workdir, split, which=checkpoint, batch_size=batch_size)
  path = epath.Path(output or epath.Path(workdir) / f'evaluation_{split}_step{block["step"]}.json')
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(outputs.dumps(block, indent=2))
  return block, str(path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Bad input (ValueError, OSError) ends in one line: `_app.run`.
  block, output = evaluate(
    FLAGS.workdir,
    split=FLAGS.split,
    checkpoint=FLAGS.checkpoint,
    batch_size=FLAGS.batch_size,
    output=FLAGS.output,
  )
  print(f'{outputs.headline(block, FLAGS.split)}; wrote {output}')


def run():
  _define_flags()
  _app.run(main, reads_datasets=True)


if __name__ == '__main__':
  run()
