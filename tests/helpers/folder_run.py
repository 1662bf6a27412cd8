"""A short run on a small folder dataset written here: what inference and evaluation apply.

The dataset has three classes, PNG and JPEG files, RGB and greyscale, larger than their stored
size, so that predicting has to repeat every step of the run's own preprocessing.
tests/conftest.py trains the run once per session (the `folder_run` fixture).
"""

import csv
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from care_jax import config as config_lib
from care_jax import training

CLASSES = ('amber', 'blue', 'cherry')
COLOURS = {'amber': (200, 140, 40), 'blue': (40, 70, 190), 'cherry': (170, 20, 60)}


def _image(label: str, rng: np.random.Generator) -> np.ndarray:
  """uint8 [30, 40, 3]: the class colour with noise and a random darker square."""
  image = np.asarray(COLOURS[label], np.float64) + rng.normal(0, 25, (30, 40, 3))
  y, x = rng.integers(0, 20), rng.integers(0, 30)
  image[y : y + 10, x : x + 10] *= 0.5
  return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(root: pathlib.Path) -> list[tuple[str, str, str]]:
  """Writes images and labels.csv; returns its rows (image, label, split)."""
  rng = np.random.default_rng(0)
  rows = []
  for split, per_class in (('train', 8), ('validation', 2), ('test', 4)):
    for label in CLASSES:
      for i in range(per_class):
        grey = split == 'test' and i == 0  # Greyscale files become RGB, as in training.
        suffix = '.jpg' if i % 2 else '.png'
        name = f'{split}/{label}_{i}{suffix}'
        image = _image(label, rng)
        array = np.asarray(Image.fromarray(image).convert('L')) if grey else image
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / name, quality=90)
        rows.append((name, label, split))
  with open(root / 'labels.csv', 'w', newline='') as f:
    csv.writer(f).writerows([('image', 'label', 'split'), *rows])
  return rows


def config(root: pathlib.Path, cache: pathlib.Path, *extra: str):
  """The run's config: the folder data in `root`, prepared in `cache`, with `extra` overrides."""
  return config_lib.apply_overrides(
    config_lib.default_config(),
    [
      'data.name=folder',
      f'data.dir={root}',
      f'data.cache_dir={cache}',
      'data.image_size=16',
      'data.folder.stored_size=24',  # The 40 x 30 files are stored shrunk to 24 x 18.
      'care.alpha=0.0',
      'train.num_steps=6',
      'train.batch_size=8',
      'train.eval_batch_size=8',
      'train.eval_every_steps=3',
      'train.progress=False',
      'checkpoint.every_steps=3',
      'checkpoint.keep=3',
      *extra,
    ],
  )


def write_test_csv(root: pathlib.Path, rows, path: pathlib.Path) -> list[str]:
  """Writes a CSV of the test images (paths relative to it) to `path`; returns their names."""
  names = [name for name, _, split in rows if split == 'test']
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows(
      [('image',), *[(os.path.relpath(root / n, path.parent),) for n in names]]
    )
  return names


def confusion(root, rows, preds_csv, relative_to) -> list[list[int]]:
  """The confusion matrix of a predictions CSV against the labels of `rows`."""
  labels = {os.path.relpath(root / name, relative_to): label for name, label, _ in rows}
  confusion = np.zeros((3, 3), int)
  with open(preds_csv, newline='') as f:
    for row in csv.DictReader(f):
      confusion[CLASSES.index(labels[row['image']]), CLASSES.index(row['prediction'])] += 1
  return confusion.tolist()


class FolderRun(NamedTuple):
  """A trained run: its workdir, the data folder, the rows of labels.csv, its metrics.json."""

  workdir: pathlib.Path
  root: pathlib.Path
  rows: list[tuple[str, str, str]]
  metrics: dict[str, Any]


def train(tmp_path_factory) -> FolderRun:
  """Writes the dataset and trains the 6-step run (checkpoints at steps 3 and 6)."""
  root = tmp_path_factory.mktemp('data')
  rows = write_dataset(root)
  work = tmp_path_factory.mktemp('run')
  metrics = training.train_and_evaluate(config(root, work / 'tfds'), str(work / 'run'))
  return FolderRun(work / 'run', root, rows, metrics)
