"""benchmarks/gpu.py: a smoke run on the CPU, and the scripts it needs import no TensorFlow."""

import subprocess
import sys

from tests.helpers import benchmark_scripts as scripts


def test_gpu_benchmark_runs_on_cpu_and_prints_the_ratio_last():
  lines = scripts.run('gpu.py', *scripts.TINY_STEPS, '--matmul-size', '256')
  scripts.ratio(lines[-1], 'care/ce images/s ratio')
  assert any(line.startswith('achieved TFLOP/s') for line in lines)


def test_benchmarks_import_no_tensorflow():
  # gpu.py must run on accelerator images that have no TensorFlow.
  code = (
    'import sys; sys.path.insert(0, sys.argv[1]); import conv_forms, gpu, step_overhead; '
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
    "('tensorflow', 'tensorflow_datasets', 'torch')); "
    'assert not bad, bad'
  )
  subprocess.run([sys.executable, '-c', code, str(scripts.BENCHMARKS)], check=True, timeout=120)
