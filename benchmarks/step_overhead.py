r"""The cost of CARE: our jitted train step with the attention loss against plain cross-entropy.

Both steps come from `care_jax.training.make_train_step` for the same model,
batch and initial state, jitted as the trainer does (state donated,
``donate_argnums=0``): CE is ``alpha = 0`` (no attention map is computed at
all), CARE is ``alpha = 0.5`` with about a third of the images carrying a
random box. Both are compiled first (compile times reported), then run in
turn, CE, CARE, CE, CARE, ..., each run on fresh copies of the initial state
and timed with `jax.block_until_ready`. The table shows wall-clock medians
(and the process CPU time, steadier on a shared machine), XLA's memory
analysis of both compiled steps and its FLOP estimates; a line below it times
the attention branch alone (forward and backward on the feature map). The
last line is the ratio of the median wall-clock step times::

    care/ce step time ratio: X

Usage::

  python benchmarks/step_overhead.py --model resnet50 --image-size 224 --batch 16 \
      --dtype float32 --repeats 10 --boxed-fraction 0.33

The issue's target: ResNet-50, 224x224, batch 16, float32 on CPU, a ratio of
at most 1.05 and the CARE step's temporary memory within 10% of the CE step's.
See docs/benchmarks.md for measured figures.
"""

import argparse
import statistics
import sys

import _common
import jax
import jax.numpy as jnp

from care_jax import losses
from care_jax import models


def attention_branch_seconds(
  model: models.Classifier, steps: _common.CompiledSteps, *, repeats: int
) -> float:
  """Median seconds of the CARE step's attention branch alone, forward and backward.

  The branch of `training.make_train_step`'s loss (attention map of the true
  class from the last feature map, then the attention loss averaged over the
  boxed images), differentiated w.r.t. a random feature map: the work CARE
  adds to a step, timed apart from the network so that the noise of a whole
  step does not hide it.
  """
  state, batch, step_config = steps.state, steps.batch, steps.step_configs['care']
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  _, intermediates = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), variables, batch['image']
  )
  # The feature map, and a ViT's class token (its head inputs), drawn at random.
  random = lambda spec: jax.random.normal(jax.random.key(0), spec.shape, spec.dtype)
  features = random(intermediates['features'])
  head_inputs = jax.tree.map(random, intermediates.get('head_inputs'))

  # Everything is an argument: closed-over arrays would be compile-time
  # constants, and XLA would fold the mask algebra away.
  def branch(features, variables, labels, mask, has_mask, head_inputs):
    maps = model.attention_maps(
      variables, features, labels, method=step_config.attention, head_inputs=head_inputs
    )
    per_example = losses.care_loss_per_example(
      maps, mask, tau=step_config.tau, lam=step_config.lam, has_mask=has_mask
    )
    return jnp.sum(per_example) / jnp.maximum(jnp.sum(has_mask), 1)

  fn = jax.jit(jax.value_and_grad(branch))
  args = (features, variables, batch['label'], batch['mask'], batch['has_mask'], head_inputs)
  timings = _common.time_alternating({'branch': (fn, lambda: args)}, repeats=repeats)
  return statistics.median(timings['branch'].wall)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  _common.add_flags(parser, batch=16, dtype='float32', warmup=1)
  args = parser.parse_args(argv)
  model, batch, steps = _common.steps_of_flags(args)

  names = _common.STEPS
  times = _common.time_alternating(
    {name: (steps.compiled[name], steps.fresh_args) for name in names},
    repeats=args.repeats,
    warmup=args.warmup,
  )
  medians = {name: statistics.median(times[name].wall) for name in names}
  branch = attention_branch_seconds(model, steps, repeats=max(args.repeats, 20))

  print(
    f'{_common.environment()}; {args.model} {args.image_size}x{args.image_size}, '
    f'batch {args.batch} ({int(batch["has_mask"].sum())} boxed), {args.dtype}, '
    f'{args.repeats} timed runs per step (alternating)'
  )
  row, stat = _common.comparison_row, steps.stat
  rows = [
    row('compile (s)', steps.compile_seconds, digits=1),
    row('step median (s)', medians, digits=4),
    row('step min (s)', {n: min(times[n].wall) for n in names}, digits=4),
    row('step max (s)', {n: max(times[n].wall) for n in names}, digits=4),
    row('step CPU time median (s)', {n: statistics.median(times[n].cpu) for n in names}, digits=4),
    row('images/s (median)', {n: args.batch / medians[n] for n in names}, digits=2),
    row('temp memory (MiB)', stat('temp_bytes'), scale=_common.MIB, digits=1),
    row('arguments (MiB)', stat('argument_bytes'), scale=_common.MIB, digits=1),
    row('outputs (MiB)', stat('output_bytes'), scale=_common.MIB, digits=1),
    row('aliased/donated (MiB)', stat('alias_bytes'), scale=_common.MIB, digits=1),
    row('XLA GFLOPs', stat('flops'), scale=1e9, digits=2),
    row('XLA GB accessed', stat('bytes_accessed'), scale=1e9, digits=2),
  ]
  print(_common.format_table(_common.comparison_header(args.alpha), rows))
  print(
    f'attention branch alone (forward + backward, median): {branch * 1e3:.3f} ms '
    f'= {branch / medians["ce"]:.3%} of the CE step'
  )
  print(f'care/ce step time ratio: {medians["care"] / medians["ce"]:.3f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
