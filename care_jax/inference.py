"""A trained run applied to new images: class probabilities, predictions and attention maps.

`Predictor.from_workdir` loads a checkpoint of a run with everything its
evaluation used: the model, the class names, the run's own evaluation
preprocessing (`care_jax.data.file_input.file_batches`, the same code as its
eval batches) and, for runs trained with ``loss.posthoc_tau``, the post-hoc
logit adjustment of its predictions. ``care-jax predict`` (`care_jax.predict`)
is the command around it; `export` writes a `jax.export` artifact of a
checkpoint that runs without care-jax (``care-jax export``).

Example::

  predictor = Predictor.from_workdir('runs/care', checkpoint='best')
  result = predictor.predict_files(['a.png', 'b.jpg'])
  result.probabilities      # float32 [2, K]; columns: predictor.class_names
  result.predictions        # int [2]
"""

from collections.abc import Sequence
import dataclasses
import functools
import json
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from care_jax import imbalance
from care_jax import models
from care_jax import trained_run


@dataclasses.dataclass(frozen=True)
class Predictions:
  """What `Predictor.predict_files` found for a list of image files.

  Attributes:
    index: int64 [N] positions (in the list of files) of the images read;
      with ``skip_unreadable`` an unreadable file has none.
    probabilities: float32 [N, K] class probabilities (softmax of the scores
      whose argmax is the prediction); for a multi-label run the sigmoid of
      each finding's logit (the findings at >= 0.5 are its predictions,
      `predicted_classes`).
    predictions: int64 [N] predicted classes (multi-label: the most probable
      finding, whose map ``maps`` holds).
    maps: float32 [N, h, w] min-max normalised attention maps of the
      predicted classes, or None when not asked for.
    images: float32 [N, S, S, C] the preprocessed images, or None.
  """

  index: np.ndarray
  probabilities: np.ndarray
  predictions: np.ndarray
  maps: np.ndarray | None = None
  images: np.ndarray | None = None


def predicted_classes(probabilities, class_names: Sequence[str], *, multilabel: bool) -> str:
  """A row's prediction as text: its argmax class, or the multi-label findings at >= 0.5
  joined by ``|`` (empty for none)."""
  if multilabel:
    return '|'.join(name for name, p in zip(class_names, probabilities) if p >= 0.5)
  return class_names[int(np.argmax(probabilities))]


def probabilities_of(scores: jax.Array, *, multilabel: bool) -> jax.Array:
  """Softmax over exclusive classes, or one sigmoid per finding (multi-label)."""
  return jax.nn.sigmoid(scores) if multilabel else jax.nn.softmax(scores, axis=-1)


