"""Fixture files in the layouts researchers download: class-folder trees and CheXpert v1.0.

`write_class_tree` writes ``ImageFolder``-style trees (optionally under split folders, with
Kaggle's ``val``): PNG and JPEG files, RGB and greyscale, of several sizes, a nested subfolder
and the clutter real trees have (``.DS_Store``, a README). `write_chexpert` writes the
CheXpert-v1.0-small release: ``train.csv``/``valid.csv`` with the real header and ``Path``
layout, uncertain (-1.0) and blank values, lateral views, and greyscale JPEGs.
"""

import csv
import os
import pathlib

import numpy as np

from care_jax.data import chexpert
from tests.helpers import data_fixtures as fx


def _tree_image(rng: np.random.Generator, index: int) -> tuple[np.ndarray, str]:
  """An image and its suffix: PNG or JPEG, greyscale every third, sizes 20-27 x 24-31.

  A reddish square (a lesion that the Otsu boxes find in colour images) on a light grey,
  noisy background; the greyscale files are the same image in grey.
  """
  height, width = 20 + index % 8, 24 + index % 8
  image = np.full((height, width, 3), 200, np.int64)
  image[4:14, 4:12] = (150, 40, 40)
  image = np.clip(image + rng.integers(-8, 8, image.shape), 0, 255).astype(np.uint8)
  if index % 3 == 0:
    image = image.mean(-1).astype(np.uint8)
  return image, ('.png', '.jpg', '.JPEG')[index % 3]


def write_class_tree(
  root: pathlib.Path, counts: dict[str | None, dict[str, int]], *, seed: int = 0
) -> None:
  """Writes ``root/[<split>/]<class>/<image>``: ``counts[split][class]`` images each.

  The split key None writes class folders directly under ``root``. The second image of each
  class folder goes into a subfolder ``more/`` (``ImageFolder`` reads subfolders too); each
  class folder also holds a ``.DS_Store`` and ``root`` a ``README.txt``, which are no images.
  """
  rng = np.random.default_rng(seed)
  for split, per_class in counts.items():
    base = root / split if split else root
    for name, count in per_class.items():
      for i in range(count):
        image, suffix = _tree_image(rng, i)
        folder = base / name / ('more' if i == 1 else '')
        fx.save_image(folder / f'{name.lower()}_{i:03d}{suffix}', image, quality=90)
      (base / name / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')
  (root / 'README.txt').write_text('Images by class.\n')


def tree_counts(root: pathlib.Path) -> dict[str | None, dict[str, int]]:
  """A direct reading of a tree: ``{split folder or None: {class folder: image files}}``."""
  counts: dict[str | None, dict[str, int]] = {}
  for directory, _, files in os.walk(root):
    parts = pathlib.Path(directory).relative_to(root).parts
    images = [f for f in files if f.lower().endswith(('.png', '.jpg', '.jpeg'))]
    if not images or any(part.startswith('.') for part in parts):
      continue
    split = parts[0] if parts[0] in ('train', 'val', 'validation', 'test') else None
    name = parts[1] if split else parts[0]
    per_class = counts.setdefault(split, {})
    per_class[name] = per_class.get(name, 0) + len(images)
  return counts


RELEASE = 'CheXpert-v1.0-small'
# The values a train.csv cell takes: positive, negative, uncertain, not mentioned.
_OTHER_VALUES = ('0.0', '-1.0', '')


def _chexpert_row(path: str, view: str, positive: str, rng: np.random.Generator, *, valid: bool):
  values = []
  for name in chexpert.OBSERVATIONS:
    if name == positive:
      values.append('1.0')
    elif valid:
      values.append('0.0')  # valid.csv has no uncertain or blank cells.
    else:
      values.append(_OTHER_VALUES[rng.integers(len(_OTHER_VALUES))])
  return [path, ('Female', 'Male')[rng.integers(2)], str(rng.integers(20, 90)), view, 'AP', *values]


def write_chexpert(
  data_dir: pathlib.Path,
  *,
  train_patients: int = 20,
  valid_patients: int = 5,
  classes: tuple[str, ...] = chexpert.COMPETITION,
  seed: int = 0,
) -> pathlib.Path:
  """Writes ``data_dir/CheXpert-v1.0-small`` and returns that folder.

  Patient ``i`` has one study with a frontal view, positive (1.0) for ``classes[i % K]``,
  every other observation drawn from 0.0, -1.0 and blank in train.csv (0.0 in valid.csv), and
  every third patient also a lateral view with the same values. Images are greyscale JPEGs of
  32 x 40 (width x height) pixels.
  """
  rng = np.random.default_rng(seed)
  root = data_dir / RELEASE
  patient = 0
  for split, count, file in (
    ('train', train_patients, 'train.csv'),
    ('valid', valid_patients, 'valid.csv'),
  ):
    lines = [list(chexpert.COLUMNS)]
    for i in range(count):
      patient += 1
      views = [('view1_frontal.jpg', 'Frontal')] + [('view2_lateral.jpg', 'Lateral')] * (i % 3 == 0)
      first = None
      for name, view in views:
        path = f'{RELEASE}/{split}/patient{patient:05d}/study1/{name}'
        row = _chexpert_row(path, view, classes[i % len(classes)], rng, valid=split == 'valid')
        if first is not None:
          row[5:] = first[5:]
        first = first or row
        lines.append(row)
        image = fx.lesion_image(40, 32, (8, 10, 20, 24) if view == 'Frontal' else None)
        fx.save_image(root / path.split('/', 1)[1], image, quality=90)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / file, 'w', newline='') as f:
      csv.writer(f).writerows(lines)
  return root


def read_chexpert_csv(path: pathlib.Path) -> list[dict[str, str]]:
  """A direct reading of train.csv or valid.csv: one dict per row."""
  with open(path, newline='') as f:
    return list(csv.DictReader(f))
