"""Smoke run of benchmarks/input_pipeline.py with tiny settings.

Wall-clock figures are never asserted (the machine is shared): the run must generate and
prepare both datasets in their real formats, time both augmentation paths of each, and end
with the device path's CPU ms per training image of both datasets, well formed.
"""

from PIL import Image

from tests.helpers import benchmark_scripts as scripts


def test_input_pipeline_benchmark_runs_and_prints_cpu_ms_per_image_last(tmp_path):
  lines = scripts.run(
    'input_pipeline.py',
    '--image-size',
    '64',
    '--batch',
    '4',
    '--steps',
    '2',
    '--warmup',
    '1',
    '--per-class',
    '5',
    '--data-dir',
    str(tmp_path),
  )
  for line, name in zip(lines[-2:], ('isic2018', 'nih_chestxray14')):
    scripts.ratio(line, f'{name} CPU ms per training image, augmentation on the device')
  rows = [line.split() for line in lines]
  for name in ('isic2018', 'nih_chestxray14'):
    for mode in ('device', 'host'):
      assert [name, 'on', 'the', mode] in [row[:4] for row in rows], (name, mode)
  # The files are the real formats at their real sizes.
  isic = next((tmp_path / 'isic2018' / 'files').glob('*/ISIC_*.jpg'))
  nih = next((tmp_path / 'nih_chestxray14' / 'files' / 'images').glob('*.png'))
  with Image.open(isic) as image:
    assert (image.format, image.size, image.mode) == ('JPEG', (600, 450), 'RGB')
  with Image.open(nih) as image:
    assert (image.format, image.size, image.mode) == ('PNG', (1024, 1024), 'L')
