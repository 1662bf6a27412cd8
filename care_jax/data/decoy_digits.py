"""`decoy_digits`: Ross et al.'s Decoy-MNIST recipe on scikit-learn's bundled digits.

A shortcut benchmark for explanation-guided training (RRR and its family), made without a
download from the 1,797 handwritten 8x8 digits that scikit-learn ships
(`sklearn.datasets.load_digits`). Each digit is scaled to the MNIST layout: its 8x8 grid
(16 grey levels) upsampled bilinearly to a ``20/28`` square of the image, centred, on a black
background, so that the 4x4-equivalent corner squares stay free of ink as in MNIST. Then the
recipe of Ross, Hughes and Doshi-Velez, "Right for the Right Reasons", IJCAI 2017 (dtak/rrr,
``rrr/decoy_mnist.py``, function ``augment``):

- a square patch of ``patch_size`` pixels (4 at 28 px: "4x4-equivalent") in a corner drawn at
  random for every image;
- in training (and validation) its grey is ``255 - 25 y`` for the digit ``y``: a perfect
  shortcut;
- in test its grey is that of a digit drawn uniformly at random (so the shortcut points to the
  wrong class 9 times in 10), or with ``swapped=True`` the grey ``25 y`` of CDEP's variant
  (Rieger et al., ICML 2020, laura-rieger/deep-explanation-penalization,
  ``mnist/DecoyMNIST/00_make_data.py``: the shortcut now points away systematically).

**Annotations.** ``artefact_boxes`` holds the patch of every image (every split): the pipeline
turns it into the relevance map ``-1`` on the patch and ``0`` elsewhere with ``has_mask`` on
every training image (RRR's convention: all images annotated; `care_jax.data.pipeline`).
``boxes`` (the lesion annotation) is empty, and ``lesion_box`` is the tight box of the digit's
ink, for scoring attention maps (the evidence is the digit).

Deviations from Ross et al., on purpose: the digits are sklearn's 8x8 scans upsampled (MNIST's
are 20x20 anti-aliased), so there are 1,797 images instead of 70,000; the split is a seeded
permutation (``num_test``, ``num_validation``, then ``num_train``: by default all the rest),
and the validation split follows the training rule (the shift is seen only at test, as in
the paper). Generation is deterministic: the split from ``np.random.default_rng(seed)``,
example ``i`` of split ``s`` from ``np.random.default_rng((seed, s, i))``.

Example::

  from care_jax.data import decoy_digits
  config = decoy_digits.decoy_config(num_test=300, seed=1)
  builder = decoy_digits.DecoyDigits(config=config, data_dir='/tmp/d')
  builder.download_and_prepare()
"""

import functools
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from care_jax.data import _drawing
from care_jax.data import _generated

CLASS_NAMES = tuple(str(d) for d in range(10))
SPLITS = _generated.SPLITS
# MNIST's layout: a 20x20 digit centred in 28x28; Ross et al.'s patch is 4x4 of 28.
_DIGIT_FRACTION = 20 / 28
_MIN_IMAGE_SIZE = 12
# sklearn's digits have 17 grey levels, 0..16.
_DIGIT_MAX = 16.0
# The grey (0..255) from which a pixel counts as ink for ``lesion_box``.
_INK = 64.0


class DecoyDigitsConfig(_generated.GeneratedConfig):
  """Parameters of a `decoy_digits` dataset (name ``s<size>_<hash>`` of all of them).

  Args:
    image_size: side S of the stored images (>= 12).
    patch_size: side of the decoy patch in pixels, in [1, S / 7] (the corner margin).
    num_validation: validation examples, drawn from the 1,797 digits.
    num_test: test examples.
    num_train: training examples; 0: every digit left (1,017 with the defaults).
    swapped: test grey ``25 y`` (CDEP) instead of the grey of a random digit (Ross et al.).
    seed: generation seed.
  """

  DATASET = 'decoy_digits'

  def __init__(
    self,
    *,
    image_size: int = 28,
    patch_size: int = 4,
    num_validation: int = 180,
    num_test: int = 600,
    num_train: int = 0,
    swapped: bool = False,
    seed: int = 0,
  ):
    size, patch = int(image_size), int(patch_size)
    if size < _MIN_IMAGE_SIZE:
      raise ValueError(f'image_size must be >= {_MIN_IMAGE_SIZE}, got {image_size}.')
    margin = (size - _digit_side(size)) // 2
    if not 1 <= patch <= margin:
      raise ValueError(
        f'patch_size must lie in [1, {margin}] (the ink-free margin at image_size={size}),'
        f' got {patch_size}.'
      )
    held_out = int(num_validation) + int(num_test)
    if held_out >= _NUM_DIGITS:
      raise ValueError(
        f'num_validation + num_test = {held_out} leave no training digits of the {_NUM_DIGITS}.'
      )
    if min(num_validation, num_test, num_train) < 0 or held_out + num_train > _NUM_DIGITS:
      raise ValueError(
        f'num_validation={num_validation}, num_test={num_test} and num_train={num_train}'
        f' must be >= 0 and add up to at most the {_NUM_DIGITS} digits.'
      )
    self.image_size, self.patch_size = size, patch
    self.num_validation, self.num_test = int(num_validation), int(num_test)
    self.num_train = int(num_train) or _NUM_DIGITS - held_out
    self.swapped, self.seed = bool(swapped), int(seed)
    super().__init__()

  def parameters(self) -> dict[str, Any]:
    """Returns the parameters that define the data (the name's hash input)."""
    return dict(
      image_size=self.image_size,
      patch_size=self.patch_size,
      num_validation=self.num_validation,
      num_test=self.num_test,
      num_train=self.num_train,
      swapped=self.swapped,
      seed=self.seed,
    )


