"""`care-jax train`: a packaged config by name from any directory, quiet output, usage errors."""

import json
import os

import pytest

from care_jax import config as config_lib
from care_jax import training
from care_jax.commands import train
from tests.helpers import command_line
from tests.helpers import paths


def _run_cli(*args, cwd=paths.REPO, env=None):
  env = env or dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return command_line.run('care_jax.commands.train', *args, cwd=cwd, env=env, timeout=600)


@pytest.mark.slow
def test_cli_trains_a_packaged_config_by_name_from_any_directory_quietly_and_ends_with_the_result(
  care_jax_train_run,
):
  workdir, proc = care_jax_train_run  # tests/helpers/command_line.py: train_synthetic_care
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.load(open(workdir / 'metrics.json'))
  assert metrics['step'] == 6
  # Quiet by default: progress bars, our own lines, warnings; no INFO of the libraries below and
  # no line of TensorFlow's C++ start-up (tests/integration/startup_test.py).
  output = proc.stdout + proc.stderr
  assert 'Downloading' not in output and 'orbax' not in output
  # Lines as `wc -l` counts them (bars redraw with \r): 9 on 2026-12-07: 2 of the dataset's
  # preparation, the 4 result lines, the switch to stage two and, with train.progress=False,
  # the records of steps 3 and 6.
  assert output.count('\n') <= 40, output
  last = proc.stdout.strip().splitlines()[-4:]
  validation, test = metrics['validation'], metrics['test']
  assert last[0].startswith(f'step 6 on validation: MCA {validation["mca"]:.4f}, rare recall ')
  assert f'macro AUROC {validation["macro_auroc"]:.4f}' in last[0]
  scored = metrics['test_checkpoint']
  assert last[1].startswith(f'step {scored["step"]} on test: MCA {test["mca"]:.4f}, rare recall ')
  assert last[1].endswith(
    f'(train.test_checkpoint={scored["which"]!r}; CE + attention loss: care.alpha = 0.7)'
  )
  assert last[2:] == [
    f'predictions: {workdir / "predictions_test.csv"}',
    f'metrics: {workdir / "metrics.json"}',
  ]
  for step in (3, 6):  # The train_log.jsonl records, as log lines.
    assert f'step {step} loss ' in proc.stderr, proc.stderr[-3000:]


def test_cli_rejects_an_unknown_config_key(tmp_path):
  proc = _run_cli(
    '--config=configs/default.py', f'--workdir={tmp_path}', '--config.care.alphaa=0.1'
  )
  assert proc.returncode != 0
  assert 'alphaa' in proc.stderr


def test_cli_rejects_a_wrongly_typed_value(tmp_path):
  proc = _run_cli(
    '--config=configs/default.py', f'--workdir={tmp_path}', '--config.care.alpha=lots'
  )
  assert proc.returncode != 0
  assert 'care.alpha' in proc.stderr


def test_an_unknown_config_name_is_a_usage_error_that_lists_the_names():
  proc = command_line.care_jax('train', '--config=synthetic_cre', '--workdir=unused')
  assert proc.returncode == 2
  (line,) = command_line.error_lines(proc.stderr)
  assert line.startswith("care-jax train: --config: config 'synthetic_cre' does not exist")
  assert 'synthetic_care' in line


@pytest.mark.parametrize(
  'overrides, expected',
  [
    ([], 'CE + attention loss: care.alpha = 0.5'),
    (['care.alpha=0'], 'CE only: care.alpha = 0'),
    (['care.alpha=0', 'task=multilabel'], 'BCE only: care.alpha = 0'),
    (['loss.name=focal'], "loss 'focal' + attention loss: care.alpha = 0.5"),
    (['guidance.method=none'], "CE only: guidance.method = 'none'"),
    (['guidance.method=rrr', 'guidance.weight=10'], 'CE + rrr guidance: guidance.weight = 10'),
  ],
)
def test_the_test_headline_says_what_the_run_minimised(overrides, expected):
  config = config_lib.apply_overrides(config_lib.default_config(), overrides)
  assert train.objective(config) == expected


@pytest.mark.slow
def test_nih_multilabel_trains_from_the_default_config_with_no_other_key(tmp_path):
  # The files of ChestX-ray14 in their real formats (tests/data/nih_chestxray14_test.py).
  from tests.data import nih_chestxray14_test  # pylint: disable=g-import-not-at-top

  nih_chestxray14_test._write_multilabel(tmp_path / 'nih')  # pylint: disable=protected-access
  issue_keys = ['data.name=nih_chestxray14', 'task=multilabel', f'data.dir={tmp_path / "nih"}']
  smoke_size = [
    f'data.cache_dir={tmp_path / "cache"}',
    'data.image_size=16',
    'train.num_steps=2',
    'train.progress=False',
  ]
  config = config_lib.apply_overrides(config_lib.load_config('default'), issue_keys + smoke_size)
  result = training.train_and_evaluate(config, str(tmp_path / 'w'))
  assert result['test']['mean_auroc'] is not None
  saved = json.loads((tmp_path / 'w' / 'config.json').read_text())
  # The 'auto' keys, recorded as the run resolved them from the task.
  assert saved['care']['stage1_metric'] == 'mean_auroc'
  assert saved['data']['nih_chestxray14']['mode'] == 'multilabel'
