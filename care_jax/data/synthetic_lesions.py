"""`synthetic_lesions`: seeded, locally generated stand-in for dermoscopy data.

Every image shows skin-like background (noise texture, uneven illumination) and
one lesion, an irregular ellipse whose class is coded by its look:

===========  ======  ==========================================================
class        kind    lesion look
===========  ======  ==========================================================
``brown``    common  plain mottled brown
``dark``     common  plain mottled dark brown
``dotted``   rare    a common colour (drawn at random) with a grid of dots
``pink``     common  plain mottled pink
``striped``  rare    a common colour (drawn at random) with parallel stripes
===========  ======  ==========================================================

The rare classes share the common classes' palette, so mean colour does not
separate them: a classifier must look at the texture *inside* the lesion.

**The artefact.** In dermoscopy, rulers and ink marks are drawn by clinicians
more often next to suspicious lesions, so they correlate with the label in a
training set without being part of the disease. With ``artefact=True`` (the
default) a ruler-like bar appears in a band along one image border (never
touching the lesion box) in about 90% of the rare-class *training* images and
5% of the common ones, but at one rate for all classes in validation and test.
A plain cross-entropy model takes the shortcut "ruler => rare" and loses
rare-class recall on test, where the ruler no longer comes with the rare
classes. CARE supervises the attention of rare training images with their
lesion box, which penalises evidence found outside the box (such as the ruler)
and so generalises better. ``has_artefact`` and ``artefact_box`` record the
ruler for analysis.

**Boxes.** As CARE assumes, the annotation ``boxes`` holds the lesion box only
for training images of the rare classes; all other images have none.
``lesion_box`` is the ground-truth tight box of every lesion, for evaluating
attention maps and automatic boxes; input pipelines must not use it for masks.

Generation is deterministic and order-independent: example ``i`` of split
``s`` is drawn from ``np.random.default_rng((seed, s, i))``. All random numbers
are drawn whatever the artefact settings are, so ``artefact=False`` yields the
very same images without the rulers.

Example::

  from care_jax.data import synthetic_lesions
  config = synthetic_lesions.synthetic_config(image_size=32, seed=1)
  builder = synthetic_lesions.SyntheticLesions(config=config, data_dir='/tmp/d')
  builder.download_and_prepare()
  ds = builder.as_dataset(split='train')
"""

from collections.abc import Sequence
import math
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from care_jax.data import _drawing
from care_jax.data import _generated

CLASS_NAMES = ('brown', 'dark', 'dotted', 'pink', 'striped')
RARE_CLASS_NAMES = ('dotted', 'striped')
SPLITS = _generated.SPLITS

# Width of the border band (fraction of the image) that holds the ruler and
# that the lesion never enters.
_BAND = 0.14
_MIN_IMAGE_SIZE = 24


