"""Host memory that XLA's CPU steps reuse instead of page-faulting it in again at every step.

An XLA executable on the CPU allocates its scratch buffer (2.1 GB for a ResNet-50 step at
224x224, batch 16) from the C library's ``malloc`` at every call and frees it at the end. glibc
serves a block that large with ``mmap`` and returns it with ``munmap``, so the kernel maps and
zeroes the same 2 GB again at every step: about 600,000 page faults and 1.1 s of a 4.3 s step
on a 2-core machine (docs/benchmarks.md). `keep_freed_memory` tells glibc to keep freed memory
in the process instead (one heap for all threads, no ``mmap`` for large blocks, no trimming),
after which the step allocates from pages it already holds.

The costs: the process's resident memory stays at its peak instead of falling back between
steps, and all threads allocate from one heap, under one lock. The second makes training with
small models slower (tests/integration/run_test.py's bfloat16 training test, a tiny CNN fed by
tf.data: 52 s with it against 32 s without; TensorFlow's and XLA's many threads contending for
that lock is the likely cause), so it is off unless asked for. Ask for it where the steps are
large (ResNet-50 at 224x224 on a CPU: a 1.3x faster step), before anything runs on jax: in a
notebook or script, ::

  from care_jax import host_memory
  host_memory.keep_freed_memory()

and for the commands (``care-jax train`` and the others), ``CARE_JAX_KEEP_FREED_MEMORY=1`` in
the environment (`keep_freed_memory_if_asked`).
"""

import ctypes
import ctypes.util
import os
import sys
import warnings

# mallopt parameters of glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
ENV_SWITCH = 'CARE_JAX_KEEP_FREED_MEMORY'
# The same three settings as glibc's environment variables, which it reads at a process's
# start: for a child process (benchmarks/vs_pytorch.py gives them to its torch process).
ENVIRONMENT = {
  'MALLOC_ARENA_MAX': '1',
  'MALLOC_MMAP_MAX_': '0',
  'MALLOC_TRIM_THRESHOLD_': str(2**62),
}
_kept = False  # Set once the settings are in place: later calls have nothing to do.


def _glibc() -> ctypes.CDLL | None:
  """The process's C library if it is glibc (the one with ``mallopt``), else None."""
  if not sys.platform.startswith('linux'):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  except OSError:
    return None
  if not hasattr(libc, 'gnu_get_libc_version') or not hasattr(libc, 'mallopt'):
    return None  # musl and others: no such knobs.
  return libc


def _jax_backends_started() -> bool:
  """Whether jax has started its backends (False where this jax cannot tell)."""
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  except ImportError:  # jax moved its private module: the settings are made, at worst in vain.
    return False
  started = getattr(xla_bridge, 'backends_are_initialized', None)
  return bool(started and started())


def keep_freed_memory() -> bool:
  """Makes glibc keep freed memory in the process, for all threads; True if it now does.

  Sets ``mallopt(M_ARENA_MAX, 1)`` (every thread allocates from the main heap, which can grow
  to any size), ``M_MMAP_MAX = 0`` (large blocks come from that heap, not from ``mmap``) and
  ``M_TRIM_THRESHOLD = -1`` (freed memory is never handed back). All three are needed: XLA's
  worker threads allocate the step's buffer, and a thread's own heap is capped at 64 MB, so
  without the first the block is still mapped and unmapped at every step.

  Returns False, changing nothing, where it cannot help: not Linux with glibc, or jax has
  already started its backends (its threads hold heaps of their own by then; a
  `RuntimeWarning` says to call this first).
  """
  global _kept
  if _kept:
    return True
  libc = _glibc()
  if libc is None:
    return False
  if _jax_backends_started():
    warnings.warn(
      'care_jax.host_memory.keep_freed_memory() was called after jax started its backends, '
      'so it would not reach the threads that allocate the steps; call it before anything '
      'runs on jax (e.g. in the first cell of a notebook). Nothing was changed.',
      RuntimeWarning,
      stacklevel=2,
    )
    return False
  # mallopt returns 1 on success; all three are valid on every glibc since 2.10.
  _kept = all(
    [
      libc.mallopt(param, value) == 1
      for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    ]
  )
  return _kept


def keep_freed_memory_if_asked(*, default: bool = False) -> bool:
  """`keep_freed_memory` if ``CARE_JAX_KEEP_FREED_MEMORY`` says so (``1``/``0``), else if
  ``default``; True if freed memory is now kept.

  The commands call it with ``default=False`` (off unless asked for), the benchmark scripts
  with ``default=True`` (their steps are the large ones it speeds up; ``=0`` turns it off).
  """
  value = os.environ.get(ENV_SWITCH, '').strip().lower()
  if value in ('1', 'true', 'yes', 'on'):
    return keep_freed_memory()
  if value in ('0', 'false', 'no', 'off'):
    return False
  if value:
    raise ValueError(f'{ENV_SWITCH} must be 1 or 0, got {os.environ[ENV_SWITCH]!r}.')
  return keep_freed_memory() if default else False
