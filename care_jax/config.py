"""The configuration schema: every default, every check, and config diffs.

Every `configs/*.py` file starts from :func:`default_config` and changes a few
fields, so all configs share one schema: ml_collections then rejects unknown
keys and wrongly typed overrides on the command line, and :func:`validate`
rejects values that are well typed but meaningless (naming the key). The
library below this module (math, models, data) takes plain arguments or the
sub-configs built here; nothing else defines a config default.

Building or importing a config loads no TensorFlow: a trained model can be
loaded (`care_jax.checkpoint.load_model`) where only JAX is installed.

Example::

  config = default_config()
  config = apply_overrides(config, ['care.alpha=0.3', 'train.num_steps=200'])
  validate(config)
"""

import ast
from collections.abc import Mapping, Sequence
import copy
import json
import math
import os
import pathlib
import re
import sys
from typing import Any
import warnings

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_dict
from ml_collections import config_flags

from care_jax import imbalance
from care_jax import models
from care_jax.boxes import generators as box_generators

# The configs that ship with the package (a clone's `configs/` points here), named by file stem.
CONFIGS_DIR = pathlib.Path(__file__).with_name('configs')
OPTIMIZERS = ('adam', 'sgd')
SCHEDULES = ('constant', 'cosine', 'step')
PARALLEL = ('mesh', 'pmap')
DTYPES = ('float32', 'bfloat16')
HEADS = ('default', *models.HEAD_NAMES)
CARE_PROTOCOLS = ('from_step', 'two_stage')
# Validation metrics (higher is better) that can end stage 1.
STAGE1_METRICS = ('mca', 'rare_recall', 'accuracy', 'macro_auroc', 'mean_auroc')
# Those a multi-label run's validation has (`care_jax.metrics.multilabel_score_metrics`).
MULTILABEL_STAGE1_METRICS = ('mean_auroc', 'rare_mean_auroc', 'rare_recall', 'mean_ap')
CARE_OUTER = ('uniform', 'distance')
# The samplers of `care_jax.data.sampling` (a module that imports TensorFlow,
# so not imported here; a test keeps the two lists equal).
SAMPLING = ('instance', 'class_balanced', 'sqrt')
BOX_SOURCES = ('manual', *box_generators.METHODS)
# `data.<dataset>` parameters of the datasets read from the user's files.
_FILES_PARAMETERS = dict(
  split_seed=0, test_fraction=0.2, validation_fraction=0.1, skip_bad_rows=False, stored_size=512
)


def default_data_config() -> ml_collections.ConfigDict:
  """``config.data``: the embedded `synthetic_lesions` dataset.

  Fields: ``name`` (the dataset: 'synthetic_lesions', 'folder', 'isic2018',
  'rsna_pneumonia', 'nih_chestxray14'), ``dir`` (synthetic_lesions: the tfds
  data_dir, None: the tfds default; the other datasets: the directory with the
  user's files), ``cache_dir`` (those datasets' tfds data_dir, where they are
  prepared; None: the tfds default), ``folder``, ``isic2018``,
  ``rsna_pneumonia``, ``nih_chestxray14`` (their split and storage
  parameters), ``image_size`` (S of the yielded images), ``rare_classes``
  (class names; empty: the classes with boxes in train), ``mean`` and ``std``
  (per channel, on the [0, 1] scale) and ``synthetic`` (the parameters of
  `care_jax.data.synthetic_lesions.SyntheticLesionsConfig`). Training only:
  ``sampling`` (`SAMPLING`), ``augment`` (:func:`default_augment_config`; off
  by default), ``box_source`` ('manual' or a generator of `care_jax.boxes`),
  ``boxes`` (:func:`default_box_config`) and ``box_scale`` (training boxes
  scaled about their centres, clipped to the image).
  """
  return ml_collections.ConfigDict(
    dict(
      name='synthetic_lesions',
      # A typed placeholder, so --config.data.dir=PATH can set it.
      dir=config_dict.placeholder(str),
      image_size=64,
      rare_classes=(),
      mean=(0.5, 0.5, 0.5),
      std=(0.5, 0.5, 0.5),
      synthetic=dict(
        image_size=64,
        train_counts=(300, 300, 40, 300, 40),
        validation_counts=(50, 50, 50, 50, 50),
        test_counts=(100, 100, 100, 100, 100),
        pattern_contrast=0.3,
        artefact=True,
        artefact_rate_rare_train=0.9,
        artefact_rate_common_train=0.05,
        artefact_rate_eval=0.05,
        seed=0,
      ),
      # The parameters of care_jax.data.synthetic_multilabel (data.name =
      # 'synthetic_multilabel', a multi-label task).
      synthetic_multilabel=dict(
        image_size=64,
        num_train=1200,
        num_validation=300,
        num_test=600,
        common_rate=0.35,
        rare_rate_train=0.06,
        rare_rate_eval=0.3,
        pattern_contrast=0.2,
        artefact=True,
        artefact_rate_rare_train=0.9,
        artefact_rate_common_train=0.05,
        artefact_rate_eval=0.05,
        seed=0,
      ),
      # Datasets read from the user's files (data.dir): the prepared tfds
      # data are cached here (None: the tfds default data dir).
      cache_dir=config_dict.placeholder(str),
      folder=dict(_FILES_PARAMETERS),
      # HAM10000's boxes come from its segmentation masks by default;
      # supervision='mask' trains CARE with the masks themselves as M_in.
      isic2018=dict(
        split='lesion',
        fold=1,
        box_source='masks',
        box_csv='boxes.csv',
        supervision='box',
        **dict(_FILES_PARAMETERS, stored_size=600),
      ),
      rsna_pneumonia=dict(_FILES_PARAMETERS),
      # mode: 'boxed' (the boxed subset, one label) or 'multilabel' (all images, 14
      # findings); boxed_images: where multilabel puts the boxed images.
      nih_chestxray14=dict(_FILES_PARAMETERS, mode='boxed', boxed_images='test'),
      sampling='instance',
      augment=default_augment_config(),
      # CARE masks from the manual boxes or a generator of care_jax.boxes.
      box_source='manual',
      # The generators' settings for box_source.
      boxes=default_box_config(),
      # Scale every training box about its centre (the paper's Table 3).
      box_scale=1.0,
    )
  )


