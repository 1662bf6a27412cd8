"""Smoke run of benchmarks/input_pipeline.py with tiny settings.

Wall-clock figures are never asserted (the machine is shared): the run must
finish and end with a well-formed ratio line.
"""

from benchmarks_test import _ratio  # pylint: disable=g-importing-member
from benchmarks_test import _run  # pylint: disable=g-importing-member


def test_input_pipeline_benchmark_runs_and_prints_the_ratio_last(tmp_path):
  lines = _run(
    'input_pipeline.py',
    '--model',
    'tiny_cnn',
    '--image-size',
    '32',
    '--batch',
    '4',
    '--steps',
    '2',
    '--repeats',
    '1',
    '--warmup',
    '0',
    '--num-train',
    '10',
    '--data-dir',
    str(tmp_path),
  )
  _ratio(lines[-1], 'pipeline/step throughput ratio')
  assert any(line.startswith('augment on') for line in lines)
  assert any(line.startswith('augment off') for line in lines)
