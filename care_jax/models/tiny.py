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
    if len(self.widths) != len(self.strides):
      raise ValueError(
        f'widths and strides must have the same length; got widths={self.widths}, '
        f'strides={self.strides}.'
      )
    x = layers.check_nhwc(x, name='images')
    for stage, (width, stride) in enumerate(zip(self.widths, self.strides)):
      name = f'stage{stage + 1}'
      # No conv bias: the BatchNorm's bias replaces it.
      x = layers.conv_for(self, width, 3, stride=stride, use_bias=False, name=f'{name}_conv')(x)
      x = nn.relu(layers.batch_norm_for(self, train=train, name=f'{name}_bn')(x))
    return x
