"""The input pipeline of a config, as the training loop reads it (tf.data).

The loop asks its inputs for five things only (`Inputs`): the dataset's
`DatasetInfo`, training batches from a step on, evaluation batches of a split,
a few evaluation examples to draw and the identifiers of a split's examples.
`PipelineInputs` answers from `care_jax.data.pipeline` (and its parts:
`care_jax.data.info`, `care_jax.data.reading`); other sources (e.g. in-memory
arrays) only need the same five members.
"""

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np

from care_jax.data import examples
from care_jax.data import info as info_lib
from care_jax.data import pipeline
from care_jax.data import reading
from care_jax.data import registry


class Inputs(Protocol):
  """What `care_jax.training.loop.run` reads."""

  info: info_lib.DatasetInfo

  def train_batches(self, *, batch_size: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of the global batches ``start_step, start_step + 1, ...``."""

  def eval_batches(self, split: str, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of one padded pass over `split`."""

  def examples(self, split: str, *, num_images: int) -> dict[str, np.ndarray]:
    """A few examples of `split` to draw (`care_jax.data.examples.select_examples`)."""

  def example_ids(self, split: str) -> np.ndarray:
    """The identifiers of the examples of `split`, in the order of `eval_batches`."""


class PipelineInputs:
  """`Inputs` of `config.data` through `care_jax.data.pipeline`.

  Args:
    config: the run's config (``data`` and ``seed`` are read).
    boxes_fn: replaces the manual training boxes when ``data.box_source``
      is a generator: pass `care_jax.boxes.replace_boxes`.
  """

  def __init__(
    self, config: ml_collections.ConfigDict, *, boxes_fn: Callable[..., Any] | None = None
  ):
    self._data_config = config.data
    self._seed = config.seed
    self._boxes_fn = boxes_fn
    self.info = info_lib.get_dataset_info(config.data)

  def train_batches(self, *, batch_size: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    return pipeline.train_batches(
      self._data_config,
      batch_size=batch_size,
      seed=self._seed,
      start_step=start_step,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      boxes_fn=self._boxes_fn,
    )

  def eval_batches(self, split: str, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    return pipeline.eval_batches(
      self._data_config,
      split,
      batch_size=batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )

  def examples(self, split: str, *, num_images: int) -> dict[str, np.ndarray]:
    return examples.select_examples(
      self._data_config, split, num_images=num_images, rare_classes=self.info.rare_classes
    )

  def example_ids(self, split: str) -> np.ndarray:
    return reading.example_ids(registry.prepared_builder(self._data_config), split)
