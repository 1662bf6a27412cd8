"""Tests of the `chexpert` builder: CheXpert v1.0's CSV files, uncertainty policies, splits."""

import csv
import json
import logging
import os

import numpy as np
import pytest

from care_jax import config as config_lib
from care_jax import training
from care_jax.boxes import dataset as box_dataset
from care_jax.config import schema
from care_jax.configs import chexpert_care
from care_jax.data import chexpert
from care_jax.data import pipeline
from care_jax.data import registry
from care_jax.training import device_augment
from tests.helpers import command_line
from tests.helpers import data_fixtures as fx
from tests.helpers import downloaded_layouts as dl

CLASSES = chexpert.COMPETITION  # The default classes, sorted already.


def _builder(data_dir, cache, **params):
  return chexpert.from_data_config(fx.data_config('chexpert', data_dir, cache, **params))


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  return dl.write_chexpert(tmp_path_factory.mktemp('chexpert'))


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='module')
def prepared(release, cache):
  """policy -> the prepared splits of the fixture under it."""
  return {
    policy: fx.load_splits(_builder(release, cache, uncertainty=policy))
    for policy in chexpert.POLICIES
  }


def _direct(release, file, policy):
  """A direct reading of a CSV file: image key -> (positive, ignored) class sets, frontal rows."""
  read = {}
  for row in dl.read_chexpert_csv(release / file):
    if row['Frontal/Lateral'] != 'Frontal':
      continue
    positive = {k for k, name in enumerate(CLASSES) if row[name] == '1.0'}
    uncertain = {k for k, name in enumerate(CLASSES) if row[name] == '-1.0'}
    if policy == 'U-Ones':
      positive |= uncertain
    read[row['Path'].split('/', 1)[1]] = (positive, uncertain if policy == 'U-Ignore' else set())
  return read


def _examples(splits):
  return {
    ex['image_id'].decode(): (split, set(ex['labels'].tolist()), set(ex['ignored_labels'].tolist()))
    for split, examples in splits.items()
    for ex in examples
  }


@pytest.mark.parametrize('policy', chexpert.POLICIES)
def test_uncertain_labels_follow_the_policy_exactly(release, prepared, policy):
  read = _examples(prepared[policy])
  expected = {**_direct(release, 'train.csv', policy), **_direct(release, 'valid.csv', policy)}
  assert set(read) == set(expected)
  for key, (positive, ignored) in expected.items():
    assert read[key][1:] == (positive, ignored), key
  # The fixture has uncertain cells, so the policies differ.
  uncertain = sum(len(ignored) for _, _, ignored in _examples(prepared['U-Ignore']).values())
  assert uncertain > 0


def test_valid_csv_is_test_and_train_csv_splits_by_patient(release, prepared):
  splits = prepared['U-Zeros']
  valid = _direct(release, 'valid.csv', 'U-Zeros')
  train = _direct(release, 'train.csv', 'U-Zeros')
  assert {ex['image_id'].decode() for ex in splits['test']} == set(valid)
  held = splits['train'] + splits['validation']
  assert sorted(ex['image_id'].decode() for ex in held) == sorted(train)
  patients = {
    split: {ex['patient_id'].decode() for ex in splits[split]} for split in ('train', 'validation')
  }
  assert patients['train'] and patients['validation']
  assert not patients['train'] & patients['validation']
  for split, examples in splits.items():
    direct = np.zeros(len(CLASSES), np.int64)
    for ex in examples:
      direct[sorted(valid.get(ex['image_id'].decode(), train.get(ex['image_id'].decode()))[0])] += 1
    assert fx.label_counts(examples, len(CLASSES)) == direct.tolist()
    assert all(fx.label_counts(examples, len(CLASSES))), split


def test_classes_views_and_the_release_folder(release, tmp_path):
  builder = _builder(release.parent, tmp_path / 'c', frontal_only=False, validation_fraction=0.0)
  assert builder.info.features['labels'].feature.names == list(CLASSES)
  splits = fx.load_splits(builder)
  rows = dl.read_chexpert_csv(release / 'train.csv') + dl.read_chexpert_csv(release / 'valid.csv')
  assert sum(len(s) for s in splits.values()) == len(rows)  # Lateral views too.
  assert any(r['Frontal/Lateral'] == 'Lateral' for r in rows)
  assert splits['train'][0]['image'].shape == (40, 32, 3)
  edema = _builder(release, tmp_path / 'c', observations=('Edema', 'Cardiomegaly'))
  assert edema.info.features['labels'].feature.names == ['Cardiomegaly', 'Edema']


