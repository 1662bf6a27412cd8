"""The examples a figure shows: rare boxed images first, the classes in turn."""

import numpy as np

from care_jax.data import examples as examples_lib
from tests.helpers import runs


def test_select_examples_puts_rare_boxed_images_first_in_turn(tmp_path):
  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = runs.figures_run_config(tmp_path, 0.5).data
  every = {
    k: np.concatenate([b[k] for b in pipeline.eval_batches(config, 'test', batch_size=15)])
    for k in ('image', 'label', 'lesion_mask')
  }
  chosen = examples_lib.select_examples(
    config, 'test', num_images=8, rare_classes=(2, 4), batch_size=4
  )
  # Every test image has a lesion box; 3 per class: the rare classes in turn,
  # then the other classes in turn, each in the split's order.
  np.testing.assert_array_equal(chosen['label'], [2, 4, 2, 4, 2, 4, 0, 1])
  first = lambda k: np.flatnonzero(every['label'] == k)
  rows = [first(k)[i] for i in range(3) for k in (2, 4)] + [first(0)[0], first(1)[0]]
  np.testing.assert_array_equal(chosen['image'], every['image'][rows])
  np.testing.assert_array_equal(chosen['lesion_mask'], every['lesion_mask'][rows])
  again = examples_lib.select_examples(config, 'test', num_images=3, rare_classes=(2, 4))
  np.testing.assert_array_equal(again['image'], every['image'][rows[:3]])
