"""VGG-19 as torchvision's: its parameter count and names."""

from tests.helpers import model_fixtures as mf


def test_parameter_counts_match_torchvision():
  # torchvision.models.vgg19(num_classes=1000): sum(p.numel() for p in m.parameters()).
  _, variables = mf.abstract_model('vgg19')
  assert mf.num_params(variables['params']) == 143_667_240


def test_parameter_tree_uses_torchvision_names_and_shapes():
  vgg = mf.abstract_model('vgg19')[1]['params']
  assert vgg['backbone']['conv5_4']['kernel'].shape == (3, 3, 512, 512)
  assert vgg['head']['fc1']['kernel'].shape == (512 * 7 * 7, 4096)
  assert vgg['head']['fc3']['kernel'].shape == (4096, 1000)
