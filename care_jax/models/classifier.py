"""``Classifier`` (backbone -> features -> head) and the ``get_model`` factory.

Example::

  model = get_model('resnet18', num_classes=7)
  variables = model.init({'params': key, 'dropout': key2}, images, train=False)
  (logits, intermediates), updates = model.apply(
      variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': key3})
  features = intermediates['features']                       # layer4 output, [B, 7, 7, 512]
  head_logits = model.apply(variables, features, method=Classifier.apply_head)
  maps = model.attention_maps(variables, features, labels)   # [B, 7, 7] in [0, 1]
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax import attention
from care_jax.models import heads as heads_lib
from care_jax.models import layers
from care_jax.models import resnet
from care_jax.models import tiny
from care_jax.models import vgg

MODEL_NAMES: tuple[str, ...] = (
  'tiny_cnn',
  'resnet18',
  'resnet34',
  'resnet50',
  'resnet101',
  'resnet152',
  'vgg19',
)
HEAD_NAMES: tuple[str, ...] = ('linear', 'bn_linear', 'vgg')
# How Classifier.attention_maps computes the maps: 'cam' (closed form, GAP + linear heads only),
# 'grad_cam' (VJP of the head) or 'auto' ('cam' whenever the head allows it).
ATTENTION_METHODS: tuple[str, ...] = ('auto', 'cam', 'grad_cam')


class Classifier(nn.Module):
  """A backbone producing the Grad-CAM feature map, and a head producing logits from it.

  Parameters live under ``params['backbone']`` and ``params['head']``.
  ``__call__`` returns ``(logits float32 [B, K], {'features': [B, h, w, C] in the compute dtype})``.
  """

  backbone: nn.Module
  head: nn.Module

  def __call__(
    self, x: jax.typing.ArrayLike, *, train: bool
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    layers.check_nhwc(x, name='images')
    features = self.backbone(x, train=train)
    logits = self.head(features, train=train)
    return logits, {'features': features}

  def apply_head(self, features: jax.typing.ArrayLike, *, train: bool = False) -> jax.Array:
    """The head alone on a feature map [B, h, w, C] (e.g. for ``jax.vjp`` Grad-CAM of the head)."""
    return self.head(jnp.asarray(features), train=train)

  @nn.nowrap  # called on the unbound module: it applies the model itself
  def attention_maps(
    self,
    variables: dict[str, Any],
    features: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    method: str = 'auto',
  ) -> jax.Array:
    """Min-max normalised class attention maps [B, h, w] of ``labels`` on a feature map.

    Call it on the unbound module (as returned by ``get_model``), also inside ``jax.jit``,
    ``jax.grad`` or ``jax.pmap`` with the model closed over or static. 'cam' uses the closed form
    of a GAP + linear head (one einsum with the classifier column of the true class, see
    ``attention.cam``); 'grad_cam' takes the VJP of the head alone (``attention.grad_cam``, the
    head in inference mode); 'auto' picks 'cam' whenever the head allows it. For a linear head
    both give the same normalised map.

    Args:
      variables: the model's variables (``params``, and ``batch_stats`` for BatchNorm heads).
      features: [B, h, w, C] feature map, ``intermediates['features']`` of ``__call__``.
      labels: [B] integer classes whose maps are wanted (the ground truth in CARE).
      method: one of ``ATTENTION_METHODS``: 'auto', 'cam' or 'grad_cam'.

    Returns:
      [B, h, w] float32 maps in [0, 1].

    Raises:
      ValueError: for an unknown ``method`` (the valid ones are named), or 'cam' with a head that
        is not ``LinearHead``.
    """
    if method not in ATTENTION_METHODS:
      raise ValueError(
        f'Unknown attention method {method!r}; valid methods: {", ".join(ATTENTION_METHODS)}.'
      )
    is_linear = isinstance(self.head, heads_lib.LinearHead)
    if method == 'cam' or (method == 'auto' and is_linear):
      if not is_linear:
        raise ValueError(f"care.attention='cam' needs a GAP + linear head, not {self.head}")
      # The one place that knows where the CAM kernel lives (LinearHead's Dense 'fc').
      return attention.cam(features, variables['params']['head']['fc']['kernel'], labels)
    head_fn = lambda f: self.apply(variables, f, train=False, method=Classifier.apply_head)
    return attention.grad_cam(head_fn, features, labels)


def _make_head(
  head: str, *, num_classes: int, dtype: layers.Dtype, axis_name: str | None
) -> nn.Module:
  if head == 'linear':
    return heads_lib.LinearHead(num_classes=num_classes, dtype=dtype)
  if head == 'bn_linear':
    return heads_lib.BatchNormLinearHead(num_classes=num_classes, dtype=dtype, axis_name=axis_name)
  return heads_lib.VGGHead(num_classes=num_classes, dtype=dtype)


def get_model(
  name: str,
  *,
  num_classes: int,
  dtype: layers.Dtype = jnp.float32,
  head: str | None = None,
  axis_name: str | None = None,
) -> Classifier:
  """Builds a ``Classifier`` by name.

  Args:
    name: one of ``MODEL_NAMES``.
    num_classes: number of logits K (> 0).
    dtype: computation dtype (e.g. ``jnp.bfloat16`` for mixed precision). Parameters are float32,
      activations and features ``dtype``, logits always float32.
    head: 'linear' (GAP + Dense), 'bn_linear' (GAP + BatchNorm + Dense, the official CARE head) or,
      for 'vgg19' only, 'vgg' (torchvision's VGG classifier). None picks the model's own head:
      'vgg' for 'vgg19', 'linear' for the others.
    axis_name: pmap/vmap axis name given to every BatchNorm, so that batch statistics are averaged
      over devices in the ``jax.pmap`` path. None for ``jax.jit`` (single device or sharded mesh).

  Returns:
    The (unbound) Flax module.

  Raises:
    ValueError: unknown ``name`` or ``head``, a head the model does not support, or num_classes < 1.
  """
  if name not in MODEL_NAMES:
    raise ValueError(f'Unknown model name {name!r}; valid names: {", ".join(MODEL_NAMES)}.')
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int; got {num_classes!r}.')
  valid_heads = HEAD_NAMES if name == 'vgg19' else ('linear', 'bn_linear')
  if head is None:
    head = 'vgg' if name == 'vgg19' else 'linear'
  if head not in valid_heads:
    raise ValueError(f'Unknown head {head!r} for {name!r}; valid heads: {", ".join(valid_heads)}.')

  if name == 'tiny_cnn':
    backbone = tiny.TinyCNN(dtype=dtype, axis_name=axis_name)
  elif name == 'vgg19':
    backbone = vgg.VGG(dtype=dtype)
  else:
    stage_sizes, block_cls = resnet.RESNET_CONFIGS[name]
    backbone = resnet.ResNet(
      stage_sizes=stage_sizes, block_cls=block_cls, dtype=dtype, axis_name=axis_name
    )
  return Classifier(
    backbone=backbone,
    head=_make_head(head, num_classes=num_classes, dtype=dtype, axis_name=axis_name),
  )
