"""``Classifier`` (backbone -> features -> head) and the ``get_model`` factory.

Example::

  model = get_model('resnet18', num_classes=7)
  variables = model.init({'params': key, 'dropout': key2}, images, train=False)
  (logits, intermediates), updates = model.apply(
      variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': key3})
  features = intermediates['features']                       # layer4 output, [B, 7, 7, 512]
  head_logits = model.apply(variables, features, method=Classifier.apply_head)
  maps = model.attention_maps(variables, features, labels)   # [B, 7, 7] in [0, 1]
  # A backbone with head inputs (a ViT's class token) adds intermediates['head_inputs'], which
  # every call of the head takes beside the features:
  #   model.attention_maps(variables, features, labels,
  #                        head_inputs=intermediates.get('head_inputs'))
  # In the train step: the head as in that training pass (batch statistics, its dropout masks).
  train_maps = model.attention_maps(
      variables, features, labels, train=True, rngs={'dropout': key3})
"""

import functools
import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from care_jax import attention
from care_jax.models import backbones
from care_jax.models import convnext
from care_jax.models import densenet
from care_jax.models import efficientnet
from care_jax.models import heads as heads_lib
from care_jax.models import layers
from care_jax.models import resnet
from care_jax.models import tiny
from care_jax.models import vgg
from care_jax.models import vit
from care_jax.models import weight_maps

HEAD_NAMES: tuple[str, ...] = (
  'linear',
  'bn_linear',
  'vgg',
  'normed_linear',
  'layernorm_linear',
  'dropout_linear',
  'flatten',
  'vit_token',
)
# Heads every backbone takes beside those of its registration: position-aware, for any feature map.
ANY_BACKBONE_HEADS: tuple[str, ...] = ('flatten',)
# The head that a config's model.head = 'default' means for a loss, where the loss needs one:
# LDAM's scale s (30) is meant for cosine logits (Cao et al. 2019's NormedLinear head).
LOSS_DEFAULT_HEADS: dict[str, str] = {'ldam_drw': 'normed_linear'}
# How Classifier.attention_maps computes the maps: 'cam' (closed form, GAP + linear heads only),
# 'grad_cam' (VJP of the head) or 'auto' ('cam' whenever the head allows it).
ATTENTION_METHODS: tuple[str, ...] = ('auto', 'cam', 'grad_cam')
# Whose evidence a class's map shows: 'logit' (Grad-CAM of the class's logit z_y, the paper's)
# or 'contrast' (of z_y - mean_k z_k: also the evidence *against* the other classes).
ATTENTION_TARGETS: tuple[str, ...] = ('logit', 'contrast')


def _register_builtin_backbones() -> None:
  """The built-in backbones, registered as any other (care_jax.models.backbones).

  A new built-in backbone registers here, so that it is in ``MODEL_NAMES``.
  """
  backbones.register_backbone('tiny_cnn', tiny.TinyCNN)
  for name, (stage_sizes, block_cls) in resnet.RESNET_CONFIGS.items():
    factory = functools.partial(resnet.ResNet, stage_sizes=stage_sizes, block_cls=block_cls)
    backbones.register_backbone(name, factory)
  vgg_heads = ('linear', 'bn_linear', 'vgg', 'normed_linear')
  backbones.register_backbone('vgg19', vgg.VGG, heads=vgg_heads, default_head='vgg')
  for name, densenet_config in densenet.DENSENET_CONFIGS.items():
    backbones.register_backbone(name, functools.partial(densenet.DenseNet, **densenet_config))
  # ConvNeXt and EfficientNet: their own heads by default, torchvision/timm weight readers.
  for configs, module, head, reader in (
    (convnext.CONVNEXT_CONFIGS, convnext.ConvNeXt, 'layernorm_linear', 'read_convnext_weights'),
    (
      efficientnet.EFFICIENTNET_CONFIGS,
      efficientnet.EfficientNet,
      'dropout_linear',
      'read_efficientnet_weights',
    ),
  ):
    for name, config in configs.items():
      backbones.register_backbone(
        name,
        functools.partial(module, **config),
        heads=(head, *backbones.STANDARD_HEADS),
        default_head=head,
        weight_reader=getattr(weight_maps, reader),
      )
  # ViT-B/16 and DeiT-S/16: the last block is in the head, which needs the class token.
  for name, config in vit.VIT_CONFIGS.items():
    backbones.register_backbone(
      name,
      functools.partial(vit.ViT, **config),
      heads=('vit_token',),
      default_head='vit_token',
      weight_reader=weight_maps.read_vit_weights,
    )


