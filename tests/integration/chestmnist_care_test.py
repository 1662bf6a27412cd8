"""configs/chestmnist_care.py end to end: CARE with automatic boxes on a multi-label MedMNIST file.

`care-jax train --config=chestmnist_care --config.data.dir=DIR` on a generated ChestMNIST npz in
the real key layout: the Otsu boxes of the hernia-positive training images become hernia masks
and the attention loss sees them (a non-zero ``boxed`` count in the train log). The full recipe
(a DenseNet-121 at 224 px for 10 epochs) takes hours on a CPU: the run overrides only sizes
(model, image size, steps, protocol) and keeps the config's data, boxes and task.
"""

import json
import os

import pytest

from care_jax import config as config_lib
from tests.helpers import command_line
from tests.helpers import medmnist_files

# Six hernia (the last finding) training images, one of each other finding, one with none.
COUNTS = {'train': [1] * 13 + [6], 'val': [1] * 14, 'test': [1] * 14}


def test_chestmnist_care_takes_class_agnostic_boxes_and_refuses_grad_cam():
  config = config_lib.load_config('chestmnist_care')
  config_lib.validate(config)
  assert config.task == 'multilabel' and config.data.box_source == 'otsu'
  config.data.box_source = 'grad_cam'
  with pytest.raises(
    ValueError,
    match=r"^config.data.box_source = 'grad_cam': must be one of \('manual', 'otsu', "
    r"'spectral_residual', 'mask'\) for config.task = 'multilabel'",
  ):
    config_lib.validate(config)


@pytest.mark.slow
def test_care_jax_train_chestmnist_care_trains_care_on_automatic_hernia_boxes(tmp_path):
  medmnist_files.write_npz(tmp_path / 'files', 'chestmnist', 224, COUNTS, side=16)
  proc = command_line.care_jax(
    'train',
    '--config=chestmnist_care',
    f'--config.data.dir={tmp_path / "files"}',
    f'--workdir={tmp_path / "run"}',
    f'--config.data.cache_dir={tmp_path / "cache"}',
    '--config.model.name=tiny_cnn',
    '--config.data.image_size=16',
    '--config.train.num_epochs=0',
    '--config.train.num_steps=2',
    '--config.train.batch_size=8',
    '--config.train.eval_batch_size=16',
    '--config.train.log_every_steps=1',
    '--config.care.protocol=from_step',
    '--config.train.progress=False',
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  log = [
    json.loads(line) for line in (tmp_path / 'run' / 'train_log.jsonl').read_text().splitlines()
  ]
  assert sum(record['boxed'] for record in log) > 0
  saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert saved['data']['box_source'] == 'otsu' and saved['data']['rare_classes'] == ['hernia']
