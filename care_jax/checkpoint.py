"""Writing the checkpoints of a training run: save, resume, keep the latest and the best.

Layout (orbax-checkpoint ``CheckpointManager``, v0 API)::

    WORKDIR/checkpoints/<step>/state    the TrainState (params, batch_stats,
                                        opt_state, step, dropout key, counters)
                              /config   the run's config (JSON)
                              /meta     class names, rare classes, image shape,
                                        train seconds so far (JSON)
                              /metrics  the selection score of a validated step
                                        (JSON: ``{"validation_mca": ...}``)

The training loop saves its state as it holds it, replicated device arrays
(orbax copies them to the host before `RunCheckpoints.save` returns, then
writes in the background); runs of 0.1 and 0.2 saved numpy arrays. Either
reads back as numpy on any devices (`abstract_tree` without a sharding) or
onto a mesh (`abstract_tree` with one).

A step directory appears only once complete: orbax writes into
``<step>.orbax-checkpoint-tmp-*`` and renames it at the end, so a run killed
mid-write leaves a tmp directory that is ignored (and cleaned) on restart,
and resuming starts from the last complete step.

Kept: the latest ``checkpoint.keep`` steps and the best ``checkpoint.keep_best``
by validation MCA (mean AUROC for a multi-label task), as
``AnyPreservationPolicy([LatestN, BestN])``: with ``max_to_keep`` + ``best_fn``
orbax would delete the newest checkpoint.

Resume: a run finding checkpoints in its workdir continues from the latest
one, provided its config matches the saved one except for `RESUMABLE_KEYS`.

Reading a finished run (its model, or its weights for stage 2) is
`care_jax.trained_run`'s.
"""

from collections.abc import Mapping
import contextlib
import logging
from typing import Any
import uuid

from absl import logging as absl_logging
from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from care_jax import _deprecated
from care_jax import config as config_lib

CHECKPOINT_DIR = 'checkpoints'
# The score that ranks a run's checkpoints: validation MCA, or the mean AUROC of a multi-label
# run (`care_jax.training.evaluation.selection_metric`). Saved under the key 'validation_mca',
# the name of the runs of 0.1 and 0.2 (their best checkpoint is found by it): the key stays.
SELECTION_SCORE = 'validation_mca'
# Config keys that may differ between a run and the checkpoint it resumes:
# how often to log/evaluate/save, where the data (and the compilation cache)
# live, how the work is split over devices, and the guard's patience.
# Everything else (model, data, loss, care, optimizer, seed, dtype, and keys
# added later) must match.
RESUMABLE_KEYS = (
  'checkpoint',
  'compilation_cache_dir',
  'data.dir',
  'init_from',
  'parallel',
  'train.eval_batch_size',
  'train.eval_every_steps',
  'train.log_every_steps',
  'train.max_consecutive_nonfinite',
  'train.progress',
  'train.test_checkpoint',
)
# The run's length may grow (or shrink) on resume only where the learning
# rate does not depend on it: a constant schedule without warm-up.
LENGTH_KEYS = ('train.num_steps', 'train.num_epochs')


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
  """`{dotted key: (saved value, current value)}` for keys that forbid resuming.

  Both configs are JSON dicts (`care_jax.config.to_json`). A key missing on
  one side counts as different (value `'<missing>'`).
  """
  resumable = RESUMABLE_KEYS
  # Keys added to the schema after the checkpoint was written take their
  # defaults: a run of an older version resumes unless they were changed. Both
  # sides compare as training resolves them (e.g. data.augment.on_device = 'auto'
  # is the bool of this machine), so a default of 'auto' resumes the run it names.
  saved, current = (
    config_lib.to_json(config_lib.resolve_recipe(config_lib.from_json(c))) for c in (saved, current)
  )
  flat_current = config_lib.flatten(current)
  if flat_current.get('train.schedule') == 'constant' and not flat_current.get(
    'train.warmup_steps'
  ):
    resumable += LENGTH_KEYS
  return config_lib.differences(saved, current, ignore=resumable)


