"""Class attention maps: Grad-CAM, CAM and min-max normalisation.

CARE (Zhuang et al., MIDL 2019, PMLR 102:588-597) supervises the Grad-CAM map
of the ground-truth class at the last conv stage (Selvaraju et al., "Grad-CAM:
Visual Explanations from Deep Networks via Gradient-based Localization", ICCV
2017)::

    w_k = mean_ij d logit_y / d A_k(i, j)      (constants: stop_gradient)
    F   = minmax( sum_k w_k A_k )               (no ReLU, as in the paper)

:func:`grad_cam` takes ``jax.vjp`` of the head alone w.r.t. the features, so
it never runs a second backward pass through the backbone. For a global
average pooling + linear head, ``d logit_y / dA_k = W[k, y] / (h * w)``
everywhere, so Grad-CAM is CAM (Zhou et al., CVPR 2016) scaled by
``1 / (h * w)``: after min-max normalisation the two are identical, and
:func:`cam` computes the map as a single einsum.

Maps are computed in at least float32 (bfloat16 features are upcast).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from care_jax import _checks
from care_jax import _numerics

__all__ = ['cam', 'grad_cam', 'minmax_normalize']


def minmax_normalize(maps: ArrayLike, *, eps: float = 0.0) -> jax.Array:
  """Per-image min-max normalisation of [B, h, w] maps to [0, 1].

  ``(F - min F) / (max F - min F)`` per image. Maps whose range is ``<= eps``
  (constant maps) become all zeros, with a finite (zero) gradient: the
  division uses a safe denominator ("double where"). The gradient flows
  through the min and the max as well as through ``F``. A map holding NaN
  has a NaN range and also becomes zeros: the NaN shows in the logits and
  the cross-entropy instead (the trainer's non-finite guard).

  Args:
    maps: [B, h, w] maps (any float dtype; computed in float32).
    eps: ranges ``<= eps`` are treated as constant maps. Raise it above 0 to
      avoid huge gradients on nearly constant maps.

  Returns:
    [B, h, w] float32 maps in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> maps = jnp.array([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    >>> minmax_normalize(maps)
    Array([[[0.  , 0.5 ],
            [0.25, 1.  ]],
    <BLANKLINE>
           [[0.  , 0.  ],
            [0.  , 0.  ]]], dtype=float32)
  """
  maps = jnp.asarray(maps)
  if maps.ndim != 3:
    raise ValueError(f'maps must have shape [B, h, w], got shape {maps.shape}.')
  maps = maps.astype(_numerics.compute_dtype(maps))
  low = jnp.min(maps, axis=(1, 2), keepdims=True)
  high = jnp.max(maps, axis=(1, 2), keepdims=True)
  span = high - low
  varies = span > eps
  safe_span = jnp.where(varies, span, jnp.ones_like(span))
  return jnp.where(varies, (maps - low) / safe_span, jnp.zeros_like(maps))


def _validate_features_labels(features: jax.Array, labels: jax.Array):
  if features.ndim != 4:
    raise ValueError(f'features must have shape [B, h, w, C] (NHWC), got shape {features.shape}.')
  _checks.check_labels(labels, like=features, like_name='features')


def _weighted_sum(
  features: jax.Array, weights: jax.Array, *, relu: bool, normalize: bool
) -> jax.Array:
  """sum_k w_k A_k, then the optional ReLU and min-max normalisation."""
  dtype = jnp.promote_types(_numerics.compute_dtype(features), weights.dtype)
  maps = jnp.einsum(
    'bhwc,bc->bhw', features.astype(dtype), weights.astype(dtype), precision=_numerics.HIGHEST
  )
  if relu:
    maps = jax.nn.relu(maps)
  if normalize:
    maps = minmax_normalize(maps)
  return maps


def grad_cam(
  head_fn: Callable[[jax.Array], jax.Array],
  features: ArrayLike,
  labels: ArrayLike,
  *,
  stop_gradient_weights: bool = True,
  relu: bool = False,
  normalize: bool = True,
) -> jax.Array:
  """Grad-CAM maps of the ``labels`` classes for any head.

  ``w[b, k] = mean_ij d logits[b, y_b] / d A[b, i, j, k]`` from one
  ``jax.vjp`` of ``head_fn`` alone with cotangent ``one_hot(labels)``;
  ``F[b] = sum_k w[b, k] A[b, :, :, k]``, then optionally ReLU and min-max
  normalisation. Gradients of ``F`` reach ``features`` through ``A`` (and
  through the min/max of the normalisation).

  The vjp of the summed target logits gives per-image gradients only if the
  head treats examples independently (BatchNorm in inference mode, running
  statistics). A head in training mode (batch statistics, as in the train
  step: ``Classifier.attention_maps(train=True)``) adds the cross-example
  terms of the statistics, as the official CARE code's ``backward()`` of the
  summed target logits in train mode does.

  Args:
    head_fn: maps features [B, h, w, C] to logits [B, K], e.g. a closure over
      a flax ``model.apply(variables, features, method=...)``.
    features: [B, h, w, C] activations of the last conv stage (NHWC; may be
      bfloat16).
    labels: [B] integer class whose map is wanted (the ground truth in CARE),
      in ``[0, K)``; checked when concrete, not under ``jit`` (where an
      out-of-range label gives an all-zero map).
    stop_gradient_weights: treat the channel weights as constants for
      differentiation (standard Grad-CAM, what CARE uses). False keeps the
      second-order path through the weights (and lets the attention loss
      move the head's parameters through them).
    relu: apply a ReLU to the weighted sum (the original Grad-CAM; the CARE
      paper does not).
    normalize: min-max normalise each map to [0, 1].

  Returns:
    [B, h, w] float32 maps.

  Examples:
    >>> import jax.numpy as jnp
    >>> kernel = jnp.array([[1.0, -1.0], [0.0, 2.0]])   # [C, K]
    >>> head = lambda a: a.mean(axis=(1, 2)) @ kernel    # GAP + linear
    >>> feats = jnp.arange(8.0).reshape(1, 2, 2, 2)
    >>> grad_cam(head, feats, jnp.array([1]))
    Array([[[0.        , 0.33333334],
            [0.6666667 , 1.        ]]], dtype=float32)
  """
  features = jnp.asarray(features)
  labels = jnp.asarray(labels)
  _validate_features_labels(features, labels)
  logits, head_vjp = jax.vjp(head_fn, features)
  if logits.ndim != 2 or logits.shape[0] != features.shape[0]:
    raise ValueError(
      f'head_fn must return logits of shape [B, K] with B = '
      f'{features.shape[0]}, got shape {logits.shape}.'
    )
  _checks.check_class_indices('labels', labels, logits.shape[1])
  cotangent = jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype)
  (feature_grads,) = head_vjp(cotangent)
  weights = jnp.mean(feature_grads.astype(_numerics.compute_dtype(feature_grads)), axis=(1, 2))
  if stop_gradient_weights:
    weights = jax.lax.stop_gradient(weights)
  return _weighted_sum(features, weights, relu=relu, normalize=normalize)


def cam(
  features: ArrayLike,
  kernel: ArrayLike,
  labels: ArrayLike,
  *,
  relu: bool = False,
  normalize: bool = True,
) -> jax.Array:
  """Class activation maps for a global-average-pooling + linear head.

  ``F[b] = sum_k kernel[k, y_b] A[b, :, :, k]``, then optionally ReLU and
  min-max normalisation. The kernel is under ``stop_gradient``, so an
  attention loss on ``F`` does not move the classifier, exactly as Grad-CAM
  with constant weights; for this head ``grad_cam`` equals ``cam / (h * w)``
  and the normalised maps coincide. The bias does not enter the map.

  Args:
    features: [B, h, w, C] activations of the last conv stage (NHWC).
    kernel: [C, K] kernel of the Dense layer that follows the pooling.
    labels: [B] integer class whose map is wanted, in ``[0, K)``; checked
      when concrete, not under ``jit`` (where JAX clamps the index).
    relu: apply a ReLU to the weighted sum.
    normalize: min-max normalise each map to [0, 1].

  Returns:
    [B, h, w] float32 maps.

  Examples:
    >>> import jax.numpy as jnp
    >>> kernel = jnp.array([[1.0, -1.0], [0.0, 2.0]])
    >>> feats = jnp.arange(8.0).reshape(1, 2, 2, 2)
    >>> cam(feats, kernel, jnp.array([1]), normalize=False)
    Array([[[2., 4.],
            [6., 8.]]], dtype=float32)
  """
  features = jnp.asarray(features)
  kernel = jnp.asarray(kernel)
  labels = jnp.asarray(labels)
  _validate_features_labels(features, labels)
  if kernel.ndim != 2 or kernel.shape[0] != features.shape[-1]:
    raise ValueError(
      f'kernel must have shape [C, K] with C = {features.shape[-1]} '
      f'(features shape {features.shape}), got shape {kernel.shape}.'
    )
  _checks.check_class_indices('labels', labels, kernel.shape[1])
  weights = jax.lax.stop_gradient(kernel).T[labels]  # [B, C]
  return _weighted_sum(features, weights, relu=relu, normalize=normalize)
