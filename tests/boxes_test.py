"""The boxes package: each of its names comes from its module on first use, and the generators
load no TensorFlow (only the dataset glue does)."""

import subprocess
import sys

from care_jax import boxes
from tests.helpers import reexports


def test_the_lazy_exports_are_the_names_of_their_modules():
  reexports.assert_lazy_exports(boxes, boxes._MODULES)  # pylint: disable=protected-access


def test_the_generators_load_without_tensorflow():
  code = (
    'import sys, care_jax.boxes as boxes; boxes.otsu_boxes, boxes.box_iou, boxes.grad_cam_maps; '
    'assert "tensorflow" not in sys.modules, "tensorflow was imported"'
  )
  subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, timeout=300)
