"""The guidance terms beside CARE: RRR's double backprop against finite differences, SGT's
bottom-k masking, RRR's irrelevant pixels of multi-label relevance, ActDiff against the official
formula, the method tables."""

import jax
import jax.numpy as jnp
import numpy as np

from care_jax import guidance_losses
from care_jax import models
from care_jax.config import schema
from care_jax.models.tiny import TinyCNN
from care_jax.training import guidance_terms

NUM_CLASSES = 3


def _context(variables, batch, model, *, task='multiclass', second_order=False):
  """A guidance_terms.Context of a training forward pass, with its input VJP (traced in the
  strided convolutions' closed form with ``second_order``, as the RRR step does)."""

  def forward(image):
    (logits, intermediates), updates = model.apply(
      variables, image, train=True, mutable=['batch_stats']
    )
    return logits, (intermediates, updates)

  logits, input_vjp, (intermediates, _) = guidance_terms.forward_and_input_vjp(
    forward, batch['image'], second_order=second_order
  )
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


def _rrr_penalty(model, variables, batch, *, second_order):
  def penalty(params):
    ctx = _context({**variables, 'params': params}, batch, model, second_order=second_order)
    return guidance_terms.rrr_term(ctx)

  return penalty


def test_rrr_gradient_equals_finite_differences_and_lax_s_convolution_forms():
  """d/dtheta of mean_n sum (A * d/dx sum_k log p_k)^2 (double backprop through a stride-2 conv,
  train-mode BatchNorm and a linear head), along a random direction, in float64; and the whole
  gradient of the RRR step's closed convolution form (`strided_convolution.second_order_forms`)
  equals that of lax's forms. At 12 px the conv's 6x6 output takes lax's form on CPU, not the
  patch form."""
  with jax.enable_x64(True):
    model, variables, batch = _setup(size=12, dtype=jnp.float64)
    penalty = _rrr_penalty(model, variables, batch, second_order=True)
    plain_penalty = _rrr_penalty(model, variables, batch, second_order=False)

    leaves, treedef = jax.tree.flatten(variables['params'])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    direction = treedef.unflatten(
      [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    )

    @jax.jit
    def gradients_and_numeric(params, eps=1e-4):
      shifted = lambda sign: penalty(
        jax.tree.map(lambda p, d: p + sign * eps * d, params, direction)
      )
      numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
      return jax.grad(penalty)(params), jax.grad(plain_penalty)(params), numeric

    grads, plain_grads, numeric = gradients_and_numeric(variables['params'])
    analytic = sum(
      float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction))
    )
  assert abs(analytic) > 1e-4
  np.testing.assert_allclose(float(numeric), analytic, rtol=1e-3)
  for closed, plain in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(closed, plain, rtol=1e-9, atol=1e-12)


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


def _official_shuffle_outside_mask(images, seg, permutations):
  """saliency-red-herring ``activmask/models/utils.py``, ``shuffle_outside_mask``, in numpy
  (NHWC, a pixel's channels together), with ``torch.randperm``'s draws given."""
  shuffled = images.copy()
  for b in range(seg.shape[0]):
    values = images[b][seg[b]]
    shuffled[b][seg[b]] = values[permutations[b]]
  return shuffled


def _official_compare_activations(act_a, act_b):
  """``activmask/models/loss.py``, ``compare_activations`` on [B, D] activations:
  ``PairwiseDistance(p=2)`` (eps 1e-6 added to the difference), summed, over its count."""
  dists = np.sqrt(np.sum((act_a - act_b + 1e-6) ** 2, axis=-1)).reshape(-1)
  return dists.sum() / len(dists)


