r"""Host CPU per training image of the input pipeline, on the files users have.

Generates, once (cached under ``--data-dir``), files in the real formats at their real sizes
and prepares them with each dataset's default ``data.<dataset>`` parameters:

- ``isic2018``: 600x450 JPEG (quality 95) images with their ground-truth and metadata CSV
  files and lesion masks, as ISIC 2018 Task 3 / HAM10000 distributes them; stored as
  distributed (``stored_size`` 600);
- ``nih_chestxray14``: 1024x1024 8-bit greyscale PNG images and ``BBox_List_2017.csv``, as
  ChestX-ray14's boxed subset; stored at ``stored_size`` 512 (JPEG).

Then times `care_jax.data.pipeline.train_batches` at ``--image-size`` with the default
augmentation on, both ways ``data.augment.on_device`` can resolve: on the device (what
'auto', the default, gives on a GPU or TPU: the host decodes, at reduced size where the
JPEG allows, resizes to uint8 and draws the augmentation) and on the host (what it gives on
a CPU). After ``--warmup`` batches (reading the split, tracing), ``--steps`` batches are
timed: the wall images/s here, and the host CPU ms per image as the process's user + system
CPU time (``getrusage``, every thread of tf.data's pools) over the images, from which the
images/s that 16 such cores would give is ``16000 / ms``. The last two lines are the
figures of the device path (the default on accelerators)::

    isic2018 CPU ms per training image, augmentation on the device: X
    nih_chestxray14 CPU ms per training image, augmentation on the device: Y

Usage::

  python benchmarks/input_pipeline.py --image-size 224 --batch 64 --steps 40
"""

import argparse
import dataclasses
import os
import pathlib
import resource
import sys
import tempfile
import time

import _common
import numpy as np
from PIL import Image
from scipy import ndimage
import tensorflow_datasets as tfds

from care_jax import config as config_lib
from care_jax.data import isic2018
from care_jax.data import nih_chestxray14
from care_jax.data import pipeline

CORES = 16
DATASETS = ('isic2018', 'nih_chestxray14')
# The path each value of data.augment.on_device gives: True on accelerators ('auto').
MODES = {True: 'on the device', False: 'on the host'}


@dataclasses.dataclass(frozen=True)
class PipelineThroughput:
  """Wall images/s of the training pipeline, and its process CPU seconds per image."""

  images_per_second: float
  cpu_seconds_per_image: float
  first_batch_seconds: float


def _skin_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, 3]: a dermoscopy-like picture (skin, a dark lesion, vignette, grain).

  The grain makes the JPEG as heavy as a camera's (~200 kB at 600x450, quality 95): the
  entropy decoding, which a reduced decode does not shrink, costs as much as on real files.
  """
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  centre = rng.uniform(0.3, 0.5, 2)
  radius = np.hypot(y - centre[0] * height / width, x - centre[1])
  lesion = np.clip(1.2 - radius / rng.uniform(0.1, 0.25), 0, 1)[..., None]
  skin = np.array([200, 150, 130]) * (1 - 0.3 * np.hypot(y - 0.37, x - 0.5))[..., None]
  grain = rng.normal(0, 24, (height, width, 1)) + rng.normal(0, 8, (height, width, 3))
  return np.clip(skin * (1 - 0.7 * lesion) + grain, 0, 255).astype(np.uint8)


def _chest_image(rng: np.random.Generator, size: int) -> np.ndarray:
  """uint8 [S, S]: a radiograph-like picture (two bright lung fields, ribs, noise)."""
  y, x = np.mgrid[0:size, 0:size] / size
  lungs = sum(np.exp(-(((x - c) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)) for c in (0.3, 0.7))
  ribs = 0.1 * np.sin(40 * y + 5 * np.abs(x - 0.5) + rng.uniform(0, 6))
  image = 60 + 150 * lungs + 40 * ribs + rng.normal(0, 4, (size, size))
  return np.clip(image, 0, 255).astype(np.uint8)


def write_isic2018(root: pathlib.Path, *, per_class: int, seed: int = 0) -> None:
  """ISIC 2018 Task 3 files: 600x450 JPEGs, ground truth, metadata and masks."""
  rng = np.random.default_rng(seed)
  columns = isic2018.GROUND_TRUTH_COLUMNS
  ground_truth = ['image,' + ','.join(columns)]
  metadata = ['lesion_id,image_id,dx,dx_type,age,sex,localization']
  (root / isic2018.IMAGE_DIRS[0]).mkdir(parents=True, exist_ok=True)
  (root / isic2018.MASK_DIR).mkdir(parents=True, exist_ok=True)
  for k, name in enumerate(columns):
    for i in range(per_class):
      image_id = f'ISIC_{k * per_class + i:07d}'
      ground_truth.append(f'{image_id},' + ','.join('1.0' if c == name else '0.0' for c in columns))
      metadata.append(f'HAM_{image_id},{image_id},{name.lower()},histo,50.0,male,back')
      image = _skin_image(rng, 450, 600)
      Image.fromarray(image).save(root / isic2018.IMAGE_DIRS[0] / f'{image_id}.jpg', quality=95)
      mask = (ndimage.uniform_filter(image.mean(-1), 9) < 100).astype(np.uint8) * 255
      Image.fromarray(mask).save(root / isic2018.MASK_DIR / f'{image_id}_segmentation.png')
  (root / isic2018.GROUND_TRUTH).write_text('\n'.join(ground_truth) + '\n')
  (root / isic2018.METADATA).write_text('\n'.join(metadata) + '\n')


def write_nih_chestxray14(root: pathlib.Path, *, per_class: int, seed: int = 0) -> None:
  """ChestX-ray14's boxed subset: 1024x1024 greyscale PNGs and BBox_List_2017.csv."""
  rng = np.random.default_rng(seed)
  rows = ['Image Index,Finding Label,Bbox [x,y,w,h],,,']
  (root / 'images').mkdir(parents=True, exist_ok=True)
  for k, finding in enumerate(nih_chestxray14.CLASS_NAMES):
    for i in range(per_class):
      name = f'{k * per_class + i + 1:08d}_000.png'
      Image.fromarray(_chest_image(rng, 1024)).save(root / 'images' / name)
      rows.append(f'{name},{finding},{300 + 10 * i},{400},{200},{150}')
  (root / nih_chestxray14.BOXES).write_text('\n'.join(rows) + '\n')


