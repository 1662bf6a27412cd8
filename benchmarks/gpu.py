r"""Accelerator throughput of the CARE train step against plain cross-entropy.

ResNet-50 at 224x224 in bfloat16 (float32 parameters), batch 256, one batch
of random data kept on the device: images/s of `care_jax.training`'s step with
the attention loss on (alpha 0.5, about a third of the images boxed) and off
(alpha 0), the two compiled steps run in turn and timed with
`jax.block_until_ready` (medians); the FLOP/s they achieve (XLA's FLOP
estimate of one step over its median time) against the device's measured
bfloat16 matmul rate (a large square matmul timed in the same run). The last
line is::

    care/ce images/s ratio: X

Usage (GPU)::

  python benchmarks/gpu.py                     # resnet50, 224, batch 256, bfloat16

CPU smoke test::

  python benchmarks/gpu.py --batch 8 --image-size 64

Nothing on its import chain loads TensorFlow (jax, flax, optax, numpy and
`care_jax.models`/`care_jax.training` only), so it runs on images without it.
"""

import argparse
import statistics
import sys

import _common
import jax
import jax.numpy as jnp


def matmul_flops_per_second(size: int, *, repeats: int) -> float:
  """Measured rate of a [size, size] @ [size, size] bfloat16 matmul: 2 size^3 / median time."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), jnp.bfloat16)
  b = jax.random.normal(key_b, (size, size), jnp.bfloat16)
  timings = _common.time_alternating(
    {'matmul': (jax.jit(jnp.matmul), lambda: (a, b))}, repeats=repeats, warmup=2
  )
  return 2.0 * size**3 / statistics.median(timings['matmul'].wall)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  _common.add_flags(parser, batch=256, dtype='bfloat16', warmup=2)
  parser.add_argument(
    '--matmul-size',
    type=int,
    default=None,
    help='side of the bfloat16 matmul that measures the peak rate '
    '(default: 8192 on an accelerator, 1024 on CPU)',
  )
  args = parser.parse_args(argv)
  matmul_size = args.matmul_size or (1024 if jax.default_backend() == 'cpu' else 8192)
  model, batch, steps = _common.steps_of_flags(args)

  names = _common.STEPS
  times = _common.time_alternating(
    {name: (steps.compiled[name], steps.fresh_args) for name in names},
    repeats=args.repeats,
    warmup=args.warmup,
  )
  medians = {name: statistics.median(times[name].wall) for name in names}
  images_per_second = {name: args.batch / medians[name] for name in names}
  flops = steps.stat('flops')
  achieved = {name: _common.ratio(flops[name], medians[name]) for name in names}
  peak = matmul_flops_per_second(matmul_size, repeats=max(args.repeats, 10))

  print(
    f'{_common.environment()}; {args.model} {args.image_size}x{args.image_size}, '
    f'batch {args.batch} ({int(batch["has_mask"].sum())} boxed), {args.dtype} compute, '
    f'float32 params, {args.repeats} timed runs per step (alternating)'
  )
  print(f'bfloat16 matmul {matmul_size}^3: {peak / 1e12:.3f} TFLOP/s')
  row = _common.comparison_row
  rows = [
    row('compile (s)', steps.compile_seconds, digits=1),
    row('step median (s)', medians, digits=4),
    row('step min (s)', {n: min(times[n].wall) for n in names}, digits=4),
    row('images/s (median)', images_per_second, digits=1),
    row('XLA GFLOPs per step', flops, scale=1e9, digits=1),
    row('achieved TFLOP/s', achieved, scale=1e12, digits=3),
    row('of bf16 matmul rate', {n: _common.ratio(achieved[n], peak) for n in names}),
    row('temp memory (MiB)', steps.stat('temp_bytes'), scale=_common.MIB, digits=1),
    row('arguments (MiB)', steps.stat('argument_bytes'), scale=_common.MIB, digits=1),
  ]
  print(_common.format_table(_common.comparison_header(args.alpha), rows))
  ratio = images_per_second['care'] / images_per_second['ce']
  print(f'care/ce images/s ratio: {ratio:.3f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
