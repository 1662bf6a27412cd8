r"""Accelerator throughput of the CARE train step against plain cross-entropy, in one short run.

ResNet-50 at 224x224 in bfloat16 (float32 parameters), batch 256, random data:

* images/s of `care_jax.training`'s train step with the attention loss off ('ce', alpha 0) and
  on ('care', alpha 0.5, a third of the images boxed), on the mesh back-end (`jit` over all
  devices, `training.MeshParallel`) and on the pmap back-end (per-device steps in
  `jax.shard_map`, `training.PmapParallel`). Each step runs `--repeats` times in a row (the state
  threaded from one step to the next and donated, as in training), timed to
  `jax.block_until_ready` of the last;
* the TFLOP/s each achieves: the FLOPs of one step from `jit(...).lower(...).cost_analysis()`
  (counted before XLA's optimisations, the same on every backend) over its time, and that rate
  as a fraction of a large bfloat16 matmul timed in the same run. XLA's count after compiling
  is printed beside it: on GPU it can be -1 or wrong (jax-ml/jax#16008, #20184, #22249). For
  ResNet-50 the count is checked against the analytic 24.6 GFLOP per 224x224 training image
  (4.1 GMAC forward, x2 FLOP per MAC, x3 for forward and backward);
* the on-device augmentation's share of the CARE step ('care+aug': uint8 images warped,
  jittered and masked inside the step, `StepConfig.device_augment`), also timed alone;
* the host-to-device cost per step: the CARE step fed a fresh float32 host batch every step
  (`put_batch`, as `training.run` feeds it) against the batch kept on the device.

Each result is printed as one ``name: {json}`` line and written at once to the `--json` file,
so a run cut short keeps what finished; a line that fails (e.g. out of device memory) is written
as ``{"error": ...}`` and the run goes on. Then a table, and last::

    care/ce images/s ratio: X

Usage (GPU; about 4-7 minutes, mostly 5 ResNet-50 compiles)::

  python benchmarks/gpu.py --json gpu.json     # resnet50, 224, batch 256, bfloat16

CPU smoke run::

  python benchmarks/gpu.py --model resnet18 --image-size 32 --batch 8 --repeats 3 \
      --json /tmp/gpu.json

Its imports are jax (with its accelerator plugin), flax, optax, orbax-checkpoint,
ml_collections and numpy: no TensorFlow, matplotlib, scipy or tqdm
(tests/benchmarks/gpu_test.py runs it with those blocked). docs/benchmarks.md has the command
for a GPU host without care-jax installed.
"""

import argparse
from collections.abc import Callable
import functools
import json
import os
import statistics
import sys
import time
from typing import Any

import _common
import device_augment as bench_augment  # benchmarks/device_augment.py
import jax
import jax.numpy as jnp
import numpy as np

from care_jax import models
from care_jax import training
from care_jax.training import device_augment

# Analytic FLOPs of one ResNet-50 training image at 224x224 (forward 4.1 GMAC).
RESNET50_TRAIN_FLOPS_224 = 24.6e9
BACKENDS = ('mesh', 'pmap')


class Results:
  """The run's results: each printed as a line and written to a JSON file as it comes."""

  def __init__(self, path: str | None):
    self.path = path
    self.values: dict[str, Any] = {}

  def add(self, name: str, value: Any) -> Any:
    self.values[name] = value
    print(f'{name}: {json.dumps(value)}', flush=True)
    if self.path:
      # Written whole, then renamed: a run killed mid-write leaves the previous file.
      partial = f'{self.path}.partial'
      with open(partial, 'w') as f:
        json.dump(self.values, f, indent=1)
      os.replace(partial, self.path)
    return value


