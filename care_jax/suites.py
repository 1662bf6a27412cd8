"""The paper's suites of experiments: CARE crossed with the other imbalance methods.

A suite is a set of rows, each a list of config overrides applied on top of a base config
(a row's own overrides win), run for each of several seeds. Suites (`SUITES`):

* `table1`: baseline, CARE, CSL, CARE+CSL, FL, CARE+FL, DA, CARE+DA (paper Table 1);
* `modern`: logit adjustment (trained and post-hoc), balanced softmax,
  LDAM-DRW and class-balanced CE, each with and without CARE, next to the
  baseline and CARE;
* `backbones`: ResNet-18/50/152 and VGG-19, each with and without CARE (Table 2);
* `box_scale`: CARE with the lesion boxes scaled by 0.7 ... 1.3 about their
  centres, and the baseline (Table 3);
* `alpha`: CARE's alpha from 0 (the baseline) to 0.9 (Table 4);
* `smoke`: baseline and CARE (for CI, with a tiny config);
* `guidance`: CE, CARE and every explanation-guidance method of issue 32
  (``guidance.method=<name>``, `GUIDANCE_METHODS`) at the same budget, each paired against
  CE and against CARE; its report adds test accuracy, the attention metrics and the training
  time relative to CE (`GUIDANCE_DATASETS`: the base configs it is meant for).

:func:`run_suite` trains every (row, seed) in-process in `WORKDIR/<row>/seed_<s>`; finished
runs (with `metrics.json`) are loaded, not repeated, so an interrupted suite resumes, and a
finished run of another config is refused (`care_jax.comparison.run_seeds`). Then it writes
`WORKDIR/report.md` (rare-class recall and MCA, mean ± std over seeds, best in bold, the
paper's numbers for `isic2018` and `rsna_pneumonia`, and paired CARE+X vs X comparisons),
`WORKDIR/report.json` and a bar chart `WORKDIR/report.png`. ``care-jax experiments`` is its
command.
"""

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

from absl import logging
from etils import epath
import ml_collections
import numpy as np

from care_jax import comparison
from care_jax import config as config_lib
from care_jax.training import outputs

_BASELINE = ('care.alpha=0.0',)
# The paper's protocol as configs/synthetic_care.py runs it: CE until the
# validation MCA (every 50 steps) stops improving, then CE + attention loss.
_TWO_STAGES = ('care.protocol=two_stage', 'train.eval_every_steps=50')
_CARE = ('care.alpha=0.5', *_TWO_STAGES)  # The paper's alpha.


@dataclasses.dataclass(frozen=True)
class Suite:
  """Rows of one experiment.

  Attributes:
    description: one line for the report.
    rows: row name -> config overrides (`key=value`, as on the command line).
    pairs: (control, treatment) row names compared seed by seed.
  """

  description: str
  rows: dict[str, tuple[str, ...]]
  pairs: tuple[tuple[str, str], ...]
  guidance_report: bool = False


def _with_and_without_care(
  methods: dict[str, tuple[str, ...]],
) -> tuple[dict[str, tuple[str, ...]], tuple[tuple[str, str], ...]]:
  """Rows X (alpha 0) and CARE+X (alpha 0.5) per method, X vs CARE+X pairs."""
  rows, pairs = {}, []
  for name, overrides in methods.items():
    care_name = 'CARE' if name == 'baseline' else f'CARE+{name}'
    rows[name] = (*overrides, *_BASELINE)
    rows[care_name] = (*overrides, *_CARE)
    pairs.append((name, care_name))
  return rows, tuple(pairs)


def _suite(description: str, methods: dict[str, tuple[str, ...]]) -> Suite:
  rows, pairs = _with_and_without_care(methods)
  return Suite(description, rows, pairs)


def _against_baseline(
  description: str, baseline: str, variants: dict[str, tuple[str, ...]]
) -> Suite:
  rows = {baseline: _BASELINE, **variants}
  return Suite(description, rows, tuple((baseline, name) for name in variants))


