"""The `care-jax` dispatcher: help, version, the packaged configs, each command's help, usage."""

import os
import subprocess
import sys

import pytest

import care_jax
from care_jax import config as config_lib
from care_jax.commands import cli
from tests.helpers import command_line
from tests.helpers import paths


@pytest.mark.parametrize('flag', ['--help', '-h', 'help'])
def test_help_lists_every_command_and_exits_0(flag):
  proc = command_line.care_jax(flag)
  assert proc.returncode == 0, proc.stderr
  for command, (_, what) in cli.COMMANDS.items():
    assert f'  {command} ' in proc.stdout and what in proc.stdout


def test_version_is_the_package_version():
  proc = command_line.care_jax('--version')
  assert proc.returncode == 0
  assert proc.stdout == f'care-jax {care_jax.__version__}\n'


def test_configs_lists_every_packaged_config_with_its_summary():
  proc = command_line.care_jax('configs')
  assert proc.returncode == 0, proc.stderr
  names = sorted(f[:-3] for f in os.listdir(config_lib.CONFIGS_DIR) if f.endswith('.py'))
  names.remove('__init__')
  listed = [line.split()[0] for line in proc.stdout.splitlines()]
  assert listed == names and 'synthetic_care' in names
  assert 'two stages' in next(
    line for line in proc.stdout.splitlines() if 'synthetic_care ' in line
  )


def test_configs_name_prints_the_docstring_and_every_key_as_a_run_of_it_uses_it():
  lines = cli.config_lines('synthetic_multilabel_baseline')
  assert lines[0].startswith('Multi-label baseline on `synthetic_multilabel`')
  assert any(
    line.startswith('care-jax train --config=synthetic_multilabel_baseline') for line in lines
  )
  keys = dict(line.split(' = ', 1) for line in lines if ' = ' in line and not line.startswith('#'))
  assert keys['task'] == "'multilabel'"
  # The 'auto' keys resolved from the task, the recipe's rate filled in.
  assert keys['care.stage1_metric'] == "'mean_auroc'" and keys['train.learning_rate'] == '0.001'
  assert set(keys) >= set(config_lib.flatten(config_lib.to_json(config_lib.default_config())))


def test_configs_with_an_unknown_name_is_one_line_and_exit_status_2(monkeypatch, capsys):
  monkeypatch.setattr(sys, 'argv', ['care-jax', 'configs', 'synthetic_cre'])
  with pytest.raises(SystemExit) as exit_info:
    cli.main()
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("care-jax configs: config 'synthetic_cre' does not exist; the")
  assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
  'command, flag, source',
  [
    ('train', '--workdir', 'care_jax/commands/train.py'),
    ('compare', '--workdir', 'care_jax/commands/compare.py'),
    ('experiments', '--suite', 'care_jax/commands/experiments.py'),
    ('visualize', '--num_images', 'care_jax/commands/visualize.py'),
    ('boxes', '--method', 'care_jax/commands/boxes.py'),
    ('predict', '--attention_dir', 'care_jax/commands/predict.py'),
    ('evaluate', '--split', 'care_jax/commands/evaluate.py'),
    ('export', '--platforms', 'care_jax/commands/export.py'),
  ],
)
def test_care_jax_command_help_shows_the_subcommands_flags_and_exits_0(command, flag, source):
  proc = subprocess.run(
    [sys.executable, '-m', 'care_jax.commands.cli', command, '--helpshort'],
    cwd=paths.REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert flag in proc.stdout
  assert source in proc.stdout


def test_care_jax_command_without_a_subcommand_prints_usage():
  proc = subprocess.run(
    [sys.executable, '-m', 'care_jax.commands.cli', 'fly'],
    cwd=paths.REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert "unknown command 'fly'" in proc.stderr and 'usage: care-jax COMMAND' in proc.stderr
  assert all(f'  {command} ' in proc.stderr for command in cli.COMMANDS)
