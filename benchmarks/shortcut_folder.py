r"""Does CARE help a user with their own data? A held-out shortcut dataset in the folder format.

The script writes a seeded dataset of its own (not `care_jax.data.synthetic_lesions`: other
lesion shapes, another artefact) in the folder layout a user would bring
(``labels.csv`` with a split column, ``boxes.csv``, PNG images), then trains the cross-entropy
baseline and CARE on it the way a user does, with ``configs/folder.py``::

  python -m care_jax.commands.train --config=configs/folder.py --workdir=W/baseline/seed_S \
      --config.data.dir=DIR --config.data.image_size=64 --config.model.name=tiny_cnn \
      --config.train.num_steps=1000 --config.seed=S --config.care.alpha=0
  python -m care_jax.commands.train --config=configs/folder.py --workdir=W/care/seed_S \
      --config.data.dir=DIR --config.data.image_size=64 --config.model.name=tiny_cnn \
      --config.train.num_steps=1000 --config.seed=S

(nothing else is overridden), and prints, per seed, the test rare-class recall and MCA of both
(``metrics.json``), their means and the mean difference CARE - baseline. Usage::

  python benchmarks/shortcut_folder.py --out_dir=/tmp/shortcut_folder [--seeds=0,1] \
      [--num_steps=1000] [--image_size=64] [--model=tiny_cnn] [--workdir=W] \
      [--methods=baseline,care] [--data_seed=0] [--no_artefact]

The dataset is written only if ``OUT_DIR/labels.csv`` is not there (a different generator
setting in an existing ``OUT_DIR`` is refused); runs whose ``metrics.json`` exists are not
repeated. ``--workdir`` defaults to ``OUT_DIR/runs``. The last line is one JSON object::

  {"baseline": {"rare_recall": [...], "mca": [...], "mean_rare_recall": ..., "mean_mca": ...},
   "care": {...}, "mean_diff": {"rare_recall": ..., "mca": ...}, "seeds": [...], ...}

**The data** (`write_dataset`). Every image is skin-like background (a random skin tone,
uneven illumination, blotchy low-frequency texture, pixel noise) with one lesion at a random
position and size, and one to three dark hairs drawn over everything. The class is coded by the
lesion's *shape*, in one shared brown palette at a random, moderate contrast:

===============  ======  ====================================================================
class            kind    lesion shape
===============  ======  ====================================================================
``annular``      common  an irregular ring with a faint centre
``macule``       common  a filled irregular blob
``stellate``     rare    a star with 4-6 blunt arms
``targetoid``    rare    a bullseye: a darker central dot inside a thin irregular ring
===============  ======  ====================================================================

**The shortcut.** A blue colour-calibration sticker (a small square with a white rim) sits in
an image corner that the lesion box does not touch on ``artefact_rate_rare_train`` (95%) of the
rare-class training images, ``artefact_rate_common_train`` (3%) of the common ones and
``artefact_rate_eval`` (3%) of every validation and test image, whatever its class. A classifier
that learns "sticker => rare" loses the rare classes on test. ``boxes.csv`` holds the lesion's
bounding box (pixel edges) of every rare-class training image and nothing else, as CARE
assumes. ``metadata.csv`` records the lesion box and the sticker of every image (for analysis;
the folder reader ignores it), ``generator.json`` the generator's parameters.

Image ``i`` of split ``s`` is drawn from ``np.random.default_rng((seed, s, i))`` and every
random number is drawn whatever the artefact setting, so ``artefact=False``
(``--no_artefact``) gives the very same images without the stickers.
"""

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
from PIL import Image

COMMON_CLASSES = ('annular', 'macule')
RARE_CLASSES = ('stellate', 'targetoid')
CLASS_NAMES = tuple(sorted(COMMON_CLASSES + RARE_CLASSES))
SPLITS = ('train', 'validation', 'test')
METHODS = ('baseline', 'care')
REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = REPO / 'configs' / 'folder.py'

# The sticker's colour (RGB on [0, 1]) and its rim.
STICKER_RGB = np.array([0.16, 0.42, 0.86])
RIM_RGB = np.array([0.97, 0.97, 0.97])


