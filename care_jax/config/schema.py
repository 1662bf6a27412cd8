"""The defaults of every config key, and the recipes built on them.

:func:`default_config` builds the one tree every config shares (its parts:
:func:`default_data_config`, :func:`default_augment_config`,
:func:`default_box_config`, :func:`default_loss_config`,
:func:`default_guidance_config`); :func:`paper_config`
is the paper's recipe on a dataset, and :func:`resolve_recipe` fills in the
values left to the recipe. The library below the config (math, models, data)
takes plain arguments or these sub-configs; nothing else defines a default.
"""

from typing import Any

import jax
import ml_collections
from ml_collections import config_dict

from care_jax import models
from care_jax.boxes import generators as box_generators

OPTIMIZERS = ('adam', 'sgd')
SCHEDULES = ('constant', 'cosine', 'step')
PARALLEL = ('mesh', 'pmap')
DTYPES = ('float32', 'bfloat16')
HEADS = ('default', *models.HEAD_NAMES)
CARE_PROTOCOLS = ('from_step', 'two_stage')
# The value of a key that follows the keys it depends on (`resolve_dependent_keys`).
AUTO = 'auto'
# Validation metrics (higher is better) that can end stage 1.
STAGE1_METRICS = ('mca', 'rare_recall', 'accuracy', 'macro_auroc', 'mean_auroc')
# Those a multi-label run's validation has (`care_jax.metrics.multilabel_score_metrics`).
MULTILABEL_STAGE1_METRICS = ('mean_auroc', 'rare_mean_auroc', 'rare_recall', 'mean_ap')
CARE_OUTER = ('uniform', 'distance')
# `guidance.method`: CARE (the default, the care.* keys), CE alone, the losses on the class
# attention map (`care_jax.guidance_losses.MAP_LOSSES`), and those that need more than a map
# (`care_jax.training.guidance_terms`); a test keeps these lists equal to those modules'.
GUIDANCE_MAP_METHODS = ('gradia', 'haics', 'energy', 'rrr_g', 'hint', 'res')
GUIDANCE_FORWARD_METHODS = ('rrr', 'gain', 'sgt', 'actdiff')
GUIDANCE_METHODS = ('care', 'none', *GUIDANCE_MAP_METHODS, *GUIDANCE_FORWARD_METHODS)
# Whose map is supervised ('default': the method's own choice).
GUIDANCE_CLASSES = ('default', 'label', 'predicted')
GUIDANCE_NORMALIZE = ('default', 'minmax', 'relu_minmax', 'maxabs', 'relu_maxabs', 'none')
# The activations ActDiff compares (`care_jax.training.guidance_terms.ACTDIFF_LAYERS`, which the
# config may not import: a test keeps the two equal).
ACTDIFF_LAYERS = ('pooled', 'features')
# The samplers of `care_jax.data.sampling` (a module that imports TensorFlow,
# so not imported here; a test keeps the two lists equal).
SAMPLING = ('instance', 'class_balanced', 'sqrt')
BOX_SOURCES = ('manual', *box_generators.METHODS)
# The datasets ('flags') and image sizes of `care_jax.data.medmnist` (it imports TensorFlow;
# a test keeps these equal to its FLAGS and SIZES).
MEDMNIST_FLAGS = (
  'pathmnist',
  'chestmnist',
  'dermamnist',
  'octmnist',
  'pneumoniamnist',
  'retinamnist',
  'breastmnist',
  'bloodmnist',
  'tissuemnist',
  'organamnist',
  'organcmnist',
  'organsmnist',
)
MEDMNIST_SIZES = (28, 64, 128, 224)
# The uncertainty policies of `care_jax.data.chexpert` (Irvin et al. 2019) and the five
# observations of the CheXpert competition, its default classes (a test keeps them equal).
CHEXPERT_POLICIES = ('U-Ones', 'U-Zeros', 'U-Ignore')
CHEXPERT_COMPETITION = ('Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion')
# `data.<dataset>` parameters of the datasets read from the user's files.
_FILES_PARAMETERS = dict(
  split_seed=0, test_fraction=0.2, validation_fraction=0.1, skip_bad_rows=False, stored_size=512
)

# data.name='chexpert': uncertainty ('U-Ones', 'U-Zeros' or 'U-Ignore'), frontal views only,
# and the classes (observations; default: the CheXpert competition's five).
_CHEXPERT_PARAMETERS = dict(
  _FILES_PARAMETERS, uncertainty='U-Ones', frontal_only=True, observations=CHEXPERT_COMPETITION
)


# The parameters of care_jax.data.decoy_digits (data.name = 'decoy_digits': Ross et al.'s
# Decoy-MNIST recipe on scikit-learn's digits; train with data.image_size=28). num_train 0:
# every digit that validation and test leave.
_DECOY_DIGITS = dict(
  image_size=28, patch_size=4, num_validation=180, num_test=600, num_train=0, swapped=False, seed=0
)