def default_augment_config() -> ml_collections.ConfigDict:
  """``config.data.augment``: off, with the paper-like DA settings.

  Fields: ``enabled`` (False: the baseline trains without augmentation; the
  paper's DA rows set it True), ``rotation`` (max |degrees|), ``hflip``,
  ``vflip``, ``brightness``, ``contrast``, ``saturation``, ``hue`` (as
  torchvision's ``ColorJitter``; 0 disables one), ``crop_scale`` (area
  fraction range; (1.0, 1.0) disables the crop) and ``crop_ratio`` (width /
  height range), ``on_device`` (warp, colour jitter and masks in the jitted
  train step instead of the tf.data pipeline: the same random draws, see
  `care_jax.training.device_augment`). See `care_jax.data.augment`.
  """
  return ml_collections.ConfigDict(
    dict(
      enabled=False,
      # Dermoscopic lesions have no canonical orientation, so any angle
      # is a plausible image; set ~10 for chest X-rays.
      rotation=180.0,
      hflip=True,
      vflip=True,
      # Mild: lesion colour is diagnostic (and separates the
      # synthetic_lesions classes), so hue moves by at most 5% of the
      # circle.
      brightness=0.2,
      contrast=0.2,
      saturation=0.2,
      hue=0.05,
      # At least half the image stays in view (torchvision's ImageNet
      # default 0.08 would often crop the lesion out).
      crop_scale=(0.5, 1.0),
      crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
      # True: the host only resizes and draws each example's geometry and colour
      # factors; the train step warps, jitters and rasterises the masks on the
      # accelerator (care_jax.training.device_augment), with the same draws.
      on_device=False,
    )
  )


def default_box_config() -> ml_collections.ConfigDict:
  """``config.data.boxes``: the generators' settings for ``data.box_source``.

  ``margin``, ``largest_component`` and ``batch_size`` apply to all methods;
  each method's sub-dict holds its own parameters (see its ``*_boxes``
  function in `care_jax.boxes`). ``cache_dir`` (None: ``<prepared dataset
  dir>/care_jax_boxes``) holds the generated boxes, keyed by method,
  parameters and inputs.
  """
  return ml_collections.ConfigDict(
    dict(
      margin=0.0,
      largest_component=True,
      batch_size=256,
      cache_dir=config_dict.placeholder(str),
      otsu=dict(contrast='log_red_green', sigma=0.05, num_bins=256),
      spectral_residual=dict(work_size=64, sigma=0.5, k=1.5),
      grad_cam=dict(
        stage1_workdir=config_dict.placeholder(str), which='best', fraction=0.6, attention='auto'
      ),
      mask=dict(masks_dir=config_dict.placeholder(str)),
    )
  )


