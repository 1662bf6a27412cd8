"""A few evaluation examples to draw: the same ones for the same data."""

from collections.abc import Sequence

import ml_collections
import numpy as np

from care_jax.data import pipeline


def select_examples(
  data_config: ml_collections.ConfigDict,
  split: str,
  *,
  num_images: int,
  rare_classes: Sequence[int],
  batch_size: int = 64,
) -> dict[str, np.ndarray]:
  """``num_images`` eval examples to draw, the same ones for the same data.

  Order: rare-class images with a lesion box, taking the rare classes in
  turn; then other images with a box; then rare-class images without one;
  then the rest; each group in the split's order.

  Returns:
    The rows of `care_jax.data.pipeline.eval_batches` (``image``, ``label``,
    ``lesion_mask``, ``has_lesion_mask``, ...), stacked: [n, ...] with
    ``n = min(num_images, size of the split)``.
  """
  if num_images < 1:
    raise ValueError(f'num_images must be >= 1, got {num_images}.')
  rare = set(int(k) for k in rare_classes)
  # (priority, class) -> rows, at most num_images each.
  groups: dict[tuple[int, int], list[dict[str, np.ndarray]]] = {}
  for batch in pipeline.eval_batches(data_config, split, batch_size=batch_size):
    for row in np.flatnonzero(batch['valid']):
      label, boxed = int(batch['label'][row]), bool(batch['has_lesion_mask'][row])
      priority = (0 if label in rare else 1) if boxed else (2 if label in rare else 3)
      group = groups.setdefault((priority, label), [])
      if len(group) < num_images:
        group.append({k: np.array(v[row]) for k, v in batch.items()})  # copies: batches go
    if rare and all(len(groups.get((0, k), ())) >= num_images for k in rare):
      break
  chosen = []
  for priority in range(4):
    buckets = [rows for (p, _), rows in sorted(groups.items()) if p == priority]
    for turn in range(num_images):  # One image of each class in turn.
      chosen += [rows[turn] for rows in buckets if turn < len(rows)]
  chosen = chosen[:num_images]
  return {k: np.stack([row[k] for row in chosen]) for k in chosen[0]}
