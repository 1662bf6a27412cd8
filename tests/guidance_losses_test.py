"""The map losses of care_jax.guidance_losses against numpy transcriptions of their official code.

Each reference transcribes the official function named in its docstring (repository and file),
on the maps that code sees: upsampled to the relevance resolution for Rao et al., GAIN and the
typology, on the map grid for RES, GRADIA and HAICS (whose official 7x7 form is relevance at map
size). The relevance of every test holds the four cases of the contract: an empty lesion box
(all -1), a full one (all +1), a partial one (+1 in, -1 out, or an artefact box: -1 on it, 0
elsewhere) and an all-unknown map (0).
"""

import fractions

import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from care_jax import guidance_losses as gl
from care_jax import losses
from tests.losses_test import np_resize_bilinear

B, H_MAP, H_IMG = 4, 4, 8


def relevance_cases(size, *, artefact=False):
  """[4, size, size]: empty box, full box, partial (lesion box or artefact box), all unknown."""
  partial = np.zeros((size, size)) if artefact else -np.ones((size, size))
  partial[size // 4 : 3 * size // 4, : size // 2] = -1.0 if artefact else 1.0
  return np.stack([-np.ones((size, size)), np.ones((size, size)), partial, np.zeros((size, size))])


def random_maps(shape, seed=0, signed=False):
  maps = np.random.default_rng(seed).uniform(-1.0 if signed else 0.0, 1.0, shape)
  return maps.astype(np.float32)


def per_official_image(fn, maps, relevance):
  """The official per-image values on the first three (annotated) cases."""
  return np.array([fn(m, r) for m, r in zip(maps[:3], relevance[:3])])


# sukrutrao/Model-Guidance losses.py (Rao et al., ICCV 2023), per image; summed over images.
def np_rao_energy(attributions, relevance):
  positive = np.clip(attributions, 0, None)
  num = positive[relevance > 0].sum()
  den = positive.sum()
  return 1 - num if den < 1e-7 else 1 - num / den


def np_rao_l1(attributions, relevance):
  return np.abs(attributions - (relevance > 0)).mean()  # torch.nn.L1Loss(reduction='mean')


def np_rao_ppce(attributions, relevance):
  inside = attributions[relevance > 0]  # BCELoss(mean) against ones; NaN for an empty box.
  return np.mean(-np.maximum(np.log(inside), -100)) if inside.size else 0.0


def np_rao_rrr(attributions, relevance):
  return np.square(attributions[relevance <= 0]).sum()


# ml-research/A-Typology-for-Exploring-the-Mitigation-of-Shortcut-Behavior xil_methods/xil_loss.py
def np_typology_rrr_gradcam(saliencies, relevance):
  """RRRGradCamLoss: sum over the batch of (E_pnlt * norm_saliencies) ** 2, E_pnlt = artefact."""
  return np.sum(((relevance < 0) * saliencies) ** 2, axis=(1, 2))


# ilyak93/GAIN-pytorch main_MedT.py, handle_EX_loss: sum of per-image pixel means / n images.
def np_gain_ex_loss(heatmaps, masks):
  squared = (heatmaps - masks) ** 2
  return squared.reshape(len(heatmaps), -1).sum(axis=1).sum() / squared[0].size / len(heatmaps)


# YuyangGao/RES RES.py, model_train_with_map and BF_solver, on the stacked annotated maps.
def np_bce(p, y):
  return -(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log(1 - p), -100))


def np_res_gradia(att_maps, labels):
  return np.mean(np.abs(att_maps - labels * (labels > 0)))


def np_res_haics_official(att_maps, labels):
  """nn.BCELoss() has reduction='mean': a scalar, then multiplied by the known-pixel mask."""
  return np.mean(np.mean(np_bce(att_maps, labels * (labels > 0))) * (labels != 0))


def np_res_haics_per_pixel(att_maps, labels):
  return np.mean(np_bce(att_maps, labels * (labels > 0)) * (labels != 0))


def np_bf_solver(x, y):
  """BF_solver's loop, with each score kept as an exact fraction (ties: the first best)."""
  x, y = np.ravel(x), np.ravel(y)
  negatives, positives = np.flatnonzero(y < 0), np.flatnonzero(y > 0)
  a, best = 0.0, fractions.Fraction(0)
  candidates = [np.float32(x[i]) + np.float32(1e-4) for i in negatives] + [x[j] for j in positives]
  for v in candidates:
    score = fractions.Fraction(0)
    if len(negatives):
      score += fractions.Fraction(int(np.sum(v > x[negatives])), len(negatives))
    if len(positives):
      score += fractions.Fraction(int(np.sum(v <= x[positives])), len(positives))
    if score > best:
      a, best = v, score
  return a