def shape_differences(expected: Any, found: Any) -> list[str]:
  """Paths whose shape differs between two trees, or that only one tree has.

  `expected` and `found` are trees of arrays or array metadata (anything with
  a ``shape``); returns lines like ``params/head/fc/kernel: (8, 5) vs (8, 3)``.
  """

  def flat(tree):
    return {
      '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): tuple(leaf.shape)
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }

  a, b = flat(expected), flat(found)
  lines = [
    f'{p}: {a[p]} here vs {b[p]} in the checkpoint' for p in sorted(set(a) & set(b)) if a[p] != b[p]
  ]
  lines += [f'{p}: missing in the checkpoint' for p in sorted(set(a) - set(b))]
  lines += [f'{p}: only in the checkpoint' for p in sorted(set(b) - set(a))]
  return lines


def checkpoint_dir(workdir: epath.PathLike, name: str = CHECKPOINT_DIR) -> epath.Path:
  """``workdir/name`` as orbax takes it: absolute for a local path, a URL (``gs://``) as given."""
  path = epath.Path(workdir) / name
  # resolve() would make 'gs://b/run' a local '<cwd>/gs:/b/run'.
  return path if '://' in str(workdir) else path.resolve()


def check_writable(workdir: epath.PathLike) -> None:
  """Creates `workdir` and writes a probe file, so a bad path fails before training.

  `workdir` may be any path `etils.epath` opens (local, ``gs://``, ...).
  """
  path = epath.Path(workdir)
  probe = path / f'.write_probe_{uuid.uuid4().hex}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  # Remote file systems raise their own errors (tf.errors.OpError, google.api_core's), not OSError.
  except Exception as e:  # pylint: disable=broad-except
    raise OSError(
      getattr(e, 'errno', None),
      f'workdir {str(workdir)!r} is not writable ({getattr(e, "strerror", None) or e}); '
      'choose a writable --workdir',
    ) from e


def abstract_tree(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
  """The restore target of `tree`: `jax.ShapeDtypeStruct`s on `sharding`, or numpy.

  With `sharding` None the leaves are unfilled numpy arrays (`np.empty` touches
  no memory), so that orbax restores numpy on any devices: a
  `jax.ShapeDtypeStruct` without a sharding would take the one the checkpoint
  was saved with, which fails on another device count. `tree`'s leaves may be
  arrays, scalars or orbax's array metadata (anything with a shape and dtype).
  """

  def abstract(x):
    shape = tuple(x.shape) if hasattr(x, 'shape') else np.shape(x)
    dtype = x.dtype if hasattr(x, 'dtype') else np.asarray(x).dtype
    # A Python int step is int64 on the host but int32 on devices (x64 off).
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    if sharding is None:
      return np.empty(shape, dtype)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

  return jax.tree.map(abstract, tree)


def open_manager(
  path: epath.Path,
  *,
  keep: int = 1,
  keep_best: int = 0,
  async_save: bool = False,
  read_only: bool = False,
) -> ocp.CheckpointManager:
  """The orbax manager of the checkpoints in `path`: keeps the latest `keep` and best `keep_best`.

  ``read_only`` opens a finished run's checkpoints for reading (`care_jax.trained_run`).
  """
  best_fn = lambda metrics: metrics[SELECTION_SCORE]
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_best:
    # Checkpoints saved without a validation score are kept by LatestN only.
    policies.append(
      ocp.checkpoint_managers.BestN(
        get_metric_fn=best_fn, n=keep_best, keep_checkpoints_without_metrics=False
      )
    )
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
    best_fn=best_fn,
    best_mode='max',
    enable_async_checkpointing=async_save,
    cleanup_tmp_directories=not read_only,
    read_only=read_only,
    # orbax warns when a read-only manager keeps its default save interval.
    save_interval_steps=0 if read_only else 1,
    create=not read_only,
  )
  # Named handlers, so that item metadata can be read before any restore.
  registry = ocp.handlers.create_default_handler_registry(
    state=ocp.StandardCheckpointHandler(),
    config=ocp.JsonCheckpointHandler(),
    meta=ocp.JsonCheckpointHandler(),
  )
  if not read_only:
    return ocp.CheckpointManager(path, options=options, handler_registry=registry)
  with _without_read_only_notice():
    return ocp.CheckpointManager(path, options=options, handler_registry=registry)