_register_builtin_backbones()
# The built-in names (registered later or named by import path: backbones.registered_names()).
MODEL_NAMES: tuple[str, ...] = backbones.registered_names()


class Classifier(nn.Module):
  """A backbone producing the Grad-CAM feature map, and a head producing logits from it.

  Parameters live under ``params['backbone']`` and ``params['head']``.
  ``__call__`` returns ``(logits float32 [B, K], {'features': [B, h, w, C] in the compute dtype})``;
  for a backbone that also returns head inputs (a ViT's class token, see
  `care_jax.models.backbones`) the intermediates also hold ``'head_inputs'``, a dict of arrays
  that the head takes as keywords beside the features (``apply_head``, ``attention_maps``).
  """

  backbone: nn.Module
  head: nn.Module
  backbone_name: str = ''  # model.name, for the error of a backbone that returns no 4-D map

  def __call__(
    self, x: jax.typing.ArrayLike, *, train: bool
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    layers.check_nhwc(x, name='images')
    outputs = self.backbone(x, train=train)
    name = self.backbone_name or type(self.backbone).__name__
    features, head_inputs = backbones.check_features(name, outputs)
    logits = self.head(features, train=train, **_accepted_inputs(self.head, head_inputs))
    if head_inputs:
      return logits, {'features': features, 'head_inputs': head_inputs}
    return logits, {'features': features}

  def apply_head(
    self,
    features: jax.typing.ArrayLike,
    *,
    train: bool = False,
    head_inputs: dict[str, jax.Array] | None = None,
  ) -> jax.Array:
    """The head alone on a feature map [B, h, w, C] (e.g. for ``jax.vjp`` Grad-CAM of the head).

    ``head_inputs``: the backbone's other head inputs (``intermediates.get('head_inputs')``).
    """
    inputs = _accepted_inputs(self.head, head_inputs or {})
    return self.head(jnp.asarray(features), train=train, **inputs)

  @nn.nowrap  # called on the unbound module: it applies the model itself
  def attention_maps(
    self,
    variables: dict[str, Any],
    features: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    method: str = 'auto',
    target: str = 'logit',
    train: bool = False,
    rngs: dict[str, jax.Array] | None = None,
    head_inputs: dict[str, jax.Array] | None = None,
  ) -> jax.Array:
    """Min-max normalised class attention maps [B, h, w] of ``labels`` on a feature map.

    Call it on the unbound module (as returned by ``get_model``), also inside ``jax.jit``,
    ``jax.grad`` or ``jax.pmap`` with the model closed over or static. 'cam' uses the closed form
    of a GAP + linear head (one einsum with the classifier column of the true class, see
    ``attention.cam``); 'grad_cam' takes the VJP of the head alone (``attention.grad_cam``);
    'auto' picks 'cam' whenever the head allows it. For a linear head both give the same
    normalised map.

    ``target='contrast'`` maps ``z_y - mean_k z_k`` instead of the logit ``z_y``: for a linear
    head the CAM of the class-centred kernel ``W[:, y] - mean_k W[:, k]``, i.e. (up to the scale
    that min-max normalisation removes) ``W[:, y]`` minus the mean of the other columns. Evidence
    that lowers the other classes' logits (a shortcut that argues against the common classes)
    then shows in the map of ``y`` too, where the attention loss can push it out of the image's
    background.

    With ``train=True`` (the train step) the Grad-CAM head runs as in the training forward pass
    that produced ``features``: BatchNorm on this batch's statistics (their updates discarded) and
    dropout drawn from ``rngs`` (pass the forward pass's ``rngs``: flax derives the head's dropout
    keys from the module path, so the masks, and the logits, are those of that pass). The VJP of
    the summed true-class logits then also holds the cross-example terms of the batch statistics,
    as the official code's ``backward()`` in train mode. ``train=False`` (evaluation): running
    statistics, no dropout.

    ``head_inputs`` (``intermediates.get('head_inputs')``: a ViT's class token) enter the head
    as constants: Grad-CAM is the partial derivative of the class logit with respect to
    ``features`` alone.

    Args:
      variables: the model's variables (``params``, and ``batch_stats`` for BatchNorm heads).
      features: [B, h, w, C] feature map, ``intermediates['features']`` of ``__call__``.
      labels: [B] integer classes whose maps are wanted (the ground truth in CARE), or [B, P].
      method: one of ``ATTENTION_METHODS``: 'auto', 'cam' or 'grad_cam'.
      target: one of ``ATTENTION_TARGETS``: 'logit' (the paper's) or 'contrast'.
      train: apply the head in training mode (batch statistics, dropout) for 'grad_cam'.
      rngs: the rngs of the head in training mode, e.g. ``{'dropout': key}`` of the forward pass.
      head_inputs: the backbone's head inputs of the same forward pass, or None.

    Returns:
      [B, h, w] float32 maps in [0, 1]; [B, P, h, w] for [B, P] ``labels`` (one map per image
      and class, e.g. every finding of a multi-label task).

    Raises:
      ValueError: for an unknown ``method`` or ``target`` (the valid ones are named), or 'cam'
        with a head that is not ``LinearHead``.
    """
    labels = jnp.asarray(labels)
    if labels.ndim == 2:
      # [B, P] classes: the maps of each column, side by side (one batched einsum for CAM).
      def column_maps(column):
        return self.attention_maps(
          variables,
          features,
          column,
          method=method,
          target=target,
          train=train,
          rngs=rngs,
          head_inputs=head_inputs,
        )

      return jax.vmap(column_maps, in_axes=1, out_axes=1)(labels)
    if method not in ATTENTION_METHODS:
      raise ValueError(
        f'Unknown attention method {method!r}; valid methods: {", ".join(ATTENTION_METHODS)}.'
      )
    if target not in ATTENTION_TARGETS:
      raise ValueError(
        f'Unknown attention target {target!r}; valid targets: {", ".join(ATTENTION_TARGETS)}.'
      )
    centre = (lambda x: x - jnp.mean(x, axis=-1, keepdims=True)) if target == 'contrast' else None
    is_linear = isinstance(self.head, heads_lib.LinearHead)
    if method == 'cam' or (method == 'auto' and is_linear):
      if not is_linear:
        raise ValueError(f"care.attention='cam' needs a GAP + linear head, not {self.head}")
      # The one place that knows where the CAM kernel lives (LinearHead's Dense 'fc').
      kernel = variables['params']['head']['fc']['kernel']
      return attention.cam(features, kernel if centre is None else centre(kernel), labels)
    apply_head = functools.partial(
      self.apply, variables, method=Classifier.apply_head, head_inputs=head_inputs
    )
    if train:

      def head_fn(f):
        logits, _ = apply_head(f, train=True, mutable=['batch_stats'], rngs=rngs)
        return logits

    else:
      head_fn = lambda f: apply_head(f, train=False)
    if centre is not None:
      logit_fn = head_fn
      head_fn = lambda f: centre(logit_fn(f))
    return attention.grad_cam(head_fn, features, labels)


def _accepted_inputs(head: nn.Module, head_inputs: dict[str, Any]) -> dict[str, Any]:
  """Those of ``head_inputs`` that the head's ``__call__`` names (a pooled head takes none)."""
  if not head_inputs:
    return {}
  parameters = inspect.signature(type(head).__call__).parameters.values()
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
    return dict(head_inputs)
  names = {p.name for p in parameters}
  return {k: v for k, v in head_inputs.items() if k in names}


def resolve_head(head: str | None, *, loss: str | None = None) -> str | None:
  """The ``get_model`` head of a config's ``model.head`` and ``loss.name``.

  'default' (or None) is the loss's head in ``LOSS_DEFAULT_HEADS`` ('normed_linear' for
  'ldam_drw': LDAM's ``s`` scales cosine logits), else None (the architecture's own head); any
  other name is returned as is. Used wherever a model is built from a config (training, loading a
  run), so that a trained model is rebuilt with the head it was trained with.

  Example: ``resolve_head('default', loss='ldam_drw') == 'normed_linear'``, and
  ``resolve_head('default', loss='ce') is None``.
  """
  if head is None or head == 'default':
    return LOSS_DEFAULT_HEADS.get(loss)
  return head


def _make_head(
  head: str,
  *,
  num_classes: int,
  dtype: layers.Dtype,
  axis_name: str | None,
  backbone: nn.Module | None = None,
) -> nn.Module:
  if head == 'linear':
    return heads_lib.LinearHead(num_classes=num_classes, dtype=dtype)
  if head == 'bn_linear':
    return heads_lib.BatchNormLinearHead(num_classes=num_classes, dtype=dtype, axis_name=axis_name)
  if head == 'normed_linear':
    return heads_lib.NormedLinearHead(num_classes=num_classes, dtype=dtype)
  if head == 'layernorm_linear':
    return heads_lib.LayerNormLinearHead(num_classes=num_classes, dtype=dtype)
  if head == 'flatten':
    return heads_lib.FlattenHead(num_classes=num_classes, dtype=dtype)
  if head == 'dropout_linear':
    # EfficientNet's head dropout depends on the variant (torchvision's ``dropout``).
    rate = getattr(backbone, 'classifier_dropout', 0.2)
    return heads_lib.DropoutLinearHead(num_classes=num_classes, dropout_rate=rate, dtype=dtype)
  if head == 'vit_token':
    # The ViT's last block: its heads, MLP width and drop-path rate are the backbone's.
    return heads_lib.ViTTokenHead(
      num_classes=num_classes,
      num_heads=backbone.num_heads,
      mlp_dim=backbone.mlp_dim,
      drop_path_rate=backbone.stochastic_depth_prob,
      dtype=dtype,
    )
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
    name: a registered backbone (``MODEL_NAMES``, ``backbones.register_backbone``) or an import
      path ``'package.module:Backbone'`` (see ``care_jax.models.backbones``).
    num_classes: number of logits K (> 0).
    dtype: computation dtype (e.g. ``jnp.bfloat16`` for mixed precision). Parameters are float32,
      activations and features ``dtype``, logits always float32.
    head: 'linear' (GAP + Dense), 'bn_linear' (GAP + BatchNorm + Dense, the official CARE head),
      'normed_linear' (GAP + cosine classifier, LDAM-DRW's ``NormedLinear``), 'flatten' (Dense on
      the flattened feature map, position-aware; every backbone takes it), 'vgg' for 'vgg19'
      (torchvision's VGG classifier), 'layernorm_linear' / 'dropout_linear' for ConvNeXt /
      EfficientNet, 'vit_token' for the ViTs (their only head beside 'flatten'): those of the
      backbone's registration. None picks the backbone's own head (``resolve_head`` maps a
      config's ``model.head``).
    axis_name: pmap/vmap axis name given to every BatchNorm, so that batch statistics are averaged
      over devices in the ``jax.pmap`` path. None for ``jax.jit`` (single device or sharded mesh).

  Returns:
    The (unbound) Flax module.

  Raises:
    ValueError: unknown ``name`` (or an import path that does not import), unknown ``head``, a
      head the backbone does not support, or num_classes < 1.
  """
  spec = backbones.resolve(name)
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int; got {num_classes!r}.')
  if head is None:
    head = spec.default_head
  valid_heads = (*spec.heads, *ANY_BACKBONE_HEADS)
  if head not in valid_heads or head not in HEAD_NAMES:
    raise ValueError(f'Unknown head {head!r} for {name!r}; valid heads: {", ".join(valid_heads)}.')
  backbone = spec.build(dtype=dtype, axis_name=axis_name)
  return Classifier(
    backbone=backbone,
    head=_make_head(
      head, num_classes=num_classes, dtype=dtype, axis_name=axis_name, backbone=backbone
    ),
    backbone_name=name,
  )
