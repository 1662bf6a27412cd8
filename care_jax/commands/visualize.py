"""Draws the figures of trained runs (`care_jax.run_figures.write_figures`) and prints their paths.

    care-jax visualize --workdir=runs/care [--compare=runs/baseline] \\
        [--num-images=8] [--split=test] [--checkpoint=latest] [--out_dir=DIR]

(also `python -m care_jax.commands.visualize ...`). Writes PNGs to `WORKDIR/figures` (or
`--out_dir`): the attention maps of `--num-images` images of the split ("image | --compare's
map | --workdir's map", the paper's "without CARE | with CARE" figure when --compare is the
baseline), the confusion matrix, per-class recall, reliability and training curves.
"""

from absl import app
from absl import flags

from care_jax.commands import _app

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when this module runs as the program: importing it (tests,
  # notebooks) adds no flags that could clash with other entry points.
  flags.DEFINE_string(
    'workdir', None, 'The run to draw; with --compare, the run WITH CARE.', required=True
  )
  flags.DEFINE_string(
    'compare',
    None,
    'A second run drawn beside --workdir (first column, first bar), e.g. '
    "the baseline WITHOUT CARE. Columns are labelled from each run's care.alpha.",
  )
  flags.DEFINE_integer('num_images', 8, 'Images (rows) of the attention figure.')
  flags.DEFINE_alias('num-images', 'num_images')
  flags.DEFINE_string('split', 'test', 'Split whose images and metrics are drawn.')
  flags.DEFINE_enum(
    'checkpoint',
    'latest',
    ['latest', 'best'],
    "Checkpoint whose maps are drawn: 'latest' (the default: the model metrics.json scores)"
    " or 'best' (by validation MCA, the default of predict, evaluate and export).",
  )
  flags.DEFINE_string('out_dir', None, 'Output directory (default WORKDIR/figures).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Imported here, not at the top: it loads TensorFlow, which `--help` does not need.
  from care_jax import run_figures  # pylint: disable=g-import-not-at-top

  for path in run_figures.write_figures(
    FLAGS.workdir,
    compare=FLAGS.compare,
    num_images=FLAGS.num_images,
    split=FLAGS.split,
    which=FLAGS.checkpoint,
    out_dir=FLAGS.out_dir,
  ):
    print(path)


def run():
  _define_flags()
  _app.run(main, reads_datasets=True)


if __name__ == '__main__':
  run()
