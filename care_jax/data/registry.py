"""The datasets the pipelines read, by ``data.name``: the one place a dataset is added.

Each entry of the registry (`RegisteredDataset`) builds the dataset's tfds builder from the data
config and says how the dataset stores an image file (for `care_jax.data.file_input`). A new
dataset is a module of `care_jax.data` with a ``from_data_config`` function, its entry here and
its parameters (``data.<name>``) in `care_jax.config`.

Example::

  builder = prepared_builder(care_jax.config.default_data_config())
  builder.info.splits['train'].num_examples
"""

from collections.abc import Callable
import dataclasses

import ml_collections
import tensorflow_datasets as tfds

from care_jax.data import _tensorflow  # noqa: F401  (GPUs hidden before a builder runs TF)
from care_jax.data import chexpert
from care_jax.data import decoy_digits
from care_jax.data import folder
from care_jax.data import isic2018
from care_jax.data import medmnist
from care_jax.data import nih_chestxray14
from care_jax.data import rsna_pneumonia
from care_jax.data import synthetic_lesions
from care_jax.data import synthetic_multilabel


@dataclasses.dataclass(frozen=True)
class RegisteredDataset:
  """A dataset of the registry.

  Attributes:
    builder: ``f(data_config)``, the dataset's (unprepared) tfds builder.
    encoding: how the dataset stores an image file: 'png' or 'jpeg'.
    stored_size_key: the ``data.<key>`` sub-config whose ``stored_size`` bounds the stored
      images (shrunk as the dataset's builder shrinks them), or None: stored as they are.
  """

  builder: Callable[[ml_collections.ConfigDict], tfds.core.DatasetBuilder]
  encoding: str
  stored_size_key: str | None


def _synthetic_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  overrides = data_config.get('synthetic')
  overrides = overrides.to_dict() if overrides is not None else {}
  return synthetic_lesions.SyntheticLesions(
    config=synthetic_lesions.synthetic_config(**overrides), data_dir=data_config.get('dir')
  )


def _synthetic_multilabel_builder(
  data_config: ml_collections.ConfigDict,
) -> tfds.core.DatasetBuilder:
  overrides = data_config.get('synthetic_multilabel')
  overrides = overrides.to_dict() if overrides is not None else {}
  return synthetic_multilabel.SyntheticMultilabel(
    config=synthetic_multilabel.multilabel_config(**overrides), data_dir=data_config.get('dir')
  )


# data.name -> the dataset.
_DATASETS: dict[str, RegisteredDataset] = {
  'synthetic_lesions': RegisteredDataset(_synthetic_builder, 'png', None),
  'synthetic_multilabel': RegisteredDataset(_synthetic_multilabel_builder, 'png', None),
  'decoy_digits': RegisteredDataset(decoy_digits.from_data_config, 'png', None),
  'folder': RegisteredDataset(folder.from_data_config, folder.Folder.ENCODING, 'folder'),
  'isic2018': RegisteredDataset(isic2018.from_data_config, isic2018.Isic2018.ENCODING, 'isic2018'),
  'rsna_pneumonia': RegisteredDataset(
    rsna_pneumonia.from_data_config, rsna_pneumonia.RsnaPneumonia.ENCODING, 'rsna_pneumonia'
  ),
  'nih_chestxray14': RegisteredDataset(
    nih_chestxray14.from_data_config, nih_chestxray14.NihChestxray14.ENCODING, 'nih_chestxray14'
  ),
  'medmnist': RegisteredDataset(medmnist.from_data_config, medmnist.Medmnist.ENCODING, None),
  'chexpert': RegisteredDataset(chexpert.from_data_config, chexpert.Chexpert.ENCODING, 'chexpert'),
}


def names() -> tuple[str, ...]:
  """The names of the registered datasets (``data.name``), sorted."""
  return tuple(sorted(_DATASETS))


def dataset(name: str) -> RegisteredDataset:
  """The registry's entry of ``data.name``.

  Raises:
    ValueError: for an unsupported name (the supported ones are named).
  """
  if name not in _DATASETS:
    raise ValueError(
      f'data.name={name!r} is not supported; supported datasets: {sorted(_DATASETS)}.'
    )
  return _DATASETS[name]


def prepared_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the builder of ``data_config.name``, prepared (no download).

  Raises:
    ValueError: for an unsupported ``data_config.name``, or the dataset's own
      errors (bad parameters or files).
  """
  builder = dataset(data_config.name).builder(data_config)
  # A no-op when the data already exist in data_dir.
  builder.download_and_prepare()
  return builder
