"""DenseNet-121/161/169/201 backbones, torchvision's exact layout (Huang et al. 2017, DenseNet-BC).

The backbone returns torchvision's ``features`` followed by the ReLU that torchvision's
``DenseNet.forward`` applies before pooling (timm folds it into ``norm5``): stride 32, 7x7 for a
224 input, the map Grad-CAM uses. With the GAP + linear head this is torchvision's classifier,
so CAM works as for the ResNets. Parameter tree (names follow torchvision's state dict without
its ``features.`` prefix)::

  conv0, norm0                                      # 7x7/2 stem conv (no bias), BatchNorm
  denseblock{b}/denselayer{i}/norm1, conv1, norm2, conv2   # BN-ReLU-1x1, BN-ReLU-3x3 (b, i 1-based)
  transition{b}/norm, conv                          # BN-ReLU-1x1, then avg pool 2x2/2 (b < 4)
  norm5                                             # the final BatchNorm

so torchvision's ``features.denseblock2.denselayer3.conv1.weight`` is
``denseblock2/denselayer3/conv1/kernel`` (after an [O, I, kh, kw] -> [kh, kw, I, O] transpose) and
``features.norm5.running_var`` is ``batch_stats/norm5/var``.

Example::

  backbone = DenseNet(**DENSENET_CONFIGS['densenet121'])
  variables = backbone.init(key, jnp.zeros((1, 224, 224, 3)), train=False)
  features = backbone.apply(variables, images, train=False)   # [B, 7, 7, 1024] for 224 x 224
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax.models import layers
from care_jax.models import pooling


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  """torch's ``AvgPool2d(2, stride=2)`` on NHWC: mean of each 2x2 block, an odd last row/column
  dropped (floor), accumulated in float32."""
  batch, height, width, channels = x.shape
  x_even = x[:, : height // 2 * 2, : width // 2 * 2, :]
  blocks = x_even.reshape(batch, height // 2, 2, width // 2, 2, channels)
  return jnp.mean(blocks, axis=(2, 4), dtype=jnp.float32).astype(x.dtype)


class DenseLayer(layers.Layer):
  """BN-ReLU-conv1x1 (``bn_size * growth_rate`` channels), BN-ReLU-conv3x3 (``growth_rate``).

  Takes the concatenation of the block's input and all earlier layers' outputs; returns only the
  ``growth_rate`` new channels (the block concatenates them).
  """

  growth_rate: int
  bn_size: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nn.relu(layers.batch_norm_for(self, train=train, name='norm1')(x))
    y = layers.conv_for(self, self.bn_size * self.growth_rate, 1, use_bias=False, name='conv1')(y)
    y = nn.relu(layers.batch_norm_for(self, train=train, name='norm2')(y))
    return layers.conv_for(self, self.growth_rate, 3, use_bias=False, name='conv2')(y)


class DenseBlock(layers.Layer):
  """``num_layers`` dense layers, each fed the channel concatenation of everything before it.

  Returns [B, H, W, C_in + num_layers * growth_rate] (input channels first, as torch's
  ``torch.cat(features, 1)``).
  """

  num_layers: int
  growth_rate: int
  bn_size: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    features = [x]
    for index in range(self.num_layers):
      new = DenseLayer(
        growth_rate=self.growth_rate,
        bn_size=self.bn_size,
        name=f'denselayer{index + 1}',
        **self.sublayer(),
      )(jnp.concatenate(features, axis=-1), train=train)
      features.append(new)
    return jnp.concatenate(features, axis=-1)


class Transition(layers.Layer):
  """BN-ReLU-conv1x1 to ``features`` channels, then average pool 2x2/2 (torch's ``_Transition``)."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.relu(layers.batch_norm_for(self, train=train, name='norm')(x))
    x = layers.conv_for(self, self.features, 1, use_bias=False, name='conv')(x)
    return avg_pool_2x2(x)


class DenseNet(layers.Layer):
  """DenseNet-BC backbone: stem (conv0 7x7/2, norm0, ReLU, maxpool 3x3/2 pad 1), dense blocks
  separated by transitions, the final ``norm5`` and ReLU.

  ``dtype``, ``param_dtype`` and ``axis_name`` are `layers.Layer`'s.

  Attributes:
    block_sizes: dense layers per block, e.g. (6, 12, 24, 16) for DenseNet-121.
    growth_rate: channels each dense layer adds (k in the paper).
    num_init_features: channels of the stem conv.
    bn_size: the bottleneck 1x1 conv has ``bn_size * growth_rate`` channels.
    compression: a transition keeps ``int(channels * compression)`` channels (torchvision: // 2).
  """

  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  compression: float = 0.5

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Images [B, H, W, C] -> ReLU(norm5) features [B, ~H/32, ~W/32, C_last] (1024 for 121)."""
    x = layers.check_nhwc(x, name='images')
    x = layers.conv_for(self, self.num_init_features, 7, stride=2, use_bias=False, name='conv0')(x)
    x = nn.relu(layers.batch_norm_for(self, train=train, name='norm0')(x))
    # Flax pools pad with the reduction's identity (-inf for max), as torch's MaxPool2d(padding=1).
    x = pooling.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    channels = self.num_init_features
    for block, num_layers in enumerate(self.block_sizes):
      x = DenseBlock(
        num_layers=num_layers,
        growth_rate=self.growth_rate,
        bn_size=self.bn_size,
        name=f'denseblock{block + 1}',
        **self.sublayer(),
      )(x, train=train)
      channels += num_layers * self.growth_rate
      if block < len(self.block_sizes) - 1:
        channels = int(channels * self.compression)
        x = Transition(features=channels, name=f'transition{block + 1}', **self.sublayer())(
          x, train=train
        )
    return nn.relu(layers.batch_norm_for(self, train=train, name='norm5')(x))


# name -> DenseNet attributes, torchvision's densenet121/161/169/201 (bn_size 4, compression 0.5).
DENSENET_CONFIGS: dict[str, dict[str, Any]] = {
  'densenet121': dict(block_sizes=(6, 12, 24, 16), growth_rate=32, num_init_features=64),
  'densenet161': dict(block_sizes=(6, 12, 36, 24), growth_rate=48, num_init_features=96),
  'densenet169': dict(block_sizes=(6, 12, 32, 32), growth_rate=32, num_init_features=64),
  'densenet201': dict(block_sizes=(6, 12, 48, 32), growth_rate=32, num_init_features=64),
}
