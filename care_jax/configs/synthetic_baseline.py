"""Cross-entropy baseline on `synthetic_lesions` (CARE off: alpha = 0).

python -m care_jax.main --config=configs/synthetic_baseline.py --workdir=runs/baseline
"""

from care_jax.config import default_config


def get_config():
  config = default_config()
  config.care.alpha = 0.0
  return config
