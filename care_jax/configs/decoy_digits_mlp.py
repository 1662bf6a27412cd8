"""Decoy-Digits with Ross et al.'s MLP: cross-entropy alone (add guidance.method=rrr for RRR).

care-jax train --config=decoy_digits_mlp --workdir=runs/decoy_mlp
care-jax train --config=decoy_digits_mlp --config.guidance.method=rrr --workdir=runs/decoy_rrr

The Decoy-MNIST protocol of "Right for the Right Reasons" (Ross, Hughes and Doshi-Velez, IJCAI
2017; github.com/dtak/rrr, ``rrr/multilayer_perceptron.py`` and ``experiments/Decoy MNIST.ipynb``)
on `decoy_digits`: the multilayer perceptron (hidden layers 50 and 30, ReLU, ``0.1 * N(0, 1)``
init; `care_jax.models.mlp`) on the flattened pixels, unnormalised as theirs (pixel / 255: the
background is 0, so only the digit and the decoy drive the first layer), Adam 1e-3, batch 256,
64 epochs (256 steps of the 1,017 training digits). The suite runs it as
``care-jax experiments --suite=guidance --rows=CE,RRR --seeds=0-4 --config=decoy_digits_mlp``.
A convolutional network with global average pooling (`tiny_cnn`), or even with a flatten head,
barely takes the decoy shortcut here (docs/experiments.md).
"""

from care_jax.config import default_config


def get_config():
  config = default_config()
  config.care.alpha = 0.0
  config.data.name = 'decoy_digits'
  config.data.image_size = 28
  # dtak/rrr feeds the raw pixels; x / 255 keeps their zero background (not [-1, 1]).
  config.data.mean = (0.0, 0.0, 0.0)
  config.data.std = (1.0, 1.0, 1.0)
  config.model.name = 'care_jax.models.mlp:MLP'  # a backbone by import path, not a built-in
  config.train.batch_size = 256
  config.train.num_steps = 256
  config.checkpoint.every_steps = 0
  return config
