"""Split assignment of the file datasets: a held-out share, stratified by class, whole groups."""

import numpy as np
import pytest

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


def test_the_coverage_error_names_a_one_image_class_that_looks_like_a_typo():
  counts = {'train': [40, 1, 30], 'validation': [5, 0, 5], 'test': [5, 0, 5]}
  with pytest.raises(
    ValueError, match="'cirlce' \\(1 example\\) looks like a misspelling of 'circle'"
  ):
    splits.require_every_class(
      counts, ['circle', 'cirlce', 'square'], 'labels.csv', noun='example', has_no='no '
    )


def test_well_populated_or_distinct_classes_are_not_called_typos():
  assert splits.likely_typos({'train': [40, 30, 1]}, ['circle', 'circles', 'square']) == []
  assert splits.likely_typos({'train': [40, 1]}, ['circle', 'nodule']) == []
