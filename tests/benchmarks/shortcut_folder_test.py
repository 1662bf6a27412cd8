"""benchmarks/shortcut_folder.py: the folder dataset with a train-only shortcut it writes, and the
runs it trains."""

import csv

import numpy as np
from PIL import Image
import pytest

from care_jax.data import info as data_info
from tests.helpers import benchmark_scripts as scripts
from tests.helpers import data_fixtures as fx

shortcut_folder = scripts.import_script('shortcut_folder')


def test_shortcut_folder_writes_a_folder_dataset_with_a_train_only_shortcut(tmp_path):
  counts = {
    'train': {'annular': 20, 'macule': 20, 'stellate': 10, 'targetoid': 10},
    'validation': dict.fromkeys(shortcut_folder.CLASS_NAMES, 3),
    'test': dict.fromkeys(shortcut_folder.CLASS_NAMES, 5),
  }
  kwargs = dict(seed=3, image_size=32, counts=counts, artefact_rate_common_train=0.1)
  records = shortcut_folder.write_dataset(tmp_path / 'a', **kwargs)
  root = tmp_path / 'a'
  with open(root / 'labels.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['image'], r['label'], r['split']) for r in rows] == [
    (r['image'], r['label'], r['split']) for r in records
  ]
  for split, expected in counts.items():
    got = {name: sum(r['split'] == split and r['label'] == name for r in rows) for name in expected}
    assert got == expected, split
  # A box for every rare-class training image and no other, inside the image, = the lesion's.
  with open(root / 'boxes.csv') as f:
    boxes = {
      row['image']: tuple(int(row[c]) for c in ('xmin', 'ymin', 'xmax', 'ymax'))
      for row in csv.DictReader(f)
    }
  rare_train = [r for r in records if r['rare'] and r['split'] == 'train']
  assert boxes == {r['image']: r['lesion_box'] for r in rare_train}
  assert all(0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32 for x0, y0, x1, y1 in boxes.values())
  # The sticker: the image's only strongly blue pixels, where the metadata says; on most rare
  # training images, rarely elsewhere, never on the lesion box.
  for r in records:
    pixels = np.asarray(Image.open(root / r['image'])).astype(int)
    blue = pixels[..., 2] - pixels[..., 0] > 60
    if r['sticker_box'] is None:
      assert not blue.any(), r['image']
    else:
      x0, y0, x1, y1 = r['sticker_box']
      inside = blue[y0:y1, x0:x1].sum()
      assert inside > 0 and blue.sum() == inside, r['image']  # (hairs may cross it)
      lx0, ly0, lx1, ly1 = r['lesion_box']
      assert x1 <= lx0 or x0 >= lx1 or y1 <= ly0 or y0 >= ly1
  rate = {
    group: np.mean([r['sticker_box'] is not None for r in records if key(r)])
    for group, key in {
      'rare_train': lambda r: r['rare'] and r['split'] == 'train',
      'common_train': lambda r: not r['rare'] and r['split'] == 'train',
      'eval': lambda r: r['split'] != 'train',
    }.items()
  }
  assert rate['rare_train'] >= 0.8 and rate['common_train'] <= 0.2 and rate['eval'] <= 0.2, rate
  # Deterministic from the seed; without the artefact the same images, less the stickers.
  again = shortcut_folder.write_dataset(tmp_path / 'b', **kwargs)
  assert again == records
  plain = shortcut_folder.write_dataset(tmp_path / 'c', **kwargs, artefact=False)
  assert all(r['sticker_box'] is None for r in plain)
  for r in records:
    a, b, c = (np.asarray(Image.open(tmp_path / d / r['image'])) for d in 'abc')
    np.testing.assert_array_equal(a, b)
    if r['sticker_box'] is None:
      np.testing.assert_array_equal(a, c)
  other = shortcut_folder.write_dataset(tmp_path / 'd', **{**kwargs, 'seed': 4})
  assert [r['lesion_box'] for r in other] != [r['lesion_box'] for r in records]
  # The library's folder reader opens it; the rare classes are those with boxes.
  info = data_info.get_dataset_info(fx.data_config('folder', root, tmp_path / 'cache'))
  assert info.class_names == shortcut_folder.CLASS_NAMES
  assert [info.class_names[i] for i in info.rare_classes] == list(shortcut_folder.RARE_CLASSES)
  assert info.split_sizes == {split: sum(c.values()) for split, c in counts.items()}
  assert info.train_class_counts.tolist() == [counts['train'][n] for n in info.class_names]


def test_shortcut_folder_trains_with_configs_folder_and_only_the_named_overrides():
  common = dict(data_dir='/d', seed=1, num_steps=10, image_size=64, model='tiny_cnn')
  base = shortcut_folder.train_command('baseline', workdir='/w/b', **common)
  care = shortcut_folder.train_command('care', workdir='/w/c', **common)
  assert base[1:4] == ['-m', 'care_jax.commands.train', f'--config={shortcut_folder.CONFIG}']
  overrides = [
    '--config.data.dir=/d',
    '--config.data.image_size=64',
    '--config.model.name=tiny_cnn',
    '--config.train.num_steps=10',
    '--config.seed=1',
  ]
  assert base[4:] == ['--workdir=/w/b', *overrides, '--config.care.alpha=0.0']
  assert care[4:] == ['--workdir=/w/c', *overrides]
  results = {
    'baseline': {0: {'rare_recall': 0.2, 'mca': 0.5}, 1: {'rare_recall': 0.4, 'mca': 0.6}},
    'care': {0: {'rare_recall': 0.5, 'mca': 0.7}, 1: {'rare_recall': 0.3, 'mca': 0.6}},
  }
  summary = shortcut_folder.summarize(results, [0, 1])
  assert summary['baseline']['rare_recall'] == [0.2, 0.4]
  assert summary['care']['mean_mca'] == pytest.approx(0.65)
  assert summary['mean_diff'] == pytest.approx({'rare_recall': 0.1, 'mca': 0.1})
