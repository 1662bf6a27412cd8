r"""Automatic lesion boxes for CARE: classical saliency, Grad-CAM, segmentation masks.

Manual lesion boxes are CARE's main cost. The authors' journal version
(Neurocomputing 2023) reports that boxes generated automatically work about as
well. Every generator here maps a batch of images ``[N, H, W, C]`` to a
foreground mask, keeps its largest connected component and returns its
bounding box:

===========================  ================================================
generator                    foreground
===========================  ================================================
`otsu_boxes`                 Otsu (1979) threshold of a lesion-contrast
                             channel (default: log red/green chromaticity),
                             per image
`spectral_residual_boxes`    Hou & Zhang (CVPR 2007) spectral-residual
                             saliency ``> k * mean`` saliency
`grad_cam_boxes`             the stage-1 model's Grad-CAM map of the true
                             class ``>= fraction * max``
`mask_boxes`                 a user segmentation mask ``> 0``
===========================  ================================================

All return ``(boxes, found)``: ``boxes`` float32 [N, 4] normalised
``(ymin, xmin, ymax, xmax)`` (the tfds convention; a component covering pixel
rows ``r0..r1`` and columns ``c0..c1`` gives ``(r0 / H, c0 / W, (r1 + 1) / H,
(c1 + 1) / W)``) and ``found`` bool [N]. An image without any foreground
component is *not found*: it gets no box (all-zero row), never a silent
full-image box.

The maps and thresholds run batched under `jax.jit` (fixed-size chunks, so one
compilation serves a whole dataset; `care_jax.boxes.foreground`); the connected
components are labelled on the host with `scipy.ndimage.label` in one call per
chunk (8-connectivity within each image, never across images;
`care_jax.boxes.geometry`).

This module is pure: arrays in, boxes out, no files and no datasets
(`care_jax.boxes.dataset` runs these generators over a dataset for
``config.data.box_source``, and ``care-jax boxes`` writes them to a
``boxes.csv``). `foreground_fn` and `chunked_boxes` are the two halves every
generator is made of, for callers that stream their own chunks of images.

On `synthetic_lesions` the Otsu boxes reach a mean IoU of 0.93 with the true
lesion boxes (docs/results.md, ``benchmarks/boxes.py``).

Example::

  boxes, found = otsu_boxes(images)                       # images [N, H, W, 3]
  iou = geometry.box_iou(boxes[found], true_boxes[found])
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
import csv
import functools
from typing import Any

import jax
from jax.typing import ArrayLike
import numpy as np

from care_jax import _deprecated
from care_jax.boxes import foreground as foreground_lib
from care_jax.boxes import geometry

METHODS = ('otsu', 'spectral_residual', 'grad_cam', 'mask')
CSV_COLUMNS = ('image', 'xmin', 'ymin', 'xmax', 'ymax')


def _host_images(images: ArrayLike) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must have shape [N, H, W, C], got {images.shape}.')
  return images


def _slices(arrays: Sequence[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, ...]]:
  for start in range(0, arrays[0].shape[0], size):
    yield tuple(a[start : start + size] for a in arrays)


def chunked_boxes(
  foreground: Callable[..., jax.Array],
  chunks: Iterable[Sequence[np.ndarray]],
  *,
  chunk_size: int,
  largest_component: bool = True,
  margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Runs a `foreground_fn` on each chunk and boxes its output on the host.

  Chunks shorter than ``chunk_size`` are padded by repeating their first row,
  so that one compiled shape serves a whole dataset; padding rows are dropped.

  Args:
    foreground: ``f(*chunk) -> bool [n, h, w]``, e.g. from `foreground_fn`.
    chunks: tuples of arrays with a leading axis of at most ``chunk_size``
      (images, and for 'grad_cam' their labels).
    chunk_size: rows of every call of ``foreground`` (>= 1).
    largest_component: see `geometry.boxes_from_foreground`.
    margin: see `geometry.boxes_from_foreground`.

  Returns:
    ``(boxes, found)`` of all chunks' rows, in order.
  """
  _check_common(chunk_size, margin)
  boxes, found = [np.zeros((0, 4), np.float32)], [np.zeros((0,), bool)]
  for parts in chunks:
    rows = parts[0].shape[0]
    if rows < chunk_size:
      parts = [np.concatenate([p, np.repeat(p[:1], chunk_size - rows, axis=0)]) for p in parts]
    mask = np.asarray(foreground(*parts))[:rows]
    chunk_boxes, chunk_found = geometry.boxes_from_foreground(
      mask, largest_component=largest_component, margin=margin
    )
    boxes.append(chunk_boxes)
    found.append(chunk_found)
  return np.concatenate(boxes), np.concatenate(found)


