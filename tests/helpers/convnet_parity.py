"""Logit parity of our ConvNeXt / EfficientNet / ViT with torchvision's and timm's own models.

tests/helpers/torch_convnet_reference.py (torch_vit_reference.py) writes each model's random
float16 weights and its eval-mode logits (run once under the torch venv, cached);
`assert_logits_match` reads the weights with our weight reader and compares. One compiled forward
pass per variant and size serves both sources (the same architecture).
"""

import functools
import json
import pathlib

import jax
import numpy as np

from care_jax.models import get_model
from care_jax.models import weight_maps
from tests.helpers import torch_venv

SOURCES = ('torchvision', 'timm')


def exports(torch_python: pathlib.Path) -> pathlib.Path:
  """The reference script's outputs (made once, cached under .torch-venv/)."""
  return torch_venv.torch_exports(torch_python, torch_venv.CONVNET_REFERENCE_SCRIPT)


def reference_parameter_counts(exported: pathlib.Path) -> dict[str, int]:
  """'{name}.{source}' -> the number of parameters of torchvision's / timm's model."""
  return json.loads((exported / 'manifest.json').read_text())['parameter_counts']


def assert_logits_match(
  exported: pathlib.Path,
  name: str,
  size: int,
  *,
  family: str | None = None,
  sources: tuple[str, ...] = SOURCES,
) -> None:
  """Our eval-mode logits within 1e-4 relative of those of ``sources``' models, at ``size`` px;
  ``family`` is the weight reader's (default: the name's prefix, e.g. 'convnext')."""
  family = family or name.split('_')[0]
  model = get_model(name, num_classes=1000)
  images = np.load(exported / f'input_{size}.npy')
  abstract = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), images[:1]
  )
  zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract)
  forward = jax.jit(functools.partial(model.apply, train=False))
  for source in sources:
    variables = weight_maps.read_weights(
      family, exported / f'{name}.{source}.safetensors', zeros, source=source
    )
    logits, _ = forward(variables, images)
    reference = np.load(exported / f'{name}.{source}_{size}.npy')
    torch_venv.assert_close_to_torch(logits, reference)
