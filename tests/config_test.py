"""The config package: every public name of schema, checks and io, re-exported as it is."""

from care_jax import config as config_lib
from care_jax.config import checks
from care_jax.config import io
from care_jax.config import schema
from tests.helpers import reexports


def test_the_package_re_exports_every_public_name_of_its_three_modules():
  reexports.assert_exported(config_lib, [schema, checks, io])
