"""The TensorBoard writer, read back with TensorFlow's reader and TensorBoard's own."""

import glob
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
import tensorflow as tf

from care_jax.training import summary


def _events(logdir):
  (path,) = glob.glob(f'{logdir}/events.out.tfevents.*')
  return list(tf.compat.v1.train.summary_iterator(path))


def _tensorboard(logdir, plugin):
  """{tag: [(step, value)]} of `plugin` as TensorBoard's server loads them."""
  board = plugin_event_accumulator.EventAccumulator(str(logdir), size_guidance={'tensors': 0})
  board.Reload()
  return {
    tag: [(t.step, tf.make_ndarray(t.tensor_proto)) for t in board.Tensors(tag)]
    for tag in board.PluginTagToContent(plugin)
  }


def test_scalars_read_back_as_tensorboard_scalars(tmp_path):
  with summary.SummaryWriter(tmp_path) as writer:
    writer.scalars({'train/loss': 0.25}, step=10)
    writer.scalars({'val/mca': 0.75, 'val/rare_recall': 1.0 / 3.0}, step=20)
    writer.scalars({'train/loss': -2.5}, step=2**40)  # int64 steps
  events = _events(tmp_path)
  assert events[0].file_version == 'brain.Event:2'
  got = [
    (e.step, v.tag, tf.make_ndarray(v.tensor).item(), v.metadata.plugin_data.plugin_name)
    for e in events[1:]
    for v in e.summary.value
  ]
  assert got == [
    (10, 'train/loss', 0.25, 'scalars'),
    (20, 'val/mca', 0.75, 'scalars'),
    (20, 'val/rare_recall', np.float32(1.0 / 3.0), 'scalars'),
    (2**40, 'train/loss', -2.5, 'scalars'),
  ]
  scalars = _tensorboard(tmp_path, 'scalars')
  assert sorted(scalars) == ['train/loss', 'val/mca', 'val/rare_recall']
  assert scalars['train/loss'] == [(10, 0.25), (2**40, -2.5)]


@pytest.mark.parametrize('shape', [(5, 7, 3), (6, 4), (3, 9, 4), (4, 4, 1), (2, 3, 2)])
def test_images_read_back_as_tensorboard_images(tmp_path, shape):
  array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  with summary.SummaryWriter(tmp_path) as writer:
    writer.image('attention', array, step=3)
  ((step, (width, height, png)),) = _tensorboard(tmp_path, 'images')['attention']
  assert (step, int(height), int(width)) == (3, shape[0], shape[1])
  decoded = tf.io.decode_png(png).numpy()
  np.testing.assert_array_equal(decoded, array.reshape(*shape[:2], -1))


def test_bad_images_raise(tmp_path):
  with summary.SummaryWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match='uint8'):
      writer.image('x', np.zeros((4, 4, 3), np.float32), step=0)
    with pytest.raises(ValueError, match=r'\[H, W, C\]'):
      writer.image('x', np.zeros((4, 4, 5), np.uint8), step=0)
    with pytest.raises(ValueError, match=r'\[H, W, C\]'):
      writer.image('x', np.zeros((2, 4, 4, 3), np.uint8), step=0)


def test_flush_makes_records_visible_and_a_closed_writer_refuses(tmp_path):
  writer = summary.SummaryWriter(tmp_path)
  writer.scalars({'a': 1.0}, step=1)
  writer.flush()
  assert [v.tag for e in _events(tmp_path)[1:] for v in e.summary.value] == ['a']
  writer.close()
  writer.close()  # closing twice is harmless
  writer.flush()
  with pytest.raises(ValueError, match='closed'):
    writer.scalars({'a': 2.0}, step=2)


def test_writes_to_any_tensorflow_filesystem():
  # ram:// stands for gs:// and the other file systems TensorFlow has.
  with summary.SummaryWriter('ram://summary_test/run') as writer:
    writer.scalars({'a': 1.0}, step=1)
  (name,) = tf.io.gfile.listdir('ram://summary_test/run')
  assert name.startswith('events.out.tfevents.')


def test_writes_without_the_tensorboard_package(tmp_path):
  # TensorFlow 2.21 does not install tensorboard; tf.summary.scalar needs it.
  code = (
    'import sys; sys.modules["tensorboard"] = None;'
    'import numpy as np; from care_jax.training import summary;'
    f'w = summary.SummaryWriter({str(tmp_path)!r});'
    'w.scalars({"a": 1.0}, step=1); w.image("b", np.zeros((2, 2, 3), np.uint8), step=1); w.close()'
  )
  subprocess.run([sys.executable, '-c', code], check=True, capture_output=True)
  assert [v.tag for e in _events(tmp_path)[1:] for v in e.summary.value] == ['a', 'b']


def test_importing_the_writer_loads_no_tensorflow():
  code = 'import sys, care_jax.training.summary; assert "tensorflow" not in sys.modules'
  subprocess.run([sys.executable, '-c', code], check=True)
