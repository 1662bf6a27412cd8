r"""The on-device augmentation inside the train step, against the step without it.

Times, side by side in one run (`_common.time_alternating`: the four steps in
turn), the jitted CE and CARE train steps of ``--model``
(`care_jax.training.make_train_step`, jitted and checked as
`_common.compile_steps` does) on a batch of the pipeline's contract, and the
same steps with ``StepConfig(device_augment=True)`` on the augmentation
inputs of that batch (``data.augment.on_device``: uint8 images, geometry,
colour factors and padded boxes; `care_jax.training.device_augment`), plus
the jitted `device_augment.augment_batch` alone. The random geometries follow
the default ``data.augment`` settings (rotation up to 180 degrees, flips, a
random resized crop of area 0.5-1 and ratio 3/4-4/3), the colour factors the
default jitter (0.2, 0.2, 0.2, 0.05).

The last line is the augmentation's share of the step: the median wall clock
of the augmenting CE step over that of the CE step (the cheaper step, so the
larger share), minus 1::

    device augmentation / step: X%

The line before gives the same share from the augmentation timed alone.
Nothing here imports TensorFlow.

Usage::

  python benchmarks/device_augment.py --model resnet50 --image-size 224 --batch 16 \
      --dtype float32 --repeats 3
"""

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np

from care_jax import models
from care_jax import training
from care_jax.training import device_augment

AUGMENTED = {f'{name}+augment': name for name in _common.STEPS}
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def random_augment_inputs(
  *,
  batch_size: int,
  image_size: int,
  num_classes: int,
  num_boxes: int,
  boxed_fraction: float,
  seed: int = 0,
) -> dict[str, np.ndarray]:
  """The augmentation inputs of a random batch (`device_augment`'s contract).

  uint8 images, labels uniform in [0, K), for the first ``round(boxed_fraction
  B)`` images 1 to ``num_boxes`` random boxes (sides 1/8 to 1/2, inside the
  image; the others padding), geometries of the default ``data.augment``
  settings (uniform angle in [-180, 180] degrees, each flip with probability
  1/2, a crop of area fraction U(0.5, 1) and log-ratio U(log 3/4, log 4/3),
  clipped to the image, centre uniform where it fits) and colour factors of
  the default jitter.
  """
  rng = np.random.default_rng(seed)
  b = batch_size
  num_boxed = int(round(boxed_fraction * b))
  box_count = np.where(np.arange(b) < num_boxed, rng.integers(1, num_boxes + 1, size=b), 0)
  sides = rng.uniform(1 / 8, 1 / 2, size=(b, num_boxes, 2))
  low = rng.uniform(0, 1 - sides)
  boxes = np.concatenate([low, low + sides], -1)
  theta = np.radians(rng.uniform(-180, 180, size=b))
  ratio = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), size=b))
  area = rng.uniform(0.5, 1.0, size=b)
  size = np.minimum(1.0, np.stack([np.sqrt(area * ratio), np.sqrt(area / ratio)], -1))
  centre = size / 2 + (1 - size) * rng.uniform(size=(b, 2))
  scale = size * np.where(rng.uniform(size=(b, 2)) < 0.5, -1.0, 1.0)
  cos, sin = np.cos(theta), np.sin(theta)
  linear = np.stack(
    [
      np.stack([scale[:, 0] * cos, scale[:, 0] * sin], -1),
      np.stack([-scale[:, 1] * sin, scale[:, 1] * cos], -1),
    ],
    1,
  )
  offset = centre - linear @ np.array([0.5, 0.5])
  geometry = np.zeros((b, 3, 3))
  geometry[:, :2, :2], geometry[:, :2, 2], geometry[:, 2, 2] = linear, offset, 1.0
  color = np.concatenate(
    [rng.uniform(0.8, 1.2, size=(b, 3)), rng.uniform(-0.05, 0.05, size=(b, 1))], -1
  )
  return {
    'image': rng.integers(0, 256, size=(b, image_size, image_size, 3), dtype=np.uint8),
    'label': rng.integers(0, num_classes, size=b).astype(np.int32),
    'geometry': geometry.astype(np.float32),
    'color': color.astype(np.float32),
    'boxes': boxes.astype(np.float32),
    'box_count': box_count.astype(np.int32),
  }


