"""Figures of attention maps and metrics: arrays and matplotlib figures, no files.

* `overlay` / `overlay_strip`: an attention map blended over its image, with
  the lesion box outlined (uint8 arrays, e.g. for TensorBoard).
* `compute_attention`: a model's true-class maps and predictions on images.
* `attention_figure` ("image | without CARE | with CARE"), `confusion_figure`,
  `training_curves_figure`, `recall_figure`: `matplotlib.figure.Figure`
  objects built without pyplot (no display, no global state):
  ``fig.savefig(path)`` writes them, and in a notebook ``display(fig)`` shows
  them.

``care-jax visualize`` (`care_jax.visualize`) draws them for trained runs.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
from matplotlib import cm
from matplotlib import colors
from matplotlib.figure import Figure
import numpy as np
from scipy import ndimage

from care_jax import attention
from care_jax import metrics as metrics_lib
from care_jax import models

BOX_COLOR = (255, 0, 255)  # Magenta: absent from 'jet', skin and grey X-rays.
CMAP = 'jet'
# 'guidance': the unweighted term of a method other than CARE (`care_jax.training.step`).
_CURVE_KEYS = ('loss', 'ce', 'care', 'guidance', 'accuracy')


# Arrays ------------------------------------------------------------------------


def denormalize(
  images: jax.typing.ArrayLike, *, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
  """Pipeline images ``(x / 255 - mean) / std`` back to uint8 pixels ``x``.

  Args:
    images: float [..., C] normalised images.
    mean: the run's ``config.data.mean`` (one value, or one per channel).
    std: the run's ``config.data.std`` (one value, or one per channel).

  Examples:
    >>> denormalize(np.zeros((1, 1, 3)), mean=(0.5,), std=(0.5,))
    array([[[128, 128, 128]]], dtype=uint8)
  """
  pixels = (np.asarray(images, np.float64) * np.asarray(std) + np.asarray(mean)) * 255.0
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def box_outline(mask: np.ndarray, *, width: int = 1) -> np.ndarray:
  """The inner border, ``width`` pixels thick, of the region ``mask > 0.5``.

  Any union of boxes keeps its exact shape; the image border counts as
  outside, so a box touching it is outlined there too.

  Examples:
    >>> box_outline(np.pad(np.ones((3, 3)), 1)).astype(int)[1:4, 1:4]
    array([[1, 1, 1],
           [1, 0, 1],
           [1, 1, 1]])
  """
  if width < 1:
    raise ValueError(f'width must be >= 1, got {width}.')
  inside = np.asarray(mask) > 0.5
  return inside & ~ndimage.binary_erosion(inside, iterations=width, border_value=0)


def _line_width(height: int, width: int) -> int:
  # About 1/64 of the image: visible when the image is drawn ~200 px wide.
  return max(1, round(min(height, width) / 64))


def overlay(
  image: np.ndarray,
  attention_map: jax.typing.ArrayLike,
  mask: np.ndarray | None = None,
  *,
  alpha: float = 0.5,
  cmap: str = CMAP,
  box_color: Sequence[int] = BOX_COLOR,
  line_width: int | None = None,
) -> np.ndarray:
  """An attention map blended over its image, with the lesion box outlined.

  The map is min-max normalised, bilinearly upsampled (half-pixel centres, as
  the CARE loss and the attention metrics see it) to the image size, coloured
  with ``cmap`` and blended: ``(1 - alpha) image + alpha cmap(map)``. Then the
  border of ``mask`` (`box_outline`) is painted ``box_color``.

  Args:
    image: uint8 [H, W], [H, W, 1] or [H, W, 3] pixels (e.g. `denormalize`).
    attention_map: [h, w] map, ``h <= H``, ``w <= W``.
    mask: optional [H, W] lesion mask (e.g. ``lesion_mask`` of an eval batch).
    alpha: opacity of the map.
    cmap: a matplotlib colour map name.
    box_color: RGB of the outline.
    line_width: outline thickness in image pixels (default ~ H / 64).

  Returns:
    uint8 [H, W, 3].
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or not (
    image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3))
  ):
    raise ValueError(
      f'image must be uint8 [H, W], [H, W, 1] or [H, W, 3], got {image.dtype} {image.shape}.'
    )
  rgb = np.broadcast_to(image.reshape(*image.shape[:2], -1), (*image.shape[:2], 3))
  height, width = rgb.shape[:2]
  attention_map = jnp.asarray(attention_map)
  if attention_map.ndim != 2:
    raise ValueError(f'attention_map must be [h, w], got shape {attention_map.shape}.')
  normalised = attention.minmax_normalize(attention_map[None])
  upsampled = np.asarray(jax.image.resize(normalised, (1, height, width), 'bilinear'))[0]
  heat = matplotlib.colormaps[cmap](np.clip(upsampled, 0.0, 1.0))[..., :3] * 255.0
  out = np.round((1.0 - alpha) * rgb + alpha * heat).astype(np.uint8)
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != (height, width):
      raise ValueError(f'mask must have the image size {(height, width)}, got {mask.shape}.')
    out[box_outline(mask, width=line_width or _line_width(height, width))] = box_color
  return out


