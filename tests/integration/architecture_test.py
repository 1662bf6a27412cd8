"""The package's layers: imports point one way, and the lower layers load no TensorFlow.

docs/architecture.md describes the layers; `LAYERS` below is their order, lowest
first. A module may import modules of its own layer or of lower layers only, and
the import graph of care_jax has no cycle. Imports are read from the source
(every `import` statement, also inside functions), so a function-local import
does not hide an upward one.

Each module stays readable: at most 600 lines, and no function over 60 lines of code (docstrings,
comments and blank lines not counted).

The tests mirror the package: the tests of care_jax/X/Y.py are in tests/X/Y_test.py, and every
test file there names the module it tests (docs/architecture.md, "Tests").
"""

import ast
import pathlib
import subprocess
import sys
import textwrap

from tests.helpers import paths

PACKAGE = paths.REPO / 'care_jax'
REPO = paths.REPO
# Lowest first. A name ending in '.*' stands for every module below that package.
LAYERS = (
  (
    'private helpers',
    ('care_jax._checks', 'care_jax._deprecated', 'care_jax._numerics', 'care_jax.host_memory'),
  ),
  (
    'math',
    (
      'care_jax',
      'care_jax.losses',
      'care_jax.guidance_losses',
      'care_jax.attention',
      'care_jax.imbalance',
      'care_jax.classification_loss',
      'care_jax.metrics',
      'care_jax.metrics.*',
    ),
  ),
  ('models', ('care_jax.models', 'care_jax.models.*')),
  (
    'model tools',
    (
      'care_jax.boxes.geometry',
      'care_jax.boxes.foreground',
      'care_jax.boxes.generators',
      'care_jax.figures',
    ),
  ),
  ('data', ('care_jax.data', 'care_jax.data.*')),
  ('config', ('care_jax.config', 'care_jax.config.*')),
  ('configs', ('care_jax.configs', 'care_jax.configs.*')),
  ('checkpoint', ('care_jax.checkpoint', 'care_jax.trained_run')),
  ('inference', ('care_jax.inference',)),
  ('training', ('care_jax.training', 'care_jax.training.*')),
  ('box generation', ('care_jax.boxes', 'care_jax.boxes.dataset')),
  ('runs', ('care_jax.comparison', 'care_jax.suites', 'care_jax.run_figures')),
  ('commands', ('care_jax.commands', 'care_jax.commands.*')),
  (
    'deprecated aliases',
    (
      'care_jax.main',
      'care_jax.compare',
      'care_jax.experiments',
      'care_jax.visualize',
      'care_jax.boxes.__main__',
      'care_jax.cli',
      'care_jax.train',
      'care_jax.predict',
      'care_jax.evaluate',
      'care_jax.export',
    ),
  ),
)


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """The care_jax modules that the statements of `path` import."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from pkg import mod` imports the module pkg.mod; `from mod import name`
      # the module mod. (Parent packages load implicitly in both cases, as for
      # `import pkg.mod`: their own imports are checked as modules of their own.)
      names = [
        f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in known else node.module
        for alias in node.names
      ]
    else:
      continue
    for name in names:
      if name in known and name != 'care_jax':
        found.add(name)
      elif name.startswith('care_jax.') and name.rsplit('.', 1)[0] not in known:
        raise AssertionError(f'{path}: imports {name}, which is not a module of care_jax')
  return found


def _layer_of(module: str) -> int:
  for index, (_, members) in enumerate(LAYERS):
    for member in members:
      if module == member or (member.endswith('.*') and module.startswith(member[:-1])):
        return index
  raise AssertionError(f'{module} is in no layer of LAYERS: add it (and to docs/architecture.md)')


def _graph() -> dict[str, set[str]]:
  """Module -> the care_jax modules it imports."""
  modules = _modules()
  return {name: _imports(path, set(modules)) for name, path in modules.items()}


def test_every_module_has_a_layer():
  for module in _modules():
    _layer_of(module)


def test_no_module_imports_a_higher_layer():
  upward = []
  for module, imported in _graph().items():
    for target in imported:
      if _layer_of(target) > _layer_of(module):
        upward.append(
          f'{module} ({LAYERS[_layer_of(module)][0]}) imports {target} '
          f'({LAYERS[_layer_of(target)][0]})'
        )
  assert not upward, '\n'.join(sorted(upward))


def test_the_import_graph_has_no_cycle():
  graph = _graph()
  state = {}  # module -> 'open' while on the stack, 'done' after.

  def visit(module, path):
    if state.get(module) == 'open':
      raise AssertionError('import cycle: ' + ' -> '.join(path[path.index(module) :] + [module]))
    if state.get(module) == 'done':
      return
    state[module] = 'open'
    for target in sorted(graph[module]):
      visit(target, path + [module])
    state[module] = 'done'

  for module in sorted(graph):
    visit(module, [])


def test_the_math_modules_import_only_math_and_private_helpers():
  math_layer = _layer_of('care_jax.losses')
  graph = _graph()
  for module in [m for m in graph if _layer_of(m) == math_layer]:
    for target in graph[module]:
      assert _layer_of(target) <= math_layer, f'{module} imports {target}'


def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path):
  source = tmp_path / 'mod.py'
  source.write_text('def f():\n  from care_jax import config\n  return config\n')
  assert _imports(source, set(_modules())) == {'care_jax.config'}


def test_config_checkpoint_training_and_models_load_no_tensorflow():
  code = (
    'import sys\n'
    'from care_jax import checkpoint, config, models, training\n'
    'import care_jax.boxes, care_jax.boxes.generators, care_jax.figures, care_jax.data\n'
    'config.validate(config.default_config())\n'
    'loaded = sorted(m for m in sys.modules\n'
    '                if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))\n'
    'print(loaded[:5])\n'
  )
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, check=True
  ).stdout
  assert out.strip() == '[]', out


MAX_MODULE_LINES = 600
MAX_FUNCTION_CODE_LINES = 60


def _docstring_lines(tree: ast.Module) -> set[int]:
  """The line numbers of the module's, classes' and functions' docstrings."""
  lines = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      first = node.body[0] if node.body else None
      if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
      ):
        lines.update(range(first.lineno, first.end_lineno + 1))
  return lines


