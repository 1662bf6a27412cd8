"""Classifier heads: feature map [B, h, w, C] -> float32 logits [B, K].

- ``LinearHead``: global average pool + Dense. For it Grad-CAM equals CAM up to a positive scale,
  ``F = sum_c W[c, y] A[..., c]``, which ``Classifier.attention_maps`` computes from the kernel
  ``params['head']['fc']['kernel']`` (the only code that reads it).
- ``BatchNormLinearHead``: global average pool + BatchNorm1d + Dense (the official CARE head).
- ``VGGHead``: torchvision's VGG classifier on the last conv block (before its final maxpool).
- ``LayerNormLinearHead``: global average pool + LayerNorm + Dense (ConvNeXt's classifier).
- ``DropoutLinearHead``: global average pool + Dropout + Dense (EfficientNet's classifier).
- ``NormedLinearHead``: global average pool + cosine classifier (LDAM-DRW's ``NormedLinear``),
  logits in [-1, 1] for a loss that scales them (``ldam_loss``'s ``s``).
- ``FlattenHead``: Dense on the flattened [h, w, C] map, position-aware (Ross et al.'s MLP on
  pixels reads a corner directly; a pooled head does not).
- ``ViTTokenHead``: a ViT's last block on [class token, patch tokens], LayerNorm, Dense on the
  class token (`care_jax.models.vit`); it takes the backbone's ``class_token`` head input.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from care_jax.models import convnext
from care_jax.models import layers
from care_jax.models import vit


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] matrix of torch's AdaptiveAvgPool.

  Row i averages the inputs [floor(i * n / m), ceil((i + 1) * n / m)).
  """
  matrix = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil division
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.typing.ArrayLike, output_size: Sequence[int]) -> jax.Array:
  """``torch.nn.AdaptiveAvgPool2d(output_size)`` for NHWC input.

  Output cell (i, j) is the mean of rows [floor(i*H/oh), ceil((i+1)*H/oh)) and the columns likewise;
  windows overlap or repeat when H is not a multiple of oh (e.g. a 2x2 map is upsampled to 7x7).

  Example: ``adaptive_avg_pool(jnp.ones((1, 14, 14, 3)), (7, 7)).shape == (1, 7, 7, 3)``.
  """
  x = layers.check_nhwc(x, name='x')
  out_h, out_w = output_size
  _, height, width, _ = x.shape
  if (height, width) == (out_h, out_w):
    return x  # the usual 224-input case; skip a matmul that low-precision backends would round
  rows = jnp.asarray(_adaptive_pool_matrix(height, out_h))
  cols = jnp.asarray(_adaptive_pool_matrix(width, out_w))
  pooled = jnp.einsum(
    'bhwc,oh,pw->bopc', x.astype(jnp.float32), rows, cols, precision=jax.lax.Precision.HIGHEST
  )
  return pooled.astype(x.dtype)


def global_avg_pool(features: jax.Array) -> jax.Array:
  """Mean over (h, w), accumulated in float32 so bf16 feature maps lose no precision."""
  return jnp.mean(features, axis=(1, 2), dtype=jnp.float32).astype(features.dtype)


class LinearHead(nn.Module):
  """Global average pool then ``Dense(num_classes, name='fc')``: ``logits = mean_hw(A) @ W + b``.

  ``W = params['fc']['kernel']`` has shape [C, K]. Kernel init is torch.nn.Linear's default, bias 0.

  Example::

    head = LinearHead(num_classes=3)
    variables = head.init(key, jnp.zeros((2, 7, 7, 512)))
  """

  num_classes: int
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no train-dependent layers; accepted so every head has the same signature
    layers.check_nhwc(features, name='features')
    pooled = global_avg_pool(features)
    return _fc(self, pooled)


def _fc(
  head: nn.Module, pooled: jax.Array, *, kernel_init=layers.torch_linear_kernel_init
) -> jax.Array:
  """The heads' final ``Dense`` 'fc' (torch init unless ``kernel_init``), float32 logits."""
  logits = nn.Dense(
    head.num_classes,
    kernel_init=kernel_init,
    dtype=head.dtype,
    param_dtype=head.param_dtype,
    name='fc',
  )(pooled)
  return logits.astype(jnp.float32)


class BatchNormLinearHead(nn.Module):
  """Global average pool, ``BatchNorm`` ('bn', torch BatchNorm1d), ``Dense`` ('fc').

  The head of the official CARE code. ``axis_name`` averages the BatchNorm statistics across the
  pmap/vmap axis.
  """

  num_classes: int
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    layers.check_nhwc(features, name='features')
    pooled = global_avg_pool(features)
    pooled = layers.batch_norm_for(self, train=train, name='bn')(pooled)
    return _fc(self, pooled)


