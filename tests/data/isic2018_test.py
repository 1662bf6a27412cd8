"""Tests of the `isic2018` builder on tiny fixture files in the real formats."""

import numpy as np
import pytest
import tensorflow as tf

from care_jax.data import info as info_lib
from care_jax.data import isic2018
from care_jax.data import pipeline
from tests.helpers import data_fixtures as fx

COLUMNS = isic2018.GROUND_TRUTH_COLUMNS  # MEL, NV, BCC, AKIEC, BKL, DF, VASC
NAMES = isic2018.CLASS_NAMES  # AKIEC, BCC, BKL, DF, MEL, NV, VASC
DF = NAMES.index('DF')
# Images per lesion, per class: NV has 5 lesions of 2 images, MEL 4 lesions.
LESIONS = {'NV': [2] * 5, 'MEL': [2, 1, 1, 1]}
HEIGHT, WIDTH = 24, 32


def _lesion_box(index):
  """Pixel (xmin, ymin, xmax, ymax) of image ``index``'s lesion."""
  x = 4 if index % 2 else 8
  return (x, 6, x + 16, 18)


def _write(root, *, gt_dir='', image_dir='ISIC2018_Task3_Training_Input'):
  """Writes the ground truth, images, metadata and masks; returns the rows."""
  rows = []  # (image id, class, lesion id)
  for name in COLUMNS:
    for lesion, count in enumerate(LESIONS.get(name, [1] * 5)):
      for _ in range(count):
        rows.append((f'ISIC_{len(rows):07d}', name, f'HAM_{name}{lesion}'))
  gt = ['image,' + ','.join(COLUMNS)]
  metadata = ['lesion_id,image_id,dx,dx_type,age,sex,localization']
  for i, (image, name, lesion) in enumerate(rows):
    gt.append(f'{image},' + ','.join('1.0' if c == name else '0.0' for c in COLUMNS))
    metadata.append(f'{lesion},{image},{name.lower()},histo,50.0,male,back')
    box = _lesion_box(i)
    fx.save_image(
      root / image_dir / f'{image}.jpg',
      np.repeat(fx.lesion_image(HEIGHT, WIDTH, box)[..., None], 3, -1),
      quality=95,
    )
    mask = fx.lesion_image(HEIGHT, WIDTH, box) > 127
    mask[1:3, 1:3] = True  # A smaller, separate blob: not the lesion.
    fx.save_image(
      root / isic2018.MASK_DIR / f'{image}_segmentation.png', mask.astype(np.uint8) * 255
    )
  fx.write_lines(root / gt_dir / isic2018.GROUND_TRUTH, gt)
  fx.write_lines(root / isic2018.METADATA, metadata)
  return rows


def _builder(root, cache, rare_classes=(), **params):
  config = fx.data_config('isic2018', root, cache, **params)
  config.rare_classes = rare_classes
  return isic2018.from_data_config(config)


def _normalised(index):
  xmin, ymin, xmax, ymax = _lesion_box(index)
  return [ymin / HEIGHT, xmin / WIDTH, ymax / HEIGHT, xmax / WIDTH]


@pytest.fixture(scope='module')
def fixture_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('isic')
  return root, _write(root)


@pytest.fixture(scope='module')
def lesion_splits(fixture_dir):
  root, _ = fixture_dir
  return fx.load_splits(_builder(root, root / 'cache'))


def test_stratified_split_counts_per_class(fixture_dir, tmp_path):
  root, _ = fixture_dir
  splits = fx.load_splits(_builder(root, tmp_path, split='stratified'))
  # n = 5: test 1, validation 1 of 4; NV n = 10: test 2, validation 1 of 8.
  assert fx.class_counts(splits['train'], 7) == [3, 3, 3, 3, 3, 7, 3]
  assert fx.class_counts(splits['validation'], 7) == [1] * 7
  assert fx.class_counts(splits['test'], 7) == [1, 1, 1, 1, 1, 2, 1]


def test_lesion_split_keeps_each_lesion_in_one_split(fixture_dir, lesion_splits):
  _, rows = fixture_dir
  lesion_of = {image: lesion for image, _, lesion in rows}
  split_of = {}
  for split, examples in lesion_splits.items():
    for ex in examples:
      split_of.setdefault(lesion_of[ex['image_id'].decode()], set()).add(split)
  assert len(split_of) == len(set(lesion_of.values()))
  assert all(len(splits) == 1 for splits in split_of.values())
  totals = np.sum([fx.class_counts(e, 7) for e in lesion_splits.values()], 0)
  assert totals.tolist() == [5, 5, 5, 5, 5, 10, 5]
  nv = NAMES.index('NV')  # Whole lesions of 2: test 2, validation 2.
  assert fx.class_counts(lesion_splits['test'], 7)[nv] == 2
  assert fx.class_counts(lesion_splits['validation'], 7)[nv] == 2