def _check_common(batch_size: int, margin: float) -> None:
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if not margin >= 0.0:
    raise ValueError(f'margin must be >= 0, got {margin}.')


def foreground_fn(
  method: str,
  *,
  num_channels: int,
  model: Any = None,
  variables: dict[str, Any] | None = None,
  **params: Any,
) -> Callable[..., jax.Array]:
  """The jitted foreground map of a generator: ``f(images[, labels]) -> bool [n, h, w]``.

  Args:
    method: 'otsu', 'spectral_residual' or 'grad_cam' ('mask' reads files:
      see `mask_boxes`).
    num_channels: C of the images it will see (checked against the method).
    model: the classifier of 'grad_cam'.
    variables: the classifier's variables.
    **params: all of the method's parameters, the keywords of its
      ``*_boxes`` function: ``contrast``, ``sigma``, ``num_bins`` (otsu);
      ``work_size``, ``sigma``, ``k`` (spectral_residual); ``fraction``,
      ``attention`` (grad_cam).

  Raises:
    ValueError: an unknown method or parameter, a parameter out of range, or
      images whose channels the method cannot use.
  """
  if method not in _PARAMS:
    raise ValueError(f'method must be one of {tuple(_PARAMS)}, got {method!r}.')
  if set(params) != set(_PARAMS[method]):
    raise ValueError(
      f'{method} takes the parameters {list(_PARAMS[method])}, got {sorted(params)}.'
    )
  if method == 'otsu':
    foreground_lib.check_contrast_channels(num_channels, params['contrast'])
    return functools.partial(
      foreground_lib.otsu_contrast_foreground,
      contrast=params['contrast'],
      sigma=float(params['sigma']),
      num_bins=int(params['num_bins']),
    )
  if method == 'spectral_residual':
    foreground_lib.check_luma_channels(num_channels)
    if not params['k'] > 0:
      raise ValueError(f'k must be > 0, got {params["k"]}.')
    return functools.partial(
      foreground_lib.spectral_residual_foreground,
      work_size=int(params['work_size']),
      sigma=float(params['sigma']),
      k=float(params['k']),
    )
  if not 0.0 < params['fraction'] <= 1.0:
    raise ValueError(f'fraction must lie in (0, 1], got {params["fraction"]}.')
  return functools.partial(
    foreground_lib.grad_cam_foreground,
    model,
    variables,
    fraction=float(params['fraction']),
    attention=params['attention'],
  )


# The parameters of each `foreground_fn` method (keywords of its `*_boxes`
# function, where their defaults are).
_PARAMS = {
  'otsu': ('contrast', 'sigma', 'num_bins'),
  'spectral_residual': ('work_size', 'sigma', 'k'),
  'grad_cam': ('fraction', 'attention'),
}


# The keywords that every `*_boxes` function of a `foreground_fn` method takes besides its
# method's `_PARAMS`.
_COMMON = ('largest_component', 'margin', 'batch_size')


def _boxes_of_arrays(
  method: str, arrays: Sequence[np.ndarray], keywords: dict[str, Any], **objects: Any
) -> tuple[np.ndarray, np.ndarray]:
  """`foreground_fn` of `method` over ``arrays`` in chunks of ``batch_size``.

  Args:
    method: a `foreground_fn` method.
    arrays: the images (and for 'grad_cam' their labels), host arrays.
    keywords: the arguments of the calling ``*_boxes`` function (its `locals()`): its method's
      `_PARAMS` and the `_COMMON` ones are read from it, so that no generator forwards them one
      by one.
    **objects: the model and variables of 'grad_cam'.
  """
  largest_component, margin, batch_size = (keywords[name] for name in _COMMON)
  params = {name: keywords[name] for name in _PARAMS[method]}
  _check_common(batch_size, margin)
  fn = foreground_fn(method, num_channels=arrays[0].shape[-1], **objects, **params)
  size = min(batch_size, max(len(arrays[0]), 1))
  return chunked_boxes(
    fn, _slices(arrays, size), chunk_size=size, largest_component=largest_component, margin=margin
  )