class LayerNormLinearHead(nn.Module):
  """Global average pool, ``LayerNorm`` ('norm', eps 1e-6), ``Dense`` ('fc'): ConvNeXt's head.

  torchvision's ``classifier = [LayerNorm2d, Flatten, Linear]`` after ``AdaptiveAvgPool2d(1)``,
  timm's ``head.norm``/``head.fc``. Not GAP + linear, so its attention maps are Grad-CAM through
  the head's VJP. Init as torchvision's ConvNeXt: ``trunc_normal(std=0.02)`` kernel, zero bias.
  """

  num_classes: int
  epsilon: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no train-dependent layers; accepted so every head has the same signature
    layers.check_nhwc(features, name='features')
    pooled = nn.LayerNorm(
      epsilon=self.epsilon,
      use_fast_variance=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='norm',
    )(global_avg_pool(features))
    return _fc(self, pooled, kernel_init=nn.initializers.truncated_normal(stddev=0.02))


# torchvision EfficientNet's Linear init: U(-1/sqrt(out_features), 1/sqrt(out_features)).
efficientnet_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_out', 'uniform')


class DropoutLinearHead(nn.Module):
  """Global average pool, ``Dropout(dropout_rate)``, ``Dense`` ('fc'): EfficientNet's head.

  torchvision's ``classifier = [Dropout(p), Linear]``, timm's ``drop_rate`` + ``classifier``.
  Dropout draws from the 'dropout' rng only when ``train``; its attention maps are Grad-CAM
  through the head's VJP (with ``train=True`` under the forward pass's dropout mask).
  """

  num_classes: int
  dropout_rate: float = 0.2
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    layers.check_nhwc(features, name='features')
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(global_avg_pool(features))
    return _fc(self, pooled, kernel_init=efficientnet_linear_kernel_init)


class VGGHead(nn.Module):
  """torchvision's VGG classifier, applied to the last conv block's ReLU output.

  maxpool 2x2/2 (the backbone's last 'M'), AdaptiveAvgPool2d(7, 7), flatten in torch's (C, H, W)
  order, then fc1: Dense 4096, ReLU, Dropout 0.5, fc2: Dense 4096, ReLU, Dropout 0.5, fc3: Dense K.
  fc1/fc2/fc3 correspond to torchvision's ``classifier.0/3/6``; flattening in (C, H, W) order makes
  ``fc1.kernel == classifier.0.weight.T``. Dropout draws from the 'dropout' rng only when ``train``.
  """

  num_classes: int
  hidden_size: int = 4096
  pool_size: tuple[int, int] = (7, 7)
  dropout_rate: float = 0.5
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    layers.check_nhwc(features, name='features')
    x = nn.max_pool(features, (2, 2), strides=(2, 2), padding='VALID')
    x = adaptive_avg_pool(x, self.pool_size)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)

    def dense(size: int, name: str) -> nn.Dense:
      return nn.Dense(
        size,
        kernel_init=layers.vgg_linear_kernel_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
      )

    for name in ('fc1', 'fc2'):
      x = nn.relu(dense(self.hidden_size, name)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = dense(self.num_classes, 'fc3')(x)
    return logits.astype(jnp.float32)


# torch.nn.functional.normalize's default eps: x / max(||x||_2, eps).
NORMALIZE_EPSILON = 1e-12


def l2_normalize(x: jax.Array, *, axis: int, eps: float = NORMALIZE_EPSILON) -> jax.Array:
  """``torch.nn.functional.normalize(x, dim=axis)``: ``x / max(||x||_2, eps)`` along ``axis``.

  Written as ``x * rsqrt(max(sum x^2, eps^2))`` (the same value), whose gradient stays finite at
  ``x = 0``, where the gradient of ``||x||_2`` is 0 / 0.

  Example: ``l2_normalize(jnp.array([[3.0, 4.0]]), axis=1)`` is ``[[0.6, 0.8]]``.
  """
  x = jnp.asarray(x)
  squared_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, jnp.asarray(eps, x.dtype) ** 2))


def normed_linear_kernel_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """LDAM-DRW's ``NormedLinear`` init: U(-1, 1), then every class column [C] scaled to norm 1.

  The official ``weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`` renormalises each
  column ``weight[:, k]`` of the [C, K] weight to norm 1e-5 and multiplies by 1e5.
  """
  kernel = jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
  return (kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)).astype(dtype)


