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
import csv
import dataclasses
import functools
import json
import pathlib
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from care_jax import figures
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
    features, head_inputs = intermediates['features'], intermediates.get('head_inputs')
    maps = model.attention_maps(
      variables, features, predictions, method=method, head_inputs=head_inputs
    )
  return probabilities_of(scores, multilabel=multilabel), predictions, maps


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A checkpoint of a trained run, ready to score images.

  Attributes:
    config: the run's config (``data`` gives the preprocessing).
    model: the float32 classifier.
    variables: its ``{'params', 'batch_stats'}``, placed on the default device
      once (given as numpy arrays, e.g. `care_jax.trained_run.TrainedRun.variables`).
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

  def __post_init__(self):
    # On the device once: numpy weights would be sent again with every batch.
    object.__setattr__(self, 'variables', jax.device_put(self.variables))

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

    Every batch is padded to one shape (``min(batch_size, len(paths))``
    images; the padding is dropped), so the model compiles once, also for the
    last batch and the shorter batches of ``skip_unreadable``.

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
    shape = min(batch_size, len(paths))
    for batch in file_input.file_batches(
      self.config.data, paths, batch_size=batch_size, skip_unreadable=skip_unreadable
    ):
      count = len(batch['image'])
      padding = [(0, shape - count)] + [(0, 0)] * (batch['image'].ndim - 1)
      outputs = self.predict(np.pad(batch['image'], padding), attention=attention)
      probabilities, predictions, maps = (None if x is None else x[:count] for x in outputs)
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


# The image files a folder given to `list_images` may hold (any case).
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
EXPORT_MODEL = 'model.stablehlo'
EXPORT_META = 'model.json'
# The platforms an artifact may be lowered for (`jax.export`'s names, as
# `jax.lax.platform_dependent` matches them).
EXPORT_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def _export_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  """``platforms`` as a tuple, or ValueError naming the one not in `EXPORT_PLATFORMS`."""
  platforms = tuple(platforms)
  for platform in platforms or ('',):
    if platform not in EXPORT_PLATFORMS:
      raise ValueError(
        f'platforms = {list(platforms)}: {platform!r} is not a platform to export for; '
        f"use one or more of {', '.join(EXPORT_PLATFORMS)} (an NVIDIA GPU is 'cuda')."
      )
  return platforms


