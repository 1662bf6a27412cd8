"""The input pipeline of a config as the training loop reads it (`PipelineInputs`), also put
onto the devices ahead of the steps (`care_jax.training.parallel.device_prefetch`)."""

import jax
import numpy as np
import pytest

from care_jax import config as config_lib
from care_jax.data import pipeline
from care_jax.training import inputs as inputs_lib
from care_jax.training import parallel as parallel_lib
from tests.helpers import data_fixtures as fx


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  """The default config on a small synthetic_lesions dataset."""
  config = config_lib.default_config()
  config.data = fx.synthetic_config(tmp_path_factory.mktemp('tfds'))
  config.seed = 3
  return config


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_pipeline_inputs_answer_from_the_pipeline_of_the_config(config):
  inputs = inputs_lib.PipelineInputs(config)
  assert inputs.info.split_sizes == {'train': 32, 'validation': 10, 'test': 15}
  assert inputs.info.rare_classes == (2, 4)
  # The config's seed, from the given step, one process: the pipeline's own batches.
  _assert_batches_equal(
    next(inputs.train_batches(batch_size=8, start_step=3)),
    next(pipeline.train_batches(config.data, batch_size=8, seed=3, start_step=3)),
  )
  _assert_batches_equal(
    next(inputs.eval_batches('test', batch_size=8)),
    next(pipeline.eval_batches(config.data, 'test', batch_size=8)),
  )
  ids = inputs.example_ids('test')
  assert len(ids) == len(set(ids)) == 15
  # The examples a figure shows: the rare classes first, in turn.
  assert inputs.examples('test', num_images=3)['label'].tolist() == [2, 4, 2]


def test_device_prefetch_of_the_mesh_back_end_gives_the_pipelines_batches(config):
  parallel = parallel_lib.MeshParallel(lambda s, b: (s, b), lambda s, b: b)
  inputs = inputs_lib.PipelineInputs(config)
  host = inputs.train_batches(batch_size=8, start_step=0)
  on_device = parallel_lib.device_prefetch(
    inputs.train_batches(batch_size=8, start_step=0), parallel.put_batch
  )
  for _ in range(3):
    expected, batch = next(host), next(on_device)
    assert all(isinstance(v, jax.Array) for v in batch.values())
    _assert_batches_equal(expected, {k: np.asarray(v) for k, v in batch.items()})
