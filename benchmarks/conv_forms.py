r"""Each convolution of a model, XLA's form against the patch form, forward and backward.

For every distinct convolution of ``--model`` at ``--image-size`` and ``--batch`` (input shape,
kernel, stride, padding; found by tracing the model's init), times the jitted gradient of
``sum(conv(x, w) * g)`` with respect to ``x`` and ``w`` -- the work a train step does for that
layer -- once with `jax.lax.conv_general_dilated` and once with
`care_jax.models.convolution.patch_convolution`, and once with
`care_jax.models.convolution.convolution` as the models call it (``care_jax``: both forms staged
out with `jax.lax.platform_dependent`, the lowering keeping the one of the platform), the three
run in turn (`_common.time_alternating`). The table gives the median milliseconds of each
(ratio: xla / patch), the number of such layers in the model, and the form
`care_jax.models.convolution.uses_patch_form` picks for CPU; ``care_jax`` should take the time
of the chosen form. The last line is the model's total over its convolutions, XLA's form / the
chosen forms::

    conv time, xla form / chosen forms: X

With ``--steps`` it times the model's CE and CARE train steps instead, each compiled twice for
this host's backend: as the models build them (both forms staged out) and with the CPU forms
traced in directly (`jax.lax.platform_dependent` replaced by a call of its CPU branch: what a
Python test of `jax.default_backend()` at trace time built before); it says whether XLA compiled
the same program both ways (the same instructions and shapes, the same scratch memory). The last
line::

    CARE step, staged out / traced in: X

Usage::

  .venv/bin/python benchmarks/conv_forms.py --model resnet18 --image-size 64 --batch 32
  .venv/bin/python benchmarks/conv_forms.py --model resnet50 --image-size 224 --batch 16
  .venv/bin/python benchmarks/conv_forms.py --steps --model resnet50 --image-size 224 --batch 16
"""

import argparse
import collections
import contextlib
import hashlib
import re
import statistics
from unittest import mock

import _common
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from care_jax import models
from care_jax import training
from care_jax.models import convolution

FORMS = ('xla', 'patch', 'care_jax')
NHWC = ('NHWC', 'HWIO', 'NHWC')


