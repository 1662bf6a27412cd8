"""Deprecated: the trainer moved to the `care_jax.training` package in 0.2 (removed in 0.3).

Every name this module had still works and warns on use (`care_jax._deprecated`).
`train_and_evaluate` here also wires in the generated boxes of ``config.data.box_source``, as
before (with the new API, pass ``boxes_fn=care_jax.boxes.replace_boxes``).
"""

from care_jax import _deprecated

__getattr__ = _deprecated.getattr_of(__name__)
