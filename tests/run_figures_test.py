"""The figures of trained runs: the titles of the runs, the training log read back."""

import pytest

from care_jax import config as config_lib
from care_jax import run_figures


def test_run_title_says_with_or_without_care_and_alpha():
  config = config_lib.default_config()
  assert run_figures.run_title(config) == 'with CARE (alpha=0.5)'
  config.care.alpha = 0.0
  assert run_figures.run_title(config) == 'without CARE (alpha=0)'
  config.care.alpha = 0.25
  assert run_figures.run_title(config) == 'with CARE (alpha=0.25)'


def test_read_train_log_skips_blank_lines_and_names_a_line_that_is_not_json(tmp_path):
  log = tmp_path / 'train_log.jsonl'
  log.write_text('{"step": 2, "loss": 1.5}\n\n{"step": 4, "loss": 0.5, "care": -0.25}\n\n')
  assert run_figures.read_train_log(str(log)) == [
    {'step': 2, 'loss': 1.5},
    {'step': 4, 'loss': 0.5, 'care': -0.25},
  ]
  log.write_text('{"step": 2}\n{"step": 4\n')
  with pytest.raises(ValueError, match=r'train_log\.jsonl line 2 is not JSON'):
    run_figures.read_train_log(str(log))