def model_convolutions(model_name: str, image_size: int, batch: int) -> collections.Counter:
  """(input shape, kernel shape, strides, padding) -> count, for each nn.Conv of the model."""
  found = collections.Counter()

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.Conv) and context.method_name == '__call__':
      x = args[0]
      groups = module.feature_group_count
      kernel = (*module.kernel_size, x.shape[-1] // groups, module.features)
      strides = tuple(module.strides) if module.strides else (1, 1)
      padding = tuple(tuple(p) for p in module.padding)
      found[(tuple(x.shape), kernel, strides, padding, groups)] += 1
    return next_fun(*args, **kwargs)

  model = models.get_model(model_name, num_classes=7)
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return found


def _convolution(form: str, strides, padding, groups: int = 1):
  """One form; for a depthwise convolution (``groups`` = channels) the patch form is
  `convolution.depthwise_convolution` (the sum of the taps' slices)."""
  grouped = dict(dimension_numbers=NHWC, feature_group_count=groups)
  if form == 'patch' and groups > 1:
    return lambda x, w: convolution.depthwise_convolution(x, w, strides, padding)
  if form == 'patch':
    return lambda x, w: convolution.patch_convolution(x, w, strides, padding)
  if form == 'care_jax':
    return lambda x, w: convolution.convolution(x, w, strides, padding, **grouped)
  return lambda x, w: lax.conv_general_dilated(x, w, strides, padding, **grouped)


def _gradient(form: str, strides, padding, groups: int = 1):
  conv = _convolution(form, strides, padding, groups)
  return jax.jit(jax.grad(lambda x, w, g: jnp.sum(conv(x, w) * g), argnums=(0, 1)))


def time_convolution(
  x_shape, kernel, strides, padding, groups: int = 1, *, repeats: int
) -> dict[str, float]:
  """Median seconds of the gradient of one convolution in each of `FORMS`."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape, dtype=np.float32))
  w = jnp.asarray(rng.standard_normal(kernel, dtype=np.float32))
  out = jax.eval_shape(_convolution('xla', strides, padding, groups), x, w)
  g = jnp.asarray(rng.standard_normal(out.shape, dtype=np.float32))
  steps = {}
  for form in FORMS:
    fn = _gradient(form, strides, padding, groups).lower(x, w, g).compile()
    steps[form] = (fn, lambda: (x, w, g))
  timings = _common.time_alternating(steps, repeats=repeats, warmup=1)
  return {form: statistics.median(t.wall) for form, t in timings.items()}


def _cpu_branch(*args, default=None, **per_platform):
  """`jax.lax.platform_dependent` as a trace-time test of the CPU backend was: its CPU branch."""
  del default  # Never taken on CPU.
  return per_platform['cpu'](*args)


def program_signature(compiled) -> str:
  """A hash of the compiled program's instructions (opcode and shape; names and metadata left
  out) and its scratch memory: equal for programs that XLA compiled alike."""
  instructions = collections.Counter(re.findall(r'=\s+(\S+)\s+([a-z][\w-]*)\(', compiled.as_text()))
  temp = compiled.memory_analysis().temp_size_in_bytes
  text = repr((sorted(instructions.items()), temp))
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def time_steps(args) -> None:
  """`--steps`: the train steps with the forms staged out against the CPU forms traced in."""
  model = models.get_model(args.model, num_classes=7)
  state = _common.create_state(model, (args.image_size, args.image_size, 3), seed=0)
  batch = jax.device_put(
    _common.random_batch(
      batch_size=args.batch, image_size=args.image_size, num_classes=7, boxed_fraction=0.33
    )
  )
  steps, signatures = {}, {}
  for name, alpha in (('CE', 0.0), ('CARE', 0.5)):
    for way in ('staged out', 'traced in'):
      # A fresh step function each time: jit would reuse the first trace of the same one.
      step = jax.jit(
        training.make_train_step(model, training.StepConfig(alpha=alpha)), donate_argnums=0
      )
      patch = mock.patch.object(jax.lax, 'platform_dependent', _cpu_branch)
      with patch if way == 'traced in' else contextlib.nullcontext():
        compiled = step.lower(state, batch).compile()
      steps[f'{name}, {way}'] = (compiled, lambda: (jax.tree.map(jnp.copy, state), batch))
      signatures[f'{name}, {way}'] = program_signature(compiled)
  timings = _common.time_alternating(steps, repeats=args.repeats, warmup=1)
  print(
    f'{args.model}, {args.image_size}x{args.image_size}, batch {args.batch}, float32: train '
    f'steps, median of {args.repeats} alternating runs; {_common.environment()}'
  )
  rows = [
    [key, f'{statistics.median(t.wall):.3f}', f'{min(t.wall):.3f}', signatures[key]]
    for key, t in timings.items()
  ]
  print(_common.format_table(['step, CPU forms', 'median s', 'min s', 'program'], rows))
  for name in ('CE', 'CARE'):
    same = signatures[f'{name}, staged out'] == signatures[f'{name}, traced in']
    print(f'{name} step: {"the same" if same else "a different"} compiled program both ways')
  for name in ('CE', 'CARE'):
    medians = [
      statistics.median(timings[f'{name}, {way}'].wall) for way in ('staged out', 'traced in')
    ]
    print(f'{name} step, staged out / traced in: {medians[0] / medians[1]:.3f}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='resnet18', choices=models.MODEL_NAMES)
  parser.add_argument('--image-size', type=int, default=64)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument(
    '--steps', action='store_true', help='time the train steps, forms staged out vs traced in'
  )
  args = parser.parse_args()
  if args.steps:
    time_steps(args)
    return

  rows, totals = [], {'xla': 0.0, 'patch': 0.0, 'chosen': 0.0, 'care_jax': 0.0}
  for (x_shape, kernel, strides, padding, groups), count in model_convolutions(
    args.model, args.image_size, args.batch
  ).items():
    seconds = time_convolution(x_shape, kernel, strides, padding, groups, repeats=args.repeats)
    if groups > 1:
      patch = convolution.DEPTHWISE_TAP_FORM
    else:
      patch = convolution.uses_patch_form(x_shape, kernel, strides, padding, dimension_numbers=NHWC)
    chosen = seconds['patch' if patch else 'xla']
    for form in FORMS:
      totals[form] += count * seconds[form]
    totals['chosen'] += count * chosen
    rows.append(
      [
        f'{x_shape[1]}x{x_shape[2]}x{kernel[2]} -> {kernel[3]}, '
        f'{kernel[0]}x{kernel[1]}/{strides[0]}' + (' dw' if groups > 1 else ''),
        str(count),
        f'{seconds["xla"] * 1e3:.2f}',
        f'{seconds["patch"] * 1e3:.2f}',
        f'{seconds["xla"] / seconds["patch"]:.2f}',
        f'{seconds["care_jax"] * 1e3:.2f}',
        'patch' if patch else 'xla',
      ]
    )
  print(
    f'{args.model}, {args.image_size}x{args.image_size}, batch {args.batch}, float32: gradient '
    f'of each convolution (w.r.t. input and kernel), median of {args.repeats}; '
    f'{_common.environment()}'
  )
  print(
    _common.format_table(
      [
        'input HxWxC -> C_out, kernel/stride',
        'layers',
        'xla ms',
        'patch ms',
        'ratio',
        'care_jax ms',
        'chosen',
      ],
      rows,
    )
  )
  for name, seconds in totals.items():
    print(f'total over the model, {name} form(s): {seconds * 1e3:.1f} ms')
  print(f'conv time, xla form / chosen forms: {totals["xla"] / totals["chosen"]:.3f}')


if __name__ == '__main__':
  main()
