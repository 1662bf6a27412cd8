"""Figures: overlays and box outlines pixel by pixel, figure contents, PNG sizes."""

import functools
import io
import json

import jax
import matplotlib
import numpy as np
from PIL import Image
import pytest

from care_jax import figures
from care_jax import metrics
from care_jax import models
from care_jax import run_figures

MAGENTA = np.array(figures.BOX_COLOR)


def _np_upsample(small, height, width):
  """Explicit bilinear upsampling with half-pixel centres (clamped borders)."""

  def weights(n, big):
    out = np.zeros((big, n))
    for i in range(big):
      c = min(max((i + 0.5) * n / big - 0.5, 0.0), n - 1.0)
      lo = int(np.floor(c))
      out[i, lo] += 1 - (c - lo)
      out[i, min(lo + 1, n - 1)] += c - lo
    return out

  return weights(small.shape[0], height) @ small @ weights(small.shape[1], width).T


def _png_array(fig):
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('RGB'))


def test_denormalize_inverts_the_pipeline_normalisation():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
  mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 1.0)
  images = ((pixels / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32)
  np.testing.assert_array_equal(figures.denormalize(images, mean=mean, std=std), pixels)


def test_box_outline_is_the_inner_border_of_the_boxes():
  mask = np.zeros((10, 12))
  mask[2:7, 3:9] = 1.0
  expected = mask.astype(bool).copy()
  expected[3:6, 4:8] = False  # the interior, one pixel in
  np.testing.assert_array_equal(figures.box_outline(mask), expected)
  thick = mask.astype(bool).copy()
  thick[4:5, 5:7] = False  # two pixels in
  np.testing.assert_array_equal(figures.box_outline(mask, width=2), thick)
  # A box touching the image border is outlined along it; a union keeps its shape.
  union = np.zeros((6, 6))
  union[0:3, 0:6] = 1.0
  union[3:6, 0:2] = 1.0
  outline = figures.box_outline(union)
  assert outline[0].all() and outline[:, 0].all() and outline[5, :2].all()
  assert not outline[1, 1:5].any() and outline[2, 2:].all()
  with pytest.raises(ValueError, match='width'):
    figures.box_outline(mask, width=0)


def test_overlay_blends_the_upsampled_map_and_paints_the_box_border():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  small = rng.normal(size=(4, 4))
  mask = np.zeros((16, 16))
  mask[4:12, 5:13] = 1.0
  out = figures.overlay(image, small, mask, alpha=0.4)
  normalised = (small - small.min()) / np.ptp(small)
  heat = matplotlib.colormaps['jet'](_np_upsample(normalised, 16, 16))[..., :3] * 255
  expected = np.round(0.6 * image + 0.4 * heat)
  border = np.zeros((16, 16), bool)
  border[4:12, 5:13] = True
  border[5:11, 6:12] = False
  assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
  np.testing.assert_array_equal(out[border], np.broadcast_to(MAGENTA, (border.sum(), 3)))
  np.testing.assert_allclose(out[~border], expected[~border], atol=1.0)
  # Greyscale images and no mask: no outline at all.
  grey = figures.overlay(image[..., :1], small)
  assert not (grey == MAGENTA).all(axis=-1).any()


def test_overlay_bad_arguments_raise():
  with pytest.raises(ValueError, match='uint8'):
    figures.overlay(np.zeros((8, 8, 3)), np.zeros((2, 2)))
  with pytest.raises(ValueError, match='attention_map'):
    figures.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((1, 2, 2)))
  with pytest.raises(ValueError, match='mask'):
    figures.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2)), np.zeros((4, 4)))


def test_overlay_strip_places_panels_side_by_side():
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
  maps = rng.normal(size=(3, 2, 2))
  strip = figures.overlay_strip(images, maps, gap=2)
  assert strip.shape == (8, 3 * 10 + 2 * 2, 3)
  np.testing.assert_array_equal(strip[:, 12:22], figures.overlay(images[1], maps[1]))
  assert (strip[:, 10:12] == 255).all()


