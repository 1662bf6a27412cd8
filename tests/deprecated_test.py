"""Every deprecated name keeps working for one release: it warns, naming its new home, and
answers as before (care_jax._deprecated, its one table). care-jax's own DeprecationWarnings are
errors outside pytest.warns (setup.cfg)."""

import importlib
import re
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import care_jax
from care_jax import _deprecated
from care_jax import boxes
from care_jax import checkpoint
from care_jax import classification_loss
from care_jax import config as config_lib
from care_jax import data
from care_jax import imbalance
from care_jax import losses
from care_jax import models
from care_jax import training
from care_jax.data import augment
from care_jax.data import pipeline
from tests.helpers import loss_references as ref
from tests.helpers import runs

MOVED_TO_TRAINING = (
  'MESH_AXIS',
  'PMAP_AXIS',
  'MeshParallel',
  'PmapParallel',
  'StepConfig',
  'TrainState',
  'check_nonfinite',
  'create_learning_rate',
  'create_model',
  'create_optimizer',
  'create_train_state',
  'make_eval_step',
  'make_parallel',
  'make_train_step',
  'num_train_steps',
)


@pytest.mark.parametrize('name', MOVED_TO_TRAINING)
def test_the_names_of_care_jax_train_are_those_of_care_jax_training(name):
  from care_jax import train  # pylint: disable=g-import-not-at-top

  with pytest.warns(
    DeprecationWarning,
    match=rf'care_jax\.train\.{name} is deprecated: use '
    rf'care_jax\.training\.{name}',
  ):
    assert getattr(train, name) is getattr(training, name)


def test_care_jax_train_train_and_evaluate_wires_in_the_generated_boxes(monkeypatch):
  from care_jax import train  # pylint: disable=g-import-not-at-top

  calls = []
  monkeypatch.setattr(training, 'train_and_evaluate', lambda *a, **k: calls.append((a, k)))
  with pytest.warns(DeprecationWarning, match=r'care_jax\.training\.train_and_evaluate'):
    train.train_and_evaluate('config', 'workdir')
  assert calls == [(('config', 'workdir'), {'boxes_fn': boxes.replace_boxes})]


def test_care_jax_train_attention_maps_is_the_models_method():
  from care_jax import train  # pylint: disable=g-import-not-at-top

  model = models.get_model('tiny_cnn', num_classes=3)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  _, inter = model.apply(variables, images, train=False)
  labels = np.array([0, 2])
  with pytest.warns(DeprecationWarning, match=r'Classifier\.attention_maps'):
    old = train.attention_maps(model, variables, inter['features'], labels, method='grad_cam')
  new = model.attention_maps(variables, inter['features'], labels, method='grad_cam')
  np.testing.assert_array_equal(old, new)


def test_care_jax_train_evaluate_keeps_its_old_signature(tmp_path):
  from care_jax import train  # pylint: disable=g-import-not-at-top
  from care_jax.training import inputs as inputs_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.apply_overrides(
    config_lib.default_config(), [*runs.TINY_DATA, f'data.dir={tmp_path / "tfds"}']
  )
  inputs = inputs_lib.PipelineInputs(config)
  experiment = training.create_experiment(config, inputs.info)
  state = experiment.parallel.put_state(experiment.state)
  with pytest.warns(DeprecationWarning, match=r'care_jax\.training\.evaluate'):
    old = train.evaluate(experiment.parallel, state, config, 'test', inputs.info)
  new = training.evaluate(
    experiment.parallel, state, inputs.eval_batches('test', batch_size=16), info=inputs.info
  )
  assert old == new and old['confusion'] == new['confusion']


def test_unknown_names_of_care_jax_train_raise_attribute_error():
  from care_jax import train  # pylint: disable=g-import-not-at-top

  with pytest.raises(AttributeError, match='has no attribute'):
    train.no_such_name  # noqa: B018  pylint: disable=pointless-statement


def test_the_config_schema_names_that_moved_to_care_jax_config():
  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.default_box_config'):
    assert boxes.default_box_config().to_dict() == config_lib.default_box_config().to_dict()
  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.BOX_SOURCES'):
    assert boxes.BOX_SOURCES == config_lib.BOX_SOURCES
  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.default_augment_config'):
    assert augment.default_config().to_dict() == config_lib.default_augment_config().to_dict()
  saved = config_lib.to_json(config_lib.default_config())
  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.to_json'):
    assert checkpoint.config_to_json(config_lib.default_config()) == saved
  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.flatten'):
    assert checkpoint.flatten_config(saved) == config_lib.flatten(saved)


# care_jax.imbalance -> care_jax.classification_loss, care_jax.config ----------------------------


MOVED_TO_CLASSIFICATION_LOSS = (
  'ClassificationLoss',
  'FOCAL_ALPHAS',
  'LOSS_NAMES',
  'MULTILABEL_LOSS_NAMES',
  'TASKS',
)


@pytest.mark.parametrize('name', MOVED_TO_CLASSIFICATION_LOSS)
def test_the_moved_names_of_imbalance_warn_and_are_those_of_classification_loss(name):
  with pytest.warns(
    DeprecationWarning,
    match=rf'care_jax\.imbalance\.{name} is deprecated: use care_jax\.classification_loss\.{name}',
  ):
    assert getattr(imbalance, name) is getattr(classification_loss, name)


