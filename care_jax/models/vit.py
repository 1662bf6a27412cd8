"""ViT-B/16 and DeiT-S/16 backbones with timm's and torchvision's layout (Dosovitskiy et al. 2021).

A ViT's patch tokens after the last block never reach the logits: only the class token goes
through the final LayerNorm and the classifier, so Grad-CAM there is zero. As pytorch-grad-cam
recommends for ViTs (target layer ``blocks[-1].norm1``), the attention maps are taken from the
tokens *entering* the last block. The backbone is therefore the patch embedding, the class token,
the position embedding and blocks ``0 .. depth-2``; it returns

* the patch tokens (class token left out) on their grid, ``[B, H/16, W/16, C]`` (14x14 at 224):
  the feature map of the attention maps;
* ``{'class_token': [B, C]}``, the class token entering the last block, as the head's input
  (the ``head_inputs`` of `care_jax.models.backbones`).

The head (`care_jax.models.heads.ViTTokenHead`, ``'vit_token'``) is the last block on
``[class token, patches]``, the final LayerNorm and a linear layer on the class token. Grad-CAM
goes through the head's VJP with the class token held constant: the partial derivative of the
class logit with respect to the patch tokens. We differentiate the residual-stream tokens
themselves, not ``norm1``'s output as pytorch-grad-cam does: a deliberate deviation, so that the
map is a function of the backbone's output like every other backbone's (and the CARE loss moves
the tokens, not a normalised view of them).

Block (timm ``Block``, torchvision ``EncoderBlock``; pre-norm)::

  x = x + drop_path(proj(softmax(q k^T / sqrt(d)) v))     # q, k, v = split(qkv(norm1(x)))
  x = x + drop_path(fc2(GELU(fc1(norm2(x)))))             # exact (erf) GELU

Every LayerNorm has epsilon 1e-6 (timm's and torchvision's ViT). No dropout (both references
default to 0); stochastic depth grows linearly from 0 to ``stochastic_depth_prob`` over the
blocks (timm's ``drop_path_rate``, 0 by default). Init as timm's ``init_weights_vit_timm``:
linear kernels ``trunc_normal(std=0.02)``, biases 0, ``pos_embed`` ``trunc_normal(std=0.02)``,
``cls_token`` ``normal(std=1e-6)``, the patch convolution torch's default. Parameter tree::

  backbone: patch_embed {kernel [16, 16, 3, C], bias}   # 16x16/16 conv, as a matmul
            cls_token [1, 1, C], pos_embed [1, 1 + N, C]
            blocks_{i} {norm1, attn {qkv [C, 3C], proj}, norm2, mlp {fc1, fc2}}, i < depth - 1
  head:     block {same as blocks_i}, norm, fc [C, K]

``qkv``'s output columns are q, k, v in turn, each the heads side by side (timm's ``qkv``,
torchvision's ``in_proj``). ``pos_embed`` is sized for the image size at init (N = H/16 * W/16):
other sizes are refused at run time (the references interpolate it on the fly; we do not). A
checkpoint's embedding for another grid is resampled when it is read
(``weight_maps.resample_position_embedding``).

References: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; Touvron et al.,
"Training data-efficient image transformers" (DeiT), ICML 2021; timm
``timm/models/vision_transformer.py`` (``VisionTransformer``, ``Block``, ``Attention``) and
torchvision ``torchvision/models/vision_transformer.py``; jacobgil/pytorch-grad-cam
``usage_examples/vit_example.py`` (``target_layers = [model.blocks[-1].norm1]``).

Example::

  backbone = ViT(**VIT_CONFIGS['deit_s_16'])
  variables = backbone.init(key, jnp.zeros((1, 224, 224, 3)), train=False)
  features, head_inputs = backbone.apply(variables, images, train=False)
  # features [B, 14, 14, 384]; head_inputs['class_token'] [B, 384]
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax.models import convnext
from care_jax.models import layers

PATCH_SIZE = 16
# timm's init_weights_vit_timm: trunc_normal_(std=.02) for every Linear and for pos_embed.
kernel_init = nn.initializers.truncated_normal(stddev=0.02)


class PatchEmbed(nn.Module):
  """The 16x16/16 patch convolution, as the matrix product that it is: ``[p * p * 3, C]`` weights.

  Its patches do not overlap, so the convolution (timm's ``patch_embed.proj``, torchvision's
  ``conv_proj``) is exactly each patch, flattened in (y, x, channel) order, times the HWIO kernel
  reshaped to ``[p * p * 3, C]``. Written so on every platform rather than through
  ``layers.conv_for``, whose CPU patch form would stack the kernel's 256 shifted slices for small
  maps (5 s of compilation for a 2x2 grid) where one reshape does. Parameters ``kernel`` [p, p, 3,
  C] (a conv's layout: torch ``weight.permute(2, 3, 1, 0)``) and ``bias`` [C]; torch Conv2d's
  default init for the kernel, a zero bias.
  """

  hidden_dim: int
  patch_size: int = PATCH_SIZE
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Images [B, H, W, C_in] (sides multiples of ``patch_size``) -> [B, H/p, W/p, hidden_dim]."""
    batch, height, width, channels = x.shape
    p = self.patch_size
    shape = (p, p, channels, self.hidden_dim)
    kernel = self.param('kernel', layers.torch_linear_kernel_init, shape, self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.hidden_dim,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    patches = x.reshape(batch, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch, height // p, width // p, p * p * channels)
    return patches @ kernel.reshape(-1, self.hidden_dim) + bias


class Attention(nn.Module):
  """Multi-head scaled dot-product self-attention: ``qkv`` [C, 3C], softmax, ``proj`` [C, C].

  ``softmax(q k^T / sqrt(C / num_heads)) v`` per head, the softmax in float32 whatever ``dtype``.
  """

  num_heads: int
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, channels = x.shape
    head_dim = channels // self.num_heads
    qkv = _dense(self, 3 * channels, 'qkv')(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, head_dim] each
    scores = jnp.einsum('bqhd,bkhd->bhqk', q * head_dim**-0.5, k)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, tokens, channels)
    return _dense(self, channels, 'proj')(out)


def _dense(module: nn.Module, features: int, name: str) -> nn.Dense:
  return nn.Dense(
    features, kernel_init=kernel_init, dtype=module.dtype, param_dtype=module.param_dtype, name=name
  )


class Mlp(nn.Module):
  """``fc2(GELU(fc1(x)))`` with the exact (erf) GELU of torch's ``nn.GELU()``."""

  hidden_dim: int
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.gelu(_dense(self, self.hidden_dim, 'fc1')(x), approximate=False)
    return _dense(self, x.shape[-1], 'fc2')(y)


class ViTBlock(nn.Module):
  """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

  Tokens ``[B, N, C]`` in and out; each residual branch is dropped per example with probability
  ``drop_path_rate`` in training (stochastic depth, the 'dropout' rng).
  """

  num_heads: int
  mlp_dim: int
  drop_path_rate: float = 0.0
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    kw: dict[str, Any] = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = Attention(self.num_heads, name='attn', **kw)(convnext.layer_norm(self, name='norm1')(x))
    x = x + convnext.drop_path(y, self.drop_path_rate, train=train)
    y = Mlp(self.mlp_dim, name='mlp', **kw)(convnext.layer_norm(self, name='norm2')(x))
    return x + convnext.drop_path(y, self.drop_path_rate, train=train)


def block_of(owner: nn.Module, drop_path_rate: float, *, name: str) -> ViTBlock:
  """A ``ViTBlock`` with the ``num_heads``, ``mlp_dim`` and dtypes of ``owner`` (ViT, head)."""
  return ViTBlock(
    owner.num_heads,
    owner.mlp_dim,
    drop_path_rate,
    dtype=owner.dtype,
    param_dtype=owner.param_dtype,
    name=name,
  )


def block_drop_path_rate(stochastic_depth_prob: float, index: int, depth: int) -> float:
  """timm's ``dpr = linspace(0, drop_path_rate, depth)[index]``: 0 for the first block."""
  return stochastic_depth_prob * index / max(depth - 1, 1)


class ViT(nn.Module):
  """The ViT up to the last block: patch tokens on their grid, and the class token.

  Attributes:
    hidden_dim: token width C (768 for ViT-B, 384 for DeiT-S).
    depth: transformer blocks in all, the last one in the head (``ViTTokenHead``).
    num_heads: attention heads per block.
    mlp_dim: hidden width of each block's MLP.
    stochastic_depth_prob: drop-path rate of the last block (linear from 0 over the blocks).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay ``param_dtype``.
    axis_name: accepted for the backbones' common signature; a ViT has no BatchNorm.
  """

  hidden_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  stochastic_depth_prob: float = 0.0
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(
    self, x: jax.typing.ArrayLike, *, train: bool
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Images [B, H, W, 3] -> (patch tokens [B, H/16, W/16, C], {'class_token': [B, C]})."""
    x = layers.check_nhwc(x, name='images')
    batch, height, width, _ = x.shape
    if height % PATCH_SIZE or width % PATCH_SIZE:
      raise ValueError(
        f'A ViT with {PATCH_SIZE}x{PATCH_SIZE} patches needs images whose sides are multiples '
        f'of {PATCH_SIZE}; got {height}x{width}: set data.image_size to a multiple of '
        f'{PATCH_SIZE} (224 for the pretrained weights).'
      )
    grid = (height // PATCH_SIZE, width // PATCH_SIZE)
    x = PatchEmbed(
      self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype, name='patch_embed'
    )(x)
    tokens = x.reshape(batch, grid[0] * grid[1], self.hidden_dim)
    cls_token = self.param(
      'cls_token', nn.initializers.normal(1e-6), (1, 1, self.hidden_dim), self.param_dtype
    )
    tokens = jnp.concatenate(
      [jnp.broadcast_to(cls_token.astype(tokens.dtype), (batch, 1, self.hidden_dim)), tokens], 1
    )
    tokens = tokens + self._position_embedding(tokens.shape[1], grid).astype(tokens.dtype)
    for index in range(self.depth - 1):
      rate = block_drop_path_rate(self.stochastic_depth_prob, index, self.depth)
      tokens = block_of(self, rate, name=f'blocks_{index}')(tokens, train=train)
    features = tokens[:, 1:].reshape(batch, *grid, self.hidden_dim)
    return features, {'class_token': tokens[:, 0]}

  def _position_embedding(self, num_tokens: int, grid: tuple[int, int]) -> jax.Array:
    try:
      return self.param(
        'pos_embed', kernel_init, (1, num_tokens, self.hidden_dim), self.param_dtype
      )
    except flax.errors.ScopeParamShapeError:
      raise ValueError(
        "This ViT's pos_embed was initialised for another number of patches than "
        f'the {num_tokens - 1} of {grid[0] * PATCH_SIZE}x{grid[1] * PATCH_SIZE} images: apply '
        'it at the image size it was initialised (and its weights read) for.'
      ) from None


# name -> ViT attributes: timm's vit_base_patch16_224 (torchvision's vit_b_16) and
# deit_small_patch16_224.
VIT_CONFIGS: dict[str, dict[str, Any]] = {
  'vit_b_16': dict(hidden_dim=768, depth=12, num_heads=12, mlp_dim=3072),
  'deit_s_16': dict(hidden_dim=384, depth=12, num_heads=6, mlp_dim=1536),
}
