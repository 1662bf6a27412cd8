"""CARE on DermaMNIST (MedMNIST+, HAM10000 at 224 px) with automatic lesion boxes.

DermaMNIST is HAM10000, the paper's skin data, as one MedMNIST+ file with its official
7:1:2 split; it has no lesion boxes, so CARE trains on the Otsu boxes of `care_jax.boxes`
(`data.box_source='otsu'`: the largest region above an Otsu threshold of the log red/green
chromaticity, drawn once on the dermatofibroma training images and cached). Dermatofibroma (DF,
115 of the 10,015 images, the rarest class) is the rare class, as in the paper. Put
`dermamnist_224.npz` (docs/datasets.md, "MedMNIST+") into DATA_DIR:

    care-jax train --config=dermamnist_care --workdir=runs/dermamnist_care \\
        --config.data.dir=DATA_DIR --config.model.pretrained=/path/to/resnet50.safetensors

The paper's recipe otherwise (as configs/isic2018_care.py): a ResNet-50 at 224x224 with
ImageNet mean/std (ImageNet-pretrained when `model.pretrained` is given, else from scratch at
Adam 1e-3), batch 32, 30 epochs, alpha 0.5, lam 0.7 (skin), tau 0.5 and the two stages in one
run; validation every 200 steps (about an epoch of the 7,007 training images) so that stage 1
can end before half of training. `--config.care.alpha=0` gives the CE baseline,
`--config.data.medmnist.size=28` (or 64, 128) the smaller files with `--config.data.image_size`
to match.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('medmnist', care=True, lam=0.7, num_epochs=30.0)
  config.data.medmnist.flag = 'dermamnist'
  config.data.medmnist.size = 224
  config.data.rare_classes = ('dermatofibroma',)
  config.data.box_source = 'otsu'
  config.train.eval_every_steps = 200
  return config
