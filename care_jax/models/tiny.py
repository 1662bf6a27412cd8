"""A tiny CNN for tests and CPU demos: stages of conv3x3 (no bias) - BatchNorm - ReLU.

With the default ``widths=(16, 32, 64, 128)`` and ``strides=(2, 2, 2, 1)`` a 64x64 input gives an
8x8x128 feature map (stride 8), fine enough for Grad-CAM to localise a lesion box. The stride-1
last stage adds capacity at 8x8, where it is cheap.

Example::

  backbone = TinyCNN()
  variables = backbone.init(key, jnp.zeros((2, 64, 64, 3)), train=False)
  features = backbone.apply(variables, jnp.zeros((2, 64, 64, 3)), train=False)   # [2, 8, 8, 128]
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax.models import layers


class TinyCNN(nn.Module):
  """Stage i: conv3x3 with ``widths[i]`` channels and stride ``strides[i]`` ('stage{i+1}_conv'),
  BatchNorm ('stage{i+1}_bn'), ReLU. Padding 1 (torch's) so the map size is ceil(size / stride).

  Attributes:
    widths: channels of each stage.
    strides: stride of each stage (same length as ``widths``).
    dtype: computation dtype; parameters stay ``param_dtype``.
    axis_name: pmap/vmap axis over which BatchNorm averages its batch statistics.
  """

  widths: Sequence[int] = (16, 32, 64, 128)
  strides: Sequence[int] = (2, 2, 2, 1)
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Images [B, H, W, C] -> features [B, H / prod(strides), W / prod(strides), widths[-1]]."""
    layers.check_nhwc(x, name='images')
    if len(self.widths) != len(self.strides):
      raise ValueError(
          f'widths and strides must have the same length; got widths={self.widths}, '
          f'strides={self.strides}.'
      )
    x = jnp.asarray(x)
    for stage, (width, stride) in enumerate(zip(self.widths, self.strides)):
      x = nn.Conv(
          width,
          (3, 3),
          strides=(stride, stride),
          padding=layers.torch_padding(3),
          use_bias=False,  # the BatchNorm's bias replaces it
          kernel_init=layers.conv_kernel_init,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f'stage{stage + 1}_conv',
      )(x)
      x = layers.batch_norm(
          train=train,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          axis_name=self.axis_name,
          name=f'stage{stage + 1}_bn',
      )(x)
      x = nn.relu(x)
    return x