def overlay_strip(
  images: np.ndarray,
  maps: jax.typing.ArrayLike,
  masks: np.ndarray | None = None,
  *,
  gap: int = 2,
  **overlay_kwargs: Any,
) -> np.ndarray:
  """`overlay` of each image, side by side with white gaps: one uint8 image.

  For TensorBoard (`care_jax.training.summary.SummaryWriter.image`) at each evaluation.

  Args:
    images: uint8 [N, H, W, C].
    maps: [N, h, w].
    masks: optional [N, H, W].
    gap: white pixels between the panels.
    **overlay_kwargs: passed to `overlay`.

  Returns:
    uint8 [H, N * W + (N - 1) * gap, 3].
  """
  panels = [
    overlay(images[i], maps[i], None if masks is None else masks[i], **overlay_kwargs)
    for i in range(len(images))
  ]
  spacer = np.full((panels[0].shape[0], gap, 3), 255, np.uint8)
  return np.concatenate([x for p in panels for x in (p, spacer)][:-1], axis=1)


@functools.partial(jax.jit, static_argnames=('model', 'method'))
def _attention_and_logits(model, variables, images, labels, method):
  logits, intermediates = model.apply(variables, images, train=False)
  features, head_inputs = intermediates['features'], intermediates.get('head_inputs')
  maps = model.attention_maps(variables, features, labels, method=method, head_inputs=head_inputs)
  return maps, logits


def compute_attention(
  model: models.Classifier,
  variables: Mapping[str, Any],
  images: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  *,
  method: str = 'auto',
) -> tuple[np.ndarray, np.ndarray]:
  """Attention maps of the true classes and the predictions of a model.

  Args:
    model: the classifier (e.g. from `care_jax.trained_run.load_model`).
    variables: its ``{'params', 'batch_stats'}``.
    images: float [B, S, S, C], normalised as the run's pipeline does.
    labels: int [B] true classes: whose maps are drawn.
    method: 'auto', 'cam' or 'grad_cam' (the run's ``config.care.attention``).

  Returns:
    ``(maps, predictions)``: float32 [B, h, w] min-max normalised maps and
    int [B] predicted classes.
  """
  maps, logits = _attention_and_logits(
    model, variables, jnp.asarray(images), jnp.asarray(labels, jnp.int32), method
  )
  return np.asarray(maps), np.asarray(jnp.argmax(logits, axis=-1))


# Figures -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttentionColumn:
  """One model's column of `attention_figure`.

  Attributes:
    title: column header, e.g. "with CARE (alpha=0.5)".
    maps: [N, h, w] attention maps.
    predictions: optional int [N] predicted classes.
  """

  title: str
  maps: np.ndarray
  predictions: np.ndarray | None = None


