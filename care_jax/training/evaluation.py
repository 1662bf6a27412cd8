"""Metrics of a state on one split: every example exactly once."""

from collections.abc import Iterable
from typing import Any

import numpy as np
import tqdm

from care_jax import metrics as metrics_lib


def evaluate(
  parallel,
  state,
  batches: Iterable[dict[str, np.ndarray]],
  *,
  info,
  total: int | None = None,
  desc: str = 'eval',
  progress: bool = False,
) -> dict[str, Any]:
  """Classification and attention metrics of `state` over eval `batches`.

  Args:
    parallel: the data-parallel back-end whose ``eval_step`` runs.
    state: the train state on the devices (`parallel.put_state`).
    batches: this process's share of each global eval batch
      (`care_jax.data.pipeline.eval_batches`; padding rows have
      ``valid=False``).
    info: the dataset's `DatasetInfo` (class names, rare classes).
    total: the number of batches, for the progress bar.
    desc: the progress bar's label.
    progress: show a progress bar.

  Returns:
    `care_jax.metrics.classification_metrics` of the summed confusion
    matrix, with ``'attention'``: the attention metrics of the maps.
  """
  confusion = np.zeros((len(info.class_names),) * 2, np.int64)
  quality = metrics_lib.AttentionMetrics.empty()
  for batch in tqdm.tqdm(
    batches,
    total=total,
    desc=desc,
    unit='batch',
    leave=False,
    dynamic_ncols=True,
    disable=not progress,
  ):
    with parallel.scope():
      batch_confusion, batch_quality = parallel.fetch(
        parallel.eval_step(state, parallel.put_batch(batch))
      )
    confusion += np.asarray(batch_confusion)
    quality = quality.merge(batch_quality)
  result = metrics_lib.classification_metrics(
    confusion, class_names=info.class_names, rare_classes=info.rare_classes
  )
  result['attention'] = quality.compute()
  return result