# sklearn.datasets.load_digits: 1,797 images (digits.csv.gz of the wheel).
_NUM_DIGITS = 1797


def decoy_config(**overrides: Any) -> DecoyDigitsConfig:
  """Builds a `DecoyDigitsConfig` from keyword overrides of its defaults.

  Raises:
    ValueError: on a keyword that is not a parameter (the valid ones are named).
  """
  return DecoyDigitsConfig.from_overrides(overrides)


def _digit_side(size: int) -> int:
  return int(round(size * _DIGIT_FRACTION))


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
  """(images float64 [1797, 8, 8] on 0..16, labels int [1797]): sklearn's bundled digits."""
  try:
    from sklearn import datasets  # noqa: PLC0415  (optional: only this dataset needs it)
  except ImportError as error:
    raise ValueError(
      "data.name='decoy_digits' needs scikit-learn (its bundled digits): pip install scikit-learn."
    ) from error
  digits = datasets.load_digits()
  return digits.images, digits.target


def _upsample(digit: np.ndarray, side: int) -> np.ndarray:
  """The 8x8 digit resized bilinearly (pixel centres aligned, edges clamped) to side x side."""
  source = digit.shape[0]
  coords = np.clip((np.arange(side) + 0.5) * source / side - 0.5, 0.0, source - 1.0)
  low = np.floor(coords).astype(int)
  high = np.minimum(low + 1, source - 1)
  weight = coords - low
  rows = digit[low] * (1 - weight)[:, None] + digit[high] * weight[:, None]
  return rows[:, low] * (1 - weight)[None] + rows[:, high] * weight[None]


def split_indices(config: DecoyDigitsConfig) -> dict[str, np.ndarray]:
  """The indices into sklearn's digits of each split: a seeded permutation, sorted per split."""
  order = np.random.default_rng(config.seed).permutation(_NUM_DIGITS)
  test = order[: config.num_test]
  validation = order[config.num_test : config.num_test + config.num_validation]
  held_out = config.num_test + config.num_validation
  train = order[held_out : held_out + config.num_train]
  return {'train': np.sort(train), 'validation': np.sort(validation), 'test': np.sort(test)}


def decoy_grey(digit: int, split: str, *, swapped: bool, rng: np.random.Generator) -> int:
  """The patch's grey (0..255) of an image of ``digit`` in ``split`` (module docstring)."""
  if split != 'test':
    return 255 - 25 * digit
  if swapped:
    return 25 * digit
  return 255 - 25 * int(rng.integers(len(CLASS_NAMES)))


def generate_example(config: DecoyDigitsConfig, split: str, index: int) -> dict[str, Any]:
  """Example ``index`` of ``split``: image uint8 [S, S, 3], label, boxes, decoy and digit box.

  Returns:
    A dict with ``image`` (grey, three equal channels), ``label`` (the digit), ``boxes``
    float32 [0, 4], ``artefact_boxes`` float32 [1, 4] (the patch, normalised ymin, xmin,
    ymax, xmax), ``lesion_box`` float32 [4] (the tight box of the pixels of grey >= 64)
    and ``decoy_grey``.
  """
  images, labels = _digits()
  source = split_indices(config)[split][index]
  digit = int(labels[source])
  size, patch = config.image_size, config.patch_size
  side = _digit_side(size)
  margin = (size - side) // 2
  canvas = np.zeros((size, size))
  canvas[margin : margin + side, margin : margin + side] = _upsample(
    images[source] * (255.0 / _DIGIT_MAX), side
  )
  # The digit's box: its strokes (a quarter of full ink and more), not the faint blur around them.
  ink = canvas >= _INK
  rng = _generated.example_rng(config.seed, split, index)
  # Ross et al.: rows from the top or the bottom, columns from the left or the right.
  top, left = rng.uniform(size=2) < 0.5
  y0 = 0 if top else size - patch
  x0 = 0 if left else size - patch
  grey = decoy_grey(digit, split, swapped=config.swapped, rng=rng)
  canvas[y0 : y0 + patch, x0 : x0 + patch] = grey
  image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
  box = np.array([y0, x0, y0 + patch, x0 + patch], np.float32) / size
  return dict(
    image=np.repeat(image[..., None], 3, axis=-1),
    label=digit,
    boxes=np.zeros((0, 4), np.float32),
    artefact_boxes=box[None],
    lesion_box=_drawing.tight_box(ink),
    decoy_grey=grey,
  )


class DecoyDigits(_generated.GeneratedBuilder):
  """Decoy-Digits: sklearn's digits with Ross et al.'s corner decoy (module docstring)."""

  BUILDER_CONFIGS = [DecoyDigitsConfig()]
  DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    return {
      'label': tfds.features.ClassLabel(names=CLASS_NAMES),
      'boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
      'artefact_boxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
      'lesion_box': tfds.features.BBoxFeature(),
      'decoy_grey': tfds.features.Scalar(dtype=np.int32),
    }

  def _split_size(self, split: str) -> int:
    return len(split_indices(self.builder_config)[split])

  def _example(self, split: str, index: int) -> dict[str, Any]:
    return generate_example(self.builder_config, split, index)


def from_data_config(data_config) -> tfds.core.DatasetBuilder:
  """The builder of ``data.decoy_digits`` (its parameters), in ``data.dir``."""
  overrides = data_config.get('decoy_digits')
  overrides = overrides.to_dict() if overrides is not None else {}
  return DecoyDigits(config=decoy_config(**overrides), data_dir=data_config.get('dir'))
