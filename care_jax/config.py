"""The default experiment configuration and its validation.

Every `configs/*.py` file starts from :func:`default_config` and changes a few
fields, so all configs share one schema: ml_collections then rejects unknown
keys and wrongly-typed overrides on the command line, and :func:`validate`
rejects values that are well-typed but meaningless (naming the key).
"""

import re
import sys

from absl import app
import ml_collections
from ml_collections import config_dict

from care_jax import boxes
from care_jax import imbalance
from care_jax import models

OPTIMIZERS = ('adam', 'sgd')
SCHEDULES = ('constant', 'cosine', 'step')
PARALLEL = ('mesh', 'pmap')
DTYPES = ('float32', 'bfloat16')
ATTENTION = ('auto', 'cam', 'grad_cam')


def default_config() -> ml_collections.ConfigDict:
  """CARE on `synthetic_lesions` with a tiny CNN: the schema of every config."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  from care_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config.data = pipeline.default_data_config()
  # The generators' settings for data.box_source (care_jax.boxes).
  config.data.boxes = boxes.default_box_config()

  config.model = ml_collections.ConfigDict()
  config.model.name = 'tiny_cnn'
  # 'linear' (GAP + Dense) keeps Grad-CAM in closed form; 'bn_linear' is the
  # official code's head; 'default' picks the architecture's own head.
  config.model.head = 'default'
  # A local torchvision/timm checkpoint (.safetensors, or .pth with torch
  # installed) to start from; set data.mean/std to models.IMAGENET_MEAN/STD.
  config.model.pretrained = config_dict.placeholder(str)

  config.care = ml_collections.ConfigDict()
  config.care.alpha = 0.5  # 0 disables the attention loss (CE baseline).
  config.care.tau = 0.5
  config.care.lam = 0.7
  config.care.start_step = 0  # Stage 2 starts here; CE only before it.
  # 'auto': closed-form CAM for GAP + linear heads, Grad-CAM via the head's
  # VJP otherwise. Both give the same normalised map for linear heads.
  config.care.attention = 'auto'
  config.care.reduction = 'mean'

  # The classification term: 'ce', 'weighted_ce' (CSL), 'focal', ... (see
  # care_jax.imbalance); combinable with CARE (care.alpha > 0).
  config.loss = imbalance.default_loss_config()

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32  # Global batch, split over all devices.
  config.train.num_steps = 1000  # > 0 wins over num_epochs.
  config.train.num_epochs = 0.0
  config.train.optimizer = 'adam'
  # The paper fine-tunes a pretrained ResNet-50 with Adam 1e-4; the tiny CNN
  # trained from scratch needs 1e-3 (at 1e-4 it never learns the rare classes
  # in 1000 steps, with or without CARE).
  config.train.learning_rate = 1e-3
  config.train.momentum = 0.9  # SGD only.
  config.train.weight_decay = 0.0
  config.train.schedule = 'constant'
  config.train.warmup_steps = 0
  # 'step' schedule: multiply by step_factor at these fractions of training.
  config.train.step_boundaries = (0.5, 0.75)
  config.train.step_factor = 0.1
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 0  # 0: evaluate only at the end.
  config.train.eval_batch_size = 128
  config.train.progress = True
  # A step whose loss or gradient is NaN/Inf is skipped (parameters, optimizer
  # and BatchNorm statistics kept); this many in a row stop the run.
  config.train.max_consecutive_nonfinite = 5

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 200  # 0: only at the end.
  config.checkpoint.keep = 2  # The latest K checkpoints.
  # The best N by validation MCA (evaluated every train.eval_every_steps,
  # and at the end), besides the latest ones. 0: latest only.
  config.checkpoint.keep_best = 1
  config.checkpoint.async_save = True  # Write while training goes on.
  # A previous run's workdir (e.g. stage 1) whose best checkpoint gives the
  # initial params and BatchNorm statistics; optimizer and step start fresh.
  config.init_from = config_dict.placeholder(str)

  config.parallel = 'mesh'
  config.dtype = 'float32'
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key whose value makes no sense."""

  def check(ok: bool, key: str, message: str) -> None:
    if not ok:
      raise ValueError(f'config.{key} = {config_dict_get(config, key)!r}: {message}')

  check(config.model.name in models.MODEL_NAMES, 'model.name',
        f'must be one of {models.MODEL_NAMES}')
  check(not config.model.pretrained or config.model.name in models.PRETRAINED_MODEL_NAMES,
        'model.pretrained', f'needs model.name in {models.PRETRAINED_MODEL_NAMES}')
  check(config.model.head in ('default', 'linear', 'bn_linear', 'vgg'), 'model.head',
        "must be one of 'default', 'linear', 'bn_linear', 'vgg'")
  check(0.0 <= config.care.alpha <= 1.0, 'care.alpha', 'must lie in [0, 1]')
  check(config.care.tau > 0, 'care.tau', 'must be > 0')
  check(config.care.lam >= 0, 'care.lam', 'must be >= 0')
  check(config.care.start_step >= 0, 'care.start_step', 'must be >= 0')
  check(config.care.attention in ATTENTION, 'care.attention', f'must be one of {ATTENTION}')
  check(config.care.reduction in ('mean', 'sum'), 'care.reduction', "must be 'mean' or 'sum'")
  imbalance.validate_loss_config(config.loss)
  check(config.data.box_source in boxes.BOX_SOURCES, 'data.box_source',
        f'must be one of {boxes.BOX_SOURCES}')
  check(config.train.batch_size > 0, 'train.batch_size', 'must be > 0')
  check(config.train.num_steps > 0 or config.train.num_epochs > 0, 'train.num_steps',
        'set train.num_steps or train.num_epochs to a positive number')
  check(config.train.optimizer in OPTIMIZERS, 'train.optimizer', f'must be one of {OPTIMIZERS}')
  check(config.train.learning_rate > 0, 'train.learning_rate', 'must be > 0')
  check(config.train.schedule in SCHEDULES, 'train.schedule', f'must be one of {SCHEDULES}')
  check(config.train.warmup_steps >= 0, 'train.warmup_steps', 'must be >= 0')
  check(all(0 < b < 1 for b in config.train.step_boundaries), 'train.step_boundaries',
        'fractions of training strictly between 0 and 1')
  check(config.train.log_every_steps > 0, 'train.log_every_steps', 'must be > 0')
  check(config.train.eval_every_steps >= 0, 'train.eval_every_steps', 'must be >= 0')
  check(config.train.eval_batch_size > 0, 'train.eval_batch_size', 'must be > 0')
  check(config.train.max_consecutive_nonfinite >= 1, 'train.max_consecutive_nonfinite',
        'must be >= 1')
  check(config.checkpoint.every_steps >= 0, 'checkpoint.every_steps',
        'must be >= 0 (0: only at the end)')
  check(config.checkpoint.keep >= 1, 'checkpoint.keep', 'must be >= 1 (resuming needs one)')
  check(config.checkpoint.keep_best >= 0, 'checkpoint.keep_best', 'must be >= 0')
  check(config.parallel in PARALLEL, 'parallel', f'must be one of {PARALLEL}')
  check(config.dtype in DTYPES, 'dtype', f'must be one of {DTYPES}')


