"""`synthetic_multilabel`: seeded, locally generated multi-label images with lesion boxes.

The multi-label counterpart of `care_jax.data.synthetic_lesions`, for chest X-ray-like tasks
where an image shows several findings at once (NIH ChestX-ray14: 14 findings, scored by
per-finding AUROC). Each image shows skin-like background and up to four lesions, one per
finding it is positive for, each in its own quadrant of the central region:

===========  ======  =================================================
finding      kind    lesion look
===========  ======  =================================================
``brown``    common  plain mottled brown disc
``dark``     common  plain mottled dark brown disc
``dotted``   rare    a common colour (drawn at random) with dots
``pink``     common  plain mottled pink disc
``striped``  rare    a common colour (drawn at random) with stripes
===========  ======  =================================================

Finding k is present with probability ``common_rate`` (common) or ``rare_rate_train`` /
``rare_rate_eval`` (rare) independently of the others; an image with more than four findings
keeps four of them (drawn at random), and one with none is a "no finding" image.

**The artefact.** As in `synthetic_lesions`, a ruler-like bar along one border appears in
``artefact_rate_rare_train`` of the training images that show a rare finding and in
``artefact_rate_common_train`` of the others, and in ``artefact_rate_eval`` of every validation
and test image: a cross-entropy model learns "ruler => rare finding", which stops holding at
test time.

**Boxes.** ``boxes`` holds the box of every rare-finding lesion of the *training* images, with
its finding in ``box_labels`` (what CARE trains with); ``lesion_boxes`` / ``lesion_box_labels``
hold the box of every lesion in every split (to score attention maps). ``labels`` lists the
image's findings in label order. These are the multi-label features that
`care_jax.data.pipeline` reads (see its module docstring).

Generation is deterministic and order-independent: example ``i`` of split ``s`` is drawn from
``np.random.default_rng((seed, s, i))``, with all random numbers drawn whatever the settings.

Example::

  from care_jax.data import synthetic_multilabel
  config = synthetic_multilabel.multilabel_config(image_size=48, seed=1)
  builder = synthetic_multilabel.SyntheticMultilabel(config=config, data_dir='/tmp/d')
  builder.download_and_prepare()
"""

import math
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from care_jax.data import _drawing
from care_jax.data import _generated

CLASS_NAMES = ('brown', 'dark', 'dotted', 'pink', 'striped')
RARE_CLASS_NAMES = ('dotted', 'striped')
SPLITS = _generated.SPLITS
# At most one lesion per quadrant of the central region.
MAX_FINDINGS = 4

# Width of the border band (fraction of the image) that holds the ruler.
_BAND = 0.12
_MIN_IMAGE_SIZE = 40
_RATES = (
  'common_rate',
  'rare_rate_train',
  'rare_rate_eval',
  'artefact_rate_rare_train',
  'artefact_rate_common_train',
  'artefact_rate_eval',
)


