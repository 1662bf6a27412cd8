"""benchmarks/conv_forms.py: a smoke run on ResNet-18, each convolution in its form."""

from tests.helpers import benchmark_scripts as scripts


def test_conv_forms_times_each_convolution_of_the_model_and_prints_the_ratio_last():
  # ResNet-18 at 32x32: layer4's 3x3 convolutions have 1x1 outputs (patch form), the stem and
  # layer1 large ones (XLA's form); 1x1 shortcuts take the patch form.
  lines = scripts.run(
    'conv_forms.py', '--model', 'resnet18', '--image-size', '32', '--batch', '2', '--repeats', '1'
  )
  scripts.ratio(lines[-1], 'conv time, xla form / chosen forms')
  rows = [line.split() for line in lines if line.endswith((' xla', ' patch'))]
  chosen = {' '.join(row[:4]): row[-1] for row in rows}
  assert len(rows) == 11  # The distinct convolutions of ResNet-18.
  assert chosen['32x32x3 -> 64, 7x7/2'] == 'xla'
  assert chosen['1x1x512 -> 512, 3x3/1'] == 'patch'
  assert chosen['4x4x128 -> 256, 1x1/2'] == 'patch'


def test_conv_forms_steps_compiles_the_same_cpu_program_with_the_forms_staged_out():
  # On CPU, `lax.platform_dependent` keeps only the CPU branch: the train steps compile to the
  # program that the CPU forms traced in directly give.
  lines = scripts.run(
    'conv_forms.py',
    '--steps',
    '--model',
    'tiny_cnn',
    '--image-size',
    '16',
    '--batch',
    '2',
    '--repeats',
    '1',
  )
  assert 'CE step: the same compiled program both ways' in lines
  assert 'CARE step: the same compiled program both ways' in lines
  scripts.ratio(lines[-1], 'CARE step, staged out / traced in')
