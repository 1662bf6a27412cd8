"""Evaluation: which rows of a split each global batch of several processes holds."""

import numpy as np
import pytest


@pytest.mark.parametrize('processes, global_batch, size', [(1, 8, 21), (2, 8, 21), (4, 8, 30)])
def test_split_positions_follow_the_eval_sharding_of_several_processes(
  processes, global_batch, size
):
  from care_jax.training import evaluation  # pylint: disable=g-import-not-at-top

  # eval_batches: pad to a multiple of the global batch, process p takes every
  # P-th example from p on, batches its share; a global batch concatenates them.
  padded = np.arange(-(-size // global_batch) * global_batch)
  local = global_batch // processes
  shares = [padded[p::processes] for p in range(processes)]
  for k in range(len(padded) // global_batch):
    batch = np.concatenate([share[k * local : (k + 1) * local] for share in shares])
    np.testing.assert_array_equal(evaluation.split_positions(k, global_batch, processes), batch)
