"""CARE on ISIC 2018 Task 3 with EfficientNet-B3 at 300x300 (the ISIC challenges' backbone).

As configs/isic2018_care.py (the paper's skin setting: Adam 1e-4, batch 32, DF the rare class,
alpha 0.5, lam 0.7, tau 0.5, the two stages in one run) with an ImageNet-pretrained EfficientNet-B3
at its native 300 px instead of ResNet-50 at 224 px. The attention maps are Grad-CAM of the
last stage's 10x10 map through the dropout + linear head. The weights are a local torchvision
(`efficientnet_b3`) or timm (`efficientnet_b3`) file; the reader tells the two apart:

    care-jax train --config=isic2018_care_efficientnet_b3 --workdir=runs/isic2018_effb3 \\
        --config.data.dir=/data/isic2018 \\
        --config.model.pretrained=/path/to/efficientnet_b3.safetensors
"""

from care_jax.configs import isic2018_care


def get_config():
  config = isic2018_care.get_config()
  config.model.name = 'efficientnet_b3'
  config.data.image_size = 300
  return config
