"""The library's CARE train step against a minimal CARE step written out in plain JAX.

The reference below uses none of care_jax's loss or attention helpers: only the model's forward
pass (train mode) and the formulas of DESIGN.md section 1::

    F    = minmax_per_image( einsum(A, W[:, y]) )      W the head's Dense kernel, constant
    F_up = jax.image.resize(F, mask size, 'bilinear')  half-pixel centres
    L_in  = -min( sum(M F_up) / sum(M), tau )
    L_out =       sum((1 - M) F_up) / sum(1 - M)       (0 for a full mask: sum(1 - M) = 0)
    L_a  = mean over the boxed images of L_in + lam L_out
    L    = (1 - alpha) CE + alpha L_a                   CE: plain softmax cross-entropy

For a GAP + linear head the Grad-CAM channel weights are ``W[:, y] / (h w)``: treated as
constants (DESIGN.md 1, `care_jax.attention.cam` puts the kernel under ``stop_gradient``), so
the attention term moves the backbone through A (and the min/max) but not the classifier. The
library's loss (`metrics['loss']`) and gradient must equal the reference's to float32 rounding.

The library's gradient is read off its own train step, unchanged: the state's optimizer is an
optax transformation that stores the gradient it is given as its state and returns zero
updates, so one step leaves the exact gradient in ``opt_state`` (no subtraction rounding, no
private function).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from care_jax import config as config_lib
from care_jax import models
from care_jax import training

IMAGE = 64
ALPHA, LAM = 0.4, 0.7
# Normalised (ymin, xmin, ymax, xmax) boxes per image: a box, none, the full image, two boxes,
# none, a small box.
BOXES = (
  [(0.1, 0.2, 0.55, 0.6)],
  [],
  [(0.0, 0.0, 1.0, 1.0)],
  [(0.5, 0.05, 0.95, 0.4), (0.0, 0.7, 0.3, 1.0)],
  [],
  [(0.3, 0.3, 0.45, 0.5)],
)


def _rasterize(boxes, size):
  """[size, size] union of half-open boxes by pixel centres: min S <= k + 0.5 < max S."""
  centres = np.arange(size) + 0.5
  mask = np.zeros((size, size), np.float32)
  for ymin, xmin, ymax, xmax in boxes:
    rows = (ymin * size <= centres) & (centres < ymax * size)
    cols = (xmin * size <= centres) & (centres < xmax * size)
    mask[np.ix_(rows, cols)] = 1.0
  return mask


def _batch(num_classes, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.stack([_rasterize(boxes, IMAGE) for boxes in BOXES])
  batch_size = len(BOXES)
  # Smooth random images (a blurred field plus noise), so the maps have some structure.
  coarse = rng.normal(size=(batch_size, 8, 8, 3)).astype(np.float32)
  images = np.repeat(np.repeat(coarse, IMAGE // 8, 1), IMAGE // 8, 2)
  images = images + 0.3 * rng.normal(size=images.shape).astype(np.float32)
  return {
    'image': images,
    'label': (np.arange(batch_size) % num_classes).astype(np.int32),
    'mask': mask,
    'has_mask': mask.sum((1, 2)) > 0,
  }


def _reference_loss(
  params, batch_stats, *, batch, model, tau, alpha, lam, kernel_constant=True, minmax_grad=True
):
  """The CARE loss of the batch, written out; aux: the terms and the inner means.

  ``batch`` is a keyword, bound before ``jax.jit``: concrete, so that ``has_mask`` can select
  the boxed images.
  """
  (logits, intermediates), _ = model.apply(
    {'params': params, 'batch_stats': batch_stats},
    batch['image'],
    train=True,
    mutable=['batch_stats'],
  )
  labels = jnp.asarray(batch['label'])
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  # CAM of the true class: the classifier column of y (a constant: Grad-CAM weights).
  features = intermediates['features']  # A [B, h, w, C]
  kernel = params['head']['fc']['kernel']  # W [C, K]
  if kernel_constant:
    kernel = jax.lax.stop_gradient(kernel)
  columns = kernel[:, labels].T  # [B, C]
  cam = jnp.einsum('bhwc,bc->bhw', features, columns, precision=jax.lax.Precision.HIGHEST)
  # Min-max per image; a constant map (range <= 0) becomes zeros, with a safe denominator so
  # that its (unused) branch has a finite gradient.
  low = jnp.min(cam, axis=(1, 2), keepdims=True)
  high = jnp.max(cam, axis=(1, 2), keepdims=True)
  if not minmax_grad:
    low, high = jax.lax.stop_gradient(low), jax.lax.stop_gradient(high)
  span = high - low
  varies = span > 0
  normalised = jnp.where(varies, (cam - low) / jnp.where(varies, span, 1.0), 0.0)
  mask = jnp.asarray(batch['mask'])
  upsampled = jax.image.resize(normalised, mask.shape, 'bilinear')

  # The boxed images only (a static selection: has_mask is concrete here).
  boxed = np.flatnonzero(batch['has_mask'])
  inner, f = mask[boxed], upsampled[boxed]
  outer = 1.0 - inner
  inner_mean = jnp.sum(inner * f, axis=(1, 2)) / jnp.sum(inner, axis=(1, 2))
  loss_in = -jnp.minimum(inner_mean, tau)
  outer_area = jnp.sum(outer, axis=(1, 2))
  has_outside = outer_area > 0  # False for the full mask: its outer term is 0.
  loss_out = jnp.where(
    has_outside, jnp.sum(outer * f, axis=(1, 2)) / jnp.where(has_outside, outer_area, 1.0), 0.0
  )
  care = jnp.mean(loss_in + lam * loss_out)
  loss = (1.0 - alpha) * ce + alpha * care
  return loss, {'ce': ce, 'care': care, 'inner_mean': inner_mean}


def _gradient_capture() -> optax.GradientTransformation:
  """Zero updates; the new state is the gradient of the step (so params stay put)."""
  return optax.GradientTransformation(
    init=lambda params: jax.tree.map(jnp.zeros_like, params),
    update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
  )


def _state(model, name):
  config = config_lib.default_config()
  config.model.name = name
  state = training.create_train_state(config, model, (IMAGE, IMAGE, 3), 10, jax.random.key(0))
  capture = _gradient_capture()
  return state.replace(tx=capture, opt_state=capture.init(state.params))


def _tau_between_the_inner_means(inner_means):
  """A tau with boxed images on both sides (capped and not), away from every inner mean."""
  values = np.sort(np.asarray(inner_means))
  gaps = np.diff(values)
  k = int(np.argmax(gaps))
  assert gaps[k] > 1e-3, values  # Some spread, or the cap's kink would be too close.
  return float((values[k] + values[k + 1]) / 2)


def _assert_trees_close(actual, expected, *, rtol=1e-5):
  """Leaf by leaf: rtol, and an atol of rtol times the leaf's largest entry.

  The atol is for the near-zero entries of a leaf (conv kernels), whose float32 rounding
  follows the size of the leaf's sums, not their own (seen: ~5e-7 of the largest entry).
  """
  paths = jax.tree_util.tree_flatten_with_path(expected)[0]
  actual_leaves = jax.tree.leaves(actual)
  assert len(actual_leaves) == len(paths)
  for (path, want), got in zip(paths, actual_leaves):
    want, got = np.asarray(want), np.asarray(got)
    atol = rtol * float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def _norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


def _compare(name, num_classes, **model_kwargs):
  model = models.get_model(name, num_classes=num_classes, **model_kwargs)
  state = _state(model, name)
  batch = _batch(num_classes)
  reference = functools.partial(_reference_loss, batch=batch, model=model, alpha=ALPHA, lam=LAM)

  # tau between the inner means: some boxed images capped (no inner gradient), some not.
  _, aux = jax.jit(functools.partial(reference, tau=0.5))(state.params, state.batch_stats)
  tau = _tau_between_the_inner_means(aux['inner_mean'])

  ref_fn = jax.jit(jax.value_and_grad(functools.partial(reference, tau=tau), has_aux=True))
  (ref_loss, ref_aux), ref_grads = ref_fn(state.params, state.batch_stats)
  assert np.any(ref_aux['inner_mean'] > tau) and np.any(ref_aux['inner_mean'] < tau)

  step = training.make_train_step(model, training.StepConfig(alpha=ALPHA, tau=tau, lam=LAM))
  new_state, metrics = jax.jit(step)(state, batch)
  assert int(new_state.skipped_steps) == 0
  assert int(metrics['boxed']) == 4
  np.testing.assert_allclose(metrics['ce'], ref_aux['ce'], rtol=1e-5)
  np.testing.assert_allclose(metrics['care'], ref_aux['care'], rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], ref_loss, rtol=1e-5)
  # The capture optimizer left params unchanged and the step's gradient in its state.
  _assert_trees_close(new_state.params, state.params, rtol=0)
  _assert_trees_close(new_state.opt_state, ref_grads)
  return model, state, batch, tau, ref_grads


def test_tiny_cnn_step_matches_the_written_out_care_step():
  model, state, batch, tau, ref_grads = _compare('tiny_cnn', 3)

  # The comparison would see the attention path: it moves the backbone, through the min/max
  # too, and a CAM kernel that is not constant would move the classifier.
  def grads(**kwargs):
    fn = functools.partial(_reference_loss, batch=batch, model=model, tau=tau, lam=LAM, **kwargs)
    return jax.jit(jax.grad(lambda p: fn(p, state.batch_stats)[0]))(state.params)

  ce_only = grads(alpha=0.0)
  attention_only = jax.tree.map(lambda g, c: g - (1 - ALPHA) * c, ref_grads, ce_only)
  assert _norm(attention_only['backbone']) > 1e-2 * _norm(ref_grads['backbone'])
  np.testing.assert_allclose(
    attention_only['head']['fc']['kernel'], 0.0, atol=1e-6 * _norm(ce_only['head'])
  )
  no_minmax_grad = grads(alpha=ALPHA, minmax_grad=False)
  assert _norm(jax.tree.map(jnp.subtract, no_minmax_grad, ref_grads)) > 1e-3 * _norm(ref_grads)
  trained_kernel = grads(alpha=ALPHA, kernel_constant=False)
  kernel_change = trained_kernel['head']['fc']['kernel'] - ref_grads['head']['fc']['kernel']
  assert float(jnp.max(jnp.abs(kernel_change))) > 1e-3 * _norm(ref_grads['head'])


@pytest.mark.slow
def test_resnet18_linear_head_step_matches_the_written_out_care_step():
  # 64 px: layer4 is 2 x 2, upsampled 32x to the masks.
  _compare('resnet18', 4, head='linear')