def np_gaussian_blur_3x3(x):
  """cv2.GaussianBlur(x, (3, 3), 0): kernel [1/4, 1/2, 1/4] (OpenCV's fixed small kernel),
  BORDER_REFLECT_101 (scipy's 'mirror')."""
  kernel = np.outer([0.25, 0.5, 0.25], [0.25, 0.5, 0.25])
  return scipy.ndimage.convolve(x, kernel, mode='mirror')


def np_res_loss(att_maps, labels, eta, tanh_scale=5.0):
  a = np_bf_solver(att_maps, labels)
  temp_loss = np.abs(np.tanh(tanh_scale * (att_maps - a)) - labels)
  size = (labels != 0).astype(np.float64)
  attention_loss = max(np.sum(temp_loss * size) / np.sum(size) - eta, 0.0)
  targets = []
  for label in labels:
    blurred = np_gaussian_blur_3x3(np.maximum(label, 0))
    targets.append(blurred / (np.max(blurred) + 1e-6))
  return attention_loss + np.mean(np.abs(att_maps - np.stack(targets)))


def masked_mean(values):
  return float(np.mean(np.asarray(values)[:3]))


def test_care_map_loss_equals_care_loss_of_the_lesion_mask():
  maps = random_maps((B, H_MAP, H_MAP))
  relevance = relevance_cases(H_IMG)
  mask = (relevance > 0).astype(np.float32)
  has_mask = np.array([True, True, True, False])
  expected = losses.care_loss_per_example(maps, mask, has_mask=has_mask)
  got = gl.care_map_loss(maps, 2 * mask - 1, has_mask=has_mask)
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(gl.care_map_loss(maps, relevance)[3], 0.0)


@pytest.mark.parametrize(
  'loss, official, mode',
  [
    (gl.energy_loss, np_rao_energy, 'maxabs'),
    (gl.gradia_loss, np_rao_l1, 'relu_maxabs'),
    (lambda m, r: gl.haics_loss(m, r, ppce=True), np_rao_ppce, 'relu_maxabs'),
    (gl.rrr_g_loss, np_rao_rrr, 'maxabs'),
  ],
  ids=['energy', 'l1', 'ppce', 'rrr_star'],
)
def test_losses_of_rao_et_al_equal_the_official_code_on_upsampled_maps(loss, official, mode):
  maps = gl.normalize_maps(random_maps((B, H_MAP, H_MAP), signed=True), mode)
  relevance = relevance_cases(H_IMG)
  up = np_resize_bilinear(maps, H_IMG, H_IMG)
  got = np.asarray(loss(maps, relevance))
  # Rao et al. sum the per-image losses over the annotated images.
  np.testing.assert_allclose(got.sum(), per_official_image(official, up, relevance).sum(), 1e-5)
  assert got[3] == 0.0  # All unknown: no annotation, no loss.


def test_rrr_g_equals_the_typology_code_on_artefact_boxes():
  maps = gl.normalize_maps(random_maps((B, H_MAP, H_MAP), signed=True), 'minmax')
  relevance = relevance_cases(H_MAP, artefact=True)
  expected = np_typology_rrr_gradcam(np.asarray(maps), relevance)
  np.testing.assert_allclose(gl.rrr_g_loss(maps, relevance), expected, rtol=1e-6)


def test_hint_equals_gains_explanation_loss():
  maps = gl.normalize_maps(random_maps((B, H_MAP, H_MAP), signed=True), 'relu_minmax')
  relevance = relevance_cases(H_IMG)
  up = np_resize_bilinear(maps, H_IMG, H_IMG)
  expected = np_gain_ex_loss(up[:3], relevance[:3] > 0)
  np.testing.assert_allclose(masked_mean(gl.hint_loss(maps, relevance)), expected, rtol=1e-6)


def test_gradia_and_haics_equal_the_res_code_on_the_map_grid():
  maps = random_maps((B, H_MAP, H_MAP), seed=1)
  relevance = relevance_cases(H_MAP)
  np.testing.assert_allclose(
    masked_mean(gl.gradia_loss(maps, relevance)), np_res_gradia(maps[:3], relevance[:3]), 1e-6
  )
  full = relevance[:2]  # Every pixel known: the official reduction and ours agree.
  np.testing.assert_allclose(
    np.mean(gl.haics_loss(maps[:2], full)), np_res_haics_official(maps[:2], full), 1e-6
  )
  tri_state = relevance_cases(H_MAP, artefact=True)
  np.testing.assert_allclose(
    masked_mean(gl.haics_loss(maps, tri_state)),
    np_res_haics_per_pixel(maps[:3], tri_state[:3]),
    1e-6,
  )


