"""Tests of the `folder` builder: the user's own labels.csv/boxes.csv layout."""

import dataclasses
import itertools
import logging
import re

import numpy as np
import pytest
import tensorflow as tf

from care_jax.data import folder
from care_jax.data import info as info_lib
from care_jax.data import pipeline
from care_jax.data import reading
from care_jax.data import registry
from tests.helpers import data_fixtures as fx

# Per class (10, 5, 10): test = round(0.2 n) -> (2, 1, 2); validation =
# clip(round(0.1 * rest), 1, rest - 1) of the rest (8, 4, 8) -> (1, 1, 1).
COUNTS = {'cat': 10, 'ant': 5, 'bee': 10}
EXPECTED = {
  'train': [3, 7, 7],  # ant, bee, cat (classes ordered by name)
  'validation': [1, 1, 1],
  'test': [1, 2, 2],
}


def _write_images(root, counts, size=(12, 16)):
  lines = []
  for name, count in counts.items():
    for i in range(count):
      path = f'{name}/{i:02d}.png'
      fx.save_image(root / path, np.full(size, i * 10, np.uint8))
      lines.append(f'{path},{name}')
  return lines


def _builder(root, cache, **params):
  config = fx.data_config('folder', root, cache, **params)
  return folder.from_data_config(config)


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
  root = tmp_path_factory.mktemp('generated')
  fx.write_lines(root / 'labels.csv', ['image,label'] + _write_images(root, COUNTS))
  return root, fx.load_splits(_builder(root, root / 'cache'))


def test_generated_split_counts_per_class(generated):
  _, splits = generated
  for split, expected in EXPECTED.items():
    assert fx.class_counts(splits[split], 3) == expected, split


def test_classes_are_ordered_by_name_and_images_kept(generated):
  root, splits = generated
  builder = _builder(root, root / 'cache')
  assert builder.info.features['label'].names == ['ant', 'bee', 'cat']
  ids = sorted(ex['image_id'].decode() for s in splits.values() for ex in s)
  assert ids == sorted(f'{name}/{i:02d}.png' for name, n in COUNTS.items() for i in range(n))
  for ex in splits['train']:
    i = int(ex['image_id'].decode()[-6:-4])
    np.testing.assert_array_equal(ex['image'], np.full((12, 16, 3), i * 10))
    assert ex['boxes'].shape == (0, 4)


def test_split_ignores_row_order_and_follows_the_seed(generated, tmp_path):
  root, splits = generated
  lines = (root / 'labels.csv').read_text().splitlines()
  shuffled = [lines[0]] + list(np.random.default_rng(0).permutation(lines[1:]))
  other = tmp_path / 'shuffled'
  for ex_split in splits.values():
    for ex in ex_split:
      name = ex['image_id'].decode()
      fx.save_image(other / name, np.zeros((12, 16), np.uint8))
  fx.write_lines(other / 'labels.csv', shuffled)

  def assignment(built):
    return {ex['image_id'].decode(): split for split, examples in built.items() for ex in examples}

  same = fx.load_splits(_builder(other, tmp_path / 'cache'))
  assert assignment(same) == assignment(splits)
  reseeded = fx.load_splits(_builder(other, tmp_path / 'cache', split_seed=1))
  assert assignment(reseeded) != assignment(splits)
  for split, expected in EXPECTED.items():
    assert fx.class_counts(reseeded[split], 3) == expected


def test_group_column_keeps_groups_in_one_split(tmp_path):
  lines = ['image,label,group']
  for name in ('a', 'b'):
    for i in range(12):
      fx.save_image(tmp_path / f'{name}{i}.png', np.zeros((8, 8), np.uint8))
      lines.append(f'{name}{i}.png,{name},{name}-patient{i // 3}')
  fx.write_lines(tmp_path / 'labels.csv', lines)
  splits = fx.load_splits(_builder(tmp_path, tmp_path / 'cache'))
  where = {}
  for split, examples in splits.items():
    for ex in examples:
      name = ex['image_id'].decode()[:-4]
      group = f'{name[0]}-patient{int(name[1:]) // 3}'
      where.setdefault(group, set()).add(split)
  assert len(where) == 8 and all(len(s) == 1 for s in where.values())
  assert set(splits) == {'train', 'validation', 'test'}


