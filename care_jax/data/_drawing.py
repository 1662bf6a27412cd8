"""Drawing, colours and textures of the generated `synthetic_lesions` and `synthetic_multilabel`."""

import dataclasses

import numpy as np

RULER = np.array([238.0, 238.0, 232.0])
# Lesion colours (RGB) of the common classes, which the rare classes borrow, and the skin tone.
PALETTE = {'brown': (150.0, 95.0, 62.0), 'dark': (92.0, 60.0, 48.0), 'pink': (200.0, 118.0, 122.0)}
SKIN = np.array([224.0, 188.0, 164.0])
RULER_TICK = np.array([45.0, 45.0, 50.0])


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (y, x), each [size, size], in pixel units."""
  centres = np.arange(size, dtype=np.float64) + 0.5
  return np.meshgrid(centres, centres, indexing='ij')


def smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
  """Low-frequency noise [size, size, channels] of unit scale.

  A (cells + 1)^2 grid of N(0, 1) values, bilinearly interpolated.
  """
  grid = rng.standard_normal((cells + 1, cells + 1, channels))
  t = (np.arange(size) + 0.5) / size * cells
  i0 = np.minimum(t.astype(int), cells - 1)
  f = (t - i0)[:, None]
  rows = grid[i0] * (1 - f[..., None]) + grid[i0 + 1] * f[..., None]
  return rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]


def texture(
  name: str, y: np.ndarray, x: np.ndarray, *, angle: float, period: float, phase: np.ndarray
) -> np.ndarray:
  """The rare classes' lesion texture [S, S] at pixel coordinates ``(y, x)`` (`pixel_grid`).

  With ``u``, ``v`` the coordinates rotated by ``angle``: 'striped' is
  ``cos(2 pi u / period + phase[0])``; 'dotted' is
  ``((0.5 + 0.5 cos(2 pi u / period + phase[0])) (0.5 + 0.5 cos(2 pi v / period + phase[1])))^2``,
  a grid of dots; any other class has none (zeros).
  """
  u = np.cos(angle) * x + np.sin(angle) * y
  v = -np.sin(angle) * x + np.cos(angle) * y
  if name == 'striped':
    return np.cos(2.0 * np.pi * u / period + phase[0])
  if name == 'dotted':
    return (
      (0.5 + 0.5 * np.cos(2.0 * np.pi * u / period + phase[0]))
      * (0.5 + 0.5 * np.cos(2.0 * np.pi * v / period + phase[1]))
    ) ** 2
  return np.zeros_like(u)


def tight_box(inside: np.ndarray) -> np.ndarray:
  """Normalised (ymin, xmin, ymax, xmax) of the pixels where ``inside``."""
  size = inside.shape[0]
  rows = np.flatnonzero(inside.any(axis=1))
  cols = np.flatnonzero(inside.any(axis=0))
  return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], dtype=np.float32) / np.float32(
    size
  )


@dataclasses.dataclass(frozen=True)
class Ruler:
  """Where a ruler-like bar lies in the border band of an image (pixel units).

  ``side`` 0-3: top, bottom, left, right; ``offset`` and ``thickness``
  across the border (depth from it), ``start`` and ``length`` along it, a
  dark tick every ``tick_step`` pixels.
  """

  side: int
  offset: int
  thickness: int
  start: float
  length: float
  tick_step: int


def draw_ruler_parameters(rng: np.random.Generator, size: int, band: int) -> Ruler:
  """Draws a `Ruler` inside a ``band`` pixels wide along the border of a ``size`` image."""
  side = int(rng.integers(4))
  thickness = max(2, round(0.06 * size))
  offset = int(rng.integers(1, band - thickness + 1))
  length = rng.uniform(0.35, 0.7) * size
  start = rng.uniform(0.0, size - length)
  return Ruler(side, offset, thickness, start, length, tick_step=max(3, round(size / 16)))


def paint_ruler(
  image: np.ndarray, y: np.ndarray, x: np.ndarray, ruler: Ruler
) -> tuple[np.ndarray, np.ndarray]:
  """``image`` [S, S, 3] with the ruler painted on, and the ruler's tight box."""
  size = image.shape[0]
  # Coordinates along the border and across it (depth from the border).
  run, depth = (x, y) if ruler.side < 2 else (y, x)
  if ruler.side % 2:
    depth = size - depth
  in_run = (run >= ruler.start) & (run <= ruler.start + ruler.length)
  bar = in_run & (depth >= ruler.offset) & (depth < ruler.offset + ruler.thickness)
  ticks = (
    bar
    & (np.floor(run) % ruler.tick_step == 0)
    & (depth < ruler.offset + ruler.thickness / 2.0 + 0.5)
  )
  image = np.where(bar[..., None], RULER, image)
  image = np.where(ticks[..., None], RULER_TICK, image)
  return image, tight_box(bar)
