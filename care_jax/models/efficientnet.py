"""EfficientNet-B0 ... B4 backbones with torchvision's layout and defaults (Tan & Le 2019).

The backbone returns torchvision's ``features`` (stem, seven MBConv stages, the 1x1 head conv
with BatchNorm and SiLU): stride 32, 7x7x1280 for B0 at 224, the map Grad-CAM uses. The
classifier (dropout, then a linear layer on the pooled features) is
`care_jax.models.heads.DropoutLinearHead`.

MBConv block (torchvision ``MBConv``, timm ``InvertedResidual`` / ``DepthwiseSeparableConv``)::

  y = [1x1 expand conv, BN, SiLU]   (expand ratio 6; absent for ratio 1)
  y = kxk depthwise conv (stride), BN, SiLU
  y = y * sigmoid(conv1x1(silu(conv1x1(mean_hw(y)))))      # squeeze-excitation, C_in // 4
  y = 1x1 project conv, BN
  x = x + drop_path(y)              (only for stride 1 and C_in == C_out)

BatchNorm has torch's defaults (eps 1e-5, momentum 0.1) as torchvision's and timm's
``efficientnet_b*`` (not ``tf_efficientnet_b*``, whose 1e-3 and 'SAME' padding are another
port). Widths scale by ``width_mult`` rounded to multiples of 8 (``_make_divisible``), depths by
``ceil(depth_mult * n)``. Stochastic depth grows linearly to 0.2 over the blocks
(torchvision's ``stochastic_depth_prob * block_id / total_blocks``). Convs start from
``kaiming_normal(fan_out)``, as torchvision's. Parameter tree::

  stem_conv, stem_bn                         # 3x3/2 conv, BN, SiLU
  stage{s}_{j}/[expand_conv, expand_bn,] dw_conv, dw_bn, se_reduce, se_expand,
              project_conv, project_bn       # s = 1 ... 7
  head_conv, head_bn                         # 1x1 conv to 4 x the last stage's width

`care_jax.models.weight_maps` maps it to torchvision's (``features.2.0.block.1.0``) and timm's
(``blocks.1.0.conv_dw``) names.

Example::

  backbone = EfficientNet(**EFFICIENTNET_CONFIGS['efficientnet_b0'])
  features = backbone.apply(variables, images, train=False)   # [B, 7, 7, 1280] for 224 x 224
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax.models import convnext
from care_jax.models import layers

# EfficientNet-B0's stages: (expand ratio, kernel, stride, input channels, output channels, blocks).
B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
  (1, 3, 1, 32, 16, 1),
  (6, 3, 2, 16, 24, 2),
  (6, 5, 2, 24, 40, 2),
  (6, 3, 2, 40, 80, 3),
  (6, 5, 1, 80, 112, 3),
  (6, 5, 2, 112, 192, 4),
  (6, 3, 1, 192, 320, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's ``_make_divisible`` (timm's ``make_divisible``, round_limit 0.9): the nearest
  multiple of ``divisor``, at least ``divisor``, never more than 10% below ``value``."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class MBConv(layers.Layer):
  """Inverted residual block with squeeze-excitation (see the module docstring)."""

  expand_ratio: int
  kernel_size: int
  stride: int
  features: int
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    in_channels = x.shape[-1]
    expanded = make_divisible(in_channels * self.expand_ratio)

    def conv_bn(y, features, kernel, name, *, stride=1, groups=1, act=True):
      y = layers.conv_for(
        self, features, kernel, stride=stride, groups=groups, use_bias=False, name=f'{name}_conv'
      )(y)
      y = layers.batch_norm_for(self, train=train, name=f'{name}_bn')(y)
      return nn.silu(y) if act else y

    y = x
    if expanded != in_channels:
      y = conv_bn(y, expanded, 1, 'expand')
    y = conv_bn(y, expanded, self.kernel_size, 'dw', stride=self.stride, groups=expanded)
    squeezed = max(1, in_channels // 4)
    scale = jnp.mean(y, axis=(1, 2), keepdims=True, dtype=jnp.float32).astype(y.dtype)
    scale = layers.conv_for(self, squeezed, 1, use_bias=True, name='se_reduce')(scale)
    scale = layers.conv_for(self, expanded, 1, use_bias=True, name='se_expand')(nn.silu(scale))
    y = y * nn.sigmoid(scale)
    y = conv_bn(y, self.features, 1, 'project', act=False)
    if self.stride == 1 and in_channels == self.features:
      y = x + convnext.drop_path(y, self.drop_path_rate, train=train)
    return y


class EfficientNet(layers.Layer):
  """EfficientNet backbone (B0 scaled by ``width_mult`` and ``depth_mult``).

  ``dtype``, ``param_dtype`` and ``axis_name`` are `layers.Layer`'s.

  Attributes:
    stages: the B0 stages (``B0_STAGES``: expand ratio, kernel, stride, input and output
      channels, blocks) before scaling; a prefix of them makes a small net for tests.
    width_mult: channel multiplier (1.0 for B0, 1.2 for B3).
    depth_mult: block-count multiplier (1.0 for B0, 1.4 for B3).
    stochastic_depth_prob: drop-path rate reached at the last block.
    classifier_dropout: the dropout rate of the head made for it (torchvision's ``dropout``;
      ``get_model``'s 'dropout_linear' head reads it): 0.2 for B0/B1, 0.3 for B2/B3, 0.4 for B4.
  """

  stages: Sequence[tuple[int, int, int, int, int, int]] = B0_STAGES
  width_mult: float = 1.0
  depth_mult: float = 1.0
  stochastic_depth_prob: float = 0.2
  classifier_dropout: float = 0.2

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Images [B, H, W, 3] -> head-conv features [B, ~H/32, ~W/32, 4 x last stage width]."""
    x = layers.check_nhwc(x, name='images')
    stages = [
      (expand, kernel, stride, make_divisible(out * self.width_mult), self._depth(blocks))
      for expand, kernel, stride, _, out, blocks in self.stages
    ]
    stem = make_divisible(self.stages[0][3] * self.width_mult)
    x = layers.conv_for(self, stem, 3, stride=2, use_bias=False, name='stem_conv')(x)
    x = nn.silu(layers.batch_norm_for(self, train=train, name='stem_bn')(x))
    total, index = sum(stage[-1] for stage in stages), 0
    for stage, (expand, kernel, stride, features, blocks) in enumerate(stages):
      for block in range(blocks):
        x = MBConv(
          expand_ratio=expand,
          kernel_size=kernel,
          stride=stride if block == 0 else 1,
          features=features,
          drop_path_rate=self.stochastic_depth_prob * index / total,
          name=f'stage{stage + 1}_{block}',
          **self.sublayer(),
        )(x, train=train)
        index += 1
    x = layers.conv_for(self, 4 * x.shape[-1], 1, use_bias=False, name='head_conv')(x)
    return nn.silu(layers.batch_norm_for(self, train=train, name='head_bn')(x))

  def _depth(self, blocks: int) -> int:
    return int(math.ceil(blocks * self.depth_mult))


# name -> EfficientNet attributes, torchvision's efficientnet_b0 ... b4 (timm's efficientnet_b0
# ... b4 are the same nets).
EFFICIENTNET_CONFIGS: dict[str, dict[str, float]] = {
  'efficientnet_b0': dict(width_mult=1.0, depth_mult=1.0, classifier_dropout=0.2),
  'efficientnet_b1': dict(width_mult=1.0, depth_mult=1.1, classifier_dropout=0.2),
  'efficientnet_b2': dict(width_mult=1.1, depth_mult=1.2, classifier_dropout=0.3),
  'efficientnet_b3': dict(width_mult=1.2, depth_mult=1.4, classifier_dropout=0.3),
  'efficientnet_b4': dict(width_mult=1.4, depth_mult=1.8, classifier_dropout=0.4),
}
