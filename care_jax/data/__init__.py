"""Datasets and tf.data input pipelines (TensorFlow is imported on first use).

``from care_jax.data import train_batches`` loads TensorFlow; ``import
care_jax.data`` alone does not. The batch contract is in
:mod:`care_jax.data.pipeline`; the embedded datasets in
:mod:`care_jax.data.synthetic_lesions` and (multi-label)
:mod:`care_jax.data.synthetic_multilabel`.

Example::

  from care_jax import config as care_config
  from care_jax import data
  config = care_config.default_data_config()
  info = data.get_dataset_info(config)
  batch = next(data.train_batches(config, batch_size=32, seed=0))
"""

import importlib
from typing import Any

# Public name -> module that defines it, imported lazily (PEP 562).
_EXPORTS = {
  'DatasetInfo': 'pipeline',
  # Deprecated (warns): care_jax.config.default_data_config. Remove in 0.3.
  'default_data_config': 'pipeline',
  'eval_batches': 'pipeline',
  'get_dataset_info': 'pipeline',
  'rasterize_boxes': 'pipeline',
  'train_batches': 'pipeline',
  'Folder': 'folder',
  'Isic2018': 'isic2018',
  'NihChestxray14': 'nih_chestxray14',
  'RsnaPneumonia': 'rsna_pneumonia',
  'dicom_to_rgb': 'rsna_pneumonia',
  'SyntheticLesions': 'synthetic_lesions',
  'SyntheticLesionsConfig': 'synthetic_lesions',
  'synthetic_config': 'synthetic_lesions',
  'SyntheticMultilabel': 'synthetic_multilabel',
  'SyntheticMultilabelConfig': 'synthetic_multilabel',
  'multilabel_config': 'synthetic_multilabel',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module = importlib.import_module(f'{__name__}.{_EXPORTS[name]}')
  return getattr(module, name)


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
