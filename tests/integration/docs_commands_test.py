"""Every command of README.md and docs/*.md, as a user pastes it (installed: `care-jax ...`).

The README's Python blocks run as pasted. The shell blocks (```bash, ```console, ```sh) are read
from the files; each `care-jax` command in them (continued lines joined, `$ ` prompts and
comments dropped) is checked against the code: the command exists, every flag is one the command
defines, `--config=NAME` names a packaged config or a file, and its `--config.KEY=VALUE`
overrides apply and pass `config.validate`. So a renamed flag, key, config or command fails here.
The commands of `RUN` are also run, in a fresh directory at smoke size (`SMOKE`, appended to the
runs that train); the others train for minutes or hours, or need data of their own (`NOT_RUN`
says which and why), and `SKIPPED` lists the few that are not whole commands.
"""

import ast
import functools
import pathlib
import re
import shlex
import sys

import pytest

from care_jax import config as config_lib
from care_jax import suites
from care_jax.commands import cli
from tests.helpers import command_line
from tests.helpers import paths
from tests.helpers import runs

DOCS = (paths.REPO / 'README.md', *sorted((paths.REPO / 'docs').glob('*.md')))
_SHELL_BLOCK = re.compile(r'^```(bash|console|sh)\n(.*?)^```', re.M | re.S)
# Flags every command has: absl's help and logging flags, and `_app.run`'s.
_COMMON_FLAGS = {'help', 'helpshort', 'helpfull', 'verbosity', 'v', 'compilation_cache_dir'}
# What the smoke runs append to a command that trains (tiny data in the run's directory).
SMOKE = [f'--config.{override}' for override in runs.TINY_DATA + ['data.dir=tfds']]
# Commands that are not whole commands, or need a file the reader writes: (file, the start of
# the command) -> why the check leaves them out.
SKIPPED = {
  ('training.md', 'care-jax train --config=my_config.py'): 'your own config file',
  ('README.md', 'care-jax train --config=synthetic_care --workdir=runs/mine'): (
    'the backbone module the section has the reader write (tests/integration/'
    'custom_backbone_test.py runs it)'
  ),
  ('guidance.md', 'care-jax train --config.guidance'): (
    'the keys of a method, shown without --config and --workdir'
  ),
}
# (file, the block's first command) of the blocks run in full, in order, in one directory.
RUN = (('README.md', 'care-jax configs'),)
NOT_RUN = {
  'train, compare, experiments elsewhere': 'train for minutes to hours (checked, not run)',
  'datasets.md, experiments.md (isic2018, rsna, nih, folder)': 'need the dataset files',
  'predict, evaluate, export, visualize elsewhere': 'need the run of an earlier block',
}


def _shell_commands(path: pathlib.Path) -> list[tuple[int, list[str]]]:
  """(line, argv) of every `care-jax` command in the shell blocks of `path`."""
  text = path.read_text()
  found = []
  for block in _SHELL_BLOCK.finditer(text):
    line_number = text[: block.start(2)].count('\n') + 1
    lines = block.group(2).split('\n')
    i = 0
    while i < len(lines):
      start, line = i, lines[i]
      while line.rstrip().endswith('\\') and i + 1 < len(lines):
        i += 1
        line = line.rstrip()[:-1] + ' ' + lines[i].strip()
      i += 1
      line = line.strip()
      if block.group(1) == 'console':
        if not line.startswith('$ '):
          continue  # Output.
        line = line[2:]
      argv = shlex.split(line, comments=True)
      while argv and re.fullmatch(r'\w+=\S*', argv[0]):  # PYTHONPATH=. care-jax ...
        argv.pop(0)
      if argv and argv[0] == 'care-jax':
        found.append((line_number + start, argv))
  return found


def _path(file: str) -> pathlib.Path:
  return next(path for path in DOCS if path.name == file)


def _skipped(file: str, argv: list[str]) -> bool:
  return any(f == file and ' '.join(argv).startswith(start) for f, start in SKIPPED)


ALL = [
  (path.name, line, argv)
  for path in DOCS
  for line, argv in _shell_commands(path)
  if not _skipped(path.name, argv)
]


