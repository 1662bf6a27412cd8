"""The backbone table: ``model.name`` -> the Flax module whose feature map the attention maps use.

A backbone is any Flax module whose ``__call__(x, *, train)`` maps NHWC images ``[B, H, W, 3]``
to the feature map ``[B, h, w, C]`` that the head pools and that the class attention maps
(CAM / Grad-CAM) are taken from: the last convolutional stage, before any pooling. Its
constructor may take the keywords ``dtype`` (the computation dtype: parameters float32,
activations ``dtype``) and ``axis_name`` (the ``jax.pmap`` axis over which BatchNorm averages
batch statistics); each is passed only when the constructor names it (or takes ``**kwargs``).
Its parameters live under ``params['backbone']``; BatchNorm statistics (collection
``batch_stats``) and dropout (rng ``'dropout'``) are supported like the built-in backbones'.

A backbone is named in two ways:

- registered: ``register_backbone('my_cnn', MyCNN)`` (the built-in ResNets, VGG-19, DenseNets
  and ``tiny_cnn`` are registered so in ``care_jax.models.classifier``);
- by import path, big_vision-style: ``model.name = 'my_package.my_module:MyCNN'`` imports
  ``my_package.my_module`` and takes its attribute ``MyCNN`` (a module class or any callable
  returning a module). The path is what a checkpoint records, so a run is rebuilt from it
  wherever the module imports.

A backbone may also hand the head **inputs beside the feature map**: it then returns the pair
``(feature_map, head_inputs)``, ``head_inputs`` a dict of arrays by name. A ViT does so
(`care_jax.models.vit`): its feature map is the patch tokens entering the last block, on their
grid (Grad-CAM of the patch tokens after the last block is zero: only the class token reaches
the logits), and ``{'class_token': [B, C]}`` goes to its head (``'vit_token'``: the last block,
the final LayerNorm, the classifier on the class token). ``Classifier`` then returns the
intermediates ``{'features': ..., 'head_inputs': {...}}`` (the key only when there are head
inputs) and calls ``head(features, train=train, **head_inputs)`` with those of the inputs that
the head's ``__call__`` names; ``Classifier.apply_head`` and ``Classifier.attention_maps`` take
them as ``head_inputs=intermediates.get('head_inputs')``, held constant: the maps are the partial
derivative of the class logit with respect to the feature map alone.

Optionally a backbone has a **weight reader** for ``model.pretrained``: a callable
``read_weights(path, variables) -> variables`` that receives the freshly initialised variables
of the whole classifier (``{'params': {'backbone': ..., 'head': ...}, 'batch_stats': ...}``,
numpy or jax arrays) and returns them with the values of the local file ``path`` put in (the
backbone's at least; the head's when the file's classes fit). Pass it as
``register_backbone(..., weight_reader=...)``, or give the class a ``read_weights`` static method
(used for import paths). Without one ``model.pretrained`` is refused with a message saying so.

Example::

  class SmallCNN(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train):
      x = nn.relu(nn.Conv(16, (3, 3), strides=2, dtype=self.dtype)(x))
      return nn.relu(nn.Conv(32, (3, 3), strides=2, dtype=self.dtype)(x))   # [B, H/4, W/4, 32]

  register_backbone('small_cnn', SmallCNN)
  model = get_model('small_cnn', num_classes=2)     # or get_model('my_module:SmallCNN', ...)
"""

import dataclasses
import importlib
import inspect
import os
from typing import Any, Callable

import flax.linen as nn