def test_box_lands_on_its_pixels_through_the_pipeline(tmp_path):
  # 64 x 48 images shrunk to 32 x 24 on disk, then to 16 x 16 by the
  # pipeline; box edges are multiples of 4 (x) and 3 (y) original pixels,
  # i.e. whole pixels at 16 x 16.
  box = (16, 6, 40, 30)  # xmin, ymin, xmax, ymax
  lines, box_lines = ['image,label,split'], ['image,xmin,ymin,xmax,ymax']
  for split in ('train', 'validation', 'test'):
    for name in ('common', 'rare'):
      for i in range(2):
        path = f'{split}/{name}{i}.jpg'
        drawn = name == 'rare'
        image = fx.lesion_image(48, 64, box if drawn else None)
        fx.save_image(tmp_path / path, image, quality=95)
        lines.append(f'{path},{name},{split}')
        if drawn:
          box_lines.append(f'{path},{",".join(map(str, box))}')
  fx.write_lines(tmp_path / 'labels.csv', lines)
  fx.write_lines(tmp_path / 'boxes.csv', box_lines)
  config = fx.data_config('folder', tmp_path, tmp_path / 'cache', stored_size=32)
  info = info_lib.get_dataset_info(config)
  assert info.class_names == ('common', 'rare')
  assert info.rare_classes == (1,)  # The class with boxes.
  assert info.split_sizes == {'train': 4, 'validation': 4, 'test': 4}
  assert fx.assert_masks_cover_the_drawn_lesions(config) == 2
  expected = fx.raster((6 / 48, 16 / 64, 30 / 48, 40 / 64), 16)
  assert expected.sum() == 8 * 6
  # Evaluation images never carry masks; the boxes stay in lesion_boxes.
  for batch in pipeline.eval_batches(config, 'test', batch_size=3):
    assert not batch['mask'].any() and not batch['has_mask'].any()
  splits = fx.load_splits(folder.from_data_config(config))
  for ex in splits['test'] + splits['train']:
    assert ex['image'].shape == (24, 32, 3)
    if ex['label'] == 1:
      np.testing.assert_allclose(
        ex['lesion_boxes'], [[6 / 48, 16 / 64, 30 / 48, 40 / 64]], atol=1e-6
      )
      np.testing.assert_array_equal(fx.raster(ex['lesion_boxes'][0], 16), expected)


def test_changed_parameters_or_files_do_not_reuse_the_cache(tmp_path):
  fx.write_lines(tmp_path / 'labels.csv', ['image,label'] + _write_images(tmp_path, COUNTS))
  names = {_builder(tmp_path, tmp_path / 'c').builder_config.name}
  assert _builder(tmp_path, tmp_path / 'c').builder_config.name in names
  changes = dict(
    split_seed=1, test_fraction=0.3, validation_fraction=0.2, skip_bad_rows=True, stored_size=64
  )
  assert set(changes) == set(folder.PARAMETERS)
  for key, value in changes.items():
    names.add(_builder(tmp_path, tmp_path / 'c', **{key: value}).builder_config.name)
  assert len(names) == 1 + len(changes)
  fx.write_lines(tmp_path / 'boxes.csv', ['image,xmin,ymin,xmax,ymax'])
  assert _builder(tmp_path, tmp_path / 'c').builder_config.name not in names
  defaults = fx.data_config()
  defaults.folder.split_seed = 5
  assert fx.data_config().folder.split_seed == 0


def _small(root, extra_boxes=()):
  """Three classes, images at lines 2..10 of labels.csv (3 per class)."""
  lines = ['image,label']
  for i in range(9):
    fx.save_image(root / f'{i}.png', np.zeros((10, 20), np.uint8))
    lines.append(f'{i}.png,{"abc"[i % 3]}')
  fx.write_lines(root / 'labels.csv', lines)
  fx.write_lines(root / 'boxes.csv', ['image,xmin,ymin,xmax,ymax', *extra_boxes])
  return lines


def _prepare(root, **params):
  builder = _builder(root, root / 'cache', **params)
  builder.download_and_prepare()
  return builder