def test_boxes_csv_gives_training_images_boxes_of_their_findings(release, tmp_path):
  image = 'CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg'  # Cardiomegaly
  (release / 'boxes.csv').write_text(
    f'image,label,xmin,ymin,xmax,ymax\n{image},Cardiomegaly,8,10,20,24\n'
  )
  try:
    splits = fx.load_splits(_builder(release, tmp_path / 'c', validation_fraction=0.0))
  finally:
    (release / 'boxes.csv').unlink()
  (ex,) = [ex for ex in splits['train'] if len(ex['boxes'])]
  assert ex['image_id'].decode() == image.split('/', 1)[1]
  np.testing.assert_allclose(ex['boxes'], [[10 / 40, 8 / 32, 24 / 40, 20 / 32]])
  assert ex['box_labels'].tolist() == [CLASSES.index('Cardiomegaly')]


def _set_cell(column, value, line=3):
  def edit(root):
    rows = dl.read_chexpert_csv(root / 'train.csv')
    rows[line - 2][column] = value
    with open(root / 'train.csv', 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=list(chexpert.COLUMNS))
      writer.writeheader()
      writer.writerows(rows)

  return edit


def _copy(release, root):
  """The release's CSV files copied to ``root``, its images linked."""
  root.mkdir()
  for name in ('train', 'valid'):
    (root / name).symlink_to(release / name, target_is_directory=True)
  for name in ('train.csv', 'valid.csv'):
    (root / name).write_text((release / name).read_text())
  return root


def _boxes(line):
  return lambda root: (root / 'boxes.csv').write_text(f'image,label,xmin,ymin,xmax,ymax\n{line}\n')


FIRST = 'CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg'  # Atelectasis
BAD_ROWS = {
  'bad value': (
    _set_cell('Edema', '2.0'),
    r"train.csv, line 3: Edema = '2.0': expected 1.0 \(positive\), 0.0",
  ),
  'bad view': (_set_cell('Frontal/Lateral', 'Side'), r"line 3: Frontal/Lateral = 'Side'"),
  'no patient folder': (_set_cell('Path', 'CheXpert-v1.0-small/train/x.jpg'), r'line 3: Path .*'),
  'missing image': (
    lambda root: os.remove(root / 'train/patient00003/study1/view1_frontal.jpg'),
    r'train.csv, line 5: image file .*patient00003.* does not exist',
  ),
  'box of a finding the image lacks': (
    _boxes(f'{FIRST},Edema,1,1,5,5'),
    r'boxes.csv, line 2: a box of Edema, but .*train.csv, line 2 gives image',
  ),
  'box of an unknown image': (
    _boxes('CheXpert-v1.0-small/train/patient09999/study1/view1_frontal.jpg,Edema,1,1,5,5'),
    r"boxes.csv, line 2: image 'train/patient09999.*' is not in train.csv or valid.csv",
  ),
}


@pytest.mark.parametrize('case', sorted(BAD_ROWS))
def test_bad_rows_raise_naming_file_and_line_or_are_skipped(tmp_path, case, caplog):
  edit, message = BAD_ROWS[case]
  root = dl.write_chexpert(tmp_path, train_patients=15)
  edit(root)
  # U-Zeros: each image's one positive finding is the fixture's 1.0 cell.
  with pytest.raises(ValueError, match=message):
    _builder(root, tmp_path / 'c', uncertainty='U-Zeros').download_and_prepare()
  with caplog.at_level(logging.WARNING):
    builder = _builder(root, tmp_path / 'c', uncertainty='U-Zeros', skip_bad_rows=True)
    builder.download_and_prepare()
  assert any('skipped 1 bad row(s)' in r.getMessage() for r in caplog.records)


def test_files_and_parameters_errors_name_the_fix(tmp_path, release):
  with pytest.raises(ValueError, match=r'(?s)train.csv does not exist.*CheXpert-v1.0-small.zip'):
    _builder(tmp_path, tmp_path / 'c')
  with pytest.raises(ValueError, match=r"data.chexpert.uncertainty = 'U-Maybe': must be one"):
    _builder(release, tmp_path / 'c', uncertainty='U-Maybe')
  with pytest.raises(ValueError, match=r"data.chexpert.observations = .*unknown: \['Edemas'\]"):
    _builder(release, tmp_path / 'c', observations=('Edemas',))
  lines = (release / 'train.csv').read_text().splitlines()
  twice = _copy(release, tmp_path / 'twice')
  (twice / 'train.csv').write_text('\n'.join(lines + [lines[1]]) + '\n')
  with pytest.raises(ValueError, match=rf'train.csv, line {len(lines) + 1}: image .* listed again'):
    _builder(twice, tmp_path / 'c').download_and_prepare()


