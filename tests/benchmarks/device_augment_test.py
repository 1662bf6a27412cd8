"""benchmarks/device_augment.py: a smoke run, its inputs, and no TensorFlow."""

import re
import subprocess
import sys

import numpy as np

from tests.helpers import benchmark_scripts as scripts


def test_device_augment_times_the_steps_with_and_without_it_and_prints_the_share_last():
  lines = scripts.run('device_augment.py', *scripts.TINY_STEPS)
  # A share may come out negative on a busy machine: the sign is not checked.
  assert re.fullmatch(r'device augmentation / step: -?\d+\.\d{3}%', lines[-1]), lines[-1]
  assert re.fullmatch(r'augmentation alone / ce step: \d+\.\d{3}%', lines[-2]), lines[-2]
  rows = {line.split()[0] for line in lines if line.startswith(('ce', 'care', 'augment alone'))}
  assert {'ce', 'ce+augment', 'care', 'care+augment', 'augment'} <= rows


def test_device_augment_inputs_follow_the_contract():
  device_augment = scripts.import_script('device_augment')

  batch = device_augment.random_augment_inputs(
    batch_size=6, image_size=16, num_classes=3, num_boxes=2, boxed_fraction=0.5, seed=0
  )
  assert batch['image'].dtype == np.uint8 and batch['image'].shape == (6, 16, 16, 3)
  assert batch['geometry'].shape == (6, 3, 3) and batch['color'].shape == (6, 4)
  np.testing.assert_array_equal(batch['geometry'][:, 2], np.tile([0.0, 0.0, 1.0], (6, 1)))
  # The crop lies inside the image: the output's corners map into [0, 1]^2 (up to rotation
  # about the crop's centre, which keeps the centre's image inside).
  centre = batch['geometry'][:, :2] @ np.array([0.5, 0.5, 1.0])
  assert np.all((centre >= 0) & (centre <= 1))
  np.testing.assert_array_equal(batch['box_count'] > 0, np.arange(6) < 3)
  assert np.all(batch['box_count'] <= 2)
  boxes = batch['boxes']
  assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[..., 2:] > boxes[..., :2])


def test_device_augment_benchmark_imports_no_tensorflow():
  code = (
    'import sys; sys.path.insert(0, sys.argv[1]); import device_augment; '
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch')); "
    'assert not bad, bad'
  )
  subprocess.run([sys.executable, '-c', code, str(scripts.BENCHMARKS)], check=True, timeout=120)
