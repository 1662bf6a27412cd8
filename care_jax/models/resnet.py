"""ResNet-18/34/50/101/152 backbones with torchvision's exact layout (He et al. 2016; ResNet v1.5).

The backbone returns the output of ``layer4`` (stride 32: 7x7 for a 224 input), the map Grad-CAM
uses. Parameter tree (names follow torchvision's state dict, '.' -> '_' for block indices)::

  conv1, bn1                                  # 7x7/2 stem conv (no bias), BatchNorm
  layer{1..4}_{j}/conv1, bn1, conv2, bn2[, conv3, bn3][, downsample_conv, downsample_bn]

so torchvision's ``layer2.0.downsample.0.weight`` is ``layer2_0/downsample_conv/kernel`` (after an
[O, I, kh, kw] -> [kh, kw, I, O] transpose) and ``bn1.running_mean`` is ``batch_stats/bn1/mean``.

Example::

  backbone = ResNet(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)   # resnet18
  variables = backbone.init(key, jnp.zeros((1, 224, 224, 3)), train=False)
"""

import functools
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax.models import layers
from care_jax.models import pooling


class _Block(nn.Module):
  """Shared fields and the projection shortcut of the residual blocks."""

  planes: int
  stride: int = 1
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32
  axis_name: str | None = None
  expansion: ClassVar[int] = 1

  @nn.nowrap  # returns constructors, not arrays: keep it out of Flax's method tracing/capture
  def _layers(self, *, train: bool) -> tuple[Callable[..., nn.Conv], Callable[..., nn.BatchNorm]]:
    """Bias-free conv and BatchNorm constructors bound to this block's dtypes and axis name."""
    conv = functools.partial(layers.conv_for, self, use_bias=False)
    norm = functools.partial(layers.batch_norm_for, self, train=train)
    return conv, norm

  def _shortcut(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Identity, or 1x1/stride conv + BN when the block changes the shape (torch's downsample)."""
    out_channels = self.planes * self.expansion
    if self.stride == 1 and x.shape[-1] == out_channels:
      return x
    conv, norm = self._layers(train=train)
    x = conv(out_channels, 1, stride=self.stride, name='downsample_conv')(x)
    return norm(name='downsample_bn')(x)


class BasicBlock(_Block):
  """BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), stride on conv1."""

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv, norm = self._layers(train=train)
    y = conv(self.planes, 3, stride=self.stride, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv(self.planes, 3, stride=1, name='conv2')(y)
    y = norm(name='bn2')(y)
    return nn.relu(y + self._shortcut(x, train=train))


class Bottleneck(_Block):
  """torchvision Bottleneck (v1.5): 1x1 -> 3x3 (with the stride) -> 1x1 x4 channels, + shortcut."""

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv, norm = self._layers(train=train)
    y = conv(self.planes, 1, stride=1, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv(self.planes, 3, stride=self.stride, name='conv2')(y)
    y = nn.relu(norm(name='bn2')(y))
    y = conv(self.planes * self.expansion, 1, stride=1, name='conv3')(y)
    y = norm(name='bn3')(y)
    return nn.relu(y + self._shortcut(x, train=train))


class ResNet(nn.Module):
  """ResNet backbone: stem (conv1 7x7/2, bn1, ReLU, maxpool 3x3/2 pad 1) and four stages.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-34/50.
    block_cls: ``BasicBlock`` or ``Bottleneck``.
    widths: ``planes`` of each stage; stages 2-4 halve the resolution in their first block.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay ``param_dtype``.
    axis_name: pmap/vmap axis over which BatchNorm averages its batch statistics.
  """

  stage_sizes: Sequence[int]
  block_cls: type[_Block]
  widths: Sequence[int] = (64, 128, 256, 512)
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Images [B, H, W, C] -> layer4 features [B, ceil(H/32), ceil(W/32), 512 * expansion]."""
    x = layers.check_nhwc(x, name='images')
    x = layers.conv_for(self, self.widths[0], 7, stride=2, use_bias=False, name='conv1')(x)
    x = nn.relu(layers.batch_norm_for(self, train=train, name='bn1')(x))
    # Flax pools pad with the reduction's identity (-inf for max), as torch's MaxPool2d(padding=1).
    x = pooling.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (num_blocks, planes) in enumerate(zip(self.stage_sizes, self.widths)):
      for index in range(num_blocks):
        x = self.block_cls(
          planes=planes,
          stride=2 if stage > 0 and index == 0 else 1,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          axis_name=self.axis_name,
          name=f'layer{stage + 1}_{index}',
        )(x, train=train)
    return x


# name -> (stage_sizes, block_cls), torchvision's resnet18 ... resnet152.
RESNET_CONFIGS: dict[str, tuple[tuple[int, ...], type[_Block]]] = {
  'resnet18': ((2, 2, 2, 2), BasicBlock),
  'resnet34': ((3, 4, 6, 3), BasicBlock),
  'resnet50': ((3, 4, 6, 3), Bottleneck),
  'resnet101': ((3, 4, 23, 3), Bottleneck),
  'resnet152': ((3, 8, 36, 3), Bottleneck),
}
