"""Value checks of array arguments at the public boundary.

Shapes are static and always checked; values are only known for concrete
arrays. Under ``jit``, ``vmap``, ``grad`` of that argument, ``pmap`` or
``shard_map`` the arguments are tracers, so these checks are skipped and the
documented contract of the function applies: JAX does not raise for an
out-of-range index (it clamps, wraps or fills) and propagates NaN. Checking by value inside compiled
code (``checkify``, ``jax.debug``) would cost a device sync per step, which the
trainer avoids; its inputs are checked where they enter (the data pipeline).
"""

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x) -> np.ndarray | None:
  """``x`` as a numpy array, or None when its values are unknown (a tracer).

  Arrays spread over several processes are not fetched either (None).
  """
  if isinstance(x, jax.core.Tracer):
    return None
  if not getattr(x, 'is_fully_addressable', True):
    return None
  return np.asarray(x)


def _first_bad(values: np.ndarray, bad: np.ndarray) -> str:
  index = tuple(int(i) for i in np.argwhere(bad)[0])
  return f'{values[index].item()!r} at index {index} ({int(bad.sum())} bad value(s) in all)'


def check_range(name: str, x, *, low: float, high: float, what: str) -> None:
  """Raises ValueError if concrete ``x`` has a value outside [low, high], NaN or inf.

  ``what`` says what the values are, e.g. 'binary or soft masks'.
  """
  values = concrete(x)
  if values is None or not values.size:
    return
  values = values.astype(np.float64)
  bad = ~((values >= low) & (values <= high) & np.isfinite(values))
  if bad.any():
    raise ValueError(
      f'{name} values must lie in [{low:g}, {high:g}] ({what}), got {_first_bad(values, bad)}.'
    )


def check_class_indices(name: str, x, num_classes: int) -> None:
  """Raises ValueError if concrete ``x`` holds an index outside [0, K)."""
  values = concrete(x)
  if values is None or not values.size:
    return
  bad = (values < 0) | (values >= num_classes)
  if bad.any():
    raise ValueError(
      f'{name} must be class indices in [0, {num_classes}), got {_first_bad(values, bad)}.'
    )


def check_labels(labels: jax.Array, *, like: jax.Array, like_name: str) -> None:
  """Raises ValueError unless ``labels`` is an integer [B] vector matching ``like``'s batch size.

  ``like`` is the [B, ...] array the labels belong to (logits, features), named ``like_name`` in
  the message.
  """
  if labels.shape != like.shape[:1]:
    raise ValueError(
      f'labels must have shape [B] = ({like.shape[0]},), got shape '
      f'{labels.shape} ({like_name} shape {like.shape}).'
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be integer class indices, got dtype {labels.dtype}.')


def cross_entropy_inputs(logits, labels, class_weights):
  """The [B, K] logits, [B] labels and optional [K] class weights of a cross-entropy, as arrays.

  Raises ValueError for a wrong shape or dtype, or a concrete label outside [0, K).
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim != 2:
    raise ValueError(f'logits must have shape [B, K], got shape {logits.shape}.')
  check_labels(labels, like=logits, like_name='logits')
  check_class_indices('labels', labels, logits.shape[1])
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights)
    if class_weights.shape != logits.shape[1:]:
      raise ValueError(
        f'class_weights must have shape [K] = ({logits.shape[1]},), got '
        f'shape {class_weights.shape} (logits shape {logits.shape}).'
      )
  return logits, labels, class_weights


def check_multilabel(logits: jax.Array, labels: jax.Array) -> None:
  """Raises ValueError unless ``logits`` and ``labels`` are both [B, K], the labels in [0, 1]."""
  if logits.ndim != 2 or labels.shape != logits.shape:
    raise ValueError(
      f'logits and labels must both have shape [B, K] (multi-hot labels), got logits'
      f' {logits.shape} and labels {labels.shape}.'
    )
  check_range('labels', labels, low=0, high=1, what='multi-hot (0/1) or soft labels')


def positive_counts(class_counts) -> np.ndarray:
  """Host-side [K] class counts as float64, all positive.

  Raises:
    ValueError: if the counts are not a non-empty 1-D array, or a class has a count <= 0; the
      class index is named.
  """
  counts = np.asarray(class_counts, dtype=np.float64)
  if counts.ndim != 1 or counts.size == 0:
    raise ValueError(f'class_counts must be a non-empty 1-D array [K], got shape {counts.shape}.')
  bad = np.flatnonzero(~(counts > 0))
  if bad.size:
    raise ValueError(
      f'class_counts must be positive; class index {int(bad[0])} has count '
      f'{counts[bad[0]]} (all non-positive classes: {bad.tolist()}).'
    )
  return counts