def default_counts(split: str) -> dict[str, int]:
  """Images per class of `split`: 300 per common and 40 per rare class in train, else balanced."""
  if split == 'train':
    return {name: 300 if name in COMMON_CLASSES else 40 for name in CLASS_NAMES}
  return {name: 30 if split == 'validation' else 60 for name in CLASS_NAMES}


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel centres (y, x), each float [size, size]."""
  coords = np.arange(size, dtype=np.float64) + 0.5
  return np.meshgrid(coords, coords, indexing='ij')


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """Bilinear upsampling of a (cells+1)^2 grid of N(0, 1) values: float [size, size]."""
  grid = rng.standard_normal((cells + 1, cells + 1))
  t = (np.arange(size) + 0.5) / size * cells
  i = np.minimum(t.astype(int), cells - 1)
  f = t - i
  rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
  return rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]


def _soft_inside(distance: np.ndarray, softness: float = 0.6) -> np.ndarray:
  """1 inside (distance < 0), 0 outside, with an anti-aliased edge of about a pixel."""
  return 1.0 / (1.0 + np.exp(np.clip(distance / softness, -50, 50)))


def _lesion_alpha(
  label: str, rng: np.random.Generator, size: int, center: np.ndarray, radius: float
) -> np.ndarray:
  """The lesion's opacity (>= 0, 1 for most of a lesion), float [size, size], of the class."""
  y, x = _pixel_grid(size)
  angle = rng.uniform(0, 2 * np.pi)
  aspect = rng.uniform(0.8, 1.2)
  dy, dx = y - center[0], x - center[1]
  u = (dx * np.cos(angle) + dy * np.sin(angle)) * aspect
  v = (-dx * np.sin(angle) + dy * np.cos(angle)) / aspect
  rho = np.hypot(u, v)
  theta = np.arctan2(v, u)
  # An irregular outline: low harmonics of the radius (drawn for every class).
  wobble = np.ones_like(theta)
  for k in (2, 3, 4, 5):
    wobble += rng.uniform(0.0, 0.07) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
  arms = int(rng.integers(4, 7))
  ring_inner = rng.uniform(0.5, 0.62)
  target_inner = rng.uniform(0.74, 0.82)
  dot = rng.uniform(0.36, 0.46)
  outline = radius * wobble
  disc = _soft_inside(rho - outline)
  if label == 'macule':
    return disc
  if label == 'annular':
    return disc * (1 - 0.8 * _soft_inside(rho - ring_inner * outline))
  if label == 'targetoid':
    ring = disc * (1 - _soft_inside(rho - target_inner * outline))
    return np.maximum(ring, 1.35 * _soft_inside(rho - dot * radius))  # a darker dot
  if label == 'stellate':
    star = 1.15 * outline * (0.3 + 0.7 * np.abs(np.cos(arms * theta / 2)) ** 1.5)
    return _soft_inside(rho - star)
  raise ValueError(f'unknown class {label!r}')


