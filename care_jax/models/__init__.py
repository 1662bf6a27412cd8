"""Flax Linen classifiers: backbone -> feature map -> head, returning (logits, intermediates).

Models know no optimizer and no files. See ``get_model`` for the entry point, and
``register_backbone`` (``care_jax.models.backbones``) to bring your own backbone.
"""

from care_jax.models.backbones import Backbone
from care_jax.models.backbones import register_backbone
from care_jax.models.classifier import ATTENTION_METHODS
from care_jax.models.classifier import ATTENTION_TARGETS
from care_jax.models.classifier import HEAD_NAMES
from care_jax.models.classifier import LOSS_DEFAULT_HEADS
from care_jax.models.classifier import MODEL_NAMES
from care_jax.models.classifier import Classifier
from care_jax.models.classifier import get_model
from care_jax.models.classifier import resolve_head
from care_jax.models.convnext import ConvNeXt
from care_jax.models.densenet import DenseNet
from care_jax.models.efficientnet import EfficientNet
from care_jax.models.heads import BatchNormLinearHead
from care_jax.models.heads import DropoutLinearHead
from care_jax.models.heads import FlattenHead
from care_jax.models.heads import LayerNormLinearHead
from care_jax.models.heads import LinearHead
from care_jax.models.heads import NormedLinearHead
from care_jax.models.heads import VGGHead
from care_jax.models.heads import ViTTokenHead
from care_jax.models.heads import adaptive_avg_pool
from care_jax.models.pretrained import IMAGENET_MEAN
from care_jax.models.pretrained import IMAGENET_STD
from care_jax.models.pretrained import PRETRAINED_MODEL_NAMES
from care_jax.models.pretrained import LoadReport
from care_jax.models.pretrained import load_pretrained
from care_jax.models.resnet import BasicBlock
from care_jax.models.resnet import Bottleneck
from care_jax.models.resnet import ResNet
from care_jax.models.tiny import TinyCNN
from care_jax.models.vgg import VGG
from care_jax.models.vit import ViT

__all__ = (
  'adaptive_avg_pool',
  'ATTENTION_METHODS',
  'ATTENTION_TARGETS',
  'Backbone',
  'BasicBlock',
  'BatchNormLinearHead',
  'Bottleneck',
  'Classifier',
  'ConvNeXt',
  'DenseNet',
  'DropoutLinearHead',
  'EfficientNet',
  'FlattenHead',
  'get_model',
  'HEAD_NAMES',
  'IMAGENET_MEAN',
  'IMAGENET_STD',
  'LayerNormLinearHead',
  'LinearHead',
  'load_pretrained',
  'LoadReport',
  'LOSS_DEFAULT_HEADS',
  'MODEL_NAMES',
  'NormedLinearHead',
  'PRETRAINED_MODEL_NAMES',
  'register_backbone',
  'resolve_head',
  'ResNet',
  'TinyCNN',
  'VGG',
  'VGGHead',
  'ViT',
  'ViTTokenHead',
)
