r"""CARE train step: care-jax against the official PyTorch code, in one run.

Five train steps on the same architecture, head, batch (random images, a third of them with a
random box) and image size, all with Adam 1e-4 and alpha 0.5:

* ``ours CE`` / ``ours CARE``: `care_jax.training.make_train_step` with alpha 0 and 0.5, jitted as
  the trainer does (`_common.compile_steps`). For the GAP + linear head the CARE step does one
  forward pass, a closed-form CAM and the loss on the 7x7 grid, no loop over images.
* ``torch CE`` / ``torch CARE official`` / ``torch CARE vectorised``:
  ``benchmarks/torch_care_step.py``, run by the torch venv's Python in a subprocess that waits
  on its stdin between requests, so the two frameworks never compute at the same time. Official:
  the authors' step (extra ``backward(retain_graph=True)`` through the whole network for
  Grad-CAM, a hook on layer4, a Python loop over the boxed images, lam = 1, summed loss);
  vectorised: the same loss with Grad-CAM from ``torch.autograd.grad`` of the head only.

After ``--warmup`` untimed runs of each (ours compile first), ``--repeats`` rounds run the five
steps in turn (`_common.time_alternating`: wall clock up to the end of the step, for torch the
request round trip, under a millisecond). Figures are medians over the rounds. The last line::

    official overhead / our overhead: X

with ``X = (torch official CARE / torch CE) / (ours CARE / ours CE)``.

Ours runs with `care_jax.host_memory.keep_freed_memory` (``CARE_JAX_KEEP_FREED_MEMORY=0``:
without), and by default the torch process gets the same glibc settings through the
environment (``--torch-malloc=same``; ``default`` leaves torch on glibc's defaults): both then
reuse freed memory instead of page-faulting it in at every step.

``--check`` instead compares the losses (and gradients) of the steps on one batch with identical
weights: torch's official and vectorised steps, and our step with the
official code's lam = 1 and summed attention loss, all in float64; the weights and the torch
gradients are read with `care_jax.models.load_pretrained` (linear head only). Exits 1 when they
differ.

Usage::

  .venv/bin/python benchmarks/vs_pytorch.py --model resnet50 --image-size 224 --batch 16 \
      --repeats 10 [--head linear|bn_linear] [--torch-python .torch-venv/bin/python]
  .venv/bin/python benchmarks/vs_pytorch.py --check --model resnet18 --image-size 96 --batch 6

The torch venv (Python 3.11, CPU torch 2.13.0; tests/helpers/torch_venv.py makes the same one)::

  PYENV_VERSION=$(pyenv versions --bare | grep -m1 '^3\.11') python3.11 -m venv .torch-venv
  .torch-venv/bin/pip install torch==2.13.0 'torchvision==0.28.*' safetensors numpy

ConvNeXt and EfficientNet (``--model convnext_tiny``, ``efficientnet_b0``, ...) run torchvision's
own models on the torch side (torchvision in the venv), each side with the architecture's head:
Grad-CAM through the head's VJP on ours, the official hook and extra backward on torch's.

On a GPU, point ``--torch-python`` at a venv with torch's CUDA build: the torch steps then run
on CUDA as ours do. See docs/benchmarks.md for measured figures.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

# Ours and torch share the GPU: JAX must not take 75% of its memory up front.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import _common  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position

from care_jax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position
from care_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from care_jax import training  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
TORCH_SCRIPT = pathlib.Path(__file__).with_name('torch_care_step.py')
TORCH_VENV_HELP = (
  "PYENV_VERSION=$(pyenv versions --bare | grep -m1 '^3\\.11') "
  'python3.11 -m venv .torch-venv && '
  ".torch-venv/bin/pip install torch==2.13.0 'torchvision==0.28.*' safetensors numpy"
)
RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
# torchvision's own ConvNeXt and EfficientNet on the torch side (their own heads on both sides).
CONVNETS = (
  'convnext_tiny',
  'convnext_small',
  'convnext_base',
  *(f'efficientnet_b{i}' for i in range(5)),
)
TORCH_MODELS = RESNETS + CONVNETS
# Row -> (framework, step on that side): `_common.STEPS` for ours, torch_care_step.STEPS.
ROWS = {
  'ours CE': ('jax', 'ce'),
  'ours CARE': ('jax', 'care'),
  'torch CE': ('torch', 'ce'),
  'torch CARE official': ('torch', 'official'),
  'torch CARE vectorised': ('torch', 'vectorised'),
}
TAU = 0.5  # the paper's and the official code's; our StepConfig default
# --check tolerances, both sides in float64 but for our logits (float32 by design) and the torch
# gradients (read back as float32 parameters).
LOSS_RTOL = 1e-6
GRAD_TOL = 1e-6


def _torch_flags(args: argparse.Namespace) -> list[str]:
  return [
    '--model',
    args.model,
    '--head',
    args.head or 'linear',
    '--num-classes',
    str(args.num_classes),
    '--alpha',
    str(args.alpha),
    '--tau',
    str(TAU),
    '--seed',
    str(args.seed),
  ]


class TorchSteps:
  """``torch_care_step.py --serve`` in the torch venv: runs one step per call."""

  def __init__(self, python: pathlib.Path, data: pathlib.Path, args: argparse.Namespace):
    device = 'cuda' if jax.default_backend() == 'gpu' else 'cpu'
    command = [
      str(python),
      str(TORCH_SCRIPT),
      '--serve',
      '--data',
      str(data),
      *_torch_flags(args),
      '--dtype',
      args.dtype,
      '--device',
      device,
      '--warmup',
      '0',
      '--threads',
      str(len(os.sched_getaffinity(0))),
    ]
    env = dict(os.environ)
    if args.torch_malloc == 'same' and _common.KEEPS_FREED_MEMORY:
      env.update(host_memory.ENVIRONMENT)
    self._process = subprocess.Popen(
      command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    self.info = self._reply()

  def _reply(self) -> dict:
    line = self._process.stdout.readline()
    if not line:
      raise RuntimeError(
        f'{TORCH_SCRIPT.name} exited with status {self._process.wait()} '
        '(its error is printed above).'
      )
    return json.loads(line)

  def __call__(self, step: str) -> float:
    """Runs `step` once and waits for it; returns the seconds torch measured inside."""
    self._process.stdin.write(json.dumps({'step': step}) + '\n')
    self._process.stdin.flush()
    return self._reply()['seconds']

  def close(self) -> None:
    self._process.stdin.close()
    self._process.wait()


def overhead_ratio(seconds: dict[str, float]) -> float:
  """(torch official CARE / torch CE) / (ours CARE / ours CE)."""
  official = seconds['torch CARE official'] / seconds['torch CE']
  ours = seconds['ours CARE'] / seconds['ours CE']
  return official / ours


def _torch_malloc(args: argparse.Namespace) -> str:
  if args.torch_malloc == 'same' and _common.KEEPS_FREED_MEMORY:
    return 'as ours (' + ' '.join(f'{k}={v}' for k, v in host_memory.ENVIRONMENT.items()) + ')'
  return "glibc's defaults"


def report(
  times: dict[str, list[float]], *, args: argparse.Namespace, boxed: int, torch_info: dict
) -> str:
  """The table of medians and minimums, the ratios, and the overhead ratio as the last line."""
  medians = {name: statistics.median(t) for name, t in times.items()}
  minimums = {name: min(t) for name, t in times.items()}
  own_ce = {'jax': medians['ours CE'], 'torch': medians['torch CE']}
  rows = [
    [
      name,
      f'{medians[name]:.4f}',
      f'{minimums[name]:.4f}',
      f'{medians[name] / own_ce[framework]:.3f}',
    ]
    for name, (framework, _) in ROWS.items()
  ]
  lines = [
    'CARE train step: care-jax (JAX) vs the official PyTorch code',
    f'{args.model} (head {args.head or "default"}), {args.image_size}x{args.image_size}, '
    f'batch {args.batch} '
    f'({boxed} boxed), {args.dtype}, {args.num_classes} classes, Adam 1e-4, alpha '
    f'{args.alpha}, tau {TAU}',
    f'{_common.environment()}, XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}',
    f'torch {torch_info["torch"]} on {torch_info["device"]}, {torch_info["threads"]} threads, '
    f'glibc malloc settings: {_torch_malloc(args)}',
    f'{args.repeats} alternating rounds after {args.warmup} warm-up runs; seconds per step',
    '',
    _common.format_table(['step', 'median s', 'min s', 'x own CE'], rows),
    '',
    f'our CE step / torch CE step: {medians["ours CE"] / medians["torch CE"]:.3f}',
    f'our CARE step / torch official CARE step: '
    f'{medians["ours CARE"] / medians["torch CARE official"]:.3f}',
    f'torch official CARE / torch vectorised CARE: '
    f'{medians["torch CARE official"] / medians["torch CARE vectorised"]:.3f}',
    f'official overhead / our overhead, from the minimums: {overhead_ratio(minimums):.3f}',
    f'official overhead / our overhead: {overhead_ratio(medians):.3f}',
  ]
  return '\n'.join(lines)


def benchmark(
  args: argparse.Namespace, arrays: dict[str, np.ndarray], data: pathlib.Path
) -> tuple[dict[str, list[float]], dict]:
  """Seconds of each of `ROWS` per round, and the torch side's versions and threads."""
  torch_steps = TorchSteps(args.torch_python, data, args)
  try:
    model = models.get_model(
      args.model, num_classes=args.num_classes, dtype=_common.DTYPES[args.dtype], head=args.head
    )
    state = _common.create_state(model, arrays['image'].shape[1:], seed=args.seed)
    ours = _common.compile_steps(model, state, jax.device_put(arrays), alpha=args.alpha)
    runners = {}
    for name, (framework, step) in ROWS.items():
      runners[name] = (
        (ours.compiled[step], ours.fresh_args)
        if framework == 'jax'
        else (lambda step=step: torch_steps(step), tuple)
      )
    timings = _common.time_alternating(runners, repeats=args.repeats, warmup=args.warmup)
  finally:
    torch_steps.close()
  return {name: timing.wall for name, timing in timings.items()}, torch_steps.info


