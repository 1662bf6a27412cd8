"""Metrics of a state on one split (every example exactly once), and of a saved checkpoint."""

from collections.abc import Iterable
import math
from typing import Any, NamedTuple

import jax
import numpy as np
import tqdm

from care_jax import classification_loss
from care_jax import metrics as metrics_lib
from care_jax import trained_run
from care_jax.training import parallel as parallel_lib
from care_jax.training import state as state_lib
from care_jax.training import step as step_lib


def evaluate(
  parallel: parallel_lib.MeshParallel | parallel_lib.PmapParallel,
  state: state_lib.TrainState,
  batches: Iterable[dict[str, np.ndarray]],
  *,
  info: Any,  # care_jax.data.DatasetInfo: data loads TensorFlow, which this module must not
  total: int | None = None,
  desc: str = 'eval',
  progress: bool = False,
  with_rows: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], dict[str, np.ndarray]]:
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
    with_rows: also return the examples' probabilities.

  Returns:
    `care_jax.metrics.classification_metrics` of the summed confusion
    matrix, with ``'attention'``: the attention metrics of the maps (and
    ``energy_in_box``, Rao et al.'s energy pointing game of the unnormalised
    maps, where the batches have lesion masks), and
    `care_jax.metrics.score_metrics` of the probabilities (AUROC, AP,
    calibration). Multi-label (``info.task``):
    `care_jax.metrics.multilabel_score_metrics` of the sigmoid
    probabilities, with ``'attention'`` per finding
    (`AttentionMetrics.compute_per_class`). With `with_rows`, also
    ``{'position': int64 [N], 'probabilities': [N, K], 'label': [N] (or
    [N, K])}``: ``position`` is each example's place in the split, in the
    order `eval_batches` reads it.
  """
  totals = _Totals(len(info.class_names), multilabel=info.task == 'multilabel')
  progress_bar = tqdm.tqdm(
    batches,
    total=total,
    desc=desc,
    unit='batch',
    leave=False,
    dynamic_ncols=True,
    disable=not progress,
  )
  # Batch i + 1 is dispatched before batch i's outputs are fetched, so the
  # devices work on the next batch while the host adds up the last one.
  pending = None
  for index, batch in enumerate(progress_bar):
    with parallel.scope():
      outputs = parallel.eval_step(state, parallel.put_batch(batch))
    if pending is not None:
      totals.add(index - 1, *parallel.fetch(pending))
    pending = outputs
  if pending is not None:
    totals.add(index, *parallel.fetch(pending))
  rows = totals.rows()
  result = _metrics(totals, rows, info)
  return (result, rows) if with_rows else result


def _metrics(totals: '_Totals', rows: dict[str, np.ndarray], info: Any) -> dict[str, Any]:
  """The metrics block of an evaluation's totals and valid rows (see `evaluate`)."""
  if info.task == 'multilabel':
    result = metrics_lib.multilabel_score_metrics(
      rows['probabilities'], rows['label'], info.class_names, rare_classes=info.rare_classes
    )
    result['attention'] = totals.quality.compute_per_class(info.class_names)
    totals.add_energy(result['attention'], info.class_names)
    return result
  result = metrics_lib.classification_metrics(
    totals.confusion, class_names=info.class_names, rare_classes=info.rare_classes
  )
  result['attention'] = totals.quality.compute()
  totals.add_energy(result['attention'], info.class_names)
  result.update(
    metrics_lib.score_metrics(rows['probabilities'], rows['label'], class_names=info.class_names)
  )
  return result


def selection_metric(task: str) -> str:
  """The validation metric that picks the best checkpoint: MCA, or mean AUROC (multi-label)."""
  return 'mean_auroc' if task == 'multilabel' else 'mca'


class _Totals:
  """The sums of an evaluation so far, and its valid rows."""

  def __init__(self, num_classes: int, *, multilabel: bool = False):
    # Multi-label metrics come from the rows alone (no confusion matrix).
    self.confusion = None if multilabel else np.zeros((num_classes, num_classes), np.int64)
    self.quality = metrics_lib.AttentionMetrics.empty(num_classes if multilabel else None)
    self._rows = {
      'position': [np.zeros(0, np.int64)],
      'probabilities': [np.zeros((0, num_classes), np.float32)],
      'label': [np.zeros((0, num_classes) if multilabel else 0, np.int64)],
    }
    # Sums and counts of the energy in the box (the eval step's ``energy_in_box`` rows): scalars,
    # or per finding; None while no batch had lesion masks.
    self.energy_sum = self.energy_count = None

  def add(self, index: int, confusion, quality, rows) -> None:
    """Adds the outputs of the eval step on global batch `index`."""
    if self.confusion is not None:
      self.confusion += np.asarray(confusion)
    self.quality = self.quality.merge(quality)
    valid = np.asarray(rows['valid'], bool)
    self._rows['position'].append(
      split_positions(index, valid.shape[0], jax.process_count())[valid]
    )
    self._rows['probabilities'].append(np.asarray(rows['probabilities'])[valid])
    self._rows['label'].append(np.asarray(rows['label'])[valid])
    if 'energy_in_box' in rows:
      counted = np.asarray(rows['energy_counted'], bool)
      energy = np.where(counted, np.asarray(rows['energy_in_box'], np.float64), 0.0).sum(0)
      self.energy_sum = energy + (0.0 if self.energy_sum is None else self.energy_sum)
      self.energy_count = counted.sum(0) + (0 if self.energy_count is None else self.energy_count)

  def add_energy(self, attention: dict[str, Any], class_names) -> None:
    """Puts the mean energy in the box into an attention block (`AttentionMetrics.compute`,
    or per finding `compute_per_class`, whose findings then each get theirs)."""
    if self.energy_sum is None:
      return
    if np.ndim(self.energy_count) == 0:
      count = int(self.energy_count)
      attention['energy_in_box'] = float(self.energy_sum) / count if count else None
      return
    scored = self.energy_count > 0
    means = np.divide(self.energy_sum, self.energy_count, out=np.zeros(scored.shape), where=scored)
    for i, name in enumerate(class_names):
      attention['per_class'][name]['energy_in_box'] = float(means[i]) if scored[i] else None
    attention['energy_in_box'] = float(means[scored].mean()) if scored.any() else None

  def rows(self) -> dict[str, np.ndarray]:
    return {key: np.concatenate(parts) for key, parts in self._rows.items()}


