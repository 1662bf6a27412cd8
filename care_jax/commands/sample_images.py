"""Writes generated lesion images into a folder, to try `care-jax predict` on.

    care-jax sample-images --output=my_images [--count=10]

(also `python -m care_jax.commands.sample_images ...`). Writes ``--count`` test images of
`synthetic_lesions`, the generated dataset of the packaged synthetic configs, as
``<index>_<class>.png`` (the class the generator drew, so that predictions can be checked by
eye), cycling through the classes: ``000_brown.png``, ``001_dark.png``, ... The images are
those of the dataset's test split at its default settings (64x64, generator seed 0), drawn from
the seed, so nothing is downloaded.
"""

import pathlib

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from care_jax.commands import _app

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when this module runs as the program (see export.py).
  flags.DEFINE_string('output', None, 'The folder to write the PNGs to.', required=True)
  flags.DEFINE_integer('count', 10, 'How many images to write.', lower_bound=1)


def write_sample_images(output: str, count: int) -> list[pathlib.Path]:
  """Writes ``count`` test images of `synthetic_lesions` to ``output``; returns their paths."""
  from care_jax.data import synthetic_lesions  # pylint: disable=g-import-not-at-top

  config = synthetic_lesions.synthetic_config()
  counts = config.counts('test')
  starts = np.cumsum([0, *counts[:-1]])
  if count > sum(counts):
    raise ValueError(f'--count={count}: the test split has {sum(counts)} images')
  folder = pathlib.Path(output)
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for i in range(count):
    label, nth = i % len(counts), i // len(counts)
    example = synthetic_lesions.generate_example(config, 'test', int(starts[label]) + nth)
    path = folder / f'{i:03d}_{synthetic_lesions.CLASS_NAMES[example["label"]]}.png'
    Image.fromarray(example['image']).save(path)
    paths.append(path)
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  paths = write_sample_images(FLAGS.output, FLAGS.count)
  print(f'wrote {len(paths)} images to {FLAGS.output}')


def run():
  _define_flags()
  _app.run(main)


if __name__ == '__main__':
  run()
