"""Configs x seeds and their paired comparison: the tables, resuming, refusals."""

import json
import os

import pytest

from care_jax import comparison
from tests.helpers import paths
from tests.helpers import runs


def test_compare_lists_each_seed_and_tests_each_config_against_the_first_paired():
  from scipy import stats  # pylint: disable=g-import-not-at-top

  control, treatment = [0.4, 0.5, 0.3], [0.6, 0.45, 0.7]
  summary = {
    name: {'runs': [{'seed': s, 'rare_recall': v} for s, v in enumerate(values)]}
    for name, values in (('base', control), ('care', treatment))
  }
  text = comparison.format_seeds(summary)
  assert '| 0 | 40.00 | 60.00 |' in text and '| 1 | 50.00 | 45.00 |' in text
  p = stats.ttest_rel(treatment, control).pvalue
  assert f'| care vs base | 3 | +18.33 | {p:.3g} | 2/3 |' in text


@pytest.mark.slow
def test_compare_tabulates_every_config_and_resumes(tmp_path):
  configs = [os.path.join(paths.REPO, 'configs', f'synthetic_{n}.py') for n in ('baseline', 'care')]
  overrides = runs.TINY_DATA + [f'data.dir={tmp_path / "tfds"}']
  workdir = str(tmp_path / 'cmp')
  summary = comparison.compare(configs, [0], workdir, overrides=overrides)
  assert list(summary) == ['synthetic_baseline', 'synthetic_care']
  table = open(os.path.join(workdir, 'summary.md')).read()
  assert '| synthetic_baseline |' in table and '| synthetic_care |' in table
  for name in summary:
    run = json.load(open(os.path.join(workdir, name, 'seed_0', 'metrics.json')))
    assert summary[name]['runs'][0]['rare_recall'] == run['test']['rare_recall']
  # A second call finds the metrics and does not train again.
  mtime = os.path.getmtime(os.path.join(workdir, 'synthetic_care', 'seed_0', 'metrics.json'))
  comparison.compare(configs, [0], workdir, overrides=overrides)
  assert (
    os.path.getmtime(os.path.join(workdir, 'synthetic_care', 'seed_0', 'metrics.json')) == mtime
  )
  # Different settings in the same workdir are refused, naming the key.
  with pytest.raises(ValueError, match=r'care\.lam'):
    comparison.compare(configs, [0], workdir, overrides=overrides + ['care.lam=0.1'])


def test_compare_fails_fast_on_a_missing_config(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.py'):
    comparison.compare(['configs/nope.py'], [0], str(tmp_path))
  with pytest.raises(FileNotFoundError, match="config 'nope' does not exist.*synthetic_care"):
    comparison.compare(['nope'], [0], str(tmp_path))
