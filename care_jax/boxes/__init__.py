"""Automatic lesion boxes: pure generators, and their glue to datasets.

* `care_jax.boxes.generators`: arrays in, boxes out (Otsu, spectral residual,
  Grad-CAM of a stage-1 model, segmentation masks; IoU; boxes.csv rows).
  Pure: no files, no datasets; it needs neither TensorFlow nor a config.
* `care_jax.boxes.dataset`: a generator over a dataset's rare-class training
  images, cached (``config.data.box_source``; `replace_boxes` is the
  trainer's ``boxes_fn``).
* ``python -m care_jax.boxes`` (``care-jax boxes``): the command that writes a
  ``boxes.csv``.

Every public name of both modules is also available here
(``care_jax.boxes.otsu_boxes``); the dataset glue (and with it TensorFlow)
loads on first use of one of its names.
"""

import importlib
from typing import Any
import warnings

_GENERATORS = (
  'CONTRASTS',
  'CSV_COLUMNS',
  'METHODS',
  'box_iou',
  'boxes_from_foreground',
  'chunked_boxes',
  'contrast_channel',
  'expand_boxes',
  'foreground_fn',
  'grad_cam_boxes',
  'grad_cam_maps',
  'largest_components',
  'mask_boxes',
  'otsu_boxes',
  'otsu_foreground',
  'pixel_boxes',
  'spectral_residual_boxes',
  'spectral_residual_saliency',
  'write_boxes_csv',
)
_DATASET = ('GeneratedBoxes', 'generated_boxes', 'image_ids', 'mask_path', 'replace_boxes')
# Names that moved to the config schema in 0.2 (removed in 0.3).
_MOVED_TO_CONFIG = {'default_box_config': 'default_box_config', 'BOX_SOURCES': 'BOX_SOURCES'}

__all__ = sorted(_GENERATORS + _DATASET)


def __getattr__(name: str) -> Any:
  if name in _GENERATORS:
    return getattr(importlib.import_module(f'{__name__}.generators'), name)
  if name in _DATASET:
    return getattr(importlib.import_module(f'{__name__}.dataset'), name)
  if name in _MOVED_TO_CONFIG:
    warnings.warn(
      f'care_jax.boxes.{name} is deprecated: use care_jax.config.{_MOVED_TO_CONFIG[name]}',
      DeprecationWarning,
      stacklevel=2,
    )
    return getattr(importlib.import_module('care_jax.config'), _MOVED_TO_CONFIG[name])
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