class SyntheticLesionsConfig(_generated.GeneratedConfig):
  """Parameters of a `synthetic_lesions` dataset.

  The config ``name`` is derived from all parameters (``s<size>_<hash>``), so
  differently parameterised datasets never share a directory of a data_dir.

  Args:
    image_size: side S of the stored images (>= 24).
    train_counts: examples per class, in the order of `CLASS_NAMES`.
    validation_counts: the same for validation (all 0: no validation split).
    test_counts: the same for test.
    pattern_contrast: mean amplitude of the rare classes' dots and stripes,
      relative to the lesion colour; lower makes them harder to learn, and the
      ruler shortcut more tempting.
    artefact: draw the ruler at all.
    artefact_rate_rare_train: ruler probability for rare training images.
    artefact_rate_common_train: ruler probability for common training images.
    artefact_rate_eval: ruler probability for every validation/test image.
    seed: generation seed.
  """

  DATASET = 'synthetic_lesions'

  def __init__(
    self,
    *,
    image_size: int = 64,
    train_counts: Sequence[int] = (300, 300, 40, 300, 40),
    validation_counts: Sequence[int] = (50, 50, 50, 50, 50),
    test_counts: Sequence[int] = (100, 100, 100, 100, 100),
    pattern_contrast: float = 0.3,
    artefact: bool = True,
    artefact_rate_rare_train: float = 0.9,
    artefact_rate_common_train: float = 0.05,
    artefact_rate_eval: float = 0.05,
    seed: int = 0,
  ):
    if int(image_size) < _MIN_IMAGE_SIZE:
      raise ValueError(
        f'image_size must be >= {_MIN_IMAGE_SIZE} (room for the lesion and'
        f' the ruler band), got {image_size}.'
      )
    counts = {}
    for split, value in zip(SPLITS, (train_counts, validation_counts, test_counts)):
      value = tuple(int(c) for c in value)
      if len(value) != len(CLASS_NAMES) or min(value) < 0:
        raise ValueError(
          f'{split}_counts must be {len(CLASS_NAMES)} non-negative counts,'
          f' one per class of {CLASS_NAMES}, got {value}.'
        )
      counts[split] = value
    if sum(counts['train']) == 0:
      raise ValueError('train_counts must contain at least one example.')
    if not 0.0 <= float(pattern_contrast) <= 0.8:
      raise ValueError(f'pattern_contrast must lie in [0, 0.8], got {pattern_contrast}.')
    rates = dict(
      artefact_rate_rare_train=float(artefact_rate_rare_train),
      artefact_rate_common_train=float(artefact_rate_common_train),
      artefact_rate_eval=float(artefact_rate_eval),
    )
    for key, rate in rates.items():
      if not 0.0 <= rate <= 1.0:
        raise ValueError(f'{key} must lie in [0, 1], got {rate}.')
    self.image_size = int(image_size)
    self.train_counts = counts['train']
    self.validation_counts = counts['validation']
    self.test_counts = counts['test']
    self.pattern_contrast = float(pattern_contrast)
    self.artefact = bool(artefact)
    self.artefact_rate_rare_train = rates['artefact_rate_rare_train']
    self.artefact_rate_common_train = rates['artefact_rate_common_train']
    self.artefact_rate_eval = rates['artefact_rate_eval']
    self.seed = int(seed)
    super().__init__()

  def parameters(self) -> dict[str, Any]:
    """Returns the parameters that define the data (the name's hash input)."""
    return dict(
      image_size=self.image_size,
      train_counts=list(self.train_counts),
      validation_counts=list(self.validation_counts),
      test_counts=list(self.test_counts),
      pattern_contrast=self.pattern_contrast,
      artefact=self.artefact,
      artefact_rate_rare_train=self.artefact_rate_rare_train,
      artefact_rate_common_train=self.artefact_rate_common_train,
      artefact_rate_eval=self.artefact_rate_eval,
      seed=self.seed,
    )

  def counts(self, split: str) -> tuple[int, ...]:
    """Returns the per-class example counts of ``split``."""
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
    return getattr(self, f'{split}_counts')


def synthetic_config(**overrides: Any) -> SyntheticLesionsConfig:
  """Builds a `SyntheticLesionsConfig` from keyword overrides of its defaults.

  Example: ``synthetic_config(image_size=32, train_counts=(8, 8, 4, 8, 4))``.

  Raises:
    ValueError: on a keyword that is not a parameter (the valid ones are named).
  """
  return SyntheticLesionsConfig.from_overrides(overrides)


def _label_of(counts: Sequence[int], index: int) -> int:
  return int(np.searchsorted(np.cumsum(counts), index, side='right'))


