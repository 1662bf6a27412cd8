"""The non-finite guard: a step whose loss or update is NaN/Inf is skipped.

On the device (inside the step), `skip_nonfinite` keeps the old parameters,
optimizer state and BatchNorm statistics when the update is not finite, and
counts the skipped steps. On the host, `check_nonfinite` reads the counter at
log, evaluation and save steps only (a fetch syncs the device) and stops the
run with a diagnostic once ``train.max_consecutive_nonfinite`` steps in a row
were skipped.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def all_finite(tree) -> jax.Array:
  """Whether every leaf of `tree` is finite everywhere (True for an empty tree)."""
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [True]))


def skip_nonfinite(old, new, finite: jax.Array, *, limit: int):
  """`new`, or `old`'s params/opt_state/batch_stats when the update is not finite.

  The step counter advances either way, so the data position (and the
  dropout key) move past a bad batch instead of retrying it. The optimizer
  state is kept too, so its own count (and a schedule driven by it) lags the
  step by the number of skipped steps. Once `limit` steps in a row were
  skipped the state is frozen (sticky), so the host, which reads the counter
  only at log/eval/save steps, sees the run of bad steps and stops.
  """
  halted = old.consecutive_nonfinite >= limit
  apply = finite & ~halted
  keep = functools.partial(jax.tree.map, lambda n, o: jnp.where(apply, n, o))
  consecutive = jnp.where(
    halted, old.consecutive_nonfinite, jnp.where(finite, 0, old.consecutive_nonfinite + 1)
  )
  return new.replace(
    params=keep(new.params, old.params),
    opt_state=keep(new.opt_state, old.opt_state),
    batch_stats=keep(new.batch_stats, old.batch_stats),
    skipped_steps=old.skipped_steps + (~apply).astype(jnp.int32),
    consecutive_nonfinite=consecutive.astype(jnp.int32),
  )


def keep_finite(
  old, new, loss: jax.Array, batch: dict[str, jax.Array], *, limit: int, axis_name: str | None
):
  """`skip_nonfinite` of a step's update, and the guard's metrics of the step.

  A NaN/Inf gradient makes the updated params non-finite (SGD and Adam
  alike). Testing the params rather than the gradients keeps the sharded
  program, and so its rounding, exactly that of the unguarded step.
  """
  finite_update = all_finite(new.params)
  finite = jnp.isfinite(loss) & finite_update & all_finite(new.batch_stats)
  new = skip_nonfinite(old, new, finite, limit=limit)
  metrics = {
    'finite_update': finite_update,
    'skipped_steps': new.skipped_steps,
    'consecutive_nonfinite': new.consecutive_nonfinite,
    **batch_statistics(batch, axis_name),
  }
  return new, metrics


def batch_statistics(batch: dict[str, jax.Array], axis_name: str | None) -> dict[str, jax.Array]:
  """Global image range (finite pixels), non-finite pixel count and label range."""
  image = batch['image'].astype(jnp.float32)
  finite = jnp.isfinite(image)
  stats = {
    'image_min': jnp.min(jnp.where(finite, image, jnp.inf)),
    'image_max': jnp.max(jnp.where(finite, image, -jnp.inf)),
    'image_nonfinite': jnp.sum(~finite),
    'label_min': jnp.min(batch['label']),
    'label_max': jnp.max(batch['label']),
  }
  if axis_name:
    reduce = {
      'image_min': jax.lax.pmin,
      'label_min': jax.lax.pmin,
      'image_max': jax.lax.pmax,
      'label_max': jax.lax.pmax,
      'image_nonfinite': jax.lax.psum,
    }
    stats = {k: reduce[k](v, axis_name) for k, v in stats.items()}
  return stats


def check_nonfinite(recent: list[tuple[int, dict]], parallel, *, limit: int) -> None:
  """Raises FloatingPointError if the guard stopped the steps of `recent`.

  `recent` holds `(step, metrics)` of the steps since the last check, still
  on the devices: only the last step's counter is fetched, the others only
  to write the diagnostic. Clears `recent`.
  """
  if not recent:
    return
  last = int(parallel.fetch(recent[-1][1]['guard']['consecutive_nonfinite']))
  if last < limit:
    recent.clear()
    return
  for step, metrics in recent:
    metrics = parallel.fetch(metrics)
    if int(metrics['guard']['consecutive_nonfinite']) >= limit:
      break
  raise FloatingPointError(nonfinite_message(step, metrics, limit))


def nonfinite_message(step: int, metrics: dict[str, Any], limit: int) -> str:
  """The diagnostic of a run stopped at `step` by `limit` non-finite steps in a row."""
  guard = metrics['guard']
  terms = [k for k in ('ce', 'care', 'loss') if k in metrics and not np.isfinite(metrics[k])]
  if not bool(guard['finite_update']):
    terms.append('gradients')
  return (
    f'{limit} consecutive training steps had a non-finite loss or gradient '
    f'(train.max_consecutive_nonfinite = {limit}); the last at step {step}: non-finite '
    f'{", ".join(terms) or "BatchNorm statistics"} (ce = {float(metrics["ce"])}, care = '
    f'{float(metrics.get("care", 0.0))}). Batch: images in [{float(guard["image_min"]):.4g}, '
    f'{float(guard["image_max"]):.4g}] with {int(guard["image_nonfinite"])} non-finite '
    f'pixels, labels in [{int(guard["label_min"])}, {int(guard["label_max"])}], '
    f'{float(metrics.get("boxed", 0.0)):g} boxed images. {int(guard["skipped_steps"])} '
    f'steps skipped in all; parameters are those before the first of these steps. Lower '
    'train.learning_rate or check the data.'
  )