# The heads every backbone takes unless its registration says otherwise (see get_model).
STANDARD_HEADS: tuple[str, ...] = ('linear', 'bn_linear', 'normed_linear')
# A weight reader: (local file, the classifier's initialised variables) -> the filled variables.
WeightReader = Callable[[str | os.PathLike[str], dict[str, Any]], dict[str, Any]]
_KEYWORDS = ('dtype', 'axis_name')


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A backbone of the table: how to build it, which heads it takes, how to read its weights.

  Attributes:
    name: the registered name or the import path ``'package.module:Attribute'``.
    factory: a Flax module class or a callable returning a module, called with the keywords of
      ``dtype`` and ``axis_name`` that it names.
    heads: the head names it accepts (``get_model``'s ``head``).
    default_head: the head of ``head=None``.
    weight_reader: ``read_weights(path, variables) -> variables`` for ``model.pretrained``, or
      None.
  """

  name: str
  factory: Callable[..., nn.Module]
  heads: tuple[str, ...] = STANDARD_HEADS
  default_head: str = 'linear'
  weight_reader: WeightReader | None = None

  def build(self, **keywords: Any) -> nn.Module:
    """The module, given those of ``keywords`` (``dtype``, ``axis_name``) the factory names.

    Raises:
      ValueError: the factory fails or returns something that is not a Flax module.
    """
    accepted = _accepted_keywords(self.factory)
    try:
      module = self.factory(**{k: v for k, v in keywords.items() if k in accepted})
    except TypeError as error:
      raise ValueError(f'Backbone {self.name!r}: could not be built ({error}).') from None
    if not isinstance(module, nn.Module):
      raise ValueError(
        f'Backbone {self.name!r}: its factory returned {type(module).__name__}, not a Flax '
        'module (flax.linen.Module).'
      )
    return module


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(
  name: str,
  factory: Callable[..., nn.Module],
  *,
  heads: tuple[str, ...] = STANDARD_HEADS,
  default_head: str = 'linear',
  weight_reader: WeightReader | None = None,
  replace: bool = False,
) -> None:
  """Makes ``name`` a valid ``model.name`` (and ``get_model`` name) for ``factory``'s modules.

  Args:
    name: the name (no ':', which marks an import path).
    factory: a Flax module class or a callable returning one (see the module docstring); it
      receives ``dtype`` and ``axis_name`` if it names them.
    heads: the head names this backbone accepts.
    default_head: the head used when none is asked for (one of ``heads``).
    weight_reader: ``read_weights(path, variables) -> variables`` for ``model.pretrained``;
      None takes the factory's ``read_weights`` attribute if it has one.
    replace: allow registering a name again (otherwise an error, to catch clashes).

  Raises:
    ValueError: a name with ':' or already registered, a default head not in ``heads``, or a
      factory that is not callable.
  """
  if not isinstance(name, str) or not name or ':' in name:
    raise ValueError(f"Backbone name {name!r}: must be a non-empty string without ':'.")
  if name in _REGISTRY and not replace:
    raise ValueError(f'Backbone {name!r} is already registered; pass replace=True to replace it.')
  if not callable(factory):
    raise ValueError(f'Backbone {name!r}: the factory {factory!r} is not callable.')
  if default_head not in heads:
    raise ValueError(f'Backbone {name!r}: default_head {default_head!r} is not in {heads}.')
  reader = weight_reader if weight_reader is not None else getattr(factory, 'read_weights', None)
  _REGISTRY[name] = Backbone(name, factory, tuple(heads), default_head, reader)


def registered_names() -> tuple[str, ...]:
  """The registered backbone names, in registration order."""
  return tuple(_REGISTRY)


def is_import_path(name: str) -> bool:
  """Whether ``name`` is an import path ``'package.module:Attribute'`` (it holds a ':')."""
  return isinstance(name, str) and ':' in name


def resolve(name: str) -> Backbone:
  """The ``Backbone`` of a registered name or an import path.

  Raises:
    ValueError: one line naming ``name``: unknown name, a module that does not import, or a
      missing attribute.
  """
  problem = _problem(name)
  if problem is not None:
    what = 'Backbone' if is_import_path(name) else 'Unknown model name'
    raise ValueError(f'{what} {name!r}: {problem}.')
  return _REGISTRY[name] if name in _REGISTRY else _from_import_path(name)


def problem_of(name: str) -> str | None:
  """Why ``name`` names no backbone (the reason alone, for config errors), or None if it does."""
  return _problem(name)


def _problem(name: str) -> str | None:
  if not isinstance(name, str):
    return 'must be a string'
  if name in _REGISTRY:
    return None
  if not is_import_path(name):
    return f"must be one of {registered_names()} or an import path 'package.module:Backbone'"
  module_name, _, attribute = name.partition(':')
  try:
    module = importlib.import_module(module_name)
  except Exception as error:  # noqa: BLE001 - any failure of the user's module is one line.
    return (
      f'the module {module_name!r} does not import ({type(error).__name__}: {error}); '
      'check the path and that its package is on PYTHONPATH'
    )
  value = module
  for part in attribute.split('.'):
    if not part or not hasattr(value, part):
      return f'the module {module_name!r} has no attribute {attribute!r}'
    value = getattr(value, part)
  if not callable(value):
    return f'{attribute!r} of {module_name!r} is not a Flax module class or factory'
  return None


def _from_import_path(name: str) -> Backbone:
  module_name, _, attribute = name.partition(':')
  factory = importlib.import_module(module_name)
  for part in attribute.split('.'):
    factory = getattr(factory, part)
  reader = getattr(factory, 'read_weights', None)
  return Backbone(name, factory, STANDARD_HEADS, 'linear', reader)


def _accepted_keywords(factory: Callable[..., Any]) -> frozenset[str]:
  try:
    parameters = inspect.signature(factory).parameters.values()
  except (TypeError, ValueError):  # no signature (a builtin): pass nothing
    return frozenset()
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
    return frozenset(_KEYWORDS)
  return frozenset(p.name for p in parameters if p.name in _KEYWORDS)


def check_features(name: str, outputs: Any) -> tuple[Any, dict[str, Any]]:
  """The backbone ``name``'s ``(feature map, head inputs)``, or ValueError for anything else.

  ``outputs`` is what the backbone returned: a 4-D feature map ``[B, h, w, C]``, or a pair
  ``(feature_map, head_inputs)`` with ``head_inputs`` a dict of arrays keyed by name (``{}`` is
  returned for the first form). Called by ``Classifier`` on every trace (a shape check, free at
  run time).
  """
  head_inputs: Any = {}
  if isinstance(outputs, tuple) and len(outputs) == 2:
    outputs, head_inputs = outputs
    if not isinstance(head_inputs, dict) or not all(
      isinstance(k, str) and hasattr(v, 'shape') for k, v in head_inputs.items()
    ):
      raise ValueError(
        f'Backbone {name!r} returned a pair whose second item is '
        f'{type(head_inputs).__name__}, not a dict of arrays by name: return the feature map, '
        'or (feature_map, {name: array}) for inputs that the head takes beside it.'
      )
  shape = getattr(outputs, 'shape', None)
  if shape is None or len(shape) != 4:
    got = f'shape {tuple(shape)}' if shape is not None else type(outputs).__name__
    raise ValueError(
      f'Backbone {name!r} returned {got}, not a 4-D feature map [batch, height, width, '
      'channels] (or a pair (feature_map, head_inputs)): return the last stage before pooling.'
    )
  return outputs, head_inputs


def read_weights(backbone: Backbone, path: str | os.PathLike[str], variables: dict) -> dict:
  """The classifier's ``variables`` with ``backbone``'s weight reader applied to ``path``.

  Raises:
    ValueError: the backbone has no weight reader (saying how to give it one).
  """
  if backbone.weight_reader is None:
    raise ValueError(
      f'Backbone {backbone.name!r} has no weight reader for model.pretrained: give its class a '
      'static method read_weights(path, variables) -> variables, or register it with '
      'register_backbone(name, factory, weight_reader=...); or start from another run with '
      'init_from.'
    )
  return backbone.weight_reader(path, variables)
