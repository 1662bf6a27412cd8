"""Deprecated alias of `care_jax.commands.train` (removed in 0.3; `care_jax._deprecated`)."""

from care_jax import _deprecated

if __name__ == '__main__':
  _deprecated.run_moved_module('care_jax.main')
__getattr__ = _deprecated.getattr_of('care_jax.main')
