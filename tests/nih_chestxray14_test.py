"""Tests of the `nih_chestxray14` builder (the boxed subset of ChestX-ray14)."""

import logging

import data_fixtures as fx
import numpy as np
from PIL import Image
import pytest

from care_jax.data import nih_chestxray14 as nih
from care_jax.data import pipeline

NAMES = nih.CLASS_NAMES
SIZE = 32
HEADER = 'Image Index,Finding Label,Bbox [x,y,w,h],,,'


def _box(i):
  """(x, y, w, h) of the i-th box: edges on even pixels (whole at 16 x 16)."""
  x = 4 + 2 * (i % 4)
  return (x, 6, 12, 16)


def _write(root):
  """5 images per finding (patient 0 has two); returns {image: (finding, boxes)}."""
  rows = [HEADER]
  images = {}
  for k, finding in enumerate(NAMES):
    for patient, follow_up in [(0, 0), (0, 1), (1, 0), (2, 0), (3, 0)]:
      name = f'{k * 10 + patient:08d}_{follow_up:03d}.png'
      boxes = [_box(len(images))]
      if k == 2 and patient == 1:
        boxes.append((20, 2, 8, 4))  # A second box of the same finding.
      images[name] = (finding, boxes)
      pixels = fx.lesion_image(SIZE, SIZE, None)
      for x, y, w, h in boxes:
        pixels[y : y + h, x : x + w] = fx.LESION
      # Real quirks: some images are RGBA; the Kaggle copy splits folders.
      folder = 'images' if len(images) % 2 else 'images_002/images'
      if len(images) % 5 == 0:
        pixels = np.stack([pixels] * 3 + [np.full_like(pixels, 255)], -1)
      fx.save_image(root / folder / name, pixels)
      for x, y, w, h in boxes:
        rows.append(f'{name},{finding},{x:.6f},{y:.6f},{w:.6f},{h:.6f}')
  rows[-1] += ',,'  # Trailing empty fields are fine.
  # An image with boxes of two findings has no single label.
  fx.save_image(root / 'images' / '00099999_000.png', fx.lesion_image(SIZE, SIZE, None))
  rows += ['00099999_000.png,Mass,1,1,4,4', '00099999_000.png,Nodule,8,8,4,4']
  fx.write_lines(root / nih.BOXES, rows)
  return images


def _normalised(boxes):
  return [[y / SIZE, x / SIZE, (y + h) / SIZE, (x + w) / SIZE] for x, y, w, h in boxes]


def _config(root, cache, rare_classes=(), **params):
  config = fx.data_config('nih_chestxray14', root, cache, **params)
  config.rare_classes = rare_classes
  return config


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp('nih')
  images = _write(root)
  builder = nih.from_data_config(_config(root, root / 'cache', ('Nodule',)))
  return root, images, fx.load_splits(builder)


def test_counts_per_class_and_patient_level_split(written):
  _, images, splits = written
  totals = np.sum([fx.class_counts(e, 8) for e in splits.values()], 0)
  assert totals.tolist() == [5] * 8
  for split in ('validation', 'test'):
    # One patient per class: 1 image, or 2 for patient 0.
    assert set(fx.class_counts(splits[split], 8)) <= {1, 2}
  split_of = {}
  for split, examples in splits.items():
    for ex in examples:
      split_of.setdefault(ex['image_id'].decode()[:8], set()).add(split)
  assert len(split_of) == 32 and all(len(s) == 1 for s in split_of.values())
  ids = {ex['image_id'].decode() for e in splits.values() for ex in e}
  assert ids == set(images)  # Without the image of two findings.


def test_boxes_only_for_the_chosen_finding_in_train(written):
  _, images, splits = written
  nodule = NAMES.index('Nodule')
  boxed = 0
  for split, examples in splits.items():
    for ex in examples:
      finding, boxes = images[ex['image_id'].decode()]
      assert NAMES[ex['label']] == finding
      np.testing.assert_allclose(ex['lesion_boxes'], _normalised(boxes), atol=1e-6)
      if split == 'train' and ex['label'] == nodule:
        np.testing.assert_allclose(ex['boxes'], _normalised(boxes), atol=1e-6)
        boxed += 1
      else:
        assert ex['boxes'].shape == (0, 4)
  assert boxed == fx.class_counts(splits['train'], 8)[nodule] >= 1


