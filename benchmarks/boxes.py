r"""Automatic lesion boxes on `synthetic_lesions`: accuracy (IoU) and speed.

For each generator of `care_jax.boxes` (Otsu on the log red/green channel,
Otsu on darkness, spectral residual, the stage-1 model's Grad-CAM) the script
boxes every training image of the default `synthetic_lesions` (64x64) and
reports images/s (median of ``--repeats`` timed runs over the whole training
split after one untimed run, host-side connected components included) and the
mean IoU with the ground-truth ``lesion_box``: over the rare-class training
images (those CARE supervises) and over all training images; also the share
of rare-class images found at all, and of those whose box overlaps the ruler
artefact (``artefact_box``) more than the lesion (IoU). Grad-CAM needs
a stage-1 model: pass ``--stage1-workdir`` (a cross-entropy run of the same
data) or let the script train the default tiny CNN with cross-entropy for
``--stage1-steps`` steps in-process. Grad-CAM uses the true label, which a
user has for training images; no generator sees the true boxes. The classical
defaults were chosen on a development copy of the data (``--seed 1``) and
are reported on the default data (``--seed 0``).

Usage::

  python benchmarks/boxes.py                        # default data, 1000 stage-1 steps
  python benchmarks/boxes.py --stage1-workdir runs/baseline

The last line is::

  best mean IoU (rare-class train): X (method)

See docs/results.md for measured figures.
"""

import argparse
import statistics
import sys
import tempfile
import time

import _common
import jax
import numpy as np

from care_jax import boxes
from care_jax import config as config_lib
from care_jax import trained_run
from care_jax import training
from care_jax.data import info as data_info
from care_jax.data import pipeline
from care_jax.data import reading
from care_jax.data import registry


