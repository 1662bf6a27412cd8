"""The numerics the math shares: the matrix of the bilinear resize (its adjoint is the
upsampling of care_loss and the attention metrics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import _numerics


@pytest.mark.parametrize(
  'in_size,out_size', [(7, 7), (7, 14), (7, 10), (7, 13), (7, 32), (3, 224), (1, 5)]
)
def test_resize_matrix_equals_jax_image_resize_of_one_hots(in_size, out_size):
  # Resizing the identity along its first axis resizes every one-hot column.
  expected = jax.image.resize(jnp.eye(in_size), (out_size, in_size), 'bilinear')
  np.testing.assert_allclose(_numerics.bilinear_matrix(in_size, out_size), expected, atol=1e-6)