def test_labels_come_from_the_one_hot_columns(fixture_dir, lesion_splits):
  _, rows = fixture_dir
  name_of = {image: name for image, name, _ in rows}
  for examples in lesion_splits.values():
    for ex in examples:
      assert NAMES[ex['label']] == name_of[ex['image_id'].decode()]
      assert ex['image'].shape == (HEIGHT, WIDTH, 3)


def test_boxes_from_the_largest_mask_component_for_rare_training_images(fixture_dir, lesion_splits):
  _, rows = fixture_dir
  index = {image: i for i, (image, _, _) in enumerate(rows)}
  boxed = 0
  for split, examples in lesion_splits.items():
    for ex in examples:
      i = index[ex['image_id'].decode()]
      np.testing.assert_allclose(ex['lesion_boxes'], [_normalised(i)], atol=1e-6)
      if split == 'train' and ex['label'] == DF:
        np.testing.assert_allclose(ex['boxes'], [_normalised(i)], atol=1e-6)
        boxed += 1
      else:
        assert ex['boxes'].shape == (0, 4)
  assert boxed == 3


def test_largest_component_box_reference():
  mask = np.zeros((10, 12), bool)
  mask[2:5, 3:9] = True  # 18 pixels
  mask[7:9, 0:2] = True  # 4 pixels
  mask[5, 9] = True  # Diagonal neighbour: 8-connected to the first blob.
  np.testing.assert_allclose(isic2018.largest_component_box(mask), [0.2, 3 / 12, 0.6, 10 / 12])
  assert isic2018.largest_component_box(np.zeros((4, 4), bool)) is None


def test_rare_classes_choose_the_boxed_classes(fixture_dir, tmp_path):
  root, _ = fixture_dir
  builder = _builder(root, tmp_path, rare_classes=('MEL', 'DF'))
  splits = fx.load_splits(builder)
  boxed = {ex['label'] for ex in splits['train'] if len(ex['boxes'])}
  assert boxed == {DF, NAMES.index('MEL')}
  with pytest.raises(ValueError, match=r"unknown class name\(s\) \['df'\]"):
    _builder(root, tmp_path, rare_classes=('df',))


def test_box_lands_on_the_lesion_through_the_pipeline(fixture_dir, tmp_path):
  root, _ = fixture_dir
  config = fx.data_config('isic2018', root, tmp_path)
  info = info_lib.get_dataset_info(config)
  assert info.class_names == NAMES and info.rare_classes == (DF,)
  assert sum(info.split_sizes.values()) == 40
  assert fx.assert_masks_cover_the_drawn_lesions(config) == 3


def test_authors_fold_files_define_train_and_test(tmp_path):
  rows = _write(tmp_path, gt_dir='ISIC2018_Task3_Training_GroundTruth')
  test_ids = {image for i, (image, _, _) in enumerate(rows) if i % 4 == 0}
  for split in ('train', 'test'):
    lines = [f',image_{split},label_{split}']
    for i, (image, name, _) in enumerate(rows):
      if (image in test_ids) == (split == 'test'):
        lines.append(f'{len(lines) - 1},{image}.jpg,{COLUMNS.index(name)}')
    fx.write_lines(tmp_path / f'split_data/split_data_2_fold_{split}.csv', lines)
  splits = fx.load_splits(_builder(tmp_path, tmp_path / 'cache', split='folds', fold=2))
  ids = {s: {ex['image_id'].decode() for ex in e} for s, e in splits.items()}
  assert ids['test'] == test_ids
  assert ids['train'] | ids['validation'] == {r[0] for r in rows} - test_ids
  assert fx.class_counts(splits['validation'], 7) == [1] * 7


def test_box_csv_source(tmp_path):
  rows = _write(tmp_path, image_dir='HAM10000_images_part_2')
  lines = ['image,xmin,ymin,xmax,ymax']
  for i, (image, _, _) in enumerate(rows):
    lines.append(f'{image}.jpg,{",".join(map(str, _lesion_box(i)))}')
    lines.append(f'{image},0,0,2,2')  # A second box of the same image.
  fx.write_lines(tmp_path / 'my_boxes.csv', lines)
  builder = _builder(tmp_path, tmp_path / 'cache', box_source='csv', box_csv='my_boxes.csv')
  splits = fx.load_splits(builder)
  index = {image: i for i, (image, _, _) in enumerate(rows)}
  for ex in splits['train']:
    expected = [_normalised(index[ex['image_id'].decode()]), [0, 0, 2 / 24, 2 / 32]]
    np.testing.assert_allclose(ex['lesion_boxes'], expected, atol=1e-6)
    assert len(ex['boxes']) == (2 if ex['label'] == DF else 0)


