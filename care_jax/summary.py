"""TensorBoard event files without TensorFlow or TensorBoard.

TF 2.21 no longer installs ``tensorboard`` and CLU's writers import it, so
this module writes the event file format itself (plain Python, numpy and
Pillow):

* TFRecord framing, one record per ``Event`` (``tensorflow/core/lib/io/record_writer.cc``)::

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

  with little-endian integers, CRC-32C (Castagnoli) and
  ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2^32)``.
* ``Event`` and ``Summary`` protocol buffers (``tensorflow/core/util/event.proto``,
  ``tensorflow/core/framework/summary.proto``) encoded by hand: the first
  event holds ``file_version = "brain.Event:2"``, the others a ``Summary``
  with a ``simple_value`` (scalars) or an ``Image`` (PNG) per value.

TensorBoard reads every file whose name contains ``tfevents``; files are named
``events.out.tfevents.<time>.<host>.<pid>.<n>`` as TensorFlow names its own,
so that two writers of one directory never share a file.

Example::

  with SummaryWriter('runs/care/tensorboard') as writer:
    writer.scalar('train/loss', 0.53, step=100)
    writer.image('attention/validation', uint8_hwc_array, step=100)

  # tensorboard --logdir runs/care/tensorboard
"""

from collections.abc import Mapping
import io
import itertools
import os
import socket
import struct
import time

import numpy as np
from PIL import Image

__all__ = ['SummaryWriter', 'crc32c', 'masked_crc32c']

_FILE_VERSION = b'brain.Event:2'
_COUNTER = itertools.count()


def _crc32c_table() -> tuple[int, ...]:
  # Reflected CRC-32C polynomial (Castagnoli), byte-wise table.
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of ``data``, as TFRecord files use.

  Examples:
    >>> hex(crc32c(b'123456789'))  # the standard check value
    '0xe3069283'
  """
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The TFRecord checksum: CRC-32C rotated right by 15 bits plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  return (
    length
    + struct.pack('<I', masked_crc32c(length))
    + data
    + struct.pack('<I', masked_crc32c(data))
  )


# Protocol buffer wire format: a key (field number << 3 | wire type), then
# the value: varint (0), 64-bit (1), length-delimited (2) or 32-bit (5).


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # Negative int64s take ten bytes (two's complement).
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _int_field(field: int, value: int) -> bytes:
  return _key(field, 0) + _varint(value)


def _bytes_field(field: int, value: bytes) -> bytes:
  return _key(field, 2) + _varint(len(value)) + value


# Event fields: wall_time = 1 (double), step = 2, file_version = 3, summary = 5.
_FILE_VERSION_FIELD = 3
_SUMMARY_FIELD = 5


def _event(step: int, field: int, payload: bytes) -> bytes:
  return (
    _key(1, 1) + struct.pack('<d', time.time()) + _int_field(2, step) + _bytes_field(field, payload)
  )


def _summary(values: list[bytes]) -> bytes:
  """A `Summary` of `Summary.Value`s (repeated field 1)."""
  return b''.join(_bytes_field(1, value) for value in values)


def _scalar_value(tag: str, value: float) -> bytes:
  # Summary.Value: tag = 1, simple_value = 2 (float).
  return _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack('<f', value)


def _image_value(tag: str, png: bytes, height: int, width: int, channels: int) -> bytes:
  # Summary.Image: height = 1, width = 2, colorspace = 3 (channels),
  # encoded_image_string = 4; Summary.Value: tag = 1, image = 4.
  image = (
    _int_field(1, height) + _int_field(2, width) + _int_field(3, channels) + _bytes_field(4, png)
  )
  return _bytes_field(1, tag.encode()) + _bytes_field(4, image)


def _png(image: bytes | np.ndarray) -> tuple[bytes, int, int, int]:
  """PNG bytes, height, width and channels of PNG bytes or a uint8 array."""
  if isinstance(image, bytes):
    with Image.open(io.BytesIO(image)) as decoded:
      if decoded.format != 'PNG':
        raise ValueError(f'image bytes must be a PNG, got format {decoded.format!r}.')
      return image, decoded.height, decoded.width, len(decoded.getbands())
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f'image must be PNG bytes or a uint8 array, got dtype {array.dtype}.')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (2, 3, 4))):
    raise ValueError(
      f'image must have shape [H, W] or [H, W, C] with C in 1..4, got {array.shape}.'
    )
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  channels = 1 if array.ndim == 2 else array.shape[-1]
  return buffer.getvalue(), array.shape[0], array.shape[1], channels


class SummaryWriter:
  """Appends scalar and image summaries to a new event file in `logdir`.

  Not thread-safe; in multi-process runs let only process 0 write. Records are
  buffered: call :meth:`flush` (or close the writer) to make them visible.

  Args:
    logdir: directory of the event file (created if missing; a local path).
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = (
      f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
      f'{os.getpid()}.{next(_COUNTER)}'
    )
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, 'wb')  # pylint: disable=consider-using-with
    self._write(_event(0, _FILE_VERSION_FIELD, _FILE_VERSION))
    self.flush()

  def _write(self, event: bytes) -> None:
    if self._file.closed:
      raise ValueError(f'SummaryWriter of {self.path} is closed.')
    self._file.write(_record(event))

  def scalar(self, tag: str, value: float, step: int) -> None:
    """Writes ``value`` (cast to float32, as TensorBoard stores it) at ``step``."""
    self.scalars({tag: value}, step)

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    """Writes several scalars of one step in one event."""
    self._write(
      _event(
        int(step),
        _SUMMARY_FIELD,
        _summary([_scalar_value(tag, float(value)) for tag, value in values.items()]),
      )
    )

  def image(self, tag: str, image: bytes | np.ndarray, step: int) -> None:
    """Writes an image: PNG bytes, or a uint8 array [H, W] or [H, W, C] (C <= 4)."""
    png, height, width, channels = _png(image)
    self._write(
      _event(int(step), _SUMMARY_FIELD, _summary([_image_value(tag, png, height, width, channels)]))
    )

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()

  def __enter__(self) -> 'SummaryWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