def test_image_with_several_findings_is_left_out_and_logged(tmp_path, caplog):
  _write(tmp_path)
  with caplog.at_level(logging.WARNING):
    builder = nih.from_data_config(_config(tmp_path, tmp_path / 'cache'))
    builder.download_and_prepare()
  (warning,) = [r.getMessage() for r in caplog.records if 'several' in r.getMessage()]
  assert 'left out 1 image(s)' in warning and "['Mass', 'Nodule']" in warning
  assert sum(s.num_examples for s in builder.info.splits.values()) == 40


def test_boxes_land_on_the_lesions_through_the_pipeline(written, tmp_path):
  root, _, splits = written
  config = _config(root, tmp_path)  # Default: every finding carries boxes.
  info = pipeline.get_dataset_info(config)
  assert info.class_names == NAMES and info.rare_classes == tuple(range(8))
  masked = fx.assert_masks_cover_the_drawn_lesions(config)
  assert masked == info.split_sizes['train']


def _path(root, name):
  """Where _write put image ``name`` (either layout)."""
  path = root / 'images' / name
  return path if path.exists() else root / 'images_002/images' / name


def _replace(root, line, text):
  path = root / nih.BOXES
  lines = path.read_text().splitlines()
  lines[line - 1] = text
  fx.write_lines(path, lines)


BAD = {
  'unknown finding': (
    lambda root, name: _replace(root, 4, f'{name},Fracture,1,1,2,2'),
    r"BBox_List_2017.csv, line 4: unknown finding 'Fracture'",
  ),
  'missing image': (
    lambda root, name: _path(root, name).unlink(),
    r'BBox_List_2017.csv, line 4: image 00000001_000.png not found',
  ),
  'box outside the image': (
    lambda root, name: _replace(root, 4, f'{name},Atelectasis,20,2,13,4'),
    r'line 4: image 00000001_000.png: box .* outside the 32x32',
  ),
  'missing fields': (
    lambda root, name: _replace(root, 4, f'{name},Atelectasis,20,2,13'),
    r'line 4: expected 6 fields',
  ),
  'not a number': (
    lambda root, name: _replace(root, 4, f'{name},Atelectasis,20,2,x,4'),
    r'line 4: x, y, w, h must be numbers',
  ),
  'corrupt png': (
    lambda root, name: _path(root, name).write_bytes(b'\x89PNG'),
    r'line 4: cannot read image',
  ),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_raises_naming_file_and_line(tmp_path, case):
  images = _write(tmp_path)
  edit, message = BAD[case]
  edit(tmp_path, list(images)[2])  # Listed on line 4.
  builder = nih.from_data_config(_config(tmp_path, tmp_path / 'cache'))
  with pytest.raises(ValueError, match=message):
    builder.download_and_prepare()
  skipping = nih.from_data_config(_config(tmp_path, tmp_path / 'cache', skip_bad_rows=True))
  skipping.download_and_prepare()
  total = sum(s.num_examples for s in skipping.info.splits.values())
  assert total == (40 if 'box' in case else 39)


def test_header_must_be_the_real_one(tmp_path):
  _write(tmp_path)
  _replace(tmp_path, 1, 'Image Index,Finding Label,x,y,w,h')
  builder = nih.from_data_config(_config(tmp_path, tmp_path / 'cache'))
  with pytest.raises(ValueError, match=r'BBox_List_2017.csv, line 1: expected the header'):
    builder.download_and_prepare()
  (tmp_path / nih.BOXES).unlink()
  with pytest.raises(ValueError, match=r'(?s)BBox_List_2017.csv does not exist.*nihcc'):
    nih.from_data_config(_config(tmp_path, tmp_path / 'cache'))


def test_greyscale_and_rgba_pngs_are_stored_as_rgb(written):
  root, images, splits = written
  for ex in splits['test']:
    name = ex['image_id'].decode()
    with Image.open(_path(root, name)) as source:
      grey = np.asarray(source.convert('L'))
    assert ex['image'].shape == (SIZE, SIZE, 3)
    assert np.abs(ex['image'].astype(int) - grey[..., None]).max() <= 25
