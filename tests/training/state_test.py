"""The train state of a config: the learning-rate schedules, and a start from pretrained weights."""

import json

import jax
import numpy as np
import pytest

from care_jax import config as config_lib
from care_jax import training
from care_jax.models import IMAGENET_MEAN
from care_jax.models import IMAGENET_STD
from care_jax.models.torch_files import read_safetensors


def test_learning_rate_schedules():
  config = config_lib.default_config().train
  config.learning_rate = 1.0
  config.warmup_steps = 10
  config.schedule = 'step'
  lr = training.create_learning_rate(config, 110)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(5)), 0.5)
  np.testing.assert_allclose(float(lr(10 + 49)), 1.0)
  np.testing.assert_allclose(float(lr(10 + 51)), 0.1)
  np.testing.assert_allclose(float(lr(10 + 80)), 0.01)
  config.schedule = 'cosine'
  lr = training.create_learning_rate(config, 110)
  np.testing.assert_allclose(float(lr(60)), 0.5, atol=1e-6)
  np.testing.assert_allclose(float(lr(110)), 0.0, atol=1e-6)


@pytest.mark.slow
def test_fine_tuning_from_a_checkpoint_on_synthetic_lesions_lowers_the_loss(
  torch_exports, tmp_path
):
  from care_jax import config as config_lib
  from care_jax import training

  config = config_lib.apply_overrides(
    config_lib.default_config(),
    [
      'model.name=resnet18',
      f'model.pretrained={torch_exports / "resnet18.safetensors"}',
      f'data.mean={IMAGENET_MEAN}',
      f'data.std={IMAGENET_STD}',
      f'data.dir={tmp_path / "tfds"}',
      'data.image_size=32',
      'data.synthetic.image_size=32',
      'data.synthetic.train_counts=(24, 24, 8, 24, 8)',
      'data.synthetic.validation_counts=(0, 0, 0, 0, 0)',
      'data.synthetic.test_counts=(4, 4, 4, 4, 4)',
      'train.batch_size=16',
      'train.eval_batch_size=16',
      'train.num_steps=24',
      'train.log_every_steps=4',
      'train.progress=False',
    ],
  )
  # The train state starts from the checkpoint, with a fresh 5-class head.
  model = training.create_model(config, 5)
  state = training.create_train_state(config, model, (32, 32, 3), 24, jax.random.key(0))
  checkpoint = read_safetensors(torch_exports / 'resnet18.safetensors')
  np.testing.assert_array_equal(
    state.params['backbone']['conv1']['kernel'], checkpoint['conv1.weight'].transpose(2, 3, 1, 0)
  )
  assert state.params['head']['fc']['kernel'].shape == (512, 5)

  result = training.train_and_evaluate(config, str(tmp_path / 'run'))
  log = [json.loads(line) for line in open(tmp_path / 'run' / 'train_log.jsonl')]
  assert result['step'] == 24 and 'validation' not in result
  first, last = np.mean([r['ce'] for r in log[:2]]), np.mean([r['ce'] for r in log[-2:]])
  assert last < first, [r['ce'] for r in log]