class NormedLinearHead(nn.Module):
  """Global average pool, then the cosine of the feature with each class column (no bias).

  ``logits[b, k] = <g_b / ||g_b||, W[:, k] / ||W[:, k]||>`` with ``g = mean_hw(A)`` [B, C] and
  ``W = params['kernel']`` [C, K]; each norm is ``max(||.||_2, 1e-12)``, as ``F.normalize``.
  Logits lie in [-1, 1]: the loss scales them (LDAM's ``s = 30``). Computed in float32 whatever
  ``dtype`` (a bfloat16 cosine times 30 would be off by ~0.1). Attention maps of this head use the
  Grad-CAM VJP path (it is not GAP + linear).

  Reference: Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
  NeurIPS 2019, Sec. 4 and the official code (github.com/kaidic/LDAM-DRW,
  ``models/resnet_cifar.py`` ``NormedLinear``:
  ``F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))``).

  Example::

    head = NormedLinearHead(num_classes=3)
    variables = head.init(key, jnp.zeros((2, 7, 7, 512)))
    logits = head.apply(variables, features)   # [2, 3] cosines in [-1, 1]
  """

  num_classes: int
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no train-dependent layers; accepted so every head has the same signature
    layers.check_nhwc(features, name='features')
    pooled = jnp.mean(features, axis=(1, 2), dtype=jnp.float32)
    kernel = self.param(
      'kernel', normed_linear_kernel_init, (features.shape[-1], self.num_classes), self.param_dtype
    )
    return jnp.matmul(
      l2_normalize(pooled, axis=1),
      l2_normalize(kernel.astype(jnp.float32), axis=0),
      precision=jax.lax.Precision.HIGHEST,
    )


class FlattenHead(nn.Module):
  """Flatten the feature map in (h, w, C) order, then ``Dense(num_classes, name='fc')``.

  ``logits = vec(A) @ W + b`` with ``W = params['fc']['kernel']`` of shape [h * w * C, K]: every
  grid cell has its own weights, so the head sees *where* a feature is, as Ross et al.'s MLP on
  the flattened pixels does (a decoy patch in a corner is read by that corner's weights, where
  global average pooling dilutes it among the h * w cells). Its parameter count, and so its input
  size, is fixed by the first call. Not GAP + linear: its attention maps are Grad-CAM through the
  head's VJP. Kernel init is torch.nn.Linear's default, bias 0.

  Reference: Ross, Hughes and Doshi-Velez, "Right for the Right Reasons", IJCAI 2017, Sec. 4
  (Decoy-MNIST, a multilayer perceptron on the flattened image; github.com/dtak/rrr).

  Example::

    head = FlattenHead(num_classes=10)
    variables = head.init(key, jnp.zeros((2, 4, 4, 128)))   # fc kernel [2048, 10]
  """

  num_classes: int
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no train-dependent layers; accepted so every head has the same signature
    layers.check_nhwc(features, name='features')
    return _fc(self, features.reshape(features.shape[0], -1))


class ViTTokenHead(nn.Module):
  """A ViT's last block, its final LayerNorm ('norm', eps 1e-6) and ``Dense`` ('fc') on the CLS.

  ``logits = fc(norm(block([cls, patches]))[:, 0])`` with ``patches`` the feature map [B, h, w, C]
  flattened in (h, w) order and ``cls`` the backbone's head input ``class_token`` [B, C] (timm's
  ``blocks[-1]``, ``norm``, ``head``; torchvision's ``encoder.layers[-1]``, ``encoder.ln``,
  ``heads.head``). The block's width comes from the features; ``num_heads``, ``mlp_dim`` and
  ``drop_path_rate`` from the backbone (`care_jax.models.vit.ViT`). Its attention maps are
  Grad-CAM through the head's VJP with respect to the patch tokens, the class token held
  constant (`care_jax.models.vit` says why the map is taken before the last block). Init as
  timm's: ``trunc_normal(std=0.02)`` kernels, zero biases.

  Example::

    head = ViTTokenHead(num_classes=3, num_heads=2, mlp_dim=64)
    variables = head.init(key, jnp.zeros((2, 2, 2, 32)), class_token=jnp.zeros((2, 32)))
  """

  num_classes: int
  num_heads: int
  mlp_dim: int
  drop_path_rate: float = 0.0
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, features: jax.Array, *, class_token: jax.Array, train: bool = False
  ) -> jax.Array:
    features = layers.check_nhwc(features, name='features')
    batch, _, _, channels = features.shape
    tokens = jnp.concatenate(
      [class_token.astype(features.dtype)[:, None], features.reshape(batch, -1, channels)], 1
    )
    tokens = vit.block_of(self, self.drop_path_rate, name='block')(tokens, train=train)
    pooled = convnext.layer_norm(self, name='norm')(tokens[:, 0])
    return _fc(self, pooled, kernel_init=vit.kernel_init)
