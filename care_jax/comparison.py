"""Configs x seeds: train each config over several seeds and compare them seed by seed.

:func:`compare` runs every (config, seed) not yet run in ``WORKDIR/<config name>/seed_<s>``
(:func:`run_seeds`: a run whose `metrics.json` exists is loaded, not repeated, so an interrupted
comparison resumes), then tabulates test rare-class recall and MCA (mean ± std over seeds,
:func:`summarize`, :func:`format_table`), each seed's rare recall, and each config against the
first seed by seed (:func:`paired_comparison`: mean difference, paired t-test, seeds won;
:func:`format_seeds`), and writes them to ``WORKDIR/summary.md`` and ``WORKDIR/summary.json``.
``care-jax compare`` is its command; the suites of `care_jax.suites` share these pieces.
"""

from collections.abc import Sequence
import json
import os

from etils import epath
import ml_collections
import numpy as np
from scipy import stats

from care_jax import boxes
from care_jax import config as config_lib
from care_jax import training
from care_jax.training import outputs


def mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
  """Mean and sample standard deviation (ddof=1) of the values that are not None.

  The std is None for fewer than two values (one seed says nothing of the spread).
  """
  values = [v for v in values if v is not None]
  if not values:
    return {'mean': None, 'std': None}
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return {'mean': float(np.mean(values)), 'std': std}


# The metrics of a split that summaries and reports average over seeds (runs
# of 0.1 have no macro_auroc and ece: None; multi-label runs have mean_auroc and
# rare_mean_auroc instead of mca, macro_auroc and ece).
SUMMARY_METRICS = ('rare_recall', 'mca', 'macro_auroc', 'ece', 'mean_auroc', 'rare_mean_auroc')


def summarize(results: dict[str, list[dict]], split: str) -> dict[str, dict]:
  """{config name: {metric: {mean, std} for `SUMMARY_METRICS`, 'runs': [...]}}."""
  summary = {}
  for name, runs in results.items():
    summary[name] = {
      **{m: mean_std([r[split].get(m) for r in runs]) for m in SUMMARY_METRICS},
      'runs': [{'seed': r['seed'], **{m: r[split].get(m) for m in SUMMARY_METRICS}} for r in runs],
    }
  return summary


def format_stat(stat: dict[str, float | None]) -> str:
  """'mean ± std' in % with two decimals ('mean' alone for one seed, 'n/a' for none)."""
  if stat['mean'] is None:
    return 'n/a'
  if stat['std'] is None:
    return f'{100 * stat["mean"]:.2f}'
  return f'{100 * stat["mean"]:.2f} ± {100 * stat["std"]:.2f}'


