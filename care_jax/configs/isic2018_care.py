"""CARE on ISIC 2018 Task 3 (HAM10000): the paper's skin setting.

As configs/isic2018_baseline.py (ImageNet-pretrained ResNet-50 at 224x224, ImageNet mean/std,
Adam 1e-4, batch 32, DF the rare class) plus the attention loss on the DF training images' boxes
(derived from the HAM10000 lesion masks by default): alpha 0.5, lam 0.7 (skin), tau 0.5. The
paper fine-tunes a pretrained model; pass its weights as a local file:

    care-jax train --config=isic2018_care --workdir=runs/isic2018_care \\
        --config.data.dir=/data/isic2018 --config.model.pretrained=/path/to/resnet50.safetensors

The paper's two stages, in one run (`care.protocol='two_stage'`): CE alone until the
validation MCA (every 1000 steps) has not improved for 3 validations or half of training has
passed, then CE + attention loss from the best stage-1 state; `--config.care.stage1_patience`,
`.stage1_metric` and `.stage1_max_fraction` change that. As two runs instead: train
configs/isic2018_baseline.py first, then start this one from it with
`--config.init_from=runs/isic2018_baseline --config.care.protocol=from_step`.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('isic2018', care=True, lam=0.7, num_epochs=30.0)
  config.data.rare_classes = ('DF',)
  return config
