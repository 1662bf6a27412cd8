"""Tests of the `folder` builder on class-folder trees: DATA_DIR/[<split>/]<class>/<image>."""

import logging
import os

import numpy as np
from PIL import Image
import pytest

from care_jax.boxes import dataset as box_dataset
from care_jax.data import folder
from care_jax.data import pipeline
from care_jax.data._files import class_folders
from tests.helpers import data_fixtures as fx
from tests.helpers import downloaded_layouts as dl

# Kaggle's chest_xray layout, tiny: train/val/test split folders with two class folders.
KAGGLE = {
  'train': {'NORMAL': 6, 'PNEUMONIA': 9},
  'val': {'NORMAL': 2, 'PNEUMONIA': 2},
  'test': {'NORMAL': 3, 'PNEUMONIA': 4},
}
SPLIT_OF_FOLDER = {'train': 'train', 'val': 'validation', 'test': 'test'}


def _builder(root, cache, **params):
  return folder.from_data_config(fx.data_config('folder', root, cache, **params))


def _walked_images(root):
  """Every image file under root as os.walk finds it: relative POSIX path -> its class folder."""
  found = {}
  for directory, _, files in os.walk(root):
    for name in files:
      if name.lower().endswith(('.png', '.jpg', '.jpeg')):
        relative = os.path.relpath(os.path.join(directory, name), root).replace(os.sep, '/')
        parts = relative.split('/')
        found[relative] = parts[1] if parts[0] in SPLIT_OF_FOLDER else parts[0]
  return found


@pytest.fixture(scope='module')
def kaggle(tmp_path_factory):
  root = tmp_path_factory.mktemp('chest_xray')
  dl.write_class_tree(root, KAGGLE)
  cache = tmp_path_factory.mktemp('cache')
  builder = _builder(root, cache)
  return root, builder, fx.load_splits(builder), cache


def test_split_folders_give_the_counts_of_a_direct_reading(kaggle):
  root, builder, splits, _ = kaggle
  names = builder.info.features['label'].names
  assert names == ['NORMAL', 'PNEUMONIA']  # Sorted folder names, as ImageFolder orders them.
  walked = dl.tree_counts(root)
  for split_folder, split in SPLIT_OF_FOLDER.items():
    expected = [walked[split_folder][name] for name in names]
    assert fx.class_counts(splits[split], 2) == expected == [KAGGLE[split_folder][n] for n in names]


def test_every_image_of_the_tree_is_read_with_its_folder_label_and_split(kaggle):
  root, builder, splits, _ = kaggle
  names = builder.info.features['label'].names
  read = {
    ex['image_id'].decode(): (names[ex['label']], split)
    for split, examples in splits.items()
    for ex in examples
  }
  walked = _walked_images(root)
  assert set(read) == set(walked)  # The nested more/ images too; .DS_Store and README are not.
  for key, label in walked.items():
    assert read[key] == (label, SPLIT_OF_FOLDER[key.split('/')[0]])
  assert any('/more/' in key for key in read) and any(key.endswith('.JPEG') for key in read)


def test_greyscale_and_colour_files_become_rgb_of_their_size(kaggle):
  root, _, splits, _ = kaggle
  for ex in splits['train'] + splits['test']:
    with Image.open(root / ex['image_id'].decode()) as image:
      width, height = image.size
      grey = image.mode == 'L'
    assert ex['image'].shape == (height, width, 3)
    if grey:
      assert (ex['image'] == ex['image'][..., :1]).all()


def test_class_folders_alone_split_as_the_same_labels_csv_would(tmp_path):
  root = tmp_path / 'data'
  dl.write_class_tree(root, {None: {'cat': 10, 'ant': 5, 'bee': 10}})
  tree = fx.load_splits(_builder(root, tmp_path / 'c1'))
  walked = _walked_images(root)
  fx.write_lines(root / 'labels.csv', ['image,label'] + [f'{k},{v}' for k, v in walked.items()])
  listed = fx.load_splits(_builder(root, tmp_path / 'c2'))

  def assignment(built):
    return {ex['image_id'].decode(): (s, ex['label']) for s, exs in built.items() for ex in exs}

  assert assignment(tree) == assignment(listed)
  assert {k for k in assignment(tree)} == set(walked)
  assert set(tree) == {'train', 'validation', 'test'}


def test_without_a_val_folder_validation_is_held_out_of_train(tmp_path):
  dl.write_class_tree(tmp_path / 'data', {'train': {'a': 10, 'b': 10}, 'test': {'a': 2, 'b': 2}})
  splits = fx.load_splits(_builder(tmp_path / 'data', tmp_path / 'cache'))
  assert fx.class_counts(splits['validation'], 2) == [1, 1]  # round(0.1 * 10) per class
  assert fx.class_counts(splits['train'], 2) == [9, 9]
  assert all(ex['image_id'].decode().startswith('train/') for ex in splits['validation'])


def test_a_cache_inside_the_data_dir_is_no_class_and_new_images_prepare_anew(tmp_path):
  dl.write_class_tree(tmp_path, {None: {'a': 6, 'b': 6}})
  builder = _builder(tmp_path, tmp_path / 'cache')
  builder.download_and_prepare()
  assert _builder(tmp_path, tmp_path / 'cache').info.features['label'].names == ['a', 'b']
  fx.save_image(tmp_path / 'a' / 'new.png', np.zeros((8, 8), np.uint8))
  assert _builder(tmp_path, tmp_path / 'cache').builder_config.name != builder.builder_config.name


