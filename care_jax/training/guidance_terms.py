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
  the image and on the image with its lowest-saliency pixels replaced by noise (`sgt_term`);
* **ActDiff** (Viviano et al., ICLR 2021; josephdviviano/saliency-red-herring
  ``activmask/models/resnet.py``): the L2 distance between the activations of the image and of
  the image with its irrelevant pixels shuffled (`actdiff_term`).

Second forward passes run BatchNorm on their own batch's statistics and discard the updates
(only the main pass moves the running statistics). Every term returns this device's share of a
global-batch mean, as the step's CE does, so the mesh and pmap back-ends equal one device.

Multi-label (labels [B, K], relevance [B, K, H, W], ``has_mask`` [B, K]): the maps of each
positive finding; RRR's irrelevant pixels are those irrelevant to every annotated finding of the
image and relevant to none; GAIN erases the union (pixel maximum) of the positive findings'
soft masks in one second pass (the paper runs one per class) and scores their mean sigmoid;
SGT's saliency is that of the summed positive logits and its KL is summed over the findings'
Bernoulli outputs; ActDiff shuffles the pixels RRR penalises.
"""

from collections.abc import Callable
import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from care_jax import _numerics
from care_jax import attention
from care_jax import guidance_losses
from care_jax import models
from care_jax.models import strided_convolution

MAP_METHODS = ('gradia', 'haics', 'energy', 'rrr_g', 'hint', 'res')
FORWARD_METHODS = ('rrr', 'gain', 'sgt', 'actdiff')
# The methods whose term needs the input gradient of the training forward pass.
INPUT_GRADIENT_METHODS = ('rrr', 'sgt')
# Those that differentiate the input gradient again (double backprop): their forward pass traces
# strided convolutions in the closed form of `care_jax.models.strided_convolution`.
SECOND_ORDER_METHODS = ('rrr',)


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
  'actdiff': MethodDefaults('label', 'none', True),
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
  # The backbone's other head inputs of the forward pass (a ViT's class token), or None.
  head_inputs: dict[str, jax.Array] | None = None


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
      head_inputs=ctx.head_inputs,
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


def forward_and_input_vjp(
  forward: Callable[[jax.Array], tuple[jax.Array, Any]], image: jax.Array, *, second_order: bool
) -> tuple[jax.Array, Callable[[jax.Array], tuple[jax.Array]], Any]:
  """``jax.vjp(forward, image, has_aux=True)``: the logits, the VJP w.r.t. the image, the aux.

  With ``second_order`` (the input gradient is differentiated again: `SECOND_ORDER_METHODS`)
  the forward is traced in `care_jax.models.strided_convolution.second_order_forms`: the same
  values, but its strided convolutions' second derivatives take XLA's fast CPU forms (RRR's
  step on ResNet-50 at 224 px, docs/benchmarks.md).
  """
  scope = strided_convolution.second_order_forms if second_order else contextlib.nullcontext
  with scope():
    return jax.vjp(forward, image, has_aux=True)


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

  Their weight ``l2_grads`` converts to ``guidance.weight`` as follows (dtak/rrr,
  ``rrr/multilayer_perceptron.py``, ``MultilayerPerceptron.fit``): they sum both CE and the
  penalty over the batch, we average both, so the ratio and the weight are the same; they feed
  0..255 pixels, and images scaled by ``1 / s`` (``data.std``) have input gradients ``s`` times
  larger, so their weight on 0..255 is ``l2_grads / 255**2`` on pixels / 255 (Decoy-MNIST's
  1000 -> 0.0154, configs/decoy_digits_mlp.py). A grey image stored as C equal channels and read
  by a network on all of them spreads the grey's gradient over the channels: the sum over them
  is about ``1 / C`` of theirs (``models.mlp.GreyMLP`` reads one channel, as they do).
  """
  grads = input_gradient(ctx, lambda z: jnp.sum(_log_probabilities(z, ctx.task)))
  penalised = grads * irrelevant_pixels(ctx)[..., None]
  per_example = jnp.sum(jnp.square(penalised), axis=(1, 2, 3))
  return _share_of_mean(per_example, jnp.float32(per_example.shape[0]), ctx.axis_name)


