"""Default configuration: CARE with a tiny CNN on the generated `synthetic_lesions`.

Every field a config can set is here (see care_jax/config.py). Run:

    care-jax train --config=default --workdir=runs/default
"""

from care_jax.config import default_config


def get_config():
  return default_config()