def format_seeds(summary: dict[str, dict]) -> str:
  """Markdown: each seed's rare recall (%) under every config, and the paired comparisons.

  With two or more configs, the first is the control: every other one is
  compared with it seed by seed (`paired_comparison`).
  """
  names = list(summary)
  rare = {n: {r['seed']: r['rare_recall'] for r in summary[n]['runs']} for n in names}
  seeds = sorted({seed for n in names for seed in rare[n]})
  cell = lambda v: 'n/a' if v is None else f'{100 * v:.2f}'
  lines = ['| seed | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
  lines += [f'| {s} | ' + ' | '.join(cell(rare[n].get(s)) for n in names) + ' |' for s in seeds]
  if len(names) > 1:
    lines += [
      '',
      '| treatment vs control | seeds | mean difference (pp) | p (paired t-test) | wins |',
      '|---|---|---|---|---|',
    ]
    for name in names[1:]:
      paired = paired_comparison(summary[names[0]]['runs'], summary[name]['runs'])
      diff, p = paired['mean_difference'], paired['p_value']
      lines.append(
        f'| {name} vs {names[0]} | {len(paired["seeds"])} | '
        f'{"n/a" if diff is None else f"{100 * diff:+.2f}"} | '
        f'{"n/a" if p is None else f"{p:.3g}"} | {paired["wins"]}/{len(paired["seeds"])} |'
      )
  return '\n'.join(lines)


def format_table(summary: dict[str, dict], split: str) -> str:
  """Markdown: rare recall and MCA per config (multi-label runs: mean and rare-finding AUROC)."""
  multilabel = any(s['mean_auroc']['mean'] is not None for s in summary.values())
  columns = (
    (
      ('rare_recall', 'rare recall'),
      ('mean_auroc', 'mean AUROC'),
      ('rare_mean_auroc', 'rare AUROC'),
    )
    if multilabel
    else (('rare_recall', 'rare recall'), ('mca', 'MCA'))
  )
  lines = [
    '| method | ' + ' | '.join(f'{label} ({split}, %)' for _, label in columns) + ' | seeds |',
    '|---' * (len(columns) + 2) + '|',
  ]
  for name, s in summary.items():
    seeds = ','.join(str(r['seed']) for r in s['runs'])
    cells = ' | '.join(format_stat(s[key]) for key, _ in columns)
    lines.append(f'| {name} | {cells} | {seeds} |')
  return '\n'.join(lines)


def paired_comparison(control: Sequence[dict], treatment: Sequence[dict]) -> dict:
  """Rare-recall difference treatment - control over the seeds both have.

  Returns:
    `{'seeds': [...], 'mean_difference': f | None, 'p_value': f | None,
    'wins': int}`: the mean paired difference, the two-sided paired t-test
    p-value (`scipy.stats.ttest_rel`; None for fewer than 2 seeds or a
    constant difference, where t is undefined) and the number of seeds where
    the treatment's rare recall is strictly higher.
  """
  by_seed = {r['seed']: r['rare_recall'] for r in control}
  seeds, ctrl, treat = [], [], []
  for run in treatment:
    if run['rare_recall'] is not None and by_seed.get(run['seed']) is not None:
      seeds.append(run['seed'])
      ctrl.append(by_seed[run['seed']])
      treat.append(run['rare_recall'])
  diffs = np.asarray(treat, np.float64) - np.asarray(ctrl, np.float64)
  p_value = None
  if diffs.size >= 2 and np.ptp(diffs) > 1e-12:
    p_value = float(stats.ttest_rel(treat, ctrl).pvalue)
  return {
    'seeds': seeds,
    'mean_difference': float(diffs.mean()) if diffs.size else None,
    'p_value': p_value,
    'wins': int(np.sum(diffs > 0)),
  }


def _check_same_config(config: ml_collections.ConfigDict, run_dir: epath.Path) -> None:
  """Refuses to reuse a finished run that was trained with another config."""
  previous = json.loads((run_dir / 'config.json').read_text())
  differ = list(config_lib.differences(previous, config_lib.to_json(config)))
  if differ:
    raise ValueError(
      f'{run_dir} holds a run of another config (keys that differ: '
      f'{differ}); use another --workdir or delete it.'
    )


def run_seeds(
  config: ml_collections.ConfigDict, seeds: Sequence[int], directory: epath.PathLike
) -> list[dict]:
  """Runs `config` once per seed in `directory/seed_<s>` unless already finished.

  A run is finished when its `metrics.json` exists; it is then loaded, not
  repeated, after checking that its `config.json` equals the seeded config
  (ValueError naming the keys that differ otherwise).

  Returns:
    One `{'seed': s, **metrics}` per seed, in the order of `seeds`.
  """
  runs = []
  for seed in seeds:
    run_dir = epath.Path(directory) / f'seed_{seed}'
    metrics_path = run_dir / 'metrics.json'
    # As training saves it: with the recipe's fields filled in.
    seeded = config_lib.resolve_recipe(config)
    seeded.seed = seed
    if metrics_path.exists():
      _check_same_config(seeded, run_dir)
      metrics = json.loads(metrics_path.read_text())
    else:
      metrics = training.train_and_evaluate(seeded, str(run_dir), boxes_fn=boxes.replace_boxes)
    runs.append({'seed': seed, **metrics})
  return runs


def compare(
  config_paths: Sequence[str],
  seeds: Sequence[int],
  workdir: epath.PathLike,
  *,
  overrides: Sequence[str] = (),
  split: str = 'test',
) -> dict[str, dict]:
  """Runs every (config, seed) not yet run and returns the summary."""
  configs = {}
  for path in config_paths:
    name = os.path.splitext(os.path.basename(path))[0]
    config = config_lib.apply_overrides(config_lib.load_config(path), list(overrides))
    config_lib.validate(config)  # Fail before any training, not in the 5th run.
    configs[name] = config
  results = {
    name: run_seeds(config, seeds, epath.Path(workdir) / name) for name, config in configs.items()
  }
  summary = summarize(results, split)
  table = format_table(summary, split) + '\n\n' + format_seeds(summary)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'summary.md').write_text(table + '\n')
  (workdir / 'summary.json').write_text(outputs.dumps(summary, indent=2))
  return summary
