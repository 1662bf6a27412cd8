"""benchmarks/gpu.py: a CPU smoke run with TensorFlow, matplotlib, scipy and tqdm blocked."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from tests.helpers import benchmark_scripts as scripts

# Runs benchmarks/gpu.py with these packages made unimportable, as on a GPU image without them.
BLOCKED = ('tensorflow', 'tensorflow_datasets', 'matplotlib', 'scipy', 'tqdm', 'torch')
_BLOCKING_RUN = """
import runpy, sys
# None in sys.modules: `import` fails and importlib.util.find_spec answers None, as for a
# package that is not installed.
for name in sys.argv[1].split(','):
  sys.modules[name] = None
sys.path.insert(0, sys.argv[2])
sys.argv = [sys.argv[2] + '/gpu.py', *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name='__main__')
"""
LINES = (
  'mesh/ce',
  'mesh/care',
  'mesh/care+h2d',
  'mesh/care+aug',
  'augment',
  'pmap/ce',
  'pmap/care',
)


@pytest.mark.slow
def test_runs_on_cpu_without_tensorflow_and_writes_every_line_to_json(tmp_path):
  out = tmp_path / 'gpu.json'
  # The tiny CNN: the script's lines, not a big model's compile, are under test.
  args = ['--model', 'tiny_cnn', '--image-size', '32', '--batch', '8', '--repeats', '2']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # One CPU device, as a user would run it.
  proc = subprocess.run(
    [sys.executable, '-c', _BLOCKING_RUN, ','.join(BLOCKED), str(scripts.BENCHMARKS)]
    + [*args, '--warmup', '1', '--matmul-size', '256', '--json', str(out)],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  scripts.ratio(lines[-1], 'care/ce images/s ratio')
  assert any(line.startswith('mesh: achieved TFLOP/s (lowered)') for line in lines)
  results = json.loads(out.read_text())
  assert results['environment']['backend'] == 'cpu'
  for name in LINES:
    assert name in results, name
  for name in ('mesh/ce', 'mesh/care', 'mesh/care+aug', 'pmap/ce', 'pmap/care'):
    assert results[name]['images_per_s'] > 0 and results[name]['gflop_lowered'] > 0, name
  # The CARE step does the CE step's work and more.
  assert results['mesh/care']['gflop_lowered'] > results['mesh/ce']['gflop_lowered']
  assert results['augment']['alone_s'] > 0
  assert set(results['summary']) >= {'mesh', 'pmap'}


def test_results_are_on_disk_after_each_line(tmp_path):
  gpu = scripts.import_script('gpu')
  results = gpu.Results(str(tmp_path / 'r.json'))
  results.add('first', {'x': 1})
  assert json.loads((tmp_path / 'r.json').read_text()) == {'first': {'x': 1}}
  results.add('second', 2)
  assert json.loads((tmp_path / 'r.json').read_text()) == {'first': {'x': 1}, 'second': 2}
  assert not (tmp_path / 'r.json.partial').exists()


def test_a_failing_line_is_written_as_an_error_and_the_run_goes_on(tmp_path, capsys):
  gpu = scripts.import_script('gpu')
  results = gpu.Results(str(tmp_path / 'r.json'))

  def out_of_memory():
    raise RuntimeError('RESOURCE_EXHAUSTED: out of memory')

  assert gpu.attempt(results, 'mesh/care', out_of_memory) is None
  assert gpu.attempt(results, 'mesh/ce', lambda: 3) == 3
  written = json.loads((tmp_path / 'r.json').read_text())
  assert written == {'mesh/care': {'error': 'RuntimeError: RESOURCE_EXHAUSTED: out of memory'}}
  # Without both steps of some back-end there is no ratio line, and the run fails.
  assert gpu.finish(results, {'mesh': {'ce': {}}}, peak=1.0, args=None) == 1
  assert 'ratio' not in capsys.readouterr().out


@pytest.mark.slow
def test_lowered_flops_of_a_resnet50_step_match_the_analytic_count():
  # 24.6 GFLOP per 224x224 training image; the compiled count is not trusted on GPU.
  gpu = scripts.import_script('gpu')
  common = scripts.import_script('_common')
  from care_jax import models  # pylint: disable=g-import-not-at-top
  from care_jax import training  # pylint: disable=g-import-not-at-top

  model = models.get_model('resnet50', num_classes=7, dtype=jnp.bfloat16)
  state = jax.eval_shape(lambda: common.create_state(model, (224, 224, 3), seed=0))
  host = common.random_batch(batch_size=2, image_size=224, num_classes=7, boxed_fraction=0.5)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)
  step = jax.jit(training.make_train_step(model, training.StepConfig(alpha=0.0)))
  flops = gpu.lowered_flops(step.lower(state, batch))
  assert flops / gpu.analytic_flops('resnet50', 224, 2) == pytest.approx(1.0, abs=0.05)


def test_analytic_flops_scale_with_pixels_and_batch_and_are_none_for_other_models():
  gpu = scripts.import_script('gpu')
  assert gpu.analytic_flops('resnet50', 448, 2) == pytest.approx(4 * 2 * 24.6e9)
  assert gpu.analytic_flops('resnet18', 224, 2) is None


def test_rejects_an_unknown_backend():
  gpu = scripts.import_script('gpu')
  with pytest.raises(SystemExit):
    gpu.parse_args(['--backends', 'mesh,tpu'])


def test_benchmarks_import_no_tensorflow():
  # The step benchmarks must run on accelerator images that have no TensorFlow.
  code = (
    'import sys; sys.path.insert(0, sys.argv[1]); import conv_forms, gpu, step_overhead; '
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
    "('tensorflow', 'tensorflow_datasets', 'torch')); "
    'assert not bad, bad'
  )
  subprocess.run([sys.executable, '-c', code, str(scripts.BENCHMARKS)], check=True, timeout=120)
