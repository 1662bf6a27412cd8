"""The configuration schema: every default, every check, and configs in and out.

Every `configs/*.py` file starts from :func:`default_config` and changes a few
fields, so all configs share one schema: ml_collections then rejects unknown
keys and wrongly typed overrides on the command line, and :func:`validate`
rejects values that are well typed but meaningless (naming the key). The
library below this package (math, models, data) takes plain arguments or the
sub-configs built here; nothing else defines a config default.

===========================  ==================================================
module                       what it owns
===========================  ==================================================
`care_jax.config.schema`     the defaults of every key (:func:`default_config`
                             and its parts), the paper's recipe
`care_jax.config.checks`     :func:`validate` and its parts: one error form,
                             ``config.<key> = <value>: <why>``
`care_jax.config.io`         dotted keys, JSON, diffs, overrides, the packaged
                             config files
===========================  ==================================================

Every public name of the three is available here (``care_jax.config.validate``).
Building or importing a config loads no TensorFlow: a trained model can be
loaded (`care_jax.trained_run.load_model`) where only JAX is installed.

Example::

  config = default_config()
  config = apply_overrides(config, ['care.alpha=0.3', 'train.num_steps=200'])
  validate(config)
"""

from care_jax import _deprecated
from care_jax.config.checks import MULTILABEL_BOX_SOURCES
from care_jax.config.checks import validate
from care_jax.config.checks import validate_augment
from care_jax.config.checks import validate_boxes
from care_jax.config.checks import validate_data
from care_jax.config.checks import validate_loss
from care_jax.config.io import CONFIGS_DIR
from care_jax.config.io import apply_overrides
from care_jax.config.io import config_file
from care_jax.config.io import differences
from care_jax.config.io import flatten
from care_jax.config.io import from_json
from care_jax.config.io import get
from care_jax.config.io import load_config
from care_jax.config.io import packaged_configs
from care_jax.config.io import to_json
from care_jax.config.schema import ACTDIFF_LAYERS
from care_jax.config.schema import AUTO
from care_jax.config.schema import BOX_SOURCES
from care_jax.config.schema import CARE_OUTER
from care_jax.config.schema import CARE_PROTOCOLS
from care_jax.config.schema import CHEXPERT_COMPETITION
from care_jax.config.schema import CHEXPERT_POLICIES
from care_jax.config.schema import DTYPES
from care_jax.config.schema import GUIDANCE_CLASSES
from care_jax.config.schema import GUIDANCE_FORWARD_METHODS
from care_jax.config.schema import GUIDANCE_MAP_METHODS
from care_jax.config.schema import GUIDANCE_METHODS
from care_jax.config.schema import GUIDANCE_NORMALIZE
from care_jax.config.schema import HEADS
from care_jax.config.schema import MEDMNIST_FLAGS
from care_jax.config.schema import MEDMNIST_SIZES
from care_jax.config.schema import MULTILABEL_STAGE1_METRICS
from care_jax.config.schema import OPTIMIZERS
from care_jax.config.schema import PARALLEL
from care_jax.config.schema import SAMPLING
from care_jax.config.schema import SCHEDULES
from care_jax.config.schema import STAGE1_METRICS
from care_jax.config.schema import augment_on_device
from care_jax.config.schema import default_augment_config
from care_jax.config.schema import default_box_config
from care_jax.config.schema import default_config
from care_jax.config.schema import default_data_config
from care_jax.config.schema import default_guidance_config
from care_jax.config.schema import default_loss_config
from care_jax.config.schema import paper_config
from care_jax.config.schema import resolve_dependent_keys
from care_jax.config.schema import resolve_recipe

__all__ = [
  'ACTDIFF_LAYERS',
  'AUTO',
  'BOX_SOURCES',
  'CARE_OUTER',
  'CARE_PROTOCOLS',
  'CHEXPERT_COMPETITION',
  'CHEXPERT_POLICIES',
  'CONFIGS_DIR',
  'DTYPES',
  'GUIDANCE_CLASSES',
  'GUIDANCE_FORWARD_METHODS',
  'GUIDANCE_MAP_METHODS',
  'GUIDANCE_METHODS',
  'GUIDANCE_NORMALIZE',
  'HEADS',
  'MEDMNIST_FLAGS',
  'MEDMNIST_SIZES',
  'MULTILABEL_BOX_SOURCES',
  'MULTILABEL_STAGE1_METRICS',
  'OPTIMIZERS',
  'PARALLEL',
  'SAMPLING',
  'SCHEDULES',
  'STAGE1_METRICS',
  'apply_overrides',
  'augment_on_device',
  'config_file',
  'default_augment_config',
  'default_box_config',
  'default_config',
  'default_data_config',
  'default_guidance_config',
  'default_loss_config',
  'differences',
  'flatten',
  'from_json',
  'get',
  'load_config',
  'packaged_configs',
  'paper_config',
  'resolve_dependent_keys',
  'resolve_recipe',
  'to_json',
  'validate',
  'validate_augment',
  'validate_boxes',
  'validate_data',
  'validate_loss',
]

__getattr__ = _deprecated.getattr_of(__name__)
