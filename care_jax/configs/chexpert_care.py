"""Multi-label CARE on CheXpert v1.0: DenseNet-121, the five competition observations, U-Ones.

An ImageNet-pretrained DenseNet-121 (a local torchvision or timm file) at 224x224 with ImageNet
mean/std, one sigmoid per observation (sigmoid binary cross-entropy), Adam 1e-4, batch 32, 3
epochs (Irvin et al. 2019 train 3), frontal views only, uncertain labels read as positive
('U-Ones'; `--config.data.chexpert.uncertainty=U-Zeros` for the other trainable policy),
valid.csv as the test split and a patient-level validation split from train.csv; alpha 0.5,
lam 0.5 (X-ray), tau 0.5, the paper's two stages, stage 1 ending and checkpoints ranked on the
validation mean AUROC:

    care-jax train --config=chexpert_care --workdir=runs/chexpert_care \\
        --config.data.dir=/data/CheXpert-v1.0-small --config.model.pretrained=densenet121.pth

CheXpert has no boxes: the automatic boxes (`data.box_source='otsu'` on brightness, as
configs/chestmnist_care.py) box the largest bright region, meant to hold the chest, of each
training image positive for a rare observation, one box per image given to each of its rare
observations (the generator is class-agnostic). The rare observation is `data.rare_classes`,
or by default the rarest in the training split. These are coarse boxes, not the findings, and
have not been measured against any annotation. To train on boxes of your own instead, put a
`boxes.csv` in data.dir (image,label,xmin,ymin,xmax,ymax; docs/datasets.md) and add
`--config.data.box_source=manual`. `--config.care.alpha=0` gives the sigmoid-BCE baseline with
the same data and schedule.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('chexpert', care=True, lam=0.5, num_epochs=3.0)
  config.task = 'multilabel'
  config.model.name = 'densenet121'
  config.care.stage1_metric = 'mean_auroc'
  config.data.chexpert.uncertainty = 'U-Ones'
  config.data.chexpert.frontal_only = True
  config.data.box_source = 'otsu'
  config.data.boxes.otsu.contrast = 'brightness'
  return config
