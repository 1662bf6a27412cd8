"""Boxes from foreground masks on the host: components, margins, IoU, against hand computations
and scipy."""

import numpy as np
import pytest
from scipy import ndimage

from care_jax import boxes


def test_box_iou_matches_hand_computation():
  assert float(boxes.box_iou([0, 0, 2, 2], [1, 1, 3, 3])) == pytest.approx(1 / 7)
  assert float(boxes.box_iou([0, 0, 1, 1], [2, 2, 3, 3])) == 0.0
  assert float(boxes.box_iou([0, 0, 0, 0], [0, 0, 0, 0])) == 0.0  # empty union
  # Broadcast: [2, 4] against [4]; the second box is half of the first.
  iou = boxes.box_iou([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.3]], [0.1, 0.1, 0.5, 0.5])
  np.testing.assert_allclose(iou, [1.0, 0.5], rtol=1e-6)


def test_largest_component_is_chosen_over_a_smaller_one():
  mask = np.zeros((1, 20, 20), bool)
  mask[0, 2:5, 2:5] = True  # 9 pixels
  mask[0, 10:18, 8:14] = True  # 48 pixels
  found_boxes, found = boxes.boxes_from_foreground(mask)
  np.testing.assert_allclose(found_boxes[0], [10 / 20, 8 / 20, 18 / 20, 14 / 20])
  assert found[0]
  all_boxes, _ = boxes.boxes_from_foreground(mask, largest_component=False)
  np.testing.assert_allclose(all_boxes[0], [2 / 20, 2 / 20, 18 / 20, 14 / 20])


def test_components_never_connect_across_images_of_a_stack():
  # Image 1's small blob sits where image 0's big one does; image 1's own big
  # blob elsewhere must win (a 3-D connectivity would join the small blob to
  # image 0's and make it the largest).
  mask = np.zeros((2, 16, 16), bool)
  mask[0, 0:8, 0:8] = True
  mask[1, 0:2, 0:2] = True
  mask[1, 10:14, 10:14] = True
  found_boxes, _ = boxes.boxes_from_foreground(mask)
  np.testing.assert_allclose(found_boxes[1], [10 / 16, 10 / 16, 14 / 16, 14 / 16])
  # Against scipy's labelling of the single image.
  labels, _ = ndimage.label(mask[1], structure=np.ones((3, 3)))
  biggest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
  np.testing.assert_array_equal(boxes.largest_components(mask)[1], biggest)


def test_diagonal_pixels_are_one_component():
  mask = np.zeros((1, 6, 6), bool)
  mask[0, [0, 1, 2, 3], [0, 1, 2, 3]] = True  # 8-connected diagonal (4 px)
  mask[0, 5, 5] = True
  found_boxes, _ = boxes.boxes_from_foreground(mask)
  np.testing.assert_allclose(found_boxes[0], [0, 0, 4 / 6, 4 / 6])


def test_margin_grows_boxes_and_clips_to_the_image():
  mask = np.zeros((1, 10, 10), bool)
  mask[0, 1:5, 4:8] = True  # box (0.1, 0.4, 0.5, 0.8), 0.4 x 0.4
  found_boxes, _ = boxes.boxes_from_foreground(mask, margin=0.5)
  # 0.2 on every side: (-0.1 -> 0, 0.2, 0.7, 1.0 -> clipped at 1).
  np.testing.assert_allclose(found_boxes[0], [0.0, 0.2, 0.7, 1.0], atol=1e-6)
  np.testing.assert_array_equal(boxes.expand_boxes(np.zeros((1, 4)), margin=0.3), 0.0)
  with pytest.raises(ValueError, match='margin'):
    boxes.expand_boxes(np.zeros((1, 4)), margin=-0.1)
