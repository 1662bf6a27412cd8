"""The flags the commands share: `--config=NAME` resolved to a file, `--seeds` lists, ranges."""

import pytest

from care_jax import config as config_lib
from care_jax.commands import _flags


def test_config_flag_resolves_names_and_keeps_paths_and_config_args():
  path = config_lib.config_file('default')
  resolve = _flags._resolve_config_flag  # pylint: disable=protected-access
  assert resolve(['prog', '--config=default', '--config.care.alpha=0.1']) == [
    'prog',
    f'--config={path}',
    '--config.care.alpha=0.1',
  ]
  assert resolve(['prog', '--config', 'default:arg']) == ['prog', '--config', f'{path}:arg']
  assert resolve(['prog', f'--config={path}']) == ['prog', f'--config={path}']


def test_seeds_are_lists_and_ranges_with_one_meaning_in_every_command():
  assert _flags.parse_seeds('3') == [3]
  assert _flags.parse_seeds('0-4') == [0, 1, 2, 3, 4]
  assert _flags.parse_seeds('0,5,7') == [0, 5, 7]
  assert _flags.parse_seeds(' 0-2, 9 ,') == [0, 1, 2, 9]
  for bad, message in (
    ('x', 'seeds and ranges'),
    ('3-1', 'seeds and ranges'),
    ('-1', 'seeds and ranges'),
    (',', 'no seeds'),
    ('1,0-2', 'repeated'),
  ):
    with pytest.raises(ValueError, match=message):
      _flags.parse_seeds(bad)
