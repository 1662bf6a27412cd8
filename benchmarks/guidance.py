r"""The cost of each guidance method: its jitted train step against plain cross-entropy.

Every step comes from `care_jax.training.make_train_step` for the same model, batch and initial
state, jitted as the trainer does (state donated): 'ce' (alpha = 0: no map at all), 'care'
(alpha = 0.5) and each method of ``guidance.method`` with its official defaults (weight 1). All
are compiled first, then run in turn (ce, care, gradia, ..., ce, care, ...) on fresh copies of
the state (`_common.time_alternating`), so a shared machine's drifts spread evenly over them.
The table gives, per method, the median wall-clock step time, the median process CPU time, both
over CE's, XLA's temporary memory over CE's, XLA's estimate of the step's peak memory (arguments,
outputs not written into the donated state, temporaries: `peak_bytes`), and the issue's target
for its family (map losses <= 1.1x, RRR <= 3x, GAIN <= 2.2x CE's step time). A line names the
methods over their target; the last line is the largest ratio of a map loss::

    max map-loss/ce step time ratio: X

Usage (the issue's setting; docs/benchmarks.md has the measured figures)::

  python benchmarks/guidance.py --model resnet50 --image-size 224 --batch 16 --repeats 5

``--tiny`` is a smoke run (tiny_cnn, 32 px, batch 8, 2 repeats); ``--methods`` picks a subset.
"""

import argparse
import statistics
import sys
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np

from care_jax import config as config_lib
from care_jax import models
from care_jax import training
from care_jax.config import schema

METHODS = ('ce', 'care', *schema.GUIDANCE_MAP_METHODS, *schema.GUIDANCE_FORWARD_METHODS)
# The targets: step time over CE's, per family.
TARGETS = {**dict.fromkeys(schema.GUIDANCE_MAP_METHODS, 1.1), 'care': 1.1, 'rrr': 3.0, 'gain': 2.2}
_TINY = {'model': 'tiny_cnn', 'image_size': 32, 'batch': 8, 'repeats': 2}


def step_config(method: str, *, alpha: float) -> training.StepConfig:
  """The StepConfig of `method`: CE (alpha 0), CARE (`alpha`), or guidance.method=`method`."""
  if method == 'ce':
    return training.StepConfig(alpha=0.0)
  if method == 'care':
    return training.StepConfig(alpha=alpha)
  config = config_lib.default_config()
  config.guidance.method = method
  return training.StepConfig.from_config(config)


def compile_methods(model, state, batch, methods, *, alpha: float):
  """{method: (compiled step, compile seconds, XLA stats)}; each step run once and checked."""
  compiled = {}
  for method in methods:
    step = jax.jit(
      training.make_train_step(model, step_config(method, alpha=alpha)), donate_argnums=0
    )
    start = time.perf_counter()
    fn = step.lower(state, batch).compile()
    seconds = time.perf_counter() - start
    _, metrics = jax.device_get(fn(jax.tree.map(jnp.copy, state), batch))
    if not all(np.all(np.isfinite(v)) for v in jax.tree.leaves(metrics)):
      raise FloatingPointError(f'the {method} step gave non-finite metrics: {metrics}')
    compiled[method] = (fn, seconds, _common.compiled_stats(fn))
  return compiled


def peak_bytes(stats: dict[str, float | None]) -> float | None:
  """XLA's estimate of a step's peak memory: its arguments, its outputs not written into donated
  arguments, and its temporary buffers (`_common.compiled_stats`); None where unknown."""
  parts = [stats[k] for k in ('argument_bytes', 'output_bytes', 'alias_bytes', 'temp_bytes')]
  if any(p is None for p in parts):
    return None
  arguments, outputs, aliased, temp = parts
  return arguments + outputs - aliased + temp


def missed_targets(wall: dict[str, float]) -> str:
  """The methods whose step time over CE's exceeds the issue's target, or 'none'."""
  missed = [
    f'{m} {wall[m] / wall["ce"]:.2f} > {TARGETS[m]}'
    for m in wall
    if m in TARGETS and wall[m] / wall['ce'] > TARGETS[m]
  ]
  return ', '.join(missed) or 'none'


def rows(compiled, times, batch_size: int):
  """One table row per method: times, ratios to CE, memory, target."""
  wall = {m: statistics.median(times[m].wall) for m in compiled}
  cpu = {m: statistics.median(times[m].cpu) for m in compiled}
  temp = {m: compiled[m][2]['temp_bytes'] for m in compiled}
  peak = {m: peak_bytes(compiled[m][2]) for m in compiled}
  table = []
  for method in compiled:
    target = TARGETS.get(method)
    table.append(
      [
        method,
        _common.fmt(compiled[method][1], digits=1),
        _common.fmt(wall[method], digits=4),
        _common.fmt(cpu[method], digits=4),
        _common.fmt(_common.ratio(wall[method], wall['ce'])),
        _common.fmt(_common.ratio(cpu[method], cpu['ce'])),
        _common.fmt(_common.ratio(temp[method], temp['ce'])),
        _common.fmt(peak[method], scale=_common.MIB, digits=0),
        _common.fmt(batch_size / wall[method], digits=2),
        '' if target is None else f'<= {target}',
      ]
    )
  return table, wall


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  _common.add_flags(parser, batch=16, dtype='float32', warmup=1)
  parser.add_argument(
    '--methods', default=','.join(METHODS), help='comma-separated subset of ' + ','.join(METHODS)
  )
  parser.add_argument('--tiny', action='store_true', help='smoke run: tiny_cnn, 32 px, batch 8')
  args = parser.parse_args(argv)
  if args.tiny:
    for key, value in _TINY.items():
      setattr(args, key, value)
  methods = tuple(m for m in args.methods.split(',') if m)
  unknown = sorted(set(methods) - set(METHODS))
  if unknown or 'ce' not in methods:
    parser.error(f'--methods must name ce and any of {",".join(METHODS)}; unknown: {unknown}')
  model = models.get_model(
    args.model, num_classes=args.num_classes, dtype=_common.DTYPES[args.dtype]
  )
  state = _common.create_state(model, (args.image_size, args.image_size, 3), seed=args.seed)
  batch = jax.device_put(
    _common.random_batch(
      batch_size=args.batch,
      image_size=args.image_size,
      num_classes=args.num_classes,
      boxed_fraction=args.boxed_fraction,
      seed=args.seed,
    )
  )
  compiled = compile_methods(model, state, batch, methods, alpha=args.alpha)
  fresh = lambda: (jax.tree.map(jnp.copy, state), batch)
  times = _common.time_alternating(
    {m: (compiled[m][0], fresh) for m in methods}, repeats=args.repeats, warmup=args.warmup
  )
  print(
    f'{_common.environment()}; {args.model} {args.image_size}x{args.image_size}, '
    f'batch {args.batch} ({int(batch["has_mask"].sum())} boxed), {args.dtype}, '
    f'{args.repeats} timed runs per step (alternating)'
  )
  header = ['method', 'compile (s)', 'step (s)', 'CPU (s)', 'step/CE', 'CPU/CE', 'temp/CE']
  table, wall = rows(compiled, times, args.batch)
  print(_common.format_table([*header, 'peak (MiB)', 'images/s', 'target'], table))
  print(f'missed targets (step/CE): {missed_targets(wall)}')
  map_methods = [m for m in methods if m in schema.GUIDANCE_MAP_METHODS] or ['ce']
  print(f'max map-loss/ce step time ratio: {max(wall[m] for m in map_methods) / wall["ce"]:.3f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
