"""VGG-19 backbone (Simonyan & Zisserman 2015), torchvision's ``vgg19`` without BatchNorm.

The backbone is torchvision's ``features`` minus its final maxpool: it returns the last conv block's
ReLU output (stride 16: 14x14 for a 224 input), the map Grad-CAM uses for VGG. The final maxpool
belongs to ``heads.VGGHead``.

Convs are named ``conv{block}_{index}`` (1-based). torchvision's ``features.{i}`` counts convs,
ReLUs and maxpools, so conv1_1, conv1_2, conv2_1, ... are ``features.0, 2, 5, 7, 10, 12, 14, 16,
19, 21, 23, 25, 28, 30, 32, 34``.

Example::

  backbone = VGG()
  features = backbone.apply(variables, jnp.zeros((1, 224, 224, 3)), train=False)  # [1, 14, 14, 512]
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax.models import layers
from care_jax.models import pooling

# Channels of each conv block; blocks are separated by a 2x2/2 maxpool (none after the last).
VGG19_BLOCKS: tuple[tuple[int, ...], ...] = (
  (64, 64),
  (128, 128),
  (256, 256, 256, 256),
  (512, 512, 512, 512),
  (512, 512, 512, 512),
)


class VGG(nn.Module):
  """VGG conv stack: per block, conv3x3 (padding 1, bias) + ReLU, then maxpool 2x2 between blocks.

  Attributes:
    blocks: channels of the convs of each block (default VGG-19).
    dtype: computation dtype; parameters stay ``param_dtype``.
  """

  blocks: Sequence[Sequence[int]] = VGG19_BLOCKS
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Images [B, H, W, C] -> features [B, H // 16, W // 16, 512] (the last pool is the head's)."""
    del train  # no BatchNorm or dropout in the conv stack
    x = layers.check_nhwc(x, name='images')
    for block, channels in enumerate(self.blocks):
      if block > 0:
        x = pooling.max_pool(x, (2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))
      for index, features in enumerate(channels):
        name = f'conv{block + 1}_{index + 1}'
        x = nn.relu(layers.conv_for(self, features, 3, use_bias=True, name=name)(x))
    return x