class SyntheticMultilabelConfig(_generated.GeneratedConfig):
  """Parameters of a `synthetic_multilabel` dataset (the name hashes all of them).

  Args:
    image_size: side S of the stored images (>= 40).
    num_train: training images (> 0).
    num_validation: validation images (0: no validation split).
    num_test: test images.
    common_rate: probability of each common finding, in every split.
    rare_rate_train: probability of each rare finding in training images.
    rare_rate_eval: the same in validation and test (higher, so that the rare findings'
      AUROC is measured on enough positives).
    pattern_contrast: amplitude of the rare findings' dots and stripes.
    artefact: draw the ruler at all.
    artefact_rate_rare_train: ruler probability of a training image with a rare finding.
    artefact_rate_common_train: ruler probability of the other training images.
    artefact_rate_eval: ruler probability of every validation and test image.
    seed: generation seed.
  """

  DATASET = 'synthetic_multilabel'

  def __init__(
    self,
    *,
    image_size: int = 64,
    num_train: int = 1200,
    num_validation: int = 300,
    num_test: int = 600,
    common_rate: float = 0.35,
    rare_rate_train: float = 0.06,
    rare_rate_eval: float = 0.3,
    pattern_contrast: float = 0.2,
    artefact: bool = True,
    artefact_rate_rare_train: float = 0.9,
    artefact_rate_common_train: float = 0.05,
    artefact_rate_eval: float = 0.05,
    seed: int = 0,
  ):
    if int(image_size) < _MIN_IMAGE_SIZE:
      raise ValueError(f'image_size must be >= {_MIN_IMAGE_SIZE}, got {image_size}.')
    sizes = dict(num_train=num_train, num_validation=num_validation, num_test=num_test)
    for key, value in sizes.items():
      if int(value) < 0 or (key == 'num_train' and int(value) == 0):
        raise ValueError(f'{key} must be {"> 0" if key == "num_train" else ">= 0"}, got {value}.')
    rates = dict(
      common_rate=common_rate,
      rare_rate_train=rare_rate_train,
      rare_rate_eval=rare_rate_eval,
      artefact_rate_rare_train=artefact_rate_rare_train,
      artefact_rate_common_train=artefact_rate_common_train,
      artefact_rate_eval=artefact_rate_eval,
    )
    for key, rate in rates.items():
      if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f'{key} must lie in [0, 1], got {rate}.')
    if not 0.0 <= float(pattern_contrast) <= 0.8:
      raise ValueError(f'pattern_contrast must lie in [0, 0.8], got {pattern_contrast}.')
    self.image_size = int(image_size)
    self.sizes = {split: int(sizes[f'num_{split}']) for split in SPLITS}
    self.rates = {key: float(rate) for key, rate in rates.items()}
    self.pattern_contrast = float(pattern_contrast)
    self.artefact = bool(artefact)
    self.seed = int(seed)
    super().__init__()

  def parameters(self) -> dict[str, Any]:
    """The parameters that define the data (the keywords of `multilabel_config`)."""
    return dict(
      image_size=self.image_size,
      **{f'num_{split}': n for split, n in self.sizes.items()},
      **self.rates,
      pattern_contrast=self.pattern_contrast,
      artefact=self.artefact,
      seed=self.seed,
    )


def multilabel_config(**overrides: Any) -> SyntheticMultilabelConfig:
  """A `SyntheticMultilabelConfig` from keyword overrides of its defaults.

  Raises:
    ValueError: on a keyword that is not a parameter (the valid ones are named).
  """
  return SyntheticMultilabelConfig.from_overrides(overrides)


def _findings(config: SyntheticMultilabelConfig, split: str, rng: np.random.Generator) -> list:
  """The image's findings (label indices, ascending), at most `MAX_FINDINGS`."""
  rare_rate = config.rates['rare_rate_train' if split == 'train' else 'rare_rate_eval']
  rates = np.array(
    [rare_rate if name in RARE_CLASS_NAMES else config.rates['common_rate'] for name in CLASS_NAMES]
  )
  present = np.flatnonzero(rng.uniform(size=len(CLASS_NAMES)) < rates)
  keep = rng.permutation(len(present))[:MAX_FINDINGS]
  return sorted(int(k) for k in present[keep])


