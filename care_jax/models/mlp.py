"""Ross et al.'s multilayer perceptron as a backbone: the flattened image through Dense + ReLU.

The model of Decoy-MNIST in "Right for the Right Reasons" (Ross, Hughes and Doshi-Velez, IJCAI
2017, Sec. 4; official code github.com/dtak/rrr, ``rrr/multilayer_perceptron.py``: hidden
layers ``(50, 30)``, ReLU, weights and biases drawn from ``0.1 * N(0, 1)``). Every pixel has its
own weights, so the network reads a decoy patch in a corner directly, which a convolutional
network with global average pooling barely does (docs/experiments.md). Its feature map is the
last hidden layer as a 1x1 grid [B, 1, 1, widths[-1]]; the 'linear' head (Dense over it) is the
official output layer (with torch's init, not ``0.1 * N(0, 1)``). Grad-CAM maps of a 1x1 grid
are constant: guide this backbone with input-gradient methods (``guidance.method='rrr'``).

`GreyMLP` reads the first channel only, for images whose channels are copies of one grey (as
`decoy_digits`'): Ross et al.'s network has one input per pixel (784 at 28 px), and the
input gradient falls on that channel alone, so RRR's sum of squared input gradients over
pixels and channels is theirs over pixels. On all three copies (`MLP`) the first layer would
have three times the inputs (its pre-activations at init sqrt(3) times larger, Adam moving
three weights per pixel) and the penalty would be about a third of theirs (the grey's gradient
spread over three channels: ``sum_c g_c^2 = g^2 / 3`` when equal).

Example::

  backbone = MLP()
  variables = backbone.init(key, jnp.zeros((2, 28, 28, 3)), train=False)
  features = backbone.apply(variables, jnp.zeros((2, 28, 28, 3)), train=False)   # [2, 1, 1, 30]
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax.models import layers

# dtak/rrr's init_random_params(scale=0.1): every weight and bias drawn from 0.1 * N(0, 1).
ROSS_INIT_STDDEV = 0.1


class MLP(nn.Module):
  """Flatten [B, H, W, C] in (H, W, C) order, then ``Dense(width)`` + ReLU per hidden layer.

  Layers are named 'fc1', 'fc2', ... Its parameter count, and so its input size, is fixed by the
  first call.

  Attributes:
    widths: units of each hidden layer (dtak/rrr's default ``(50, 30)``).
    grey: read channel 0 only (the images' channels are copies of one grey).
    init_stddev: standard deviation of the normal init of weights and biases.
    dtype: computation dtype; parameters stay ``param_dtype``.
  """

  widths: Sequence[int] = (50, 30)
  grey: bool = False
  init_stddev: float = ROSS_INIT_STDDEV
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Images [B, H, W, C] -> features [B, 1, 1, widths[-1]]."""
    del train  # no train-dependent layers; accepted so every backbone has the same signature
    x = layers.check_nhwc(x, name='images')
    if self.grey:
      x = x[..., :1]
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    init = nn.initializers.normal(self.init_stddev)
    for index, width in enumerate(self.widths):
      dense = nn.Dense(
        width,
        kernel_init=init,
        bias_init=init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f'fc{index + 1}',
      )
      x = nn.relu(dense(x))
    return x[:, None, None, :]


class GreyMLP(MLP):
  """`MLP` on channel 0 only: Ross et al.'s inputs for grey images stored as three copies."""

  grey: bool = True
