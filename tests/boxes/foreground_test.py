"""The jitted foreground maps against references: Otsu's threshold by brute force, the Gaussian
blur of scipy, the spectral residual saliency in numpy."""

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from care_jax import boxes
from care_jax.boxes import foreground
from tests.helpers import blobs


def test_otsu_threshold_matches_a_brute_force_reference():
  rng = np.random.default_rng(1)
  values = []
  for n in range(3):
    low = rng.normal(60 + 20 * n, 15, (24, 24))
    high = rng.normal(170, 25, (24, 24))
    image = np.where(blobs.ellipse(24, (12, 12), (5 + n, 7)), high, low)
    image = np.clip(np.round(image), 0, 255)
    image[0, 0], image[0, 1] = 0, 255  # Range 0..255: Otsu's bins are the values.
    values.append(image)
  values = np.stack(values)
  ours = np.asarray(boxes.otsu_foreground(values))
  for image, fg in zip(values, ours):
    best, best_t = -1.0, None
    for t in range(255):  # class 0: values <= t
      low, high = image[image <= t], image[image > t]
      if not len(low) or not len(high):
        continue
      between = len(low) * len(high) / image.size**2 * (low.mean() - high.mean()) ** 2
      if between > best + 1e-9:
        best, best_t = between, t
    np.testing.assert_array_equal(fg, image > best_t)


def test_gaussian_blur_matches_scipy():
  x = np.random.default_rng(0).normal(size=(2, 13, 17)).astype(np.float32)
  ours = foreground._separable_filter(jnp.asarray(x), 'gaussian', 1.7, 'reflect')
  ref = ndimage.gaussian_filter(x.astype(np.float64), sigma=(0, 1.7, 1.7), mode='reflect')
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_spectral_residual_saliency_matches_a_numpy_reference():
  images, _ = blobs.blob_images(num=2, size=64)
  ours = boxes.spectral_residual_saliency(images, work_size=64, sigma=2.5)
  for image, saliency in zip(images.astype(np.float64), np.asarray(ours)):
    gray = image @ np.array([0.299, 0.587, 0.114])
    spectrum = np.fft.fft2(gray)
    log_amplitude = np.log(np.abs(spectrum))
    residual = log_amplitude - ndimage.uniform_filter(log_amplitude, 3, mode='nearest')
    ref = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    ref = ndimage.gaussian_filter(ref, 2.5, mode='reflect')
    np.testing.assert_allclose(saliency, ref, rtol=2e-3, atol=1e-3 * ref.max())