def default_loss_config() -> ml_collections.ConfigDict:
  """``config.loss``: the classification loss and its hyperparameters.

  Fields (the keywords of `care_jax.imbalance.make_classification_loss`):
    name: one of `care_jax.imbalance.LOSS_NAMES`. 'ce'; 'weighted_ce'
      (inverse-frequency class weights normalised to sum 1, the official CARE
      CSL); 'focal'; 'class_balanced' (CE weighted by effective numbers);
      'logit_adjusted'; 'balanced_softmax'; 'ldam_drw' (LDAM, re-weighted by
      effective numbers from ``drw_start`` on). With 'ldam_drw',
      ``model.head = 'default'`` builds the cosine head 'normed_linear'
      (LDAM-DRW's ``NormedLinear``: ``ldam_s`` scales cosine logits; see
      `care_jax.models.resolve_head`); set ``model.head`` to keep another.
      The batch loss is a mean over the batch, ``sum_i w_i l_i / B``, for
      'class_balanced' and the focal ``focal_alpha`` (as their official
      codes), and the weighted mean ``sum_i w_i l_i / sum_i w_i`` for
      'weighted_ce' and the DRW phase of 'ldam_drw' (PyTorch's
      ``cross_entropy(weight=w)``, as theirs): see `care_jax.imbalance`.
    gamma: focal focusing parameter (Lin et al.: 2).
    focal_alpha: None (no class weights in the focal loss),
      'inverse_frequency' or 'class_balanced' (effective numbers with
      ``beta``: the class-balanced focal loss of Cui et al.).
    beta: effective-number beta of 'class_balanced', of the DRW weights of
      'ldam_drw' and of ``focal_alpha='class_balanced'`` (Cui et al. and
      Cao et al.: 0.9999).
    tau: temperature of 'logit_adjusted' (Menon et al.: 1).
    posthoc_tau: post-hoc logit adjustment of the predictions,
      ``argmax(z - posthoc_tau * log pi)``; 0 turns it off. Combines with any
      loss (Menon et al.: 1 for a model trained with 'ce').
    ldam_max_margin: largest LDAM margin, that of the rarest class (Cao et al.:
      0.5).
    ldam_s: LDAM logit scale (the official code: 30, on cosine logits).
    drw_start: fraction of training after which 'ldam_drw' re-weights (Cao et
      al.: epoch 160 of 200 = 0.8; 1 never re-weights: plain LDAM).
  """
  return ml_collections.ConfigDict(
    dict(
      name='ce',
      gamma=2.0,
      focal_alpha=config_dict.placeholder(str),
      beta=0.9999,
      tau=1.0,
      posthoc_tau=0.0,
      ldam_max_margin=0.5,
      ldam_s=30.0,
      drw_start=0.8,
    )
  )


