"""Ross et al.'s MLP backbone against numpy: the flattened image through Dense + ReLU layers."""

import jax
import jax.numpy as jnp
import numpy as np

from care_jax import config as config_lib
from care_jax.models import get_model
from care_jax.models import mlp
from care_jax.models import resolve_head
from tests.helpers import model_fixtures as mf


def test_mlp_features_are_the_last_relu_layer_of_the_flattened_image_as_a_1x1_grid():
  images = mf.images(size=8)
  backbone = mlp.MLP(widths=(6, 4))
  variables = mf.fake_variables(backbone, images)
  features = backbone.apply(variables, images, train=False)

  x = np.asarray(images, np.float64).reshape(2, -1)  # (H, W, C) order, as dtak/rrr's ravel
  for name in ('fc1', 'fc2'):
    layer = variables['params'][name]
    x = np.maximum(x @ np.asarray(layer['kernel'], np.float64) + layer['bias'], 0.0)
  assert features.shape == (2, 1, 1, 4)
  np.testing.assert_allclose(features[:, 0, 0], x, rtol=1e-5, atol=1e-5)


def test_mlp_init_is_dtak_rrrs_normal_0_1_for_weights_and_biases():
  with jax.threefry_partitionable(False):
    params = mlp.MLP().init(mf.KEY, jnp.zeros((1, 28, 28, 1)), train=False)['params']
  assert params['fc1']['kernel'].shape == (784, 50) and params['fc2']['kernel'].shape == (50, 30)
  np.testing.assert_allclose(np.std(params['fc1']['kernel']), 0.1, rtol=0.02)
  np.testing.assert_allclose(np.std(params['fc1']['bias']), 0.1, rtol=0.35)


def test_the_decoy_digits_mlp_config_builds_ross_mlp_on_28px_digits():
  config = config_lib.load_config('decoy_digits_mlp')
  config_lib.validate(config)
  model = get_model(config.model.name, num_classes=10, head=resolve_head(config.model.head))
  images = jax.ShapeDtypeStruct((2, 28, 28, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(mf.KEY, x, train=False), images)
  # dtak/rrr's MLP on the 28x28 grey pixels (one of the three equal channels): 784 -> 50 -> 30.
  assert mf.num_params(variables['params']) == (784 * 50 + 50) + (50 * 30 + 30) + (30 * 10 + 10)
  assert isinstance(model.backbone, mlp.GreyMLP) and config.data.name == 'decoy_digits'
  # dtak/rrr's l2_grads = 1000 on 0..255 pixels, on ours (x / 255): input gradients 255x theirs.
  np.testing.assert_allclose(config.guidance.weight * 255.0**2, 1000.0)
  # Their l2_params * |theta|^2 on the batch's sum: an L2 gradient 2e-4 * theta / 256 on the mean.
  np.testing.assert_allclose(config.train.weight_decay * config.train.batch_size / 2, 1e-4)
  assert config.guidance.method == 'care' and config.care.alpha == 0.0  # CE unless asked


def test_grey_mlp_reads_channel_0_alone_so_input_gradients_fall_on_it():
  images = mf.images(size=8)  # [2, 8, 8, 3], channels differ
  grey = mlp.GreyMLP(widths=(6, 4))
  variables = mf.fake_variables(grey, images)
  assert variables['params']['fc1']['kernel'].shape == (64, 6)
  plain = mlp.MLP(widths=(6, 4))
  np.testing.assert_allclose(
    grey.apply(variables, images, train=False),
    plain.apply(variables, images[..., :1], train=False),
    rtol=1e-6,
  )
  gradient = jax.grad(lambda x: jnp.sum(grey.apply(variables, x, train=False)))(images)
  assert np.any(gradient[..., 0]) and not np.any(gradient[..., 1:])