def data_config(name: str, root: pathlib.Path, *, image_size: int, on_device: bool):
  """The default ``data`` config of dataset ``name`` on ``root``, augmentation on."""
  config = config_lib.default_config().data
  config.name = name
  config.dir = str(root / 'files')
  config.cache_dir = str(root / 'tfds')
  config.image_size = image_size
  config.augment.enabled = True
  config.augment.on_device = on_device
  return config


def prepare(root: pathlib.Path, name: str, *, per_class: int) -> None:
  """Writes the files of ``name`` under ``root/files`` once."""
  files = root / 'files'
  done = files / '.complete'
  if done.exists():
    return
  writer = write_isic2018 if name == 'isic2018' else write_nih_chestxray14
  writer(files, per_class=per_class)
  done.write_text('')


def cpu_seconds() -> float:
  """User + system CPU seconds of this process: every thread, tf.data's pools included."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_pipeline(
  config, *, batch_size: int, steps: int, warmup: int, seed: int
) -> PipelineThroughput:
  """Times ``steps`` batches of `pipeline.train_batches` after ``warmup`` batches."""
  start = time.perf_counter()
  batches = pipeline.train_batches(config, batch_size=batch_size, seed=seed)
  for _ in range(max(1, warmup)):
    next(batches)  # Reads the split, traces the map, fills the buffers: not throughput.
  first = time.perf_counter() - start
  wall, cpu = time.perf_counter(), cpu_seconds()
  for _ in range(steps):
    next(batches)
  wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
  images = steps * batch_size
  return PipelineThroughput(images / wall, cpu / images, first)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=40, help='pipeline batches timed')
  parser.add_argument('--warmup', type=int, default=4, help='untimed batches first')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
    '--per-class', type=int, default=8, help='generated images per class (once, cached)'
  )
  parser.add_argument(
    '--data-dir',
    default=os.path.join(tempfile.gettempdir(), 'care_jax_input_pipeline'),
    help='where the generated files and their prepared datasets are cached',
  )
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f'--steps must be > 0, got {args.steps}')

  tfds.disable_progress_bar()
  throughput = {}
  for name in DATASETS:
    root = pathlib.Path(args.data_dir) / name
    prepare(root, name, per_class=args.per_class)
    for on_device in MODES:
      config = data_config(name, root, image_size=args.image_size, on_device=on_device)
      throughput[name, on_device] = time_pipeline(
        config, batch_size=args.batch, steps=args.steps, warmup=args.warmup, seed=args.seed
      )

  print(
    f'{_common.environment()}; {os.cpu_count()} CPUs; '
    f'load average {os.getloadavg()[0]:.2f} (1 min, at the end)'
  )
  print(
    f'train_batches at {args.image_size} px, default augmentation, batch {args.batch}, '
    f'{args.steps} batches timed after {args.warmup}; sources: isic2018 600x450 JPEG q95, '
    'nih_chestxray14 1024x1024 greyscale PNG'
  )
  rows = [
    [
      name,
      MODES[on_device],
      f'{t.images_per_second:.1f}',
      f'{t.cpu_seconds_per_image * 1e3:.2f}',
      f'{CORES / max(t.cpu_seconds_per_image, 1e-9):.0f}',
      f'{t.first_batch_seconds:.1f}',
    ]
    for (name, on_device), t in throughput.items()
  ]
  header = ['dataset', 'augmentation', 'images/s here', 'CPU ms/image']
  header += [f'images/s on {CORES} cores', 'first batches (s)']
  print(_common.format_table(header, rows))
  for name in DATASETS:
    ms = 1e3 * throughput[name, True].cpu_seconds_per_image
    print(f'{name} CPU ms per training image, augmentation on the device: {ms:.3f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