def test_actdiff_shuffle_permutes_only_the_irrelevant_pixels_as_the_official_code():
  rng = np.random.default_rng(3)
  images = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
  seg = np.zeros((3, 8, 8), bool)
  seg[0, 1:6, 2:7] = True  # partial
  seg[2] = True  # every pixel

  @jax.jit
  def shuffle(images, seg):
    keys = jax.random.split(jax.random.key(4), 3)
    sources = jax.vmap(guidance_terms.masked_permutation)(keys, seg.reshape(3, -1))
    return guidance_terms.shuffle_pixels(images, seg, keys), sources

  got, sources = jax.device_get(shuffle(images, seg))
  permutations = []
  for b in range(3):
    chosen = np.flatnonzero(seg[b])
    # Unchosen pixels are their own source; the chosen ones take a permutation of the chosen.
    np.testing.assert_array_equal(sources[b][~seg[b].ravel()], np.flatnonzero(~seg[b]))
    np.testing.assert_array_equal(np.sort(sources[b][chosen]), chosen)
    permutations.append(np.searchsorted(chosen, sources[b][chosen]))
  assert not np.array_equal(permutations[0], np.arange(25))  # shuffled, not left in place
  np.testing.assert_array_equal(got[1], images[1])  # nothing to shuffle
  expected = _official_shuffle_outside_mask(images, seg, permutations)
  np.testing.assert_array_equal(got, expected)


def test_actdiff_equals_the_official_formula_on_partial_full_and_empty_masks():
  """mean_n a_n ||z(x~) - z(x) + eps|| against compare_activations, with the term's own
  permutations (checked above against the official shuffle), for both layers."""
  model, variables, batch = _setup()
  key = jax.random.key(5)
  layers = {'pooled': lambda f: f.mean(axis=(1, 2)), 'features': lambda f: f.reshape(2, -1)}

  @jax.jit
  def run(batch):
    ctx = _context(variables, batch, model)
    keys = guidance_terms._example_keys(key, 2, None)
    seg = guidance_terms.irrelevant_pixels(ctx) > 0
    shuffled = guidance_terms.shuffle_pixels(batch['image'], seg, keys)
    (_, masked), _ = model.apply(variables, shuffled, train=True, mutable=['batch_stats'])
    terms = {layer: guidance_terms.actdiff_term(ctx, key, layer=layer) for layer in layers}
    return terms, ctx.features, masked['features']

  for name, box in (
    ('partial', np.index_exp[2:6, 1:5]),
    ('full', np.index_exp[:, :]),
    ('empty', None),
  ):
    batch['mask'] = np.zeros_like(batch['mask'])
    if box is not None:
      batch['mask'][(slice(None), *box)] = 1.0
    for has_mask in ([True, True], [True, False]):
      batch['has_mask'] = np.array(has_mask)
      terms, clean, masked = jax.device_get(run(batch))
      for layer, flatten in layers.items():
        # The official formula, on the annotated images (the others count 0).
        distances = [
          _official_compare_activations(flatten(masked)[i : i + 1], flatten(clean)[i : i + 1])
          for i in range(2)
        ]
        expected = np.sum(np.where(has_mask, distances, 0.0)) / 2
        np.testing.assert_allclose(terms[layer], expected, rtol=1e-5, err_msg=f'{name} {layer}')
        if name == 'full':  # Nothing shuffled: the norm of the eps vector alone.
          eps_norm = 1e-6 * np.sqrt(flatten(clean).shape[1])
          np.testing.assert_allclose(terms[layer], eps_norm * np.mean(has_mask), rtol=1e-3)
        else:
          assert terms[layer] > 1e-3, (name, layer)
  batch['has_mask'] = np.array([False, False])
  assert float(run(batch)[0]['pooled']) == 0.0


def test_method_tables_agree_with_the_config_and_the_map_losses():
  assert guidance_terms.MAP_METHODS == schema.GUIDANCE_MAP_METHODS
  assert guidance_terms.FORWARD_METHODS == schema.GUIDANCE_FORWARD_METHODS
  assert set(guidance_terms.MAP_METHODS) == set(guidance_losses.MAP_LOSSES) - {'care'}
  assert set(guidance_terms.DEFAULTS) == set(schema.GUIDANCE_METHODS) - {'care', 'none'}
  for defaults in guidance_terms.DEFAULTS.values():
    assert defaults.normalize in guidance_losses.NORMALIZATIONS
    assert defaults.classes in schema.GUIDANCE_CLASSES
