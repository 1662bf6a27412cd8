"""What a run writes into its workdir (process 0 only).

    WORKDIR/config.json          the run's config
    WORKDIR/train_log.jsonl      one JSON record per log step
    WORKDIR/events.out.tfevents.*  TensorBoard: training metrics at every log
                                 step; evaluation metrics and attention
                                 overlays at every evaluation
    WORKDIR/metrics.json         the final validation and test metrics
    WORKDIR/predictions_test.csv the test images' predictions and probabilities

(``WORKDIR/checkpoints`` is `care_jax.checkpoint`'s.) On the other
processes of a multi-process run every method is a no-op.

Every JSON file is strict JSON (`dumps`: ``allow_nan=False``): an undefined
value is ``null``, never ``NaN`` or ``-Infinity``, which most JSON parsers
reject. `headline` is the one-line summary of a metrics block that
``care-jax train`` and ``care-jax evaluate`` print.
"""

import contextlib
import csv
import json
import math
from typing import Any

from etils import epath
import numpy as np

from care_jax import config as config_lib
from care_jax import figures
from care_jax import inference
from care_jax.training import summary

TRAIN_LOG = 'train_log.jsonl'
METRICS = 'metrics.json'
CONFIG = 'config.json'
PREDICTIONS = 'predictions_{split}.csv'


def dumps(value: Any, **kwargs) -> str:
  """`json.dumps` that refuses NaN and +-Infinity (ValueError): they are not JSON.

  Writers turn undefined values into None (``null``) at their source; a
  non-finite float that reaches a file is a bug, and fails here rather than
  writing a file that JSON parsers other than Python's reject.
  """
  return json.dumps(value, allow_nan=False, **kwargs)


def _finite_or_none(value: Any) -> Any:
  return None if isinstance(value, float) and not math.isfinite(value) else value


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:.4f}'
  return 'n/a' if value is None else str(value)


def progress_postfix(record: dict[str, Any], method: str = 'care') -> dict[str, str]:
  """The progress bar's fields of a training record: the loss and the guidance term.

  CARE (and CE alone) show ``care``, as always; another ``guidance.method`` shows its
  unweighted term (the step's ``guidance``) under the method's name::

    >>> progress_postfix({'loss': 0.5, 'ce': 0.4, 'guidance': 0.1}, 'actdiff')
    {'loss': '0.5000', 'actdiff': '0.100'}
  """
  if 'guidance' in record:
    return {'loss': f'{record["loss"]:.4f}', method: f'{record["guidance"]:.3f}'}
  return {'loss': f'{record["loss"]:.4f}', 'care': f'{record.get("care", 0.0):.3f}'}


def format_record(record: dict[str, Any]) -> str:
  """A training record as ``key value`` pairs, the loss first (``loss 0.6931 ce 0.6931 ...``)."""
  keys = sorted((k for k in record if k != 'step'), key=lambda k: k != 'loss')
  return ' '.join(f'{k} {_format_value(record[k])}' for k in keys)


def headline(block: dict[str, Any], split: str, *, step: int | None = None) -> str:
  """The headline numbers of a metrics block of `split` (as in ``metrics.json``).

  `step` is the scored step (default: the block's ``step``, as ``care-jax
  evaluate`` writes it).

  Multiclass: MCA, rare-class recall and macro AUROC; multi-label: mean
  AUROC, rare-finding mean AUROC and rare recall. Undefined values read ``n/a``::

    step 60 on test: MCA 0.5600, rare recall 0.0000, macro AUROC 0.8028
  """
  if 'mean_auroc' in block:
    names = {'mean_auroc': 'mean AUROC', 'rare_mean_auroc': 'rare mean AUROC'}
    names['rare_recall'] = 'rare recall'
  else:
    names = {'mca': 'MCA', 'rare_recall': 'rare recall', 'macro_auroc': 'macro AUROC'}
  numbers = ', '.join(f'{name} {_format_value(block.get(key))}' for key, name in names.items())
  return f'step {block["step"] if step is None else step} on {split}: {numbers}'


def truncate_log(path: epath.PathLike, step: int) -> None:
  """Keeps the records of steps <= `step` in the JSON-lines log at `path`.

  A resumed run appends to its log; records written after the checkpoint it
  resumes from (before the kill) would otherwise appear twice.
  """
  path = epath.Path(path)
  if not path.exists():
    return
  lines = path.read_text().splitlines(keepends=True)
  path.write_text(
    ''.join(line for line in lines if line.strip() and json.loads(line)['step'] <= step)
  )