@pytest.fixture(scope='module')
def tiny_models():
  """Two untrained tiny CNNs (GAP + linear head) for 32 x 32 images, 5 classes."""
  model = models.get_model('tiny_cnn', num_classes=5)
  init = jax.jit(functools.partial(model.init, train=False))
  return model, [
    init(jax.random.key(seed), np.zeros((1, 32, 32, 3), np.float32)) for seed in (0, 1)
  ]


def test_compute_attention_is_the_cam_of_the_true_class(tiny_models):
  model, (variables, _) = tiny_models
  rng = np.random.default_rng(3)
  images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
  labels = np.array([0, 2, 4, 1])
  maps, predictions = figures.compute_attention(model, variables, images, labels)
  logits, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  kernel = np.asarray(variables['params']['head']['fc']['kernel'])
  raw = np.einsum('bhwc,bc->bhw', np.asarray(inter['features'], np.float64), kernel.T[labels])
  low, high = raw.min((1, 2), keepdims=True), raw.max((1, 2), keepdims=True)
  np.testing.assert_allclose(maps, (raw - low) / (high - low), atol=1e-5)
  np.testing.assert_array_equal(predictions, np.argmax(logits, -1))


def test_attention_figure_of_two_tiny_models_draws_the_boxes_where_they_are(tiny_models):
  rng = np.random.default_rng(4)
  images = rng.integers(60, 200, (3, 32, 32, 3), dtype=np.uint8)
  masks = np.zeros((3, 32, 32), np.float32)
  masks[0, 8:24, 4:20] = 1.0
  masks[1, 2:10, 20:30] = 1.0  # row 2 has no box
  labels = np.array([2, 4, 0])
  normalised = (images / 255.0 - 0.5) / 0.5
  columns = []
  model, all_variables = tiny_models
  for variables, title in zip(all_variables, ('without CARE (alpha=0)', 'with CARE (alpha=0.5)')):
    maps, predictions = figures.compute_attention(model, variables, normalised, labels)
    assert maps.shape == (3, 4, 4)
    columns.append(figures.AttentionColumn(title, maps, predictions))
  names = ('brown', 'dark', 'dotted', 'pink', 'striped')
  fig = figures.attention_figure(
    images, labels, columns, class_names=names, masks=masks, rare_classes=(2, 4)
  )
  pixels = _png_array(fig)
  assert pixels.shape == (round(100 * (2.0 * 3 + 0.4)), round(100 * (2.0 * 3 + 0.8)), 3)
  image_axes = fig.axes[:9]  # 3 rows x (image + 2 maps), then the colour bar
  assert (
    image_axes[1].get_title()
    == f'without CARE (alpha=0)\npred {names[columns[0].predictions[0]]}, '
    + f'{float(metrics.attention_mass_inside(columns[0].maps, masks)[0]):.0%} in box'
  )
  assert image_axes[0].get_title() == 'image\ndotted (rare)'
  height = pixels.shape[0]
  magenta = np.abs(pixels.astype(int) - MAGENTA).sum(-1) < 60
  for index, (row, col) in enumerate([(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]):
    ax = image_axes[row * 3 + col]
    box = ax.get_window_extent()  # display pixels, origin bottom left
    x0, x1 = int(round(box.x0)), int(round(box.x1))
    y0, y1 = int(round(height - box.y1)), int(round(height - box.y0))
    found = np.argwhere(magenta[y0:y1, x0:x1])
    if not masks[row].any():
      assert found.size == 0, index
      continue
    rows, cols = np.flatnonzero(masks[row].any(1)), np.flatnonzero(masks[row].any(0))
    scale_y, scale_x = (y1 - y0) / 32, (x1 - x0) / 32
    # The outline's outer edge is the mask's edge, in panel pixels.
    expected = [
      rows[0] * scale_y,
      cols[0] * scale_x,
      (rows[-1] + 1) * scale_y,
      (cols[-1] + 1) * scale_x,
    ]
    got = [found[:, 0].min(), found[:, 1].min(), found[:, 0].max() + 1, found[:, 1].max() + 1]
    np.testing.assert_allclose(got, expected, atol=2.5, err_msg=str(index))


def test_confusion_figure_annotates_counts_and_colours_row_shares():
  confusion = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]])
  fig = figures.confusion_figure(
    {'run a': confusion, 'run b': np.eye(3, dtype=int)}, class_names=['a', 'b', 'c']
  )
  ax = fig.axes[0]
  texts = [t.get_text() for t in ax.texts]
  assert texts == [str(v) for v in confusion.ravel()]
  shares = ax.images[0].get_array()
  np.testing.assert_allclose(shares, [[5 / 6, 1 / 6, 0], [0.5, 0.5, 0], [0, 0, 0]])
  assert ax.get_title() == 'run a' and fig.axes[1].get_title() == 'run b'
  assert _png_array(fig).shape == (400, round(100 * (4.0 * 2 + 0.8)), 3)
  with pytest.raises(ValueError, match="'run a'"):
    figures.confusion_figure({'run a': np.zeros((2, 2))}, class_names=['a', 'b', 'c'])


