"""benchmarks/guidance.py: a smoke run in this process (two tiny steps), its method list, its
peak-memory estimate and its list of missed targets."""

from care_jax.config import schema
from tests.helpers import benchmark_scripts as scripts

guidance = scripts.import_script('guidance')


def test_guidance_benchmark_prints_a_row_per_method_and_the_ratio_last(capsys):
  assert guidance.main(['--tiny', '--methods', 'ce,gradia', '--warmup', '0']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  scripts.ratio(lines[-1], 'max map-loss/ce step time ratio')
  assert lines[-2].startswith('missed targets (step/CE): ')
  assert [line.split()[0] for line in lines[3:-2]] == ['ce', 'gradia']
  assert lines[4].split()[-2:] == ['<=', '1.1']  # gradia's target.
  assert float(lines[3].split()[-2]) > 0  # CE's images/s, after its peak memory in MiB.


def test_guidance_benchmark_times_every_method_of_the_config():
  assert set(guidance.METHODS) == {'ce', *schema.GUIDANCE_METHODS} - {'none'}


def test_peak_memory_counts_arguments_outputs_not_donated_and_temporaries():
  stats = {'argument_bytes': 10, 'output_bytes': 8, 'alias_bytes': 6, 'temp_bytes': 5}
  assert guidance.peak_bytes(stats) == 10 + 8 - 6 + 5
  assert guidance.peak_bytes({**stats, 'temp_bytes': None}) is None


def test_missed_targets_name_the_methods_over_their_family_s_target():
  wall = {'ce': 1.0, 'gradia': 1.05, 'energy': 1.2, 'rrr': 3.5, 'gain': 2.0, 'sgt': 9.0}
  assert guidance.missed_targets(wall) == 'energy 1.20 > 1.1, rrr 3.50 > 3.0'
  assert guidance.missed_targets({'ce': 1.0, 'rrr': 2.9}) == 'none'
