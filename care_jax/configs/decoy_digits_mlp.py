"""Decoy-Digits with Ross et al.'s MLP: cross-entropy alone (add guidance.method=rrr for RRR).

care-jax train --config=decoy_digits_mlp --workdir=runs/decoy_mlp
care-jax train --config=decoy_digits_mlp --config.guidance.method=rrr --workdir=runs/decoy_rrr

The Decoy-MNIST protocol of "Right for the Right Reasons" (Ross, Hughes and Doshi-Velez, IJCAI
2017; github.com/dtak/rrr, ``rrr/multilayer_perceptron.py``, ``MultilayerPerceptron.fit``, and
``experiments/Decoy MNIST.ipynb``) on `decoy_digits`: their multilayer perceptron (hidden layers
50 and 30, ReLU, ``0.1 * N(0, 1)`` init) on the grey pixels (`care_jax.models.mlp.GreyMLP`: one
input per pixel, as their 784), Adam 1e-3, batch 256, 64 epochs (256 steps of the 1,017
training digits), RRR at their ``l2_grads = 1000`` and their ``l2_params = 1e-4``, converted:

- pixels / 255 (the background stays 0) where they feed 0..255: the input gradient is 255
  times theirs, so their weight 1000 is ``1000 / 255**2`` here. On their 0..255 scale with their
  0.1 init, the network starts saturated (CE ~90 nats per image) and RRR needs their 15,040
  Adam steps (64 epochs of 60,000 MNIST digits), not 256, to train (docs/experiments.md);
- they sum CE and the penalty over the batch, we average both (the same ratio), so their
  ``1e-4 * |theta|^2`` on the sum is ``train.weight_decay = 2e-4 / 256`` (an L2 gradient
  ``weight_decay * theta`` on the mean).

The suite runs it as
``care-jax experiments --suite=guidance --rows=CE,RRR --seeds=0-4 --config=decoy_digits_mlp``.
A convolutional network with global average pooling (`tiny_cnn`), or even with a flatten head,
barely takes the decoy shortcut here (docs/experiments.md).
"""

from care_jax.config import default_config

# dtak/rrr's Decoy-MNIST weights on 0..255 pixels (notebook: l2_grads=1000; class default
# l2_params=1e-4), and their pixel scale.
ROSS_L2_GRADS = 1000.0
ROSS_L2_PARAMS = 1e-4
PIXEL_MAX = 255.0


def get_config():
  config = default_config()
  config.care.alpha = 0.0
  config.data.name = 'decoy_digits'
  config.data.image_size = 28
  # x / 255 keeps dtak/rrr's zero background (not [-1, 1]).
  config.data.mean = (0.0, 0.0, 0.0)
  config.data.std = (1.0, 1.0, 1.0)
  config.model.name = 'care_jax.models.mlp:GreyMLP'  # a backbone by import path, not a built-in
  config.train.batch_size = 256
  config.train.num_steps = 256
  config.train.weight_decay = 2 * ROSS_L2_PARAMS / config.train.batch_size
  config.guidance.weight = ROSS_L2_GRADS / PIXEL_MAX**2
  config.checkpoint.every_steps = 0
  return config