def check(
  args: argparse.Namespace, arrays: dict[str, np.ndarray], data: pathlib.Path
) -> dict[str, float]:
  """Losses and gradients of ours and torch's CARE steps with identical weights, one batch.

  Both sides in float64: in float32 the first layers' gradients of a randomly initialised
  ResNet differ by about 1% of the largest gradient between torch float32 and torch float64
  already, which would hide any real difference. The weights are float32 values (torch
  initialises in float32), so both sides start from exactly the same ones.
  """
  jax.config.update('jax_enable_x64', True)
  with tempfile.TemporaryDirectory() as out:
    result = subprocess.run(
      [
        str(args.torch_python),
        str(TORCH_SCRIPT),
        '--check',
        '--data',
        str(data),
        *_torch_flags(args),
        '--out',
        out,
      ],
      capture_output=True,
      text=True,
      check=False,
    )
    if result.returncode:
      raise RuntimeError(
        f'{TORCH_SCRIPT.name} --check exited {result.returncode}:\n{result.stderr[-3000:]}'
      )
    torch_check = json.loads(result.stdout.splitlines()[-1])
    model, variables = models.load_pretrained(
      args.model, pathlib.Path(out, 'weights.safetensors'), dtype=jnp.float64
    )
    _, torch_grads = models.load_pretrained(args.model, pathlib.Path(out, 'grads.safetensors'))
  as_float64 = lambda tree: jax.tree.map(
    lambda x: np.asarray(x, np.float64) if np.issubdtype(x.dtype, np.floating) else x, tree
  )
  variables, arrays = as_float64(variables), as_float64(arrays)
  # SGD with learning rate 1 moves the parameters by minus the gradient.
  state = _common.state_from_variables(
    model, variables, tx=optax.sgd(1.0), dropout_key=jax.random.key(args.seed)
  )
  step_config = training.StepConfig(alpha=args.alpha, tau=TAU, lam=1.0, reduction='sum')
  new_state, metrics = jax.jit(training.make_train_step(model, step_config))(state, arrays)
  grads = jax.tree.map(lambda old, new: old - new, state.params, new_state.params)
  diffs = jax.tree.leaves(
    jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), grads, torch_grads['params'])
  )
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(torch_grads['params']))
  return {
    **torch_check,
    'ours_ce_loss': float(metrics['ce']),
    'ours_care_loss': float(metrics['care']),
    'ours_total_loss': float(metrics['loss']),
    'max_grad_diff_ours_vs_vectorised': max(diffs) / scale,
  }