def matmul_flops_per_second(size: int, *, repeats: int) -> float:
  """Measured rate of a [size, size] @ [size, size] bfloat16 matmul: 2 size^3 / median time."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), jnp.bfloat16)
  b = jax.random.normal(key_b, (size, size), jnp.bfloat16)
  timings = _common.time_alternating(
    {'matmul': (jax.jit(jnp.matmul), lambda: (a, b))}, repeats=repeats, warmup=2
  )
  return 2.0 * size**3 / statistics.median(timings['matmul'].wall)


def analytic_flops(model: str, image_size: int, batch: int) -> float | None:
  """FLOPs of one training step by the analytic count (ResNet-50 only; None otherwise)."""
  if model != 'resnet50':
    return None
  return RESNET50_TRAIN_FLOPS_224 * batch * (image_size / 224) ** 2


def lowered_flops(lowered: Any) -> float | None:
  """The FLOPs of a `jax.stages.Lowered` (XLA's count before optimisation), None if unknown."""
  try:
    cost = lowered.cost_analysis()
  except NotImplementedError:
    return None
  if isinstance(cost, (list, tuple)):  # Older jax versions: one dict per computation.
    cost = cost[0] if cost else None
  return (cost or {}).get('flops')


def time_steps(step, state, batch, *, repeats: int, warmup: int, next_batch=None) -> float:
  """Seconds per step of `repeats` steps in a row (state threaded through), after `warmup`.

  `next_batch`, when given, makes each step's batch (e.g. a host -> device transfer), timed
  with the step; else every step takes `batch`. Returns the mean, with the final state and
  metrics made ready before the clock stops.
  """
  for _ in range(warmup):
    state, metrics = step(state, next_batch() if next_batch else batch)
  jax.block_until_ready((state, metrics) if warmup else state)
  start = time.perf_counter()
  for _ in range(repeats):
    state, metrics = step(state, next_batch() if next_batch else batch)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / repeats


def measure_step(parallel, train_step, host_state, host_batch, args, *, results, name):
  """Compiles `train_step` as `parallel` does, checks one step, times it; adds its result.

  Returns the result and the compiled step.
  """
  jitted = parallel.compile_train_step(train_step)
  state, batch = parallel.put_state(host_state), parallel.put_batch(host_batch)
  start = time.perf_counter()
  with parallel.scope():
    lowered = jitted.lower(state, batch)
    compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  stats = _common.compiled_stats(compiled)
  flops = lowered_flops(lowered)
  with parallel.scope():
    state, metrics = compiled(state, batch)
    loss = float(np.ravel(parallel.fetch(metrics)['loss'])[0])
    if not np.isfinite(loss):
      raise FloatingPointError(f'the {name} step gave a non-finite loss: {loss}')
    seconds = time_steps(compiled, state, batch, repeats=args.repeats, warmup=args.warmup)
  result = {
    'compile_s': round(compile_seconds, 2),
    'step_s': seconds,
    'images_per_s': args.batch / seconds,
    'loss': loss,
    'gflop_lowered': None if flops is None else flops / 1e9,
    'gflop_compiled': None if stats['flops'] is None else stats['flops'] / 1e9,
    'tflops': None if flops is None else flops / seconds / 1e12,
    'temp_mib': None if stats['temp_bytes'] is None else stats['temp_bytes'] / _common.MIB,
  }
  return results.add(name, result), compiled


def host_to_device(parallel, compiled, host_state, host_batch, args, *, results) -> dict:
  """The compiled CARE step fed a fresh host batch every step (as `training.run` feeds it)."""
  state = parallel.put_state(host_state)
  with parallel.scope():
    seconds = time_steps(
      compiled,
      state,
      None,
      repeats=args.repeats,
      warmup=args.warmup,
      next_batch=lambda: parallel.put_batch(host_batch),
    )
  mib = sum(np.asarray(v).nbytes for v in host_batch.values()) / _common.MIB
  return results.add(
    'mesh/care+h2d', {'step_s': seconds, 'images_per_s': args.batch / seconds, 'batch_mib': mib}
  )


def augment_alone(raw_batch, args, *, results, care_seconds, care_aug_seconds) -> dict:
  """The device augmentation of one batch timed alone, and its share of the CARE step."""
  augment = jax.jit(
    functools.partial(device_augment.augment_batch, mean=bench_augment.MEAN, std=bench_augment.STD)
  )
  batch = jax.device_put(raw_batch)
  jax.block_until_ready(augment(batch))
  start = time.perf_counter()
  for _ in range(args.repeats):
    out = augment(batch)
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / args.repeats
  return results.add(
    'augment',
    {
      'alone_s': seconds,
      'alone_over_care': seconds / care_seconds,
      'in_step_share': care_aug_seconds / care_seconds - 1.0,
    },
  )


def step_configs(alpha: float) -> dict[str, training.StepConfig]:
  """The steps timed: CE, CARE, and CARE with the augmentation inside the step."""
  return {
    'ce': training.StepConfig(alpha=0.0),
    'care': training.StepConfig(alpha=alpha),
    'care+aug': training.StepConfig(
      alpha=alpha, device_augment=True, mean=bench_augment.MEAN, std=bench_augment.STD
    ),
  }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  _common.add_flags(parser, batch=256, dtype='bfloat16', warmup=3)
  parser.set_defaults(repeats=20)
  parser.add_argument(
    '--matmul-size',
    type=int,
    default=None,
    help='side of the bfloat16 matmul that measures the peak rate '
    '(default: 8192 on an accelerator, 1024 on CPU)',
  )
  parser.add_argument(
    '--backends',
    default=','.join(BACKENDS),
    help='comma-separated back-ends to time, of mesh and pmap (the mesh runs all other lines)',
  )
  parser.add_argument(
    '--json', default='gpu.json', help='file the results are written to as they come ("" : none)'
  )
  args = parser.parse_args(argv)
  backends = tuple(b.strip() for b in args.backends.split(',') if b.strip())
  unknown = sorted(set(backends) - set(BACKENDS))
  if unknown or not backends:
    parser.error(f'--backends={args.backends}: each of {BACKENDS}, at least one')
  args.backends = backends
  return args


def environment(results: Results, args: argparse.Namespace) -> None:
  """The versions, devices and settings of the run (its first lines)."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  results.add(
    'environment',
    {
      'jax': jax.__version__,
      'flax': flax.__version__,
      'optax': optax.__version__,
      'orbax': ocp.__version__,
      'backend': jax.default_backend(),
      'device': jax.devices()[0].device_kind,
      'devices': jax.device_count(),
      'keeps_freed_host_memory': _common.KEEPS_FREED_MEMORY,
    },
  )
  settings = ('model', 'image_size', 'batch', 'dtype', 'alpha', 'boxed_fraction', 'repeats')
  results.add('settings', {key: getattr(args, key) for key in settings})


def attempt(results: Results, name: str, fn: Callable[[], Any]) -> Any:
  """`fn()`, or None after adding ``{'error': ...}`` as line `name`.

  One failing line (e.g. out of device memory) must not cost a one-shot run the lines after it.
  """
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-exception-caught
    results.add(name, {'error': f'{type(e).__name__}: {e}'[:2000]})
    return None


def run_mesh(model, host_state, batches, args, results) -> dict[str, dict]:
  """The mesh back-end's lines: CE, CARE, CARE with device augmentation, and the H2D cost."""
  measured = {}
  first = training.make_train_step(model, step_configs(args.alpha)['ce'])
  mesh = training.MeshParallel(first, first)
  for name, config in step_configs(args.alpha).items():
    step = training.make_train_step(model, config)
    batch = batches['raw'] if config.device_augment else batches['float']
    line = f'mesh/{name}'
    measure = functools.partial(
      measure_step, mesh, step, host_state, batch, args, results=results, name=line
    )
    done = attempt(results, line, measure)
    if done is None:
      continue
    measured[name], compiled = done
    if name == 'care':
      h2d = functools.partial(
        host_to_device, mesh, compiled, host_state, batches['float'], args, results=results
      )
      attempt(results, 'mesh/care+h2d', h2d)
  if 'care' in measured and 'care+aug' in measured:
    alone = functools.partial(
      augment_alone,
      batches['raw'],
      args,
      results=results,
      care_seconds=measured['care']['step_s'],
      care_aug_seconds=measured['care+aug']['step_s'],
    )
    attempt(results, 'augment', alone)
  return measured


def run_pmap(args, host_state, batches, results) -> dict[str, dict]:
  """The pmap back-end's lines: CE and CARE as per-device steps (collectives over 'batch')."""
  model = models.get_model(
    args.model,
    num_classes=args.num_classes,
    dtype=_common.DTYPES[args.dtype],
    axis_name=training.PMAP_AXIS,
  )
  measured = {}
  for name in ('ce', 'care'):
    config = step_configs(args.alpha)[name]
    step = training.make_train_step(model, config, axis_name=training.PMAP_AXIS)
    pmap = training.PmapParallel(step, step)
    line = f'pmap/{name}'
    measure = functools.partial(
      measure_step, pmap, step, host_state, batches['float'], args, results=results, name=line
    )
    done = attempt(results, line, measure)
    if done is not None:
      measured[name] = done[0]
  return measured


def summary_table(measured: dict[str, dict[str, dict]], *, peak: float, args) -> str:
  """CE and CARE side by side on every back-end timed."""
  rows = []
  for backend, steps in measured.items():

    def row(label, key, steps=steps, **kwargs):
      return _common.comparison_row(
        f'{backend}: {label}', {n: steps[n][key] for n in _common.STEPS}, **kwargs
      )

    tflops = {n: steps[n]['tflops'] for n in _common.STEPS}
    rows += [
      row('images/s', 'images_per_s', digits=1),
      row('step (s)', 'step_s', digits=4),
      row('compile (s)', 'compile_s', digits=1),
      row('GFLOP per step, lowered', 'gflop_lowered', digits=1),
      row('GFLOP per step, compiled', 'gflop_compiled', digits=1),
      row('achieved TFLOP/s (lowered)', 'tflops', digits=3),
      _common.comparison_row(
        f'{backend}: of bf16 matmul rate',
        {n: _common.ratio(v and v * 1e12, peak) for n, v in tflops.items()},
      ),
    ]
  analytic = analytic_flops(args.model, args.image_size, args.batch)
  if analytic:
    rows.append(
      _common.comparison_row(
        'analytic GFLOP per step', dict.fromkeys(_common.STEPS, analytic / 1e9), digits=1
      )
    )
  return _common.format_table(_common.comparison_header(args.alpha), rows)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  results = Results(args.json or None)
  environment(results, args)
  matmul_size = args.matmul_size or (1024 if jax.default_backend() == 'cpu' else 8192)
  peak = matmul_flops_per_second(matmul_size, repeats=max(args.repeats, 10))
  results.add('matmul', {'size': matmul_size, 'tflops': peak / 1e12})
  model = models.get_model(
    args.model, num_classes=args.num_classes, dtype=_common.DTYPES[args.dtype]
  )
  shape = (args.image_size, args.image_size, 3)
  host_state = jax.device_get(_common.create_state(model, shape, seed=args.seed))
  sizes = dict(batch_size=args.batch, image_size=args.image_size, num_classes=args.num_classes)
  batches = {
    'float': _common.random_batch(**sizes, boxed_fraction=args.boxed_fraction, seed=args.seed),
    'raw': bench_augment.random_augment_inputs(
      **sizes, num_boxes=4, boxed_fraction=args.boxed_fraction, seed=args.seed
    ),
  }
  measured = {}
  if 'mesh' in args.backends:
    measured['mesh'] = run_mesh(model, host_state, batches, args, results)
  if 'pmap' in args.backends:
    measured['pmap'] = run_pmap(args, host_state, batches, results)
  return finish(results, measured, peak=peak, args=args)


def finish(results: Results, measured: dict[str, dict], *, peak: float, args) -> int:
  """The summary line and table of the back-ends with both steps timed; 1 if none has."""
  complete = {b: s for b, s in measured.items() if set(_common.STEPS) <= set(s)}
  if not complete:
    print('no back-end timed both the CE and the CARE step: see the error lines above')
    return 1
  summary = {
    backend: {'care_over_ce_images_per_s': s['care']['images_per_s'] / s['ce']['images_per_s']}
    for backend, s in complete.items()
  }
  first = next(iter(complete.values()))
  analytic = analytic_flops(args.model, args.image_size, args.batch)
  ce_flops = first['ce']['gflop_lowered']
  if analytic and ce_flops is not None:
    summary['lowered_over_analytic_flops'] = ce_flops * 1e9 / analytic
  results.add('summary', summary)
  print(summary_table(complete, peak=peak, args=args))
  ratio = first['care']['images_per_s'] / first['ce']['images_per_s']
  print(f'care/ce images/s ratio: {ratio:.3f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
