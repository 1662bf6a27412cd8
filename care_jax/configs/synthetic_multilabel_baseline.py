"""Multi-label baseline on `synthetic_multilabel`: sigmoid binary cross-entropy alone (alpha 0).

care-jax train --config=synthetic_multilabel_baseline --workdir=runs/ml_base
"""

from care_jax.configs import synthetic_multilabel_care


def get_config():
  config = synthetic_multilabel_care.get_config()
  config.care.alpha = 0.0
  return config
