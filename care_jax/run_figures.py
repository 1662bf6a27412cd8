"""Figures of trained runs: attention maps with the lesion box, "without CARE | with CARE" side
by side, confusion matrix, reliability, training curves, per-class recall.

:func:`write_figures` writes PNGs to ``WORKDIR/figures`` (or ``out_dir``) and returns their
paths (``care-jax visualize`` is its command):

* ``attention_<split>.png``: one row per image, columns "image | compare's map | workdir's
  map" (the paper's "without CARE | with CARE" figure when ``compare`` is the baseline), each
  map the Grad-CAM/CAM of the true class, min-max normalised, overlaid in the 'jet' colour map
  with the lesion box outlined in magenta. Columns are labelled from each run's ``care.alpha``
  ("without CARE (alpha=0)", "with CARE (alpha=0.5)"); each panel gives the run's prediction
  and the share of the map's mass inside the box.
* ``confusion_<split>.png``, ``recall_<split>.png``, ``reliability_<split>.png`` (accuracy
  against confidence, with each run's ECE): from each run's ``metrics.json``.
* ``training_curves.png``: loss, CE, CARE loss, the term of another guidance method
  (``guidance``) and accuracy from each run's ``train_log.jsonl`` (a panel where a run logged it).

Images: ``num_images`` of the split, rare-class images with a lesion box first (class by class
in turn), then other boxed images, then the rest; always the same ones for the same data
(`care_jax.data.examples.select_examples`). The figures themselves are in `care_jax.figures`
(arrays and matplotlib figures, no files); this module reads the runs and writes the files.
"""

from collections.abc import Callable, Mapping
import json

from absl import logging
from etils import epath
from matplotlib.figure import Figure
import ml_collections
import numpy as np

from care_jax import config as config_lib
from care_jax import figures
from care_jax import trained_run
from care_jax.data import examples as examples_lib
from care_jax.data import info as data_info


def read_train_log(path: epath.PathLike) -> list[dict[str, float]]:
  """The records of a ``train_log.jsonl`` (one JSON object per line)."""
  records = []
  with epath.Path(path).open() as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f'{path} line {number} is not JSON: {e}') from e
  return records


def run_title(config: ml_collections.ConfigDict) -> str:
  """'with CARE (alpha=0.5)' or 'without CARE (alpha=0)' from ``care.alpha``."""
  alpha = float(config.care.alpha)
  return f'{"with" if alpha > 0 else "without"} CARE (alpha={alpha:g})'


def _check_same_data(configs: Mapping[str, ml_collections.ConfigDict]) -> None:
  """Both runs must see the same images (normalisation may differ)."""
  (first, a), (second, b) = configs.items()
  differ = sorted(
    {
      key.split('.')[0]
      for key in config_lib.differences(
        config_lib.to_json(a.data), config_lib.to_json(b.data), ignore=('mean', 'std', 'dir')
      )
    }
  )
  if differ:
    raise ValueError(
      f'{first} and {second} were trained on different data (config.data keys '
      f'{differ} differ); compare runs of the same dataset.'
    )