def test_recall_figure_bars_are_the_recalls():
  recalls = {'without': {'a': 0.9, 'b': 0.1}, 'with': {'a': 0.8, 'b': 0.6}}
  fig = figures.recall_figure(recalls, class_names=['a', 'b'], rare_classes=(1,))
  ax = fig.axes[0]
  heights = [p.get_height() for p in ax.patches]
  assert heights == pytest.approx([0.9, 0.1, 0.8, 0.6])
  assert [t.get_text() for t in ax.get_xticklabels()] == ['a', 'b\n(rare)']
  assert _png_array(fig).shape == (340, round(100 * (1.0 + 1.1 * 2)), 3)


def test_reliability_figure_draws_the_filled_bins_with_the_ece():
  bins = {'confidence': [None, 0.4, 0.9], 'accuracy': [None, 0.5, 0.7], 'count': [0, 3, 5]}
  fig = figures.reliability_figure({'run': {**bins, 'ece': 0.1625}})
  ax = fig.axes[0]
  diagonal, line = ax.lines
  np.testing.assert_allclose(line.get_xdata(), [0.4, 0.9])
  np.testing.assert_allclose(line.get_ydata(), [0.5, 0.7])
  assert line.get_label() == 'run (ECE 0.163)' and diagonal.get_label() == 'calibrated'
  assert _png_array(fig).shape == (400, 420, 3)


def test_training_curves_from_a_fabricated_train_log(tmp_path):
  log = tmp_path / 'train_log.jsonl'
  records = [
    {'step': s, 'loss': 1.0 / s, 'ce': 2.0 / s, 'care': -0.1 * s, 'accuracy': 0.1 * s, 'seconds': s}
    for s in (10, 20, 30)
  ]
  log.write_text(''.join(json.dumps(r) + '\n' for r in records) + '\n')
  baseline = [{k: v for k, v in r.items() if k != 'care'} for r in records]
  logs = {'without CARE': baseline, 'with CARE': run_figures.read_train_log(str(log))}
  fig = figures.training_curves_figure(logs)
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ['loss', 'ce', 'care', 'accuracy']
  care_ax = fig.axes[2]
  (line,) = care_ax.lines  # the baseline logged no care loss
  np.testing.assert_allclose(line.get_xydata(), [[10, -1.0], [20, -2.0], [30, -3.0]])
  assert line.get_color() == 'C1'  # the colour of 'with CARE' in every panel
  assert _png_array(fig).shape == (300, round(100 * 3.6 * 4), 3)
  log.write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match='line 2'):
    run_figures.read_train_log(str(log))
  with pytest.raises(ValueError, match='none of the metrics'):
    figures.training_curves_figure({'x': [{'step': 1, 'seconds': 2.0}]})


def test_training_curves_draw_the_term_of_another_guidance_method():
  records = [
    {'step': s, 'loss': 1.0, 'ce': 0.9, 'guidance': 0.1 * s, 'weight': 1.0} for s in (1, 2)
  ]
  care = [{'step': s, 'loss': 1.0, 'ce': 0.9, 'care': -0.1 * s} for s in (1, 2)]
  fig = figures.training_curves_figure({'CARE': care, 'ActDiff': records})
  assert [ax.get_title() for ax in fig.axes] == ['loss', 'ce', 'care', 'guidance']
  (line,) = fig.axes[3].lines
  np.testing.assert_allclose(line.get_xydata(), [[1, 0.1], [2, 0.2]])
