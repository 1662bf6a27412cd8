"""The train steps lowered for CUDA and TPU on this CPU host, as a GPU or TPU run would jit them.

ResNet-50 at 224 px in bfloat16, the CE and the CARE step, multi-class and multi-label, jitted
by the mesh back-end (`care_jax.training.parallel.MeshParallel`) and lowered with
``jax.jit(...).trace(...).lower(lowering_platforms=...)``: lowering only (no compile), on
abstract shapes (`jax.eval_shape`: no weights are initialised). Each module must hold no host
callback, no float64 and none of the CPU forms (`care_jax.models.convolution`,
`care_jax.models.pooling`): every convolution a convolution, the stem's pool Flax's.
"""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import classification_loss as classification_loss_lib
from care_jax import config as config_lib
from care_jax import models
from care_jax import training
from care_jax.training import parallel

IMAGE_SIZE = 224
NUM_CLASSES = 7
# One image per simulated device (tests/conftest.py makes 8); the FLOPs are counted per image.
BATCH = 8
# ResNet-50 at 224 px: 4.1 G multiply-adds forward = 8.2 GFLOP; a training step (forward, input
# and weight gradients) about three times that.
ANALYTICAL_TRAIN_GFLOP_PER_IMAGE = 24.6
PLATFORMS = ('cuda', 'tpu')


def _abstract_batch(task: str) -> dict[str, jax.ShapeDtypeStruct]:
  """The pipeline's batch contract (`care_jax.data.pipeline`), as shapes."""
  image = jax.ShapeDtypeStruct((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  if task == 'multilabel':  # labels [B, K] multi-hot, a mask per (image, finding).
    return {
      'image': image,
      'label': jax.ShapeDtypeStruct((BATCH, NUM_CLASSES), jnp.float32),
      'mask': jax.ShapeDtypeStruct((BATCH, NUM_CLASSES, IMAGE_SIZE, IMAGE_SIZE), jnp.uint8),
      'has_mask': jax.ShapeDtypeStruct((BATCH, NUM_CLASSES), jnp.bool_),
    }
  return {
    'image': image,
    'label': jax.ShapeDtypeStruct((BATCH,), jnp.int32),
    'mask': jax.ShapeDtypeStruct((BATCH, IMAGE_SIZE, IMAGE_SIZE), jnp.float32),
    'has_mask': jax.ShapeDtypeStruct((BATCH,), jnp.bool_),
  }


def _traced_step(task: str, alpha: float):
  """The mesh back-end's jitted train step, traced on abstract ResNet-50 state and batch."""
  config = config_lib.default_config()
  model = models.get_model('resnet50', num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
  state = jax.eval_shape(
    lambda key: training.create_train_state(config, model, (IMAGE_SIZE, IMAGE_SIZE, 3), 1, key),
    jax.random.key(0),
  )
  loss = classification_loss_lib.make_classification_loss(
    'ce', class_counts=np.full(NUM_CLASSES, 10), num_steps=1, task=task
  )
  step_config = training.StepConfig(alpha=alpha, task=task)
  train_step = training.make_train_step(model, step_config, classification_loss=loss)
  mesh = parallel.MeshParallel(train_step, eval_step=lambda state, batch: {})  # Not lowered.
  with mesh.scope():
    traced = mesh.train_step.trace(state, _abstract_batch(task))
  num_convolutions = sum(leaf.ndim == 4 for leaf in jax.tree.leaves(state.params))
  return traced, num_convolutions


# The multi-label CE step differs from the multi-class one by its loss only (sigmoid for
# softmax, on the same backbone and head): its CARE step, which also maps every finding, covers it.
@pytest.mark.slow
@pytest.mark.parametrize(
  'task, alpha',
  [('multiclass', 0.0), ('multiclass', 0.5), ('multilabel', 0.5)],
  ids=['multiclass-ce', 'multiclass-care', 'multilabel-care'],
)
def test_the_train_step_lowers_for_cuda_and_tpu_without_cpu_forms(task, alpha, capsys):
  traced, num_convolutions = _traced_step(task, alpha)
  assert num_convolutions == 53  # ResNet-50: 49 in the blocks, 3 shortcuts, the stem.
  for platform in PLATFORMS:
    lowered = traced.lower(lowering_platforms=(platform,))
    text = lowered.as_text()
    ops = collections.Counter(re.findall(r'stablehlo\.(\w+)', text))
    assert 'callback' not in text.lower(), 'a host callback in the step'
    assert not re.search(r'\bf64\b|xf64', text), 'float64 in the step'
    # Forward, weight gradients and input gradients (not the images'): every one a convolution,
    # none as patches times a matrix; the stem's max pool and its gradient as Flax's.
    assert ops['convolution'] == 3 * num_convolutions - 1
    assert ops['reduce_window'] >= 1 and ops['select_and_scatter'] == 1
    assert ops['case'] == 0  # One platform: no other platform's branch left in the module.
    flops = lowered.cost_analysis()['flops'] / BATCH / 1e9
    with capsys.disabled():
      print(
        f'\n{platform}, {task}, {"CARE" if alpha else "CE"} step: {flops:.1f} GFLOP per image '
        f'lowered, ~{ANALYTICAL_TRAIN_GFLOP_PER_IMAGE} analytical (ResNet-50, 224 px)'
      )
    # A second backward pass (the official CARE step's) or a lost one would move it by 1/3.
    assert 0.9 < flops / ANALYTICAL_TRAIN_GFLOP_PER_IMAGE < 1.15