@functools.cache
def _flags_of(command: str) -> frozenset[str]:
  """The flags a command's module defines (read from its source, as --helpfull lists them)."""
  module = cli.COMMANDS[command][0]
  tree = ast.parse((paths.REPO / (module.replace('.', '/') + '.py')).read_text())
  names = set(_COMMON_FLAGS)
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      if node.func.attr.startswith('DEFINE') and node.args:
        if isinstance(node.args[0], ast.Constant):
          names.add(node.args[0].value)
      elif node.func.attr == 'define_checkpoint':
        names.add('checkpoint')
  return frozenset(names)


def _check_config(name: str, overrides: list[str]) -> None:
  config = config_lib.apply_overrides(config_lib.load_config(name), overrides)
  config_lib.validate(config)


def _check(argv: list[str]) -> None:
  """Raises if `argv` (``care-jax ...``) is not a command the code accepts."""
  if argv[1:] in (['--help'], ['--version']):
    return
  command, args = argv[1], argv[2:]
  assert command in cli.COMMANDS, f'no command {command!r}'
  if command == 'configs':
    assert len(args) <= 1 and all(config_lib.config_file(a) for a in args)
    return
  values, overrides = {}, []
  for arg in args:
    arg = arg.removeprefix('[').removesuffix(']')  # A usage line's optional flag.
    assert arg.startswith('--'), f'{arg!r}: not a flag'
    name, _, value = arg[2:].partition('=')
    if name.startswith('config.'):
      overrides.append(arg[len('--config.') :])
      continue
    known = _flags_of(command)
    assert name in known or (name.startswith('no') and name[2:] in known), f'no flag --{name}'
    values[name] = value
  if command == 'compare':
    for name in values['configs'].split(','):
      _check_config(name, overrides)
  elif 'config' in values or command == 'experiments':  # A suite's rows start from default.
    _check_config(values.get('config', 'default'), overrides)
  else:
    assert not overrides, f'{command} takes no --config.KEY=VALUE'
  if command == 'experiments':
    assert values['suite'] in suites.SUITES, values['suite']


def test_the_docs_have_commands_of_every_kind():
  used = {argv[1] for _, _, argv in ALL}
  assert used >= {'train', 'compare', 'predict', 'evaluate', 'export', 'configs'}, used
  for file, start in SKIPPED:  # Each still in its file.
    assert any(' '.join(a).startswith(start) for _, a in _shell_commands(_path(file))), start


@pytest.mark.parametrize('file, line, argv', ALL, ids=[f'{f}:{n}' for f, n, _ in ALL])
def test_a_documented_command_is_one_the_code_accepts(file, line, argv):
  del file, line  # In the test's name.
  _check(argv)


def test_the_readme_python_blocks_run_as_pasted_in_order():
  # The loss section's blocks build on each other, as in one notebook.
  namespace = {}
  for block in re.findall(r'^```python\n(.*?)^```', _path('README.md').read_text(), re.M | re.S):
    exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  # Two of the four example images have a box: the others' losses are 0.
  assert namespace['loss'].shape == () and list(namespace['per_image'][2:]) == [0.0, 0.0]
  assert list(namespace['energy'][2:]) == [0.0, 0.0] and namespace['res'].shape == (4,)


def _block_of(file: str, first: str) -> list[list[str]]:
  commands = _shell_commands(_path(file))
  start = next(i for i, (_, argv) in enumerate(commands) if ' '.join(argv).startswith(first))
  block_line = commands[start][0]
  # The commands of that block: consecutive lines after the first.
  block = [commands[start][1]]
  for line, argv in commands[start + 1 :]:
    if line - block_line > len(block) + 2:
      break
    block.append(argv)
  return block


@pytest.mark.slow
@pytest.mark.parametrize('file, first', RUN)
def test_the_quick_start_runs_as_written_at_smoke_size(tmp_path, monkeypatch, file, first):
  monkeypatch.chdir(tmp_path)
  for argv in _block_of(file, first):
    if argv[1] in ('configs', '--help'):  # The dispatcher alone: in this process.
      monkeypatch.setattr(sys, 'argv', argv)
      cli.main()
      continue
    args = argv[1:] + (SMOKE if argv[1] == 'train' else [])
    proc = command_line.care_jax(*args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, (argv, proc.stderr[-3000:])
  assert (tmp_path / 'preds.csv').read_text().startswith('image,prediction,p_')