def config_dict_get(config: ml_collections.ConfigDict, dotted_key: str):
  """`config['a.b.c']` for a dotted key."""
  value = config
  for part in dotted_key.split('.'):
    value = value[part]
  return value


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies `key=value` strings (as on the command line) to a copy of config.

  Values are parsed as Python literals when they can be (`0.3`, `True`,
  `(0.5, 0.75)`) and kept as strings otherwise; ml_collections then enforces
  the field's type, and unknown keys raise KeyError naming the key.
  """
  import ast  # pylint: disable=g-import-not-at-top

  config = config.copy_and_resolve_references()
  for override in overrides:
    key, sep, raw = override.partition('=')
    if not sep:
      raise ValueError(f'override {override!r} is not of the form key=value')
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    *parents, leaf = key.split('.')
    try:
      node = config_dict_get(config, '.'.join(parents)) if parents else config
    except (KeyError, TypeError):  # A missing or non-dict parent.
      node = None
    if not isinstance(node, config_dict.ConfigDict) or leaf not in node:
      raise KeyError(f'unknown config key {key!r}')
    # Integers are fine where floats are expected (alpha=1).
    if isinstance(node[leaf], float) and isinstance(value, int):
      value = float(value)
    try:
      node[leaf] = value
    except TypeError as e:  # ml_collections names only the leaf.
      raise TypeError(f'config override {override!r}: {e}') from None
  return config


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flag parser, with unknown `--config.KEY=...` reported as usage errors.

  ml_collections raises a bare AttributeError (a traceback ending in
  `AttributeError: "'alphaa'"`) for an override of a key the config lacks;
  absl only reports its own flag errors cleanly. Use as
  `app.run(main, flags_parser=config.parse_flags)`.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    message = e
    while isinstance(message, BaseException) and message.args:  # Unwrap nested errors.
      message = message.args[0]
    name, _, hint = str(message).partition('\n')
    name = name.strip('\'"')
    given = [arg.split('=', 1)[0] for arg in argv[1:]
             if re.match(rf'--?(no)?\w+\.([\w.]*\.)?{re.escape(name)}(=|\.|$)', arg)]
    if not given:  # Not an override of ours (e.g. a bug in a config file).
      raise
    sys.stderr.write(f'FATAL Flags parsing error: unknown config key {name!r} in '
                     f'{", ".join(given)}. {hint}\n'
                     'Pass --helpshort or --helpfull to see help on flags.\n')
    sys.exit(1)


def paper_config(dataset: str, *, care: bool, lam: float = 0.7,
                 num_epochs: float = 30.0) -> ml_collections.ConfigDict:
  """The paper's recipe on `dataset`: the base of the real-data configs.

  An ImageNet-pretrained ResNet-50 (pass `model.pretrained`) at 224x224 with
  ImageNet mean/std, Adam 1e-4, batch 32, `num_epochs` epochs, validation every
  1000 steps; CARE with alpha 0.5, tau 0.5 and `lam` (0.7 skin, 0.5 X-ray)
  when `care`, else the CE baseline (alpha 0).
  """
  config = default_config()
  config.data.name = dataset
  config.data.image_size = 224
  config.data.mean = models.IMAGENET_MEAN
  config.data.std = models.IMAGENET_STD
  config.model.name = 'resnet50'
  config.train.optimizer = 'adam'
  config.train.learning_rate = 1e-4
  config.train.batch_size = 32
  config.train.num_steps = 0
  config.train.num_epochs = num_epochs
  config.train.eval_every_steps = 1000
  config.care.alpha = 0.5 if care else 0.0
  config.care.tau = 0.5
  config.care.lam = lam
  return config
