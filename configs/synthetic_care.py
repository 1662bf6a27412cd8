"""CARE on `synthetic_lesions`: CE + attention loss (alpha 0.5, tau 0.5, lam 0.7).

python -m care_jax.main --config=configs/synthetic_care.py --workdir=runs/care
"""

from care_jax.config import default_config


def get_config():
  config = default_config()
  config.care.alpha = 0.5
  return config
