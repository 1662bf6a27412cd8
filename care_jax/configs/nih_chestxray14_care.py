"""Multi-label CARE on NIH ChestX-ray14, CheXNet's setting: DenseNet-121, 14 findings.

An ImageNet-pretrained DenseNet-121 (torchvision or timm weights, a local file) at 224x224 with
ImageNet mean/std, one sigmoid per finding (sigmoid binary cross-entropy), Adam 1e-4, batch 32,
the official train_val / test lists with a patient-level validation split, and the images of
the box list moved to training (`boxed_images='train'`), so that CARE pushes the map of each of
their findings (the 8 with boxes) into that finding's box; alpha 0.5, lam 0.5 (X-ray), tau 0.5,
the paper's two stages, stage 1 ending and checkpoints ranked on the validation mean AUROC:

    care-jax train --config=nih_chestxray14_care --workdir=runs/nih_care \\
        --config.data.dir=/data/chestxray14 --config.model.pretrained=/path/to/densenet121.pth

`--config.care.alpha=0` gives the baseline with the same data and schedule. With
`--config.data.nih_chestxray14.boxed_images=test` the boxed images stay in the official test
list, where the literature scores localisation (no training image then has a box: CARE has
nothing to supervise). docs/datasets.md describes the dataset; docs/training.md the
multi-label task.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('nih_chestxray14', care=True, lam=0.5, num_epochs=10.0)
  config.task = 'multilabel'
  config.model.name = 'densenet121'
  config.care.stage1_metric = 'mean_auroc'
  config.data.nih_chestxray14.mode = 'multilabel'
  config.data.nih_chestxray14.boxed_images = 'train'
  return config
