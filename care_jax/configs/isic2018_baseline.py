"""Cross-entropy baseline on ISIC 2018 Task 3 (HAM10000), the paper's skin setting.

ImageNet-pretrained ResNet-50 at 224x224, ImageNet mean/std, Adam 1e-4, batch 32, CARE off
(alpha = 0). The data are read from your files (see README, "Datasets"; nothing is downloaded):
the stratified 80/20 split grouped by lesion (`data.isic2018.split='stratified'` for the paper's
image-level split), 10% of train held out for validation, dermatofibroma (DF) the rare class.
The paper fine-tunes a pretrained model: pass its weights as a local file, e.g. torchvision's
`resnet50-11ad3fa6.pth` converted to safetensors:

    care-jax train --config=isic2018_baseline \\
        --workdir=runs/isic2018_baseline --config.data.dir=/data/isic2018 \\
        --config.model.pretrained=/path/to/resnet50.safetensors

This run is also CARE's stage 1 (CE until it plateaus); see configs/isic2018_care.py.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('isic2018', care=False, lam=0.7, num_epochs=30.0)
  config.data.rare_classes = ('DF',)
  return config
