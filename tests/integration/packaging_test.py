"""What `pip install care-jax` brings: the dependencies, the packaged configs, the version."""

import configparser
import importlib
import os

import care_jax
from care_jax import config as config_lib
from tests.helpers import paths


def _setup_cfg():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(paths.REPO, 'setup.cfg'))
  return parser


def _requirements(text):
  lines = [line.split('#')[0].strip() for line in text.splitlines()]
  return [line for line in lines if line]


def test_tensorflow_is_required_as_tensorflow_so_an_installed_one_is_kept():
  requires = _requirements(_setup_cfg()['options']['install_requires'])
  names = [r.split('>')[0].split('<')[0].split('=')[0].split('[')[0] for r in requires]
  assert 'tensorflow' in names and 'tensorflow-cpu' not in names


def test_accelerator_extras_pin_jax_and_its_plugin_together():
  extras = _setup_cfg()['options.extras_require']
  core = next(
    r for r in _requirements(_setup_cfg()['options']['install_requires']) if r.startswith('jax>')
  )
  for extra in ('cuda12', 'cuda13', 'tpu'):
    (requirement,) = _requirements(extras[extra])
    assert requirement == f'jax[{extra}]{core[len("jax") :]}'


def test_configs_are_a_subpackage_so_they_ship_with_it():
  packages = _setup_cfg()['options.packages.find']['include']
  assert 'care_jax.*' in packages
  assert str(config_lib.CONFIGS_DIR.parent) == os.path.dirname(care_jax.__file__)
  module = importlib.import_module('care_jax.configs.synthetic_care')
  assert module.get_config().care.protocol == 'two_stage'


def test_the_version_has_one_source():
  assert _setup_cfg()['metadata']['version'] == 'attr: care_jax.__version__'
  assert care_jax.__version__.startswith('0.2')
