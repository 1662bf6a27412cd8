"""The data package: importing it loads no TensorFlow; each of its names comes from its module on
first use."""

import subprocess
import sys

from care_jax import data
from tests.helpers import reexports


def test_importing_care_jax_does_not_load_data_or_tensorflow():
  code = (
    'import sys, care_jax; assert "care_jax.data" not in sys.modules;'
    'import care_jax.data; assert "tensorflow" not in sys.modules;'
    'from care_jax.data import synthetic_config;'
    'assert "tensorflow" not in sys.modules'
  )
  subprocess.run([sys.executable, '-c', code], check=True)


def test_the_lazy_exports_are_the_names_of_their_modules():
  reexports.assert_lazy_exports(data, data._EXPORTS)  # pylint: disable=protected-access