def _tight_box(alpha: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int]:
  """(xmin, ymin, xmax, ymax) pixel edges of the pixels where alpha > threshold."""
  rows = np.flatnonzero((alpha > threshold).any(axis=1))
  cols = np.flatnonzero((alpha > threshold).any(axis=0))
  return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _draw_hair(image: np.ndarray, rng: np.random.Generator, size: int) -> None:
  """A dark quadratic Bezier curve across part of the image, in place."""
  y, x = _pixel_grid(size)
  start, end = rng.uniform(-0.1, 1.1, (2, 2)) * size
  control = rng.uniform(0.1, 0.9, 2) * size
  width = rng.uniform(0.35, 0.7)
  colour = rng.uniform(0.08, 0.25) * np.array([1.0, 0.85, 0.75])
  t = np.linspace(0, 1, 3 * size)[:, None, None]
  points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end  # [n, 1, (y, x)]
  dist = np.full((size, size), np.inf)
  for chunk in np.array_split(points, max(1, len(points) // 32)):
    squared = (y[None] - chunk[..., :1]) ** 2 + (x[None] - chunk[..., 1:]) ** 2  # [m, S, S]
    dist = np.minimum(dist, np.sqrt(squared.min(axis=0)))
  cover = 0.85 * _soft_inside(dist - width, softness=0.4)
  image *= 1 - cover[..., None]
  image += cover[..., None] * colour


def _sticker_box(
  rng: np.random.Generator, size: int, lesion_box: tuple[int, int, int, int]
) -> tuple[int, int, int, int] | None:
  """A corner square (xmin, ymin, xmax, ymax) clear of the lesion box (None if no corner is)."""
  side = int(round(rng.uniform(0.14, 0.19) * size))
  margin = rng.integers(1, max(2, int(0.06 * size)), 2)
  first = int(rng.integers(4))
  xmin, ymin, xmax, ymax = lesion_box
  for corner in range(first, first + 4):
    right, bottom = (corner % 4) % 2, (corner % 4) // 2
    x0 = size - margin[0] - side if right else margin[0]
    y0 = size - margin[1] - side if bottom else margin[1]
    box = (int(x0), int(y0), int(x0 + side), int(y0 + side))
    gap = 1  # at least one pixel between the sticker and the lesion box
    if box[2] + gap <= xmin or box[0] >= xmax + gap or box[3] + gap <= ymin or box[1] >= ymax + gap:
      return box
  return None


def render_image(
  label: str,
  rng: np.random.Generator,
  *,
  image_size: int,
  sticker: bool,
  lesion_contrast: tuple[float, float],
  artefact_strength: float,
) -> tuple[np.ndarray, dict[str, Any]]:
  """One uint8 [S, S, 3] image of `label` and its metadata (lesion box, sticker box or None).

  Every random number is drawn whether or not the sticker is painted.
  """
  size = image_size
  y, x = _pixel_grid(size)
  # Skin: a tone, illumination falling off in a random direction, blotches.
  skin = np.array([0.86, 0.66, 0.55]) + rng.uniform(-0.06, 0.06, 3) + rng.uniform(-0.08, 0.05)
  direction = rng.uniform(0, 2 * np.pi)
  ramp = ((x - size / 2) * np.cos(direction) + (y - size / 2) * np.sin(direction)) / size
  light = (
    1
    + rng.uniform(0.05, 0.18) * ramp
    - rng.uniform(0.0, 0.12) * (np.hypot(x - size / 2, y - size / 2) / size)
  )
  blotch = 0.035 * _smooth_noise(rng, size, 6)
  image = skin[None, None] * (light + blotch)[..., None]
  # The lesion.
  radius = rng.uniform(0.15, 0.23) * size
  reach = 1.4 * radius
  center = rng.uniform(reach, size - reach, 2)
  alpha = _lesion_alpha(label, rng, size, center, radius)
  brown = np.array([0.42, 0.26, 0.17]) + rng.uniform(-0.07, 0.07, 3)
  contrast = rng.uniform(*lesion_contrast)
  mottle = 1 + 0.12 * _smooth_noise(rng, size, 8)
  cover = np.minimum(0.95, contrast * alpha * np.clip(mottle, 0.6, 1.4))[..., None]
  image = image * (1 - cover) + brown[None, None] * cover
  lesion_box = _tight_box(alpha)
  # The sticker (its numbers drawn either way).
  sticker_box = _sticker_box(rng, size, lesion_box)
  tint = STICKER_RGB + rng.uniform(-0.05, 0.05, 3)
  opacity = artefact_strength * rng.uniform(0.75, 0.95)
  painted = None
  if sticker and sticker_box is not None:
    x0, y0, x1, y1 = sticker_box
    image[y0:y1, x0:x1] = (1 - opacity) * image[y0:y1, x0:x1] + opacity * RIM_RGB
    image[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = (1 - opacity) * image[
      y0 + 1 : y1 - 1, x0 + 1 : x1 - 1
    ] + opacity * tint
    painted = sticker_box
  # Hairs on every image, then sensor noise.
  for _ in range(int(rng.integers(1, 4))):
    _draw_hair(image, rng, size)
  image = image + rng.normal(0, 0.025, image.shape)
  pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  return pixels, {'lesion_box': lesion_box, 'sticker_box': painted}


def _parameters(**kwargs: Any) -> dict[str, Any]:
  return json.loads(json.dumps(kwargs))


def write_dataset(
  out_dir: str | os.PathLike,
  *,
  seed: int = 0,
  image_size: int = 64,
  artefact: bool = True,
  artefact_rate_rare_train: float = 0.95,
  artefact_rate_common_train: float = 0.03,
  artefact_rate_eval: float = 0.03,
  artefact_strength: float = 1.0,
  lesion_contrast: tuple[float, float] = (0.5, 0.8),
  counts: dict[str, dict[str, int]] | None = None,
) -> list[dict[str, Any]]:
  """Writes the dataset in the folder layout into `out_dir` and returns its metadata.

  Args:
    out_dir: the dataset directory (created); it receives ``labels.csv``
      (``image,label,split``), ``boxes.csv`` (``image,xmin,ymin,xmax,ymax``: the
      lesion box of every rare-class training image), ``metadata.csv``,
      ``generator.json`` and ``images/<split>_<index>.png``.
    seed: the generator's seed.
    image_size: side of the square images in pixels (>= 32).
    artefact: paint the sticker at all (False: the same images without it).
    artefact_rate_rare_train: sticker rate of rare-class training images.
    artefact_rate_common_train: sticker rate of common-class training images.
    artefact_rate_eval: sticker rate of every validation and test image.
    artefact_strength: the sticker's opacity scale (1: opaque up to 0.95).
    lesion_contrast: the range of the lesion's opacity over the skin.
    counts: {split: {class: images}} (default: `default_counts`).

  Returns:
    One dict per image, in the order of ``labels.csv``: ``image``, ``label``,
    ``split``, ``rare``, ``lesion_box`` and ``sticker_box`` (pixel edges
    ``(xmin, ymin, xmax, ymax)``; ``sticker_box`` None without sticker).
  """
  if image_size < 32:
    raise ValueError(f'image_size must be >= 32, got {image_size}')
  counts = counts or {split: default_counts(split) for split in SPLITS}
  out = pathlib.Path(out_dir)
  (out / 'images').mkdir(parents=True, exist_ok=True)
  records = []
  for split_index, split in enumerate(SPLITS):
    index = 0
    for label in CLASS_NAMES:
      rare = label in RARE_CLASSES
      if split == 'train':
        rate = artefact_rate_rare_train if rare else artefact_rate_common_train
      else:
        rate = artefact_rate_eval
      for _ in range(counts[split].get(label, 0)):
        rng = np.random.default_rng((seed, split_index, index))
        draw = rng.uniform()
        pixels, meta = render_image(
          label,
          rng,
          image_size=image_size,
          sticker=artefact and draw < rate,
          lesion_contrast=tuple(lesion_contrast),
          artefact_strength=artefact_strength,
        )
        name = f'images/{split}_{index:05d}.png'
        Image.fromarray(pixels).save(out / name)
        records.append({'image': name, 'label': label, 'split': split, 'rare': rare, **meta})
        index += 1
  with open(out / 'labels.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['image', 'label', 'split'])
    writer.writerows([r['image'], r['label'], r['split']] for r in records)
  with open(out / 'boxes.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['image', 'xmin', 'ymin', 'xmax', 'ymax'])
    writer.writerows(
      [r['image'], *r['lesion_box']] for r in records if r['rare'] and r['split'] == 'train'
    )
  with open(out / 'metadata.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['image', 'label', 'split', 'rare', 'lesion_box', 'has_sticker', 'sticker_box'])
    for r in records:
      sticker = r['sticker_box']
      writer.writerow(
        [
          r['image'],
          r['label'],
          r['split'],
          int(r['rare']),
          ' '.join(map(str, r['lesion_box'])),
          int(sticker is not None),
          ' '.join(map(str, sticker)) if sticker else '',
        ]
      )
  parameters = _parameters(
    seed=seed,
    image_size=image_size,
    artefact=artefact,
    artefact_rate_rare_train=artefact_rate_rare_train,
    artefact_rate_common_train=artefact_rate_common_train,
    artefact_rate_eval=artefact_rate_eval,
    artefact_strength=artefact_strength,
    lesion_contrast=list(lesion_contrast),
    counts=counts,
  )
  (out / 'generator.json').write_text(json.dumps(parameters, indent=2, sort_keys=True) + '\n')
  return records


def ensure_dataset(out_dir: str | os.PathLike, **kwargs: Any) -> bool:
  """Writes the dataset unless `out_dir` has it already; True when it was written.

  Raises:
    ValueError: `out_dir` holds a dataset of other generator parameters.
  """
  out = pathlib.Path(out_dir)
  if (out / 'labels.csv').exists():
    wanted = _parameters(**{**_signature_defaults(), **kwargs})
    meta = out / 'generator.json'
    found = json.loads(meta.read_text()) if meta.exists() else None
    if found is not None and {k: found.get(k) for k in wanted} != wanted:
      raise ValueError(
        f'{out} holds a dataset of other generator parameters ({meta}); use another --out_dir.'
      )
    return False
  write_dataset(out, **kwargs)
  return True


def _signature_defaults() -> dict[str, Any]:
  import inspect  # pylint: disable=g-import-not-at-top

  parameters = inspect.signature(write_dataset).parameters
  defaults = {k: p.default for k, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
  defaults['lesion_contrast'] = list(defaults['lesion_contrast'])
  defaults['counts'] = {split: default_counts(split) for split in SPLITS}
  return defaults


# Training -------------------------------------------------------------------


def train_command(
  method: str,
  *,
  data_dir: str,
  workdir: str,
  seed: int,
  num_steps: int,
  image_size: int,
  model: str,
) -> list[str]:
  """The `care_jax.commands.train` command line of one run (baseline: ``care.alpha=0``)."""
  command = [
    sys.executable,
    '-m',
    'care_jax.commands.train',
    f'--config={CONFIG}',
    f'--workdir={workdir}',
    f'--config.data.dir={data_dir}',
    f'--config.data.image_size={image_size}',
    f'--config.model.name={model}',
    f'--config.train.num_steps={num_steps}',
    f'--config.seed={seed}',
  ]
  if method == 'baseline':
    command.append('--config.care.alpha=0.0')
  elif method != 'care':
    raise ValueError(f'method must be one of {METHODS}, got {method!r}')
  return command


def run_once(command: list[str], workdir: str) -> dict[str, Any]:
  """Runs `command` unless `workdir/metrics.json` exists; returns the metrics' test block."""
  metrics_path = os.path.join(workdir, 'metrics.json')
  if not os.path.exists(metrics_path):
    print('+ ' + ' '.join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
  with open(metrics_path) as f:
    return json.load(f)['test']


def summarize(results: dict[str, dict[int, dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
  """Per-method lists and means of test rare recall and MCA, and the mean CARE - baseline."""
  summary: dict[str, Any] = {'seeds': seeds}
  for method, by_seed in results.items():
    entry = {m: [by_seed[s][m] for s in seeds] for m in ('rare_recall', 'mca')}
    entry.update({f'mean_{m}': float(np.mean(entry[m])) for m in ('rare_recall', 'mca')})
    summary[method] = entry
  if all(m in results for m in METHODS):
    summary['mean_diff'] = {
      m: float(np.mean([results['care'][s][m] - results['baseline'][s][m] for s in seeds]))
      for m in ('rare_recall', 'mca')
    }
  return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out_dir', required=True, help='the dataset directory')
  parser.add_argument('--seeds', default='0,1', help='training seeds (config.seed)')
  parser.add_argument('--num_steps', type=int, default=1000)
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--model', default='tiny_cnn')
  parser.add_argument('--workdir', default=None, help='runs go here (default OUT_DIR/runs)')
  parser.add_argument('--methods', default='baseline,care', help='baseline, care or both')
  parser.add_argument('--data_seed', type=int, default=0, help="the generator's seed")
  parser.add_argument(
    '--no_artefact', action='store_true', help='the same images without the sticker'
  )
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',') if s]
  methods = [m for m in args.methods.split(',') if m]
  for method in methods:
    if method not in METHODS:
      parser.error(f'--methods: {method!r} is not one of {METHODS}')
  data_dir = os.path.abspath(args.out_dir)
  written = ensure_dataset(
    data_dir, seed=args.data_seed, image_size=args.image_size, artefact=not args.no_artefact
  )
  print(f'dataset {"written to" if written else "found in"} {data_dir}', flush=True)
  workdir = os.path.abspath(args.workdir or os.path.join(data_dir, 'runs'))
  results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in methods}
  for seed in seeds:
    for method in methods:
      run_dir = os.path.join(workdir, method, f'seed_{seed}')
      command = train_command(
        method,
        data_dir=data_dir,
        workdir=run_dir,
        seed=seed,
        num_steps=args.num_steps,
        image_size=args.image_size,
        model=args.model,
      )
      results[method][seed] = run_once(command, run_dir)
  summary = summarize(results, seeds)
  summary.update(
    data_dir=data_dir,
    artefact=not args.no_artefact,
    num_steps=args.num_steps,
    image_size=args.image_size,
    model=args.model,
  )
  header = '  '.join(f'{m + " rare_recall":>20}  {m + " mca":>12}' for m in methods)
  print(f'{"seed":>4}  {header}')
  for seed in seeds:
    cells = '  '.join(
      f'{results[m][seed]["rare_recall"]:>20.4f}  {results[m][seed]["mca"]:>12.4f}' for m in methods
    )
    print(f'{seed:>4}  {cells}')
  means = '  '.join(
    f'{summary[m]["mean_rare_recall"]:>20.4f}  {summary[m]["mean_mca"]:>12.4f}' for m in methods
  )
  print(f'{"mean":>4}  {means}')
  if 'mean_diff' in summary:
    diff = summary['mean_diff']
    print(
      f'mean difference care - baseline: rare_recall {diff["rare_recall"]:+.4f},'
      f' mca {diff["mca"]:+.4f}'
    )
  print(json.dumps(summary, sort_keys=True))
  return summary


if __name__ == '__main__':
  main()