_TABLE1 = {
  'baseline': (),
  'CSL': ('loss.name=weighted_ce',),
  'FL': ('loss.name=focal',),
  'DA': ('data.augment.enabled=True', 'data.sampling=class_balanced'),
}


_MODERN = {
  'baseline': (),
  'LA': ('loss.name=logit_adjusted',),
  'LA-posthoc': ('loss.posthoc_tau=1.0',),
  'BS': ('loss.name=balanced_softmax',),
  'LDAM-DRW': ('loss.name=ldam_drw',),
  'CB': ('loss.name=class_balanced',),
}


BACKBONES = ('resnet18', 'resnet50', 'resnet152', 'vgg19')


BOX_SCALES = (0.7, 0.9, 1.0, 1.1, 1.3)


ALPHAS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)


SUITES: dict[str, Suite] = {
  'table1': _suite(
    'CARE crossed with CSL, focal loss and data augmentation (paper Table 1)', _TABLE1
  ),
  'modern': _suite(
    'CARE next to logit adjustment, balanced softmax, LDAM-DRW and class-balanced CE', _MODERN
  ),
  'backbones': _suite(
    'Backbones with and without CARE (paper Table 2)', {m: (f'model.name={m}',) for m in BACKBONES}
  ),
  'box_scale': _against_baseline(
    'CARE with boxes scaled about their centres (paper Table 3)',
    'baseline',
    {f'CARE-box{s}': (*_CARE, f'data.box_scale={s}') for s in BOX_SCALES},
  ),
  'alpha': _against_baseline(
    "CARE's alpha, the weight of the attention loss (paper Table 4)",
    'alpha_0.0',
    {f'alpha_{a}': (f'care.alpha={a}', *_TWO_STAGES) for a in ALPHAS if a > 0},
  ),
  'smoke': _suite('Baseline and CARE (CI smoke test)', {'baseline': ()}),
}


# Row name -> `guidance.method` of the methods beside CARE (issue 32): the map losses of
# `care_jax.guidance_losses` and the losses that need a second pass (RRR, GAIN, SGT, ActDiff).
GUIDANCE_METHODS = {
  'GRADIA': 'gradia',
  'HAICS': 'haics',
  'Energy': 'energy',
  'RRR-G': 'rrr_g',
  'HINT': 'hint',
  'RES': 'res',
  'RRR': 'rrr',
  'GAIN': 'gain',
  'SGT': 'sgt',
  'ActDiff': 'actdiff',
}

# The base configs the guidance suite is run on, one run of the suite each: name -> (packaged
# config, overrides) for ``care-jax experiments --suite=guidance --config=<config> <overrides>``.
GUIDANCE_DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
  'synthetic_lesions': ('synthetic_baseline', ()),
  'synthetic_multilabel': ('synthetic_multilabel_baseline', ()),
  # Ross et al.'s MLP on the pixels: the tiny CNN does not take the decoy shortcut.
  'decoy_digits': ('decoy_digits_mlp', ()),
  'decoy_digits_swapped': ('decoy_digits_mlp', ('data.decoy_digits.swapped=True',)),
}


def _guidance_suite() -> Suite:
  """CE, CARE (its alpha at the base config's protocol) and every method, same budget."""
  rows = {'CE': _BASELINE, 'CARE': ('care.alpha=0.5',)}
  rows.update({name: (f'guidance.method={m}',) for name, m in GUIDANCE_METHODS.items()})
  pairs = [('CE', 'CARE')]
  pairs += [(control, name) for name in GUIDANCE_METHODS for control in ('CE', 'CARE')]
  return Suite(
    'CE, CARE and the explanation-guidance methods at the same budget (issue 32)',
    rows,
    tuple(pairs),
    guidance_report=True,
  )


SUITES['guidance'] = _guidance_suite()


