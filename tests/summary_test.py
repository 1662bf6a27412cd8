"""The event-file writer, read back with TensorFlow's own reader."""

import glob
import io
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from care_jax import summary


def _events(path):
  return list(tf.compat.v1.train.summary_iterator(path))


def test_crc32c_check_values():
  # RFC 3720 (iSCSI) B.4 test vectors and the standard check value.
  assert summary.crc32c(b'123456789') == 0xE3069283
  assert summary.crc32c(bytes(32)) == 0x8A9136AA
  assert summary.crc32c(bytes([0xFF] * 32)) == 0x62A8AB43
  assert summary.crc32c(bytes(range(32))) == 0x46DD794E


def test_scalars_read_back_with_tensorflow(tmp_path):
  with summary.SummaryWriter(str(tmp_path)) as writer:
    writer.scalar('train/loss', 0.25, step=10)
    writer.scalars({'val/mca': 0.75, 'val/rare_recall': 1.0 / 3.0}, step=20)
    writer.scalar('train/loss', -2.5, step=2**40)  # int64 steps
  (path,) = glob.glob(str(tmp_path / 'events.out.tfevents.*'))
  assert os.path.basename(path).startswith('events.out.tfevents.')
  assert f'.{socket.gethostname()}.{os.getpid()}.' in os.path.basename(path)
  events = _events(path)
  assert events[0].file_version == 'brain.Event:2'
  got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
  assert got == [
    (10, 'train/loss', 0.25),
    (20, 'val/mca', 0.75),
    (20, 'val/rare_recall', np.float32(1.0 / 3.0)),
    (2**40, 'train/loss', -2.5),
  ]
  assert all(abs(e.wall_time - events[0].wall_time) < 60 for e in events)


@pytest.mark.parametrize('shape', [(5, 7, 3), (6, 4), (3, 9, 4), (4, 4, 1)])
def test_images_read_back_with_tensorflow(tmp_path, shape):
  rng = np.random.default_rng(0)
  array = rng.integers(0, 256, shape, dtype=np.uint8)
  with summary.SummaryWriter(str(tmp_path)) as writer:
    writer.image('attention/validation', array, step=3)
  (path,) = glob.glob(str(tmp_path / 'events.out.tfevents.*'))
  (event,) = _events(path)[1:]
  (value,) = event.summary.value
  assert (event.step, value.tag) == (3, 'attention/validation')
  image = value.image
  channels = shape[2] if len(shape) == 3 else 1
  assert (image.height, image.width, image.colorspace) == (shape[0], shape[1], channels)
  decoded = tf.io.decode_png(image.encoded_image_string).numpy()
  np.testing.assert_array_equal(decoded, array.reshape(shape[0], shape[1], channels))


def test_png_bytes_are_written_as_given(tmp_path):
  buffer = io.BytesIO()
  Image.new('RGB', (12, 8), (10, 20, 30)).save(buffer, format='PNG')
  png = buffer.getvalue()
  with summary.SummaryWriter(str(tmp_path)) as writer:
    writer.image('figure', png, step=1)
    path = writer.path
  image = _events(path)[1].summary.value[0].image
  assert image.encoded_image_string == png
  assert (image.height, image.width, image.colorspace) == (8, 12, 3)


def test_tensorflow_rejects_a_corrupted_record(tmp_path):
  # The reader verifies our checksums: a flipped data byte must fail them.
  with summary.SummaryWriter(str(tmp_path)) as writer:
    writer.scalar('x', 1.0, step=1)
    path = writer.path
  data = bytearray(open(path, 'rb').read())
  data[-6] ^= 0x01  # a byte of the last record's payload
  with open(path, 'wb') as f:
    f.write(bytes(data))
  with pytest.raises(tf.errors.DataLossError):
    _events(path)


def test_flush_makes_records_visible_and_writers_never_share_a_file(tmp_path):
  first = summary.SummaryWriter(str(tmp_path))
  second = summary.SummaryWriter(str(tmp_path))
  assert first.path != second.path
  first.scalar('a', 1.0, step=1)
  first.flush()
  assert [v.tag for e in _events(first.path)[1:] for v in e.summary.value] == ['a']
  first.close()
  second.close()
  first.close()  # closing twice is harmless
  with pytest.raises(ValueError, match='closed'):
    first.scalar('a', 2.0, step=2)


def test_bad_images_raise(tmp_path):
  with summary.SummaryWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match='uint8'):
      writer.image('x', np.zeros((4, 4, 3), np.float32), step=0)
    with pytest.raises(ValueError, match=r'\[H, W, C\]'):
      writer.image('x', np.zeros((4, 4, 5), np.uint8), step=0)
    buffer = io.BytesIO()
    Image.new('RGB', (4, 4)).save(buffer, format='JPEG')
    with pytest.raises(ValueError, match='PNG'):
      writer.image('x', buffer.getvalue(), step=0)


def test_importing_the_writer_loads_no_tensorflow_or_tensorboard():
  code = (
    'import sys, care_jax.summary;'
    'assert "tensorflow" not in sys.modules and "tensorboard" not in sys.modules'
  )
  subprocess.run([sys.executable, '-c', code], check=True)
