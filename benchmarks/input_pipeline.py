r"""Input pipeline throughput against the train step it feeds, on one machine.

Measures, in one run:

1. the training pipeline (`care_jax.data.pipeline.train_batches`) on
   ``synthetic_lesions`` generated at the benchmark's image size (a small
   training split, generated once and cached under ``--data-dir``), with the
   augmentation on (crop, flips, rotation, colour jitter; the default
   ``data.augment`` settings), off, and on the device (``data.augment.on_device``:
   the host only decodes, resizes and draws each example's geometry and colour
   factors; the train step applies them, `benchmarks/device_augment.py` times
   that share): images/s over ``--steps`` batches after one warm-up batch, the
   process CPU time per image alongside (the pipeline runs on all cores through
   tf.data's thread pools);
2. the jitted train step (`_common.compile_steps`: CE and CARE, as
   ``benchmarks/step_overhead.py`` times them) of ``--model`` on a random batch
   of ``--step-batch`` images: images/s of the median step.

The pipeline is timed first and its iterators are dropped before the step
runs, so the two never compete for the cores. The last three lines are the
pipeline's augmented images/s over the images/s of the *faster* of the two
steps (the more demanding consumer), and the host CPU ms per training image
with the augmentation on the host and on the device::

    pipeline/step throughput ratio: X
    CPU ms per image, augmentation on the host: Y
    CPU ms per image, augmentation on the device: Z

X >= 2 means the pipeline needs at most half of the machine's time to keep
the step fed, so it is not the bottleneck.

Usage::

  python benchmarks/input_pipeline.py --model resnet50 --image-size 224 --batch 32 \
      --steps 50 --dtype float32 --repeats 3
"""

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import _common
import jax
import numpy as np

from care_jax import config as config_lib
from care_jax import models
from care_jax.data import pipeline
from care_jax.data import synthetic_lesions


@dataclasses.dataclass(frozen=True)
class PipelineThroughput:
  """Images/s of the training pipeline, and its process CPU seconds per image."""

  images_per_second: float
  cpu_seconds_per_image: float
  first_batch_seconds: float


def data_config(
  *,
  data_dir: str,
  image_size: int,
  num_train: int,
  augment: bool,
  sampling: str,
  on_device: bool = False,
):
  """``data`` config of a small synthetic_lesions set at ``image_size``.

  The training split has about ``num_train`` examples in the default class
  proportions (each class at least one); one test image per class, no
  validation split: only the training split is read. ``on_device``: the
  pipeline only resizes and draws the augmentation (``data.augment.on_device``).
  """
  config = config_lib.default_data_config()
  config.augment.on_device = on_device
  config.dir = data_dir
  config.image_size = image_size
  config.sampling = sampling
  config.augment.enabled = augment
  proportions = np.array(synthetic_lesions.SyntheticLesionsConfig().train_counts, float)
  counts = np.maximum(1, np.round(num_train * proportions / proportions.sum()))
  config.synthetic.update(
    image_size=image_size,
    train_counts=tuple(int(c) for c in counts),
    validation_counts=(0,) * len(counts),
    test_counts=(1,) * len(counts),
  )
  return config


