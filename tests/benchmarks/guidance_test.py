"""benchmarks/guidance.py: a smoke run in this process (two tiny steps), and its method list."""

from care_jax.config import schema
from tests.helpers import benchmark_scripts as scripts

guidance = scripts.import_script('guidance')


def test_guidance_benchmark_prints_a_row_per_method_and_the_ratio_last(capsys):
  assert guidance.main(['--tiny', '--methods', 'ce,gradia', '--warmup', '0']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  scripts.ratio(lines[-1], 'max map-loss/ce step time ratio')
  assert [line.split()[0] for line in lines[3:-1]] == ['ce', 'gradia']
  assert lines[4].split()[-2:] == ['<=', '1.1']  # gradia's target.


def test_guidance_benchmark_times_every_method_of_the_config():
  assert set(guidance.METHODS) == {'ce', *schema.GUIDANCE_METHODS} - {'none'}
