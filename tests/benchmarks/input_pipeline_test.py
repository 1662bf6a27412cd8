"""Smoke run of benchmarks/input_pipeline.py with tiny settings.

Wall-clock figures are never asserted (the machine is shared): the run must
finish and end with the throughput ratio and the CPU ms per image of both
augmentation modes, well formed.
"""

from tests.helpers import benchmark_scripts as scripts


def test_input_pipeline_benchmark_runs_and_prints_cpu_ms_per_image_last(tmp_path):
  lines = scripts.run(
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
  scripts.ratio(lines[-3], 'pipeline/step throughput ratio')
  scripts.ratio(lines[-2], 'CPU ms per image, augmentation on the host')
  scripts.ratio(lines[-1], 'CPU ms per image, augmentation on the device')
  for mode in ('augment on ', 'augment off', 'augment on the device'):
    assert any(line.startswith(mode) for line in lines), mode