def export(
  predictor: Predictor, directory: str, *, platforms: Sequence[str] = ('cpu', 'cuda', 'tpu')
) -> dict[str, Any]:
  """Writes a `jax.export` artifact of ``predictor``: preprocessed images -> probabilities.

  ``directory/model.stablehlo`` holds the serialized function (StableHLO
  with the weights inside; the batch size is symbolic), ``model.json`` what
  it needs: class names, input shape, ``mean``/``std`` and how the images
  were preprocessed. Loading it needs only jax (docs/inference.md, "Export")::

    exported = jax.export.deserialize(open('model.stablehlo', 'rb').read())
    probabilities = exported.call(images)  # float32 [N, S, S, C] -> [N, K]

  Whatever host exports it, each platform's module has that platform's forms
  (`jax.lax.platform_dependent` in `care_jax.models.convolution` and
  `care_jax.models.pooling`): the patch convolutions and slice max pool
  for 'cpu', lax's convolutions and Flax's max pool for the accelerators;
  the choice is made when the artifact is compiled on its platform.

  Args:
    predictor: the checkpoint to export (`Predictor.from_workdir`).
    directory: created if needed; local or any URL `etils.epath` opens (``gs://``).
    platforms: the platforms the artifact runs on, of `EXPORT_PLATFORMS`
      (an NVIDIA GPU is 'cuda').

  Returns:
    The metadata written to ``model.json``.

  Raises:
    ValueError: a platform that is not one of `EXPORT_PLATFORMS`.
  """
  platforms = _export_platforms(platforms)
  data = predictor.config.data
  size = data.image_size
  bias = None if predictor.posthoc_bias is None else jnp.asarray(predictor.posthoc_bias)

  def probabilities(images):
    logits, _ = predictor.model.apply(predictor.variables, images, train=False)
    scores = logits if bias is None else logits - bias
    return probabilities_of(scores, multilabel=predictor.multilabel)

  (batch,) = jax.export.symbolic_shape('batch')
  exported = jax.export.export(jax.jit(probabilities), platforms=platforms)(
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
  (directory / EXPORT_META).write_text(json.dumps(meta, indent=2, allow_nan=False))
  return meta


def list_images(path: str) -> tuple[list[str], list[str]]:
  """``(names, files)`` of the images of a folder (recursive) or of a CSV's image column.

  Names are what the output CSV shows: the path relative to the folder, or
  the CSV's value; files are the paths to read.

  Raises:
    ValueError: the path does not exist, the folder holds no image, or the
      CSV has no ``image`` column or no rows.
  """
  root = pathlib.Path(path)
  if root.is_dir():
    files = sorted(p for p in root.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise ValueError(
        f'{path} holds no image ({", ".join(IMAGE_SUFFIXES)}, searched '
        'recursively): pass a folder of images or a CSV with an image column.'
      )
    return [p.relative_to(root).as_posix() for p in files], [str(p) for p in files]
  if not root.is_file():
    raise ValueError(f'--input={path} does not exist: pass a folder of images or a CSV.')
  with open(root, newline='') as f:
    reader = csv.DictReader(f)
    if 'image' not in (reader.fieldnames or ()):
      raise ValueError(
        f'{path}: no image column (columns: {reader.fieldnames}); the CSV needs '
        'one, with paths relative to the CSV.'
      )
    names = [row['image'] for row in reader]
  if not names:
    raise ValueError(f'{path} has a header but no rows.')
  return names, [str(root.parent / name) for name in names]


def write_predictions(
  path: epath.PathLike, names, result: Predictions, class_names, *, multilabel: bool = False
) -> None:
  """``image,prediction,p_<class>...``, one row per image read, in the input's order.

  Multi-label runs: ``prediction`` lists the findings at probability >= 0.5,
  joined by ``|`` (`predicted_classes`).

  `path` may be local or any URL `etils.epath` opens (``gs://``).
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # csv's own '\r\n' line ends, untranslated on POSIX (epath opens files without newline=).
  with path.open('w') as f:
    writer = csv.writer(f)
    writer.writerow(['image', 'prediction', *(f'p_{name}' for name in class_names)])
    for position, probabilities in zip(result.index, result.probabilities):
      prediction = predicted_classes(probabilities, class_names, multilabel=multilabel)
      writer.writerow([names[position], prediction, *(f'{p:.6g}' for p in probabilities)])


def write_overlays(
  directory: epath.PathLike, names, result: Predictions, data_config, class_names=None
) -> None:
  """The attention map of the predicted class over each image, as a PNG below `directory`.

  An image ``sub/x.png`` gives ``sub/x_<predicted class>.png`` with `class_names` (``sub/x.png``
  without), at the model's input size.
  """
  pixels = figures.denormalize(result.images, mean=data_config.mean, std=data_config.std)
  for position, image, attention_map, predicted in zip(
    result.index, pixels, result.maps, result.predictions
  ):
    stem = names[position]
    if stem.lower().endswith(IMAGE_SUFFIXES):
      stem = stem.rsplit('.', 1)[0]
    suffix = '' if class_names is None else f'_{class_names[predicted]}'
    target = epath.Path(directory) / f'{stem}{suffix}.png'
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open('wb') as f:
      Image.fromarray(figures.overlay(image, attention_map)).save(f, format='PNG')


def predict(
  workdir: str,
  input_path: str,
  output: str,
  *,
  checkpoint: str = 'best',
  batch_size: int = 64,
  attention_dir: str | None = None,
  skip_unreadable: bool = False,
) -> Predictions:
  """Writes the predictions of a run's checkpoint on the images of ``input_path``.

  Args:
    workdir: the trained run.
    input_path: a folder of images (searched recursively) or a CSV with an ``image`` column
      (:func:`list_images`).
    output: the CSV to write (:func:`write_predictions`).
    checkpoint: 'best', 'latest' or a step of the run.
    batch_size: images per jitted call.
    attention_dir: also write each image's attention overlay below this folder
      (:func:`write_overlays`).
    skip_unreadable: leave out unreadable images instead of raising.

  Returns:
    The predictions (``index`` holds the positions of the images read; the others were
    unreadable and skipped). Prints how many images were scored, by which step, and where the
    CSV went.
  """
  names, files = list_images(input_path)
  predictor = Predictor.from_workdir(workdir, checkpoint=checkpoint)
  result = predictor.predict_files(
    files,
    batch_size=batch_size,
    attention=attention_dir is not None,
    keep_images=attention_dir is not None,
    skip_unreadable=skip_unreadable,
  )
  write_predictions(output, names, result, predictor.class_names, multilabel=predictor.multilabel)
  if attention_dir is not None:
    write_overlays(attention_dir, names, result, predictor.config.data, predictor.class_names)
  skipped = len(files) - len(result.index)
  print(
    f'{len(result.index)} images scored by step {predictor.step} of {workdir}'
    + (f' ({skipped} unreadable skipped)' if skipped else '')
    + f'; wrote {output}'
  )
  return result
