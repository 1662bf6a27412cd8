"""Shared helpers of the benchmark scripts: the CE and CARE steps, timing, XLA analyses, tables.

Both scripts time `care_jax.training.make_train_step` itself. Nothing here
imports TensorFlow (no input pipeline: random in-memory batches), so the
benchmarks run on accelerator images without it.

Example::

  model = models.get_model('resnet50', num_classes=7)
  state = create_state(model, (224, 224, 3), seed=0)
  batch = jax.device_put(random_batch(batch_size=16, image_size=224, num_classes=7,
                                      boxed_fraction=0.33))
  steps = compile_steps(model, state, batch, alpha=0.5)      # 'ce' and 'care'
  times = time_alternating({n: (steps.compiled[n], steps.fresh_args) for n in STEPS},
                           repeats=10)
"""

import argparse
from collections.abc import Callable, Mapping, Sequence
import dataclasses
import importlib.metadata
import importlib.util
import os
import pkgutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from care_jax import config as config_lib
from care_jax import host_memory
from care_jax import models
from care_jax import training


def runs_on_cpu() -> bool:
  """Whether jax's default backend will be the CPU, judged without starting jax's backends.

  ``JAX_PLATFORMS`` (``jax_platforms``) decides where it is set (its first platform); else an
  installed accelerator plugin (a ``jax_plugins`` module or entry point, e.g. jax-cuda13-plugin,
  or libtpu) means an accelerator. A plugin with no device to drive (``CUDA_VISIBLE_DEVICES=``)
  is taken for an accelerator too: the cost is only the CPU speed-up below.
  """
  platforms = (jax.config.jax_platforms or os.environ.get('JAX_PLATFORMS', '')).strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  if importlib.metadata.entry_points(group='jax_plugins'):
    return False
  if importlib.util.find_spec('libtpu') is not None:
    return False
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
  except ImportError:
    return True
  return not any(pkgutil.iter_modules(jax_plugins.__path__))


# Before jax starts, and only where the steps run on the CPU: they then reuse XLA's scratch
# memory instead of page-faulting it in again at every call (care_jax.host_memory,
# docs/benchmarks.md). On a GPU or TPU host that memory is the device's, and one glibc arena
# would only make the host threads (input, dispatch) contend. CARE_JAX_KEEP_FREED_MEMORY=1/0
# overrides.
KEEPS_FREED_MEMORY = host_memory.keep_freed_memory_if_asked(default=runs_on_cpu())

MIB = 2.0**20
STEPS = ('ce', 'care')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def add_flags(parser: argparse.ArgumentParser, *, batch: int, dtype: str, warmup: int) -> None:
  """The flags both benchmarks share, with the given defaults."""
  parser.add_argument('--model', default='resnet50', choices=models.MODEL_NAMES)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=batch)
  parser.add_argument(
    '--dtype', default=dtype, choices=tuple(DTYPES), help='compute dtype; parameters stay float32'
  )
  parser.add_argument(
    '--num-classes', type=int, default=7, help='7: the skin-lesion task (ISIC 2018 / HAM10000)'
  )
  parser.add_argument('--repeats', type=int, default=10, help='timed runs of each step')
  parser.add_argument('--warmup', type=int, default=warmup, help='untimed runs of each step first')
  parser.add_argument(
    '--boxed-fraction',
    type=float,
    default=0.33,
    help='fraction of the batch with a random lesion box',
  )
  parser.add_argument('--alpha', type=float, default=0.5, help='alpha of the CARE step')
  parser.add_argument('--seed', type=int, default=0)