@functools.partial(jax.jit, static_argnames=('model', 'method', 'with_maps', 'multilabel'))
def _predict(
  model, variables, images, posthoc_bias, *, method: str, with_maps: bool, multilabel: bool
):
  logits, intermediates = model.apply(variables, images, train=False)
  scores = logits if posthoc_bias is None else logits - posthoc_bias
  predictions = jnp.argmax(scores, axis=-1)
  maps = None
  if with_maps:
    maps = model.attention_maps(variables, intermediates['features'], predictions, method=method)
  return probabilities_of(scores, multilabel=multilabel), predictions, maps


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A checkpoint of a trained run, ready to score images.

  Attributes:
    config: the run's config (``data`` gives the preprocessing).
    model: the float32 classifier.
    variables: its ``{'params', 'batch_stats'}``.
    class_names: the classes in label order (the columns of probabilities).
    step: the checkpoint's step.
    posthoc_bias: ``tau * log(prior)`` subtracted from the logits before the
      argmax (the run's ``loss.posthoc_tau``), or None.
  """

  config: ml_collections.ConfigDict
  model: models.Classifier
  variables: dict[str, Any]
  class_names: tuple[str, ...]
  step: int
  posthoc_bias: np.ndarray | None = None

  @property
  def multilabel(self) -> bool:
    """Whether the run is multi-label (``config.task``): sigmoid probabilities per finding."""
    return self.config.task == 'multilabel'

  @classmethod
  def from_workdir(cls, workdir: str, *, checkpoint: str | int = 'best') -> 'Predictor':
    """The predictor of a run's checkpoint: 'best' (by validation MCA), 'latest' or a step.

    Raises:
      FileNotFoundError: the workdir holds no checkpoint.
      ValueError: no such checkpoint; or the run adjusts its predictions
        post hoc but was saved without its training class counts (0.1).
    """
    run = trained_run.load_run(workdir, which=checkpoint)
    bias = None
    if run.config.loss.posthoc_tau:
      if run.train_class_counts is None:
        raise ValueError(
          f'{workdir} was trained with loss.posthoc_tau = {run.config.loss.posthoc_tau} but '
          'its checkpoints do not record the training class counts the adjustment needs '
          '(runs of care-jax 0.1): train it again to predict with it.'
        )
      priors = imbalance.class_priors(np.asarray(run.train_class_counts))
      bias = (run.config.loss.posthoc_tau * np.log(priors)).astype(np.float32)
    return cls(run.config, run.model, run.variables, run.class_names, run.step, bias)

  def predict(
    self, images: np.ndarray, *, attention: bool = False
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(probabilities [N, K], predictions [N], maps [N, h, w] or None)`` of
    preprocessed images [N, S, S, C] (e.g. from `care_jax.data.file_input.file_batches`)."""
    bias = None if self.posthoc_bias is None else jnp.asarray(self.posthoc_bias)
    probabilities, predictions, maps = _predict(
      self.model,
      self.variables,
      jnp.asarray(images, jnp.float32),
      bias,
      method=self.config.care.attention,
      with_maps=attention,
      multilabel=self.multilabel,
    )
    return (
      np.asarray(probabilities),
      np.asarray(predictions),
      None if maps is None else np.asarray(maps),
    )

  def predict_files(
    self,
    paths: Sequence[str],
    *,
    batch_size: int = 64,
    attention: bool = False,
    keep_images: bool = False,
    skip_unreadable: bool = False,
  ) -> Predictions:
    """Reads, preprocesses and scores image files (PNG or JPEG, greyscale or RGB).

    Args:
      paths: the files.
      batch_size: images per jitted call.
      attention: also compute the attention maps of the predicted classes.
      keep_images: also return the preprocessed images (e.g. to draw them).
      skip_unreadable: leave out unreadable files instead of raising.

    Raises:
      ValueError: no paths, or an unreadable file (named) unless skipped.
    """
    from care_jax.data import file_input  # pylint: disable=g-import-not-at-top  # TensorFlow

    if not paths:
      raise ValueError('no images to predict: the list of files is empty.')
    parts = {'index': [], 'probabilities': [], 'predictions': [], 'maps': [], 'images': []}
    for batch in file_input.file_batches(
      self.config.data, paths, batch_size=batch_size, skip_unreadable=skip_unreadable
    ):
      probabilities, predictions, maps = self.predict(batch['image'], attention=attention)
      parts['index'].append(batch['index'])
      parts['probabilities'].append(probabilities)
      parts['predictions'].append(predictions)
      parts['maps'].append(maps)
      parts['images'].append(batch['image'])
    if not parts['index']:
      raise ValueError(f'none of the {len(paths)} images could be read.')
    return Predictions(
      index=np.concatenate(parts['index']),
      probabilities=np.concatenate(parts['probabilities']),
      predictions=np.concatenate(parts['predictions']).astype(np.int64),
      maps=np.concatenate(parts['maps']) if attention else None,
      images=np.concatenate(parts['images']) if keep_images else None,
    )


EXPORT_MODEL = 'model.stablehlo'
EXPORT_META = 'model.json'


def export(
  predictor: Predictor, directory: str, *, platforms: Sequence[str] = ('cpu', 'cuda', 'tpu')
) -> dict[str, Any]:
  """Writes a `jax.export` artifact of ``predictor``: preprocessed images -> probabilities.

  ``directory/model.stablehlo`` holds the serialized function (StableHLO
  with the weights inside; the batch size is symbolic), ``model.json`` what
  it needs: class names, input shape, ``mean``/``std`` and how the images
  were preprocessed. Loading it needs only jax (README, "Export")::

    exported = jax.export.deserialize(open('model.stablehlo', 'rb').read())
    probabilities = exported.call(images)  # float32 [N, S, S, C] -> [N, K]

  Args:
    predictor: the checkpoint to export (`Predictor.from_workdir`).
    directory: created if needed; local or any URL `etils.epath` opens (``gs://``).
    platforms: the backends the artifact runs on.

  Returns:
    The metadata written to ``model.json``.
  """
  data = predictor.config.data
  size = data.image_size
  bias = None if predictor.posthoc_bias is None else jnp.asarray(predictor.posthoc_bias)

  def probabilities(images):
    logits, _ = predictor.model.apply(predictor.variables, images, train=False)
    scores = logits if bias is None else logits - bias
    return probabilities_of(scores, multilabel=predictor.multilabel)

  (batch,) = jax.export.symbolic_shape('batch')
  exported = jax.export.export(jax.jit(probabilities), platforms=tuple(platforms))(
    jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  )
  meta = {
    'class_names': list(predictor.class_names),
    'input_shape': ['batch', size, size, 3],
    'mean': list(np.broadcast_to(np.asarray(data.mean, np.float64), (3,))),
    'std': list(np.broadcast_to(np.asarray(data.std, np.float64), (3,))),
    'preprocessing': (
      'RGB uint8 pixels x, resized to image_size x image_size (bilinear, antialiased), '
      '(x / 255 - mean) / std per channel'
    ),
    'image_size': size,
    'step': predictor.step,
    'platforms': list(exported.platforms),
    'output': (
      'finding probabilities (one sigmoid each) [batch, len(class_names)]'
      if predictor.multilabel
      else 'class probabilities [batch, len(class_names)]'
    ),
  }
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / EXPORT_MODEL).write_bytes(exported.serialize())
  (directory / EXPORT_META).write_text(json.dumps(meta, indent=2))
  return meta
