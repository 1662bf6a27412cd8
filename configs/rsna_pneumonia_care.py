"""CARE on RSNA Pneumonia (3 classes): the paper's X-ray setting.

As configs/rsna_pneumonia_baseline.py (ImageNet-pretrained ResNet-50 at 224x224, ImageNet
mean/std, Adam 1e-4, batch 32, 'Lung Opacity' the rare class) plus the attention loss on the
lung-opacity boxes of the training images: alpha 0.5, lam 0.5 (X-ray), tau 0.5. The paper
fine-tunes a pretrained model; pass its weights as a local file:

    python -m care_jax.main --config=configs/rsna_pneumonia_care.py --workdir=runs/rsna_care \\
        --config.data.dir=/data/rsna --config.model.pretrained=/path/to/resnet50.safetensors

The paper's two stages: train configs/rsna_pneumonia_baseline.py first (stage 1, CE until it
plateaus), then start this run from it with `--config.init_from=runs/rsna_baseline` instead of
`--config.model.pretrained`; or, in one run, `--config.care.start_step=N` trains CE alone for the
first N steps.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('rsna_pneumonia', care=True, lam=0.5, num_epochs=20.0)
  config.data.rare_classes = ('Lung Opacity',)
  return config