class _ReadOnlyNotice(logging.Filter):
  """orbax's "Given directory is read only=<path>", which it logs for every read-only manager."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Given directory is read only')


@contextlib.contextmanager
def _without_read_only_notice():
  """Drops orbax's read-only notice: a run opened for reading is read-only by our choice.

  orbax (0.12.8) logs it as a warning whenever ``CheckpointManagerOptions.read_only`` is set,
  and users read it as a problem with their (writable) workdir.
  """
  logger = absl_logging.get_absl_logger()
  notice = _ReadOnlyNotice()
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


def step_of(manager: ocp.CheckpointManager, which: str | int) -> int:
  """The step of 'best', 'latest' or a given step (an int or its digits)."""
  if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
    step, steps = int(which), sorted(manager.all_steps())
    if step not in steps:
      raise ValueError(f'no checkpoint of step {step} in {manager.directory}; its steps: {steps}')
    return step
  if which not in ('best', 'latest'):
    raise ValueError(f"which must be 'best', 'latest' or a step, got {which!r}")
  step = manager.best_step() if which == 'best' else None
  if step is None:  # 'latest', or no checkpoint carries a validation score.
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'no complete checkpoint in {manager.directory}')
  return step


def read_config_and_meta(manager: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
  """The config and the meta saved with `step` (JSON dicts)."""
  items = manager.restore(
    step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
  )
  return items['config'], items['meta']


class RunCheckpoints:
  """The checkpoints of one run in `workdir/checkpoints` (a context manager).

  Closing waits for asynchronous saves. Example::

    with RunCheckpoints(workdir, config, meta=meta) as checkpoints:
      step = checkpoints.latest_step() or 0
      if step:
        state, meta = checkpoints.restore(step, abstract_tree(state, sharding))
      ...
      checkpoints.save(step, state, selection_score=0.8)
  """

  def __init__(
    self,
    workdir: str,
    config: ml_collections.ConfigDict,
    *,
    meta: Mapping[str, Any],
    name: str = CHECKPOINT_DIR,
    keep: int | None = None,
    keep_best: int | None = None,
  ):
    """The run's checkpoints in ``workdir/<name>``.

    ``keep`` and ``keep_best`` default to ``config.checkpoint``'s; another
    `name` holds other states of the run (the best stage-1 state of the two
    stages: `care_jax.training.stages`), which `care_jax.trained_run.load_model` never reads.
    """
    check_writable(workdir)
    self.directory = checkpoint_dir(workdir, name)
    settings = config.checkpoint
    self._every_steps = settings.every_steps
    self._keep_best = settings.keep_best if keep_best is None else keep_best
    self._config = config_lib.to_json(config)
    self._meta = dict(meta)
    self._manager = open_manager(
      self.directory,
      keep=settings.keep if keep is None else keep,
      keep_best=self._keep_best,
      async_save=settings.async_save,
    )
    self._pending = None  # Step of an asynchronous save not yet awaited.

  def __enter__(self) -> 'RunCheckpoints':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step of the highest validation MCA (after pending saves), None if none was scored."""
    self.wait()
    return self._manager.best_step()

  def reached_preemption_sync_point(self, step: int) -> bool:
    """Whether all processes agreed to checkpoint at `step` after a preemption notice."""
    return self._manager.reached_preemption(step)

  def is_due(self, step: int, *, validated: bool) -> bool:
    """Save at multiples of `checkpoint.every_steps`, and after each validation
    when the best ones are kept."""
    return bool(
      (self._every_steps and step % self._every_steps == 0) or (validated and self._keep_best)
    )

  def meta(self, step: int) -> dict[str, Any]:
    """The meta saved with `step` (after pending saves)."""
    self.wait()
    return read_config_and_meta(self._manager, step)[1]

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """The state of `step` restored onto `target`'s shardings, and the step's meta.

    Args:
      step: a saved step.
      target: the abstract state (`abstract_tree` of a fresh state): its
        structure, shapes, dtypes and shardings are those of the result.

    Raises:
      ValueError: the checkpoint's config differs in keys outside
        `RESUMABLE_KEYS` (all named, with both values), or its parameter
        shapes differ from `target`'s.
    """
    saved_config, meta = read_config_and_meta(self._manager, step)
    diffs = config_differences(saved_config, self._config)
    if diffs:
      listing = '\n  '.join(
        f'{k}: {old!r} in the checkpoint, {new!r} now' for k, (old, new) in diffs.items()
      )
      raise ValueError(
        f'cannot resume from {self.directory} (step {step}): the config differs in '
        f"{', '.join(diffs)}:\n  {listing}\nRun with the checkpoint's values, or use a new "
        f'--workdir (config.init_from=OLD_WORKDIR starts from its weights). Keys that may '
        f'change on resume: {", ".join(RESUMABLE_KEYS)} (and train.num_steps/num_epochs '
        'with a constant learning rate).'
      )
    metadata = self._manager.item_metadata(step)['state'].tree
    diffs = shape_differences(
      {'params': target.params, 'batch_stats': target.batch_stats},
      {'params': metadata['params'], 'batch_stats': metadata['batch_stats']},
    )
    if diffs:
      raise ValueError(
        f'cannot resume from {self.directory} (step {step}): it holds another '
        'model; differing parameters:\n  ' + '\n  '.join(diffs[:20])
      )
    state = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )['state']
    return state, meta

  def save(
    self,
    step: int,
    state: Any,
    *,
    selection_score: float | None = None,
    train_seconds: float = 0.0,
    extra_meta: Mapping[str, Any] | None = None,
  ) -> None:
    """Saves `state` (asynchronously when `checkpoint.async_save`).

    ``selection_score`` (None: not validated) ranks the step among the best
    (`SELECTION_SCORE`). ``extra_meta`` (JSON values) is saved in the step's meta besides the
    run's (`meta` reads it back).

    Raises:
      OSError: this or the previous pending write failed (e.g. a full disk);
        the message names the step and the last complete checkpoint.
    """
    metrics = None if selection_score is None else {SELECTION_SCORE: float(selection_score)}
    meta = dict(self._meta, **(extra_meta or {}), train_seconds=round(train_seconds, 3), step=step)
    # An asynchronous failure of the previous save surfaces here: name it.
    self.wait()
    self._pending = step
    with self._write_errors():
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          config=ocp.args.JsonSave(self._config),
          meta=ocp.args.JsonSave(meta),
        ),
        metrics=metrics,
        force=True,
      )

  def wait(self) -> None:
    """Blocks until a pending asynchronous save is complete on disk."""
    with self._write_errors():
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    self._pending = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()

  @contextlib.contextmanager
  def _write_errors(self):
    try:
      yield
    except OSError as e:
      step, self._pending = self._pending, None
      self._manager.reload()
      raise OSError(
        e.errno,
        f'could not write the checkpoint of step {step} to {self.directory} '
        f'({e.strerror or e}). The last complete checkpoint (step '
        f'{self._manager.latest_step()}) is intact: fix the cause (free disk space) and '
        'run the same command to resume from it.',
      ) from e


__getattr__ = _deprecated.getattr_of(__name__)