class RunOutputs:
  """The workdir's files of one run (a context manager).

  Args:
    workdir: the run's directory: a local path or any URL `etils.epath`
      opens (``gs://`` on a TPU VM).
    is_chief: whether this process writes (process 0).
    start_step: the step the run starts (or resumes) at: later records of the
      training log, written before a kill, are dropped.
    attention_summaries: optional `AttentionSummaries` drawn at each evaluation.
  """

  def __init__(
    self,
    workdir: epath.PathLike,
    *,
    is_chief: bool,
    start_step: int,
    attention_summaries: 'AttentionSummaries | None' = None,
  ):
    self.workdir = epath.Path(workdir)
    self.is_chief = is_chief
    self._start_step = start_step
    self._attention_summaries = attention_summaries
    self._files = contextlib.ExitStack()
    self._log_file = None
    self._writer = None

  def __enter__(self) -> 'RunOutputs':
    if self.is_chief:
      log_path = self.workdir / TRAIN_LOG
      truncate_log(log_path, self._start_step)
      # enter_context: epath's TensorFlow back-end (gs://) opens files as context managers.
      self._log_file = self._files.enter_context(log_path.open('a'))
      self._writer = self._files.enter_context(summary.SummaryWriter(str(self.workdir)))
    return self

  def __exit__(self, *exc_info) -> None:
    self._files.close()

  def write_config(self, config) -> None:
    if self.is_chief:
      (self.workdir / CONFIG).write_text(dumps(config_lib.to_json(config), indent=2))

  def log_train(self, record: dict[str, Any]) -> None:
    """Appends a training record (`step`, `seconds` and metrics) to the log and TensorBoard.

    A non-finite value (the loss of a step the non-finite guard skipped) is
    written as ``null`` and left out of TensorBoard.
    """
    if not self.is_chief:
      return
    record = {k: _finite_or_none(v) for k, v in record.items()}
    self._log_file.write(dumps(record) + '\n')
    self._log_file.flush()
    self._writer.scalars(
      {
        f'train/{k}': v for k, v in record.items() if k not in ('step', 'seconds') and v is not None
      },
      record['step'],
    )

  def log_eval(self, split: str, result: dict[str, Any], host_state, step: int) -> None:
    """TensorBoard scalars of an evaluation, and the attention overlays of `host_state`."""
    if not self.is_chief:
      return
    scalars = {
      f'{split}/{k}': result[k]
      for k in ('mca', 'accuracy', 'rare_recall', 'mean_auroc', 'rare_mean_auroc', 'mean_ap')
      if result.get(k) is not None
    }
    # The means only: a multi-label block also holds counts and per-finding dicts.
    scalars.update(
      {
        f'{split}/attention/{k}': v
        for k, v in result['attention'].items()
        if k in ('mass_inside', 'pointing_game', 'iou', 'energy_in_box') and v is not None
      }
    )
    self._writer.scalars(scalars, step)
    if self._attention_summaries is not None:
      self._writer.image('attention', self._attention_summaries(host_state), step)
    self._writer.flush()

  def write_predictions(
    self, split: str, example_ids, rows: dict[str, Any], class_names, *, multilabel: bool = False
  ) -> None:
    """``predictions_<split>.csv``: ``image,prediction,p_<class>...`` (as ``care-jax predict``).

    One row per example of the split, in the split's order; ``image`` is the
    example's identifier (`care_jax.data.pipeline.example_ids`). Multi-label:
    ``prediction`` lists the classes with probability >= 0.5, joined by ``|``
    (empty for none), and ``p_<class>`` are the sigmoid probabilities.
    """
    if not self.is_chief:
      return
    order = np.argsort(rows['position'], kind='stable')
    # csv's own '\r\n' line ends, untranslated on POSIX (epath opens files without newline=).
    with (self.workdir / PREDICTIONS.format(split=split)).open('w') as f:
      writer = csv.writer(f)
      writer.writerow(['image', 'prediction', *(f'p_{name}' for name in class_names)])
      for position, probabilities in zip(rows['position'][order], rows['probabilities'][order]):
        writer.writerow(
          [
            example_ids[position],
            inference.predicted_classes(probabilities, class_names, multilabel=multilabel),
            *(f'{p:.6g}' for p in probabilities),
          ]
        )

  def write_metrics(self, result: dict[str, Any]) -> None:
    if self.is_chief:
      (self.workdir / METRICS).write_text(dumps(result, indent=2))


class AttentionSummaries:
  """The attention overlays of the same few images at every evaluation.

  The images are rare-class images with a lesion box first
  (`care_jax.data.examples.select_examples`), so the change of their maps
  over training is visible.

  Args:
    model: the classifier.
    examples: rows of eval batches (``image``, ``label``, ``lesion_mask``).
    mean, std: the run's ``data.mean`` and ``data.std``, to draw the images.
    method: the run's ``care.attention``.
  """

  def __init__(self, model, examples: dict[str, Any], *, mean, std, method: str):
    self._model = model
    self._examples = examples
    self._method = method
    self._pixels = figures.denormalize(examples['image'], mean=mean, std=std)

  def __call__(self, host_state) -> Any:
    """uint8 [H, N * W + gaps, 3]: the overlays of `host_state`'s maps."""
    variables = {'params': host_state.params, 'batch_stats': host_state.batch_stats}
    maps, _ = figures.compute_attention(
      self._model, variables, self._examples['image'], self._examples['label'], method=self._method
    )
    return figures.overlay_strip(self._pixels, maps, self._examples['lesion_mask'])
