"""A backbone defined here, named by import path, through the whole toolchain.

``SmallCNN`` is the README's "Your own backbone" example: `care-jax train` trains it by import
path (``--config.model.name=tests.integration.custom_backbone_test:SmallCNN``) in a fresh
process, and evaluation, prediction and export (the library calls of the commands) rebuild it
from the path that the checkpoint recorded. A path that does not import and a module that
returns no 4-D feature map are answered in one line.
"""

import inspect
import json
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from care_jax import config as config_lib
from care_jax import inference
from care_jax import trained_run
from care_jax import training
from tests.helpers import command_line
from tests.helpers import paths
from tests.helpers import runs

NAME = 'tests.integration.custom_backbone_test:SmallCNN'


# The README's and the own-data notebook's example, character for character (tested below).
class SmallCNN(nn.Module):
  """Two conv-BatchNorm-ReLU stages of stride 2: images [B, H, W, 3] -> a [B, H/4, W/4, 32] map."""

  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    for width in (16, 32):
      x = nn.Conv(width, (3, 3), strides=2, use_bias=False, dtype=self.dtype)(x)
      x = nn.BatchNorm(
        use_running_average=not train, momentum=0.9, axis_name=self.axis_name, dtype=self.dtype
      )(x)
      x = nn.relu(x)
    return x  # the feature map of the attention maps: no pooling here, the head pools


def _write_images(folder, count: int = 3):
  rng = np.random.default_rng(0)
  folder.mkdir()
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f'{i}.png')


@pytest.mark.slow
def test_a_backbone_named_by_import_path_trains_evaluates_predicts_and_exports(
  tmp_path, monkeypatch
):
  from care_jax.commands import evaluate  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / 'run'
  # pmap and bfloat16: SmallCNN gets the axis of its BatchNorms and the compute dtype.
  overrides = runs.TINY_DATA + [
    f'data.dir={tmp_path / "tfds"}',
    f'model.name={NAME}',
    'parallel=pmap',
    'dtype=bfloat16',
  ]
  done = command_line.care_jax(
    'train',
    '--config=synthetic_care',  # CE, then CE + the attention loss on SmallCNN's maps
    f'--workdir={workdir}',
    *[f'--config.{o}' for o in overrides],
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
  )
  assert done.returncode == 0, done.stderr[-3000:]
  metrics = json.loads((workdir / 'metrics.json').read_text())
  assert metrics['step'] == 6

  block, _ = evaluate.evaluate(str(workdir), split='test', checkpoint='latest')
  assert sum(map(sum, block['confusion'])) == 28  # every test image of TINY_DATA
  predictor = inference.Predictor.from_workdir(str(workdir), checkpoint='latest')
  assert isinstance(predictor.model.backbone, SmallCNN)
  _write_images(tmp_path / 'images')
  result = inference.predict(str(workdir), str(tmp_path / 'images'), str(tmp_path / 'p.csv'))
  assert len(result.index) == 3 and (tmp_path / 'p.csv').read_text().count('\n') == 4

  out = tmp_path / 'export'
  inference.export(predictor, str(out), platforms=('cpu',))  # what `care-jax export` calls
  exported = jax.export.deserialize(bytearray((out / inference.EXPORT_MODEL).read_bytes()))
  images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  probabilities, _, maps = predictor.predict(images, attention=True)
  np.testing.assert_allclose(exported.call(images), probabilities, atol=1e-5)
  assert maps.shape == (2, 8, 8)
  # Where the recorded path no longer resolves, loading the run says so in one line.
  monkeypatch.delattr(sys.modules[__name__], 'SmallCNN')
  with pytest.raises(ValueError, match=rf"^The run {workdir} cannot be rebuilt: Backbone '{NAME}'"):
    trained_run.load_run(str(workdir))


def test_a_path_that_does_not_import_is_one_line(tmp_path):
  done = command_line.care_jax(
    'train', '--config=default', f'--workdir={tmp_path}', '--config.model.name=no_such.nets:Net'
  )
  assert done.returncode == 2
  lines = command_line.error_lines(done.stderr)
  assert lines == [
    "care-jax train: config.model.name = 'no_such.nets:Net': the module 'no_such.nets' does not "
    "import (ModuleNotFoundError: No module named 'no_such'); check the path and that its "
    'package is on PYTHONPATH'
  ], done.stderr[-3000:]


def test_a_module_returning_no_feature_map_is_refused_when_the_state_is_made():
  config = config_lib.apply_overrides(
    config_lib.default_config(),
    ['model.name=tests.models.backbones_test:Flat', 'train.learning_rate=0.001'],
  )
  config_lib.validate(config)  # the path imports: the shape is known at the first trace
  model = training.create_model(config, num_classes=2)
  with pytest.raises(ValueError, match=r"^Backbone '.*:Flat' returned shape \(1, 256, 4\), not a"):
    training.create_train_state(config, model, (32, 32, 3), 4, jax.random.key(0))


@pytest.mark.parametrize('document', ['README.md', 'notebooks/own_data.ipynb'])
def test_the_readme_and_the_own_data_notebook_show_this_backbone(document):
  text = (paths.REPO / document).read_text()
  if document.endswith('.ipynb'):
    cells = json.loads(text)['cells']
    text = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
  assert inspect.getsource(SmallCNN) in text
  assert 'model.name=my_backbones:SmallCNN' in text
