"""The paper's two stages in one run: CE until validation stops improving, then CARE.

With ``care.protocol = 'two_stage'`` a run trains with cross-entropy alone (stage 1)
and validates every ``train.eval_every_steps``. Each validation that improves
``care.stage1_metric`` saves the state to ``WORKDIR/stage1_best`` (one checkpoint,
its score in the meta). Stage 1 ends at the validation ``care.stage1_patience``
validations after the best one, or at the latest after ``care.stage1_max_fraction``
of training. Stage 2 then continues from the best stage-1 state (parameters,
BatchNorm statistics and optimizer state) with CE + attention loss for the
remaining steps; the step counter, the learning-rate schedule and the order of
the batches go on. A run without validations (no validation split, or
``train.eval_every_steps = 0``, or too short for one) trains stage 1 for that
fraction and continues from its last state.

The step that ends stage 1 is a function of the best stage-1 step alone
(`TwoStage.switch_step`), so a resumed run knows its stage from the checkpoints
it finds: a checkpoint of that very step holds the state before the switch, and
the switch is made again on resume.

Example (the paper's recipe on the demo data)::

  python -m care_jax.main --config=configs/synthetic_care.py --workdir=runs/care \\
      --config.care.stage1_patience=2
"""

import dataclasses
import math
from typing import Any

import ml_collections

from care_jax import checkpoint as checkpoint_lib

STAGE1_DIR = 'stage1_best'


@dataclasses.dataclass(frozen=True)
class TwoStage:
  """When stage 1 ends, and how its validations are scored.

  Attributes:
    every: steps between validations (``train.eval_every_steps``; 0: none).
    patience: validations without improvement that end stage 1.
    last_stage1_step: the step at which stage 1 ends at the latest,
      ``int(care.stage1_max_fraction * num_steps)``.
    metric: the validation metric (higher is better) of ``care.stage1_metric``.
  """

  every: int
  patience: int
  last_stage1_step: int
  metric: str

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, num_steps: int) -> 'TwoStage | None':
    """The two stages of `config` over `num_steps` steps; None for ``care.protocol='from_step'``."""
    if config.care.protocol != 'two_stage':
      return None
    last = int(config.care.stage1_max_fraction * num_steps)
    return cls(
      config.train.eval_every_steps, config.care.stage1_patience, last, config.care.stage1_metric
    )

  def switch_step(self, best_step: int | None) -> int:
    """The step after which stage 2 starts, given the best stage-1 validation step so far.

    Without a validation yet (or at all: no validation split, or
    ``train.eval_every_steps = 0``), stage 1 lasts until `last_stage1_step`.
    """
    if best_step is None or not self.every:
      return self.last_stage1_step
    return min(best_step + self.patience * self.every, self.last_stage1_step)

  def score(self, validation: dict[str, Any]) -> float:
    """The stage-1 score of a validation result (-inf where the metric is undefined)."""
    value = validation.get(self.metric)
    return -math.inf if value is None else float(value)


class Stage1Best:
  """The best stage-1 state so far, kept in ``WORKDIR/stage1_best`` (a context manager).

  Attributes:
    step: the step of the best state, None before the first validation.
    score: its score; None before the first validation, or where the metric
      was undefined (e.g. no rare-class example), so that ``metrics.json``
      holds JSON ``null``, not ``-Infinity``.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *, meta: dict[str, Any]):
    self._checkpoints = checkpoint_lib.RunCheckpoints(
      workdir, config, meta=meta, name=STAGE1_DIR, keep=1, keep_best=0
    )
    self.step = self._checkpoints.latest_step()
    self.score = None
    if self.step is not None:
      self.score = self._checkpoints.meta(self.step)['stage1_score']

  def __enter__(self) -> 'Stage1Best':
    return self

  def __exit__(self, *exc_info) -> None:
    self._checkpoints.close()

  def offer(self, step: int, score: float, host_state: Any, *, train_seconds: float) -> bool:
    """Saves `host_state` as the best when `score` beats the best so far (the first always)."""
    # An undefined score (-inf from `TwoStage.score`) ranks below every defined one.
    best = -math.inf if self.score is None else self.score
    if self.step is not None and not score > best:
      return False
    score = None if math.isinf(score) else score
    self._checkpoints.save(
      step, host_state, train_seconds=train_seconds, extra_meta={'stage1_score': score}
    )
    self.step, self.score = step, score
    return True

  def restore(self, target: Any) -> Any:
    """The best state, restored onto `target`'s structure and shardings."""
    if self.step is None:
      raise ValueError(f'no stage-1 state in {self._checkpoints.directory}')
    self._checkpoints.wait()
    return self._checkpoints.restore(self.step, target)[0]
