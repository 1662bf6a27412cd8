"""The models package: the classes every model name is built from, each exported once."""

from care_jax import models


def test_every_model_name_is_built_from_the_exported_backbones_and_heads():
  backbones = (
    models.ResNet,
    models.VGG,
    models.DenseNet,
    models.TinyCNN,
    models.ConvNeXt,
    models.EfficientNet,
    models.ViT,
  )
  heads = (
    models.LinearHead,
    models.BatchNormLinearHead,
    models.VGGHead,
    models.NormedLinearHead,
    models.LayerNormLinearHead,
    models.DropoutLinearHead,
    models.FlattenHead,
    models.ViTTokenHead,
  )
  built = set()
  for name in models.MODEL_NAMES:
    for head in (None, *models.HEAD_NAMES):
      try:
        model = models.get_model(name, num_classes=2, head=head)
      except ValueError:  # a head this backbone does not take (vgg for a ResNet)
        continue
      assert isinstance(model, models.Classifier), name
      assert isinstance(model.backbone, backbones) and isinstance(model.head, heads), (name, head)
      built |= {type(model.backbone), type(model.head)}
  assert built == {*backbones, *heads}  # and every exported class is used


def test_the_exports_are_unique_and_resolve():
  assert len(set(models.__all__)) == len(models.__all__)
  namespace = {}
  exec('from care_jax.models import *', namespace)
  assert set(namespace) - {'__builtins__'} == set(models.__all__)