def default_config() -> ml_collections.ConfigDict:
  """CARE on `synthetic_lesions` with a tiny CNN: the schema of every config."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # 'multiclass' (one label per image, softmax) or 'multilabel' (any number of
  # findings per image, one sigmoid each, CARE per (image, finding) pair): see
  # care_jax.imbalance.TASKS. A multi-label task needs a multi-label dataset
  # ('synthetic_multilabel', nih_chestxray14's multi-label mode).
  config.task = 'multiclass'
  config.data = default_data_config()

  config.model = ml_collections.ConfigDict()
  config.model.name = 'tiny_cnn'
  # 'linear' (GAP + Dense) keeps Grad-CAM in closed form; 'bn_linear' is the
  # official code's head; 'normed_linear' a cosine classifier (LDAM-DRW's);
  # 'default' picks the architecture's own head, or 'normed_linear' with
  # loss.name = 'ldam_drw' (`care_jax.models.resolve_head`).
  config.model.head = 'default'
  # A local torchvision/timm checkpoint (.safetensors, or .pth with torch
  # installed) to start from; set data.mean/std to models.IMAGENET_MEAN/STD.
  config.model.pretrained = config_dict.placeholder(str)

  config.care = ml_collections.ConfigDict()
  config.care.alpha = 0.5  # 0 disables the attention loss (CE baseline).
  config.care.tau = 0.5
  config.care.lam = 0.7
  # When the attention loss starts. 'from_step': CE alone before
  # care.start_step, CE + attention loss from it on. 'two_stage' (the paper's
  # protocol): CE alone (stage 1) until the validation care.stage1_metric
  # (validated every train.eval_every_steps) has not improved for
  # care.stage1_patience validations, or care.stage1_max_fraction of training
  # has passed; then CE + attention loss from the best stage-1 state
  # (`care_jax.training.stages`; without validations, from the last one).
  config.care.protocol = 'from_step'
  config.care.start_step = 0
  config.care.stage1_metric = 'mca'
  config.care.stage1_patience = 3
  config.care.stage1_max_fraction = 0.5
  # M_out: 'uniform' (1 outside the box, the official code) or 'distance'
  # (outer_start + outer_delta * the city-block distance in mask pixels to the
  # box, the paper's distance-weighted mask: `care_jax.distance_outer_mask`).
  config.care.outer = 'uniform'
  config.care.outer_start = 1.0
  config.care.outer_delta = 0.1
  # 'auto': closed-form CAM for GAP + linear heads, Grad-CAM via the head's
  # VJP otherwise. Both give the same normalised map for linear heads.
  config.care.attention = 'auto'
  # Whose evidence the map shows: 'logit' (z_y, the paper's) or 'contrast'
  # (z_y - mean_k z_k, also the evidence against the other classes).
  config.care.target = 'logit'
  config.care.reduction = 'mean'

  # The classification term: 'ce', 'weighted_ce' (CSL), 'focal', ... (see
  # care_jax.imbalance); combinable with CARE (care.alpha > 0).
  config.loss = default_loss_config()

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32  # Global batch, split over all devices.
  config.train.num_steps = 1000  # > 0 wins over num_epochs.
  config.train.num_epochs = 0.0
  config.train.optimizer = 'adam'
  # None: the recipe's rate (`resolve_recipe`): 1e-4 with model.pretrained
  # (the paper fine-tunes a pretrained ResNet-50 with Adam 1e-4), 1e-3 for a
  # model trained from scratch (at 1e-4 the tiny CNN never learns the rare
  # classes in 1000 steps, with or without CARE).
  config.train.learning_rate = config_dict.placeholder(float)
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
  # The state the end-of-run test block scores: 'last' (the final step) or
  # 'best' (the checkpoint of the highest validation MCA, if any was scored).
  config.train.test_checkpoint = 'last'
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


def paper_config(
  dataset: str, *, care: bool, lam: float = 0.7, num_epochs: float = 30.0
) -> ml_collections.ConfigDict:
  """The paper's recipe on `dataset`: the base of the real-data configs.

  An ImageNet-pretrained ResNet-50 (pass `model.pretrained`) at 224x224 with
  ImageNet mean/std, Adam at the recipe's rate (1e-4 with `model.pretrained`,
  1e-3 from scratch: `resolve_recipe`), batch 32, `num_epochs` epochs,
  validation every 1000 steps; with `care`, the paper's two stages (CE until
  the validation MCA has not improved for 3 evaluations, at most half of
  training, then CE + attention loss from the best stage-1 state) with alpha
  0.5, tau 0.5 and `lam` (0.7 skin, 0.5 X-ray); else the CE baseline (alpha 0).
  """
  config = default_config()
  config.data.name = dataset
  config.data.image_size = 224
  config.data.mean = models.IMAGENET_MEAN
  config.data.std = models.IMAGENET_STD
  config.model.name = 'resnet50'
  config.train.optimizer = 'adam'
  config.train.batch_size = 32
  config.train.num_steps = 0
  config.train.num_epochs = num_epochs
  config.train.eval_every_steps = 1000
  config.care.alpha = 0.5 if care else 0.0
  config.care.protocol = 'two_stage' if care else 'from_step'
  config.care.tau = 0.5
  config.care.lam = lam
  return config


def resolve_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with the fields left to the recipe (None) filled in.

  ``train.learning_rate = None`` becomes 1e-4 when ``model.pretrained`` is set
  (the paper's rate for fine-tuning an ImageNet-pretrained model) and 1e-3
  otherwise (a model trained from scratch: at 1e-4 the tiny CNN does not learn
  the rare classes of the demo in 1000 steps). A rate given explicitly is
  kept. Training resolves its config first, so the saved config (and
  metrics.json) holds the rate that was used.

  >>> resolve_recipe(default_config()).train.learning_rate
  0.001
  """
  config = config.copy_and_resolve_references()
  if config.train.learning_rate is None:
    config.train.learning_rate = 1e-4 if config.model.pretrained else 1e-3
  return config


# Checks ------------------------------------------------------------------------


