"""Classifier heads: feature map [B, h, w, C] -> float32 logits [B, K].

- ``LinearHead``: global average pool + Dense. For it Grad-CAM equals CAM up to a positive scale,
  ``F = sum_c W[c, y] A[..., c]``, which ``Classifier.attention_maps`` computes from the kernel
  ``params['head']['fc']['kernel']`` (the only code that reads it).
- ``BatchNormLinearHead``: global average pool + BatchNorm1d + Dense (the official CARE head).
- ``VGGHead``: torchvision's VGG classifier on the last conv block (before its final maxpool).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from care_jax.models import layers


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


def _fc(head: nn.Module, pooled: jax.Array) -> jax.Array:
  """The heads' final ``Dense`` 'fc' (torch init), float32 logits."""
  logits = nn.Dense(
    head.num_classes,
    kernel_init=layers.torch_linear_kernel_init,
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
