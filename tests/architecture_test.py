"""The package's layers: imports point one way, and the lower layers load no TensorFlow.

docs/architecture.md describes the layers; `LAYERS` below is their order, lowest
first. A module may import modules of its own layer or of lower layers only, and
the import graph of care_jax has no cycle. Imports are read from the source
(every `import` statement, also inside functions), so a function-local import
does not hide an upward one.
"""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'care_jax'
REPO = PACKAGE.parent

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


# Config keys added after 0.1, with the defaults that keep 0.1's behaviour: runs of
# 0.1 load and resume with them.
ADDED_SINCE_0_1 = {
  'train.test_checkpoint': 'last',
  'care.protocol': 'from_step',
  'care.stage1_metric': 'mca',
  'care.stage1_patience': 3,
  'care.stage1_max_fraction': 0.5,
  'care.outer': 'uniform',
  'care.outer_start': 1.0,
  'care.outer_delta': 0.1,
  'care.target': 'logit',
  'task': 'multiclass',
  'data.augment.on_device': False,
  'data.isic2018.supervision': 'box',
  'data.nih_chestxray14.mode': 'boxed',
  'data.nih_chestxray14.boxed_images': 'test',
}
# Sub-configs added after 0.1 whose values 0.1 never read (datasets it did not have).
ADDED_SECTIONS_SINCE_0_1 = ('data.synthetic_multilabel.',)
# Values that every packaged config changed since 0.1 (runs of 0.1 saved theirs).
CHANGED_SINCE_0_1 = {
  # Left to the recipe: 1e-4 with model.pretrained, 1e-3 from scratch (resolve_recipe).
  'train.learning_rate': None
}
# And those that single configs changed.
CONFIG_CHANGED_SINCE_0_1 = {
  # The two stages end stage 1 on validations (0.1 validated at the end only).
  'folder.py': {'train.eval_every_steps': 100},
  # And alpha 0.7: the demo's target on both generator seeds (docs/results.md).
  'synthetic_care.py': {'train.eval_every_steps': 50, 'care.alpha': 0.7},
}


def _packaged_configs() -> dict:
  with open(REPO / 'tests' / 'fixtures' / 'v0_1_configs.json') as f:
    return json.load(f)


def test_the_keys_added_since_0_1_default_to_the_behaviour_of_0_1():
  from care_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  defaults = config_lib.flatten(config_lib.to_json(config_lib.default_config()))
  assert {key: defaults[key] for key in ADDED_SINCE_0_1} == ADDED_SINCE_0_1


@pytest.mark.parametrize('name', sorted(_packaged_configs()))
def test_every_config_builds_the_tree_of_0_1_plus_the_keys_added_since(name):
  from care_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  built = (
    config_lib.default_config()
    if name == 'default_config'
    else config_lib.load_config(str(REPO / 'configs' / name))
  )
  diffs = config_lib.differences(_packaged_configs()[name], config_lib.to_json(built))
  # The keys added since (with this config's values), and the values changed in every config.
  added = {k for k, (old, _) in diffs.items() if old == '<missing>'}
  in_new_sections = {k for k in added if k.startswith(ADDED_SECTIONS_SINCE_0_1)}
  assert in_new_sections, 'no key of the sections added since 0.1: update the test'
  assert added - in_new_sections == set(ADDED_SINCE_0_1)
  assert {k: new for k, (old, new) in diffs.items() if old != '<missing>'} == {
    **CHANGED_SINCE_0_1,
    **CONFIG_CHANGED_SINCE_0_1.get(name, {}),
  }


def test_no_function_of_the_training_package_is_longer_than_60_lines():
  long = []
  for path in sorted((PACKAGE / 'training').glob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > 60:
          long.append(f'{path.name}:{node.lineno} {node.name}: {length} lines')
  assert not long, '\n'.join(long)
