"""benchmarks/_common.py, the helpers the benchmark scripts share: random batches, compiled
programs' statistics, alternating timings, tables, the compiled steps."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import models
from tests.helpers import benchmark_scripts as scripts

_common = scripts.import_script('_common')


def test_random_batch_boxes_one_rectangle_per_boxed_image():
  batch = _common.random_batch(
    batch_size=12, image_size=64, num_classes=7, boxed_fraction=0.33, seed=3
  )
  assert batch['image'].shape == (12, 64, 64, 3) and batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32 and set(batch['label']) <= set(range(7))
  np.testing.assert_array_equal(batch['has_mask'], np.arange(12) < 4)  # round(0.33 * 12)
  for mask, boxed in zip(batch['mask'], batch['has_mask']):
    if not boxed:
      assert not mask.any()
      continue
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    # A filled axis-aligned rectangle with sides in [S/8, S/2].
    assert mask.sum() == len(rows) * len(cols)
    assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
    assert 8 <= len(rows) <= 32 and 8 <= len(cols) <= 32


def test_random_batch_rejects_a_boxed_fraction_outside_0_1():
  with pytest.raises(ValueError, match='boxed_fraction'):
    _common.random_batch(batch_size=4, image_size=32, num_classes=2, boxed_fraction=1.5)


def test_compiled_stats_of_a_donated_matmul():
  n = 64
  compiled = (
    jax.jit(lambda a, b: a @ b + a, donate_argnums=0)
    .lower(jnp.ones((n, n)), jnp.ones((n, n)))
    .compile()
  )
  stats = _common.compiled_stats(compiled)
  assert stats['flops'] >= 2 * n**3  # the matmul's multiply-adds (plus the add)
  assert stats['argument_bytes'] == 2 * n * n * 4
  assert stats['output_bytes'] == n * n * 4
  assert stats['alias_bytes'] == n * n * 4  # the output reuses the donated `a`


def test_time_alternating_runs_the_steps_in_turn_on_fresh_arguments():
  calls, made = [], []

  def make_args(name):
    made.append(name)
    return (jnp.float32(len(made)),)

  steps = {
    name: (
      lambda x, name=name: calls.append((name, float(x))) or x,
      lambda name=name: make_args(name),
    )
    for name in ('a', 'b')
  }
  timings = _common.time_alternating(steps, repeats=3, warmup=1)
  assert [name for name, _ in calls] == ['a', 'b'] * 4
  # Every run got the arguments made just before it.
  assert [x for _, x in calls] == list(range(1, 9))
  assert all(len(t.wall) == len(t.cpu) == 3 for t in timings.values())
  assert all(s >= 0 for t in timings.values() for s in t.wall + t.cpu)


def test_format_table_aligns_columns():
  table = _common.format_table(['', 'x', 'yy'], [['row', '1.0', '22.5'], ['r', '10.25', '3']])
  assert table.splitlines() == [
    '         x    yy',
    '---  -----  ----',
    'row    1.0  22.5',
    'r    10.25     3',
  ]


def _tiny_steps(nan_image=False):
  model = models.get_model('tiny_cnn', num_classes=3)
  batch = _common.random_batch(
    batch_size=8, image_size=32, num_classes=3, boxed_fraction=0.5, seed=1
  )
  if nan_image:
    batch['image'][0, 0, 0, 0] = np.nan
  state = _common.create_state(model, (32, 32, 3), seed=0)
  return state, _common.compile_steps(model, state, jax.device_put(batch), alpha=0.5)


def test_compile_steps_donates_copies_and_keeps_the_initial_state():
  state, steps = _tiny_steps()
  state_bytes = sum(jnp.asarray(x).nbytes for x in jax.tree.leaves(state))
  for name in _common.STEPS:
    # The whole state is donated: the new state reuses its buffers.
    assert steps.stats[name]['alias_bytes'] == state_bytes
    for _ in range(2):
      jax.block_until_ready(steps.compiled[name](*steps.fresh_args()))
  # Runs donate copies, never the initial state itself.
  assert not any(x.is_deleted() for x in jax.tree.leaves(steps.state) if isinstance(x, jax.Array))
  assert steps.step_configs['ce'].alpha == 0.0 and steps.step_configs['care'].alpha == 0.5


def test_compile_steps_rejects_a_step_with_non_finite_metrics():
  with pytest.raises(FloatingPointError, match='non-finite'):
    _tiny_steps(nan_image=True)


def test_keeps_freed_memory_only_where_jax_runs_on_the_cpu():
  # One glibc arena speeds up XLA's CPU steps only (review finding 12).
  code = (
    'import sys; sys.path.insert(0, sys.argv[1]); import _common; '
    'from jax._src import xla_bridge; '
    'assert not xla_bridge.backends_are_initialized(), "the check started jax"; '
    'print(_common.runs_on_cpu(), _common.KEEPS_FREED_MEMORY)'
  )
  answers = {}
  for platforms in ('cpu', 'cuda', 'tpu,cpu'):
    env = dict(os.environ, JAX_PLATFORMS=platforms)
    env.pop('CARE_JAX_KEEP_FREED_MEMORY', None)
    proc = subprocess.run(
      [sys.executable, '-c', code, str(scripts.BENCHMARKS)],
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers[platforms] = proc.stdout.split()
  assert answers['cpu'][0] == 'True' and answers['cuda'] == ['False', 'False']
  assert answers['tpu,cpu'] == ['False', 'False']
