"""The guidance terms of the train step beside CARE: losses on a map, and those that need more.

`care_jax.training.step` adds ``weight * L`` to the classification loss, with ``L`` one of

* a **map loss** (``MAP_METHODS``: GRADIA, HAICS, Energy, RRR-G, HINT, RES): a pure loss of
  `care_jax.guidance_losses.MAP_LOSSES` on the Grad-CAM map of the supervised class, taken at the
  last conv stage from the features of the training forward pass (`class_maps`: the head's VJP
  alone, as for CARE), normalised by `care_jax.guidance_losses.normalize_maps`, averaged over the
  annotated (image, class) pairs of the global batch (`map_term`);
* **RRR** (Ross et al., IJCAI 2017; dtak/rrr ``rrr/multilayer_perceptron.py``): the squared input
  gradient of the summed log-probabilities on the irrelevant pixels (`rrr_term`). The input
  gradient is the VJP of the training forward pass itself, and `jax.grad` of the step
  differentiates through it (double backprop);
* **GAIN attention mining** (Li et al., CVPR 2018; ilyak93/GAIN-pytorch
  ``models/batch_GAIN_VOC.py``): a second forward pass on the image with its attended region
  softly erased, whose score of the ground truth is the loss (`gain_term`), plus ``ext_weight``
  times GAIN's L_e (the 'hint' map loss) on the annotated images;
* **saliency-guided training** (Ismail et al., NeurIPS 2021; ayaabdelsalam91/
  saliency_guided_training ``Scripts/interpretable.py``): the KL divergence between the outputs on
  the image and on the image with its lowest-saliency pixels replaced by noise (`sgt_term`).

Second forward passes run BatchNorm on their own batch's statistics and discard the updates
(only the main pass moves the running statistics). Every term returns this device's share of a
global-batch mean, as the step's CE does, so the mesh and pmap back-ends equal one device.

Multi-label (labels [B, K], relevance [B, K, H, W], ``has_mask`` [B, K]): the maps of each
positive finding; RRR's irrelevant pixels are those irrelevant to every annotated finding of the
image and relevant to none; GAIN erases the union (pixel maximum) of the positive findings'
soft masks in one second pass (the paper runs one per class) and scores their mean sigmoid;
SGT's saliency is that of the summed positive logits and its KL is summed over the findings'
Bernoulli outputs.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from care_jax import _numerics
from care_jax import attention
from care_jax import guidance_losses
from care_jax import models

MAP_METHODS = ('gradia', 'haics', 'energy', 'rrr_g', 'hint', 'res')
FORWARD_METHODS = ('rrr', 'gain', 'sgt')
# The methods whose term needs the input gradient of the training forward pass.
INPUT_GRADIENT_METHODS = ('rrr', 'sgt')


@dataclasses.dataclass(frozen=True)
class MethodDefaults:
  """A method's official choices: whose map, its normalisation, constant Grad-CAM weights."""

  classes: str
  normalize: str
  stop_gradient_weights: bool


# RES.py's baselines (GRADIA, HAICS) and RES: the ground truth's Grad-CAM, min-max, no ReLU,
# detached weights. Rao et al. (sukrutrao/Model-Guidance `attribution_methods.py`):
# create_graph=True and max-abs. RRR-G (typology `xil_methods/xil_loss.py`): the predicted
# class, [0, 1]-normalised. GAIN-pytorch: ReLU Grad-CAM, min-max, detached weights.
DEFAULTS = {
  'gradia': MethodDefaults('label', 'minmax', True),
  'haics': MethodDefaults('label', 'minmax', True),
  'energy': MethodDefaults('label', 'maxabs', False),
  'rrr_g': MethodDefaults('predicted', 'minmax', True),
  'hint': MethodDefaults('label', 'minmax', True),
  'res': MethodDefaults('label', 'minmax', True),
  'gain': MethodDefaults('label', 'relu_minmax', True),
  'rrr': MethodDefaults('label', 'none', True),
  'sgt': MethodDefaults('label', 'none', True),
}


@dataclasses.dataclass(frozen=True)
class Context:
  """What a guidance term reads of the step: the model, the batch and the forward pass."""

  model: models.Classifier
  variables: dict[str, Any]
  batch: dict[str, jax.Array]
  logits: jax.Array
  features: jax.Array
  task: str
  axis_name: str | None
  rngs: dict[str, jax.Array]
  # The VJP of the training forward pass w.r.t. the image (INPUT_GRADIENT_METHODS only).
  input_vjp: Callable[[jax.Array], tuple[jax.Array]] | None = None