def default_data_config() -> ml_collections.ConfigDict:
  """``config.data``: the embedded `synthetic_lesions` dataset.

  Fields: ``name`` (the dataset: 'synthetic_lesions', 'folder', 'isic2018',
  'rsna_pneumonia', 'nih_chestxray14'), ``dir`` (synthetic_lesions: the tfds
  data_dir, None: the tfds default; the other datasets: the directory with the
  user's files), ``cache_dir`` (those datasets' tfds data_dir, where they are
  prepared; None: the tfds default), ``folder``, ``isic2018``,
  ``rsna_pneumonia``, ``nih_chestxray14`` (their split and storage
  parameters), ``medmnist`` (``flag`` and ``size`` of the MedMNIST+ file:
  `care_jax.data.medmnist`), ``chexpert`` (split, storage, uncertainty policy,
  views and classes of `care_jax.data.chexpert`), ``image_size`` (S of the yielded
  images), ``rare_classes``
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
      decoy_digits=dict(_DECOY_DIGITS),
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
      # mode: 'boxed' (the boxed subset, one label), 'multilabel' (all images, 14
      # findings) or 'auto' (the mode of config.task: resolve_dependent_keys);
      # boxed_images: where multilabel puts the boxed images.
      nih_chestxray14=dict(_FILES_PARAMETERS, mode=AUTO, boxed_images='test'),
      # data.name='medmnist': the MedMNIST+ file <flag>[_<size>].npz in data.dir.
      medmnist=dict(flag='dermamnist', size=28),
      chexpert=dict(_CHEXPERT_PARAMETERS),
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
  `care_jax.training.device_augment`; True (needs ``enabled``), False or 'auto',
  the default: :func:`augment_on_device`). See `care_jax.data.augment`.
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
      # True: the host only decodes, resizes and draws each example's geometry and
      # colour factors; the train step warps, jitters and rasterises the masks on the
      # accelerator (care_jax.training.device_augment), with the same draws. 'auto':
      # the rule of augment_on_device (on a GPU or TPU, unless the dataset supervises
      # with segmentation masks), resolved by resolve_recipe.
      # Typed object: it holds a bool or 'auto'.
      on_device=config_dict.FieldReference('auto', field_type=object),
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

  Fields (the keywords of `care_jax.classification_loss.make_classification_loss`):
    name: one of `care_jax.classification_loss.LOSS_NAMES`. 'ce'; 'weighted_ce'
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


def default_guidance_config() -> ml_collections.ConfigDict:
  """The ``guidance`` keys: the method trained beside the classification loss (docs/guidance.md).

  'care' (the default) is the loss of the care.* keys; any other method trains
  CE + guidance.weight * L (care.protocol and care.start_step still say from when;
  care.alpha is CARE's alone). weight 'auto': scaled so that the term starts equal
  to CE (Friedrich et al. 2023), measured once on the first batch and then fixed.
  """
  guidance = ml_collections.ConfigDict()
  guidance.method = 'care'
  guidance.weight = config_dict.FieldReference(1.0, field_type=object)
  # 'default' is each method's official choice (docs/guidance.md): the ground
  # truth's map ('label'; multi-label: each positive finding) or the
  # predicted class's ('predicted': RRR-G); the map's normalisation; and
  # whether the Grad-CAM weights are constants (all but Energy, Rao et al.).
  guidance.classes = 'default'
  guidance.normalize = 'default'
  guidance.stop_gradient_weights = config_dict.FieldReference('default', field_type=object)
  # Per-method hyperparameters, the official code's defaults.
  # HAICS's BCE, or with ppce Rao et al.'s PPCE (-log F on the relevant pixels).
  guidance.haics = ml_collections.ConfigDict(dict(ppce=False))
  # RES: slack eta (its README's runs; argparse's default is 0), the tanh's scale, and
  # the imputation of the unknown pixels ('gaussian': RES-G; 'none').
  guidance.res = ml_collections.ConfigDict(dict(eta=0.1, tanh_scale=5.0, impute='gaussian'))
  # GAIN: T(A) = sigmoid(omega (A - sigma)), the erased region filled with
  # `fill` (0: the mean colour of normalised images), and ext_weight * L_e
  # (its map loss, 'hint') on the boxed images; 0 leaves attention mining alone.
  guidance.gain = ml_collections.ConfigDict(dict(sigma=0.5, omega=10.0, fill=0.0, ext_weight=1.0))
  # Saliency-guided training: the `fraction` of pixels with the lowest input
  # gradient (signed unless `absolute`) replaced by uniform noise (or 0).
  guidance.sgt = ml_collections.ConfigDict(dict(fraction=0.1, random_fill=True, absolute=False))
  # ActDiff: the activations whose L2 distance between the image and the image with its
  # irrelevant pixels shuffled is penalised: 'pooled' (the spatial mean of the feature map, the
  # official configs' choice) or 'features' (the whole feature map).
  guidance.actdiff = ml_collections.ConfigDict(dict(layer='pooled'))
  return guidance


def default_config() -> ml_collections.ConfigDict:
  """CARE on `synthetic_lesions` with a tiny CNN: the schema of every config."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # 'multiclass' (one label per image, softmax) or 'multilabel' (any number of
  # findings per image, one sigmoid each, CARE per (image, finding) pair): see
  # care_jax.classification_loss.TASKS. A multi-label task needs a multi-label dataset
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
  # 'auto': 'mca' for a multi-class task, 'mean_auroc' for a multi-label one.
  config.care.stage1_metric = AUTO
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

  config.guidance = default_guidance_config()

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
  # A directory for JAX's persistent compilation cache (compiled steps kept
  # across runs); None: off. Off in a multi-process run on CPUs (see
  # care_jax.training.parallel.enable_compilation_cache).
  config.compilation_cache_dir = config_dict.placeholder(str)
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
  """A copy of `config` with the fields left to the recipe (None or 'auto') filled in.

  ``train.learning_rate = None`` becomes 1e-4 when ``model.pretrained`` is set
  (the paper's rate for fine-tuning an ImageNet-pretrained model) and 1e-3
  otherwise (a model trained from scratch: at 1e-4 the tiny CNN does not learn
  the rare classes of the demo in 1000 steps). A rate given explicitly is
  kept. ``data.augment.on_device = 'auto'`` becomes :func:`augment_on_device`,
  and the keys that follow ``task`` are resolved by :func:`resolve_dependent_keys`.
  Training resolves its config first, so the saved config (and metrics.json)
  holds the values that were used.

  >>> resolve_recipe(default_config()).train.learning_rate
  0.001
  >>> resolve_recipe(default_config()).care.stage1_metric
  'mca'
  """
  config = resolve_dependent_keys(config)
  if config.train.learning_rate is None:
    config.train.learning_rate = 1e-4 if config.model.pretrained else 1e-3
  augment = config.data.augment
  if _is_auto(augment.on_device):
    on_device = augment_on_device(config)
    with augment.ignore_type():
      augment.on_device = on_device
  return config


def resolve_dependent_keys(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose 'auto' keys that follow ``config.task`` are filled in.

  ``care.stage1_metric``: 'mca' for ``task = 'multiclass'``, 'mean_auroc' for
  'multilabel' (the validation metrics each task has); ``data.nih_chestxray14.mode``:
  'boxed' (one label per image) or 'multilabel'. A value given explicitly is kept.
  Runs loaded from their saved config (`care_jax.config.from_json`) pass here too, so
  that a run saved before these keys existed reads them as it trained.

  >>> config = default_config()
  >>> config.task = 'multilabel'
  >>> resolved = resolve_dependent_keys(config)
  >>> resolved.care.stage1_metric, resolved.data.nih_chestxray14.mode
  ('mean_auroc', 'multilabel')
  """
  config = config.copy_and_resolve_references()
  multilabel = config.task == 'multilabel'
  if _is_auto(config.care.stage1_metric):
    config.care.stage1_metric = 'mean_auroc' if multilabel else 'mca'
  nih = config.data.get('nih_chestxray14')
  if nih is not None and _is_auto(nih.get('mode')):
    nih.mode = 'multilabel' if multilabel else 'boxed'
  return config


def augment_on_device(config: ml_collections.ConfigDict) -> bool:
  """Whether the train step applies the augmentation: the rule of ``data.augment.on_device``.

  False without ``data.augment.enabled``; True or False as given; 'auto': True where
  JAX's default backend is a GPU or TPU, unless the dataset supervises with segmentation
  masks (``data.<name>.supervision = 'mask'``), which only the host warps. The pipeline
  (`care_jax.data.augment.on_device`, a layer the config cannot be imported by) reads the
  value that `resolve_recipe` writes from this.

  >>> augment_on_device(default_config())  # Augmentation is off by default.
  False
  """
  augment = config.data.augment
  value = augment.on_device
  if _is_auto(value):
    dataset = config.data.get(config.data.name)
    masks = isinstance(dataset, ml_collections.ConfigDict) and dataset.get('supervision') == 'mask'
    value = jax.default_backend() != 'cpu' and not masks
  return bool(augment.enabled) and value is True


def _is_auto(value: Any) -> bool:
  return isinstance(value, str) and value == AUTO