@pytest.mark.parametrize('eta', [0.0, 0.1, 2.0])
def test_res_equals_the_official_code(eta):
  maps = gl.normalize_maps(random_maps((B, H_MAP, H_MAP), seed=2, signed=True), 'minmax')
  relevance = relevance_cases(H_MAP)
  relevance[0, :2] = 0.0  # Some unknown pixels beside irrelevant ones.
  got = masked_mean(gl.res_loss(maps, relevance, eta=eta))
  np.testing.assert_allclose(got, np_res_loss(np.asarray(maps)[:3], relevance[:3], eta), 1e-5)


@pytest.mark.parametrize('seed', range(4))
def test_res_threshold_equals_a_brute_force_search(seed):
  rng = np.random.default_rng(seed)
  # Values on a coarse grid, so that candidates tie and the first best must be kept.
  maps = (rng.integers(0, 8, (B, H_MAP, H_MAP)) / 8).astype(np.float32)
  relevance = rng.choice([-1.0, 0.0, 1.0], size=(B, H_MAP, H_MAP), p=[0.4, 0.2, 0.4])
  relevance[seed % B] = 0.0 if seed < 2 else -1.0  # All unknown, or no relevant pixel.
  has_mask = np.any(relevance != 0, axis=(1, 2))
  got = gl.res_threshold(maps, relevance)
  assert float(got) == pytest.approx(float(np_bf_solver(maps[has_mask], relevance[has_mask])))


