"""TensorFlow as the input pipelines run it: on the CPU, leaving the accelerator to JAX.

The modules of the pipelines (`care_jax.data.registry`, `reading`, `preprocess`, `info`,
`file_input`, `pipeline`) import TensorFlow from here, so that the first of them to load hides
the GPUs from TensorFlow before it starts its devices. (The package, `care_jax.data`, quiets
TensorFlow's start-up INFO lines before any of its modules imports TensorFlow.)
"""

import logging

import tensorflow as tf

try:
  # TF must leave the accelerator (and its memory) to JAX.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError as e:  # TF already initialised its devices elsewhere.
  logging.warning('Could not hide GPUs from TensorFlow: %s', e)
