"""The config schema: every default, the parts and their builders, what the schema knows of the
layers below, and the trees of 0.1 plus the keys added since."""

import json

import jax
import pytest

from care_jax import classification_loss
from care_jax import config as config_lib
from care_jax import models
from care_jax.data import folder
from care_jax.data import isic2018
from care_jax.data import nih_chestxray14
from care_jax.data import rsna_pneumonia
from tests.helpers import data_fixtures as fx
from tests.helpers import paths
from tests.helpers import versions


def test_the_default_config_is_valid_and_its_parts_are_the_part_builders():
  config = config_lib.default_config()
  config_lib.validate(config)
  assert config.data.to_dict() == config_lib.default_data_config().to_dict()
  assert config.data.augment.to_dict() == config_lib.default_augment_config().to_dict()
  assert config.data.boxes.to_dict() == config_lib.default_box_config().to_dict()
  assert config.loss.to_dict() == config_lib.default_loss_config().to_dict()


def test_the_loss_defaults_are_the_keywords_of_make_classification_loss():
  import inspect  # pylint: disable=g-import-not-at-top

  parameters = inspect.signature(classification_loss.make_classification_loss).parameters
  for key, value in config_lib.default_loss_config().items():
    if key != 'name':
      assert parameters[key].default == value, key


def test_the_schema_knows_the_models_heads_and_box_methods():
  assert set(config_lib.HEADS) == {'default', *models.HEAD_NAMES}
  assert config_lib.BOX_SOURCES == ('manual', 'otsu', 'spectral_residual', 'grad_cam', 'mask')


@pytest.mark.parametrize('module', [folder, isic2018, rsna_pneumonia, nih_chestxray14])
def test_the_config_holds_every_dataset_parameter(module):
  name = module.__name__.rsplit('.', 1)[-1]
  assert set(fx.data_config()[name]) == set(module.PARAMETERS)
  assert set(fx.default_parameters(name)) == set(module.PARAMETERS)


# The keys added since 0.1 (tests/helpers/versions.py) --------------------------------------


def _v0_1_configs() -> dict:
  with open(versions.V0_1_CONFIGS) as f:
    return json.load(f)


def test_the_keys_added_since_0_1_default_to_the_behaviour_of_0_1():
  defaults = config_lib.flatten(config_lib.to_json(config_lib.default_config()))
  assert {key: defaults[key] for key in versions.ADDED_SINCE_0_1} == versions.ADDED_SINCE_0_1


@pytest.mark.parametrize('name', sorted(_v0_1_configs()))
def test_every_config_builds_the_tree_of_0_1_plus_the_keys_added_since(name):
  built = (
    config_lib.default_config()
    if name == 'default_config'
    else config_lib.load_config(str(paths.REPO / 'configs' / name))
  )
  diffs = config_lib.differences(_v0_1_configs()[name], config_lib.to_json(built))
  # The keys added since (with this config's values), and the values changed in every config.
  added = {k for k, (old, _) in diffs.items() if old == '<missing>'}
  in_new_sections = {k for k in added if k.startswith(versions.ADDED_SECTIONS_SINCE_0_1)}
  assert in_new_sections, 'no key of the sections added since 0.1: update the test'
  assert added - in_new_sections == set(versions.ADDED_SINCE_0_1)
  assert {k: new for k, (old, new) in diffs.items() if old != '<missing>'} == {
    **versions.CHANGED_SINCE_0_1,
    **versions.CONFIG_CHANGED_SINCE_0_1.get(name, {}),
  }


@pytest.mark.parametrize('supervision, expected', [('box', True), ('mask', False)])
def test_auto_on_device_keeps_mask_supervised_augmentation_on_the_host(
  monkeypatch, supervision, expected
):
  # Only the host warps segmentation masks: 'auto' on a GPU resolves to the host for them.
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  config = config_lib.default_config()
  config.data.name = 'isic2018'
  config.data.augment.enabled = True
  config.data.isic2018.supervision = supervision
  assert config_lib.resolve_recipe(config).data.augment.on_device is expected


@pytest.mark.parametrize(
  'task, metric, mode', [('multiclass', 'mca', 'boxed'), ('multilabel', 'mean_auroc', 'multilabel')]
)
def test_the_auto_keys_follow_the_task_and_are_recorded_resolved(task, metric, mode):
  config = config_lib.apply_overrides(config_lib.default_config(), [f'task={task}'])
  resolved = config_lib.resolve_recipe(config)
  assert (resolved.care.stage1_metric, resolved.data.nih_chestxray14.mode) == (metric, mode)
  # A run saved before the keys were 'auto' (or with them resolved) reads them so.
  saved = config_lib.to_json(config)
  del saved['care']['stage1_metric'], saved['data']['nih_chestxray14']['mode']
  loaded = config_lib.from_json(saved)
  assert (loaded.care.stage1_metric, loaded.data.nih_chestxray14.mode) == (metric, mode)


def test_explicit_values_of_the_auto_keys_are_kept():
  config = config_lib.apply_overrides(
    config_lib.default_config(), ['task=multilabel', 'care.stage1_metric=rare_mean_auroc']
  )
  assert config_lib.resolve_recipe(config).care.stage1_metric == 'rare_mean_auroc'


@pytest.mark.parametrize(
  'backend, enabled, on_device, expected',
  [
    ('gpu', True, 'auto', True),
    ('cpu', True, 'auto', False),
    ('gpu', False, 'auto', False),  # Nothing to augment: recorded as off.
    ('cpu', True, True, True),
    ('gpu', True, False, False),
  ],
)
def test_on_device_follows_one_rule_for_the_config_and_the_pipeline(
  monkeypatch, backend, enabled, on_device, expected
):
  from care_jax.data import augment  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  config = config_lib.default_config()
  config.data.augment.enabled = enabled
  config.data.augment.on_device = on_device
  assert config_lib.augment_on_device(config) is expected
  resolved = config_lib.resolve_recipe(config)
  # Recorded resolved, and what the pipeline then reads (tests/data/augment_test.py).
  assert resolved.data.augment.on_device is expected
  assert augment.on_device(resolved.data.augment) is expected
