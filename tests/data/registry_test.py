"""The dataset registry: an unknown data.name lists the supported ones, wherever it is read."""

import pytest

from care_jax.data import info as info_lib
from care_jax.data import pipeline


def test_unknown_dataset_name_lists_the_supported_ones(config):
  bad = config.copy_and_resolve_references()
  bad.name = 'imagenet'
  for call in (
    lambda: info_lib.get_dataset_info(bad),
    lambda: pipeline.train_batches(bad, batch_size=2, seed=0),
    lambda: pipeline.eval_batches(bad, 'test', batch_size=2),
  ):
    with pytest.raises(ValueError, match=r"imagenet.*'synthetic_lesions'"):
      call()