# The paper's own numbers (Zhuang et al., MIDL 2019, Table 1): row -> (rare-class
# recall %, MCA %).
PAPER_RESULTS: dict[str, dict[str, tuple[float, float]]] = {
  'rsna_pneumonia': {
    'baseline': (7.41, 56.77),
    'CARE': (31.12, 63.29),
    'CSL': (11.11, 57.88),
    'CARE+CSL': (45.04, 65.23),
    'FL': (11.14, 58.41),
    'CARE+FL': (49.44, 66.72),
    'DA': (20.06, 59.64),
    'CARE+DA': (45.18, 65.97),
  },
  'isic2018': {
    'baseline': (47.83, 75.75),
    'CARE': (52.17, 76.16),
    'CSL': (61.91, 80.21),
    'CARE+CSL': (65.22, 81.00),
    'FL': (38.30, 72.72),
    'CARE+FL': (40.28, 74.06),
    'DA': (56.62, 54.41),
    'CARE+DA': (60.32, 56.22),
  },
}


_METRICS = (('rare_recall', 'rare recall'), ('mca', 'MCA'))


def select_rows(suite_name: str, rows: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
  """The rows of a suite (all, or those named, in the suite's order)."""
  if suite_name not in SUITES:
    raise ValueError(f'unknown suite {suite_name!r}; suites: {", ".join(SUITES)}')
  suite_rows = SUITES[suite_name].rows
  if not rows:
    return dict(suite_rows)
  unknown = [r for r in rows if r not in suite_rows]
  if unknown:
    raise ValueError(
      f'suite {suite_name!r} has no rows {unknown}; its rows: {", ".join(suite_rows)}'
    )
  return {name: overrides for name, overrides in suite_rows.items() if name in rows}


def row_configs(
  base_config: ml_collections.ConfigDict,
  rows: dict[str, tuple[str, ...]],
  *,
  pretrained: dict[str, str] | None = None,
) -> dict[str, ml_collections.ConfigDict]:
  """Row name -> validated config: `base_config` with the row's overrides.

  `pretrained` maps a model name to a local weights file, set as
  `model.pretrained` in the rows that use that model (the `backbones` suite
  needs one file per architecture). All rows are validated before any
  training, so a bad row fails at once (ValueError/KeyError naming it).
  """
  configs = {}
  for name, overrides in rows.items():
    try:
      config = config_lib.apply_overrides(base_config, list(overrides))
      if pretrained and config.model.name in pretrained:
        config.model.pretrained = pretrained[config.model.name]
      config_lib.validate(config)
    except (KeyError, ValueError) as e:
      raise type(e)(f'row {name!r} (overrides {list(overrides)}): {e}') from e
    configs[name] = config
  return configs


def build_report(
  suite_name: str,
  rows: dict[str, tuple[str, ...]],
  results: dict[str, list[dict]],
  *,
  dataset: str,
  split: str = 'test',
) -> dict:
  """The JSON-ready report of finished runs (`results`: row -> [{'seed', **metrics}])."""
  summary = comparison.summarize(results, split)
  paper = PAPER_RESULTS.get(dataset, {})
  report_rows = {}
  for name, overrides in rows.items():
    published = paper.get(name)
    report_rows[name] = {
      **summary[name],
      'overrides': list(overrides),
      'paper': None
      if published is None
      else {'rare_recall': published[0] / 100, 'mca': published[1] / 100},
    }
  pairs = [
    {
      'control': c,
      'treatment': t,
      **comparison.paired_comparison(summary[c]['runs'], summary[t]['runs']),
    }
    for c, t in SUITES[suite_name].pairs
    if c in rows and t in rows
  ]
  seeds = sorted({r['seed'] for runs in results.values() for r in runs})
  report = {
    'suite': suite_name,
    'description': SUITES[suite_name].description,
    'dataset': dataset,
    'split': split,
    'seeds': seeds,
    'rows': report_rows,
    'pairs': pairs,
  }
  if SUITES[suite_name].guidance_report:
    report['guidance'] = guidance_summary(results, split, pairs=SUITES[suite_name].pairs)
  return report


# The guidance report's metrics: name -> path in a run's split metrics (`metrics.json`).
GUIDANCE_METRICS = {
  'accuracy': ('accuracy',),
  'mca': ('mca',),
  'rare_recall': ('rare_recall',),
  'energy_in_box': ('attention', 'energy_in_box'),
  'pointing_game': ('attention', 'pointing_game'),
  'iou': ('attention', 'iou'),
}
# Runs written before the evaluation recorded the energy of the unnormalised map: the mass inside
# the box of the min-max map, which is that map's energy.
_FALLBACKS = {('attention', 'energy_in_box'): ('attention', 'mass_inside')}


def _metric(run: dict, split: str, path: tuple[str, ...]) -> float | None:
  value = run.get(split, {})
  for key in path:
    value = value.get(key) if isinstance(value, dict) else None
  if value is None and path in _FALLBACKS:
    return _metric(run, split, _FALLBACKS[path])
  return value


def guidance_summary(
  results: dict[str, list[dict]], split: str, *, pairs: Sequence[tuple[str, str]]
) -> dict:
  """The guidance suite's extra report: per row the `GUIDANCE_METRICS` (mean ± std), the
  training time and the train step's memory over the first row's (CE), and per pair the paired
  accuracy differences.

  The time is ``train_seconds`` of `metrics.json` (training with its evaluations; every row
  evaluates on the same schedule), the memory ``train_step_memory.temp_bytes`` (XLA's
  temporaries of the compiled step per device: `care_jax.training.loop.step_memory`); each
  mean over seeds, divided by the first row's mean (None where no run of a row has it).
  """
  time_over_ce = _over_first(results, lambda run: run.get('train_seconds'))
  memory_over_ce = _over_first(
    results, lambda run: (run.get('train_step_memory') or {}).get('temp_bytes')
  )
  rows = {}
  for name, runs in results.items():
    rows[name] = {
      m: comparison.mean_std([_metric(r, split, p) for r in runs])
      for m, p in GUIDANCE_METRICS.items()
    }
    rows[name]['time_over_ce'] = time_over_ce[name]
    rows[name]['memory_over_ce'] = memory_over_ce[name]
    rows[name]['seeds'] = sum(_metric(r, split, ('accuracy',)) is not None for r in runs)
  accuracy = {
    n: [{'seed': r['seed'], 'rare_recall': _metric(r, split, ('accuracy',))} for r in runs]
    for n, runs in results.items()
  }
  paired = [
    {'control': c, 'treatment': t, **comparison.paired_comparison(accuracy[c], accuracy[t])}
    for c, t in pairs
    if c in results and t in results
  ]
  return {'rows': rows, 'accuracy_pairs': paired}


def _over_first(results: dict[str, list[dict]], value: Callable[[dict], Any]) -> dict:
  """Per row, the mean of ``value(run)`` over its runs divided by the first row's mean.

  Runs without a value (None: runs of earlier versions) are left out; None for a row where no
  run has one, or where the first row has none.
  """
  means = {n: comparison.mean_std([value(r) for r in runs])['mean'] for n, runs in results.items()}
  reference = next(iter(means.values()), None)
  return {n: None if not (mean and reference) else mean / reference for n, mean in means.items()}


def _best(report_rows: dict, metric: str) -> set[str]:
  """Rows whose mean (at the shown precision) is the highest."""
  shown = {
    name: round(100 * row[metric]['mean'], 2)
    for name, row in report_rows.items()
    if row[metric]['mean'] is not None
  }
  top = max(shown.values(), default=None)
  return {name for name, value in shown.items() if value == top}


def format_report(report: dict) -> str:
  """Markdown: the results table, the paired comparisons and the rows' overrides."""
  with_paper = any(row['paper'] for row in report['rows'].values())
  lines = [
    f'# Suite `{report["suite"]}` on `{report["dataset"]}`',
    '',
    f'{report["description"]}. Split `{report["split"]}`, seeds '
    f'{", ".join(map(str, report["seeds"]))}. '
    'Rare-class recall and MCA (mean class accuracy) in %: mean ± sample standard '
    'deviation over seeds; the best mean in bold.'
    + (
      ' Paper: the numbers published by Zhuang et al. (MIDL 2019, Table 1).' if with_paper else ''
    ),
    '',
    *_results_table(report['rows'], report['split'], with_paper=with_paper),
    *_guidance_section(report.get('guidance'), report['split']),
    *_pairs_section(report['pairs']),
    '',
    '## Rows',
    '',
    '| method | overrides |',
    '|---|---|',
  ]
  for name, row in report['rows'].items():
    overrides = ', '.join(f'`{o}`' for o in row['overrides']) or '(base config)'
    lines.append(f'| {name} | {overrides} |')
  return '\n'.join(lines) + '\n'


def _results_table(rows: dict, split: str, *, with_paper: bool) -> list[str]:
  """The lines of the report's results table: one row per suite row."""
  best = {metric: _best(rows, metric) for metric, _ in _METRICS}
  # Macro AUROC and ECE, when the runs scored them (care-jax >= 0.2).
  scored = [
    m
    for m in ('macro_auroc', 'ece')
    if any(r.get(m, {}).get('mean') is not None for r in rows.values())
  ]
  header = ['method', f'rare recall ({split}, %)', f'MCA ({split}, %)']
  header += [
    {'macro_auroc': f'macro AUROC ({split}, %)', 'ece': f'ECE ({split}, %)'}[m] for m in scored
  ]
  if with_paper:
    header += ['paper rare recall (%)', 'paper MCA (%)']
  lines = ['| ' + ' | '.join(header + ['seeds']) + ' |', '|' + '---|' * (len(header) + 1)]
  for name, row in rows.items():
    cells = [name]
    for metric, _ in _METRICS:
      text = comparison.format_stat(row[metric])
      cells.append(f'**{text}**' if name in best[metric] else text)
    cells += [comparison.format_stat(row.get(m, {'mean': None})) for m in scored]
    if with_paper:
      paper = row['paper']
      cells += (
        ['–', '–'] if paper is None else [f'{100 * paper[metric]:.2f}' for metric, _ in _METRICS]
      )
    cells.append(str(sum(r['rare_recall'] is not None for r in row['runs'])))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def _guidance_section(guidance: dict | None, split: str) -> list[str]:
  """The guidance suite's table (accuracy, attention, time over CE) and accuracy pairs."""
  if guidance is None:
    return []
  lines = [
    '',
    f'## Accuracy, attention and cost ({split})',
    '',
    'Accuracy, MCA and rare recall in %; energy in the box (the share of the positive part of'
    " the true class's unnormalised Grad-CAM map inside the ground-truth box, Rao et al. 2023;"
    ' runs of earlier versions: the mass inside of the min-max map), pointing game and IoU of'
    ' the map thresholded at half its maximum'
    ' (`care_jax.metrics.attention_metrics`) in %; time: training time (with evaluations)'
    " over the first row's; memory: the train step's temporary memory per device (XLA's"
    " estimate of the compiled step: activations, gradients) over the first row's, n/a for"
    ' runs of earlier versions; both mean over seeds.',
    '',
    '| method | ' + ' | '.join(_GUIDANCE_HEADERS) + ' | time / CE | memory / CE | seeds |',
    '|' + '---|' * (len(_GUIDANCE_HEADERS) + 4),
  ]
  for name, row in guidance['rows'].items():
    cells = [comparison.format_stat(row[m]) for m in GUIDANCE_METRICS]
    cells += [
      'n/a' if row.get(key) is None else f'{row[key]:.2f}x'
      for key in ('time_over_ce', 'memory_over_ce')
    ]
    lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {row["seeds"]} |')
  return lines + _pairs_section(guidance['accuracy_pairs'], metric='accuracy')


_GUIDANCE_HEADERS = ('accuracy', 'MCA', 'rare recall', 'energy in box', 'pointing game', 'IoU')


def _pairs_section(pairs: list[dict], *, metric: str = 'rare-class recall') -> list[str]:
  """The lines of the report's paired comparisons of ``metric`` (none without pairs)."""
  if not pairs:
    return []
  lines = [
    '',
    f'## Paired comparisons ({metric}, same seeds)',
    '',
    'Difference treatment − control in percentage points, averaged over the seeds both '
    'rows ran; p: two-sided paired t-test (`scipy.stats.ttest_rel`), n/a for one seed or '
    'a constant difference; wins: seeds where the treatment has the higher '
    + ('rare recall' if metric == 'rare-class recall' else metric)
    + '.',
    '',
    '| treatment vs control | seeds | mean difference (pp) | p | wins |',
    '|---|---|---|---|---|',
  ]
  for pair in pairs:
    diff, p_value, n = pair['mean_difference'], pair['p_value'], len(pair['seeds'])
    diff = 'n/a' if diff is None else f'{100 * diff:+.2f}'
    p_value = 'n/a' if p_value is None else f'{p_value:.3g}'
    lines.append(
      f'| {pair["treatment"]} vs {pair["control"]} | {n} | {diff} | {p_value} | '
      f'{pair["wins"]}/{n} |'
    )
  return lines


def plot_report(report: dict, path: epath.PathLike) -> None:
  """Bar chart of rare recall and MCA per row (std error bars, paper values as markers)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  names = list(report['rows'])
  x = np.arange(len(names))
  width = 0.38
  fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
  for i, (metric, label) in enumerate(_METRICS):
    row_stats = [report['rows'][n][metric] for n in names]
    means = [100 * (s['mean'] or 0.0) for s in row_stats]
    errors = [100 * (s['std'] or 0.0) for s in row_stats]
    offset = (i - 0.5) * width
    ax.bar(x + offset, means, width, yerr=errors, capsize=3, label=label)
    paper = [
      (j, 100 * report['rows'][n]['paper'][metric])
      for j, n in enumerate(names)
      if report['rows'][n]['paper']
    ]
    if paper:
      ax.scatter(
        [j + offset for j, _ in paper],
        [v for _, v in paper],
        marker='x',
        color='black',
        zorder=3,
        label=f'paper {label}',
      )
  ax.set_xticks(x, names, rotation=30, ha='right')
  ax.set_ylabel(f'{report["split"]} split (%)')
  ax.set_ylim(0, 100)
  ax.set_title(
    f'{report["suite"]} on {report["dataset"]} '
    f'({len(report["seeds"])} seed{"s" if len(report["seeds"]) > 1 else ""})'
  )
  ax.legend(fontsize='small')
  fig.tight_layout()
  with epath.Path(path).open('wb') as f:  # matplotlib would write a gs:// name locally
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)


def write_report(report: dict, workdir: epath.PathLike) -> None:
  """`workdir/report.md`, `report.json` and `report.png`."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'report.md').write_text(format_report(report))
  (workdir / 'report.json').write_text(outputs.dumps(report, indent=2))
  plot_report(report, workdir / 'report.png')


def run_suite(
  suite_name: str,
  base_config: ml_collections.ConfigDict,
  seeds: Sequence[int],
  workdir: str,
  *,
  rows: Sequence[str] | None = None,
  split: str = 'test',
  pretrained: dict[str, str] | None = None,
) -> dict:
  """Runs every (row, seed) not yet finished, writes the report and returns it.

  Args:
    suite_name: a key of `SUITES`.
    base_config: the config every row starts from.
    seeds: `config.seed` of each run.
    workdir: runs go to `workdir/<row>/seed_<s>`, the report to `workdir/report.*`.
    rows: optional subset of the suite's rows.
    split: the split whose metrics are reported ('test' or 'validation').
    pretrained: optional model name -> local weights file.
  """
  selected = select_rows(suite_name, rows)
  configs = row_configs(base_config, selected, pretrained=pretrained)
  results = {}
  for name, config in configs.items():
    logging.info('suite %s: row %s, seeds %s', suite_name, name, list(seeds))
    results[name] = comparison.run_seeds(config, seeds, epath.Path(workdir) / name)
  report = build_report(suite_name, selected, results, dataset=base_config.data.name, split=split)
  write_report(report, workdir)
  return report