def _gt_line(rows, name, k=0):
  """1-based line in the ground truth of the k-th image of class ``name``."""
  return [i for i, r in enumerate(rows) if r[1] == name][k] + 2


def _replace(path, line, text):
  lines = path.read_text().splitlines()
  lines[line - 1] = text
  fx.write_lines(path, lines)


def _not_one_hot(root, rows):
  line = _gt_line(rows, 'BCC')
  _replace(root / isic2018.GROUND_TRUTH, line, f'{rows[line - 2][0]},1.0,0.0,1.0,0,0,0,0')
  return rf'GroundTruth.csv, line {line}: .*expected one 1.0 and six 0.0'


def _missing_image(root, rows):
  line = _gt_line(rows, 'VASC', 2)
  (root / 'ISIC2018_Task3_Training_Input' / f'{rows[line - 2][0]}.jpg').unlink()
  return rf'GroundTruth.csv, line {line}: image {rows[line - 2][0]}.jpg not found'


def _dx_mismatch(root, rows):
  line = _gt_line(rows, 'BKL')
  image, _, lesion = rows[line - 2]
  _replace(root / isic2018.METADATA, line, f'{lesion},{image},nv,histo,1,male,back')
  return rf"HAM10000_metadata.csv, line {line}: {image}: dx='nv', but .* says BKL"


def _not_in_metadata(root, rows):
  line = _gt_line(rows, 'AKIEC', 1)
  _replace(root / isic2018.METADATA, line, 'HAM_x,ISIC_9999999,akiec,histo,1,male,back')
  return rf'GroundTruth.csv, line {line}: image {rows[line - 2][0]} is not listed'


def _no_df_masks(root, rows):
  for image, name, _ in rows:
    if name == 'DF':
      (root / isic2018.MASK_DIR / f'{image}_segmentation.png').unlink()
  return r'GroundTruth.csv, line \d+: mask .* does not exist \(box of a rare'


def _empty_df_masks(root, rows):
  for image, name, _ in rows:
    if name == 'DF':
      fx.save_image(
        root / isic2018.MASK_DIR / f'{image}_segmentation.png', np.zeros((HEIGHT, WIDTH), np.uint8)
      )
  return r'GroundTruth.csv, line \d+: mask .*_segmentation.png is empty'


