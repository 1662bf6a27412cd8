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

from care_jax import _deprecated

# TensorFlow's log level (TF_CPP_MIN_LOG_LEVEL, default 1: no INFO lines) is set and applied to its
# start-up lines where it is imported, in care_jax.data._tensorflow.

# Public name -> module that defines it, imported lazily (PEP 562).
_EXPORTS = {
  'DatasetInfo': 'info',
  'eval_batches': 'pipeline',
  'get_dataset_info': 'info',
  'rasterize_boxes': 'preprocess',
  'train_batches': 'pipeline',
  'Chexpert': 'chexpert',
  'Folder': 'folder',
  'Isic2018': 'isic2018',
  'Medmnist': 'medmnist',
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

# The exports, and the deprecated names (e.g. default_data_config, now care_jax.config's).
__getattr__ = _deprecated.getattr_of(__name__, lazy=_EXPORTS)


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
