"""Drawn lesions for the box generators: skin-coloured images with a dark blob, and its box."""

import numpy as np

SKIN = np.array([224.0, 188.0, 164.0])
LESION = np.array([150.0, 95.0, 62.0])


def ellipse(size: int, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
  """bool [size, size]: the pixels whose centres lie in the ellipse."""
  y, x = np.mgrid[:size, :size] + 0.5
  return ((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2 <= 1.0


def tight_box(mask: np.ndarray) -> np.ndarray:
  """Independent reference: normalised box of a [H, W] mask from its row/column ranges."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  h, w = mask.shape
  return np.array([rows[0] / h, cols[0] / w, (rows[-1] + 1) / h, (cols[-1] + 1) / w])


def blob_images(num: int = 4, size: int = 64, seed: int = 0):
  """Skin-coloured images with one dark-brown elliptical blob each, and its true box."""
  rng = np.random.default_rng(seed)
  images, true = [], []
  for _ in range(num):
    centre = rng.uniform(0.35, 0.65, 2) * size
    blob = ellipse(size, tuple(centre), tuple(rng.uniform(0.15, 0.25, 2) * size))
    image = np.where(blob[..., None], LESION, SKIN) + rng.normal(0, 2.0, (size, size, 3))
    images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
    true.append(tight_box(blob))
  return np.stack(images), np.stack(true).astype(np.float32)
