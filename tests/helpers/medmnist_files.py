"""MedMNIST+ files as the ``medmnist`` package downloads them, written by the tests.

`write_npz` writes ``<flag>.npz`` (size 28) or ``<flag>_<size>.npz`` with the real files' arrays:
``{train,val,test}_images`` uint8 [N, S, S] (greyscale flags) or [N, S, S, 3] (RGB flags) and
``{train,val,test}_labels`` uint8 [N, 1], or [N, 14] 0/1 for ChestMNIST. Images are a plain
background with one darker, redder ellipse (a lesion the automatic boxes can find).
"""

import pathlib

import numpy as np

from care_jax.data import medmnist

# MedMNIST's channels per flag (INFO[flag]['n_channels']).
RGB_FLAGS = ('pathmnist', 'dermamnist', 'retinamnist', 'bloodmnist')


def _image(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
  """uint8 [S, S] or [S, S, 3]: skin-like background, a dark reddish ellipse, noise."""
  y, x = np.mgrid[:size, :size] / size
  cy, cx = rng.uniform(0.35, 0.65, 2)
  ry, rx = rng.uniform(0.12, 0.25, 2)
  inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
  image = np.empty((size, size, 3))
  image[:] = (225, 180, 160)
  image[inside] = (120, 60, 50)
  image += rng.normal(0, 6, image.shape)
  image = np.clip(image, 0, 255).astype(np.uint8)
  return image if channels == 3 else image.mean(axis=-1).astype(np.uint8)


def labels_of(flag: str, counts: dict[str, list[int]], rng: np.random.Generator) -> dict:
  """{split: uint8 labels} with ``counts[split][k]`` images of class k (in shuffled order).

  For ChestMNIST, ``counts[split][k]`` images are positive for finding k alone, and one more
  image per split has no finding.
  """
  num_classes = len(medmnist.CLASS_NAMES[flag])
  labels = {}
  for split, per_class in counts.items():
    classes = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(classes)
    if flag in medmnist.MULTILABEL_FLAGS:
      multi_hot = np.zeros((len(classes) + 1, num_classes), np.uint8)
      multi_hot[np.arange(len(classes)), classes] = 1
      labels[split] = multi_hot
    else:
      labels[split] = classes.astype(np.uint8)[:, None]
  return labels


def write_npz(
  root: pathlib.Path,
  flag: str,
  size: int,
  counts: dict[str, list[int]],
  *,
  side: int | None = None,
  compressed: bool = True,
  seed: int = 0,
) -> pathlib.Path:
  """Writes the MedMNIST file of ``flag`` at ``size`` into ``root``; returns its path.

  Args:
    root: the data directory.
    flag: a flag of `care_jax.data.medmnist.FLAGS`.
    size: the size in the file's name (28, 64, 128, 224).
    side: the images' side (None: ``size``; smaller keeps a test cheap).
    counts: {'train' | 'val' | 'test': images per class} (`labels_of`).
    compressed: ``np.savez_compressed`` (True) or ``np.savez``.
    seed: of the images and the label order.
  """
  rng = np.random.default_rng(seed)
  channels = 3 if flag in RGB_FLAGS else 1
  arrays = {}
  for split, labels in labels_of(flag, counts, rng).items():
    arrays[f'{split}_images'] = np.stack([_image(rng, side or size, channels) for _ in labels])
    arrays[f'{split}_labels'] = labels
  path = root / medmnist.file_name(flag, size)
  root.mkdir(parents=True, exist_ok=True)
  (np.savez_compressed if compressed else np.savez)(path, **arrays)
  return path
