"""TensorBoard scalars and images, written by TensorFlow's own event writer.

`tf.summary.create_file_writer` writes the event files (any filesystem
TensorFlow has: a local directory, ``gs://`` on a TPU VM) and `tf.summary.write`
appends a summary; both are TensorFlow core ops. `tf.summary.scalar` and
`tf.summary.image` are not used: since TF 2.21 their implementation lives in the
``tensorboard`` package, which TensorFlow no longer installs. The values carry
the metadata TensorBoard's own v2 summaries write (plugin ``scalars``: a
float32 scalar; plugin ``images``: ``[width, height, png...]`` strings), so
TensorBoard shows them as it shows its own.

TensorFlow is imported when a writer is made, not with this module: the
training loop imports it, and the training steps run without TensorFlow.

Example::

  with SummaryWriter('runs/care') as writer:
    writer.scalars({'train/loss': 0.53}, step=100)
    writer.image('attention', uint8_hwc_array, step=100)

  # tensorboard --logdir runs/care
"""

from collections.abc import Mapping

import numpy as np

__all__ = ['SummaryWriter']


class SummaryWriter:
  """Appends scalar and image summaries to a new event file in `logdir`.

  Let only process 0 of a multi-process run write. Records are buffered: call
  :meth:`flush` (or close the writer) to make them visible.

  Args:
    logdir: directory of the event file (created if missing), a local path or
      any URL TensorFlow's file systems take (``gs://...``).
  """

  def __init__(self, logdir: str):
    from care_jax.data._tensorflow import tf  # pylint: disable=g-import-not-at-top

    self._tf = tf
    self._writer = tf.summary.create_file_writer(str(logdir))
    self._scalar_metadata = _metadata(tf, 'scalars', 'DATA_CLASS_SCALAR')
    self._image_metadata = _metadata(tf, 'images', 'DATA_CLASS_BLOB_SEQUENCE')
    self._closed = False

  def _write(self, tag: str, tensor, step: int, metadata) -> None:
    if self._closed:
      raise ValueError('The SummaryWriter is closed.')
    with self._writer.as_default():
      self._tf.summary.write(tag, tensor, step=int(step), metadata=metadata)

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    """Writes each value (as float32, as TensorBoard stores scalars) at `step`."""
    for tag, value in values.items():
      self._write(
        tag, self._tf.constant(float(value), self._tf.float32), step, self._scalar_metadata
      )

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    """Writes a uint8 image, [H, W] or [H, W, C] with C in 1..4, as a PNG."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
      raise ValueError(f'image must be a uint8 array, got dtype {array.dtype}.')
    if array.ndim == 2:
      array = array[..., None]
    if array.ndim != 3 or not 1 <= array.shape[-1] <= 4:
      raise ValueError(
        f'image must have shape [H, W] or [H, W, C] with C in 1..4, got {image.shape}.'
      )
    height, width, _ = array.shape
    png = self._tf.io.encode_png(array)
    tensor = self._tf.stack([self._tf.constant(str(width)), self._tf.constant(str(height)), png])
    self._write(tag, tensor, step, self._image_metadata)

  def flush(self) -> None:
    if not self._closed:
      self._writer.flush()

  def close(self) -> None:
    if not self._closed:
      self._writer.close()
      self._closed = True

  def __enter__(self) -> 'SummaryWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _metadata(tf, plugin_name: str, data_class: str):
  return tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name=plugin_name),
    data_class=data_class,
  )
