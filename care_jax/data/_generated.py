"""What the generated datasets share (`synthetic_lesions`, `synthetic_multilabel`, `decoy_digits`).

Each is a tfds builder whose examples a pure function makes, example ``i`` of split ``s`` from
``np.random.default_rng((seed, s, i))`` (`example_rng`), so that generation is deterministic and
order-independent. Their config (`GeneratedConfig`) is named ``s<image_size>_<hash>`` after all
its parameters, so differently parameterised datasets never share a directory of a data_dir;
their builder (`GeneratedBuilder`) stores the splits that have examples, keyed
``<split>_<index:06d>``.
"""

import abc
from collections.abc import Iterator, Mapping
import hashlib
import json
import sys
from typing import Any, ClassVar, TypeVar

import numpy as np
import tensorflow_datasets as tfds

from care_jax.data import _local

SPLITS = ('train', 'validation', 'test')

_Config = TypeVar('_Config', bound='GeneratedConfig')


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of example ``index`` of ``split``: ``default_rng((seed, s, index))``."""
  return np.random.default_rng((seed, SPLITS.index(split), index))


class GeneratedConfig(tfds.core.BuilderConfig):
  """The parameters of a generated dataset, named ``s<image_size>_<hash>`` after all of them.

  A subclass sets its attributes (``image_size`` among them), then calls ``super().__init__()``;
  `parameters` lists them (the name's hash input and the keywords of `from_overrides`).
  """

  # The dataset's name, for the description and messages.
  DATASET: ClassVar[str] = ''

  image_size: int

  def __init__(self):
    params = self.parameters()
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    super().__init__(
      name=f's{self.image_size}_{digest}', description=f'{self.DATASET} with {params}'
    )

  def parameters(self) -> dict[str, Any]:
    """Returns the parameters that define the data (the name's hash input)."""
    raise NotImplementedError

  @classmethod
  def from_overrides(cls: type[_Config], overrides: Mapping[str, Any]) -> _Config:
    """The config with keyword ``overrides`` of its defaults.

    Raises:
      ValueError: on a keyword that is not a parameter (the valid ones are named).
    """
    valid = tuple(cls().parameters())
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
      raise ValueError(f'Unknown {cls.DATASET} parameter(s) {unknown}; valid: {valid}.')
    return cls(**overrides)


class GeneratedBuilder(_local.LocalData, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A tfds builder of generated examples (module docstring).

  A subclass sets ``BUILDER_CONFIGS`` (its default config), ``DEFAULT_CONFIG_NAME`` and
  `SUPERVISED_KEYS`, and defines `_features` (every feature but ``image``), `_split_size` and
  `_example`. The dataset info's description is its module's docstring up to ``Example::``.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release.'}
  SUPERVISED_KEYS: ClassVar[tuple[str, str] | None] = ('image', 'label')

  def __init__(self, *, config: GeneratedConfig | str | None = None, **kwargs: Any):
    # tfds refuses a config *object* that shares the name of a predefined one
    # (here: an equal copy of the default); pass the name instead.
    if isinstance(config, GeneratedConfig) and config.name in self.builder_configs:
      config = config.name
    super().__init__(config=config, **kwargs)

  @abc.abstractmethod
  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The features after ``image`` (uint8 [S, S, 3]), in their order."""

  @abc.abstractmethod
  def _split_size(self, split: str) -> int:
    """The number of examples of ``split`` (0: the split is not stored)."""

  @abc.abstractmethod
  def _example(self, split: str, index: int) -> dict[str, Any]:
    """Example ``index`` of ``split``."""

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
      description=(sys.modules[type(self).__module__].__doc__ or '').split('Example::')[0],
      features=tfds.features.FeaturesDict(
        {'image': tfds.features.Image(shape=(size, size, 3)), **self._features()}
      ),
      supervised_keys=self.SUPERVISED_KEYS,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is generated locally.
    return {split: self._generate_examples(split) for split in SPLITS if self._split_size(split)}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for index in range(self._split_size(split)):
      yield f'{split}_{index:06d}', self._example(split, index)