BAD = {
  'not one-hot': _not_one_hot,
  'missing image': _missing_image,
  'dx mismatch': _dx_mismatch,
  'image not in metadata': _not_in_metadata,
  'missing mask of a rare training image': _no_df_masks,
  'empty mask of a rare training image': _empty_df_masks,
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_raises_naming_file_and_line(tmp_path, case):
  message = BAD[case](tmp_path, _write(tmp_path))
  with pytest.raises(ValueError, match=message):
    _builder(tmp_path, tmp_path / 'cache').download_and_prepare()


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_rows_can_be_skipped(tmp_path, case):
  BAD[case](tmp_path, _write(tmp_path))
  builder = _builder(tmp_path, tmp_path / 'cache', skip_bad_rows=True)
  builder.download_and_prepare()
  total = sum(s.num_examples for s in builder.info.splits.values())
  # Mask problems drop the box, the others the image.
  assert total == (40 if 'mask' in case else 39)


def test_duplicates_and_missing_files_always_raise(tmp_path):
  rows = _write(tmp_path)
  gt = tmp_path / isic2018.GROUND_TRUTH
  lines = gt.read_text().splitlines()
  fx.write_lines(gt, lines + [lines[3]])
  with pytest.raises(ValueError, match=f'line 42: image {rows[2][0]!r} is listed again'):
    _builder(tmp_path, tmp_path / 'c', skip_bad_rows=True).download_and_prepare()
  with pytest.raises(
    ValueError, match=r'(?s)split_data_3_fold_train.csv does not exist.*challenge'
  ):
    _builder(tmp_path, tmp_path / 'c', split='folds', fold=3)
  gt.unlink()
  with pytest.raises(ValueError, match=r'(?s)GroundTruth.csv does not exist.*DATA_DIR'):
    _builder(tmp_path, tmp_path / 'c')
  with pytest.raises(ValueError, match=r"data.isic2018.split = 'random'"):
    _builder(tmp_path, tmp_path / 'c', split='random')


# supervision='mask' ----------------------------------------------------------


# At data.image_size 8 a pixel is a 3 x 4 block of the 24 x 32 images.
GRID = np.zeros((8, 8), bool)
GRID[2:7, 1:3] = GRID[5:7, 1:7] = True  # An L: not a box.


def _df_masks_at_twice_the_size(root, rows):
  """Replaces the DF masks by 48 x 64 masks of the L-shaped GRID."""
  for image, name, _ in rows:
    if name == 'DF':
      big = np.kron(GRID, np.ones((6, 8), np.uint8)).astype(np.uint8) * 255
      fx.save_image(root / isic2018.MASK_DIR / f'{image}_segmentation.png', big)


def test_mask_supervision_stores_the_rare_training_masks(fixture_dir, lesion_splits, tmp_path):
  root, rows = fixture_dir
  index = {image: i for i, (image, _, _) in enumerate(rows)}
  splits = fx.load_splits(_builder(root, tmp_path, supervision='mask'))
  masked = 0
  for split, examples in splits.items():
    for ex in examples:
      i = index[ex['image_id'].decode()]
      if split == 'train' and ex['label'] == DF:
        stored = tf.io.decode_png(ex['mask'], channels=1).numpy()[..., 0]
        expected = fx.lesion_image(HEIGHT, WIDTH, _lesion_box(i)) > 127
        expected[1:3, 1:3] = True  # The whole mask, small blob included.
        np.testing.assert_array_equal(stored, expected * 255)
        np.testing.assert_allclose(ex['boxes'], [_normalised(i)], atol=1e-6)  # Boxes stay.
        masked += 1
      else:
        assert ex['mask'] == b''
  assert masked == 3
  # The default, supervision='box', stores no mask.
  assert all(ex['mask'] == b'' for examples in lesion_splits.values() for ex in examples)


def test_mask_supervision_makes_m_in_from_masks_of_any_size(tmp_path):
  rows = _write(tmp_path)
  _df_masks_at_twice_the_size(tmp_path, rows)
  config = fx.data_config('isic2018', tmp_path, tmp_path / 'cache', image_size=8)
  config.isic2018.supervision = 'mask'
  info = info_lib.get_dataset_info(config)
  batch = next(pipeline.train_batches(config, batch_size=info.split_sizes['train'], seed=0))
  assert batch['mask'].shape[1:] == (8, 8) and batch['mask'].dtype == np.float32
  for label, mask, has_mask in zip(batch['label'], batch['mask'], batch['has_mask']):
    if label == DF:
      np.testing.assert_array_equal(mask, GRID.astype(np.float32))
    else:
      assert not mask.any()
    assert has_mask == mask.any()
  assert batch['has_mask'].sum() == 3
  # The same files with box supervision: M_in is the box around the L.
  config.isic2018.supervision = 'box'
  batch = next(pipeline.train_batches(config, batch_size=info.split_sizes['train'], seed=0))
  box = np.zeros((8, 8), np.float32)
  box[2:7, 1:7] = 1.0
  for label, mask in zip(batch['label'], batch['mask']):
    np.testing.assert_array_equal(mask, box if label == DF else np.zeros_like(box))


def test_mask_supervision_needs_the_masks_of_rare_training_images(tmp_path):
  rows = _write(tmp_path)
  lines = ['image,xmin,ymin,xmax,ymax'] + [
    f'{image},{",".join(map(str, _lesion_box(i)))}' for i, (image, _, _) in enumerate(rows)
  ]
  fx.write_lines(tmp_path / 'boxes.csv', lines)
  params = dict(box_source='csv', supervision='mask')
  _no_df_masks(tmp_path, rows)
  with pytest.raises(ValueError, match=r'line \d+: mask .* does not exist \(mask of a rare class'):
    _builder(tmp_path, tmp_path / 'cache', **params).download_and_prepare()
  builder = _builder(tmp_path, tmp_path / 'cache', skip_bad_rows=True, **params)
  splits = fx.load_splits(builder)
  assert sum(len(e) for e in splits.values()) == 40  # The images stay, without masks.
  assert all(ex['mask'] == b'' for ex in splits['train'])
  assert sum(len(ex['boxes']) > 0 for ex in splits['train']) == 3  # Their csv boxes stay.
  with pytest.raises(ValueError, match=r"data.isic2018.supervision = 'masks': must be one of"):
    _builder(tmp_path, tmp_path / 'c', supervision='masks')
