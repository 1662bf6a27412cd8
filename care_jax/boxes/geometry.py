"""Host post-processing of the box generators: foreground masks -> boxes, and box geometry.

`boxes_from_foreground` turns the [N, H, W] foreground masks of any generator
(`care_jax.boxes.generators`) into normalised boxes: it keeps each image's
largest 8-connected component (`largest_components`, one `scipy.ndimage.label`
call per stack, never connecting pixels across images), boxes it and grows the
box by a margin (`expand_boxes`). `box_iou` compares boxes. Numpy and scipy on
the host; no model, no files.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

# 8-connectivity inside each image of an [N, H, W] stack, none across images.
_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = True


def largest_components(foreground: ArrayLike) -> np.ndarray:
  """Keeps the largest 8-connected component of each [H, W] mask of a stack.

  One `scipy.ndimage.label` call labels the whole [N, H, W] stack with a
  structure that connects pixels within an image only; component sizes come
  from one `np.bincount`. Ties go to the component met first in raster order.

  Args:
    foreground: [N, H, W] masks (nonzero = foreground).

  Returns:
    bool [N, H, W], each image's largest component (all False without one).
  """
  foreground = np.asarray(foreground).astype(bool)
  if foreground.ndim != 3:
    raise ValueError(f'foreground must have shape [N, H, W], got {foreground.shape}.')
  # Imported here: the config imports this module (for the box methods' names), and
  # benchmarks/gpu.py imports the config where scipy is not installed.
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  labels, num = ndimage.label(foreground, structure=_STRUCTURE)
  if num == 0:
    return foreground
  n = foreground.shape[0]
  sizes = np.bincount(labels.ravel(), minlength=num + 1)
  # The image each component lies in: component ids grow in raster order,
  # so the first pixel of each id is found via np.unique's first index.
  ids, first = np.unique(labels.ravel(), return_index=True)
  ids, first = ids[1:], first[1:]  # Drop the background (id 0).
  owner = first // labels[0].size
  # Per image: the largest size, then the smallest id of that size.
  best_size = np.zeros(n, np.int64)
  np.maximum.at(best_size, owner, sizes[ids])
  winners = sizes[ids] == best_size[owner]
  chosen = np.full(n, num + 1, np.int64)
  np.minimum.at(chosen, owner[winners], ids[winners])
  return labels == chosen[:, None, None]


def expand_boxes(boxes: ArrayLike, *, margin: float) -> np.ndarray:
  """Grows each box by ``margin`` times its size on every side, inside [0, 1].

  ``ymin - margin * (ymax - ymin)``, ..., then clipped to the image. All-zero
  rows (boxes not found) stay all zero.

  Args:
    boxes: [N, 4] normalised (ymin, xmin, ymax, xmax).
    margin: fraction of the box's height (width) added above and below (left
      and right); >= 0.

  Returns:
    float32 [N, 4].
  """
  if not margin >= 0.0:
    raise ValueError(f'margin must be >= 0, got {margin}.')
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  size = boxes[:, 2:] - boxes[:, :2]
  grown = np.concatenate([boxes[:, :2] - margin * size, boxes[:, 2:] + margin * size], axis=1)
  return np.clip(grown, 0.0, 1.0).astype(np.float32)


def boxes_from_foreground(
  foreground: ArrayLike, *, largest_component: bool = True, margin: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
  """Bounding boxes of foreground masks: the post-processing of all generators.

  Args:
    foreground: [N, H, W] masks (nonzero = foreground).
    largest_component: box the largest 8-connected component only (else all
      foreground pixels).
    margin: see `expand_boxes`.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    all zero where ``found`` (bool [N]) is False (no foreground).

  Examples:
    >>> mask = np.zeros((1, 4, 8), bool); mask[0, 1:3, 2:6] = True
    >>> boxes_from_foreground(mask)[0]
    array([[0.25, 0.25, 0.75, 0.75]], dtype=float32)
  """
  foreground = np.asarray(foreground).astype(bool)
  if foreground.ndim != 3:
    raise ValueError(f'foreground must have shape [N, H, W], got {foreground.shape}.')
  if largest_component:
    foreground = largest_components(foreground)
  _, height, width = foreground.shape
  rows, cols = foreground.any(axis=2), foreground.any(axis=1)
  found = rows.any(axis=1)
  # First and one-past-last foreground row/column of each image.
  boxes = np.stack(
    [
      rows.argmax(axis=1) / height,
      cols.argmax(axis=1) / width,
      (height - rows[:, ::-1].argmax(axis=1)) / height,
      (width - cols[:, ::-1].argmax(axis=1)) / width,
    ],
    axis=1,
  ).astype(np.float32)
  boxes[~found] = 0.0
  if margin:
    boxes = expand_boxes(boxes, margin=margin)
  return boxes, found


def box_iou(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Intersection over union of boxes ``(ymin, xmin, ymax, xmax)``, broadcast.

  ``|a n b| / |a u b|``, 0 where the union is empty. Works on normalised or
  pixel coordinates alike (both boxes in the same units).

  Examples:
    >>> float(box_iou([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]))  # 1 / 7
    0.1428...
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.shape[-1] != 4 or b.shape[-1] != 4:
    raise ValueError(f'boxes must have a last axis of 4, got shapes {a.shape} and {b.shape}.')
  low = jnp.maximum(a[..., :2], b[..., :2])
  high = jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.clip(high - low, 0.0), axis=-1)
  area_a = jnp.prod(jnp.clip(a[..., 2:] - a[..., :2], 0.0), axis=-1)
  area_b = jnp.prod(jnp.clip(b[..., 2:] - b[..., :2], 0.0), axis=-1)
  union = area_a + area_b - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