def random_batch(
  *, batch_size: int, image_size: int, num_classes: int, boxed_fraction: float, seed: int = 0
) -> dict[str, np.ndarray]:
  """A training batch of the pipeline's contract filled with random data.

  ``image`` float32 [B, S, S, 3] standard normal, ``label`` int32 [B] uniform
  in [0, K), and for the first ``round(boxed_fraction * B)`` images one random
  box per image: sides uniform in [S/8, S/2], position uniform inside the
  image, rasterised to ``mask`` float32 [B, S, S] (1 inside); ``has_mask`` bool
  [B] marks them.

  Args:
    batch_size: B (> 0).
    image_size: S (>= 8, so that a box is at least one pixel wide).
    num_classes: K (> 0).
    boxed_fraction: fraction of the batch that carries a box, in [0, 1].
    seed: numpy seed; the same arguments give the same batch.

  Returns:
    A dict of numpy arrays with keys 'image', 'label', 'mask', 'has_mask'.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be > 0, got {batch_size}.')
  if image_size < 8:
    raise ValueError(f'image_size must be >= 8, got {image_size}.')
  if num_classes < 1:
    raise ValueError(f'num_classes must be > 0, got {num_classes}.')
  if not 0.0 <= boxed_fraction <= 1.0:
    raise ValueError(f'boxed_fraction must lie in [0, 1], got {boxed_fraction}.')
  rng = np.random.default_rng(seed)
  size = image_size
  num_boxed = int(round(boxed_fraction * batch_size))
  mask = np.zeros((batch_size, size, size), np.float32)
  for b in range(num_boxed):
    height, width = rng.integers(size // 8, size // 2, endpoint=True, size=2)
    top = rng.integers(0, size - height, endpoint=True)
    left = rng.integers(0, size - width, endpoint=True)
    mask[b, top : top + height, left : left + width] = 1.0
  return {
    'image': rng.standard_normal((batch_size, size, size, 3), dtype=np.float32),
    'label': rng.integers(0, num_classes, size=batch_size).astype(np.int32),
    'mask': mask,
    'has_mask': np.arange(batch_size) < num_boxed,
  }


def create_state(
  model: models.Classifier,
  image_shape: tuple[int, int, int],
  *,
  seed: int,
  learning_rate: float = 1e-4,
) -> training.TrainState:
  """The `care_jax.training.create_train_state` of the default config (Adam), at `learning_rate`.

  Random float32 parameters; the paper's 1e-4 by default (any rate costs the
  same).
  """
  config = config_lib.apply_overrides(
    config_lib.default_config(), [f'train.learning_rate={learning_rate}']
  )
  # The partitionable threefry makes the jitted init of a ResNet-50 compile
  # for minutes on CPU; a benchmark does not care which random init it gets.
  with jax.threefry_partitionable(False):
    return training.create_train_state(config, model, image_shape, 1, jax.random.key(seed))


def state_from_variables(
  model: models.Classifier,
  variables: dict[str, Any],
  *,
  tx: optax.GradientTransformation,
  dropout_key: jax.Array,
) -> training.TrainState:
  """A fresh `care_jax.training.TrainState` (step 0, empty non-finite guard) of `variables`."""
  return training.TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    batch_stats=variables.get('batch_stats', {}),
    tx=tx,
    dropout_key=jax.random.key_data(dropout_key),
    skipped_steps=np.zeros((), np.int32),
    consecutive_nonfinite=np.zeros((), np.int32),
  )


@dataclasses.dataclass
class CompiledSteps:
  """The CE and CARE train steps compiled for one state and batch (keys of `STEPS`)."""

  state: training.TrainState
  batch: dict[str, jax.Array]
  step_configs: dict[str, training.StepConfig]
  compiled: dict[str, Any]
  compile_seconds: dict[str, float]
  stats: dict[str, dict[str, float | None]]

  def fresh_args(self) -> tuple[training.TrainState, dict[str, jax.Array]]:
    """A copy of the initial state (each call donates its state) and the batch."""
    return jax.tree.map(jnp.copy, self.state), self.batch

  def stat(self, key: str) -> dict[str, float | None]:
    """One entry of `compiled_stats` for each step."""
    return {name: self.stats[name][key] for name in STEPS}


def compile_steps(
  model: models.Classifier, state: training.TrainState, batch: dict[str, jax.Array], *, alpha: float
) -> CompiledSteps:
  """Compiles `training.make_train_step` with alpha = 0 ('ce') and `alpha` ('care').

  Jitted as the trainer does, with the state donated (``donate_argnums=0``),
  so that XLA's memory analysis counts what a training run holds. Each step
  runs once on a copy of the state; non-finite metrics, or a CARE step that
  sees no boxed image when the batch has some, raise.
  """
  if not 0.0 < alpha <= 1.0:
    raise ValueError(f'alpha must lie in (0, 1], got {alpha}.')
  step_configs = {'ce': training.StepConfig(alpha=0.0), 'care': training.StepConfig(alpha=alpha)}
  compiled, compile_seconds, stats = {}, {}, {}
  for name in STEPS:
    step = jax.jit(training.make_train_step(model, step_configs[name]), donate_argnums=0)
    start = time.perf_counter()
    compiled[name] = step.lower(state, batch).compile()
    compile_seconds[name] = time.perf_counter() - start
    stats[name] = compiled_stats(compiled[name])
  steps = CompiledSteps(
    state=state,
    batch=batch,
    step_configs=step_configs,
    compiled=compiled,
    compile_seconds=compile_seconds,
    stats=stats,
  )
  for name in STEPS:
    _, metrics = jax.device_get(compiled[name](*steps.fresh_args()))
    bad = {
      jax.tree_util.keystr(path): float(v)
      for path, v in jax.tree_util.tree_leaves_with_path(metrics)
      if not np.isfinite(v)
    }
    if bad:
      raise FloatingPointError(f'the {name} step gave non-finite metrics: {bad}')
    if name == 'care' and np.any(batch['has_mask']) and metrics['boxed'] < 1:
      raise RuntimeError(f'the CARE step saw no boxed image: {metrics}')
  return steps


def steps_of_flags(args: argparse.Namespace) -> tuple[models.Classifier, dict, CompiledSteps]:
  """The model, random batch (on the device) and compiled steps that `add_flags`' flags ask for."""
  model = models.get_model(args.model, num_classes=args.num_classes, dtype=DTYPES[args.dtype])
  state = create_state(model, (args.image_size, args.image_size, 3), seed=args.seed)
  batch = jax.device_put(
    random_batch(
      batch_size=args.batch,
      image_size=args.image_size,
      num_classes=args.num_classes,
      boxed_fraction=args.boxed_fraction,
      seed=args.seed,
    )
  )
  return model, batch, compile_steps(model, state, batch, alpha=args.alpha)


