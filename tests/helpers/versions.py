"""Earlier versions: the config keys added since 0.1, and the runs written by 0.1 and 0.2.

The tests of the schema (tests/config/schema_test.py) and of reading old runs
(tests/trained_run_test.py, tests/inference_test.py, tests/integration/resume_test.py) share
these.
"""

import json
import os

from care_jax import config as config_lib
from tests.helpers import paths

# A run written by care-jax 0.1.0 (tests/fixtures/make_v0_1_run.py) and one by 0.2
# (tests/fixtures/make_v0_2_run.py).
V0_1_RUN = str(paths.FIXTURES / 'v0_1_run')
V0_2_RUN = str(paths.FIXTURES / 'v0_2_run')
# The config of 0.1 and those of its packaged config files, as 0.1 built them.
V0_1_CONFIGS = paths.FIXTURES / 'v0_1_configs.json'

# Config keys added after 0.2 (and so after 0.1), with the defaults that keep the behaviour of
# 0.2: runs of 0.2 load and resume with them.
ADDED_SINCE_0_2 = {
  'compilation_cache_dir': None,
  # 'care': the care.* keys' loss, as before; the others are read by the other methods only.
  'guidance.method': 'care',
  'guidance.weight': 1.0,
  'guidance.classes': 'default',
  'guidance.normalize': 'default',
  'guidance.stop_gradient_weights': 'default',
}

# Config keys added after 0.1, with the defaults that keep 0.1's behaviour: runs of
# 0.1 load and resume with them.
ADDED_SINCE_0_1 = {
  **ADDED_SINCE_0_2,
  'train.test_checkpoint': 'last',
  'care.protocol': 'from_step',
  'care.stage1_metric': 'auto',  # 'mca' for 0.1's multi-class task.
  'care.stage1_patience': 3,
  'care.stage1_max_fraction': 0.5,
  'care.outer': 'uniform',
  'care.outer_start': 1.0,
  'care.outer_delta': 0.1,
  'care.target': 'logit',
  'task': 'multiclass',
  'data.augment.on_device': 'auto',  # False on a CPU: 0.1's host augmentation.
  'data.isic2018.supervision': 'box',
  'data.nih_chestxray14.mode': 'auto',  # 'boxed', 0.1's, for a multi-class task.
  'data.nih_chestxray14.boxed_images': 'test',
}

# ADDED_SINCE_0_1 as a run of 0.1 loads (`care_jax.config.from_json` resolves the keys that
# follow its task).
LOADED_SINCE_0_1 = {
  **ADDED_SINCE_0_1,
  'care.stage1_metric': 'mca',
  'data.nih_chestxray14.mode': 'boxed',
}

# Sub-configs added after 0.2 whose values 0.2 never read (datasets and guidance methods it did
# not have).
ADDED_SECTIONS_SINCE_0_2 = (
  'data.medmnist.',
  'data.chexpert.',
  'data.decoy_digits.',
  # The hyperparameters of guidance methods other than CARE.
  'guidance.haics.',
  'guidance.res.',
  'guidance.gain.',
  'guidance.sgt.',
  'guidance.actdiff.',
)

# And those added after 0.1.
ADDED_SECTIONS_SINCE_0_1 = ('data.synthetic_multilabel.', *ADDED_SECTIONS_SINCE_0_2)

# Values that every packaged config changed since 0.1 (runs of 0.1 saved theirs).
CHANGED_SINCE_0_1 = {
  # Left to the recipe: 1e-4 with model.pretrained, 1e-3 from scratch (resolve_recipe).
  'train.learning_rate': None
}

# And those that single configs changed.
CONFIG_CHANGED_SINCE_0_1 = {
  # The two stages end stage 1 on validations (0.1 validated at the end only).
  'folder.py': {'train.eval_every_steps': 100},
  # And alpha 0.7: the demo's target on both generator seeds (docs/results.md).
  'synthetic_care.py': {'train.eval_every_steps': 50, 'care.alpha': 0.7},
}


def v0_2_config(*more):
  """Today's default config with the overrides of the run written by 0.2, and `more`."""
  with open(os.path.join(V0_2_RUN, 'overrides.json')) as f:
    return config_lib.apply_overrides(config_lib.default_config(), [*json.load(f), *more])
