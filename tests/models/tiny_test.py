"""The tiny CNN of the tests and the demo: its features under the cosine head."""

import numpy as np

from care_jax.models import get_model
from tests.helpers import model_fixtures as mf


def test_tiny_cnn_with_the_normed_linear_head_gives_the_cosine_of_its_features():
  model = get_model('tiny_cnn', num_classes=3, head='normed_linear')
  images = mf.images(size=32)
  variables = mf.fake_variables(model, images)
  logits, inter = model.apply(variables, images, train=False)
  kernel = variables['params']['head']['kernel']
  expected = mf.np_normalize(np.asarray(inter['features']).mean(axis=(1, 2)), 1) @ mf.np_normalize(
    kernel, 0
  )
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