def test_the_old_make_classification_loss_warns_and_builds_the_same_loss():
  logits, labels = ref.batch(20, scale=0.3)
  with pytest.warns(
    DeprecationWarning,
    match=r'care_jax\.imbalance\.make_classification_loss is deprecated: use '
    r'care_jax\.classification_loss\.make_classification_loss',
  ):
    old_function = imbalance.make_classification_loss
  new_function = classification_loss.make_classification_loss
  with warnings.catch_warnings():
    warnings.simplefilter('error', DeprecationWarning)  # The name call warns only on access.
    old = old_function('ldam_drw', class_counts=ref.COUNTS, num_steps=100, posthoc_tau=0.5)
  new = new_function('ldam_drw', class_counts=ref.COUNTS, num_steps=100, posthoc_tau=0.5)
  assert (old.name, old.reweight_step, old.task) == (new.name, new.reweight_step, new.task)
  np.testing.assert_array_equal(old.class_weights, new.class_weights)
  np.testing.assert_array_equal(old.posthoc_bias, new.posthoc_bias)
  for step in (0, 99):
    for got, want in zip(old(logits, labels, step), new(logits, labels, step)):
      assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    multilabel = old_function(
      'weighted_ce', class_counts=[3, 5], num_steps=10, task='multilabel', num_examples=10
    )
  assert multilabel.task == 'multilabel'


def _legacy_config(**fields):
  """A config.loss ConfigDict as the config module builds it (a typed placeholder focal_alpha)."""
  config = ml_collections.ConfigDict(
    dict(
      name='ce',
      focal_alpha=ml_collections.config_dict.placeholder(str),
      **{key: value for key, value in ref.PUBLISHED_DEFAULTS.items() if key != 'focal_alpha'},
    )
  )
  config.update(fields)
  return config


@pytest.mark.parametrize('name, fields', ref.SEAM_CASES + [('focal', {'posthoc_tau': 0.5})])
def test_deprecated_config_call_warns_and_gives_the_same_loss(name, fields):
  logits, labels = ref.batch(19, scale=0.3)
  new = ref.make_loss(name, num_steps=100, **fields)
  with pytest.warns(DeprecationWarning, match=r'care_jax\.classification_loss'):
    old_function = imbalance.make_classification_loss
  for config in (_legacy_config(name=name, **fields), dict(name=name, **fields)):
    with pytest.warns(DeprecationWarning, match='make_classification_loss.*keyword'):
      old = old_function(config, class_counts=ref.COUNTS, num_steps=100)
    assert old.name == new.name
    assert old.reweight_step == new.reweight_step
    for attribute in ('class_weights', 'posthoc_bias'):
      if getattr(new, attribute) is None:
        assert getattr(old, attribute) is None, attribute
      else:
        np.testing.assert_array_equal(getattr(old, attribute), getattr(new, attribute))
    for step in (0, 99):
      got = old(logits, labels, jnp.int32(step))
      want = new(logits, labels, jnp.int32(step))
      for got_array, want_array in zip(got, want):
        assert np.asarray(got_array).tobytes() == np.asarray(want_array).tobytes()
    np.testing.assert_array_equal(old.predict_logits(logits), new.predict_logits(logits))


def test_deprecated_config_call_still_names_the_bad_field():
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    with pytest.raises(ValueError, match=r'gamma = -0\.5'):
      imbalance.make_classification_loss(
        _legacy_config(gamma=-0.5), class_counts=ref.COUNTS, num_steps=10
      )


def test_deprecated_default_loss_config_is_the_config_modules():
  from care_jax import config as config_lib  # pylint: disable=import-outside-toplevel

  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.default_loss_config'):
    config = imbalance.default_loss_config()
  assert config.to_dict() == config_lib.default_loss_config().to_dict()
  assert config.to_dict() == {'name': 'ce', **ref.PUBLISHED_DEFAULTS}
  config.focal_alpha = 'class_balanced'  # a typed placeholder: strings can be set
  with pytest.warns(DeprecationWarning):
    # The old call still builds the same loss from it.
    loss = imbalance.make_classification_loss(config, class_counts=ref.COUNTS, num_steps=10)
  assert loss.name == 'ce'


@pytest.mark.parametrize('key, value', ref.BAD_ARGUMENTS)
def test_deprecated_validate_loss_config_is_the_config_modules(key, value):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    config = imbalance.default_loss_config()
  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.validate_loss'):
    imbalance.validate_loss_config(config)  # the defaults are valid
  config[key] = value
  with pytest.warns(DeprecationWarning):
    with pytest.raises(ValueError, match=rf'config\.loss\.{key} = {value!r}'):
      imbalance.validate_loss_config(config)


# care_jax.losses -> care_jax.imbalance ------------------------------------------------------


MOVED_TO_IMBALANCE = (
  'cross_entropy',
  'inverse_frequency_weights',
  'positive_weights',
  'sigmoid_binary_cross_entropy',
  'weighted_cross_entropy_loss',
)


