"""The guidance terms beside CARE: RRR's double backprop against finite differences, SGT's
bottom-k masking, RRR's irrelevant pixels of multi-label relevance, the method tables."""

import jax
import jax.numpy as jnp
import numpy as np

from care_jax import guidance_losses
from care_jax import models
from care_jax.config import schema
from care_jax.models.tiny import TinyCNN
from care_jax.training import guidance_terms

NUM_CLASSES = 3


def _context(variables, batch, model, *, task='multiclass'):
  """A guidance_terms.Context of a training forward pass, with its input VJP."""

  def forward(image):
    (logits, intermediates), updates = model.apply(
      variables, image, train=True, mutable=['batch_stats']
    )
    return logits, (intermediates, updates)

  logits, input_vjp, (intermediates, _) = jax.vjp(forward, batch['image'], has_aux=True)
  return guidance_terms.Context(
    model, variables, batch, logits, intermediates['features'], task, None, {}, input_vjp
  )


def _setup(size=8, dtype=jnp.float32):
  precision = {'dtype': dtype, 'param_dtype': dtype}
  model = models.Classifier(
    backbone=TinyCNN(widths=(4,), strides=(2,), **precision),
    head=models.LinearHead(num_classes=NUM_CLASSES, **precision),
  )
  rng = np.random.default_rng(0)
  mask = np.zeros((2, size, size), dtype)
  mask[:, 2:6, 1:5] = 1.0
  batch = {
    'image': rng.normal(size=(2, size, size, 3)).astype(dtype),
    'label': np.array([0, 2], np.int32),
    'mask': mask,
    'has_mask': np.array([True, False]),
  }
  variables = model.init(jax.random.key(0), batch['image'], train=False)
  return model, variables, batch


def test_rrr_gradient_equals_finite_differences():
  """d/dtheta of mean_n sum (A * d/dx sum_k log p_k)^2 (double backprop through a conv, train-mode
  BatchNorm and a linear head), along a random direction, in float64."""
  with jax.enable_x64(True):
    model, variables, batch = _setup(dtype=jnp.float64)

    def penalty(params):
      return guidance_terms.rrr_term(_context({**variables, 'params': params}, batch, model))

    leaves, treedef = jax.tree.flatten(variables['params'])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    direction = treedef.unflatten(
      [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    )

    @jax.jit
    def analytic_and_numeric(params, eps=1e-4):
      grads = jax.grad(penalty)(params)
      analytic = sum(
        jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction))
      )
      shifted = lambda sign: penalty(
        jax.tree.map(lambda p, d: p + sign * eps * d, params, direction)
      )
      return analytic, (shifted(1.0) - shifted(-1.0)) / (2 * eps)

    analytic, numeric = analytic_and_numeric(variables['params'])
  assert abs(float(analytic)) > 1e-4
  np.testing.assert_allclose(float(numeric), float(analytic), rtol=1e-3)


def test_rrr_penalises_only_irrelevant_pixels_of_annotated_images():
  model, variables, batch = _setup()
  penalty = jax.jit(lambda batch: guidance_terms.rrr_term(_context(variables, batch, model)))
  assert float(penalty(batch)) > 0
  # Image 0's box covers the whole image (no irrelevant pixel); image 1 has no mask.
  batch['mask'][0] = 1.0
  assert float(penalty(batch)) == 0.0


def test_sgt_replaces_the_lowest_saliency_pixels_only():
  """With a constant fill and a head-independent model, x~ differs from x exactly on the
  round(fraction * H * W) pixels with the smallest input gradient of the true logit."""
  model, variables, batch = _setup()
  ctx = _context(variables, batch, model)
  seen = []

  def second_forward(ctx, images):
    seen.append(images)
    return ctx.logits

  saliency = np.asarray(
    jnp.mean(
      guidance_terms.input_gradient(
        ctx, lambda z: jnp.sum(z * jax.nn.one_hot(batch['label'], NUM_CLASSES))
      ),
      -1,
    )
  )
  original, guidance_terms._second_forward = guidance_terms._second_forward, second_forward
  try:
    kl = guidance_terms.sgt_term(
      ctx, jax.random.key(0), fraction=0.25, random_fill=False, absolute=False
    )
  finally:
    guidance_terms._second_forward = original
  np.testing.assert_allclose(float(kl), 0.0, atol=1e-7)  # The same logits: KL 0.
  changed = np.any(np.asarray(seen[0]) != batch['image'], axis=-1)
  for image in range(2):
    lowest = np.argsort(saliency[image].ravel())[:16]
    np.testing.assert_array_equal(np.flatnonzero(changed[image]), np.sort(lowest))


def test_multilabel_irrelevant_pixels_are_irrelevant_to_every_annotated_finding():
  relevance = np.zeros((1, 3, 1, 4), np.float32)
  relevance[0, 0] = [1, -1, -1, 0]  # Finding 0: boxed on pixel 0.
  relevance[0, 1] = [-1, 1, -1, -1]  # Finding 1: boxed on pixel 1.
  relevance[0, 2] = [-1, -1, -1, -1]  # Finding 2: not annotated.
  batch = {
    'image': np.zeros((1, 1, 4, 3), np.float32),
    'relevance': relevance,
    'has_mask': np.array([[True, True, False]]),
  }
  ctx = guidance_terms.Context(None, {}, batch, None, None, 'multilabel', None, {})
  np.testing.assert_array_equal(guidance_terms.irrelevant_pixels(ctx), [[[0, 0, 1, 1]]])


def test_method_tables_agree_with_the_config_and_the_map_losses():
  assert guidance_terms.MAP_METHODS == schema.GUIDANCE_MAP_METHODS
  assert guidance_terms.FORWARD_METHODS == schema.GUIDANCE_FORWARD_METHODS
  assert set(guidance_terms.MAP_METHODS) == set(guidance_losses.MAP_LOSSES) - {'care'}
  assert set(guidance_terms.DEFAULTS) == set(schema.GUIDANCE_METHODS) - {'care', 'none'}
  for defaults in guidance_terms.DEFAULTS.values():
    assert defaults.normalize in guidance_losses.NORMALIZATIONS
    assert defaults.classes in schema.GUIDANCE_CLASSES
