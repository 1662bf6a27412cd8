"""`care-jax boxes`: a boxes.csv of the generated boxes."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from care_jax import boxes
from care_jax import config as config_lib
from tests.helpers import data_fixtures as fx
from tests.helpers import paths


@pytest.fixture(scope='module')
def data_config(tmp_path_factory):
  """A small synthetic_lesions dataset with rare training images to box, prepared once."""
  return fx.rare_boxes_data_config(tmp_path_factory.mktemp('tfds'))


def test_cli_writes_a_boxes_csv(data_config, tmp_path):
  out = tmp_path / 'boxes.csv'
  synthetic = data_config.synthetic
  command = [
    sys.executable,
    '-m',
    'care_jax.commands.cli',
    'boxes',
    '--method=otsu',
    f'--config={paths.REPO / "configs" / "synthetic_care.py"}',
    f'--out={out}',
    '--margin=0.1',
    f'--config.data.dir={data_config.dir}',
    '--config.data.image_size=32',
    '--config.data.synthetic.image_size=32',
    f'--config.data.synthetic.train_counts={tuple(synthetic.train_counts)}',
    f'--config.data.synthetic.validation_counts={tuple(synthetic.validation_counts)}',
    f'--config.data.synthetic.test_counts={tuple(synthetic.test_counts)}',
  ]
  result = subprocess.run(
    command,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'rare-class training images boxed by otsu' in result.stdout
  with open(out, newline='') as f:
    rows = list(csv.DictReader(f))
  box_config = config_lib.default_box_config()
  box_config.margin = 0.1
  generated = boxes.generated_boxes(
    data_config, method='otsu', box_config=box_config, use_cache=False
  )
  assert [r['image'] for r in rows] == list(generated.image_ids[generated.found])
  read = np.array([[float(r[k]) for k in ('xmin', 'ymin', 'xmax', 'ymax')] for r in rows])
  np.testing.assert_allclose(read, generated.csv_rows()[1], atol=1e-4)
  assert (read >= 0).all() and (read <= 32).all()