def test_res_threshold_is_that_of_the_whole_batch_when_split_over_devices():
  maps = random_maps((B, H_MAP, H_MAP), seed=3)
  relevance = relevance_cases(H_IMG)
  split = lambda x: x.reshape(2, B // 2, *x.shape[1:])
  sharded = jax.jit(jax.vmap(lambda m, r: gl.res_loss(m, r, axis_name='d'), axis_name='d'))
  got = sharded(split(maps), split(relevance)).reshape(B)
  np.testing.assert_allclose(got, gl.res_loss(maps, relevance), rtol=1e-6)


ALL_LOSSES = sorted(gl.MAP_LOSSES)
ITEMS = sorted(gl.MAP_LOSSES.items())


@pytest.mark.parametrize('name', ALL_LOSSES)
def test_gradients_are_finite_and_zero_without_a_mask(name):
  loss = gl.MAP_LOSSES[name]
  relevance = relevance_cases(H_IMG)
  maps = jnp.asarray(random_maps((B, H_MAP, H_MAP), seed=4)).at[1].set(0.0)  # A constant map.
  has_mask = jnp.array([True, True, True, False])
  grads = jax.jit(jax.grad(lambda m: jnp.sum(loss(m, relevance, has_mask=has_mask))))(maps)
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(grads[3], 0.0)
  np.testing.assert_array_equal(loss(maps, relevance, has_mask=jnp.zeros(B, bool)), 0.0)


# RES's threshold moves with the pixel that defines it and has no gradient: not compared.
@pytest.mark.parametrize('name', ['hint', 'energy', 'haics'])
def test_gradients_equal_finite_differences(name):
  maps = jnp.asarray(random_maps((B, H_MAP, H_MAP), seed=5)) * 0.8 + 0.1
  relevance = relevance_cases(H_IMG)
  test_util.check_grads(
    lambda m: jnp.sum(gl.MAP_LOSSES[name](m, relevance)),
    (maps,),
    order=1,
    modes=['rev'],
    eps=1e-3,
    atol=2e-2,
    rtol=2e-2,
  )


@pytest.mark.parametrize('name', ALL_LOSSES)
def test_multilabel_maps_are_losses_per_image_and_class(name):
  loss = gl.MAP_LOSSES[name]
  maps = random_maps((2, 2, H_MAP, H_MAP), seed=6)
  relevance = relevance_cases(H_IMG).reshape(2, 2, H_IMG, H_IMG)
  got = loss(maps, relevance)
  assert got.shape == (2, 2)
  flat = loss(maps.reshape(4, H_MAP, H_MAP), relevance.reshape(4, H_IMG, H_IMG))
  np.testing.assert_allclose(got.reshape(4), flat, rtol=1e-6)


@pytest.mark.parametrize('name', ALL_LOSSES)
def test_bfloat16_maps_are_computed_in_float32_under_jit_and_vmap(name):
  loss = gl.MAP_LOSSES[name]
  maps = jnp.asarray(random_maps((B, H_MAP, H_MAP), seed=7), jnp.bfloat16)
  relevance = jnp.asarray(relevance_cases(H_IMG), jnp.bfloat16)
  got = jax.jit(loss)(maps, relevance)
  assert got.dtype == jnp.float32
  expected = loss(maps.astype(jnp.float32), relevance.astype(jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  stacked = jax.vmap(loss)(jnp.stack([maps, maps]), jnp.stack([relevance, relevance]))
  np.testing.assert_allclose(stacked, jnp.stack([expected, expected]), rtol=1e-5, atol=1e-6)


def test_all_unknown_maps_with_has_mask_get_their_documented_values():
  maps = jnp.full((B, H_MAP, H_MAP), 0.5)
  relevance = jnp.zeros((B, H_IMG, H_IMG))
  has_mask = jnp.ones(B, bool)
  values = {name: float(loss(maps, relevance, has_mask=has_mask)[0]) for name, loss in ITEMS}
  expected = {
    'care': 0.0,
    'energy': 1.0,
    'gradia': 0.5,
    'haics': 0.0,
    'hint': 0.25,
    'res': 0.5,
    'rrr_g': 0.0,
  }
  assert values == pytest.approx(expected)


@pytest.mark.parametrize(
  'mode, expected',
  [
    ('minmax', [[0.0, 0.75, 1.0]]),
    ('relu_minmax', [[0.0, 0.5, 1.0]]),
    ('maxabs', [[-1.0, 0.5, 1.0]]),
    ('relu_maxabs', [[0.0, 0.5, 1.0]]),
    ('none', [[-2.0, 1.0, 2.0]]),
  ],
)
def test_normalize_maps_follows_each_methods_official_normalisation(mode, expected):
  maps = jnp.array([[[-2.0, 1.0, 2.0]]], jnp.bfloat16)
  got = gl.normalize_maps(maps, mode)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got[0], expected)
  np.testing.assert_array_equal(gl.normalize_maps(jnp.zeros((1, 1, 2, 2)), mode), 0.0)


def test_relevance_of_derives_a_lesion_box_relevance_from_the_mask():
  mask = np.zeros((2, 3, 4, 4), np.float32)
  mask[:, :, 1:3, 1:3] = 1.0
  has_mask = np.array([[True, False, True], [False, False, True]])
  relevance = gl.relevance_of({'mask': mask, 'has_mask': has_mask})
  np.testing.assert_array_equal(relevance[has_mask], 2 * mask[has_mask] - 1)
  np.testing.assert_array_equal(relevance[~has_mask], 0.0)
  single = gl.relevance_of({'mask': mask[:, 0], 'has_mask': has_mask[:, 0]})
  np.testing.assert_array_equal(single, relevance[:, 0])
  given = {'relevance': relevance, 'mask': mask, 'has_mask': has_mask}
  np.testing.assert_array_equal(gl.relevance_of(given), relevance)


def test_relevance_is_averaged_onto_the_map_grid_for_res():
  relevance = np.ones((1, H_IMG, H_IMG), np.float32)
  relevance[:, :, : H_IMG // 2] = -1.0
  # A half-and-half image: the threshold splits the map's halves.
  maps = np.concatenate([np.zeros((1, H_MAP, 2)), np.ones((1, H_MAP, 2))], axis=2)
  assert float(gl.res_threshold(maps, relevance)) == pytest.approx(1e-4)


@pytest.mark.parametrize(
  'call, message',
  [
    (lambda: gl.gradia_loss(jnp.zeros((2, 4)), jnp.zeros((2, 4))), 'maps must have shape'),
    (lambda: gl.hint_loss(jnp.zeros((2, 4, 4)), jnp.zeros((3, 8, 8))), 'relevance must have'),
    (lambda: gl.energy_loss(jnp.zeros((2, 4, 4)), jnp.zeros((2, 2, 2))), 'relevance must have'),
    (lambda: gl.rrr_g_loss(jnp.zeros((1, 2, 2)), jnp.full((1, 2, 2), 2.0)), r'\[-1, 1\]'),
    (lambda: gl.care_map_loss(jnp.zeros((1, 2, 2)), jnp.full((1, 2, 2), -3.0)), r'\[-1, 1\]'),
    (
      lambda: gl.haics_loss(jnp.zeros((2, 2, 2)), jnp.zeros((2, 2, 2)), has_mask=jnp.ones(3)),
      'has_mask must have shape',
    ),
    (lambda: gl.res_loss(jnp.zeros((1, 2, 2)), jnp.zeros((1, 2, 2)), impute='l'), 'impute'),
    (lambda: gl.normalize_maps(jnp.zeros((1, 2, 2)), 'softmax'), 'mode must be one of'),
  ],
)
def test_bad_inputs_raise_one_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
