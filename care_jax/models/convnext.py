"""ConvNeXt-T/S/B backbones with torchvision's layout and defaults (Liu et al. 2022).

The backbone returns the last stage's output (stride 32: 7x7x768 for ConvNeXt-T at 224), the map
Grad-CAM uses; the classifier (LayerNorm of the pooled features, then a linear layer:
torchvision's ``classifier = [LayerNorm2d, Flatten, Linear]``, timm's ``head.norm``/``head.fc``)
is `care_jax.models.heads.LayerNormLinearHead`, whose maps come from the head's VJP (Grad-CAM).

Block (torchvision ``CNBlock``, timm ``ConvNeXtBlock``)::

  y = dwconv7x7(x) -> LayerNorm(eps 1e-6) -> Linear(4C) -> GELU (exact erf) -> Linear(C)
  x = x + drop_path(layer_scale * y)        # layer_scale starts at 1e-6

Stochastic depth (per example, off in eval) grows linearly over the blocks to torchvision's
``stochastic_depth_prob`` (0.1 / 0.4 / 0.5 for T / S / B; timm's default is 0). Every LayerNorm
has torchvision's and timm's epsilon 1e-6. Convolutions and linear layers start from
``trunc_normal(std=0.02)``, biases from 0 (torchvision's init). Parameter tree::

  stem_conv, stem_norm                       # 4x4/4 patchify conv (bias), LayerNorm
  downsample{s}_norm, downsample{s}_conv     # before stage s = 1, 2, 3: LayerNorm, 2x2/2 conv
  stage{s}_{j}/dwconv, norm, fc1, fc2, layer_scale

`care_jax.models.weight_maps` maps it to torchvision's (``features.1.0.block.0``) and timm's
(``stages.0.blocks.0.conv_dw``) names.

Example::

  backbone = ConvNeXt(**CONVNEXT_CONFIGS['convnext_tiny'])
  variables = backbone.init(key, jnp.zeros((1, 224, 224, 3)), train=False)
  features = backbone.apply(variables, images, train=False)   # [B, 7, 7, 768] for 224 x 224
"""

from typing import Any, Sequence

import flax.linen as nn
import jax

from care_jax.models import layers

# torchvision ConvNeXt and timm: LayerNorm(eps=1e-6) everywhere (torch's default would be 1e-5).
LN_EPSILON = 1e-6
LAYER_SCALE_INIT = 1e-6
# torchvision: nn.init.trunc_normal_(std=0.02) for every conv and linear weight.
kernel_init = nn.initializers.truncated_normal(stddev=0.02)


def layer_norm(module: nn.Module, *, name: str) -> nn.LayerNorm:
  """LayerNorm over the channels (last axis) with ConvNeXt's epsilon and two-pass variance."""
  return nn.LayerNorm(
    epsilon=LN_EPSILON,
    use_fast_variance=False,  # torch's two-pass variance: no cancellation at 1e-4 parity
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    name=name,
  )


def drop_path(x: jax.Array, rate: float, *, train: bool) -> jax.Array:
  """Stochastic depth (torchvision ``StochasticDepth(mode='row')``): per example, the residual
  branch is zeroed with probability ``rate`` and scaled by ``1 / (1 - rate)`` otherwise; off in
  eval and at rate 0. Draws from the 'dropout' rng."""
  if not train or rate == 0.0:
    return x
  return nn.Dropout(rate, broadcast_dims=tuple(range(1, x.ndim)), deterministic=False)(x)


class ConvNeXtBlock(layers.Layer):
  """dwconv7x7 -> LayerNorm -> Linear 4C -> GELU -> Linear C, layer scale, drop path, residual."""

  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    channels = x.shape[-1]
    y = layers.conv_for(
      self, channels, 7, groups=channels, use_bias=True, kernel_init=kernel_init, name='dwconv'
    )(x)
    y = layer_norm(self, name='norm')(y)

    def dense(features: int, name: str) -> nn.Dense:
      return nn.Dense(
        features, kernel_init=kernel_init, dtype=self.dtype, param_dtype=self.param_dtype, name=name
      )

    y = nn.gelu(dense(4 * channels, 'fc1')(y), approximate=False)  # torch's exact GELU
    y = dense(channels, 'fc2')(y)
    gamma = self.param(
      'layer_scale', nn.initializers.constant(LAYER_SCALE_INIT), (channels,), self.param_dtype
    )
    return x + drop_path(y * gamma.astype(y.dtype), self.drop_path_rate, train=train)


class ConvNeXt(layers.Layer):
  """ConvNeXt backbone: patchify stem, four stages separated by LayerNorm + 2x2/2 convs.

  ``dtype``, ``param_dtype`` and ``axis_name`` are `layers.Layer`'s (``axis_name`` unused:
  ConvNeXt has no BatchNorm).

  Attributes:
    depths: blocks per stage, (3, 3, 9, 3) for ConvNeXt-T.
    dims: channels per stage, (96, 192, 384, 768) for T and S.
    stochastic_depth_prob: drop-path rate of the last block (linear from 0 over the blocks).
  """

  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  stochastic_depth_prob: float = 0.1

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Images [B, H, W, 3] -> last-stage features [B, H/32, W/32, dims[-1]]."""
    x = layers.check_nhwc(x, name='images')
    no_padding = ((0, 0), (0, 0))
    conv: dict[str, Any] = dict(use_bias=True, padding=no_padding, kernel_init=kernel_init)
    x = layers.conv_for(self, self.dims[0], 4, stride=4, name='stem_conv', **conv)(x)
    x = layer_norm(self, name='stem_norm')(x)
    total, index = sum(self.depths), 0
    for stage, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if stage > 0:
        x = layer_norm(self, name=f'downsample{stage}_norm')(x)
        x = layers.conv_for(self, dim, 2, stride=2, name=f'downsample{stage}_conv', **conv)(x)
      for block in range(depth):
        # torchvision: sd_prob = stochastic_depth_prob * block_id / (total_blocks - 1).
        rate = self.stochastic_depth_prob * index / max(total - 1, 1)
        x = ConvNeXtBlock(drop_path_rate=rate, name=f'stage{stage}_{block}', **self.sublayer())(
          x, train=train
        )
        index += 1
    return x


# name -> ConvNeXt attributes, torchvision's convnext_tiny/small/base (timm's are the same nets).
CONVNEXT_CONFIGS: dict[str, dict[str, Any]] = {
  'convnext_tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), stochastic_depth_prob=0.1),
  'convnext_small': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), stochastic_depth_prob=0.4),
  'convnext_base': dict(
    depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), stochastic_depth_prob=0.5
  ),
}
