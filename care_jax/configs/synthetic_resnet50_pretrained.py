"""CARE fine-tuning of an ImageNet-pretrained ResNet-50 (the paper's recipe) on `synthetic_lesions`.

The weights come from a local file you already have (nothing is downloaded), e.g. torchvision's
`resnet50-11ad3fa6.pth` converted to safetensors, or the `.pth` itself when torch is installed:

    care-jax train --config=synthetic_resnet50_pretrained \\
        --workdir=runs/r50_care --config.model.pretrained=/path/to/resnet50.safetensors

Inputs are normalised with ImageNet's mean/std, as the checkpoint expects; Adam 1e-4 (the recipe
of a pretrained start) and 224x224 inputs as in the paper (the generated images are upsampled
from 64x64).
"""

from care_jax.config import default_config
from care_jax.models import IMAGENET_MEAN
from care_jax.models import IMAGENET_STD


def get_config():
  config = default_config()
  config.model.name = 'resnet50'
  config.data.image_size = 224
  config.data.mean = IMAGENET_MEAN
  config.data.std = IMAGENET_STD
  config.train.batch_size = 16
  return config