def test_boxes_csv_names_tree_images_by_their_path(tmp_path):
  dl.write_class_tree(tmp_path / 'd', {'train': {'a': 3, 'b': 3}, 'test': {'a': 1, 'b': 1}})
  fx.write_lines(
    tmp_path / 'd' / 'boxes.csv', ['image,xmin,ymin,xmax,ymax', 'train/b/b_000.png,2,4,12,14']
  )
  splits = fx.load_splits(_builder(tmp_path / 'd', tmp_path / 'cache', validation_fraction=0.0))
  boxed = {ex['image_id'].decode(): ex['boxes'] for ex in splits['train'] if len(ex['boxes'])}
  np.testing.assert_allclose(boxed['train/b/b_000.png'], [[4 / 20, 2 / 24, 14 / 20, 12 / 24]])
  assert len(boxed) == 1


def _two_classes(root):
  dl.write_class_tree(root, {None: {'a': 6, 'b': 6}})


def _corrupt(root):
  _two_classes(root)
  path = root / 'b' / 'b_003.png'
  fx.save_image(path, np.random.default_rng(0).integers(0, 255, (20, 24), np.uint8))
  path.write_bytes(path.read_bytes()[:60])


BAD_TREES = {
  'split and class folders': (
    lambda root: dl.write_class_tree(root, {'train': {'a': 2}, None: {'b': 2}}),
    r"split folders \['train'\] and other folders \['b'\] side by side",
  ),
  'val and validation': (
    lambda root: dl.write_class_tree(root, {'val': {'a': 2}, 'validation': {'a': 2}}),
    r'both "val" and "validation" split folders',
  ),
  'image outside a class folder': (
    lambda root: (_two_classes(root), fx.save_image(root / 'x.png', np.zeros((4, 4), np.uint8))),
    r'x.png: an image outside any class folder',
  ),
  'class folder without images': (
    lambda root: (_two_classes(root), (root / 'c').mkdir(), (root / 'c' / 'notes.txt').touch()),
    r'/c: a class folder without any image',
  ),
  'no labels.csv and no folders': (
    lambda root: (root / 'notes.txt').touch(),
    r'(?s)labels.csv does not exist and .* has no class folders.*<class>/<image>',
  ),
  'class missing from test': (
    lambda root: dl.write_class_tree(root, {'train': {'a': 3, 'b': 3}, 'test': {'a': 2}}),
    r"\(class folders\): every class needs examples in every split, but 'test' has no 'b'",
  ),
  'corrupt image': (_corrupt, r'b/b_003.png: cannot decode image .*b_003.png'),
  'box of an image not in the tree': (
    lambda root: (
      _two_classes(root),
      fx.write_lines(root / 'boxes.csv', ['image,xmin,ymin,xmax,ymax', 'a/zz.png,1,1,2,2']),
    ),
    r"boxes.csv, line 2: image 'a/zz.png' is not in a class folder",
  ),
}


@pytest.mark.parametrize('case', sorted(BAD_TREES))
def test_bad_trees_raise_naming_the_folder_or_file(tmp_path, case):
  make, message = BAD_TREES[case]
  (tmp_path / 'data').mkdir()
  make(tmp_path / 'data')
  with pytest.raises(ValueError, match=message):
    _builder(tmp_path / 'data', tmp_path / 'cache').download_and_prepare()


def test_a_corrupt_image_is_skipped_and_counted_when_asked(tmp_path, caplog):
  _corrupt(tmp_path)
  with caplog.at_level(logging.WARNING):
    builder = _builder(tmp_path, tmp_path / 'cache', skip_bad_rows=True)
    builder.download_and_prepare()
  assert sum(s.num_examples for s in builder.info.splits.values()) == 11
  assert any('skipped 1 bad row(s)' in r.getMessage() for r in caplog.records)


def test_split_folder_names_are_the_documented_ones():
  assert class_folders.SPLIT_FOLDERS == {
    'train': 'train',
    'val': 'validation',
    'validation': 'validation',
    'test': 'test',
  }


def test_a_tree_feeds_the_pipeline_with_automatic_boxes_of_the_rare_class(kaggle, tmp_path):
  root, _, _, cache = kaggle
  config = fx.data_config('folder', root, cache)
  config.box_source = 'otsu'
  config.rare_classes = ('PNEUMONIA',)
  config.boxes.cache_dir = str(tmp_path / 'boxes')
  size = KAGGLE['train']['NORMAL'] + KAGGLE['train']['PNEUMONIA']
  batch = next(
    pipeline.train_batches(config, batch_size=size, seed=0, boxes_fn=box_dataset.replace_boxes)
  )
  assert sorted(batch['label'].tolist()) == [0] * 6 + [1] * 9
  # Otsu's boxes (red against green): on the 6 colour files of the 9 rare-class training
  # images (grey ones have no such contrast), none for the other class.
  assert batch['has_mask'][batch['label'] == 1].sum() >= 6
  assert not batch['has_mask'][batch['label'] == 0].any()
  for mask in batch['mask'][batch['has_mask']]:
    assert 0 < mask.sum() < mask.size / 2