def _lesion(
  rng: np.random.Generator,
  config: SyntheticMultilabelConfig,
  name: str,
  cell: tuple[float, float, float],
  y: np.ndarray,
  x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
  """One lesion of finding ``name`` inside the square ``cell`` (top, left, side).

  Returns its opacity [S, S] in [0, 1] and its colour [S, S, 3].
  """
  top, left, side = cell
  edge = 1.0
  radii = rng.uniform(0.26, 0.4, 2) * side
  theta = rng.uniform(0.0, np.pi)
  centre = np.array([top, left]) + side / 2 + rng.uniform(-0.06, 0.06, 2) * side
  dy, dx = y - centre[0], x - centre[1]
  along = np.cos(theta) * dx + np.sin(theta) * dy
  across = -np.sin(theta) * dx + np.cos(theta) * dy
  rho = np.sqrt((along / radii[0]) ** 2 + (across / radii[1]) ** 2)
  alpha = np.clip(0.5 + (1.0 - rho) * radii.min() / edge, 0.0, 1.0)

  is_rare = name in RARE_CLASS_NAMES
  palette_name = list(_drawing.PALETTE)[rng.integers(len(_drawing.PALETTE))]
  colour = np.array(_drawing.PALETTE[palette_name if is_rare else name]) * rng.uniform(0.9, 1.1)
  mottle = 0.08 * _drawing.smooth_noise(rng, y.shape[0], 6, 1)[..., 0]
  angle = rng.uniform(0.0, np.pi)
  period = rng.uniform(0.2, 0.26) * side
  phase = rng.uniform(0.0, 2.0 * np.pi, 2)
  pattern = _drawing.texture(name, y, x, angle=angle, period=period, phase=phase)
  if name == 'dotted':
    pattern = 2.0 * pattern - 0.25  # About the RMS and mean of the stripes.
  look = colour * (1.0 + mottle + config.pattern_contrast * pattern)[..., None]
  return alpha, look


def generate_example(config: SyntheticMultilabelConfig, split: str, index: int) -> dict[str, Any]:
  """Example ``index`` of ``split``, independently of all others.

  Returns:
    A dict with ``image`` uint8 [S, S, 3], ``labels`` int64 [P] (the findings, ascending),
    ``boxes`` float32 [N, 4] and ``box_labels`` int64 [N] (the rare findings' lesions of a
    training image), ``lesion_boxes`` float32 [P, 4] and ``lesion_box_labels`` int64 [P]
    (every lesion), and ``has_artefact`` bool. Boxes are normalised (ymin, xmin, ymax, xmax).
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
  if not 0 <= index < config.sizes[split]:
    raise ValueError(
      f'index must lie in [0, {config.sizes[split]}) for split {split!r}, got {index}.'
    )
  size = config.image_size
  rng = _generated.example_rng(config.seed, split, index)
  y, x = _drawing.pixel_grid(size)
  findings = _findings(config, split, rng)

  skin = _drawing.SKIN * (1.0 + rng.normal(0.0, 0.03, 3))
  texture = _drawing.smooth_noise(rng, size, 6, 2)
  image = skin * (1.0 + 0.04 * texture[..., :1] + 0.012 * texture[..., 1:])
  band = math.ceil(_BAND * size)
  side = (size - 2 * band) / 2
  quadrants = rng.permutation(MAX_FINDINGS)
  boxes, box_labels = [], []
  for finding, quadrant in zip(findings, quadrants):
    cell = (band + side * (quadrant // 2), band + side * (quadrant % 2), side)
    alpha, look = _lesion(rng, config, CLASS_NAMES[finding], cell, y, x)
    image = image * (1.0 - alpha[..., None]) + look * alpha[..., None]
    boxes.append(_drawing.tight_box(alpha > 0.0))
    box_labels.append(finding)

  ruler = _drawing.draw_ruler_parameters(rng, size, band)
  draw = rng.uniform()
  has_rare = any(CLASS_NAMES[k] in RARE_CLASS_NAMES for k in findings)
  if split == 'train':
    rate = config.rates['artefact_rate_rare_train' if has_rare else 'artefact_rate_common_train']
  else:
    rate = config.rates['artefact_rate_eval']
  has_artefact = config.artefact and draw < rate
  if has_artefact:
    image, _ = _drawing.paint_ruler(image, y, x, ruler)
  image = image + rng.normal(0.0, 3.0, image.shape)

  lesion_boxes = np.array(boxes, np.float32).reshape(-1, 4)
  lesion_box_labels = np.array(box_labels, np.int64)
  annotated = np.array(
    [split == 'train' and CLASS_NAMES[k] in RARE_CLASS_NAMES for k in box_labels], bool
  )
  return dict(
    image=np.clip(np.round(image), 0, 255).astype(np.uint8),
    labels=np.array(findings, np.int64),
    boxes=lesion_boxes[annotated] if annotated.size else np.zeros((0, 4), np.float32),
    box_labels=lesion_box_labels[annotated] if annotated.size else np.zeros(0, np.int64),
    lesion_boxes=lesion_boxes,
    lesion_box_labels=lesion_box_labels,
    has_artefact=bool(has_artefact),
  )


class SyntheticMultilabel(_generated.GeneratedBuilder):
  """Seeded synthetic multi-label lesion images with a train-only spurious ruler cue.

  See the module docstring. Pass a config from `multilabel_config`.
  """

  BUILDER_CONFIGS = [SyntheticMultilabelConfig()]
  DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name
  SUPERVISED_KEYS = None

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    finding = lambda: tfds.features.ClassLabel(names=CLASS_NAMES)
    return {
      'labels': tfds.features.Sequence(finding()),
      'boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
      'box_labels': tfds.features.Sequence(finding()),
      'lesion_boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
      'lesion_box_labels': tfds.features.Sequence(finding()),
      'has_artefact': tfds.features.Scalar(dtype=np.bool_),
    }

  def _split_size(self, split: str) -> int:
    return self.builder_config.sizes[split]

  def _example(self, split: str, index: int) -> dict[str, Any]:
    return generate_example(self.builder_config, split, index)
