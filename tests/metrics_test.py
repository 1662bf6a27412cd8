"""The metrics package: the public names of its three modules, re-exported."""

import importlib

from care_jax import metrics
from tests.helpers import reexports


def test_the_package_re_exports_the_public_names_of_its_modules():
  owners = [
    importlib.import_module(f'care_jax.metrics.{module}')
    for module in ('classification', 'scores', 'attention_metrics')
  ]
  reexports.assert_exported(metrics, owners)
  assert callable(metrics.attention_quality) and metrics.attention_quality.__name__ == (
    'attention_quality'
  )
