"""Cross-entropy baseline on `synthetic_lesions` (CARE off: alpha = 0).

care-jax train --config=synthetic_baseline --workdir=runs/baseline
"""

from care_jax.config import default_config


def get_config():
  config = default_config()
  config.care.alpha = 0.0
  return config
