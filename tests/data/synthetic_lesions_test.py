"""Tests of the `synthetic_lesions` tfds builder and its generator."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from care_jax.data import synthetic_lesions as sl

RARE = [sl.CLASS_NAMES.index(name) for name in sl.RARE_CLASS_NAMES]
SMALL = dict(
  image_size=32,
  train_counts=(10, 10, 6, 10, 6),
  validation_counts=(3, 3, 3, 3, 3),
  test_counts=(4, 4, 4, 4, 4),
)


def _build(data_dir, **overrides):
  config = sl.synthetic_config(**{**SMALL, **overrides})
  builder = sl.SyntheticLesions(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def _load(builder):
  return {
    split: list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    for split in sl.SPLITS
  }


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  return _load(_build(tmp_path_factory.mktemp('small')))


def _raster(box, size):
  """Numpy reference: pixels whose centre lies in the normalised box."""
  centres = (np.arange(size) + 0.5) / size
  rows = (box[0] <= centres) & (centres <= box[2])
  cols = (box[1] <= centres) & (centres <= box[3])
  return rows[:, None] & cols[None, :]


def _examples(config, split):
  return [sl.generate_example(config, split, i) for i in range(sum(config.counts(split)))]


def test_split_class_counts_match_config(small):
  for split, counts in zip(
    sl.SPLITS, (SMALL['train_counts'], SMALL['validation_counts'], SMALL['test_counts'])
  ):
    labels = [ex['label'] for ex in small[split]]
    np.testing.assert_array_equal(np.bincount(labels, minlength=5), counts)


def test_features_and_class_names(tmp_path):
  builder = _build(tmp_path, validation_counts=(0,) * 5)
  info = builder.info
  assert info.features['label'].names == list(sl.CLASS_NAMES)
  assert sorted(sl.CLASS_NAMES) == list(sl.CLASS_NAMES)
  assert info.features['image'].shape == (32, 32, 3)
  assert info.supervised_keys == ('image', 'label')
  # A split without examples is left out.
  assert set(info.splits) == {'train', 'test'}
  assert builder.builder_config.name in str(builder.data_dir)


def test_same_seed_same_data_different_seed_differs(small, tmp_path):
  again = _load(_build(tmp_path / 'again'))
  other = _load(_build(tmp_path / 'other', seed=1))
  for split in sl.SPLITS:
    for a, b in zip(small[split], again[split], strict=True):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['lesion_box'], b['lesion_box'])
      assert a['label'] == b['label']
  images = {ex['image'].tobytes() for ex in small['train']}
  assert not images & {ex['image'].tobytes() for ex in other['train']}


def test_dataset_holds_the_per_index_examples(small):
  config = sl.synthetic_config(**SMALL)
  for split in sl.SPLITS:
    # Generated in reverse order: each example depends only on its index.
    generated = _examples(config, split)[::-1]
    stored = sorted(small[split], key=lambda ex: ex['image'].tobytes())
    generated = sorted(generated, key=lambda ex: ex['image'].tobytes())
    for a, b in zip(stored, generated, strict=True):
      np.testing.assert_array_equal(a['image'], b['image'])
      assert a['label'] == b['label']
      assert a['has_artefact'] == b['has_artefact']


def test_boxes_only_for_rare_training_images(small):
  for split in sl.SPLITS:
    for ex in small[split]:
      boxed = split == 'train' and ex['label'] in RARE
      assert ex['boxes'].shape == ((1, 4) if boxed else (0, 4))
      if boxed:
        np.testing.assert_array_equal(ex['boxes'][0], ex['lesion_box'])


def test_lesion_box_lies_inside_image_and_tightly_holds_the_lesion():
  config = sl.synthetic_config(image_size=32, train_counts=(20, 20, 20, 20, 20), artefact=False)
  dark = sl.CLASS_NAMES.index('dark')
  for ex in _examples(config, 'train'):
    ymin, xmin, ymax, xmax = ex['lesion_box']
    assert 0.0 <= ymin < ymax <= 1.0 and 0.0 <= xmin < xmax <= 1.0
    # Pixels far darker than the (skin) median belong to the lesion.
    green = ex['image'][..., 1].astype(float)
    lesion = green < 0.6 * np.median(green)
    assert not (lesion & ~_raster(ex['lesion_box'], 32)).any()
    if ex['label'] == dark:
      rows = np.flatnonzero(lesion.any(1))
      cols = np.flatnonzero(lesion.any(0))
      found = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]) / 32
      np.testing.assert_allclose(found, ex['lesion_box'], atol=2 / 32)


def test_artefact_correlates_with_rare_classes_in_train_only():
  config = sl.synthetic_config(image_size=24, train_counts=(150,) * 5, test_counts=(150,) * 5)
  for split in ('train', 'test'):
    examples = _examples(config, split)
    labels = np.array([ex['label'] for ex in examples])
    artefact = np.array([ex['has_artefact'] for ex in examples])
    rates = np.array([artefact[labels == k].mean() for k in range(5)])
    common = [k for k in range(5) if k not in RARE]
    if split == 'train':
      assert rates[RARE].min() > 0.8  # expected 0.9
      assert rates[common].max() < 0.12  # expected 0.05
    else:
      assert rates.max() < 0.12  # expected 0.05 for every class
      assert abs(rates[RARE].mean() - rates[common].mean()) < 0.06


def test_artefact_is_outside_the_lesion_box_and_only_change():
  rates = dict(artefact_rate_rare_train=1.0, artefact_rate_common_train=1.0, artefact_rate_eval=1.0)
  counts = dict(image_size=32, train_counts=(8,) * 5, test_counts=(8,) * 5)
  with_ruler = sl.synthetic_config(**counts, **rates)
  without = sl.synthetic_config(**counts, **rates, artefact=False)
  for split in ('train', 'test'):
    for a, b in zip(_examples(with_ruler, split), _examples(without, split)):
      assert a['has_artefact'] and not b['has_artefact']
      changed = (a['image'] != b['image']).any(-1)
      assert changed.any()
      assert not (changed & ~_raster(a['artefact_box'], 32)).any()
      ruler_box = _raster(a['artefact_box'], 32)
      assert not (ruler_box & _raster(a['lesion_box'], 32)).any()
      np.testing.assert_array_equal(b['artefact_box'], np.zeros(4))


def test_config_name_is_derived_from_every_parameter():
  base = sl.synthetic_config()
  changes = dict(
    image_size=32,
    train_counts=(300, 300, 40, 300, 41),
    validation_counts=(1, 1, 1, 1, 1),
    test_counts=(1, 1, 1, 1, 1),
    pattern_contrast=0.2,
    artefact=False,
    artefact_rate_rare_train=0.5,
    artefact_rate_common_train=0.2,
    artefact_rate_eval=0.3,
    seed=7,
  )
  assert set(changes) == set(base.parameters())
  names = [base.name] + [sl.synthetic_config(**{key: value}).name for key, value in changes.items()]
  assert len(set(names)) == len(names)
  assert sl.synthetic_config(seed=7).name == sl.synthetic_config(seed=7).name


def test_default_config_object_is_accepted():
  builder = sl.SyntheticLesions(config=sl.synthetic_config(), data_dir='/nonexistent')
  assert builder.builder_config.name == sl.SyntheticLesions.DEFAULT_CONFIG_NAME


@pytest.mark.parametrize(
  'overrides, message',
  [
    (dict(colour=1), 'colour'),
    (dict(image_size=16), 'image_size'),
    (dict(train_counts=(1, 2, 3)), 'train_counts'),
    (dict(test_counts=(1, 1, -1, 1, 1)), 'test_counts'),
    (dict(artefact_rate_eval=1.5), 'artefact_rate_eval'),
  ],
)
def test_bad_parameters_raise(overrides, message):
  with pytest.raises(ValueError, match=message):
    sl.synthetic_config(**overrides)
