"""Automatic lesion boxes: pure generators, and their glue to datasets.

* `care_jax.boxes.generators`: arrays in, boxes out (Otsu, spectral residual,
  Grad-CAM of a stage-1 model, segmentation masks; boxes.csv rows), made of
  `care_jax.boxes.foreground` (the jitted foreground maps) and
  `care_jax.boxes.geometry` (masks -> boxes on the host; IoU).
  Pure: no files, no datasets; they need neither TensorFlow nor a config.
* `care_jax.boxes.dataset`: a generator over a dataset's rare-class training
  images, cached (``config.data.box_source``; `replace_boxes` is the
  trainer's ``boxes_fn``).
* ``python -m care_jax.boxes`` (``care-jax boxes``): the command that writes a
  ``boxes.csv``.

Every public name of these modules is also available here
(``care_jax.boxes.otsu_boxes``); the dataset glue (and with it TensorFlow)
loads on first use of one of its names.
"""

from care_jax import _deprecated

_GEOMETRY = ('box_iou', 'boxes_from_foreground', 'expand_boxes', 'largest_components')
_FOREGROUND = (
  'CONTRASTS',
  'contrast_channel',
  'grad_cam_maps',
  'otsu_foreground',
  'spectral_residual_saliency',
)
_GENERATORS = (
  'CSV_COLUMNS',
  'METHODS',
  'chunked_boxes',
  'foreground_fn',
  'grad_cam_boxes',
  'mask_boxes',
  'otsu_boxes',
  'pixel_boxes',
  'spectral_residual_boxes',
  'write_boxes_csv',
)
_DATASET = ('GeneratedBoxes', 'generated_boxes', 'image_ids', 'mask_path', 'replace_boxes')
# Each name -> the module (of this package) it lives in.
_MODULES = {
  **dict.fromkeys(_GEOMETRY, 'geometry'),
  **dict.fromkeys(_FOREGROUND, 'foreground'),
  **dict.fromkeys(_GENERATORS, 'generators'),
  **dict.fromkeys(_DATASET, 'dataset'),
}

__all__ = sorted(_MODULES)

# The exports, and the deprecated names (e.g. default_box_config, now care_jax.config's).
__getattr__ = _deprecated.getattr_of(__name__, lazy=_MODULES)


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
