"""CARE on ISIC 2018 Task 3 with ConvNeXt-T at 224x224.

As configs/isic2018_care.py (the paper's skin setting: Adam 1e-4, batch 32, DF the rare class,
alpha 0.5, lam 0.7, tau 0.5, the two stages in one run) with an ImageNet-pretrained ConvNeXt-T
instead of ResNet-50. The attention maps are Grad-CAM of the last stage's 7x7 map through the
LayerNorm + linear head. The weights are a local torchvision (`convnext_tiny`) or timm
(`convnext_tiny`) file; the reader tells the two apart:

    care-jax train --config=isic2018_care_convnext_tiny --workdir=runs/isic2018_convnext \\
        --config.data.dir=/data/isic2018 \\
        --config.model.pretrained=/path/to/convnext_tiny.safetensors
"""

from care_jax.configs import isic2018_care


def get_config():
  config = isic2018_care.get_config()
  config.model.name = 'convnext_tiny'
  return config