def test_u_ignore_training_batches_carry_the_label_mask_of_the_csv(release, prepared, cache):
  # Rows are shuffled and the fixture's images alike: compare (labels, mask) rows as multisets.
  train = {k for k, (split, *_) in _examples(prepared['U-Ignore']).items() if split == 'train'}
  direct = _direct(release, 'train.csv', 'U-Ignore')
  hot = lambda classes: tuple(float(k in classes) for k in range(len(CLASSES)))
  expected = sorted((hot(direct[k][0]), tuple(1.0 - m for m in hot(direct[k][1]))) for k in train)
  assert any(0.0 in mask for _, mask in expected)  # The fixture has uncertain training labels.
  config = fx.data_config('chexpert', release, cache, uncertainty='U-Ignore')
  batch = next(pipeline.train_batches(config, batch_size=len(train), seed=0))
  assert batch['label_mask'].dtype == np.float32
  rows = sorted(zip(map(tuple, batch['label'].tolist()), map(tuple, batch['label_mask'].tolist())))
  assert rows == expected
  # The rows of the on-device augmentation get it alike, and it passes through to the step.
  assert 'label_mask' not in device_augment.AUGMENT_KEYS
  # Without ignored labels (U-Zeros) the batches are as every other dataset's: no mask.
  config.chexpert.uncertainty = 'U-Zeros'
  assert 'label_mask' not in next(pipeline.train_batches(config, batch_size=2, seed=0))


def test_config_schema_checks_and_registry_agree_with_the_module():
  assert schema.CHEXPERT_COMPETITION == chexpert.COMPETITION
  assert schema.CHEXPERT_POLICIES == chexpert.POLICIES
  assert set(config_lib.default_config().data.chexpert) == set(chexpert.PARAMETERS)
  assert 'chexpert' in registry.names()
  config = chexpert_care.get_config()
  config_lib.validate(config)
  config.data.chexpert.uncertainty = 'U-Ignore'  # Trains: the loss reads the label mask.
  config_lib.validate(config)
  config.data.chexpert.uncertainty = 'U-Ones'
  config.data.box_source = 'grad_cam'
  with pytest.raises(ValueError, match=r"config.data.box_source = 'grad_cam': must be one of"):
    config_lib.validate(config)


@pytest.mark.slow
def test_chexpert_care_trains_from_the_command_line(release, tmp_path):
  image = 'CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg'
  # The release with a boxes.csv, so that CARE has a box to push the map into.
  boxes = _copy(release, tmp_path / 'data')
  (boxes / 'boxes.csv').write_text(
    f'image,label,xmin,ymin,xmax,ymax\n{image},Cardiomegaly,8,10,20,24\n'
  )
  workdir = tmp_path / 'w'
  proc = command_line.care_jax(
    'train',
    '--config=chexpert_care',
    f'--config.data.dir={boxes}',
    f'--workdir={workdir}',
    f'--config.data.cache_dir={tmp_path / "cache"}',
    '--config.model.name=tiny_cnn',
    '--config.data.image_size=16',
    '--config.train.num_epochs=0',
    '--config.train.num_steps=2',
    '--config.train.batch_size=8',
    '--config.train.eval_batch_size=8',
    '--config.care.protocol=from_step',
    '--config.train.progress=False',
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((workdir / 'metrics.json').read_text())
  assert metrics['step'] == 2 and np.isfinite(metrics['test']['mean_auroc'])


@pytest.mark.slow
def test_chexpert_care_trains_under_u_ignore_with_the_masked_loss(
  release, prepared, cache, tmp_path
):
  # In process on the prepared data (the command line is the test above): the label mask flows
  # from the batches into the loss, whose every term stays finite.
  config = config_lib.apply_overrides(
    chexpert_care.get_config(),
    [
      f'data.dir={release}',
      f'data.cache_dir={cache}',
      'data.chexpert.uncertainty=U-Ignore',
      'model.name=tiny_cnn',
      'data.image_size=16',
      'train.num_epochs=0',
      'train.num_steps=2',
      'train.batch_size=8',
      'train.eval_batch_size=8',
      'care.protocol=from_step',
      'train.progress=False',
    ],
  )
  metrics = training.train_and_evaluate(
    config, str(tmp_path / 'w'), boxes_fn=box_dataset.replace_boxes
  )
  assert metrics['step'] == 2 and np.isfinite(metrics['test']['mean_auroc'])
