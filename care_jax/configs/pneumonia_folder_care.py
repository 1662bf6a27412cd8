"""CARE on Kaggle's pediatric chest X-rays (chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}).

The class-folder tree of "Chest X-Ray Images (Pneumonia)" (Kermany et al. 2018), read by the
folder dataset as it is (docs/datasets.md, "Class folders"): its own train/val/test split, the
classes NORMAL and PNEUMONIA. Pass the folder that holds train/, val/ and test/:

    care-jax train --config=pneumonia_folder_care --workdir=runs/pneumonia_care \\
        --config.data.dir=/data/chest_xray --config.model.pretrained=/path/to/resnet50.safetensors

**The rare class is PNEUMONIA.** By count NORMAL is the minority (1,341 of the 5,216 training
images, against 3,875 PNEUMONIA), but CARE's boxes must hold the finding, and a normal X-ray has
none to box: the attention loss and the rare-class recall go to the class with a finding.
The set has no boxes: CARE trains on automatic ones (`data.box_source='otsu'` with
`data.boxes.otsu.contrast='brightness'`, the luma contrast for bright X-ray findings: the
largest bright region, meant to hold the chest, so that attention leaves the borders, the L/R
markers and the text that a classifier of this set can learn as shortcuts). These are coarse
boxes, not the opacities, and have not been measured against any annotation.

The paper's X-ray recipe otherwise (as configs/rsna_pneumonia_care.py): a ResNet-50 at 224x224
with ImageNet mean/std, batch 32, 20 epochs, alpha 0.5, lam 0.5 (X-ray), tau 0.5 and the two
stages in one run, validation every 100 steps. The images are stored at 256 px (PNG, decoded
whole: docs/datasets.md). Kaggle's val/ folder holds only 16 images, which makes the validation
that ends stage 1 and ranks checkpoints noisy; moving val/ away makes the folder dataset hold
`data.folder.validation_fraction` of train out instead. `--config.care.alpha=0` gives the CE
baseline.
"""

from care_jax.config import paper_config


def get_config():
  config = paper_config('folder', care=True, lam=0.5, num_epochs=20.0)
  config.data.rare_classes = ('PNEUMONIA',)
  config.data.box_source = 'otsu'
  config.data.boxes.otsu.contrast = 'brightness'
  config.data.folder.stored_size = 256
  config.train.eval_every_steps = 100
  return config
