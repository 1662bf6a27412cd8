"""Checks that a package's names are those of its modules (the packages re-export, never wrap)."""

import ast
from collections.abc import Mapping, Sequence
import importlib
import inspect
from types import ModuleType


def defined_names(module: ModuleType) -> list[str]:
  """The public names `module` defines: its __all__, else its top-level defs and assignments."""
  if hasattr(module, '__all__'):
    return sorted(module.__all__)
  names = set()
  for node in ast.parse(inspect.getsource(module)).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(t.id for t in targets if isinstance(t, ast.Name))
  return sorted(name for name in names if not name.startswith('_'))


def assert_exported(package: ModuleType, modules: Sequence[ModuleType]) -> None:
  """`package.__all__` is exactly the public names of `modules`, each the module's own object."""
  exported = [name for module in modules for name in defined_names(module)]
  assert sorted(exported) == sorted(package.__all__)
  for module in modules:
    for name in defined_names(module):
      assert getattr(package, name) is getattr(module, name), f'{package.__name__}.{name}'


def assert_lazy_exports(package: ModuleType, homes: Mapping[str, str]) -> None:
  """Each name of `homes` ({name: submodule}) is `package.submodule.name`, loaded on first use."""
  assert sorted(package.__all__) == sorted(homes)
  for name, submodule in homes.items():
    home = importlib.import_module(f'{package.__name__}.{submodule}')
    assert getattr(package, name) is getattr(home, name), f'{package.__name__}.{name}'
