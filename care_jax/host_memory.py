"""Host memory that XLA's CPU steps reuse instead of page-faulting it in again at every step.

An XLA executable on the CPU allocates its scratch buffer (2.1 GB for a ResNet-50 step at
224x224, batch 16) from the C library's ``malloc`` at every call and frees it at the end. glibc
serves a block that large with ``mmap`` and returns it with ``munmap``, so the kernel maps and
zeroes the same 2 GB again at every step: about 600,000 page faults and 1.1 s of a 4.3 s step
on a 2-core machine (docs/benchmarks.md). `keep_freed_memory` tells glibc to keep freed memory
in the process instead (one heap for all threads, no ``mmap`` for large blocks, no trimming),
after which the step allocates from pages it already holds.

The cost: the process's resident memory stays at its peak instead of falling back between
steps. The commands (``care-jax train`` and the others, through ``care_jax._app.run``) call it
for you on CPU hosts; in a notebook, call it first, before anything runs on jax::

  from care_jax import host_memory
  host_memory.keep_freed_memory()

``CARE_JAX_KEEP_FREED_MEMORY=0`` in the environment turns it off everywhere.
"""

import ctypes
import ctypes.util
import importlib.util
import os
import sys
import warnings

# mallopt parameters of glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Installed jax plugins whose presence means the steps run on an accelerator, where host
# memory is not on the step's path and the input pipeline's threads keep their own heaps.
_ACCELERATOR_PLUGINS = (
  'jax_cuda12_plugin',
  'jax_cuda13_plugin',
  'jax_rocm60_plugin',
  'jax_rocm7_plugin',
  'libtpu',
)
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


def keep_freed_memory(*, only_on_cpu_hosts: bool = False) -> bool:
  """Makes glibc keep freed memory in the process, for all threads; True if it now does.

  Sets ``mallopt(M_ARENA_MAX, 1)`` (every thread allocates from the main heap, which can grow
  to any size), ``M_MMAP_MAX = 0`` (large blocks come from that heap, not from ``mmap``) and
  ``M_TRIM_THRESHOLD = -1`` (freed memory is never handed back). All three are needed: XLA's
  worker threads allocate the step's buffer, and a thread's own heap is capped at 64 MB, so
  without the first the block is still mapped and unmapped at every step.

  Returns False, changing nothing, where it cannot help: not Linux with glibc; the
  environment holds ``CARE_JAX_KEEP_FREED_MEMORY=0``; ``only_on_cpu_hosts`` and a jax
  accelerator plugin is installed; or jax has already started its backends (its threads hold
  heaps of their own by then; a `RuntimeWarning` says to call this first).

  Args:
    only_on_cpu_hosts: skip hosts with a jax GPU or TPU plugin installed (the commands pass
      True: there the steps do not allocate host memory).
  """
  global _kept
  if _kept:
    return True
  if os.environ.get(ENV_SWITCH, '1').strip().lower() in ('0', 'false', 'no', 'off'):
    return False
  libc = _glibc()
  if libc is None:
    return False
  if only_on_cpu_hosts and any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS):
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
