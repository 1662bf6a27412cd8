"""Data parallelism: the jitted steps on a device mesh, or pmapped.

* ``config.parallel = 'mesh'`` (default): one `jax.jit` over a 1-D
  ``('data',)`` mesh of all devices of all processes, made current with
  `jax.set_mesh`; the batch is sharded on 'data' and the state replicated, so
  XLA inserts the collectives and BatchNorm statistics are global.
* ``config.parallel = 'pmap'``: `jax.pmap` over the local devices with the
  BatchNorm statistics averaged over the 'batch' axis.

Both back-ends have the same methods: `compile_train_step` jits or pmaps a
further train step as `train_step` is, `put_state` / `get_state` move the
state onto the devices and back to the host, `put_batch` a host batch,
`abstract_state` gives the restore target of a checkpoint, `scope` is the
context the steps run in and `fetch` reads replicated outputs.
"""

import contextlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from care_jax import checkpoint as checkpoint_lib

PMAP_AXIS = 'batch'
MESH_AXIS = 'data'


class MeshParallel:
  """jit over a ('data',) mesh of all devices: batch sharded, state replicated."""

  def __init__(self, train_step, eval_step):
    self.mesh = jax.make_mesh(
      (jax.device_count(),), (MESH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )
    replicated = jax.NamedSharding(self.mesh, jax.P())
    self._batch_sharding = jax.NamedSharding(self.mesh, jax.P(MESH_AXIS))
    self._replicated = replicated
    self.train_step = self.compile_train_step(train_step)
    self.eval_step = jax.jit(
      eval_step, in_shardings=(replicated, self._batch_sharding), out_shardings=replicated
    )

  def compile_train_step(self, train_step):
    """`train_step(state, batch)` jitted as `self.train_step` is (e.g. stage 1's CE step)."""
    return jax.jit(
      train_step,
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


class PmapParallel:
  """`jax.pmap` over the local devices: batch split on a leading device axis."""

  def __init__(self, train_step, eval_step):
    self.num_local_shards = jax.local_device_count()
    self.train_step = self.compile_train_step(train_step)
    self.eval_step = jax.pmap(eval_step, axis_name=PMAP_AXIS)

  def compile_train_step(self, train_step):
    """`train_step(state, batch)` pmapped as `self.train_step` is (e.g. stage 1's CE step)."""
    return jax.pmap(train_step, axis_name=PMAP_AXIS, donate_argnums=0)

  @property
  def num_shards(self) -> int:
    """The devices the global batch is split over: each process splits its share."""
    return jax.process_count() * self.num_local_shards

  def put_state(self, state):
    # A leading device axis; the first pmapped call moves it onto the devices.
    return jax.tree.map(
      lambda x: jnp.broadcast_to(x, (self.num_local_shards, *jnp.shape(x))), state
    )

  def get_state(self, state):
    return jax.device_get(jax.tree.map(lambda x: x[0], state))

  def abstract_state(self, state):
    """The restore target of a host `state`: numpy arrays, for `put_state`."""
    return checkpoint_lib.abstract_tree(state)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return jax.tree.map(lambda x: x.reshape(self.num_local_shards, -1, *x.shape[1:]), batch)

  def scope(self):
    return contextlib.nullcontext()

  def fetch(self, tree):
    return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def make_parallel(config: ml_collections.ConfigDict, train_step, eval_step):
  """The data-parallel wrapper of `config.parallel`."""
  cls = PmapParallel if config.parallel == 'pmap' else MeshParallel
  return cls(train_step, eval_step)


def check_divisible(batch_size: int, parallel, key: str) -> None:
  """Raises ValueError unless `config.<key>` splits evenly over the devices."""
  if batch_size % parallel.num_shards:
    raise ValueError(
      f'config.{key} = {batch_size} must be divisible by the number of '
      f'devices ({parallel.num_shards}).'
    )