def compiled_stats(compiled: Any) -> dict[str, float | None]:
  """XLA's memory and cost analyses of a compiled function (None where unavailable).

  Keys: 'temp_bytes' (scratch buffers live during the call), 'argument_bytes',
  'output_bytes', 'alias_bytes' (outputs that reuse donated argument buffers),
  'flops' and 'bytes_accessed' (XLA's static cost model: one execution).
  """
  stats = dict.fromkeys(
    ('temp_bytes', 'argument_bytes', 'output_bytes', 'alias_bytes', 'flops', 'bytes_accessed')
  )
  try:
    memory = compiled.memory_analysis()
  except NotImplementedError:  # Some backends have no memory analysis.
    memory = None
  if memory is not None:
    stats.update(
      temp_bytes=memory.temp_size_in_bytes,
      argument_bytes=memory.argument_size_in_bytes,
      output_bytes=memory.output_size_in_bytes,
      alias_bytes=memory.alias_size_in_bytes,
    )
  try:
    cost = compiled.cost_analysis()
  except NotImplementedError:
    cost = None
  # Older jax versions return one dict per computation.
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if cost:
    stats.update(flops=cost.get('flops'), bytes_accessed=cost.get('bytes accessed'))
  return stats


@dataclasses.dataclass
class Timings:
  """Per-run seconds of one step: wall clock, and CPU time of this process (all threads).

  On a shared machine the wall clock also counts the time other processes hold
  the cores; the process CPU time does not, so it is the steadier measure of
  the work a step does (though not immune to cache and memory-bandwidth
  contention).
  """

  wall: list[float] = dataclasses.field(default_factory=list)
  cpu: list[float] = dataclasses.field(default_factory=list)


def time_alternating(
  steps: Mapping[str, tuple[Callable[..., Any], Callable[[], tuple[Any, ...]]]],
  *,
  repeats: int,
  warmup: int = 1,
) -> dict[str, Timings]:
  """Times each step, the steps run in turn (a, b, a, b, ...).

  Alternating spreads slow drifts of a shared machine (other processes, CPU
  frequency) evenly over the steps compared.

  Args:
    steps: name -> (fn, make_args). ``make_args()`` builds fresh arguments
      (e.g. copies of a state that ``fn`` donates); it runs, and its result is
      made ready, outside the timed region. Each run is timed up to
      `jax.block_until_ready` of its outputs.
    repeats: timed runs per step (> 0).
    warmup: untimed runs per step first (>= 0).

  Returns:
    name -> `Timings` of the `repeats` timed runs.
  """
  if repeats < 1:
    raise ValueError(f'repeats must be > 0, got {repeats}.')
  if warmup < 0:
    raise ValueError(f'warmup must be >= 0, got {warmup}.')
  timings = {name: Timings() for name in steps}
  for i in range(warmup + repeats):
    for name, (fn, make_args) in steps.items():
      args = jax.block_until_ready(make_args())
      wall, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(*args))
      wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
      if i >= warmup:
        timings[name].wall.append(wall)
        timings[name].cpu.append(cpu)
  return timings


def fmt(value: float | None, *, scale: float = 1.0, digits: int = 3) -> str:
  """`value / scale` with `digits` decimals, or 'n/a'."""
  return 'n/a' if value is None else f'{value / scale:.{digits}f}'


def ratio(numerator: float | None, denominator: float | None) -> float | None:
  """numerator / denominator, or None when either is missing or the denominator is 0."""
  if numerator is None or not denominator:
    return None
  return numerator / denominator


def comparison_row(
  label: str, values: Mapping[str, float | None], *, scale: float = 1.0, digits: int = 3
) -> list[str]:
  """[label, CE value, CARE value, CARE/CE] of `values` keyed by `STEPS`, formatted."""
  return [
    label,
    *(fmt(values[name], scale=scale, digits=digits) for name in STEPS),
    fmt(ratio(values['care'], values['ce'])),
  ]


def comparison_header(alpha: float) -> list[str]:
  return ['', 'CE (alpha=0)', f'CARE (alpha={alpha})', 'CARE/CE']


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A plain-text table: first column left-aligned, the others right-aligned."""
  table = [list(header), *[list(row) for row in rows]]
  widths = [max(len(row[c]) for row in table) for c in range(len(header))]
  lines = []
  for r, row in enumerate(table):
    cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
    lines.append('  '.join(cells))
    if r == 0:
      lines.append('  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def environment() -> str:
  """One line naming the jax version and the devices the benchmark runs on."""
  device = jax.devices()[0]
  return (
    f'jax {jax.__version__}, backend {jax.default_backend()}, '
    f'{jax.device_count()} x {device.device_kind}, '
    f'host_memory.keep_freed_memory: {KEEPS_FREED_MEMORY}'
  )