def read_train_split(data_config) -> dict[str, np.ndarray]:
  """uint8 images, labels, true boxes and model inputs of the train split.

  In the pipeline's order (``read_split``); ``inputs`` are the images as the
  pipeline feeds them to a model (`pipeline.eval_batches` of 'train').
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = registry.prepared_builder(data_config)
  ds = builder.as_dataset(
    split='train', shuffle_files=False, read_config=tfds.ReadConfig(options=reading.read_options())
  )
  rows = list(tfds.as_numpy(ds))
  split = {
    'images': np.stack([r['image'] for r in rows]),
    'labels': np.array([r['label'] for r in rows], np.int32),
    'true_boxes': np.stack([r['lesion_box'] for r in rows]),
    'ruler_boxes': np.stack([r['artefact_box'] for r in rows]),
  }
  inputs = [
    b['image'][b['valid']] for b in pipeline.eval_batches(data_config, 'train', batch_size=256)
  ]
  split['inputs'] = np.concatenate(inputs)
  return split


def train_stage1(config, num_classes: int, steps: int):
  """(model, variables) of a cross-entropy run of `config` (tiny CNN)."""
  model = training.create_model(config, num_classes)
  image_shape = (config.data.image_size, config.data.image_size, 3)
  state = training.create_train_state(
    config, model, image_shape, steps, jax.random.key(config.seed)
  )
  step = jax.jit(training.make_train_step(model, training.StepConfig(alpha=0.0)))
  batches = pipeline.train_batches(
    config.data, batch_size=config.train.batch_size, seed=config.seed
  )
  for _ in range(steps):
    state, _ = step(state, next(batches))
  return model, {'params': state.params, 'batch_stats': state.batch_stats}


def time_generator(fn, *, repeats: int) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
  """(median seconds of ``fn()`` over ``repeats`` runs after one untimed run, result)."""
  result = fn()  # Compiles.
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds), result


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--data-dir', default=None, help='tfds data_dir (default: a fresh temporary folder)'
  )
  parser.add_argument('--seed', type=int, default=0, help='synthetic_lesions seed')
  parser.add_argument('--image-size', type=int, default=64)
  parser.add_argument(
    '--train-counts',
    default='300,300,40,300,40',
    help='training images per class (brown,dark,dotted,pink,striped)',
  )
  parser.add_argument(
    '--stage1-workdir', default=None, help='a cross-entropy run to take the Grad-CAM model from'
  )
  parser.add_argument(
    '--stage1-steps',
    type=int,
    default=1000,
    help='steps of the in-process stage-1 run (no --stage1-workdir)',
  )
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=256, help='images per jitted chunk')
  args = parser.parse_args(argv)

  config = config_lib.default_config()
  config.care.alpha = 0.0
  config.train.num_steps = max(args.stage1_steps, 1)
  config.train.progress = False
  config.data.image_size = args.image_size
  config.data.synthetic.image_size = args.image_size
  config.data.synthetic.seed = args.seed
  config.data.synthetic.train_counts = tuple(int(c) for c in args.train_counts.split(','))
  # The benchmark reads the train split only.
  config.data.synthetic.validation_counts = (0,) * 5
  config.data.synthetic.test_counts = (1,) * 5
  with tempfile.TemporaryDirectory() as scratch:
    config.data.dir = args.data_dir or scratch
    info = data_info.get_dataset_info(config.data)
    split = read_train_split(config.data)
    rare = np.isin(split['labels'], info.rare_classes)
    images, labels = split['images'], split['labels']

    if args.stage1_workdir:
      _, model, variables = trained_run.load_model(args.stage1_workdir)
      stage1 = f'stage-1 model from {args.stage1_workdir}'
    else:
      model, variables = train_stage1(config, len(info.class_names), args.stage1_steps)
      stage1 = (
        f'stage-1 model: {config.model.name}, cross-entropy, '
        f'{args.stage1_steps} steps of batch {config.train.batch_size}, in-process'
      )

    defaults = config_lib.default_box_config()
    generators = {
      'otsu (log red/green)': lambda: boxes.otsu_boxes(
        images, batch_size=args.batch, **defaults.otsu.to_dict()
      ),
      'otsu (darkness)': lambda: boxes.otsu_boxes(
        images, batch_size=args.batch, **dict(defaults.otsu.to_dict(), contrast='darkness')
      ),
      'spectral_residual': lambda: boxes.spectral_residual_boxes(
        images, batch_size=args.batch, **defaults.spectral_residual.to_dict()
      ),
      f'grad_cam (fraction {defaults.grad_cam.fraction})': lambda: boxes.grad_cam_boxes(
        model,
        variables,
        split['inputs'],
        labels,
        batch_size=args.batch,
        fraction=defaults.grad_cam.fraction,
      ),
    }
    rows, best = [], (-1.0, '')
    for name, fn in generators.items():
      seconds, (found_boxes, found) = time_generator(fn, repeats=args.repeats)
      iou = np.asarray(boxes.box_iou(found_boxes, split['true_boxes']))
      # Images without a ruler have an all-zero ruler box: IoU 0.
      on_ruler = np.asarray(boxes.box_iou(found_boxes, split['ruler_boxes'])) > iou
      rows.append(
        [
          name,
          f'{len(images) / seconds:.0f}',
          f'{iou[rare].mean():.3f}',
          f'{iou.mean():.3f}',
          f'{found[rare].mean():.3f}',
          f'{on_ruler[rare].mean():.3f}',
        ]
      )
      best = max(best, (float(iou[rare].mean()), name))

  print(
    f'synthetic_lesions seed {args.seed}, {args.image_size}x{args.image_size}: '
    f'{len(images)} training images, {int(rare.sum())} of the rare classes'
  )
  print(stage1)
  print(_common.environment())
  print(
    _common.format_table(
      [
        'generator',
        'images/s',
        f'mean IoU rare (n={int(rare.sum())})',
        f'mean IoU all (n={len(images)})',
        'found (rare)',
        'on the ruler (rare)',
      ],
      rows,
    )
  )
  print(f'best mean IoU (rare-class train): {best[0]:.3f} ({best[1]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