# ----------------------------------------------------------------------------
# The generators.
# ----------------------------------------------------------------------------


def otsu_boxes(
  images: ArrayLike,
  *,
  contrast: str = 'log_red_green',
  sigma: float = 0.05,
  num_bins: int = 256,
  largest_component: bool = True,
  margin: float = 0.0,
  batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
  """Boxes from an Otsu threshold of a lesion-contrast channel, per image.

  See `foreground.contrast_channel` for the channels and why ``'log_red_green'`` is the
  default for dermoscopy. A Gaussian blur before the threshold keeps noise
  and lesion texture from fragmenting the lesion; its default width (5% of
  the image side, 3.2 px at 64 px) was chosen on a development copy of
  `synthetic_lesions` (seed 1), not on the data reported in docs/results.md.

  Args:
    images: [N, H, W, C] uint8 or float, any scale.
    contrast: 'log_red_green' (RGB only), 'darkness' or 'brightness'.
    sigma: standard deviation of the Gaussian blur, as a fraction of the
      image's shorter side (0: none).
    num_bins: Otsu histogram bins.
    largest_component: see `geometry.boxes_from_foreground`.
    margin: see `geometry.boxes_from_foreground`.
    batch_size: images per jitted chunk.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N].

  Examples:
    >>> images = np.full((1, 16, 16, 3), (220, 190, 170), np.uint8)
    >>> images[0, 4:10, 6:12] = (120, 60, 50)  # a dark, reddish lesion on skin
    >>> boxes, found = otsu_boxes(images, sigma=0.0)
    >>> boxes, found
    (array([[0.25 , 0.375, 0.625, 0.75 ]], dtype=float32), array([ True]))
  """
  return _boxes_of_arrays('otsu', [_host_images(images)], locals())


def spectral_residual_boxes(
  images: ArrayLike,
  *,
  work_size: int = 64,
  sigma: float = 0.5,
  k: float = 1.5,
  largest_component: bool = True,
  margin: float = 0.0,
  batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
  """Boxes from spectral-residual saliency above ``k`` times its mean.

  Hou & Zhang's object map is ``S > 3 E[S]`` with sigma 2.5; such maps keep
  only the most salient edges of a lesion that fills a good part of the
  image. The defaults (sigma 0.5, k 1.5) were chosen on a development copy of
  `synthetic_lesions` (seed 1). The box is found at the working resolution
  (see `foreground.spectral_residual_saliency`) and returned normalised.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N].
  """
  return _boxes_of_arrays('spectral_residual', [_host_images(images)], locals())


def grad_cam_boxes(
  model: Any,
  variables: dict[str, Any],
  images: ArrayLike,
  labels: ArrayLike,
  *,
  fraction: float = 0.6,
  attention: str = 'auto',
  largest_component: bool = True,
  margin: float = 0.0,
  batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
  """Boxes where the model's true-class map reaches ``fraction`` of its max.

  The map is `foreground.grad_cam_maps` (min-max normalised, upsampled to the input
  size); foreground is ``map >= fraction * max(map)``. The model is CARE's
  stage-1 model (cross-entropy only), so the boxes show where it already
  looks: on data with a shortcut (a ruler next to rare lesions) they box the
  shortcut as readily as the lesion. The default ``fraction`` (0.6) was
  chosen on a development copy of `synthetic_lesions` (seed 1).

  Args:
    model: see `foreground.grad_cam_maps`.
    variables: see `foreground.grad_cam_maps`.
    images: see `foreground.grad_cam_maps`.
    labels: see `foreground.grad_cam_maps`.
    attention: see `foreground.grad_cam_maps`.
    fraction: threshold relative to each map's maximum, in (0, 1].
    largest_component: see `geometry.boxes_from_foreground`.
    margin: see `geometry.boxes_from_foreground`.
    batch_size: images per jitted chunk.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N].
  """
  images = _host_images(images)
  labels = np.asarray(labels)
  if labels.shape != images.shape[:1]:
    raise ValueError(
      f'labels must have shape [{images.shape[0]}] (one per image), got {labels.shape}.'
    )
  return _boxes_of_arrays('grad_cam', [images, labels], locals(), model=model, variables=variables)


def mask_boxes(
  masks: ArrayLike, *, largest_component: bool = True, margin: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
  """Bounding boxes of user segmentation masks (nonzero = lesion).

  Args:
    masks: [N, H, W] or [N, H, W, C] (a pixel is lesion where any channel is
      nonzero), e.g. HAM10000's ``*_segmentation.png`` (0 / 255).
    largest_component: see `geometry.boxes_from_foreground`.
    margin: see `geometry.boxes_from_foreground`.

  Returns:
    ``(boxes, found)``: float32 [N, 4] normalised (ymin, xmin, ymax, xmax),
    bool [N] (False for an empty mask).
  """
  masks = np.asarray(masks)
  if masks.ndim == 4:
    masks = (masks != 0).any(axis=-1)
  if masks.ndim != 3:
    raise ValueError(f'masks must have shape [N, H, W] or [N, H, W, C], got {masks.shape}.')
  return geometry.boxes_from_foreground(
    masks != 0, largest_component=largest_component, margin=margin
  )


# ----------------------------------------------------------------------------
# boxes.csv (DESIGN 3.1).
# ----------------------------------------------------------------------------


def pixel_boxes(boxes: ArrayLike, image_sizes: ArrayLike) -> np.ndarray:
  """Normalised (ymin, xmin, ymax, xmax) -> pixel (xmin, ymin, xmax, ymax).

  Args:
    boxes: [N, 4] normalised boxes.
    image_sizes: [N, 2] (height, width) of each image in pixels.

  Returns:
    float64 [N, 4] in the column order of boxes.csv.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  sizes = np.asarray(image_sizes, np.float64).reshape(-1, 2)
  if len(sizes) != len(boxes):
    raise ValueError(
      f'image_sizes must have one (height, width) per box:'
      f' {len(sizes)} sizes for {len(boxes)} boxes.'
    )
  height, width = sizes[:, 0], sizes[:, 1]
  return np.stack(
    [boxes[:, 1] * width, boxes[:, 0] * height, boxes[:, 3] * width, boxes[:, 2] * height], axis=1
  )


def write_boxes_csv(
  path: str,
  image_names: Sequence[str],
  boxes_pixels: ArrayLike,
  *,
  labels: Sequence[str] | None = None,
) -> None:
  """Writes ``image,xmin,ymin,xmax,ymax`` rows (DESIGN 3.1), one per box.

  Coordinates are pixels of the original image (edges: a box covering pixel
  columns ``c0..c1`` has ``xmin = c0``, ``xmax = c1 + 1``), written with up
  to 6 significant digits.

  Args:
    path: the CSV file to write (its folder must exist).
    image_names: [M] image identifiers, one per box (repeat a name for
      several boxes of one image).
    boxes_pixels: [M, 4] (xmin, ymin, xmax, ymax) in pixels.
    labels: [M] the class (finding) name of each box, for multi-label data: adds the column
      ``label`` after ``image``, as the multi-label datasets' boxes.csv has it (`chexpert`);
      None: no such column.

  Raises:
    ValueError: for a count mismatch, or a box with xmin >= xmax, ymin >= ymax
      or a negative coordinate (the row is named).
  """
  names = [str(name) for name in image_names]
  values = np.asarray(boxes_pixels, np.float64).reshape(-1, 4)
  if len(names) != len(values) or (labels is not None and len(labels) != len(names)):
    raise ValueError(
      f'image_names has {len(names)} entries but boxes_pixels has {len(values)} rows'
      + ('.' if labels is None else f' and labels {len(labels)}.')
    )
  for row, (name, (xmin, ymin, xmax, ymax)) in enumerate(zip(names, values)):
    if not (0 <= xmin < xmax and 0 <= ymin < ymax):
      raise ValueError(
        f'box {row} of image {name!r} is not a valid box (need 0 <= xmin <'
        f' xmax and 0 <= ymin < ymax): {(xmin, ymin, xmax, ymax)}.'
      )
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    label_column = [] if labels is None else ['label']
    writer.writerow([CSV_COLUMNS[0], *label_column, *CSV_COLUMNS[1:]])
    for row, (name, box) in enumerate(zip(names, values)):
      label = [] if labels is None else [str(labels[row])]
      writer.writerow([name, *label, *(f'{v:.6g}' for v in box)])


__getattr__ = _deprecated.getattr_of(__name__)
