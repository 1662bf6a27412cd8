"""Models for the model tests: abstract and numpy-filled variables, small classifiers, numpy ops.

Big models are only traced (``jax.eval_shape``); numeric checks use small models and parameters
filled from numpy (random init compiles slowly on CPU), compared with independent numpy references.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from care_jax import config as config_lib
from care_jax import training
from care_jax.models import VGG
from care_jax.models import BatchNormLinearHead
from care_jax.models import Classifier
from care_jax.models import LinearHead
from care_jax.models import ResNet
from care_jax.models import VGGHead
from care_jax.models import backbones
from care_jax.models import convnext
from care_jax.models import efficientnet
from care_jax.models import get_model
from care_jax.models import vit
from care_jax.models import weight_maps

KEY = jax.random.key(0)

# Small ConvNeXt and EfficientNet backbones (stride 8: 4x4 maps of 32x32 images) with their own
# default heads, for the step, attention and back-end tests; registered when this module is
# imported. No stochastic depth and no head dropout: the data-parallel comparisons draw no rngs.
SMALL_CONVNEXT = 'small_convnext'
SMALL_EFFICIENTNET = 'small_efficientnet'
# A two-block ViT (one block in the backbone, one in the 'vit_token' head): a 2x2 grid at 32 px.
SMALL_VIT = 'small_vit'
backbones.register_backbone(
  SMALL_CONVNEXT,
  functools.partial(convnext.ConvNeXt, depths=(1, 1), dims=(8, 16), stochastic_depth_prob=0.0),
  heads=('layernorm_linear', *backbones.STANDARD_HEADS),
  default_head='layernorm_linear',
  replace=True,
)
backbones.register_backbone(
  SMALL_EFFICIENTNET,
  functools.partial(
    efficientnet.EfficientNet,
    stages=efficientnet.B0_STAGES[:3],
    width_mult=0.25,
    depth_mult=0.5,  # one block per stage
    stochastic_depth_prob=0.0,
    classifier_dropout=0.0,
  ),
  heads=('dropout_linear', *backbones.STANDARD_HEADS),
  default_head='dropout_linear',
  replace=True,
)
backbones.register_backbone(
  SMALL_VIT,
  functools.partial(vit.ViT, hidden_dim=32, depth=2, num_heads=2, mlp_dim=64),
  heads=('vit_token',),
  default_head='vit_token',
  weight_reader=weight_maps.read_vit_weights,
  replace=True,
)


def images(batch: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
  """Random float32 [batch, size, size, 3] images."""
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def abstract_variables(model: nn.Module, images) -> dict:
  """The shapes and dtypes of `model`'s variables for `images` (traced, nothing computed)."""
  return jax.eval_shape(
    functools.partial(model.init, train=False), {'params': KEY, 'dropout': KEY}, images
  )


@functools.cache
def abstract_model(name: str) -> tuple[Classifier, dict]:
  """A 1000-class model and its variables' shapes for a [2, 64, 64, 3] input (traced once)."""
  model = get_model(name, num_classes=1000)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  return model, abstract_variables(model, images)


def fake_variables(model: nn.Module, images, seed: int = 0) -> dict:
  """Variables of the right tree and shapes from numpy: He-scaled kernels, non-trivial BN state."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    shape = leaf.shape
    if name == 'kernel':
      values = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name in ('scale', 'var'):
      values = rng.uniform(0.5, 1.5, size=shape)
    else:  # bias, mean
      values = rng.normal(size=shape) * 0.1
    return jnp.asarray(values, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, images))


def brute_force_grad_cam(
  model: Classifier, variables: dict, features, labels, head_inputs=None
) -> np.ndarray:
  """Grad-CAM written out per image: ``jax.grad`` of the class logit of the head alone with
  respect to the image's feature map (the image's ``head_inputs``, a ViT's class token, held),
  its spatial mean as channel weights, the weighted sum of the channels, min-max normalised."""

  def logit(feature_map, label, inputs):
    logits = model.apply(
      variables, feature_map[None], method=Classifier.apply_head, head_inputs=inputs
    )
    return logits[0, label]

  maps, gradient = [], jax.jit(jax.grad(logit))  # one compilation for all the images
  for i, (feature_map, label) in enumerate(zip(features, np.asarray(labels))):
    inputs = jax.tree.map(lambda x: x[i : i + 1], head_inputs)
    weights = gradient(feature_map, label, inputs).mean(axis=(0, 1))
    cam = np.einsum('hwc,c->hw', feature_map, weights)
    maps.append((cam - cam.min()) / (cam.max() - cam.min()))
  return np.stack(maps)


def num_params(tree) -> int:
  """The number of scalars in `tree`."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def np_conv(x: np.ndarray, kernel: np.ndarray, *, stride: int, pad: int) -> np.ndarray:
  """NHWC cross-correlation with symmetric zero padding, as torch.nn.Conv2d(padding=pad)."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kernel = np.asarray(kernel, np.float64)
  kh, kw = kernel.shape[:2]
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
      out += patch @ kernel[i, j]
  return out


def small_resnet(block_cls: type[nn.Module], head: str = 'linear') -> Classifier:
  """The ResNet code path with narrow stages: stem, layer1_0, layer2_0 (strided, projected)."""
  head_cls = {'linear': LinearHead, 'bn_linear': BatchNormLinearHead}[head]
  return Classifier(
    backbone=ResNet(stage_sizes=(1, 1), block_cls=block_cls, widths=(8, 16)),
    head=head_cls(num_classes=3),
  )


def small_vgg_classifier(num_classes: int = 3) -> Classifier:
  return Classifier(
    backbone=VGG(blocks=((8,), (8,), (16,), (16,), (16,))),
    head=VGGHead(num_classes=num_classes, hidden_size=32),
  )


def np_normalize(x: np.ndarray, axis: int) -> np.ndarray:
  """torch.nn.functional.normalize: x / max(||x||_2, 1e-12)."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def created_tiny_model(num_classes: int = 5):
  """(config, model, variables): the default config's tiny CNN, freshly initialised (32 x 32)."""
  config = config_lib.default_config()
  model = training.create_model(config, num_classes)
  state = training.create_train_state(config, model, (32, 32, 3), 10, jax.random.key(0))
  return config, model, {'params': state.params, 'batch_stats': state.batch_stats}
