"""benchmarks/backbones.py: the markdown table of the backbones, timed and untimed rows."""

import re

from tests.helpers import benchmark_scripts as scripts

backbones = scripts.import_script('backbones')


def test_the_table_has_a_row_per_backbone_and_times_only_the_asked_ones(capsys):
  models = 'tiny_cnn,care_jax.models.tiny:TinyCNN'
  assert backbones.main(['--models', models, '--time-models', 'tiny_cnn', *scripts.TINY_STEPS]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[1:3] == [
    '| backbone | params | feature grid | CE step (s) | CARE step (s) | CARE/CE |',
    '|---|---:|---|---:|---:|---:|',
  ]
  timed, untimed = lines[3:]
  # TinyCNN's stride is 8: a 32 px image gives a 4 x 4 grid of its 128 channels.
  assert re.fullmatch(
    r'\| `tiny_cnn` \| 0\.10M \| 4 x 4 x 128 \| [\d.]+ \| [\d.]+ \| [\d.]+ \|', timed
  )
  assert untimed == '| `care_jax.models.tiny:TinyCNN` | 0.10M | 4 x 4 x 128 | n/a | n/a | n/a |'


def test_the_parameter_count_is_the_models_own():
  params, grid = backbones.shape_row('resnet18', image_size=224, num_classes=1000)
  assert (params, grid) == (11_689_512, (7, 7, 512))  # torchvision's resnet18


def test_a_vits_feature_grid_is_its_patch_grid_at_224():
  params, grid = backbones.shape_row('deit_s_16', image_size=224, num_classes=1000)
  assert (params, grid) == (22_050_664, (14, 14, 384))  # timm's deit_small_patch16_224
