"""Multi-label CARE's setting on ChestMNIST (MedMNIST+: NIH ChestX-ray14 at 224 px, 14 findings).

ChestMNIST is NIH ChestX-ray14 with its official patient-level split, as one MedMNIST+ file: 14
findings, several per image (`task='multilabel'`, one sigmoid per finding), hernia the rarest
(the rare finding here). Put `chestmnist_224.npz` (docs/datasets.md, "MedMNIST+") into
DATA_DIR:

    care-jax train --config=chestmnist_care --workdir=runs/chestmnist_care \\
        --config.data.dir=DATA_DIR --config.model.pretrained=/path/to/densenet121.pth

CheXNet's model and the paper's X-ray recipe otherwise (as configs/nih_chestxray14_care.py): a
DenseNet-121 at 224x224 with ImageNet mean/std, Adam, batch 32, 10 epochs, alpha 0.5, lam 0.5,
tau 0.5, the two stages with stage 1 ending on the validation mean AUROC.

ChestMNIST has no boxes: the automatic boxes (`data.box_source='otsu'` on brightness, as
configs/pneumonia_folder_care.py) box each hernia-positive training image's largest bright
region, meant to hold the chest, one box per image given to its hernia finding (the generator
is class-agnostic). These are coarse boxes, not the hernia, and have not been measured against
any annotation. The NIH box list does not apply (the file has no image names);
`configs/nih_chestxray14_care.py` trains CARE on the 984 NIH boxes of the full-size images.
`--config.care.alpha=0` gives the sigmoid-BCE baseline.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('medmnist', care=True, lam=0.5, num_epochs=10.0)
  config.task = 'multilabel'
  config.model.name = 'densenet121'
  config.care.stage1_metric = 'mean_auroc'
  config.data.medmnist.flag = 'chestmnist'
  config.data.medmnist.size = 224
  config.data.rare_classes = ('hernia',)
  config.data.box_source = 'otsu'
  config.data.boxes.otsu.contrast = 'brightness'
  return config