def write_figures(
  workdir: str,
  *,
  compare: str | None = None,
  num_images: int = 8,
  split: str = 'test',
  which: str = 'latest',
  out_dir: str | None = None,
) -> list[str]:
  """Writes the figures of a run (beside a second run with ``compare``).

  Args:
    workdir: the run (its ``checkpoints/``, ``metrics.json``,
      ``train_log.jsonl``), e.g. trained with CARE.
    compare: optional second run, e.g. the baseline without CARE, drawn first
      (left column, first bar, first panel).
    num_images: images of the attention grid (`select_examples`).
    split: the split whose images and metrics are drawn.
    which: the checkpoint whose maps are drawn, 'latest' (the model that
      ``metrics.json`` scores) or 'best' (by validation MCA).
    out_dir: where to write; default ``workdir/figures``.

  Returns:
    The paths written. A missing ``metrics.json`` or ``train_log.jsonl``
    skips its figures with a warning.

  Raises:
    ValueError: a multi-label run (``config.task='multilabel'``): the
      figures draw one class per image (its metrics are in metrics.json).
  """
  runs = [compare, workdir] if compare else [workdir]
  loaded = _load_runs(runs, which)
  titles = {run: run_title(loaded[run][0]) for run in runs}
  if len(set(titles.values())) < len(runs):  # e.g. two CARE runs: tell them apart.
    titles = {run: f'{t}, {epath.Path(run).name}' for run, t in titles.items()}
  if compare:
    _check_same_data({run: loaded[run][0] for run in runs})
  out_dir = epath.Path(out_dir or epath.Path(workdir) / 'figures')
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []

  def save(fig: Figure, name: str) -> None:
    path = out_dir / name
    with path.open('wb') as f:  # matplotlib would write a gs:// name locally
      fig.savefig(f, format='png', dpi=100)
    written.append(str(path))

  data_config = loaded[workdir][0].data
  info = data_info.get_dataset_info(data_config)
  examples = examples_lib.select_examples(
    data_config, split, num_images=num_images, rare_classes=info.rare_classes
  )
  images = figures.denormalize(examples['image'], mean=data_config.mean, std=data_config.std)
  columns = [
    _attention_column(*loaded[run], images, examples['label'], titles[run]) for run in runs
  ]
  save(
    figures.attention_figure(
      images,
      examples['label'],
      columns,
      class_names=info.class_names,
      masks=examples['lesion_mask'],
      rare_classes=info.rare_classes,
    ),
    f'attention_{split}.png',
  )
  _save_metric_figures(runs, titles, split, info, save)
  _save_training_curves(runs, titles, save)
  return written


def _load_runs(runs: list[str], which: str) -> dict[str, tuple]:
  """run -> (config, model, variables) of its checkpoint ``which``; refuses multi-label runs."""
  loaded = {run: trained_run.load_model(run, which=which) for run in runs}
  multilabel = [run for run in runs if loaded[run][0].task == 'multilabel']
  if multilabel:
    raise ValueError(
      f'{multilabel[0]} is a multi-label run: care-jax visualize draws single-label runs (one'
      ' class and its map per image); its per-finding metrics are in its metrics.json.'
    )
  return loaded


def _attention_column(
  config: ml_collections.ConfigDict,
  model,
  variables,
  images: np.ndarray,
  labels: np.ndarray,
  title: str,
) -> figures.AttentionColumn:
  """The maps and predictions of one run on the (denormalised, 0..255) images."""
  # Each model sees the images normalised as it was trained.
  normalised = (images / 255.0 - np.asarray(config.data.mean)) / np.asarray(config.data.std)
  maps, predictions = figures.compute_attention(
    model, variables, normalised.astype(np.float32), labels, method=config.care.attention
  )
  return figures.AttentionColumn(title, maps, predictions)


def _save_metric_figures(
  runs: list[str], titles: dict[str, str], split: str, info, save: Callable[[Figure, str], None]
) -> None:
  """The confusion, recall and reliability figures, when every run has its metrics.json."""
  results = {}
  for run in runs:
    path = epath.Path(run) / 'metrics.json'
    if not path.exists():
      logging.warning('%s does not exist: no confusion matrix or recall figure.', path)
      continue
    result = json.loads(path.read_text())
    if split not in result:
      raise ValueError(f'{path} has no {split!r} metrics (it has {sorted(result)}).')
    results[titles[run]] = result[split]
  if len(results) < len(runs):
    return
  save(
    figures.confusion_figure(
      {t: r['confusion'] for t, r in results.items()}, class_names=info.class_names
    ),
    f'confusion_{split}.png',
  )
  save(
    figures.recall_figure(
      {t: r['recall'] for t, r in results.items()},
      class_names=info.class_names,
      rare_classes=info.rare_classes,
    ),
    f'recall_{split}.png',
  )
  calibrations = {
    t: {**r['calibration'], 'ece': r.get('ece')} for t, r in results.items() if 'calibration' in r
  }
  if len(calibrations) == len(runs):  # Runs of 0.1 have no calibration bins.
    save(figures.reliability_figure(calibrations), f'reliability_{split}.png')


def _save_training_curves(
  runs: list[str], titles: dict[str, str], save: Callable[[Figure, str], None]
) -> None:
  """The training curves, when every run has its train_log.jsonl."""
  logs = {}
  for run in runs:
    path = epath.Path(run) / 'train_log.jsonl'
    if path.exists():
      logs[titles[run]] = read_train_log(path)
    else:
      logging.warning('%s does not exist: no training curves.', path)
  if len(logs) == len(runs):
    save(figures.training_curves_figure(logs), 'training_curves.png')
