"""Every JSON file a run writes is strict JSON: no NaN, Infinity or -Infinity (which most parsers,
node's JSON.parse among them, reject), ``null`` where a value is undefined."""

import json
import math
import pathlib

import pytest

from care_jax import training
from care_jax.commands import evaluate as evaluate_command
from care_jax.training import outputs
from tests.helpers import runs


def _refuse(constant: str):
  raise ValueError(f'{constant} is not JSON')


def _strict(text: str):
  return json.loads(text, parse_constant=_refuse)


def load_every_json_file(workdir: pathlib.Path) -> dict[str, object]:
  """{path relative to `workdir`: content} of every .json and .jsonl file, parsed strictly."""
  loaded = {}
  for path in sorted(workdir.rglob('*.json*')):
    if path.suffix == '.jsonl':
      loaded[str(path.relative_to(workdir))] = [
        _strict(line) for line in path.read_text().splitlines() if line.strip()
      ]
    elif path.suffix == '.json':
      loaded[str(path.relative_to(workdir))] = _strict(path.read_text())
  return loaded


def test_the_strict_parser_refuses_what_python_writes_by_default():
  with pytest.raises(ValueError, match='-Infinity is not JSON'):
    _strict(json.dumps({'stage1_best_score': -math.inf}))


def test_writers_refuse_a_non_finite_value_instead_of_writing_bad_json():
  with pytest.raises(ValueError, match='not JSON compliant'):
    outputs.dumps({'score': math.nan})


@pytest.mark.slow
def test_every_json_file_of_a_run_and_its_evaluation_is_strict_json(folder_run, tmp_path):
  loaded = load_every_json_file(folder_run.workdir)
  assert {'config.json', 'metrics.json', 'train_log.jsonl'} <= set(loaded)
  _, path = evaluate_command.evaluate(
    str(folder_run.workdir), split='validation', output=str(tmp_path / 'evaluation.json')
  )
  assert _strict(pathlib.Path(path).read_text())['split'] == 'validation'


@pytest.mark.slow
def test_a_stage1_that_ends_before_its_first_validation_writes_a_null_score(tmp_path):
  # Validation every 100 steps, stage 1 capped at half of 6: it ends at step 3, unvalidated.
  config = runs.tiny_config(tmp_path, 'care.protocol=two_stage', 'train.eval_every_steps=100')
  workdir = tmp_path / 'run'
  result = training.train_and_evaluate(config, str(workdir))
  loaded = load_every_json_file(workdir)
  assert {'config.json', 'metrics.json', 'train_log.jsonl'} <= set(loaded)
  stages = loaded['metrics.json']['stages']
  assert stages['stage1_best_step'] is None and stages['stage1_best_score'] is None
  assert stages['stage2_start_step'] == 3
  assert result['stages'] == stages