def _code_lines(source: str) -> dict[str, int]:
  """'name:line' -> the function's lines of code (no blank, comment or docstring line)."""
  tree = ast.parse(source)
  text = source.splitlines()
  not_code = _docstring_lines(tree) | {
    number for number, line in enumerate(text, 1) if not line.strip() or line.lstrip()[0] == '#'
  }
  return {
    f'{node.name}:{node.lineno}': sum(
      number not in not_code for number in range(node.lineno, node.end_lineno + 1)
    )
    for node in ast.walk(tree)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
  }


def test_no_module_is_longer_than_600_lines():
  long = [
    f'{module}: {len(path.read_text().splitlines())} lines'
    for module, path in _modules().items()
    if len(path.read_text().splitlines()) > MAX_MODULE_LINES
  ]
  assert not long, '\n'.join(long)


def test_no_function_has_more_than_60_lines_of_code():
  long = [
    f'{module}.{function}: {count} lines of code'
    for module, path in _modules().items()
    for function, count in _code_lines(path.read_text()).items()
    if count > MAX_FUNCTION_CODE_LINES
  ]
  assert not long, '\n'.join(long)


def test_code_lines_leave_out_docstrings_comments_and_blank_lines():
  source = textwrap.dedent('''
    def f(x):
      """A docstring

      of three lines."""
      # A comment.

      y = x + 1  # counted
      return y
  ''')
  assert _code_lines(source) == {'f:2': 3}  # the def, the assignment and the return


# tests/ mirrors the package -------------------------------------------------------------------

TESTS = REPO / 'tests'
# Folders of tests/ whose files test no single module: shared helpers, committed data, tests that
# run several layers together, and those of the scripts in benchmarks/.
NOT_MIRRORED = ('helpers', 'fixtures', 'integration', 'benchmarks')


def _test_file(module: str) -> pathlib.Path:
  """tests/X/Y_test.py of care_jax.X.Y (and of the package care_jax.X.Y); the root's own."""
  *folders, name = module.split('.')[1:] or ['care_jax']
  return TESTS.joinpath(*folders, f'{name}_test.py')


def _needs_a_test_file(module: str, path: pathlib.Path) -> bool:
  """Public modules and packages with code; not the deprecated aliases, nor configs/."""
  if _layer_of(module) == len(LAYERS) - 1 or module.split('.')[:2] == ['care_jax', 'configs']:
    return False
  if any(part.startswith('_') for part in module.split('.')):
    return False
  tree = ast.parse(path.read_text())
  return not (path.name == '__init__.py' and len(tree.body) <= 1)  # more than a docstring


def test_every_public_module_has_its_test_file():
  missing = [
    f'{module}: {_test_file(module).relative_to(REPO)}'
    for module, path in _modules().items()
    if _needs_a_test_file(module, path) and not _test_file(module).is_file()
  ]
  assert not missing, 'modules without their test file:\n' + '\n'.join(missing)


def _tested_module(path: pathlib.Path, modules: set[str]) -> bool:
  """tests/X/Y_test.py or tests/X/Y_<group>_test.py names care_jax.X.Y (or care_jax.X._Y)."""
  *folders, name = path.relative_to(TESTS).with_suffix('').parts
  stem = name.removesuffix('_test')
  prefixes = [stem] + [stem[:i] for i, c in enumerate(stem) if c == '_' and i > 0]
  for prefix in prefixes:
    for form in (prefix, f'_{prefix}'):
      if '.'.join(['care_jax', *folders, form]) in modules or (
        not folders and prefix == 'care_jax'
      ):
        return True
  return False


def test_every_test_file_names_the_module_it_tests():
  modules = set(_modules())
  orphans = []
  for path in sorted(TESTS.rglob('*_test.py')):
    folder = path.relative_to(TESTS).parts[0]
    if folder == 'benchmarks':  # tests/benchmarks/X_test.py tests benchmarks/X.py (or _X.py)
      script = path.name.removesuffix('_test.py')
      named = any((REPO / 'benchmarks' / f'{s}.py').is_file() for s in (script, f'_{script}'))
    else:
      named = folder in NOT_MIRRORED or _tested_module(path, modules)
    if not named:
      orphans.append(str(path.relative_to(REPO)))
  assert not orphans, 'test files that name no module:\n' + '\n'.join(orphans)