def attention_figure(
  images: np.ndarray,
  labels: Sequence[int],
  columns: Sequence[AttentionColumn],
  *,
  class_names: Sequence[str],
  masks: np.ndarray | None = None,
  rare_classes: Sequence[int] = (),
  panel_inches: float = 2.0,
) -> Figure:
  """The grid "image | column 1 | column 2 | ...", one row per image.

  Each map panel is an `overlay` with the lesion box outlined, titled with the
  prediction (when given) and, with masks, the share of the map's mass inside
  the box (`care_jax.metrics.attention_mass_inside`).

  Args:
    images: uint8 [N, H, W, C] (e.g. `denormalize`).
    labels: [N] true classes.
    columns: the maps to compare, e.g. without CARE, then with CARE.
    class_names: names in label order.
    masks: optional [N, H, W] lesion masks.
    rare_classes: class indices marked "(rare)".
    panel_inches: side of each panel.
  """
  num_rows, num_cols = len(images), 1 + len(columns)
  fig = Figure(
    figsize=(panel_inches * num_cols + 0.8, panel_inches * num_rows + 0.4), layout='constrained'
  )
  axes = fig.subplots(num_rows, num_cols, squeeze=False)
  if masks is not None:
    mass = [np.asarray(metrics_lib.attention_mass_inside(c.maps, masks)) for c in columns]
  for row in range(num_rows):
    label = int(labels[row])
    name = class_names[label] + (' (rare)' if label in rare_classes else '')
    axes[row, 0].imshow(images[row].squeeze(), cmap='gray', vmin=0, vmax=255)
    axes[row, 0].set_title(('image\n' if row == 0 else '') + name, fontsize=9)
    for col, column in enumerate(columns):
      mask = None if masks is None else masks[row]
      axes[row, col + 1].imshow(overlay(images[row], column.maps[row], mask))
      facts = []
      if column.predictions is not None:
        facts.append(f'pred {class_names[int(column.predictions[row])]}')
      if mask is not None and mask.any():
        facts.append(f'{mass[col][row]:.0%} in box')
      header = column.title + '\n' if row == 0 else ''
      axes[row, col + 1].set_title(header + ', '.join(facts), fontsize=9)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(
    cm.ScalarMappable(colors.Normalize(0.0, 1.0), CMAP),
    ax=axes[:, 1:],
    shrink=min(1.0, 3.0 / num_rows),
    label='attention (min-max normalised)',
  )
  return fig


def confusion_figure(
  confusions: Mapping[str, Any], *, class_names: Sequence[str], panel_inches: float = 4.0
) -> Figure:
  """Confusion matrices (rows true, columns predicted), one panel per run.

  Cells are coloured by the row-normalised value (the class's recall on the
  diagonal) and annotated with counts.

  Args:
    confusions: {run title: [K, K] counts}.
    class_names: K names in label order.
  """
  num = len(confusions)
  fig = Figure(figsize=(panel_inches * num + 0.8, panel_inches), layout='constrained')
  axes = fig.subplots(1, num, squeeze=False)[0]
  ticks = np.arange(len(class_names))
  for ax, (title, confusion) in zip(axes, confusions.items()):
    confusion = np.asarray(confusion)
    if confusion.shape != (len(class_names),) * 2:
      raise ValueError(
        f'confusion of {title!r} must be [K, K] with K = {len(class_names)}, got {confusion.shape}.'
      )
    support = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
    image = ax.imshow(share, cmap='Blues', vmin=0.0, vmax=1.0)
    for i, j in np.ndindex(confusion.shape):
      ax.text(
        j,
        i,
        str(confusion[i, j]),
        ha='center',
        va='center',
        fontsize=8,
        color='white' if share[i, j] > 0.5 else 'black',
      )
    ax.set_xticks(ticks, class_names, rotation=45, ha='right')
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    ax.set_title(title, fontsize=10)
  fig.colorbar(image, ax=axes, label='share of the true class')
  return fig


