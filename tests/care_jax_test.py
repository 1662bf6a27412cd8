"""The package root: the math importable as care_jax.X."""

import care_jax
from care_jax import losses


def test_distance_outer_mask_is_exported():

  assert care_jax.distance_outer_mask is losses.distance_outer_mask
  assert 'distance_outer_mask' in care_jax.__all__
  assert 'distance_outer_mask' in losses.__all__
