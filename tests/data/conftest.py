"""The data tests' small synthetic_lesions dataset (tests/helpers/data_fixtures.py)."""

import pytest

from tests.helpers import data_fixtures as fx


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  """The data config of a small synthetic_lesions dataset, generated once per test module."""
  return fx.synthetic_config(tmp_path_factory.mktemp('tfds'))