def global_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
  """`x` summed over the devices of the pmap axis (itself under jit)."""
  return jax.lax.psum(x, axis_name) if axis_name else x


def _share_of_mean(per_example: jax.Array, count: jax.Array, axis_name) -> jax.Array:
  """This device's share of ``sum(per_example) / count`` over the global batch (0 if empty)."""
  return _numerics.safe_mean(jnp.sum(per_example), global_sum(count, axis_name))


def supervised_classes(ctx: Context, choice: str) -> tuple[jax.Array, jax.Array]:
  """The classes whose maps are supervised ([B], or [B, K] for multi-label) and ``has_mask``.

  ``choice`` 'label': the ground truth (each positive finding); 'predicted': the argmax of the
  logits (each finding with a positive logit).
  """
  labels, has_mask = ctx.batch['label'], ctx.batch['has_mask']
  logits = jax.lax.stop_gradient(ctx.logits)
  if ctx.task == 'multilabel':
    present = labels > 0.5 if choice == 'label' else logits > 0
    return jnp.broadcast_to(jnp.arange(labels.shape[-1]), labels.shape), has_mask & present
  return (labels if choice == 'label' else jnp.argmax(logits, -1)), has_mask


def class_maps(
  ctx: Context, classes: jax.Array, *, stop_gradient_weights: bool, normalize: str
) -> jax.Array:
  """Normalised Grad-CAM maps [B, h, w] (or [B, K, h, w] for [B, K] classes), float32.

  The head's VJP alone on the forward pass's features (`care_jax.attention.grad_cam`), in
  training mode with that pass's dropout key (BatchNorm updates discarded), unnormalised, then
  `care_jax.guidance_losses.normalize_maps` with ``normalize``.
  """
  model, variables = ctx.model, ctx.variables

  def head_fn(features):
    logits, _ = model.apply(
      variables,
      features,
      train=True,
      method=models.Classifier.apply_head,
      mutable=['batch_stats'],
      rngs=ctx.rngs,
    )
    return logits

  def maps_of(column):
    return attention.grad_cam(
      head_fn, ctx.features, column, stop_gradient_weights=stop_gradient_weights, normalize=False
    )

  maps = (
    jax.vmap(maps_of, in_axes=1, out_axes=1)(classes) if classes.ndim == 2 else maps_of(classes)
  )
  return guidance_losses.normalize_maps(maps, normalize)


def map_term(
  ctx: Context, method: str, defaults: MethodDefaults, hyperparameters: dict[str, Any]
) -> tuple[jax.Array, jax.Array]:
  """The map loss ``method`` averaged over the annotated pairs, and their global count."""
  classes, has_mask = supervised_classes(ctx, defaults.classes)
  maps = class_maps(
    ctx, classes, stop_gradient_weights=defaults.stop_gradient_weights, normalize=defaults.normalize
  )
  if method == 'res':
    # RES's threshold and normalisers are those of the global batch.
    hyperparameters = {**hyperparameters, 'axis_name': ctx.axis_name}
  per_example = guidance_losses.MAP_LOSSES[method](
    maps, guidance_losses.relevance_of(ctx.batch), has_mask=has_mask, **hyperparameters
  )
  count = jnp.sum(has_mask.astype(jnp.float32))
  return _share_of_mean(per_example, count, ctx.axis_name), global_sum(count, ctx.axis_name)


def _at_image_size(relevance: jax.Array, image: jax.Array) -> jax.Array:
  """Relevance maps resized (nearest) to the image's [H, W] where their grid differs."""
  size = image.shape[1:3]
  if relevance.shape[-2:] == size:
    return relevance
  return jax.image.resize(relevance, (*relevance.shape[:-2], *size), 'nearest')


def irrelevant_pixels(ctx: Context) -> jax.Array:
  """[B, H, W] float 1 on the pixels RRR penalises: irrelevant (r < 0) on annotated images.

  Multi-label: irrelevant to an annotated finding of the image and relevant (r > 0) to none.
  """
  relevance = _at_image_size(guidance_losses.relevance_of(ctx.batch), ctx.batch['image'])
  has_mask = ctx.batch['has_mask']
  if ctx.task == 'multilabel':
    annotated = has_mask[..., None, None]
    irrelevant = jnp.any(annotated & (relevance < 0), axis=1)
    return (irrelevant & ~jnp.any(annotated & (relevance > 0), axis=1)).astype(jnp.float32)
  return ((relevance < 0) & has_mask[:, None, None]).astype(jnp.float32)