class _Checker:
  """`check(ok, key, message)` raising ValueError('config.<key> = <value>: <message>')."""

  def __init__(self, root: Mapping[str, Any], prefix: str = 'config.'):
    self._root = root
    self._prefix = prefix

  def __call__(self, ok: bool, key: str, message: str) -> None:
    if not ok:
      raise ValueError(f'{self._prefix}{key} = {get(self._root, key)!r}: {message}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key whose value makes no sense."""
  check = _Checker(config)
  check(
    config.model.name in models.MODEL_NAMES, 'model.name', f'must be one of {models.MODEL_NAMES}'
  )
  check(
    not config.model.pretrained or config.model.name in models.PRETRAINED_MODEL_NAMES,
    'model.pretrained',
    f'needs model.name in {models.PRETRAINED_MODEL_NAMES}',
  )
  check(config.model.head in HEADS, 'model.head', f'must be one of {HEADS}')
  check(config.task in imbalance.TASKS, 'task', f'must be one of {imbalance.TASKS}')
  _validate_care(check, config.care)
  validate_loss(config.loss)
  validate_data(config.data)
  if config.task == 'multilabel':
    _validate_multilabel(check, config)
  else:
    check(
      config.care.stage1_metric != 'mean_auroc',
      'care.stage1_metric',
      "is a multi-label metric (config.task = 'multilabel'); a single-label run has 'mca',"
      " 'rare_recall', 'accuracy' and 'macro_auroc'",
    )
  _validate_train(check, config.train)
  check(
    config.checkpoint.every_steps >= 0,
    'checkpoint.every_steps',
    'must be >= 0 (0: only at the end)',
  )
  check(config.checkpoint.keep >= 1, 'checkpoint.keep', 'must be >= 1 (resuming needs one)')
  check(config.checkpoint.keep_best >= 0, 'checkpoint.keep_best', 'must be >= 0')
  check(config.parallel in PARALLEL, 'parallel', f'must be one of {PARALLEL}')
  check(config.dtype in DTYPES, 'dtype', f'must be one of {DTYPES}')


def _validate_multilabel(check: _Checker, config: ml_collections.ConfigDict) -> None:
  """What a multi-label task (``config.task = 'multilabel'``) cannot take."""
  why = "for config.task = 'multilabel'"
  check(
    config.loss.name in imbalance.MULTILABEL_LOSS_NAMES,
    'loss.name',
    f'must be one of {imbalance.MULTILABEL_LOSS_NAMES} {why} (sigmoid losses: '
    "'ce' binary cross-entropy, 'weighted_ce' positive-class weights, 'focal' sigmoid focal)",
  )
  check(
    config.loss.focal_alpha is None,
    'loss.focal_alpha',
    f'must be None {why} (per-class alphas are for exclusive classes)',
  )
  check(config.loss.posthoc_tau == 0, 'loss.posthoc_tau', f'must be 0 {why}')
  check(
    config.data.sampling == 'instance',
    'data.sampling',
    f"must be 'instance' {why} (a multi-label image has no single class to balance)",
  )
  check(
    config.data.box_source == 'manual',
    'data.box_source',
    f"must be 'manual' {why} (the box generators find one box per image, not per finding)",
  )
  check(
    config.care.stage1_metric in MULTILABEL_STAGE1_METRICS,
    'care.stage1_metric',
    f'must be one of {MULTILABEL_STAGE1_METRICS} {why} (the validation metrics it has)',
  )


def _validate_care(check: _Checker, care: ml_collections.ConfigDict) -> None:
  check(0.0 <= care.alpha <= 1.0, 'care.alpha', 'must lie in [0, 1]')
  check(care.tau > 0, 'care.tau', 'must be > 0')
  check(care.lam >= 0, 'care.lam', 'must be >= 0')
  check(care.start_step >= 0, 'care.start_step', 'must be >= 0')
  check(care.protocol in CARE_PROTOCOLS, 'care.protocol', f'must be one of {CARE_PROTOCOLS}')
  check(
    care.protocol == 'from_step' or care.start_step == 0,
    'care.start_step',
    "applies to care.protocol='from_step' only (the two stages find their own switch step)",
  )
  check(
    care.stage1_metric in STAGE1_METRICS, 'care.stage1_metric', f'must be one of {STAGE1_METRICS}'
  )
  check(care.stage1_patience >= 1, 'care.stage1_patience', 'must be >= 1 (validations)')
  check(
    0 < care.stage1_max_fraction < 1,
    'care.stage1_max_fraction',
    'must lie in (0, 1): stage 2 needs steps left',
  )
  check(care.outer in CARE_OUTER, 'care.outer', f'must be one of {CARE_OUTER}')
  check(care.outer_start >= 0, 'care.outer_start', 'must be >= 0')
  check(care.outer_delta >= 0, 'care.outer_delta', 'must be >= 0')
  check(
    care.attention in models.ATTENTION_METHODS,
    'care.attention',
    f'must be one of {models.ATTENTION_METHODS}',
  )
  check(care.reduction in ('mean', 'sum'), 'care.reduction', "must be 'mean' or 'sum'")
  check(
    care.target in models.ATTENTION_TARGETS,
    'care.target',
    f'must be one of {models.ATTENTION_TARGETS}',
  )


def _validate_train(check: _Checker, train: ml_collections.ConfigDict) -> None:
  check(train.batch_size > 0, 'train.batch_size', 'must be > 0')
  check(
    train.num_steps > 0 or train.num_epochs > 0,
    'train.num_steps',
    'set train.num_steps or train.num_epochs to a positive number',
  )
  check(train.optimizer in OPTIMIZERS, 'train.optimizer', f'must be one of {OPTIMIZERS}')
  check(
    train.learning_rate is None or train.learning_rate > 0,
    'train.learning_rate',
    'must be > 0 (or None: the recipe of resolve_recipe)',
  )
  check(train.schedule in SCHEDULES, 'train.schedule', f'must be one of {SCHEDULES}')
  check(train.warmup_steps >= 0, 'train.warmup_steps', 'must be >= 0')
  check(
    all(0 < b < 1 for b in train.step_boundaries),
    'train.step_boundaries',
    'fractions of training strictly between 0 and 1',
  )
  check(train.log_every_steps > 0, 'train.log_every_steps', 'must be > 0')
  check(train.eval_every_steps >= 0, 'train.eval_every_steps', 'must be >= 0')
  check(train.eval_batch_size > 0, 'train.eval_batch_size', 'must be > 0')
  check(
    train.test_checkpoint in ('last', 'best'), 'train.test_checkpoint', "must be 'last' or 'best'"
  )
  check(train.max_consecutive_nonfinite >= 1, 'train.max_consecutive_nonfinite', 'must be >= 1')


def validate_loss(loss_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first ``config.loss.<key>`` that makes no sense."""
  check = _Checker(loss_config, 'config.loss.')
  check(loss_config.name in imbalance.LOSS_NAMES, 'name', f'must be one of {imbalance.LOSS_NAMES}')
  check(loss_config.gamma >= 0, 'gamma', 'must be >= 0')
  check(
    loss_config.focal_alpha is None or loss_config.focal_alpha in imbalance.FOCAL_ALPHAS,
    'focal_alpha',
    f'must be None or one of {imbalance.FOCAL_ALPHAS}',
  )
  check(0 <= loss_config.beta < 1, 'beta', 'must lie in [0, 1)')
  check(loss_config.tau >= 0, 'tau', 'must be >= 0')
  check(loss_config.posthoc_tau >= 0, 'posthoc_tau', 'must be >= 0 (0 turns it off)')
  check(loss_config.ldam_max_margin >= 0, 'ldam_max_margin', 'must be >= 0')
  check(loss_config.ldam_s > 0, 'ldam_s', 'must be > 0')
  check(0 <= loss_config.drw_start <= 1, 'drw_start', 'must lie in [0, 1] (a fraction of training)')


def validate_data(data_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first ``data.<key>`` that makes no sense.

  What depends on the dataset itself (the channels that ``mean`` and ``std``
  must match, class names in ``rare_classes``) is checked when the dataset is
  opened.
  """
  size = data_config.image_size
  if not isinstance(size, int) or size < 1:
    raise ValueError(f'data.image_size must be a positive int, got {size!r}.')
  if data_config.sampling not in SAMPLING:
    raise ValueError(f'data.sampling must be one of {SAMPLING}, got {data_config.sampling!r}.')
  scale = data_config.box_scale
  if not (isinstance(scale, (int, float)) and scale > 0):
    raise ValueError(f'data.box_scale must be a positive number, got {scale!r}.')
  if data_config.box_source not in BOX_SOURCES:
    raise ValueError(
      f'config.data.box_source = {data_config.box_source!r}: must be one of {BOX_SOURCES}'
    )
  validate_augment(data_config.augment)
  validate_boxes(data_config.boxes)


def validate_boxes(box_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the ``data.boxes.<key>`` that makes no sense.

  The generators check their own parameters again when they run (naming the
  method), for the boxes of ``care-jax boxes`` whose flags override these.
  """
  if box_config.batch_size < 1:
    raise ValueError(f'data.boxes.batch_size must be >= 1, got {box_config.batch_size}.')
  if not box_config.margin >= 0.0:
    raise ValueError(f'data.boxes.margin must be >= 0, got {box_config.margin}.')
  contrast = box_config.otsu.contrast
  if contrast not in box_generators.CONTRASTS:
    raise ValueError(
      f'data.boxes.otsu.contrast must be one of {box_generators.CONTRASTS}, got {contrast!r}.'
    )
  if not box_config.spectral_residual.k > 0:
    raise ValueError(
      f'data.boxes.spectral_residual.k must be > 0, got {box_config.spectral_residual.k}.'
    )
  if not 0.0 < box_config.grad_cam.fraction <= 1.0:
    raise ValueError(
      f'data.boxes.grad_cam.fraction must lie in (0, 1], got {box_config.grad_cam.fraction}.'
    )
  if box_config.grad_cam.which not in ('best', 'latest'):
    raise ValueError(
      f"data.boxes.grad_cam.which must be 'best' or 'latest', got {box_config.grad_cam.which!r}."
    )
  if box_config.grad_cam.attention not in models.ATTENTION_METHODS:
    raise ValueError(
      f'data.boxes.grad_cam.attention must be one of '
      f'{models.ATTENTION_METHODS}, got {box_config.grad_cam.attention!r}.'
    )


_AUGMENT_BOOLS = ('enabled', 'hflip', 'vflip', 'on_device')
_AUGMENT_JITTER = ('brightness', 'contrast', 'saturation', 'hue')
_AUGMENT_RANGES = ('crop_scale', 'crop_ratio')


def validate_augment(augment: Mapping[str, Any]) -> None:
  """Raises ValueError naming the ``data.augment.<key>`` of an unknown field,
  a missing one, a wrong type or a value outside its range."""
  augment = augment.to_dict() if hasattr(augment, 'to_dict') else dict(augment)
  valid = set(default_augment_config())
  for problem, keys in (('unknown', set(augment) - valid), ('missing', valid - set(augment))):
    if keys:
      raise ValueError(f'data.augment has {problem} key(s) {sorted(keys)}; valid: {sorted(valid)}.')
  for key in _AUGMENT_BOOLS:
    if not isinstance(augment[key], bool):
      raise ValueError(f'data.augment.{key} must be a bool, got {augment[key]!r}.')
  rotation = augment['rotation']
  if not isinstance(rotation, (int, float)) or not 0 <= rotation <= 180:
    raise ValueError(f'data.augment.rotation must lie in [0, 180] degrees, got {rotation!r}.')
  for key in _AUGMENT_JITTER:
    value = augment[key]
    high = 0.5 if key == 'hue' else math.inf
    if not isinstance(value, (int, float)) or not 0 <= value <= high:
      bound = '[0, 0.5]' if key == 'hue' else '>= 0'
      raise ValueError(f'data.augment.{key} must be {bound}, got {value!r}.')
  for key in _AUGMENT_RANGES:
    value = augment[key]
    if (
      not isinstance(value, Sequence)
      or len(value) != 2
      or not all(isinstance(v, (int, float)) for v in value)
    ):
      raise ValueError(f'data.augment.{key} must be a pair (min, max), got {value!r}.')
    low, high = float(value[0]), float(value[1])
    if not 0.0 < low <= high or (key == 'crop_scale' and high > 1.0):
      bound = '0 < min <= max <= 1' if key == 'crop_scale' else '0 < min <= max'
      raise ValueError(f'data.augment.{key} must satisfy {bound}, got {value!r}.')


# Reading, writing and comparing configs ---------------------------------------


def get(config: Mapping[str, Any], dotted_key: str) -> Any:
  """``config['a']['b']['c']`` for the dotted key ``'a.b.c'``."""
  value = config
  for part in dotted_key.split('.'):
    value = value[part]
  return value


def to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON values (tuples become lists), as runs save it."""
  return json.loads(config.to_json_best_effort())


def from_json(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The default config updated with a saved one (`to_json`; lists back to tuples).

  Keys the saved config lacks (added to the schema later) keep their
  defaults, so the runs of older versions load.
  """

  def merge(node: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
      if isinstance(value, Mapping) and isinstance(node.get(key), ml_collections.ConfigDict):
        merge(node[key], value)
      else:
        with node.ignore_type():
          node[key] = tuple(value) if isinstance(value, list) else value

  config = default_config()
  merge(config, saved)
  return config


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """``{dotted key: value}`` of a nested (JSON) config."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def differences(
  first: Mapping[str, Any], second: Mapping[str, Any], *, ignore: Sequence[str] = ()
) -> dict[str, tuple[Any, Any]]:
  """``{dotted key: (first value, second value)}`` of the keys whose values differ.

  Both are nested JSON dicts (`to_json`). A key missing on one side counts
  as different (value ``'<missing>'``). Keys equal to or below a key of
  `ignore` are left out.
  """
  flat_first, flat_second = flatten(first), flatten(second)
  diffs = {}
  for key in sorted(set(flat_first) | set(flat_second)):
    if any(key == k or key.startswith(k + '.') for k in ignore):
      continue
    old, new = flat_first.get(key, '<missing>'), flat_second.get(key, '<missing>')
    if old != new:
      diffs[key] = (old, new)
  return diffs


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
  """Applies `key=value` strings to a copy of config, each read as `--config.key=value` is.

  ml_collections' own flag parser (`config_flags`) reads each value by its
  field's type, so an override means here what it means to `care-jax train`:
  `care.alpha=1` is the float 1.0, `train.step_boundaries=(0.3, 0.6)` a tuple,
  `care.protocol=two_stage` a string (quotes would be part of it),
  `model.pretrained=PATH` sets a typed placeholder. Later overrides of a key
  win.

  Raises:
    ValueError: for an override without ``=``.
    KeyError: ``unknown config key 'KEY'``.
    TypeError: for a value the field's type cannot take, naming the override.
  """
  # deepcopy, not copy_and_resolve_references: a resolved placeholder becomes a
  # plain None, whose type config_flags cannot override.
  config = copy.deepcopy(config)
  for override in overrides:
    key, sep, _ = override.partition('=')
    if not sep:
      raise ValueError(f'override {override!r} is not of the form key=value')
    # One parser per override, so an error names the override that caused it.
    argv = ['apply_overrides', f'--config.{override}']
    flag_values = flags.FlagValues()
    try:
      config_flags.DEFINE_config_dict(
        'config', config, flag_values=flag_values, sys_argv=argv, lock_config=False
      )
      flag_values(argv)
    except (KeyError, AttributeError, flags.UnrecognizedFlagError):
      raise KeyError(f'unknown config key {key!r}') from None
    except flags.IllegalFlagValueError as e:
      raise TypeError(f'config override {override!r}: {e}') from None
    config = flag_values.config
  return config


def packaged_configs() -> dict[str, str]:
  """The packaged configs: name -> the first line of its docstring, sorted by name."""
  configs = {}
  for path in sorted(CONFIGS_DIR.glob('*.py')):
    if path.stem != '__init__':
      docstring = ast.get_docstring(ast.parse(path.read_text())) or ''
      configs[path.stem] = docstring.partition('\n')[0]
  return configs


def config_file(name_or_path: str) -> str:
  """The config file that `--config=` names: an existing path, or a packaged config's name.

  Args:
    name_or_path: a path to a `.py` file that defines `get_config()`, or the name of a packaged
      config (`synthetic_care` for `care_jax/configs/synthetic_care.py`; see
      :func:`packaged_configs`).

  Returns:
    The path of the config file.

  Raises:
    FileNotFoundError: for a path that does not exist or an unknown name; the message lists the
      packaged names.
  """
  if os.path.isfile(name_or_path):
    return name_or_path
  packaged = CONFIGS_DIR / f'{name_or_path}.py'
  if name_or_path.isidentifier() and name_or_path != '__init__' and packaged.is_file():
    return str(packaged)
  what = 'config file' if name_or_path.endswith('.py') or os.sep in name_or_path else 'config'
  names = ', '.join(packaged_configs())
  raise FileNotFoundError(
    f'{what} {name_or_path!r} does not exist; the packaged configs are: {names}'
  )


def _resolve_config_flag(argv: list[str]) -> list[str]:
  """`argv` with `--config=NAME[:ARGS]` (or `--config NAME`) turned into the config's path."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if re.fullmatch(r'--?config', arg) and i + 1 < len(argv):
      target, prefix, value = i + 1, '', argv[i + 1]
    elif re.match(r'--?config=', arg):
      target, (flag, _, value) = i, arg.partition('=')
      prefix = flag + '='
    else:
      continue
    # ml_collections passes `path:ARGS` to get_config(ARGS); a path itself never holds ':' here.
    name, colon, config_args = value.partition(':')
    try:
      argv[target] = prefix + config_file(name) + colon + config_args
    except FileNotFoundError as e:
      sys.stderr.write(f'FATAL Flags parsing error: --config: {e}\n')
      sys.exit(1)
  return argv


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flag parser: `--config=` takes a packaged name, unknown keys are usage errors.

  `--config=synthetic_care` names `care_jax/configs/synthetic_care.py` (:func:`config_file`).
  ml_collections raises a bare AttributeError (a traceback ending in
  `AttributeError: "'alphaa'"`) for an override of a key the config lacks;
  absl only reports its own flag errors cleanly. Use as
  `app.run(main, flags_parser=config.parse_flags)`.
  """
  argv = _resolve_config_flag(argv)
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    message = e
    while isinstance(message, BaseException) and message.args:  # Unwrap nested errors.
      message = message.args[0]
    name, _, hint = str(message).partition('\n')
    name = name.strip('\'"')
    given = [
      arg.split('=', 1)[0]
      for arg in argv[1:]
      if re.match(rf'--?(no)?\w+\.([\w.]*\.)?{re.escape(name)}(=|\.|$)', arg)
    ]
    if not given:  # Not an override of ours (e.g. a bug in a config file).
      raise
    sys.stderr.write(
      f'FATAL Flags parsing error: unknown config key {name!r} in '
      f'{", ".join(given)}. {hint}\n'
      'Pass --helpshort or --helpfull to see help on flags.\n'
    )
    sys.exit(1)


def config_dict_get(config: Mapping[str, Any], dotted_key: str) -> Any:
  """Deprecated alias of :func:`get` (removed in 0.3)."""
  warnings.warn(
    'care_jax.config.config_dict_get is deprecated: use care_jax.config.get',
    DeprecationWarning,
    stacklevel=2,
  )
  return get(config, dotted_key)