def check_report(result: dict[str, float]) -> tuple[str, bool]:
  """A table of the check's losses, the gradient differences, and whether all agree."""
  rows, ok = [], True
  for name in ('care', 'total'):
    official, vectorised = result[f'official_{name}_loss'], result[f'vectorised_{name}_loss']
    ours = result[f'ours_{name}_loss']
    rows.append([f'{name} loss', f'{ours:.12f}', f'{vectorised:.12f}', f'{official:.12f}'])
    ok &= abs(ours - official) <= LOSS_RTOL * abs(official) and abs(
      vectorised - official
    ) <= LOSS_RTOL * abs(official)
  rows.append(['ce loss', f'{result["ours_ce_loss"]:.12f}', f'{result["ce_loss"]:.12f}', ''])
  ok &= abs(result['ours_ce_loss'] - result['ce_loss']) <= LOSS_RTOL * abs(result['ce_loss'])
  ok &= result['max_grad_diff_ours_vs_vectorised'] <= GRAD_TOL
  ok &= result['max_grad_diff_with_leak'] <= GRAD_TOL
  lines = [
    f"{result['boxed']} boxed images; lam 1, attention loss summed (the official code's)",
    _common.format_table(['float64', 'ours', 'torch vectorised', 'torch official'], rows),
    'max |gradient difference| / max |torch gradient|:',
    f'  ours - torch vectorised: {result["max_grad_diff_ours_vs_vectorised"]:.2e}',
    f'  torch official - vectorised: {result["max_grad_diff_without_leak"]:.2e} (the leak of '
    'its extra backward pass)',
    f'  torch official - vectorised - d(sum target logits)/d(theta): '
    f'{result["max_grad_diff_with_leak"]:.2e}',
    f'check {"passed" if ok else "FAILED"} (losses to {LOSS_RTOL:g} relative, gradients to '
    f'{GRAD_TOL:g})',
  ]
  return '\n'.join(lines), ok


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  _common.add_flags(parser, batch=16, dtype='float32', warmup=2)
  parser.add_argument(
    '--head',
    default=None,
    choices=('linear', 'bn_linear'),
    help="ResNets: 'linear' (the default): GAP + Dense (ours, torchvision's fc); 'bn_linear': "
    "the official code's GAP + BatchNorm1d + Linear. ConvNeXt/EfficientNet: their own heads",
  )
  parser.add_argument(
    '--torch-python',
    type=pathlib.Path,
    default=REPO / '.torch-venv' / 'bin' / 'python',
    help='the Python of a venv with torch, safetensors and numpy',
  )
  parser.add_argument(
    '--torch-malloc',
    default='same',
    choices=('same', 'default'),
    help="'same': the torch process gets the glibc settings that ours runs with "
    "(care_jax.host_memory.ENVIRONMENT), so both reuse freed memory; 'default': glibc's own",
  )
  parser.add_argument(
    '--check',
    action='store_true',
    help='compare losses and gradients with identical weights, in float64, instead of timing',
  )
  parser.add_argument(
    '--json', type=pathlib.Path, help='also write the per-round seconds (or the check) here'
  )
  args = parser.parse_args(argv)
  if args.model not in TORCH_MODELS:
    parser.error(
      f'--model must be one of {", ".join(TORCH_MODELS)} (the torch side), got {args.model!r}'
    )
  if args.model in CONVNETS and args.head is not None:
    parser.error(f'--head: {args.model} keeps its own head on both sides')
  if args.check and args.model in CONVNETS:
    parser.error('--check compares the ResNets (load_pretrained reads their torch weights)')
  if args.check and args.head not in (None, 'linear'):
    parser.error("--check compares the linear head only (load_pretrained reads torchvision's fc)")
  if not args.torch_python.exists():
    sys.exit(f'No torch Python at {args.torch_python}. Create the venv with:\n  {TORCH_VENV_HELP}')

  arrays = _common.random_batch(
    batch_size=args.batch,
    image_size=args.image_size,
    num_classes=args.num_classes,
    boxed_fraction=args.boxed_fraction,
    seed=args.seed,
  )
  with tempfile.TemporaryDirectory() as tmp:
    data = pathlib.Path(tmp, 'batch.npz')
    np.savez(data, **arrays)
    if args.check:
      result = check(args, arrays, data)
    else:
      result, torch_info = benchmark(args, arrays, data)
  if args.json:
    args.json.write_text(json.dumps(result, indent=1))
  if args.check:
    text, ok = check_report(result)
    print(text)
    sys.exit(0 if ok else 1)
  print(report(result, args=args, boxed=int(arrays['has_mask'].sum()), torch_info=torch_info))


if __name__ == '__main__':
  main()
