"""Applies a trained run to new images and writes a CSV of its predictions.

    python -m care_jax.predict --workdir=RUN --input=FOLDER_OR_CSV --output=preds.csv \\
        [--checkpoint=best|latest|STEP] [--batch_size=64] [--attention_dir=DIR] \\
        [--skip_unreadable]

(also `care-jax predict ...`). ``--input`` is a folder of images (searched
recursively: .png, .jpg, .jpeg, any case) or a CSV with an ``image`` column
(paths relative to the CSV's folder). The images go through the run's own
evaluation preprocessing (`care_jax.inference.Predictor`). The output has one
row per image::

    image,prediction,p_<class 0>,p_<class 1>,...

with the image as given (relative to the folder, or the CSV's value), the
predicted class name and the class probabilities, classes in label order.
``--attention_dir`` also writes, per image, the attention map of the
predicted class over the image (``<image path>.png`` below that folder).
"""

import csv
import pathlib
import sys

from absl import app
from absl import flags
from etils import epath
from PIL import Image

from care_jax import figures
from care_jax import inference
from care_jax.commands import _app

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when this module runs as the program: importing it (tests,
  # notebooks) adds no flags that could clash with other entry points.
  flags.DEFINE_string('workdir', None, 'The trained run.', required=True)
  flags.DEFINE_string(
    'input', None, 'A folder of images, or a CSV with an image column.', required=True
  )
  flags.DEFINE_string('output', None, 'The CSV of predictions to write.', required=True)
  flags.DEFINE_string(
    'checkpoint', 'best', "'best' (by validation MCA), 'latest', or a step of the run."
  )
  flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
  flags.DEFINE_string(
    'attention_dir', None, 'Also write an attention overlay PNG per image below this folder.'
  )
  flags.DEFINE_bool(
    'skip_unreadable',
    False,
    'Leave out unreadable images (counted and named in a warning) instead of '
    'stopping at the first.',
  )


def list_images(path: str) -> tuple[list[str], list[str]]:
  """``(names, files)`` of the images of a folder (recursive) or of a CSV's image column.

  Names are what the output CSV shows: the path relative to the folder, or
  the CSV's value; files are the paths to read.

  Raises:
    ValueError: the path does not exist, the folder holds no image, or the
      CSV has no ``image`` column or no rows.
  """
  root = pathlib.Path(path)
  if root.is_dir():
    files = sorted(p for p in root.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise ValueError(
        f'{path} holds no image ({", ".join(IMAGE_SUFFIXES)}, searched '
        'recursively): pass a folder of images or a CSV with an image column.'
      )
    return [p.relative_to(root).as_posix() for p in files], [str(p) for p in files]
  if not root.is_file():
    raise ValueError(f'--input={path} does not exist: pass a folder of images or a CSV.')
  with open(root, newline='') as f:
    reader = csv.DictReader(f)
    if 'image' not in (reader.fieldnames or ()):
      raise ValueError(
        f'{path}: no image column (columns: {reader.fieldnames}); the CSV needs '
        'one, with paths relative to the CSV.'
      )
    names = [row['image'] for row in reader]
  if not names:
    raise ValueError(f'{path} has a header but no rows.')
  return names, [str(root.parent / name) for name in names]


def write_predictions(
  path: epath.PathLike,
  names,
  result: inference.Predictions,
  class_names,
  *,
  multilabel: bool = False,
) -> None:
  """``image,prediction,p_<class>...``, one row per image read, in the input's order.

  Multi-label runs: ``prediction`` lists the findings at probability >= 0.5,
  joined by ``|`` (`inference.predicted_classes`).

  `path` may be local or any URL `etils.epath` opens (``gs://``).
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # csv's own '\r\n' line ends, untranslated on POSIX (epath opens files without newline=).
  with path.open('w') as f:
    writer = csv.writer(f)
    writer.writerow(['image', 'prediction', *(f'p_{name}' for name in class_names)])
    for position, probabilities in zip(result.index, result.probabilities):
      prediction = inference.predicted_classes(probabilities, class_names, multilabel=multilabel)
      writer.writerow([names[position], prediction, *(f'{p:.6g}' for p in probabilities)])


def write_overlays(
  directory: epath.PathLike, names, result: inference.Predictions, data_config
) -> None:
  """The attention map of the predicted class over each image, as ``<name>.png``."""
  pixels = figures.denormalize(result.images, mean=data_config.mean, std=data_config.std)
  for position, image, attention_map in zip(result.index, pixels, result.maps):
    target = epath.Path(directory) / f'{names[position]}.png'
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open('wb') as f:
      Image.fromarray(figures.overlay(image, attention_map)).save(f, format='PNG')


def predict(
  workdir: str,
  input_path: str,
  output: str,
  *,
  checkpoint: str = 'best',
  batch_size: int = 64,
  attention_dir: str | None = None,
  skip_unreadable: bool = False,
) -> inference.Predictions:
  """Writes the predictions of a run's checkpoint on the images of ``input_path``."""
  names, files = list_images(input_path)
  predictor = inference.Predictor.from_workdir(workdir, checkpoint=checkpoint)
  result = predictor.predict_files(
    files,
    batch_size=batch_size,
    attention=attention_dir is not None,
    keep_images=attention_dir is not None,
    skip_unreadable=skip_unreadable,
  )
  write_predictions(output, names, result, predictor.class_names, multilabel=predictor.multilabel)
  if attention_dir is not None:
    write_overlays(attention_dir, names, result, predictor.config.data)
  skipped = len(files) - len(result.index)
  print(
    f'{len(result.index)} images scored by step {predictor.step} of {workdir}'
    + (f' ({skipped} unreadable skipped)' if skipped else '')
    + f'; wrote {output}'
  )
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    predict(
      FLAGS.workdir,
      FLAGS.input,
      FLAGS.output,
      checkpoint=FLAGS.checkpoint,
      batch_size=FLAGS.batch_size,
      attention_dir=FLAGS.attention_dir,
      skip_unreadable=FLAGS.skip_unreadable,
    )
  except (ValueError, FileNotFoundError) as e:  # Bad input: one line that says what to do.
    sys.exit(f'care-jax predict: {e}')


def run():
  _define_flags()
  _app.run(main)


if __name__ == '__main__':
  run()