@pytest.mark.parametrize('name', MOVED_TO_IMBALANCE)
def test_the_classification_losses_moved_to_imbalance_warn_and_are_the_same(name):
  with pytest.warns(
    DeprecationWarning,
    match=rf'care_jax\.losses\.{name} is deprecated: use care_jax\.imbalance\.{name}',
  ):
    assert getattr(losses, name) is getattr(imbalance, name)
  # The top-level exports keep their names, now those of imbalance (without a warning).
  assert getattr(care_jax, name) is getattr(imbalance, name)
  assert name not in losses.__all__ and name in imbalance.__all__


def test_unknown_names_of_losses_raise_attribute_error():
  with pytest.raises(AttributeError, match="module 'care_jax.losses' has no attribute"):
    losses.no_such_loss  # noqa: B018


# The data package ----------------------------------------------------------------------------


@pytest.mark.parametrize('module', [data, pipeline], ids=['data', 'pipeline'])
def test_default_data_config_is_a_deprecated_alias_of_the_configs(module):
  message = (
    rf'{re.escape(module.__name__)}\.default_data_config is deprecated: use'
    r' care_jax\.config\.default_data_config'
  )
  with pytest.warns(DeprecationWarning, match=message):
    alias = module.default_data_config
  assert alias().to_dict() == config_lib.default_data_config().to_dict()


MOVED_FROM_PIPELINE = sorted(
  name for module, name in _deprecated.MOVED if module == 'care_jax.data.pipeline'
)


@pytest.mark.parametrize('name', MOVED_FROM_PIPELINE)
def test_the_names_that_left_the_pipeline_module_warn_and_name_their_home(name):
  new_module, _, new_name = _deprecated.MOVED['care_jax.data.pipeline', name].partition(':')
  with pytest.warns(DeprecationWarning, match=rf'use {re.escape(new_module)}\.{new_name} '):
    old = getattr(pipeline, name)
  assert old is getattr(importlib.import_module(new_module), new_name)


def test_unknown_names_of_the_data_package_raise_attribute_errors():
  with pytest.raises(AttributeError, match="module 'care_jax.data' has no attribute 'nope'"):
    data.nope  # noqa: B018
  with pytest.raises(AttributeError, match="'care_jax.data.pipeline' has no attribute 'nope'"):
    pipeline.nope  # noqa: B018


# The config ----------------------------------------------------------------------------------


def test_deprecated_config_dict_get_warns_and_answers():
  config = config_lib.default_config()
  with pytest.warns(DeprecationWarning, match=r'care_jax\.config\.get'):
    assert config_lib.config_dict_get(config, 'care.alpha') == 0.5
  assert config_lib.get(config, 'data.boxes.otsu.sigma') == 0.05


# Every entry of the table ---------------------------------------------------------------------


def _message(old: str, new: str) -> str:
  return f'^{re.escape(f"{old} is deprecated: use {new} (removed in 0.3)")}$'


@pytest.mark.parametrize('module, name', sorted(_deprecated.MOVED))
def test_every_moved_name_resolves_to_its_new_home_and_warns_naming_it(module, name):
  new_module, _, new_name = _deprecated.MOVED[module, name].partition(':')
  with pytest.warns(
    DeprecationWarning, match=_message(f'{module}.{name}', f'{new_module}.{new_name}')
  ):
    old = getattr(importlib.import_module(module), name)
  assert old is getattr(importlib.import_module(new_module), new_name)


@pytest.mark.parametrize('module, name', sorted(_deprecated.ADAPTED))
def test_every_adapted_name_resolves_to_its_adapter_and_warns_naming_the_replacement(module, name):
  function, replacement = _deprecated.ADAPTED[module, name]
  with pytest.warns(DeprecationWarning, match=_message(f'{module}.{name}', replacement)):
    assert getattr(importlib.import_module(module), name) is function


def _defined_names(module) -> list[str]:
  """The public names `module` defines: its __all__, else its own functions and classes."""
  if hasattr(module, '__all__'):
    return sorted(module.__all__)
  return sorted(
    name
    for name, value in vars(module).items()
    if not name.startswith('_') and getattr(value, '__module__', None) == module.__name__
  )


@pytest.mark.parametrize(
  'module, home',
  [(module, home) for module, homes in sorted(_deprecated.MOVED_MODULES.items()) for home in homes],
)
def test_every_moved_module_serves_the_names_of_each_new_home_and_warns_naming_it(module, home):
  homes = _deprecated.MOVED_MODULES[module]
  earlier = {n for h in homes[: homes.index(home)] for n in dir(importlib.import_module(h))}
  table = {n for m, n in (*_deprecated.MOVED, *_deprecated.ADAPTED) if m == module}
  # A name of this home that no earlier home (and no entry of the tables) answers first.
  name = next(n for n in _defined_names(importlib.import_module(home)) if n not in earlier | table)
  with pytest.warns(DeprecationWarning, match=_message(f'{module}.{name}', f'{home}.{name}')):
    old = getattr(importlib.import_module(module), name)
  assert old is getattr(importlib.import_module(home), name)