def _second_pass(ctx: Context, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(logits, intermediates) of a second training-mode pass whose BatchNorm updates are
  discarded."""
  outputs, _ = ctx.model.apply(
    ctx.variables, images, train=True, mutable=['batch_stats'], rngs=ctx.rngs
  )
  return outputs


def _second_forward(ctx: Context, images: jax.Array) -> jax.Array:
  """Float logits of a second training-mode pass (`_second_pass`)."""
  logits, _ = _second_pass(ctx, images)
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


# ActDiff ------------------------------------------------------------------------------------

# The activations ActDiff compares: the spatial mean of the feature map (the official
# ``save_acts: [5]`` of every config, the ResNet's pooled features) or the whole feature map.
ACTDIFF_LAYERS = ('pooled', 'features')
# torch.nn.PairwiseDistance's default eps, added to the difference (it also keeps the norm's
# gradient finite where the two passes agree).
_PAIRWISE_EPS = 1e-6


def masked_permutation(key: jax.Array, chosen: jax.Array) -> jax.Array:
  """[N] int32 source of each position: the ``chosen`` positions permuted uniformly at random
  among themselves, every other position its own source.

  Vectorised form of ``torch.randperm`` over ``X[b, seg]`` (saliency-red-herring
  ``activmask/models/utils.py``, ``shuffle_outside_mask``): the chosen positions in index order
  receive, in turn, the chosen positions sorted by a random key.

  Examples:
    >>> chosen = jnp.array([True, False, True, True])
    >>> sources = masked_permutation(jax.random.key(0), chosen)
    >>> int(sources[1]), sorted(sources[jnp.array([0, 2, 3])].tolist())
    (1, [0, 2, 3])
  """
  chosen = jnp.asarray(chosen, bool)
  size = chosen.shape[0]
  in_order = jnp.argsort((~chosen).astype(jnp.int8), stable=True)
  keys = jnp.where(chosen, jax.random.uniform(key, (size,)), 2.0)
  shuffled = jnp.argsort(keys, stable=True).astype(jnp.int32)
  return jnp.zeros(size, jnp.int32).at[in_order].set(shuffled)


def shuffle_pixels(images: jax.Array, pixels: jax.Array, keys: jax.Array) -> jax.Array:
  """``images`` [B, H, W, C] with each image's ``pixels`` ([B, H, W] bool) permuted among
  themselves (`masked_permutation` with that image's key of ``keys`` [B]); a pixel moves with
  all its channels."""
  batch_size, height, width, channels = images.shape
  sources = jax.vmap(masked_permutation)(keys, pixels.reshape(batch_size, height * width))
  flat = images.reshape(batch_size, height * width, channels)
  return jnp.take_along_axis(flat, sources[..., None], axis=1).reshape(images.shape)


def _actdiff_activations(features: jax.Array, layer: str) -> jax.Array:
  """[B, D] float activations of a [B, h, w, C] feature map (`ACTDIFF_LAYERS`)."""
  features = features.astype(_numerics.compute_dtype(features))
  if layer == 'pooled':
    return jnp.mean(features, axis=(1, 2))
  if layer == 'features':
    return features.reshape(features.shape[0], -1)
  raise ValueError(f'config.guidance.actdiff.layer = {layer!r}: must be one of {ACTDIFF_LAYERS}.')


def actdiff_term(ctx: Context, noise_key: jax.Array, *, layer: str) -> jax.Array:
  """Viviano et al.'s activation difference, the mean over the global batch of

      a_n * || z(x~_n) - z(x_n) + eps ||_2

  with ``x~`` the image whose irrelevant pixels (`irrelevant_pixels`: r < 0) are shuffled among
  themselves (`shuffle_pixels`, one permutation per image from a key folded with its index in
  the global batch), ``z`` the activations ``layer`` (`ACTDIFF_LAYERS`) of a second
  training-mode pass, ``eps = 1e-6`` (``torch.nn.PairwiseDistance``) and ``a_n`` 1 on the
  annotated images, 0 elsewhere.

  Viviano, Simpson, Dutil, Bengio, Cohen, "Saliency is a Possible Red Herring When Diagnosing
  Poor Generalization", ICLR 2021; josephdviviano/saliency-red-herring
  ``activmask/models/loss.py`` (``compare_activations``: the sum of the distances over the
  batch divided by its size) and ``models/resnet.py`` (``ResNetModel``). Gradients flow through
  both passes, as there. Deviations: the second pass's BatchNorm updates are discarded (the
  official masked pass moves the running statistics); images without an annotation contribute
  exactly 0 (the official code leaves them unshuffled, so only BatchNorm's batch coupling makes
  their distance non-zero); for the feature map, the L2 norm over the whole map where
  ``PairwiseDistance`` on an NCHW tensor takes it along W only (no official config uses such a
  layer); the official code adds the term with weight 1 (``actdiff_lamb`` only switches it on).
  """
  images = ctx.batch['image']
  batch_size = images.shape[0]
  keys = _example_keys(noise_key, batch_size, ctx.axis_name)
  shuffled = shuffle_pixels(images, irrelevant_pixels(ctx) > 0, keys)
  _, intermediates = _second_pass(ctx, jax.lax.stop_gradient(shuffled))
  clean = _actdiff_activations(ctx.features, layer)
  masked = _actdiff_activations(intermediates['features'], layer)
  distance = jnp.sqrt(jnp.sum(jnp.square(masked - clean + _PAIRWISE_EPS), axis=-1))
  has_mask = ctx.batch['has_mask']
  annotated = jnp.any(has_mask, axis=-1) if ctx.task == 'multilabel' else has_mask
  per_example = jnp.where(annotated, distance, 0.0)
  return _share_of_mean(per_example, jnp.float32(batch_size), ctx.axis_name)
