"""Cross-entropy baseline on RSNA Pneumonia (3 classes), the paper's X-ray setting.

ImageNet-pretrained ResNet-50 at 224x224, ImageNet mean/std (the greyscale DICOMs are stored as
3 channels), Adam 1e-4, batch 32, CARE off (alpha = 0). The data are read from your files (see
README, "Datasets"; nothing is downloaded): a stratified patient-level 80/20 split, 10% of train
held out for validation, 'Lung Opacity' the rare class. The paper fine-tunes a pretrained model:
pass its weights as a local file, e.g. torchvision's `resnet50-11ad3fa6.pth` converted to
safetensors:

    care-jax train --config=rsna_pneumonia_baseline \\
        --workdir=runs/rsna_baseline --config.data.dir=/data/rsna \\
        --config.model.pretrained=/path/to/resnet50.safetensors

This run is also CARE's stage 1 (CE until it plateaus); see configs/rsna_pneumonia_care.py.
"""

from care_jax.config import paper_config


def get_config():
  # lam is unused at alpha 0; as in rsna_pneumonia_care.
  config = paper_config('rsna_pneumonia', care=False, lam=0.5, num_epochs=20.0)
  config.data.rare_classes = ('Lung Opacity',)
  return config
