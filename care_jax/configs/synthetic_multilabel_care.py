"""Multi-label CARE on `synthetic_multilabel`: sigmoid BCE + attention loss per (image, finding).

care-jax train --config=synthetic_multilabel_care --workdir=runs/ml_care

Each image shows up to four lesions, one per finding (three common, two rare); a ruler comes
with the rare findings in training only. The attention map of every positive rare finding
that carries a box is pushed into that finding's box; the attention loss is the mean over the
boxed (image, finding) pairs. The paper's two stages, with stage 1 (sigmoid BCE alone) ending
when the validation mean AUROC stops improving; checkpoints are ranked by it too. Compare with
the baseline (`synthetic_multilabel_baseline`, alpha 0) over seeds:

care-jax compare --workdir=runs/ml --seeds=0-2 \
    --configs=synthetic_multilabel_baseline,synthetic_multilabel_care
"""

from care_jax.config import default_config


def get_config():
  config = default_config()
  config.task = 'multilabel'
  config.data.name = 'synthetic_multilabel'
  config.care.alpha = 0.5
  config.care.protocol = 'two_stage'
  config.care.stage1_metric = 'mean_auroc'
  config.train.eval_every_steps = 50
  return config
