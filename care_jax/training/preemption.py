"""Preemption: a SIGTERM (or the preemption sync point of a multi-process run) asks the training
loop to checkpoint at the next step boundary and stop (`care_jax.training.loop`)."""

from collections.abc import Callable
import signal
import threading

import jax

from care_jax import checkpoint as checkpoint_lib


class Preempted(SystemExit):
  """Raised after the checkpoint that a SIGTERM (preemption notice) asked for.

  A `SystemExit` with status 143 (128 + SIGTERM), as schedulers expect of a
  process that ended on SIGTERM; `str()` gives the message.
  """

  def __init__(self, message: str):
    super().__init__(128 + signal.SIGTERM)
    self.message = message

  def __str__(self) -> str:
    return self.message


class PreemptionWatch:
  """Notices a preemption notice, to checkpoint at the next step boundary.

  One process: a SIGTERM handler (installed from the main thread only; the
  previous handler returns on exit) sets a flag. Several processes: JAX's
  preemption sync point, which makes every process stop at the same step.
  """

  def __init__(self, checkpoints: checkpoint_lib.RunCheckpoints):
    self._checkpoints = checkpoints
    self._received = threading.Event()
    self._previous: Callable | int | None = None

  def __enter__(self) -> 'PreemptionWatch':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._received.set())
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self._checkpoints.reached_preemption_sync_point(step)
    return self._received.is_set()
