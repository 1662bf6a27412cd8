"""Trains several configurations over several seeds and tabulates them.

    python -m care_jax.compare --workdir=runs/demo \\
        --configs=configs/synthetic_baseline.py,configs/synthetic_care.py --seeds=0,1,2 \\
        [--set=train.num_steps=500 ...]

(also `care-jax compare ...`). Each run goes to `WORKDIR/<config name>/seed_<s>`;
runs whose `metrics.json` exists are not repeated, so an interrupted comparison
resumes. Prints a table of test rare-class recall and MCA (mean ± std over
seeds) and writes it to `WORKDIR/summary.md` and `WORKDIR/summary.json`.
"""

import importlib.util
import json
import os
from collections.abc import Sequence

from absl import app
from absl import flags
import ml_collections
import numpy as np

from care_jax import config as config_lib
from care_jax import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.', required=True)
_CONFIGS = flags.DEFINE_list(
    'configs', ['configs/synthetic_baseline.py', 'configs/synthetic_care.py'],
    'Config files to compare (each defines get_config()).')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds (config.seed) to run each config with.')
_SET = flags.DEFINE_multi_string(
    'set', [], 'key=value override applied to every config, e.g. train.num_steps=200.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split whose metrics are tabulated.')


def load_config(path: str) -> ml_collections.ConfigDict:
  """Calls `get_config()` of a config file given by path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path!r} does not exist')
  spec = importlib.util.spec_from_file_location(
      f'care_jax_config_{os.path.splitext(os.path.basename(path))[0]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
  values = [v for v in values if v is not None]
  if not values:
    return {'mean': None, 'std': None}
  return {'mean': float(np.mean(values)), 'std': float(np.std(values))}


def summarize(results: dict[str, list[dict]], split: str) -> dict[str, dict]:
  """{config name: {'rare_recall': {mean, std}, 'mca': {mean, std}, 'runs': [...]}}."""
  summary = {}
  for name, runs in results.items():
    summary[name] = {
        'rare_recall': _mean_std([r[split]['rare_recall'] for r in runs]),
        'mca': _mean_std([r[split]['mca'] for r in runs]),
        'runs': [{'seed': r['seed'], 'rare_recall': r[split]['rare_recall'],
                  'mca': r[split]['mca']} for r in runs],
    }
  return summary


def format_table(summary: dict[str, dict], split: str) -> str:
  def cell(stat):
    if stat['mean'] is None:
      return 'n/a'
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"

  lines = [f'| method | rare recall ({split}, %) | MCA ({split}, %) | seeds |',
           '|---|---|---|---|']
  for name, s in summary.items():
    seeds = ','.join(str(r['seed']) for r in s['runs'])
    lines.append(f"| {name} | {cell(s['rare_recall'])} | {cell(s['mca'])} | {seeds} |")
  return '\n'.join(lines)


def _check_same_config(config: ml_collections.ConfigDict, run_dir: str) -> None:
  """Refuses to reuse a finished run that was trained with another config."""
  with open(os.path.join(run_dir, 'config.json')) as f:
    previous = json.load(f)
  current = json.loads(config.to_json_best_effort())
  if previous != current:
    flat_prev, flat_cur = _flatten(previous), _flatten(current)
    differ = sorted(k for k in flat_prev.keys() | flat_cur.keys()
                    if flat_prev.get(k) != flat_cur.get(k))
    raise ValueError(f'{run_dir} holds a run of another config (keys that differ: '
                     f'{differ}); use another --workdir or delete it.')


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def compare(config_paths: Sequence[str], seeds: Sequence[int], workdir: str, *,
            overrides: Sequence[str] = (), split: str = 'test') -> dict[str, dict]:
  """Runs every (config, seed) not yet run and returns the summary."""
  configs = {}
  for path in config_paths:
    name = os.path.splitext(os.path.basename(path))[0]
    config = config_lib.apply_overrides(load_config(path), list(overrides))
    config_lib.validate(config)  # Fail before any training, not in the 5th run.
    configs[name] = config
  results = {}
  for name, config in configs.items():
    results[name] = []
    for seed in seeds:
      run_dir = os.path.join(workdir, name, f'seed_{seed}')
      metrics_path = os.path.join(run_dir, 'metrics.json')
      seeded = config.copy_and_resolve_references()
      seeded.seed = seed
      if os.path.exists(metrics_path):
        _check_same_config(seeded, run_dir)
        with open(metrics_path) as f:
          metrics = json.load(f)
      else:
        metrics = train.train_and_evaluate(seeded, run_dir)
      results[name].append({'seed': seed, **metrics})
  summary = summarize(results, split)
  table = format_table(summary, split)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  seeds = [int(s) for s in _SEEDS.value]
  summary = compare(_CONFIGS.value, seeds, _WORKDIR.value, overrides=_SET.value,
                    split=_SPLIT.value)
  print(format_table(summary, _SPLIT.value))


def run():
  app.run(main)


if __name__ == '__main__':
  run()