def training_curves_figure(
  logs: Mapping[str, Sequence[Mapping[str, float]]], *, keys: Sequence[str] = _CURVE_KEYS
) -> Figure:
  """Training metrics against the step, one panel per metric, one line per run.

  Args:
    logs: {run title: records of ``train_log.jsonl`` (`read_train_log`)}.
    keys: the metrics to draw; those no run logged are left out.
  """
  keys = [k for k in keys if any(k in r for records in logs.values() for r in records)]
  if not keys:
    raise ValueError(f'the training logs hold none of the metrics {list(_CURVE_KEYS)}.')
  fig = Figure(figsize=(3.6 * len(keys), 3.0), layout='constrained')
  axes = fig.subplots(1, len(keys), squeeze=False)[0]
  for ax, key in zip(axes, keys):
    for i, (title, records) in enumerate(logs.items()):
      points = [(r['step'], r[key]) for r in records if key in r]
      if points:  # A fixed colour per run, also where another run is missing.
        ax.plot(*zip(*points), label=title, color=f'C{i}')
    ax.set_xlabel('step')
    ax.set_title(key)
    ax.grid(alpha=0.3)
  fig.legend(
    *axes[0].get_legend_handles_labels(),
    loc='outside upper center',
    ncols=len(logs),
    fontsize=9,
    frameon=False,
  )
  return fig


def recall_figure(
  recalls: Mapping[str, Mapping[str, float]],
  *,
  class_names: Sequence[str],
  rare_classes: Sequence[int] = (),
) -> Figure:
  """Per-class recall as grouped bars, one bar per run; rare classes marked.

  Args:
    recalls: {run title: {class name: recall}} (``metrics.json[split]['recall']``).
    class_names: names in label order.
    rare_classes: class indices marked "(rare)".
  """
  num = len(recalls)
  width = 0.8 / num
  fig = Figure(figsize=(1.0 + 1.1 * len(class_names), 3.4), layout='constrained')
  ax = fig.subplots()
  x = np.arange(len(class_names))
  for i, (title, recall) in enumerate(recalls.items()):
    values = [recall[name] for name in class_names]
    bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=title, color=f'C{i}')
    ax.bar_label(bars, fmt='%.2f', fontsize=7)
  ax.set_xticks(
    x, [n + ('\n(rare)' if k in rare_classes else '') for k, n in enumerate(class_names)]
  )
  ax.set_ylim(0.0, 1.1)
  ax.set_ylabel('recall')
  fig.legend(loc='outside upper center', ncols=num, fontsize=9, frameon=False)
  ax.grid(axis='y', alpha=0.3)
  return fig


def reliability_figure(calibrations: Mapping[str, Mapping[str, Any]]) -> Figure:
  """Reliability diagram: accuracy against confidence per bin, one line per run.

  Args:
    calibrations: {run title: the ``calibration`` bins of a metrics block
      (``metrics.json[split]['calibration']``: ``confidence``, ``accuracy``
      and ``count`` per bin) and optionally its ``ece``}.
  """
  fig = Figure(figsize=(4.2, 4.0), layout='constrained')
  ax = fig.subplots()
  ax.plot([0, 1], [0, 1], color='0.6', linestyle='--', linewidth=1, label='calibrated')
  for i, (title, bins) in enumerate(calibrations.items()):
    points = [(c, a) for c, a in zip(bins['confidence'], bins['accuracy']) if c is not None]
    if not points:
      continue
    label = title if bins.get('ece') is None else f'{title} (ECE {bins["ece"]:.3f})'
    ax.plot(*zip(*points), marker='o', color=f'C{i}', label=label)
  ax.set_xlim(0.0, 1.0)
  ax.set_ylim(0.0, 1.0)
  ax.set_xlabel('confidence (mean of the bin)')
  ax.set_ylabel('accuracy')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='upper left')
  return fig
