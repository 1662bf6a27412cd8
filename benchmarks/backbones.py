r"""The backbone table: parameters, feature grid, and the CE and CARE train steps of each backbone.

For each backbone of ``--models`` (default: every registered one): its parameter count (with a
7-class linear or its own default head; ``jax.eval_shape``, nothing is initialised), the
feature grid ``h x w x C`` that the attention maps are taken from at ``--image-size``, and, for
those of ``--time-models``, the median wall-clock seconds of our jitted CE step and CARE step
(`care_jax.training.make_train_step`, as benchmarks/step_overhead.py times them: alternating,
state donated, a third of the batch boxed; 'n/a' for the others). The output is the markdown
table of docs/training.md ("Backbones"); ``--model`` of the shared flags is not used::

  python benchmarks/backbones.py --image-size 224 --batch 16 --repeats 3 \
      --time-models tiny_cnn,resnet18,resnet50,densenet121,convnext_tiny,efficientnet_b0

A ViT (``vit_b_16``, ``deit_s_16``) is timed as any backbone: its feature grid is the patch
tokens entering the last block (14 x 14 at 224 px), its CARE step differentiates the
``vit_token`` head (the last block) by its VJP::

  python benchmarks/backbones.py --image-size 224 --batch 16 --repeats 3 --models deit_s_16,vit_b_16
"""

import argparse
import statistics
import sys

import _common
import jax
import jax.numpy as jnp

from care_jax import models
from care_jax.models import backbones


def shape_row(name: str, *, image_size: int, num_classes: int) -> tuple[int, tuple[int, ...]]:
  """``(parameters, feature map shape [h, w, C])`` of ``name``'s classifier, from shapes only."""
  model = models.get_model(name, num_classes=num_classes)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  _, intermediates = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  params = sum(leaf.size for leaf in jax.tree.leaves(variables['params']))
  return params, tuple(intermediates['features'].shape[1:])


def step_medians(name: str, args: argparse.Namespace) -> dict[str, float]:
  """Median wall-clock seconds of the CE and the CARE step of ``name`` (keys of `_common.STEPS`)."""
  args = argparse.Namespace(**{**vars(args), 'model': name})
  _, _, steps = _common.steps_of_flags(args)
  times = _common.time_alternating(
    {step: (steps.compiled[step], steps.fresh_args) for step in _common.STEPS},
    repeats=args.repeats,
    warmup=args.warmup,
  )
  return {step: statistics.median(times[step].wall) for step in _common.STEPS}


def _names(value: str) -> tuple[str, ...]:
  names = tuple(name for name in value.split(',') if name)
  for name in names:
    backbones.resolve(name)  # a one-line error for an unknown name
  return names


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  _common.add_flags(parser, batch=16, dtype='float32', warmup=1)
  parser.add_argument(
    '--models', type=_names, default=models.MODEL_NAMES, help='comma-separated backbones'
  )
  parser.add_argument(
    '--time-models', type=_names, default=None, help='the backbones timed (default: --models)'
  )
  args = parser.parse_args(argv)
  timed = args.models if args.time_models is None else args.time_models
  print(
    f'{_common.environment()}; {args.image_size}x{args.image_size}, batch {args.batch}, '
    f'{args.dtype}, {args.repeats} timed runs per step (alternating)'
  )
  print('| backbone | params | feature grid | CE step (s) | CARE step (s) | CARE/CE |')
  print('|---|---:|---|---:|---:|---:|')
  for name in args.models:
    params, grid = shape_row(name, image_size=args.image_size, num_classes=args.num_classes)
    medians = step_medians(name, args) if name in timed else {}
    ce, care = medians.get('ce'), medians.get('care')
    cells = (
      f'`{name}`',
      f'{params / 1e6:.2f}M',
      ' x '.join(map(str, grid)),
      _common.fmt(ce, digits=3),
      _common.fmt(care, digits=3),
      _common.fmt(_common.ratio(care, ce), digits=2),
    )
    print(f'| {" | ".join(cells)} |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
