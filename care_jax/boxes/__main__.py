"""Deprecated: ``python -m care_jax.boxes`` is ``care-jax boxes`` (removed in 0.3)."""

from care_jax import _deprecated

if __name__ == '__main__':
  _deprecated.run_moved_module('care_jax.boxes.__main__')