def _background(
  rng: np.random.Generator, size: int, y: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """(background [S, S, 3], illumination [S, S]): the skin and its uneven light."""
  # Background: jittered skin tone, fine and coarse texture, uneven light.
  # Mostly brightness texture, with a little hue variation.
  skin = _drawing.SKIN * (1.0 + rng.normal(0.0, 0.03, 3))
  texture = _drawing.smooth_noise(rng, size, 6, 4)
  background = skin * (1.0 + 0.04 * texture[..., :1] + 0.012 * texture[..., 1:])
  phi = rng.uniform(0.0, 2.0 * np.pi)
  u, v = (2.0 * x / size - 1.0), (2.0 * y / size - 1.0)
  illumination = (
    1.0
    + rng.uniform(0.0, 0.12) * (np.cos(phi) * u + np.sin(phi) * v)
    - rng.uniform(0.0, 0.15) * 0.5 * (u**2 + v**2)
  )
  return background, illumination


def _lesion_shape(
  rng: np.random.Generator, size: int, y: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """(alpha [S, S] in [0, 1], the lesion's tight box): where the lesion is."""
  # Lesion shape: an ellipse whose radius wobbles with low angular harmonics.
  # It is kept inside the central region so that the ruler band stays free.
  edge = max(1.0, size / 48.0)
  semi_axes = rng.uniform(0.11, 0.24, 2) * size
  theta = rng.uniform(0.0, np.pi)
  wobble_amp = rng.uniform(0.0, 0.06, 3)
  wobble_phase = rng.uniform(0.0, 2.0 * np.pi, 3)
  # alpha > 0 reaches out to rho < 1 + edge / (2 min_axis): a distance of at
  # most spread * max_axis + fringe from the centre (+1 for pixel rounding).
  spread = 1.0 + wobble_amp.sum()
  fringe = spread * semi_axes.max() / semi_axes.min() * edge / 2.0 + 1.0
  band = math.ceil(_BAND * size)
  room = size / 2.0 - band
  semi_axes *= min(1.0, (room - fringe) / (spread * semi_axes.max()))
  reach = spread * semi_axes.max() + fringe
  free = max(0.0, size - 2.0 * (band + reach))  # Rounding may undershoot 0.
  cy, cx = band + reach + free * rng.uniform(size=2)
  dy, dx = y - cy, x - cx
  along = np.cos(theta) * dx + np.sin(theta) * dy
  across = -np.sin(theta) * dx + np.cos(theta) * dy
  angle = np.arctan2(across, along)
  wobble = 1.0 + sum(
    a * np.cos(k * angle + p) for k, a, p in zip((2, 3, 4), wobble_amp, wobble_phase)
  )
  rho = np.sqrt((along / semi_axes[0]) ** 2 + (across / semi_axes[1]) ** 2)
  rho = rho / wobble
  # Soft edge about `edge` pixels wide around rho = 1.
  alpha = np.clip(0.5 + (1.0 - rho) * semi_axes.min() / edge, 0.0, 1.0)
  return alpha, _drawing.tight_box(alpha > 0.0)


def _lesion_look(
  rng: np.random.Generator,
  config: SyntheticLesionsConfig,
  name: str,
  y: np.ndarray,
  x: np.ndarray,
  alpha: np.ndarray,
) -> np.ndarray:
  """The lesion's colours [S, S, 3]: class colour (rare classes borrow one) and texture."""
  size = config.image_size
  # Lesion look: class colour (rare classes borrow one) and internal texture.
  palette_name = list(_drawing.PALETTE)[rng.integers(len(_drawing.PALETTE))]
  colour_name = palette_name if name in RARE_CLASS_NAMES else name
  colour = np.array(_drawing.PALETTE[colour_name]) * rng.uniform(0.88, 1.12)
  colour = colour * (1.0 + rng.normal(0.0, 0.04, 3))
  mottle = 0.08 * _drawing.smooth_noise(rng, size, 5, 1)[..., 0]
  pattern_angle = rng.uniform(0.0, np.pi)
  period = rng.uniform(0.09, 0.13) * size
  pattern_phase = rng.uniform(0.0, 2.0 * np.pi, 2)
  contrast = config.pattern_contrast * rng.uniform(0.8, 1.2)
  pattern = _drawing.texture(name, y, x, angle=pattern_angle, period=period, phase=pattern_phase)
  # Zero mean over the lesion, so that the pattern does not shift the mean
  # colour, and the RMS of a cosine, so that dots are as salient as stripes.
  weight = alpha / alpha.sum()
  pattern = pattern - (pattern * weight).sum()
  rms = np.sqrt((pattern**2 * weight).sum())
  if rms > 0.0:
    pattern = pattern * (np.sqrt(0.5) / rms)
  return colour * (1.0 + mottle + contrast * pattern)[..., None]


def generate_example(config: SyntheticLesionsConfig, split: str, index: int) -> dict[str, Any]:
  """Generates example ``index`` of ``split``, independently of all others.

  Args:
    config: the dataset parameters.
    split: 'train', 'validation' or 'test'.
    index: in ``[0, sum(config.counts(split)))``; examples are laid out class
      by class in label order.

  Returns:
    A dict with ``image`` uint8 [S, S, 3], ``label`` int, ``boxes`` float32
    [N, 4] (N = 1 for rare-class training images, else 0), ``lesion_box`` and
    ``artefact_box`` float32 [4] (normalised ymin, xmin, ymax, xmax; the
    artefact box is all zeros without artefact) and ``has_artefact`` bool.
  """
  counts = config.counts(split)
  if not 0 <= index < sum(counts):
    raise ValueError(f'index must lie in [0, {sum(counts)}) for split {split!r}, got {index}.')
  label = _label_of(counts, index)
  name = CLASS_NAMES[label]
  is_rare = name in RARE_CLASS_NAMES
  size = config.image_size
  rng = _generated.example_rng(config.seed, split, index)
  y, x = _drawing.pixel_grid(size)
  background, illumination = _background(rng, size, y, x)
  alpha, lesion_box = _lesion_shape(rng, size, y, x)
  lesion = _lesion_look(rng, config, name, y, x, alpha)

  image = background * (1.0 - alpha[..., None]) + lesion * alpha[..., None]

  # Ruler: a light bar with dark ticks in the band along one border. Its
  # parameters are always drawn, so toggling it leaves the rest unchanged.
  ruler = _drawing.draw_ruler_parameters(rng, size, math.ceil(_BAND * size))
  draw = rng.uniform()
  if split == 'train':
    rate = config.artefact_rate_rare_train if is_rare else config.artefact_rate_common_train
  else:
    rate = config.artefact_rate_eval
  has_artefact = config.artefact and draw < rate
  artefact_box = np.zeros(4, np.float32)
  if has_artefact:
    image, artefact_box = _drawing.paint_ruler(image, y, x, ruler)

  image = image * illumination[..., None] + rng.normal(0.0, 3.0, image.shape)
  boxes = lesion_box[None] if (is_rare and split == 'train') else np.zeros((0, 4))
  return dict(
    image=np.clip(np.round(image), 0, 255).astype(np.uint8),
    label=label,
    boxes=boxes.astype(np.float32),
    lesion_box=lesion_box,
    artefact_box=artefact_box,
    has_artefact=bool(has_artefact),
  )


class SyntheticLesions(_generated.GeneratedBuilder):
  """Seeded synthetic lesion images with a train-only spurious ruler cue.

  See the module docstring for the design. Pass a config from
  `synthetic_config` (``SyntheticLesions(config=..., data_dir=...)``); the
  default config is `SyntheticLesionsConfig()`.
  """

  BUILDER_CONFIGS = [SyntheticLesionsConfig()]
  DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    return {
      'label': tfds.features.ClassLabel(names=CLASS_NAMES),
      'boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
      'lesion_box': tfds.features.BBoxFeature(),
      'artefact_box': tfds.features.BBoxFeature(),
      'has_artefact': tfds.features.Scalar(dtype=np.bool_),
    }

  def _split_size(self, split: str) -> int:
    return sum(self.builder_config.counts(split))

  def _example(self, split: str, index: int) -> dict[str, Any]:
    return generate_example(self.builder_config, split, index)