def compile_augmenting_steps(
  model: models.Classifier, steps: _common.CompiledSteps, raw_batch: dict[str, jax.Array]
) -> tuple[dict, dict]:
  """`steps`' CE and CARE step configs with ``device_augment``, compiled on ``raw_batch``.

  Jitted and checked as `_common.compile_steps` jits and checks its steps.
  Returns (name -> compiled, name -> compile seconds), names of `AUGMENTED`.
  """
  compiled, seconds = {}, {}
  for name, base in AUGMENTED.items():
    config = dataclasses.replace(steps.step_configs[base], device_augment=True, mean=MEAN, std=STD)
    step = jax.jit(training.make_train_step(model, config), donate_argnums=0)
    start = time.perf_counter()
    compiled[name] = step.lower(steps.state, raw_batch).compile()
    seconds[name] = time.perf_counter() - start
    _, metrics = jax.device_get(compiled[name](jax.tree.map(jnp.copy, steps.state), raw_batch))
    if not all(np.isfinite(v).all() for v in jax.tree.leaves(metrics)):
      raise FloatingPointError(f'the {name} step gave non-finite metrics: {metrics}')
    if base == 'care' and np.any(raw_batch['box_count']) and metrics['boxed'] < 1:
      raise RuntimeError(f'the {name} step saw no boxed image: {metrics}')
  return compiled, seconds


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  _common.add_flags(parser, batch=16, dtype='float32', warmup=1)
  parser.add_argument('--num-boxes', type=int, default=4, help='N, the padded boxes per image')
  args = parser.parse_args(argv)
  if args.num_boxes < 1:
    parser.error(f'--num-boxes must be > 0, got {args.num_boxes}')

  raw_batch = jax.device_put(
    random_augment_inputs(
      batch_size=args.batch,
      image_size=args.image_size,
      num_classes=args.num_classes,
      num_boxes=args.num_boxes,
      boxed_fraction=args.boxed_fraction,
      seed=args.seed,
    )
  )
  augment = jax.jit(lambda b: device_augment.augment_batch(b, mean=MEAN, std=STD))
  # The plain steps see the very batch the augmenting steps make.
  batch = jax.block_until_ready(augment(raw_batch))
  model = models.get_model(
    args.model, num_classes=args.num_classes, dtype=_common.DTYPES[args.dtype]
  )
  state = _common.create_state(model, (args.image_size, args.image_size, 3), seed=args.seed)
  steps = _common.compile_steps(model, state, batch, alpha=args.alpha)
  compiled, compile_seconds = compile_augmenting_steps(model, steps, raw_batch)
  compiled.update(steps.compiled)
  compile_seconds.update(steps.compile_seconds)
  names = [n for base in _common.STEPS for n in (base, f'{base}+augment')]
  timed = {
    name: (
      compiled[name],
      steps.fresh_args if name in _common.STEPS else lambda: (steps.fresh_args()[0], raw_batch),
    )
    for name in names
  }
  timed['augment alone'] = (augment, lambda: (raw_batch,))
  times = _common.time_alternating(timed, repeats=args.repeats, warmup=args.warmup)
  median = {name: statistics.median(t.wall) for name, t in times.items()}

  print(
    f'{_common.environment()}; {os.cpu_count()} CPUs; '
    f'load average {os.getloadavg()[0]:.2f} (1 min, at the end)'
  )
  print(
    f'train step: {args.model}, {args.image_size}x{args.image_size}, batch {args.batch}, '
    f'{args.dtype}, {args.num_boxes} padded boxes, {args.repeats} timed runs each (alternating)'
  )
  rows = []
  for name in [*names, 'augment alone']:
    base = AUGMENTED.get(name, name)
    share = (
      f'{100 * (median[name] / median[base] - 1):+.2f}%'
      if name in AUGMENTED
      else (f'{100 * median[name] / median["ce"]:.2f}%' if name == 'augment alone' else '')
    )
    compile_s = f'{compile_seconds[name]:.1f}' if name in compile_seconds else ''
    rows.append([name, f'{median[name]:.4f}', f'{args.batch / median[name]:.2f}', compile_s, share])
  print(
    _common.format_table(['', 'median (s)', 'images/s', 'compile (s)', 'share of the step'], rows)
  )
  print(f'augmentation alone / ce step: {100 * median["augment alone"] / median["ce"]:.3f}%')
  print(f'device augmentation / step: {100 * (median["ce+augment"] / median["ce"] - 1):.3f}%')
  return 0


if __name__ == '__main__':
  sys.exit(main())
