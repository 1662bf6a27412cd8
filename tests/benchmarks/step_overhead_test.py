"""benchmarks/step_overhead.py: a smoke run."""

from tests.helpers import benchmark_scripts as scripts


def test_step_overhead_runs_and_prints_the_ratio_last():
  lines = scripts.run('step_overhead.py', *scripts.TINY_STEPS)
  scripts.ratio(lines[-1], 'care/ce step time ratio')
  assert any(line.startswith('temp memory (MiB)') for line in lines)