def _edit(root, labels=None, boxes=None):
  if labels is not None:
    fx.write_lines(root / 'labels.csv', labels)
  if boxes is not None:
    fx.write_lines(root / 'boxes.csv', boxes)


def _missing_file(root, lines):
  (root / '3.png').unlink()


def _corrupt(root, lines):
  # Noise does not compress, so the cut falls into the pixel data: the
  # header reads fine, the full decode fails.
  noise = np.random.default_rng(0).integers(0, 255, (10, 20), np.uint8)
  fx.save_image(root / '3.png', noise)
  data = (root / '3.png').read_bytes()
  (root / '3.png').write_bytes(data[: len(data) // 2])


def _not_an_image(root, lines):
  (root / '3.png').write_text('not an image')


def _replace_line(n, text):
  def edit(root, lines):
    _edit(root, labels=lines[: n - 1] + [text] + lines[n:])

  return edit


def _box(text):
  def edit(root, lines):
    _edit(root, boxes=['image,xmin,ymin,xmax,ymax', text])

  return edit


def _bad_mask(write):
  """An edit giving 3.png (line 5, a training row) the mask m3.png made by ``write``."""

  def edit(root, lines):
    rows = ['image,label,split,mask']
    for i, line in enumerate(lines[1:]):
      split = 'test' if i < 3 else 'validation' if 6 <= i < 9 else 'train'
      rows.append(f'{line},{split},{"m3.png" if i == 3 else ""}')
    _edit(root, labels=rows)
    write(root / 'm3.png')

  return edit


def _truncated(path):
  noise = np.random.default_rng(1).integers(0, 255, (10, 20), np.uint8)
  fx.save_image(path, noise)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


# (edit, message regex); skippable rows name line 5 of labels.csv (3.png) or
# line 2 of boxes.csv.
SKIPPABLE = {
  'bad box kind': (
    lambda root, lines: _edit(
      root, boxes=['image,xmin,ymin,xmax,ymax,kind', '4.png,1,1,5,5,ruler']
    ),
    r"boxes.csv, line 2: kind must be 'lesion' or 'artefact', got 'ruler'",
  ),
  'missing image file': (_missing_file, r'labels.csv, line 5: image file .*3.png does not exist'),
  'corrupt png': (_corrupt, r'labels.csv, line 5: cannot decode image'),
  'not an image': (_not_an_image, r'labels.csv, line 5: cannot read image'),
  'unknown split': (
    lambda root, lines: _edit(
      root,
      labels=['image,label,split']
      + [
        f'{line},{"test" if i < 3 else "tset" if i == 3 else "train"}'
        for i, line in enumerate(lines[1:])
      ],
    ),
    r"labels.csv, line 5: split 'tset' is not one of",
  ),
  'empty label': (_replace_line(5, '3.png,'), r'labels.csv, line 5: empty label'),
  'unknown image in boxes.csv': (
    _box('nope.png,1,1,5,5'),
    r"boxes.csv, line 2: image 'nope.png' is not listed in labels.csv",
  ),
  'box outside the image': (
    _box('4.png,10,2,21,8'),
    r'boxes.csv, line 2: .*lies outside the 20x10',
  ),
  'xmin >= xmax': (_box('4.png,7,2,7,8'), r'boxes.csv, line 2: .*xmin=7 >= xmax=7'),
  'ymin >= ymax': (_box('4.png,1,9,7,3'), r'boxes.csv, line 2: .*ymin=9 >= ymax=3'),
  'not a number': (_box('4.png,1,2,x,8'), r'boxes.csv, line 2: .*must be numbers'),
  'missing mask file': (
    _bad_mask(lambda path: None),
    r'labels.csv, line 5: mask file .*m3.png does not exist',
  ),
  'mask not an image': (
    _bad_mask(lambda path: path.write_text('no mask')),
    r'labels.csv, line 5: cannot read mask .*m3.png',
  ),
  'corrupt mask': (_bad_mask(_truncated), r'labels.csv, line 5: cannot decode mask .*m3.png'),
  'mask of another aspect ratio': (
    _bad_mask(lambda path: fx.save_image(path, np.full((20, 20), 255, np.uint8))),
    r'labels.csv, line 5: the mask is 20x20, which is not the aspect ratio of its 20x10 image',
  ),
  '0/1 mask': (
    _bad_mask(lambda path: fx.save_image(path, np.eye(10, 20, dtype=np.uint8))),
    r'labels.csv, line 5: mask .*m3.png is empty: no pixel above 127 .*scale a 0/1 mask',
  ),
}
ALWAYS = {
  'absolute path': (_replace_line(5, '/etc/passwd,a'), r'line 5: .*leaves the data dir'),
  'dot-dot path': (_replace_line(5, '../3.png,a'), r'line 5: .*leaves the data dir'),
  'windows drive': (_replace_line(5, 'C:\\x.png,a'), r'line 5: .*leaves the data dir'),
  'dot-dot in boxes.csv': (_box('a/../../4.png,1,1,2,2'), r'boxes.csv, line 2: .*leaves'),
  'dot-dot mask path': (
    lambda root, lines: _edit(
      root,
      labels=['image,label,mask'] + [f'{line},' for line in lines[1:4]] + ['3.png,a,../m3.png'],
    ),
    r"labels.csv, line 5: mask path '../m3.png' leaves the data dir",
  ),
  'duplicate image rows': (
    _replace_line(8, './1.png,b'),
    r"line 8: image '1.png' is listed again \(first on line 3\)",
  ),
  'empty file': (lambda root, lines: _edit(root, labels=[]), r'labels.csv is empty'),
  'header only': (
    lambda root, lines: _edit(root, labels=['image,label']),
    r'labels.csv has a header but no rows',
  ),
  'misspelt column': (
    lambda root, lines: _edit(
      root, labels=['image,label,splt'] + [f'{line},train' for line in lines[1:]]
    ),
    r"labels.csv, line 1: unknown column\(s\) \['splt'\]",
  ),
  'missing column': (
    lambda root, lines: _edit(root, boxes=['image,xmin,ymin,xmax']),
    r"boxes.csv, line 1: missing column\(s\) \['ymax'\]",
  ),
  'class without test examples': (
    lambda root, lines: _edit(
      root,
      labels=['image,label,split']
      + [f'{line},{"test" if i in (6, 7) else "train"}' for i, line in enumerate(lines[1:])],
    ),
    r"labels.csv: every class needs examples in every split, but 'test'"
    r" has no 'c'",
  ),
}


@pytest.mark.parametrize('case', sorted(SKIPPABLE) + sorted(ALWAYS))
def test_bad_input_raises_naming_file_and_line(tmp_path, case):
  edit, message = {**SKIPPABLE, **ALWAYS}[case]
  edit(tmp_path, _small(tmp_path))
  with pytest.raises(ValueError, match=message):
    _prepare(tmp_path)


@pytest.mark.parametrize('case', sorted(SKIPPABLE))
def test_bad_rows_are_skipped_counted_and_logged(tmp_path, case, caplog):
  edit, message = SKIPPABLE[case]
  lines = _small(tmp_path)
  # Two more images per class, so that every split keeps every class.
  for i in range(9, 15):
    fx.save_image(tmp_path / f'{i}.png', np.zeros((10, 20), np.uint8))
    lines.append(f'{i}.png,{"abc"[i % 3]}')
  _edit(tmp_path, labels=lines)
  edit(tmp_path, lines)
  with caplog.at_level(logging.WARNING):
    builder = _prepare(tmp_path, skip_bad_rows=True)
  warnings = [r.getMessage() for r in caplog.records if 'skipped' in r.getMessage()]
  assert len(warnings) == 1 and 'skipped 1 bad row(s)' in warnings[0]
  assert re.search(message, warnings[0])
  total = sum(s.num_examples for s in builder.info.splits.values())
  image_row = 'boxes.csv' not in message
  assert total == 15 - image_row


def test_skipped_image_takes_its_boxes_along(tmp_path, caplog):
  lines = _small(tmp_path, extra_boxes=['3.png,1,1,5,5', '3.png,2,2,6,6'])
  lines += [f'{i}.png,{"abc"[i % 3]}' for i in range(9, 15)]
  for i in range(9, 15):
    fx.save_image(tmp_path / f'{i}.png', np.zeros((10, 20), np.uint8))
  _edit(tmp_path, labels=lines)
  (tmp_path / '3.png').unlink()
  with caplog.at_level(logging.WARNING):
    _prepare(tmp_path, skip_bad_rows=True)
  (warning,) = [r.getMessage() for r in caplog.records if 'skipped' in r.getMessage()]
  assert 'skipped 3 bad row(s)' in warning
  assert warning.count('whose row (line 5 of labels.csv) was skipped') == 2


def test_missing_data_dir_and_labels_explain_the_layout(tmp_path):
  config = fx.data_config('folder', tmp_path, tmp_path / 'cache')
  config.dir = None
  with pytest.raises(ValueError, match=r'(?s)data.dir must point.*labels.csv'):
    folder.from_data_config(config)
  config.dir = str(tmp_path / 'nope')
  with pytest.raises(ValueError, match='is not a directory'):
    folder.from_data_config(config)
  config.dir = str(tmp_path)
  with pytest.raises(ValueError, match=r'(?s)labels.csv does not exist.*image,label'):
    folder.from_data_config(config)


@pytest.mark.parametrize(
  'key, value, message',
  [
    ('test_fraction', 1.0, 'test_fraction'),
    ('validation_fraction', -0.1, 'validation_fraction'),
    ('stored_size', -1, 'stored_size'),
  ],
)
def test_bad_parameters_name_the_key(tmp_path, key, value, message):
  _small(tmp_path)
  parameters = fx.default_parameters('folder')
  with pytest.raises(ValueError, match=f'data.folder.{message}'):
    folder.folder_config(tmp_path, **{**parameters, key: value})
  with pytest.raises(ValueError, match=r"Unknown data.folder parameter\(s\) \['sed'\]"):
    folder.folder_config(tmp_path, **parameters, sed=1)


def test_parameters_are_all_required_and_come_from_the_config(tmp_path):
  _small(tmp_path)
  parameters = fx.default_parameters('folder')
  assert set(parameters) == set(folder.PARAMETERS)
  assert folder.folder_config(tmp_path, **parameters).parameters == {
    name: parameters[name] for name in folder.PARAMETERS
  }
  del parameters['stored_size']
  with pytest.raises(
    ValueError,
    match=r'Missing parameter\(s\) data\.folder\.stored_size: .*defaults come from'
    r' care_jax\.config\.default_config\(\)',
  ):
    folder.folder_config(tmp_path, **parameters)


# Segmentation masks (the mask column) ------------------------------------------


# Stored images are 32 x 64 (H x W) and the pipeline's S = 16: one pixel of the
# S grid is a 2 x 4 block of the stored image. The lesions are unions of whole
# blocks, at least two blocks across, so resizing keeps them exactly.
MASK_SIZE = 16
BLOCK = (2, 4)
MASK_SCALES = {'big': 2.0, 'small': 0.5}  # mask file size / image size


def _grid(k):
  """bool [16, 16]: the lesion of example k on the S grid (an L shape, not a box)."""
  grid = np.zeros((MASK_SIZE, MASK_SIZE), bool)
  top, left = 2 + k, 3 + 2 * k
  grid[top : top + 8, left : left + 3] = True
  grid[top + 5 : top + 8, left : left + 7] = True
  return grid


def _at_scale(grid, scale):
  """uint8 0/255 mask of the S grid at ``scale`` times the stored 32 x 64 size."""
  block = (round(BLOCK[0] * scale), round(BLOCK[1] * scale))
  return np.kron(grid, np.ones(block, np.uint8)).astype(np.uint8) * 255


def _mask_dataset(root, box_row=True):
  """Rare training images with masks (big, small, big plus a box), one with a box only.

  Every image encodes its lesion: 255 on the mask (or box), 0 elsewhere.
  Returns {image path: the S-grid lesion} of the masked training images.
  """
  lines, box_lines = ['image,label,split,mask'], ['image,xmin,ymin,xmax,ymax']
  masked = {}
  for split in ('train', 'validation', 'test'):
    for i in range(2):
      path = f'{split}/common{i}.png'
      fx.save_image(root / path, np.zeros((32, 64), np.uint8))
      lines.append(f'{path},common,{split},')
    for k, kind in enumerate(('big', 'small', 'both', 'box')):
      if (split != 'train' and k > 1) or (kind == 'box' and not box_row):
        continue
      path, mask_path = f'{split}/rare{k}.png', f'masks/{split}/rare{k}.png'
      grid = _grid(k)
      if kind == 'box':
        # A box over S-grid rows 4..9, columns 5..12 and nothing else.
        grid = np.zeros_like(grid)
        grid[4:10, 5:13] = True
        box_lines.append(f'{path},20,8,52,20')
      else:
        fx.save_image(root / mask_path, _at_scale(grid, MASK_SCALES.get(kind, 2.0)))
        if split == 'train':
          masked[path] = grid
      if kind == 'both':
        box_lines.append(f'{path},0,0,8,4')  # Elsewhere: the mask wins for M_in.
      fx.save_image(root / path, _at_scale(grid, 1.0))
      lines.append(f'{path},rare,{split},{mask_path if kind != "box" else ""}')
  fx.write_lines(root / 'labels.csv', lines)
  fx.write_lines(root / 'boxes.csv', box_lines)
  return masked


def _mask_config(root, augment=False):
  config = fx.data_config('folder', root, root / 'cache', image_size=MASK_SIZE)
  config.augment.enabled = augment
  config.augment.update(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
  return config


def _ids_in_batch_order(config):
  """The training image paths in the pipeline's stored order."""
  return list(reading.example_ids(registry.prepared_builder(config), 'train'))


@pytest.fixture(scope='module')
def masked_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('masks')
  return root, _mask_dataset(root)


def test_masks_are_stored_at_the_image_size_for_training_images_only(masked_dir):
  root, masked = masked_dir
  builder = folder.from_data_config(_mask_config(root))
  assert builder.VERSION == '1.1.0' and '1.1.0' in builder.RELEASE_NOTES
  splits = fx.load_splits(builder)
  for split, examples in splits.items():
    for ex in examples:
      key = ex['image_id'].decode()
      if key in masked:
        assert split == 'train'
        stored = tf.io.decode_png(ex['mask'], channels=1).numpy()[..., 0]
        np.testing.assert_array_equal(stored, _at_scale(masked[key], 1.0))
      else:
        assert ex['mask'] == b''
      if key == 'train/rare2.png':  # Mask and box: the box stays a box.
        np.testing.assert_allclose(ex['boxes'], [[0, 0, 4 / 32, 8 / 64]], atol=1e-6)
        np.testing.assert_allclose(ex['lesion_boxes'], ex['boxes'])


def test_batch_mask_is_the_resized_mask_and_boxes_keep_their_raster(masked_dir):
  root, masked = masked_dir
  config = _mask_config(root)
  info = info_lib.get_dataset_info(config)
  assert info.rare_classes == (1,)
  ids = _ids_in_batch_order(config)
  batch = next(pipeline.eval_batches(config, 'train', batch_size=len(ids)))
  trained = next(pipeline.train_batches(config, batch_size=len(ids), seed=0))
  # The training row of each eval row (images without augmentation are equal).
  match = [
    np.abs(trained['image'] - image).sum(axis=(1, 2, 3)).argmin() for image in batch['image']
  ]
  for row, key in enumerate(ids):
    mask = batch['mask'][row]
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    if key in masked:
      np.testing.assert_array_equal(mask, masked[key].astype(np.float32), key)
    elif key == 'train/rare3.png':
      expected = np.zeros((16, 16), np.float32)
      expected[4:10, 5:13] = 1.0  # The box, rasterised as without masks.
      np.testing.assert_array_equal(mask, expected)
    else:
      assert not mask.any()
    assert batch['has_mask'][row] == mask.any()
    # Each image encodes its lesion: thresholded, it is the batch mask.
    np.testing.assert_array_equal(batch['image'][row, ..., 0] >= 0.5, mask.astype(bool), key)
  # Training batches without augmentation hold the same rows (in another order).
  np.testing.assert_array_equal(trained['mask'][match], batch['mask'])
  # The attention metrics score boxes: the mask-only images have no lesion_mask.
  for row, key in enumerate(ids):
    has_box = key in ('train/rare2.png', 'train/rare3.png')
    assert batch['has_lesion_mask'][row] == has_box, key


def test_augmentation_warps_the_mask_with_the_image(tmp_path):
  # Random crops, flips and rotations, no colour jitter: the image encodes its
  # lesion, so the thresholded image must be the batch mask, pixel for pixel.
  masked = _mask_dataset(tmp_path, box_row=False)
  (tmp_path / 'boxes.csv').unlink()
  config = _mask_config(tmp_path, augment=True)
  # No boxes at all: the class with masks is the default rare class.
  assert info_lib.get_dataset_info(config).rare_classes == (1,)
  plain = [grid.astype(np.float32) for grid in masked.values()]
  rows = transformed = 0
  for batch in itertools.islice(pipeline.train_batches(config, batch_size=5, seed=3), 8):
    for image, mask, has_mask in zip(batch['image'], batch['mask'], batch['has_mask']):
      assert set(np.unique(mask)) <= {0.0, 1.0}
      np.testing.assert_array_equal(image[..., 0] >= 0.5, mask.astype(bool))
      assert has_mask == mask.any()
      if image.max() > 0.5:  # A rare image (the common ones are black).
        rows += 1
        transformed += not any(np.array_equal(mask, p) for p in plain)
  assert rows >= 15 and transformed >= rows - 2


def test_generated_boxes_replace_the_masks_with_a_warning(masked_dir, caplog):
  root, masked = masked_dir
  config = _mask_config(root)
  config.box_source = 'otsu'
  no_boxes = lambda c, builder, table: dataclasses.replace(
    table, box_values=np.zeros((0, 4), np.float32), box_splits=np.zeros_like(table.box_splits)
  )
  with caplog.at_level(logging.WARNING):
    batch = next(pipeline.train_batches(config, batch_size=7, seed=0, boxes_fn=no_boxes))
  assert not batch['mask'].any()
  (warning,) = [r.getMessage() for r in caplog.records if 'segmentation mask' in r.getMessage()]
  assert f'{len(masked)} segmentation mask(s)' in warning


def test_artefact_boxes_of_the_kind_column_make_the_relevance_of_training_images(tmp_path):
  # Train: a (a lesion box and an artefact box), b (an artefact box alone), c (no box).
  lines = ['image,label,split']
  for i, split in enumerate(['train'] * 3 + ['validation'] * 3 + ['test'] * 3):
    fx.save_image(tmp_path / f'{i}.png', np.zeros((10, 20), np.uint8))
    lines.append(f'{i}.png,{"abc"[i % 3]},{split}')
  fx.write_lines(tmp_path / 'labels.csv', lines)
  boxes = ['0.png,2,2,8,6,', '0.png,14,0,20,4,artefact', '1.png,0,6,6,10,Artefact']
  fx.write_lines(tmp_path / 'boxes.csv', ['image,xmin,ymin,xmax,ymax,kind', *boxes])
  config = fx.data_config('folder', tmp_path, tmp_path / 'cache', image_size=20)
  batch = next(pipeline.train_batches(config, batch_size=3, seed=0))
  lesion = fx.box_union_raster([(0.2, 0.1, 0.6, 0.4)], 20)
  artefact_a = fx.box_union_raster([(0.0, 0.7, 0.4, 1.0)], 20)
  artefact_b = fx.box_union_raster([(0.6, 0.0, 1.0, 0.3)], 20)
  expected = {
    0: np.where(artefact_a > 0, -1.0, 2 * lesion - 1),  # The artefact wins over "outside".
    1: -artefact_b,
    2: np.zeros((20, 20)),
  }
  for label, relevance, mask, has_mask in zip(
    batch['label'], batch['relevance'], batch['mask'], batch['has_mask']
  ):
    np.testing.assert_array_equal(relevance, expected[label])
    np.testing.assert_array_equal(mask, lesion if label == 0 else 0.0)
    assert has_mask == (label != 2)
  # Only the lesion boxes are annotation boxes (rare classes, masks); no kind column: no feature.
  assert info_lib.get_dataset_info(config).rare_classes == (0,)
  fx.write_lines(tmp_path / 'boxes.csv', ['image,xmin,ymin,xmax,ymax', boxes[0][:-1]])
  assert 'relevance' not in next(pipeline.train_batches(config, batch_size=3, seed=0))
