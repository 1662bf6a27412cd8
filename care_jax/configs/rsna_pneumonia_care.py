"""CARE on RSNA Pneumonia (3 classes): the paper's X-ray setting.

As configs/rsna_pneumonia_baseline.py (ImageNet-pretrained ResNet-50 at 224x224, ImageNet
mean/std, Adam 1e-4, batch 32, 'Lung Opacity' the rare class) plus the attention loss on the
lung-opacity boxes of the training images: alpha 0.5, lam 0.5 (X-ray), tau 0.5. The paper
fine-tunes a pretrained model; pass its weights as a local file:

    care-jax train --config=rsna_pneumonia_care --workdir=runs/rsna_care \\
        --config.data.dir=/data/rsna --config.model.pretrained=/path/to/resnet50.safetensors

The paper's two stages, in one run (`care.protocol='two_stage'`): CE alone until the
validation MCA (every 1000 steps) has not improved for 3 validations or half of training has
passed, then CE + attention loss from the best stage-1 state; `--config.care.stage1_patience`,
`.stage1_metric` and `.stage1_max_fraction` change that. As two runs instead: train
configs/rsna_pneumonia_baseline.py first, then start this one from it with
`--config.init_from=runs/rsna_baseline --config.care.protocol=from_step`.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('rsna_pneumonia', care=True, lam=0.5, num_epochs=20.0)
  config.data.rare_classes = ('Lung Opacity',)
  return config
