"""Split assignment of the file datasets: a held-out share, stratified by class, whole groups."""

import numpy as np

from care_jax.data._files import splits


def test_holdout_is_stratified_and_grouped():
  labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
  held = splits.holdout(labels, [str(i) for i in range(17)], fraction=0.2, seed=0, salt=0)
  assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 1]
  groups = [str(i // 4) for i in range(16)]  # 4 groups of 4 rows, class 0.
  held = splits.holdout(np.zeros(16, int), groups, fraction=0.5, seed=3, salt=0)
  assert held.sum() == 8
  for g in range(4):
    assert len(set(held[g * 4 : g * 4 + 4])) == 1
