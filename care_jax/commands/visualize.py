"""Figures of trained runs: attention maps with the lesion box, "without CARE |
with CARE" side by side, confusion matrix, training curves, per-class recall.

    python -m care_jax.visualize --workdir=runs/care [--compare=runs/baseline] \\
        [--num-images=8] [--split=test] [--checkpoint=latest] [--out_dir=DIR]

(also `care-jax visualize ...`). Writes PNGs to `WORKDIR/figures` (or
`--out_dir`) and prints their paths:

* ``attention_<split>.png``: one row per image, columns "image | --compare's
  map | --workdir's map" (the paper's "without CARE | with CARE" figure when
  --compare is the baseline), each map the Grad-CAM/CAM of the true class,
  min-max normalised, overlaid in the 'jet' colour map with the lesion box
  outlined in magenta. Columns are labelled from each run's ``care.alpha``
  ("without CARE (alpha=0)", "with CARE (alpha=0.5)"); each panel gives the
  run's prediction and the share of the map's mass inside the box.
* ``confusion_<split>.png``, ``recall_<split>.png``, ``reliability_<split>.png``
  (accuracy against confidence, with each run's ECE): from each run's
  ``metrics.json``.
* ``training_curves.png``: loss, CE, CARE loss and accuracy from each run's
  ``train_log.jsonl``.

Images: ``--num-images`` of the split, rare-class images with a lesion box
first (class by class in turn), then other boxed images, then the rest;
always the same ones for the same data.

The figures themselves are in `care_jax.figures` (arrays and matplotlib
figures, no files; its names are also available here, e.g.
``visualize.overlay``); this module reads the runs and writes the files.
"""

from collections.abc import Mapping
import json

from absl import app
from absl import flags
from absl import logging
from etils import epath
from matplotlib.figure import Figure
import ml_collections
import numpy as np

from care_jax import checkpoint
from care_jax import config as config_lib
from care_jax import figures
from care_jax.commands import _app
from care_jax.data import examples as examples_lib
from care_jax.data import pipeline

# The figures' names, as this module had them before they moved to
# care_jax.figures (0.2).
AttentionColumn = figures.AttentionColumn
attention_figure = figures.attention_figure
box_outline = figures.box_outline
compute_attention = figures.compute_attention
confusion_figure = figures.confusion_figure
denormalize = figures.denormalize
overlay = figures.overlay
overlay_strip = figures.overlay_strip
recall_figure = figures.recall_figure
reliability_figure = figures.reliability_figure
select_examples = examples_lib.select_examples
training_curves_figure = figures.training_curves_figure
BOX_COLOR = figures.BOX_COLOR
CMAP = figures.CMAP


# Runs --------------------------------------------------------------------------


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
  loaded = {run: checkpoint.load_model(run, which=which) for run in runs}
  multilabel = [run for run in runs if loaded[run][0].task == 'multilabel']
  if multilabel:
    raise ValueError(
      f'{multilabel[0]} is a multi-label run: care-jax visualize draws single-label runs (one'
      ' class and its map per image); its per-finding metrics are in its metrics.json.'
    )
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
  info = pipeline.get_dataset_info(data_config)
  examples = examples_lib.select_examples(
    data_config, split, num_images=num_images, rare_classes=info.rare_classes
  )
  images = figures.denormalize(examples['image'], mean=data_config.mean, std=data_config.std)
  columns = []
  for run in runs:
    config, model, variables = loaded[run]
    # Each model sees the images normalised as it was trained.
    normalised = (images / 255.0 - np.asarray(config.data.mean)) / np.asarray(config.data.std)
    maps, predictions = figures.compute_attention(
      model,
      variables,
      normalised.astype(np.float32),
      examples['label'],
      method=config.care.attention,
    )
    columns.append(figures.AttentionColumn(titles[run], maps, predictions))
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
  if len(results) == len(runs):
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

  logs = {}
  for run in runs:
    path = epath.Path(run) / 'train_log.jsonl'
    if path.exists():
      logs[titles[run]] = read_train_log(path)
    else:
      logging.warning('%s does not exist: no training curves.', path)
  if len(logs) == len(runs):
    save(figures.training_curves_figure(logs), 'training_curves.png')
  return written


FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when this module runs as the program: importing it (tests,
  # notebooks) adds no flags that could clash with other entry points.
  flags.DEFINE_string(
    'workdir', None, 'The run to draw; with --compare, the run WITH CARE.', required=True
  )
  flags.DEFINE_string(
    'compare',
    None,
    'A second run drawn beside --workdir (first column, first bar), e.g. '
    "the baseline WITHOUT CARE. Columns are labelled from each run's care.alpha.",
  )
  flags.DEFINE_integer('num_images', 8, 'Images (rows) of the attention figure.')
  flags.DEFINE_alias('num-images', 'num_images')
  flags.DEFINE_string('split', 'test', 'Split whose images and metrics are drawn.')
  flags.DEFINE_enum(
    'checkpoint',
    'latest',
    ['latest', 'best'],
    "Checkpoint whose maps are drawn: 'latest' (the model metrics.json scores) or 'best' "
    '(by validation MCA).',
  )
  flags.DEFINE_string('out_dir', None, 'Output directory (default WORKDIR/figures).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for path in write_figures(
    FLAGS.workdir,
    compare=FLAGS.compare,
    num_images=FLAGS.num_images,
    split=FLAGS.split,
    which=FLAGS.checkpoint,
    out_dir=FLAGS.out_dir,
  ):
    print(path)


def run():
  _define_flags()
  _app.run(main)


if __name__ == '__main__':
  run()
