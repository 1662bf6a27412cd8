"""CARE on your own data in the folder layout (labels.csv, optional boxes.csv; see README).

    DATA_DIR/labels.csv   image,label[,split][,group]
    DATA_DIR/boxes.csv    image,xmin,ymin,xmax,ymax   (pixels; optional)

    care-jax train --config=folder --workdir=runs/mine \\
        --config.data.dir=/path/to/DATA_DIR --config.model.pretrained=/path/to/resnet50.safetensors

The paper's recipe: ImageNet-pretrained ResNet-50 at 224x224 with ImageNet mean/std, Adam 1e-4,
alpha 0.5, lam 0.7, tau 0.5, and its two stages in one run: CE alone until the validation MCA
(every 100 steps) has not improved for 3 validations or half of training has passed, then CE +
attention loss from the best stage-1 state. The training images listed in boxes.csv carry the
attention loss; the rare classes (for the rare-class recall) default to the classes with boxes
(`--config.data.rare_classes="('my_class',)"` to choose). Without `model.pretrained` the model
trains from scratch at the from-scratch recipe's Adam 1e-3 (`care_jax.config.resolve_recipe`);
a ResNet-50 from scratch needs far more data than a small own set, where
`--config.model.name=tiny_cnn --config.data.image_size=64` is the better start.
`--config.care.alpha=0` gives the CE baseline. Split and storage parameters:
`--config.data.folder.split_seed=1`, `.test_fraction`, `.validation_fraction`,
`.skip_bad_rows=True`, `.stored_size`.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('folder', care=True, lam=0.7, num_epochs=30.0)
  # Stage 1 ends on the validation MCA: validate often enough for a few
  # hundred steps to end it (small own datasets validate in seconds).
  config.train.eval_every_steps = 100
  return config
