"""Pieces shared by backbones and heads: torch-compatible init, padding, BatchNorm, input checks.

The models reproduce torchvision's layouts so that torchvision weights can be loaded later; these
helpers hold the few places where Flax's defaults differ from PyTorch's.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax.models import convolution

Dtype = Any
Padding = tuple[tuple[int, int], tuple[int, int]]

# torchvision ResNet/VGG: nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu'), i.e.
# N(0, 2 / (out_channels * kh * kw)), not truncated (Flax's kaiming_normal is fan_in + truncated).
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# torch.nn.Linear's default kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')

# torchvision VGG classifier: nn.init.normal_(w, 0, 0.01), bias 0.
vgg_linear_kernel_init = nn.initializers.normal(stddev=0.01)

# torch BatchNorm momentum 0.1 updates running = 0.9 * running + 0.1 * batch; Flax's momentum
# is the 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class Layer(nn.Module, kw_only=True):
  """A backbone module: the dtypes and BatchNorm axis that it hands down to its sub-layers.

  A subclass declares only its own attributes (these three are keyword-only, so they may precede
  attributes without a default); `conv_for` and `batch_norm_for` read them, and
  ``SubModule(..., **self.sublayer())`` hands them to a sub-module.

  Attributes:
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay ``param_dtype``.
    param_dtype: the parameters' dtype.
    axis_name: pmap/vmap axis over which BatchNorm averages its batch statistics (a module
      without BatchNorm accepts it for the backbones' common signature).
  """

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  def sublayer(self) -> dict[str, Any]:
    """``dtype``, ``param_dtype`` and ``axis_name``: the keywords that give a sub-module them."""
    return dict(dtype=self.dtype, param_dtype=self.param_dtype, axis_name=self.axis_name)


def torch_padding(kernel_size: int) -> Padding:
  """Symmetric padding of torch's ``Conv2d(padding=kernel_size // 2)``.

  'SAME' pads (0, 1) instead of (1, 1) for a stride-2 3x3 conv on an even input, which shifts every
  feature by one pixel relative to torch and breaks loaded weights; explicit padding does not.

  Example: ``torch_padding(7) == ((3, 3), (3, 3))``.
  """
  pad = kernel_size // 2
  return ((pad, pad), (pad, pad))


def batch_norm(
  *, train: bool, dtype: Dtype, param_dtype: Dtype, axis_name: str | None, name: str
) -> nn.BatchNorm:
  """A BatchNorm with torch's epsilon/momentum: batch statistics if ``train``, else running ones.

  ``axis_name`` (the pmap/vmap axis) makes the batch statistics the mean over all devices' examples.
  """
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    dtype=dtype,
    param_dtype=param_dtype,
    axis_name=axis_name,
    name=name,
  )


def conv_for(
  module: nn.Module,
  features: int,
  kernel_size: int,
  *,
  stride: int = 1,
  use_bias: bool,
  name: str,
  groups: int = 1,
  padding: Padding | None = None,
  kernel_init: Any = conv_kernel_init,
) -> nn.Conv:
  """A square conv with torch's symmetric padding ``kernel_size // 2`` and torchvision's init.

  Computes in ``module.dtype`` with ``module.param_dtype`` parameters (the module that calls it
  from its compact ``__call__`` owns the conv); the bias, if any, starts at 0. The convolution
  takes the form that is fastest for its shapes (`care_jax.models.convolution`). ``groups`` is
  torch's (``groups == features`` for a depthwise conv); ``padding`` and ``kernel_init`` replace
  the defaults where an architecture differs (ConvNeXt's unpadded patchify stem, its
  truncated-normal init).
  """
  return nn.Conv(
    features,
    (kernel_size, kernel_size),
    strides=(stride, stride),
    padding=torch_padding(kernel_size) if padding is None else padding,
    feature_group_count=groups,
    use_bias=use_bias,
    kernel_init=kernel_init,
    bias_init=nn.initializers.zeros,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    conv_general_dilated=convolution.convolution,
    name=name,
  )


def batch_norm_for(module: nn.Module, *, train: bool, name: str) -> nn.BatchNorm:
  """``batch_norm`` with the dtypes and ``axis_name`` of the owner ``module``."""
  return batch_norm(
    train=train,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    axis_name=module.axis_name,
    name=name,
  )


def check_nhwc(x: jax.typing.ArrayLike, *, name: str) -> jax.Array:
  """``x`` as an array; raises ValueError unless it is rank 4 (NHWC: batch, height, width, C)."""
  shape = jnp.shape(x)
  if len(shape) != 4:
    raise ValueError(
      f'{name} must be rank 4 [batch, height, width, channels] (NHWC); got shape {shape}.'
    )
  return jnp.asarray(x)
