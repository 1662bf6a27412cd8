"""Names that moved in 0.2 keep working for one release: each warns, naming its new home."""

import jax
from main_test import TINY_DATA
import numpy as np
import pytest

from care_jax import boxes
from care_jax import checkpoint
from care_jax import config as config_lib
from care_jax import models
from care_jax import training
from care_jax.data import augment

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
    config_lib.default_config(), [*TINY_DATA, f'data.dir={tmp_path / "tfds"}']
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