def _log_probabilities(logits: jax.Array, task: str) -> jax.Array:
  logits = _numerics.float_logits(logits)
  return jax.nn.log_sigmoid(logits) if task == 'multilabel' else jax.nn.log_softmax(logits)


def input_gradient(ctx: Context, objective: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """d objective(logits) / d image [B, H, W, C] through the training forward pass (its VJP)."""
  cotangent = jax.grad(lambda z: objective(z))(ctx.logits)
  (grads,) = ctx.input_vjp(cotangent.astype(ctx.logits.dtype))
  return grads.astype(_numerics.compute_dtype(grads))


def rrr_term(ctx: Context) -> jax.Array:
  """Ross et al.'s right-reasons penalty, the mean over the global batch of

      sum_{pixels d, channels} (A_d * d/dx_d sum_k log p_k)^2

  with A the irrelevant pixels (`irrelevant_pixels`) and p the softmax (multi-label: each
  finding's sigmoid) probabilities. dtak/rrr sums the penalty over examples; the mean keeps
  the weight's meaning next to the step's mean CE.
  """
  grads = input_gradient(ctx, lambda z: jnp.sum(_log_probabilities(z, ctx.task)))
  penalised = grads * irrelevant_pixels(ctx)[..., None]
  per_example = jnp.sum(jnp.square(penalised), axis=(1, 2, 3))
  return _share_of_mean(per_example, jnp.float32(per_example.shape[0]), ctx.axis_name)


def _second_forward(ctx: Context, images: jax.Array) -> jax.Array:
  """Logits of a second training-mode pass whose BatchNorm updates are discarded."""
  (logits, _), _ = ctx.model.apply(
    ctx.variables, images, train=True, mutable=['batch_stats'], rngs=ctx.rngs
  )
  return _numerics.float_logits(logits)


def _upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[..., h, w] maps to [..., H, W] by half-pixel bilinear upsampling (GAIN-pytorch's)."""
  ry = jnp.asarray(_numerics.bilinear_matrix(maps.shape[-2], size[0]), maps.dtype)
  rx = jnp.asarray(_numerics.bilinear_matrix(maps.shape[-1], size[1]), maps.dtype)
  return jnp.einsum('Hh,...hw,Ww->...HW', ry, maps, rx, precision=_numerics.HIGHEST)


def gain_term(
  ctx: Context,
  *,
  sigma: float,
  omega: float,
  fill: float,
  ext_weight: float,
  stop_gradient_weights: bool,
  normalize: str,
) -> tuple[jax.Array, jax.Array]:
  """GAIN's ``L_am + ext_weight * L_e`` (paper Eq. 3-8), and the global annotated count.

  ``A`` = the ground truth's Grad-CAM (ReLU, min-max by default), upsampled to the image;
  ``T(A) = sigmoid(omega (A - sigma))``; ``I* = I - T(A) I + T(A) fill``;
  ``L_am`` = the mean over the global batch of softmax p_y(I*) (multi-label: the mean sigmoid
  of the positive findings). The map keeps its gradient through the features (the weights are
  constants, as in the paper); the second pass's BatchNorm uses the masked batch's statistics
  where GAIN-pytorch's ``FreezedBnModel`` uses the running ones (a model trained from scratch
  has meaningless running statistics early on). ``L_e``: the 'hint' map loss (GAIN-pytorch
  ``main_MedT.py``: the per-pixel squared error) on the annotated images.
  """
  classes, has_mask = supervised_classes(ctx, 'label')
  maps = class_maps(ctx, classes, stop_gradient_weights=stop_gradient_weights, normalize=normalize)
  image = ctx.batch['image']
  soft = jax.nn.sigmoid(omega * (_upsample(maps, image.shape[1:3]) - sigma))
  labels = ctx.batch['label']
  if ctx.task == 'multilabel':
    positive = (labels > 0.5).astype(soft.dtype)
    soft = jnp.max(soft * positive[..., None, None], axis=1)
  erased = image - soft[..., None] * image + soft[..., None] * fill
  logits = _second_forward(ctx, erased.astype(image.dtype))
  if ctx.task == 'multilabel':
    scores = _numerics.safe_mean(
      jnp.sum(jax.nn.sigmoid(logits) * positive, -1), jnp.sum(positive, -1)
    )
  else:
    scores = jnp.take_along_axis(jax.nn.softmax(logits), labels[:, None], -1)[:, 0]
  mining = _share_of_mean(scores, jnp.float32(scores.shape[0]), ctx.axis_name)
  count = jnp.sum(has_mask.astype(jnp.float32))
  if not ext_weight:
    return mining, global_sum(count, ctx.axis_name)
  per_example = guidance_losses.MAP_LOSSES['hint'](
    maps, guidance_losses.relevance_of(ctx.batch), has_mask=has_mask
  )
  extra = _share_of_mean(per_example, count, ctx.axis_name)
  return mining + ext_weight * extra, global_sum(count, ctx.axis_name)


def _example_keys(key: jax.Array, batch_size: int, axis_name: str | None) -> jax.Array:
  """One key per example, folded with its index in the global batch (same on every back-end)."""
  first = jax.lax.axis_index(axis_name) * batch_size if axis_name else 0
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(batch_size))


def sgt_term(
  ctx: Context, noise_key: jax.Array, *, fraction: float, random_fill: bool, absolute: bool
) -> jax.Array:
  """Saliency-guided training's ``KL(p(x) || p(x~))``, the mean over the global batch.

  ``S = d f_y / dx`` (multi-label: of the summed positive logits), mean over channels, constant;
  ``x~`` = x with its ``round(fraction * H * W)`` lowest-S pixels (by |S| with ``absolute``)
  replaced by U(min x, max x) drawn per image (``random_fill``) or 0. The official code takes S
  in eval mode from a separate pass; here it is the VJP of the training pass (no extra forward).
  Gradients flow through both outputs, as in ``Scripts/interpretable.py``.
  """
  labels, image = ctx.batch['label'], ctx.batch['image']
  if ctx.task == 'multilabel':
    target = labels.astype(jnp.float32)
  else:
    target = jax.nn.one_hot(labels, ctx.logits.shape[-1])
  saliency = jax.lax.stop_gradient(
    jnp.mean(input_gradient(ctx, lambda z: jnp.sum(z.astype(jnp.float32) * target)), -1)
  )
  if absolute:
    saliency = jnp.abs(saliency)
  batch_size, height, width = saliency.shape
  k = max(1, round(fraction * height * width))
  _, lowest = jax.lax.top_k(-saliency.reshape(batch_size, -1), k)
  dropped = jnp.zeros((batch_size, height * width), bool)
  dropped = dropped.at[jnp.arange(batch_size)[:, None], lowest].set(True)
  dropped = dropped.reshape(batch_size, height, width, 1)
  if random_fill:
    low = jax.lax.stop_gradient(jnp.min(image, axis=(1, 2, 3)))
    high = jax.lax.stop_gradient(jnp.max(image, axis=(1, 2, 3)))
    keys = _example_keys(noise_key, batch_size, ctx.axis_name)
    unit = jax.vmap(lambda key: jax.random.uniform(key, image.shape[1:], image.dtype))(keys)
    noise = low[:, None, None, None] + unit * (high - low)[:, None, None, None]
  else:
    noise = jnp.zeros_like(image)
  masked_logits = _second_forward(ctx, jnp.where(dropped, noise, image))
  per_example = _kl(ctx.logits, masked_logits, ctx.task)
  return _share_of_mean(per_example, jnp.float32(batch_size), ctx.axis_name)


def _kl(logits: jax.Array, other: jax.Array, task: str) -> jax.Array:
  """Per-example KL(p || q) of the softmax (multi-label: summed per-finding Bernoulli) outputs."""
  logits = _numerics.float_logits(logits)
  if task == 'multilabel':
    log_p, log_q = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(other)
    log_not_p, log_not_q = jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(-other)
    kl = jnp.exp(log_p) * (log_p - log_q) + jnp.exp(log_not_p) * (log_not_p - log_not_q)
    return jnp.sum(kl, -1)
  log_p, log_q = jax.nn.log_softmax(logits), jax.nn.log_softmax(other)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1)