def time_pipeline(config, *, batch_size: int, steps: int, seed: int) -> PipelineThroughput:
  """Times ``steps`` batches of `pipeline.train_batches` after one warm-up batch."""
  start = time.perf_counter()
  batches = pipeline.train_batches(config, batch_size=batch_size, seed=seed)
  next(batches)  # Reads the split and traces the map: set-up, not throughput.
  first = time.perf_counter() - start
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(batches)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  images = steps * batch_size
  return PipelineThroughput(images / wall, cpu / images, first)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  _common.add_flags(parser, batch=32, dtype='float32', warmup=1)
  parser.add_argument('--steps', type=int, default=50, help='pipeline batches timed')
  parser.add_argument(
    '--step-batch', type=int, default=None, help='batch of the timed train step (default: --batch)'
  )
  parser.add_argument(
    '--num-train',
    type=int,
    default=160,
    help='synthetic training examples (generated once, cached)',
  )
  parser.add_argument(
    '--sampling', default='instance', choices=('instance', 'class_balanced', 'sqrt')
  )
  parser.add_argument(
    '--data-dir',
    default=os.path.join(tempfile.gettempdir(), 'care_jax_input_pipeline'),
    help='tfds data_dir caching the generated dataset',
  )
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f'--steps must be > 0, got {args.steps}')
  step_batch = args.step_batch or args.batch

  throughput = {}
  # (augment, on_device): the host augments, or the device will (the host draws only).
  for mode in ((True, False), (False, False), (True, True)):
    config = data_config(
      data_dir=args.data_dir,
      image_size=args.image_size,
      num_train=args.num_train,
      augment=mode[0],
      sampling=args.sampling,
      on_device=mode[1],
    )
    throughput[mode] = time_pipeline(
      config, batch_size=args.batch, steps=args.steps, seed=args.seed
    )

  model = models.get_model(
    args.model, num_classes=args.num_classes, dtype=_common.DTYPES[args.dtype]
  )
  state = _common.create_state(model, (args.image_size, args.image_size, 3), seed=args.seed)
  batch = jax.device_put(
    _common.random_batch(
      batch_size=step_batch,
      image_size=args.image_size,
      num_classes=args.num_classes,
      boxed_fraction=args.boxed_fraction,
      seed=args.seed,
    )
  )
  steps = _common.compile_steps(model, state, batch, alpha=args.alpha)
  times = _common.time_alternating(
    {name: (steps.compiled[name], steps.fresh_args) for name in _common.STEPS},
    repeats=args.repeats,
    warmup=args.warmup,
  )
  step_rate = {name: step_batch / statistics.median(times[name].wall) for name in _common.STEPS}

  print(
    f'{_common.environment()}; {os.cpu_count()} CPUs; '
    f'load average {os.getloadavg()[0]:.2f} (1 min, at the end)'
  )
  print(
    f'pipeline: synthetic_lesions {args.image_size}x{args.image_size}, batch {args.batch}, '
    f'{args.steps} batches timed, sampling {args.sampling}'
  )
  names = {
    (True, False): 'augment on',
    (False, False): 'augment off',
    (True, True): 'augment on the device (host: resize, draws)',
  }
  rows = [
    [
      names[mode],
      f'{t.images_per_second:.1f}',
      f'{t.cpu_seconds_per_image * 1e3:.2f}',
      f'{t.first_batch_seconds:.1f}',
    ]
    for mode, t in throughput.items()
  ]
  print(_common.format_table(['', 'images/s', 'CPU ms/image', 'first batch (s)'], rows))
  print(
    f'train step: {args.model}, batch {step_batch}, {args.dtype}, '
    f'{args.repeats} timed runs per step (alternating)'
  )
  rows = [
    [
      f'{name} (compile {steps.compile_seconds[name]:.1f} s)',
      f'{statistics.median(times[name].wall):.4f}',
      f'{step_rate[name]:.2f}',
    ]
    for name in _common.STEPS
  ]
  print(_common.format_table(['', 'step median (s)', 'images/s'], rows))
  ratio = throughput[True, False].images_per_second / max(step_rate.values())
  print(f'pipeline/step throughput ratio: {ratio:.3f}')
  # The measure: host CPU per training image with augmentation, where the host
  # augments and where it hands the augmentation to the device (benchmarks/device_augment.py
  # times the device's share of the step).
  host_ms = 1e3 * throughput[True, False].cpu_seconds_per_image
  print(f'CPU ms per image, augmentation on the host: {host_ms:.3f}')
  device_ms = 1e3 * throughput[True, True].cpu_seconds_per_image
  print(f'CPU ms per image, augmentation on the device: {device_ms:.3f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
