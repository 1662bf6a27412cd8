"""The training loop: `train_and_evaluate(config, workdir)`, and the parts it is made of.

`create_experiment` builds what a run trains from its config and dataset
(model, loss, steps, data-parallel back-end, fresh state); `run` trains and
evaluates it on any `care_jax.training.inputs.Inputs`, resuming from the
workdir's checkpoints; `train_and_evaluate` does both on the input pipeline
of ``config.data``. Every function takes the state it works on and returns
the new one: nothing is kept behind the caller's back.

Example (a notebook)::

  from care_jax import config as config_lib, training
  config = config_lib.apply_overrides(config_lib.default_config(), ['train.num_steps=200'])
  metrics = training.train_and_evaluate(config, 'runs/care')
"""

from collections.abc import Callable
import contextlib
import dataclasses
import itertools
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

from care_jax import checkpoint as checkpoint_lib
from care_jax import classification_loss as classification_loss_lib
from care_jax import config as config_lib
from care_jax import models
from care_jax import trained_run
from care_jax.training import evaluation
from care_jax.training import guard
from care_jax.training import outputs as outputs_lib
from care_jax.training import parallel as parallel_lib
from care_jax.training import preemption as preemption_lib
from care_jax.training import stages as stages_lib
from care_jax.training import state as state_lib
from care_jax.training import step as step_lib


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What one run trains, built from its config and dataset: no data, no files.

  Attributes:
    config: the run's (validated) config.
    info: the dataset's `care_jax.data.pipeline.DatasetInfo`.
    num_steps: the optimisation steps of the run.
    model: the classifier.
    parallel: the data-parallel back-end holding the jitted steps.
    state: the freshly initialised train state, on the host.
    two_stage: when stage 1 ends (`care.protocol='two_stage'`), else None.
    stage1_step: the jitted CE-only step of stage 1 (None without two stages).
  """

  config: ml_collections.ConfigDict
  info: Any
  num_steps: int
  model: models.Classifier
  parallel: Any
  state: state_lib.TrainState
  two_stage: stages_lib.TwoStage | None = None
  stage1_step: Callable[..., Any] | None = None


def create_experiment(
  config: ml_collections.ConfigDict,
  info,
  *,
  first_batch: Callable[[], dict[str, Any]] | None = None,
) -> Experiment:
  """The model, loss, steps, back-end and fresh state of `config` on a dataset `info`.

  The fields `config` leaves to the recipe are filled in first
  (`care_jax.config.resolve_recipe`): ``experiment.config`` is what the run saves.
  ``first_batch`` gives the run's first training batch (this process's share), on which
  ``guidance.weight='auto'`` is measured at the fresh state (`step.calibrate_weight`).
  """
  config = config_lib.resolve_recipe(config)
  if config.task != info.task:
    raise ValueError(
      f'config.task = {config.task!r}, but data.name = {config.data.name!r} is a'
      f' {info.task} dataset: set config.task = {info.task!r}'
      + (" (and care.stage1_metric = 'mean_auroc')" if info.task == 'multilabel' else '')
      + '.'
    )
  num_classes = len(info.class_names)
  num_steps = state_lib.num_train_steps(config, info.split_sizes['train'])
  two_stage = stages_lib.TwoStage.from_config(config, num_steps)
  classification_loss = classification_loss_lib.make_classification_loss(
    **config.loss.to_dict(),
    class_counts=info.train_class_counts,
    num_steps=num_steps,
    task=config.task,
    num_examples=info.num_train_examples,
  )
  model = state_lib.create_model(config, num_classes)
  axis_name = parallel_lib.PMAP_AXIS if config.parallel == 'pmap' else None
  image_shape = (info.image_size, info.image_size, info.num_channels)
  state = state_lib.create_train_state(
    config, model, image_shape, num_steps, jax.random.key(config.seed)
  )
  step_config = _calibrated(
    step_lib.StepConfig.from_config(config), model, state, classification_loss, first_batch
  )
  make_step = lambda step_config: step_lib.make_train_step(
    model, step_config, classification_loss=classification_loss, axis_name=axis_name
  )
  parallel = parallel_lib.make_parallel(
    config,
    make_step(step_config),
    step_lib.make_eval_step(
      model,
      num_classes=num_classes,
      attention=config.care.attention,
      predict_logits=classification_loss.predict_logits,
      axis_name=axis_name,
      task=config.task,
    ),
  )
  parallel_lib.check_divisible(config.train.batch_size, parallel, 'train.batch_size')
  # Checked here too, not only when the first evaluation starts (after training).
  parallel_lib.check_divisible(config.train.eval_batch_size, parallel, 'train.eval_batch_size')
  stage1_step = None
  if two_stage:
    # Stage 1 compiles without the attention term: it costs nothing there.
    stage1_step = parallel.compile_train_step(
      make_step(dataclasses.replace(step_config, alpha=0.0))
    )
  return Experiment(config, info, num_steps, model, parallel, state, two_stage, stage1_step)


def _calibrated(step_config, model, state, classification_loss, first_batch):
  """``step_config`` with ``guidance.weight='auto'`` measured on the first batch at ``state``.

  The fresh state and the first batch are the same on every start, so a resumed run measures
  the same weight; with several processes, process 0's weight is every process's (the compiled
  steps must agree).
  """
  if not step_config.auto_weight:
    return step_config
  if first_batch is None:
    raise ValueError(
      "config.guidance.weight = 'auto': measured on the first training batch, which"
      ' create_experiment was not given (pass first_batch=).'
    )
  step_config = step_lib.calibrate_weight(
    model, step_config, state, first_batch(), classification_loss=classification_loss
  )
  weight = step_config.weight
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    weight = float(multihost_utils.broadcast_one_to_all(np.float32(weight)))
    step_config = dataclasses.replace(step_config, weight=weight)
  logging.info("guidance.weight = 'auto': %.6g (the term starts equal to the loss)", weight)
  return step_config


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, boxes_fn: Callable[..., Any] | None = None
) -> dict[str, Any]:
  """Trains `config` on its dataset, evaluates on validation and test, writes metrics.json.

  Resumes from the latest checkpoint in `workdir/checkpoints` when there is
  one (same batches, same result as an uninterrupted run); otherwise starts
  from `config.init_from`'s weights or from scratch. A SIGTERM saves a
  checkpoint at the next step boundary and raises `care_jax.training.preemption.Preempted`.
  The workdir's files are listed in `care_jax.training.outputs`.

  Args:
    config: the run's config (`care_jax.config.default_config` and overrides).
    workdir: the run's directory.
    boxes_fn: replaces the manual training boxes when ``data.box_source`` is
      a generator: `care_jax.boxes.replace_boxes` (the ``care-jax``
      commands pass it).

  Returns:
    The dict written to metrics.json.
  """
  config_lib.validate(config)
  parallel_lib.enable_compilation_cache(config.compilation_cache_dir)  # Before any compilation.
  checkpoint_lib.check_writable(workdir)
  # The input pipeline loads TensorFlow: only here, so that the rest of the
  # package (steps, state, checkpoints) imports where it is not installed.
  from care_jax.training import inputs as inputs_lib  # pylint: disable=g-import-not-at-top

  # Resolved: the pipeline reads the 'auto' keys as the train step does.
  inputs = inputs_lib.PipelineInputs(config_lib.resolve_recipe(config), boxes_fn=boxes_fn)
  resolved = config_lib.resolve_recipe(config)
  first_batch = lambda: next(
    iter(
      inputs.train_batches(
        batch_size=resolved.train.batch_size // jax.process_count(), start_step=0
      )
    )
  )
  return run(create_experiment(config, inputs.info, first_batch=first_batch), inputs, workdir)


def run(experiment: Experiment, inputs, workdir: str) -> dict[str, Any]:
  """Trains and evaluates `experiment` on `inputs`, resuming from `workdir`'s checkpoints.

  Returns the dict written to ``workdir/metrics.json``.
  """
  config, info = experiment.config, experiment.info
  is_chief = jax.process_index() == 0
  meta = {
    'class_names': list(info.class_names),
    # The class priors of post-hoc logit adjustment, for predictions.
    'train_class_counts': [int(c) for c in info.train_class_counts],
    'rare_classes': list(info.rare_classes),
    'image_shape': [info.image_size, info.image_size, info.num_channels],
  }
  with (
    checkpoint_lib.RunCheckpoints(workdir, config, meta=meta) as checkpoints,
    preemption_lib.PreemptionWatch(checkpoints) as preemption,
    (
      stages_lib.Stage1Best(workdir, config, meta=meta)
      if experiment.two_stage
      else contextlib.nullcontext()
    ) as stage1_best,
  ):
    state, start_step, clock = initial_state(experiment, checkpoints)
    # TensorBoard's attention overlays draw one map per image: multiclass only.
    draw = is_chief and info.task == 'multiclass'
    summaries = _attention_summaries(experiment, inputs) if draw else None
    with outputs_lib.RunOutputs(
      workdir, is_chief=is_chief, start_step=start_step, attention_summaries=summaries
    ) as outputs:
      outputs.write_config(config)
      context = _RunContext(experiment, inputs, checkpoints, outputs, clock, stage1_best)
      state, memory = train(context, state, start_step=start_step, preemption=preemption)
      result = final_evaluation(context, state)
  result['train_seconds'] = round(clock(), 3)
  result['train_step_memory'] = memory
  outputs.write_metrics(result)
  return result


class Clock:
  """Training seconds so far, across resumes."""

  def __init__(self, elapsed: float = 0.0):
    self._start = time.time() - elapsed

  def __call__(self) -> float:
    return time.time() - self._start


def initial_state(
  experiment: Experiment, checkpoints: checkpoint_lib.RunCheckpoints
) -> tuple[state_lib.TrainState, int, Clock]:
  """The state to start from, on the devices: the latest checkpoint's, `init_from`'s or fresh.

  Returns ``(state, start step, clock)``; the clock counts on from the
  checkpoint's training time.
  """
  config, parallel = experiment.config, experiment.parallel
  start_step, elapsed = checkpoints.latest_step() or 0, 0.0
  if start_step > experiment.num_steps:
    raise ValueError(
      f'config.train.num_steps = {experiment.num_steps} is below the step of '
      f'the latest checkpoint in {checkpoints.directory} ({start_step})'
    )
  state = experiment.state
  if start_step:
    state, saved_meta = checkpoints.restore(start_step, parallel.abstract_state(state))
    elapsed = saved_meta['train_seconds']
    logging.info('resuming from step %d of %s', start_step, checkpoints.directory)
  elif config.init_from:
    state = trained_run.init_from(config.init_from, state)
  return parallel.put_state(state), start_step, Clock(elapsed)


def _attention_summaries(experiment: Experiment, inputs) -> outputs_lib.AttentionSummaries:
  config = experiment.config
  split = 'validation' if 'validation' in experiment.info.split_sizes else 'test'
  return outputs_lib.AttentionSummaries(
    experiment.model,
    inputs.examples(split, num_images=8),
    mean=config.data.mean,
    std=config.data.std,
    method=config.care.attention,
  )


@dataclasses.dataclass(frozen=True)
class _RunContext:
  """What the phases of `run` share (none of it changes during the run)."""

  experiment: Experiment
  inputs: Any
  checkpoints: checkpoint_lib.RunCheckpoints
  outputs: outputs_lib.RunOutputs
  clock: Clock
  # The best stage-1 state of the two stages; None for care.protocol='from_step'.
  stage1_best: stages_lib.Stage1Best | None = None

  def in_stage1(self, step: int) -> bool:
    """Whether step `step` trains with the CE-only step of stage 1."""
    two_stage = self.experiment.two_stage
    return bool(two_stage) and step <= two_stage.switch_step(self.stage1_best.step)


def evaluate_and_log(
  context: _RunContext, state, split: str, step: int, *, with_rows: bool = False
) -> dict[str, Any]:
  """The metrics of `state` on `split`, also written to TensorBoard.

  With `with_rows`, the examples' predictions go to ``predictions_<split>.csv``.
  """
  experiment = context.experiment
  result = evaluation.evaluate_split(
    experiment.parallel,
    state,
    experiment.config,
    experiment.info,
    split,
    context.inputs.eval_batches,
    with_rows=with_rows,
  )
  if with_rows:
    result, rows = result
  if context.outputs.is_chief:
    context.outputs.log_eval(split, result, experiment.parallel.get_state(state), step)
    if with_rows:
      context.outputs.write_predictions(
        split,
        context.inputs.example_ids(split),
        rows,
        experiment.info.class_names,
        multilabel=experiment.info.task == 'multilabel',
      )
  return result


def train(
  context: _RunContext, state, *, start_step: int, preemption: preemption_lib.PreemptionWatch
):
  """Runs the steps ``start_step + 1 ... num_steps``.

  Logs, validates and checkpoints on their schedules; raises
  FloatingPointError when the non-finite guard stopped training, and
  `care_jax.training.preemption.Preempted` after the checkpoint a SIGTERM asked for.

  Returns:
    ``(final state, memory)``: memory is `step_memory` of the train step on the first batch
    (None when no step is left to run).
  """
  experiment = context.experiment
  config, parallel, num_steps = experiment.config, experiment.parallel, experiment.num_steps
  # On the devices two batches ahead: the copy of the next batch overlaps this step.
  batches = parallel_lib.device_prefetch(
    context.inputs.train_batches(
      batch_size=config.train.batch_size // jax.process_count(), start_step=start_step
    ),
    parallel.put_batch,
  )
  recent = []  # (step, metrics on device) since the last non-finite check.
  # Resumed from the checkpoint of the step that ends stage 1: switch again.
  state = _maybe_start_stage2(context, state, start_step)
  memory = None
  if start_step < num_steps:
    # Before the first step donates the state; the train step's calls reuse this compilation.
    batch = next(batches)
    batches = itertools.chain([batch], batches)
    with parallel.scope():
      memory = step_memory(parallel.train_step, state, batch)
  with tqdm.tqdm(
    total=num_steps,
    initial=start_step,
    # <config>/seed_<s> for the runs of care-jax compare.
    desc=f'train {context.outputs.workdir.parent.name}/{context.outputs.workdir.name}',
    dynamic_ncols=True,
    disable=not (context.outputs.is_chief and config.train.progress),
  ) as progress:
    for step in range(start_step + 1, num_steps + 1):
      batch = next(batches)
      train_step = experiment.stage1_step if context.in_stage1(step) else parallel.train_step
      with parallel.scope():
        state, step_metrics = train_step(state, batch)
      recent.append((step, step_metrics))
      progress.update(1)
      state = _after_step(context, state, step, step_metrics, recent, preemption, progress)
  return state, memory


def step_memory(train_step, state, batch) -> dict[str, int] | None:
  """XLA's memory estimate of the jitted ``train_step`` on ``(state, batch)``: bytes per device.

  ``temp_bytes``: the step's temporaries (the activations kept for the backward pass, the
  gradients, a second forward's buffers: what a guidance method adds to CE's step);
  ``argument_bytes`` / ``output_bytes``: the state and batch in, the state and metrics out,
  ``alias_bytes`` of them shared (the donated state). The compilation is the one the step's
  calls use (jax caches it): nothing runs, nothing is donated.

  Returns:
    The dict, or None where the back-end gives no memory analysis.
  """
  stats = train_step.lower(state, batch).compile().memory_analysis()
  if stats is None:
    return None
  return {
    f'{name}_bytes': int(getattr(stats, f'{name}_size_in_bytes'))
    for name in ('temp', 'argument', 'output', 'alias')
  }


def _maybe_start_stage2(context: _RunContext, state, step: int):
  """The best stage-1 state (on the devices, at `step`) if `step` ends stage 1, else `state`."""
  two_stage = context.experiment.two_stage
  if not two_stage or not step or step != two_stage.switch_step(context.stage1_best.step):
    return state
  if context.stage1_best.step is None:
    logging.info('stage 2 (attention loss on) from step %d: no validation to go back to', step)
    return state
  parallel = context.experiment.parallel
  best = context.stage1_best.restore(parallel.abstract_state(context.experiment.state))
  logging.info(
    'stage 2 (attention loss on) from step %d, with the best stage-1 state (step %d, '
    'validation %s %s)',
    step,
    context.stage1_best.step,
    two_stage.metric,
    'n/a' if context.stage1_best.score is None else f'{context.stage1_best.score:.4f}',
  )
  # The step counter goes on: the schedule and the batches continue as planned.
  return parallel.put_state(best.replace(step=np.asarray(step, best.step.dtype)))


def _after_step(context: _RunContext, state, step: int, step_metrics, recent, preemption, progress):
  """Logs, validates, saves and stops (preemption, non-finite run) as step `step` asks.

  Returns the state the next step starts from: the best stage-1 state when
  `step` ends stage 1, else `state`.
  """
  experiment = context.experiment
  config, parallel, num_steps = experiment.config, experiment.parallel, experiment.num_steps
  log_now = step % config.train.log_every_steps == 0 or step == num_steps
  validate_now = bool(
    config.train.eval_every_steps
    and step < num_steps
    and step % config.train.eval_every_steps == 0
    and 'validation' in experiment.info.split_sizes
  )
  preempted = step < num_steps and preemption.requested(step)
  save_now = step < num_steps and (
    preempted or context.checkpoints.is_due(step, validated=validate_now)
  )
  if log_now or validate_now or save_now:
    # Fetching syncs the device: only at these steps.
    guard.check_nonfinite(recent, parallel, limit=config.train.max_consecutive_nonfinite)
  if log_now:
    record = _log_record(step_metrics, parallel, step, context.clock())
    progress.set_postfix(outputs_lib.progress_postfix(record, config.guidance.method))
    if progress.disable and context.outputs.is_chief:
      # No bar (train.progress=False): a nohup or SLURM log still shows the run's progress.
      logging.info('step %d %s', step, outputs_lib.format_record(record))
    context.outputs.log_train(record)
  selection_score = _validate(context, state, step) if validate_now else None
  if save_now:
    # The device arrays: orbax copies them to the host before it returns (so the
    # next step may donate them) and writes them in the background.
    context.checkpoints.save(
      step, state, selection_score=selection_score, train_seconds=context.clock()
    )
  if preempted:
    context.checkpoints.wait()
    message = (
      f'SIGTERM: saved the checkpoint of step {step} in '
      f'{context.checkpoints.directory}; run the same command to resume.'
    )
    logging.warning(message)
    raise preemption_lib.Preempted(message)
  return _maybe_start_stage2(context, state, step)


def _validate(context: _RunContext, state, step: int) -> float | None:
  """Validates `state`, offers it as the best stage-1 state in stage 1.

  Returns the score that ranks checkpoints (`evaluation.selection_metric`).
  """
  val = evaluate_and_log(context, state, 'validation', step)
  metric = evaluation.selection_metric(context.experiment.info.task)
  rare = val['rare_recall']  # None without rare classes.
  rare = 'n/a' if rare is None else f'{rare:.4f}'
  score = val[metric]  # None: a multi-label validation without any defined AUROC.
  logging.info(
    'step %d validation %s %s rare recall %s',
    step,
    metric,
    'n/a' if score is None else f'{score:.4f}',
    rare,
  )
  if context.in_stage1(step):
    # Before the checkpoint of this step: a run resumed from it knows its best.
    context.stage1_best.offer(
      step, context.experiment.two_stage.score(val), state, train_seconds=context.clock()
    )
  return score


def _log_record(step_metrics: dict[str, Any], parallel, step: int, seconds: float) -> dict:
  metrics = parallel.fetch(step_metrics)
  record = {k: float(v) for k, v in metrics.items() if k != 'guard'}
  record.update(
    skipped_steps=int(metrics['guard']['skipped_steps']), step=step, seconds=round(seconds, 3)
  )
  return record


def final_evaluation(context: _RunContext, state) -> dict[str, Any]:
  """Validation, the final checkpoint, then test: the blocks of metrics.json."""
  experiment = context.experiment
  info, num_steps = experiment.info, experiment.num_steps
  result = {
    'step': num_steps,
    'classes': list(info.class_names),
    'rare_classes': [info.class_names[k] for k in info.rare_classes],
  }
  if experiment.two_stage:
    best_step = context.stage1_best.step
    result['stages'] = {
      'protocol': 'two_stage',
      'metric': experiment.two_stage.metric,
      'stage1_best_step': best_step,
      'stage1_best_score': context.stage1_best.score,
      'stage2_start_step': experiment.two_stage.switch_step(best_step),
    }
  if 'validation' in info.split_sizes:
    result['validation'] = evaluate_and_log(context, state, 'validation', num_steps)
  if context.checkpoints.latest_step() != num_steps:
    context.checkpoints.save(
      num_steps,
      state,
      selection_score=result.get('validation', {}).get(evaluation.selection_metric(info.task)),
      train_seconds=context.clock(),
    )
  if 'test' in info.split_sizes:
    state, step = _test_state(context, state)
    result['test_checkpoint'] = {'which': experiment.config.train.test_checkpoint, 'step': step}
    result['test'] = evaluate_and_log(context, state, 'test', step, with_rows=True)
  return result


def _test_state(context: _RunContext, state):
  """``(state, step)`` that the test block scores: the last one, or the best saved one."""
  experiment = context.experiment
  best = None
  if experiment.config.train.test_checkpoint == 'best':
    best = context.checkpoints.best_step()
  if best is None or best == experiment.num_steps:
    return state, experiment.num_steps
  parallel = experiment.parallel
  best_state, _ = context.checkpoints.restore(best, parallel.abstract_state(experiment.state))
  logging.info(
    'test: scoring the best checkpoint by validation %s, step %d',
    evaluation.selection_metric(experiment.info.task),
    best,
  )
  return parallel.put_state(best_state), best
