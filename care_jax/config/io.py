"""Configs in and out: dotted keys, JSON, diffs, overrides and the packaged config files.

Runs save their config as JSON (:func:`to_json`) and load it back onto the current schema
(:func:`from_json`: keys added since keep their defaults); :func:`differences` compares two
saved configs key by key; :func:`apply_overrides` applies ``KEY=VALUE`` strings as
``--config.KEY=VALUE`` does; :func:`config_file` and :func:`load_config` find and build a
packaged config by name (``synthetic_care``) or a config file by path.
"""

import ast
from collections.abc import Mapping, Sequence
import copy
import importlib.util
import json
import os
import pathlib
from typing import Any

from absl import flags
import ml_collections
from ml_collections import config_flags

from care_jax.config import schema

# The configs that ship with the package (a clone's `configs/` points here), named by file stem.
CONFIGS_DIR = pathlib.Path(__file__).parent.parent / 'configs'


def get(config: Mapping[str, Any], dotted_key: str) -> Any:
  """``config['a']['b']['c']`` for the dotted key ``'a.b.c'``."""
  value = config
  for part in dotted_key.split('.'):
    value = value[part]
  return value


def to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON values (tuples become lists), as runs save it."""
  return json.loads(config.to_json_best_effort())


def from_json(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The default config updated with a saved one (`to_json`; lists back to tuples).

  Keys the saved config lacks (added to the schema later) keep their
  defaults, so the runs of older versions load; those that follow ``task``
  ('auto') are resolved from it (`care_jax.config.resolve_dependent_keys`).
  """

  def merge(node: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
      if isinstance(value, Mapping) and isinstance(node.get(key), ml_collections.ConfigDict):
        merge(node[key], value)
      else:
        with node.ignore_type():
          node[key] = tuple(value) if isinstance(value, list) else value

  config = schema.default_config()
  merge(config, saved)
  return schema.resolve_dependent_keys(config)


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """``{dotted key: value}`` of a nested (JSON) config."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def differences(
  first: Mapping[str, Any], second: Mapping[str, Any], *, ignore: Sequence[str] = ()
) -> dict[str, tuple[Any, Any]]:
  """``{dotted key: (first value, second value)}`` of the keys whose values differ.

  Both are nested JSON dicts (`to_json`). A key missing on one side counts
  as different (value ``'<missing>'``). Keys equal to or below a key of
  `ignore` are left out.
  """
  flat_first, flat_second = flatten(first), flatten(second)
  diffs = {}
  for key in sorted(set(flat_first) | set(flat_second)):
    if any(key == k or key.startswith(k + '.') for k in ignore):
      continue
    old, new = flat_first.get(key, '<missing>'), flat_second.get(key, '<missing>')
    if old != new:
      diffs[key] = (old, new)
  return diffs


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
  """Applies `key=value` strings to a copy of config, each read as `--config.key=value` is.

  ml_collections' own flag parser (`config_flags`) reads each value by its
  field's type, so an override means here what it means to `care-jax train`:
  `care.alpha=1` is the float 1.0, `train.step_boundaries=(0.3, 0.6)` a tuple,
  `care.protocol=two_stage` a string (quotes would be part of it),
  `model.pretrained=PATH` sets a typed placeholder. Later overrides of a key
  win.

  Raises:
    ValueError: for an override without ``=``.
    KeyError: ``unknown config key 'KEY'``.
    TypeError: for a value the field's type cannot take, naming the override.
  """
  # deepcopy, not copy_and_resolve_references: a resolved placeholder becomes a
  # plain None, whose type config_flags cannot override.
  config = copy.deepcopy(config)
  for override in overrides:
    key, sep, _ = override.partition('=')
    if not sep:
      raise ValueError(f'override {override!r} is not of the form key=value')
    # One parser per override, so an error names the override that caused it.
    argv = ['apply_overrides', f'--config.{override}']
    flag_values = flags.FlagValues()
    try:
      config_flags.DEFINE_config_dict(
        'config', config, flag_values=flag_values, sys_argv=argv, lock_config=False
      )
      flag_values(argv)
    except (KeyError, AttributeError, flags.UnrecognizedFlagError):
      raise KeyError(f'unknown config key {key!r}') from None
    except flags.IllegalFlagValueError as e:
      raise TypeError(f'config override {override!r}: {e}') from None
    config = flag_values.config
  return config


def packaged_configs() -> dict[str, str]:
  """The packaged configs: name -> the first line of its docstring, sorted by name."""
  configs = {}
  for path in sorted(CONFIGS_DIR.glob('*.py')):
    if path.stem != '__init__':
      docstring = ast.get_docstring(ast.parse(path.read_text())) or ''
      configs[path.stem] = docstring.partition('\n')[0]
  return configs


def config_file(name_or_path: str) -> str:
  """The config file that `--config=` names: an existing path, or a packaged config's name.

  Args:
    name_or_path: a path to a `.py` file that defines `get_config()`, or the name of a packaged
      config (`synthetic_care` for `care_jax/configs/synthetic_care.py`; see
      :func:`packaged_configs`).

  Returns:
    The path of the config file.

  Raises:
    FileNotFoundError: for a path that does not exist or an unknown name; the message lists the
      packaged names.
  """
  if os.path.isfile(name_or_path):
    return name_or_path
  packaged = CONFIGS_DIR / f'{name_or_path}.py'
  if name_or_path.isidentifier() and name_or_path != '__init__' and packaged.is_file():
    return str(packaged)
  what = 'config file' if name_or_path.endswith('.py') or os.sep in name_or_path else 'config'
  names = ', '.join(packaged_configs())
  raise FileNotFoundError(
    f'{what} {name_or_path!r} does not exist; the packaged configs are: {names}'
  )


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
  """Calls `get_config()` of a config file, given by path or packaged name (:func:`config_file`)."""
  path = config_file(name_or_path)
  spec = importlib.util.spec_from_file_location(
    f'care_jax_config_{os.path.splitext(os.path.basename(path))[0]}', path
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