def evaluate_split(
  parallel, state, config, info, split: str, eval_batches, *, with_rows: bool = False
):
  """`evaluate` over one pass of `split` in global batches of ``train.eval_batch_size``.

  Args:
    parallel, state, info, with_rows: as for `evaluate`.
    config: the run's config (``train.eval_batch_size``, ``train.progress``).
    split: the split to score.
    eval_batches: ``f(split, *, batch_size) -> batches`` of this process's
      share (`care_jax.training.inputs.Inputs.eval_batches`).
  """
  size = config.train.eval_batch_size
  return evaluate(
    parallel,
    state,
    eval_batches(split, batch_size=size // jax.process_count()),
    info=info,
    total=math.ceil(info.split_sizes[split] / size),
    desc=f'eval {split}',
    progress=jax.process_index() == 0 and config.train.progress,
    with_rows=with_rows,
  )


def split_positions(batch_index: int, global_batch: int, processes: int) -> np.ndarray:
  """The split positions of the rows of a global eval batch.

  Process p holds the examples p, p + P, p + 2P, ... of the padded split and
  contributes rows [p b, (p + 1) b) of each global batch (b = G / P rows per
  process, `care_jax.data.pipeline.eval_batches`).
  """
  local = global_batch // processes
  row = np.arange(global_batch)
  return (batch_index * local + row % local) * processes + row // local


class _Variables(NamedTuple):
  """The part of a train state that the eval step reads."""

  params: Any
  batch_stats: Any


def evaluate_checkpoint(
  workdir: str, split: str, *, which: str | int = 'best', batch_size: int | None = None
) -> dict[str, Any]:
  """The metrics block of a run's checkpoint on a split of its dataset.

  The checkpoint's model scores every example of `split` once, with the
  run's preprocessing and post-hoc adjustment, on all devices (the run's
  ``config.parallel``).

  Args:
    workdir: the run.
    split: 'test', 'validation' or 'train'.
    which: 'best' (by validation MCA), 'latest' or a step.
    batch_size: the global eval batch (default: the run's
      ``train.eval_batch_size``).

  Returns:
    The block (as in metrics.json) with ``step`` and ``checkpoint`` (`which`).

  Raises:
    FileNotFoundError, ValueError: no such checkpoint; a split the dataset
      lacks (the splits are named).
  """
  # The input pipeline loads TensorFlow: only when a checkpoint is scored.
  from care_jax.training import inputs as inputs_lib  # pylint: disable=g-import-not-at-top

  run = trained_run.load_run(workdir, which=which)
  config = run.config.copy_and_resolve_references()
  if batch_size is not None:
    config.train.eval_batch_size = batch_size
  inputs = inputs_lib.PipelineInputs(config)
  if split not in inputs.info.split_sizes:
    raise ValueError(f'split {split!r} does not exist; splits: {sorted(inputs.info.split_sizes)}.')
  parallel = _eval_parallel(run, config, inputs.info)
  state = parallel.put_state(_Variables(run.variables['params'], run.variables['batch_stats']))
  result = evaluate_split(parallel, state, config, inputs.info, split, inputs.eval_batches)
  return {'step': run.step, 'checkpoint': which, 'split': split, **result}


def _eval_parallel(run: trained_run.TrainedRun, config, info):
  """The data-parallel back-end with the eval step of a saved run (no train step)."""
  counts = np.asarray(run.train_class_counts or info.train_class_counts)
  loss = classification_loss.make_classification_loss(
    **config.loss.to_dict(),
    class_counts=counts,
    num_steps=1,
    task=config.task,
    num_examples=info.num_train_examples,
  )
  model = state_lib.create_model(config, len(run.class_names))
  axis_name = parallel_lib.PMAP_AXIS if config.parallel == 'pmap' else None
  eval_step = step_lib.make_eval_step(
    model,
    num_classes=len(run.class_names),
    attention=config.care.attention,
    predict_logits=loss.predict_logits,
    axis_name=axis_name,
    task=config.task,
  )
  parallel = parallel_lib.make_parallel(config, lambda state, batch: (state, batch), eval_step)
  parallel_lib.check_divisible(config.train.eval_batch_size, parallel, 'train.eval_batch_size')
  return parallel
