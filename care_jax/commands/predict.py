"""Applies a trained run to new images and writes a CSV of its predictions.

    care-jax predict --workdir=RUN --input=FOLDER_OR_CSV --output=preds.csv \\
        [--checkpoint=best|latest|STEP] [--batch_size=64] [--attention_dir=DIR] \\
        [--skip_unreadable]

(also `python -m care_jax.commands.predict ...`; the library call is
`care_jax.inference.predict`). ``--input`` is a folder of images (searched
recursively: .png, .jpg, .jpeg, any case) or a CSV with an ``image`` column
(paths relative to the CSV's folder). The images go through the run's own
evaluation preprocessing (`care_jax.inference.Predictor`). The output has one
row per image::

    image,prediction,p_<class 0>,p_<class 1>,...

with the image as given (relative to the folder, or the CSV's value), the
predicted class name and the class probabilities, classes in label order.
``--attention_dir`` also writes, per image, the attention map of the
predicted class over the image, ``<image path without suffix>_<class>.png`` below that folder
(``a/001.png`` gives ``a/001_melanoma.png``), at the model's input size.
"""

from absl import app
from absl import flags

from care_jax import inference
from care_jax.commands import _app
from care_jax.commands import _flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when this module runs as the program: importing it (tests,
  # notebooks) adds no flags that could clash with other entry points.
  flags.DEFINE_string('workdir', None, 'The trained run.', required=True)
  flags.DEFINE_string(
    'input', None, 'A folder of images, or a CSV with an image column.', required=True
  )
  flags.DEFINE_string('output', None, 'The CSV of predictions to write.', required=True)
  _flags.define_checkpoint()
  flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
  flags.DEFINE_string(
    'attention_dir',
    None,
    'Also write an attention overlay PNG per image below this folder: <image>_<class>.png.',
  )
  flags.DEFINE_bool(
    'skip_unreadable',
    False,
    'Leave out unreadable images (counted and named in a warning) instead of '
    'stopping at the first.',
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Bad input (ValueError, OSError) ends in one line: `_app.run`.
  inference.predict(
    FLAGS.workdir,
    FLAGS.input,
    FLAGS.output,
    checkpoint=FLAGS.checkpoint,
    batch_size=FLAGS.batch_size,
    attention_dir=FLAGS.attention_dir,
    skip_unreadable=FLAGS.skip_unreadable,
  )


def run():
  _define_flags()
  _app.run(main)


if __name__ == '__main__':
  run()
