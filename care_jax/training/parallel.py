"""Data parallelism: the jitted steps on a device mesh, with or without per-device code.

* ``config.parallel = 'mesh'`` (default): one `jax.jit` over a 1-D
  ``('data',)`` mesh of all devices of all processes, made current with
  `jax.set_mesh`; the batch is sharded on 'data' and the state replicated, so
  XLA inserts the collectives and BatchNorm statistics are global.
* ``config.parallel = 'pmap'``: the steps written per device (their
  collectives, e.g. the BatchNorm statistics, average over the ``'batch'``
  axis), run as `jax.shard_map` over a ``('batch',)`` mesh of the same
  devices: what `jax.pmap` now is (jit + shard_map), without its leading
  device axis. The state is the same replicated `jax.Array` as the mesh
  back-end's, so neither back-end stacks copies of it or gathers it back.

Both back-ends have the same methods: `compile_train_step` jits a further
train step as `train_step` is, `put_state` / `get_state` move the state
onto the devices and back to the host, `put_batch` a host batch,
`abstract_state` gives the restore target of a checkpoint, `scope` is the
context the steps run in and `fetch` reads replicated outputs (one local
copy each: no gather). `device_prefetch` puts the next batches onto the
devices while the current step runs.
"""

import collections
from collections.abc import Callable, Iterator
from typing import TypeVar

from absl import logging
import jax
import ml_collections
import numpy as np

from care_jax import checkpoint as checkpoint_lib

_Batch = TypeVar('_Batch')
_OnDevice = TypeVar('_OnDevice')

PMAP_AXIS = 'batch'
MESH_AXIS = 'data'


class MeshParallel:
  """jit over a ('data',) mesh of all devices: batch sharded, state replicated."""

  axis = MESH_AXIS

  def __init__(self, train_step, eval_step):
    self.mesh = jax.make_mesh(
      (jax.device_count(),), (self.axis,), axis_types=(jax.sharding.AxisType.Auto,)
    )
    self._replicated = jax.NamedSharding(self.mesh, jax.P())
    self._batch_sharding = jax.NamedSharding(self.mesh, jax.P(self.axis))
    self.train_step = self.compile_train_step(train_step)
    self.eval_step = jax.jit(
      self._per_device(eval_step),
      in_shardings=(self._replicated, self._batch_sharding),
      out_shardings=self._replicated,
    )

  def _per_device(self, step):
    """`step` as the jitted program runs it (the mesh back-end: as it is)."""
    return step

  def compile_train_step(self, train_step):
    """`train_step(state, batch)` jitted as `self.train_step` is (e.g. stage 1's CE step)."""
    return jax.jit(
      self._per_device(train_step),
      in_shardings=(self._replicated, self._batch_sharding),
      out_shardings=(self._replicated, self._replicated),
      donate_argnums=0,
    )

  @property
  def num_shards(self) -> int:
    """The devices the global batch is split over."""
    return jax.device_count()

  def put_state(self, state):
    # Every process holds the whole (replicated) state. Arrays restored onto
    # the replicated sharding (`abstract_state`) are already in place.
    return jax.tree.map(
      lambda x: (
        x
        if isinstance(x, jax.Array) and x.sharding == self._replicated
        else jax.make_array_from_process_local_data(self._replicated, np.asarray(x))
      ),
      state,
    )

  def abstract_state(self, state):
    """The restore target of a host `state`: replicated over the mesh."""
    return checkpoint_lib.abstract_tree(state, self._replicated)

  def get_state(self, state):
    return self.fetch(state)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    # Each process holds its slice of the global batch (multi-host safe).
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(self._batch_sharding, x), batch
    )

  def scope(self):
    return jax.set_mesh(self.mesh)

  def fetch(self, tree):
    # Replicated outputs: the local copy is the value, also when the array
    # spans devices of other processes (which device_get refuses).
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


class PmapParallel(MeshParallel):
  """Per-device steps (collectives over ``'batch'``) in `jax.shard_map` over all devices.

  `jax.pmap`'s semantics (each device runs the step on its slice of the
  batch; the step's `jax.lax` collectives name the axis) on the mesh
  back-end's arrays: a replicated state and a batch sharded on ``'batch'``.
  """

  axis = PMAP_AXIS

  def _per_device(self, step):
    # The steps average their gradients and statistics over the axis, so the
    # state and metrics they return are equal on every device: returned as
    # replicated, unchecked (as pmap's caller took device 0's copy).
    return jax.shard_map(
      step, mesh=self.mesh, in_specs=(jax.P(), jax.P(self.axis)), out_specs=jax.P(), check_vma=False
    )


def device_prefetch(
  batches: Iterator[_Batch], put: Callable[[_Batch], _OnDevice], *, depth: int = 2
) -> Iterator[_OnDevice]:
  """``put(batch)`` of each batch of ``batches``, in order, put ``depth`` batches ahead.

  ``put`` is the back-end's ``put_batch``: it starts the
  host-to-device copy and returns at once (JAX copies asynchronously). The iterator puts
  the first ``depth`` batches before it yields the first, and the next one each time the
  loop asks for another, i.e. after the loop has dispatched the previous step: so the copy
  of batch k + depth and the reading of its rows overlap step k, and the step finds its
  batch already on the devices. (`flax.jax_utils.prefetch_to_device` does this for pmap
  only.) Holds ``depth`` batches on the devices at a time.

  Example: ``for batch in device_prefetch(batches, parallel.put_batch): step(state, batch)``.

  Raises:
    ValueError: ``depth < 1``.
  """
  if depth < 1:
    raise ValueError(f'depth must be >= 1, got {depth}.')
  batches = iter(batches)
  ahead = collections.deque()
  for batch in batches:
    ahead.append(put(batch))
    if len(ahead) == depth:
      break
  while ahead:
    yield ahead.popleft()
    # Resumed when the loop wants the next batch: after it dispatched this one's step.
    for batch in batches:
      ahead.append(put(batch))
      break


def make_parallel(config: ml_collections.ConfigDict, train_step, eval_step):
  """The data-parallel wrapper of `config.parallel`."""
  cls = PmapParallel if config.parallel == 'pmap' else MeshParallel
  return cls(train_step, eval_step)


def enable_compilation_cache(directory: str | None) -> bool:
  """Keeps the compiled steps in JAX's persistent compilation cache in `directory`.

  Call before the first compilation (after `jax.distributed.initialize`):
  JAX opens its cache once. None leaves JAX's own settings (e.g. the
  ``JAX_COMPILATION_CACHE_DIR`` variable) as they are.

  Left off, with a warning, in a run of several processes on CPUs: with jax
  0.12, processes that all load their train step from the cache hang in its
  first collective (gloo), while compiling it works.

  Returns:
    Whether the cache is now on in `directory`.
  """
  if not directory:
    return False
  if jax.process_count() > 1 and jax.default_backend() == 'cpu':
    logging.warning(
      'config.compilation_cache_dir = %r: left off in a run of %d processes on CPUs, '
      'whose steps hang when every process loads them from the cache; compiling instead.',
      directory,
      jax.process_count(),
    )
    return False
  jax.config.update('jax_compilation_cache_dir', str(directory))
  return True


def check_divisible(batch_size: int, parallel, key: str) -> None:
  """Raises ValueError unless `config.<key>` splits evenly over the devices."""
  if batch_size % parallel.num_shards:
    raise ValueError(
      f'config.{key} = {batch_size} must be divisible by the number of '
      f'devices ({parallel.num_shards}).'
    )
