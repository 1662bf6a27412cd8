"""Tests of the `nih_chestxray14` builder (the boxed subset of ChestX-ray14)."""

import logging

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from care_jax.data import info as info_lib
from care_jax.data import nih_chestxray14 as nih
from care_jax.data import pipeline
from tests.helpers import data_fixtures as fx

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
  info = info_lib.get_dataset_info(config)
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


# The multi-label mode: Data_Entry_2017.csv, the official lists, the box list.


FINDINGS = nih.FINDINGS
DATA_ENTRY_HEADER = (
  'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,'
  'View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]'
)
# Images per finding (FINDINGS order) of the fixture, computed by hand below.
TRAIN = [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 1]  # Also validation's.
TEST = [2, 2, 1, 1, 2, 1, 1, 1, 2, 3, 3, 1, 2, 2]
BOXED = [1, 1, 0, 0, 1, 0, 0, 0, 1, 2, 2, 0, 1, 1]  # The boxed test images.


def _entry(name, facts, findings=None, patient=None):
  return (
    f'{name},{facts["findings"] if findings is None else findings},{facts["follow_up"]},'
    f'{facts["patient"] if patient is None else patient},58,M,PA,32,32,0.143,0.143'
  )


def _write_multilabel(root, trailing_comma=False):
  """ChestX-ray14 files in the real formats; returns {image: its facts}.

  Official train_val list: two patients per stratum (the image's rarest
  finding), with the same findings, so the validation hold-out (one patient
  per stratum) gives exact counts whichever patient it takes:

  - 12 findings: 2 patients of one image {finding}.
  - Cardiomegaly: 2 patients, images {Cardiomegaly} and No Finding.
  - Hernia: 2 patients of one image 'Nodule|Hernia|Mass'.
  - No Finding: 2 patients of two images.

  So train and validation each get `TRAIN`: 17 images. Official test list:
  one image {finding} per finding (14), and the boxed images: one per box
  finding (8; Effusion with two boxes, Infiltration's spelt Infiltrate), the
  Nodule patient with a second image (No Finding, no box), and an image
  'Mass|Nodule' with a box of each: 24 images, `TEST`.
  """
  images = {}
  patients = iter(range(1, 1000))

  def add(split, finding_sets, boxes=None):
    patient = next(patients)
    for follow_up, findings in enumerate(finding_sets):
      name = f'{patient:08d}_{follow_up:03d}.png'
      images[name] = dict(
        findings=findings,
        patient=str(patient),
        follow_up=follow_up,
        list=split,
        boxes=(boxes or []) if follow_up == 0 else [],
      )

  for finding in FINDINGS:
    if finding == 'Cardiomegaly':
      for _ in range(2):
        add('train_val', ['Cardiomegaly', 'No Finding'])
    elif finding == 'Hernia':
      for _ in range(2):
        add('train_val', ['Nodule|Hernia|Mass'])
    else:
      for _ in range(2):
        add('train_val', [finding])
  for _ in range(2):
    add('train_val', ['No Finding', 'No Finding'])
  for finding in FINDINGS:
    add('test', [finding])
  for k, finding in enumerate(nih.CLASS_NAMES):  # The box list's spelling.
    labels = nih.BOX_ALIASES.get(finding, finding)
    boxes = [(finding, (2 + k, 3, 10, 12))]
    if finding == 'Effusion':
      boxes.append((finding, (18, 16, 8, 14)))
    add('test', [labels] + (['No Finding'] if finding == 'Nodule' else []), boxes)
  add('test', ['Mass|Nodule'], [('Mass', (4, 4, 6, 6)), ('Nodule', (20, 20, 8, 8))])

  entries = [DATA_ENTRY_HEADER + (',' if trailing_comma else '')]
  box_rows = [HEADER]
  lists = {'train_val': [], 'test': []}
  for i, (name, facts) in enumerate(images.items()):
    pixels = fx.lesion_image(SIZE, SIZE, None)
    for _, (x, y, w, h) in facts['boxes']:
      pixels[y : y + h, x : x + w] = fx.LESION
    fx.save_image(root / f'images_00{1 + i % 2}' / 'images' / name, pixels)
    entries.append(_entry(name, facts) + (',' if trailing_comma and i % 2 else ''))
    facts['entry_line'] = len(entries)
    lists[facts['list']].append(name)
    facts['list_line'] = len(lists[facts['list']])
    facts['box_lines'] = []
    for finding, (x, y, w, h) in facts['boxes']:
      box_rows.append(f'{name},{finding},{x:.6f},{y:.6f},{w:.6f},{h:.6f}')
      facts['box_lines'].append(len(box_rows))
  fx.write_lines(root / nih.DATA_ENTRY, entries)
  fx.write_lines(root / nih.BOXES, box_rows)
  fx.write_lines(root / nih.TRAIN_VAL_LIST, lists['train_val'])
  fx.write_lines(root / nih.TEST_LIST, lists['test'])
  return images


def _multilabel_config(root, cache, **params):
  return _config(root, cache, **dict(dict(mode='multilabel'), **params))


def _load(root, cache, **params):
  builder = nih.from_data_config(_multilabel_config(root, cache, **params))
  return {
    split: {ex['image_id'].decode(): ex for ex in examples}
    for split, examples in fx.load_splits(builder).items()
  }


@pytest.fixture(scope='module')
def multilabel(tmp_path_factory):
  """boxed_images='test' (default), every box finding rare, the real header."""
  root = tmp_path_factory.mktemp('nih_multilabel')
  images = _write_multilabel(root)
  return root, images, _load(root, root / 'cache')


@pytest.fixture(scope='module')
def moved(tmp_path_factory):
  """boxed_images='train', rare finding Nodule, the header with the trailing comma."""
  root = tmp_path_factory.mktemp('nih_moved')
  images = _write_multilabel(root, trailing_comma=True)
  return root, images, _load(root, root / 'cache', boxed_images='train', rare_classes=('Nodule',))


def _boxed_patients(images):
  return {facts['patient'] for facts in images.values() if facts['boxes']}


def _names(findings):
  return sorted(set(findings.split('|')) - {'No Finding'})


def test_multilabel_features_follow_the_contract(multilabel):
  root, _, _ = multilabel
  features = nih.from_data_config(_multilabel_config(root, root / 'cache')).info.features
  assert sorted(features) == sorted(
    ['image', 'labels', 'boxes', 'box_labels', 'lesion_boxes', 'lesion_box_labels']
    + ['image_id', 'patient_id']
  )
  for key in ('labels', 'box_labels', 'lesion_box_labels'):
    assert isinstance(features[key], tfds.features.Sequence)
    assert features[key].feature.names == list(FINDINGS)
  for key in ('boxes', 'lesion_boxes'):
    assert isinstance(features[key].feature, tfds.features.BBoxFeature)
  assert features['image'].shape == (None, None, 3)
  assert FINDINGS == tuple(sorted(nih.CHEXNET_FINDINGS)) and len(FINDINGS) == 14


def test_multilabel_counts_per_split_and_finding(multilabel):
  _, _, splits = multilabel
  assert {split: len(examples) for split, examples in splits.items()} == dict(
    train=17, validation=17, test=24
  )
  counts = {split: fx.label_counts(e.values(), 14) for split, e in splits.items()}
  assert counts == dict(train=TRAIN, validation=TRAIN, test=TEST)


def test_the_trailing_comma_header_gives_the_same_dataset(multilabel, tmp_path):
  _, _, splits = multilabel
  _write_multilabel(tmp_path, trailing_comma=True)
  assert (tmp_path / nih.DATA_ENTRY).read_text().splitlines()[0].endswith('[x,y],')
  other = _load(tmp_path, tmp_path / 'cache')
  assert {s: sorted(e) for s, e in other.items()} == {s: sorted(e) for s, e in splits.items()}


@pytest.mark.parametrize('fixture', ['multilabel', 'moved'])
def test_splits_are_patient_disjoint(fixture, request):
  _, images, splits = request.getfixturevalue(fixture)
  split_of = {}
  for split, examples in splits.items():
    for name, ex in examples.items():
      assert ex['patient_id'].decode() == images[name]['patient']
      split_of.setdefault(images[name]['patient'], set()).add(split)
  assert all(len(s) == 1 for s in split_of.values())
  assert len(split_of) == len({facts['patient'] for facts in images.values()})
  # The validation hold-out takes whole patients: both images of a 2-image patient.
  validation = splits['validation']
  assert sum(images[name]['follow_up'] == 1 for name in validation) == 2


def test_the_official_test_list_is_the_test_split(multilabel):
  _, images, splits = multilabel
  test_list = {name for name, facts in images.items() if facts['list'] == 'test'}
  assert set(splits['test']) == test_list
  assert set(splits['train']) | set(splits['validation']) == set(images) - test_list


def test_boxed_images_train_moves_whole_patients_to_train(moved):
  _, images, splits = moved
  boxed = _boxed_patients(images)
  assert len(boxed) == 9
  test_list = {name for name, facts in images.items() if facts['list'] == 'test'}
  of_boxed = {name for name, facts in images.items() if facts['patient'] in boxed}
  assert len(of_boxed) == 10  # With the Nodule patient's image without a box.
  assert set(splits['test']) == test_list - of_boxed
  assert of_boxed <= set(splits['train'])
  assert {split: len(examples) for split, examples in splits.items()} == dict(
    train=27, validation=17, test=14
  )
  counts = {split: fx.label_counts(e.values(), 14) for split, e in splits.items()}
  assert counts == dict(train=np.add(TRAIN, BOXED).tolist(), validation=TRAIN, test=[1] * 14)


def test_labels_keep_every_finding_sorted(multilabel):
  _, images, splits = multilabel
  examples = {name: ex for e in splits.values() for name, ex in e.items()}
  assert set(examples) == set(images)
  for name, ex in examples.items():
    assert [FINDINGS[k] for k in ex['labels']] == _names(images[name]['findings'])
  hernia = [ex for ex in examples.values() if FINDINGS.index('Hernia') in ex['labels']]
  assert len(hernia) == 3
  assert [ex['labels'].tolist() for ex in hernia if len(ex['labels']) > 1] == [[7, 9, 10]] * 2
  empty = [ex for ex in examples.values() if len(ex['labels']) == 0]
  assert len(empty) == 2 + 4 + 1  # Cardiomegaly follow-ups, No Finding patients, Nodule's.


def _box_entries(ex, boxes_key, labels_key):
  return [(FINDINGS[k], tuple(box)) for k, box in zip(ex[labels_key], ex[boxes_key].tolist())]


def _expected_boxes(facts, keep=lambda finding: True):
  return [
    (nih.BOX_ALIASES.get(finding, finding), (y / SIZE, x / SIZE, (y + h) / SIZE, (x + w) / SIZE))
    for finding, (x, y, w, h) in facts['boxes']
    if keep(nih.BOX_ALIASES.get(finding, finding))
  ]


def _assert_boxes(actual, expected):
  assert [finding for finding, _ in actual] == [finding for finding, _ in expected]
  np.testing.assert_allclose(
    [box for _, box in actual] or np.zeros((0, 4)),
    [box for _, box in expected] or np.zeros((0, 4)),
    atol=1e-6,
  )


@pytest.mark.parametrize('fixture', ['multilabel', 'moved'])
def test_boxes_only_in_train_of_rare_findings_lesion_boxes_everywhere(fixture, request):
  _, images, splits = request.getfixturevalue(fixture)
  rare = ('Nodule',) if fixture == 'moved' else nih.BOX_FINDINGS
  annotated = []
  for split, examples in splits.items():
    for name, ex in examples.items():
      facts = images[name]
      _assert_boxes(_box_entries(ex, 'lesion_boxes', 'lesion_box_labels'), _expected_boxes(facts))
      expected = _expected_boxes(facts, lambda f: f in rare) if split == 'train' else []
      _assert_boxes(_box_entries(ex, 'boxes', 'box_labels'), expected)
      annotated += [finding for finding, _ in expected]
  lesion = [
    FINDINGS[k] for e in splits.values() for ex in e.values() for k in ex['lesion_box_labels']
  ]
  assert len(lesion) == 11  # 10 box rows of the 8 findings and Effusion's second.
  if fixture == 'moved':
    assert annotated == ['Nodule', 'Nodule']  # Nodule's image and 'Mass|Nodule'.
  else:
    assert annotated == []  # Every boxed image is in the test list.


def test_infiltrate_boxes_are_infiltration(multilabel):
  _, images, splits = multilabel
  (name,) = [n for n, f in images.items() if f['boxes'] and f['boxes'][0][0] == 'Infiltrate']
  ex = splits['test'][name]
  infiltration = FINDINGS.index('Infiltration')
  assert ex['labels'].tolist() == ex['lesion_box_labels'].tolist() == [infiltration]
  assert 'Infiltrate' not in FINDINGS and 'Infiltrate' in nih.CLASS_NAMES


def test_no_validation_split_and_the_moved_images_are_logged(tmp_path, caplog):
  _write_multilabel(tmp_path)
  with caplog.at_level(logging.INFO):
    builder = nih.from_data_config(
      _multilabel_config(tmp_path, tmp_path / 'cache', boxed_images='train', validation_fraction=0)
    )
    builder.download_and_prepare()
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == dict(train=44, test=14)
  assert any('moved 10 image(s) of 9 patient(s)' in r.getMessage() for r in caplog.records)


def _edit(path, line, text):
  """Replaces 1-based ``line`` of ``path`` (None: appends ``text``; text None: deletes)."""
  lines = path.read_text().splitlines()
  if line is None:
    lines.append(text)
  elif text is None:
    del lines[line - 1]
  else:
    lines[line - 1] = text
  fx.write_lines(path, lines)


def _boxed_image(images, finding):
  """The boxed test image of box-list finding ``finding`` and its facts."""
  return next((n, f) for n, f in images.items() if f['boxes'] and f['boxes'][0][0] == finding)


def _bad_box_finding(root, images):
  name, facts = _boxed_image(images, 'Atelectasis')
  line = facts['box_lines'][0]
  _edit(root / nih.BOXES, line, f'{name},Pneumonia,2,3,10,12')
  return (
    rf'BBox_List_2017.csv, line {line}: a box of Pneumonia, but .*Data_Entry_2017.csv,'
    rf" line {facts['entry_line']} gives image {name} the findings \['Atelectasis'\]"
  )


def _unknown_finding(root, images):
  name, facts = _boxed_image(images, 'Atelectasis')
  _edit(root / nih.DATA_ENTRY, facts['entry_line'], _entry(name, facts, 'Atelectasis|Fracture'))
  return rf"Data_Entry_2017.csv, line {facts['entry_line']}: unknown finding\(s\) \['Fracture'\]"


def _no_finding_with_a_finding(root, images):
  name, facts = _boxed_image(images, 'Atelectasis')
  _edit(root / nih.DATA_ENTRY, facts['entry_line'], _entry(name, facts, 'No Finding|Atelectasis'))
  return rf"Data_Entry_2017.csv, line {facts['entry_line']}: Finding Labels 'No Finding\|Atel"


def _empty_patient(root, images):
  name, facts = _boxed_image(images, 'Atelectasis')
  _edit(root / nih.DATA_ENTRY, facts['entry_line'], _entry(name, facts, patient=''))
  return rf'Data_Entry_2017.csv, line {facts["entry_line"]}: image {name}: empty Patient ID'


def _missing_image(root, images):
  name, facts = _boxed_image(images, 'Atelectasis')
  next(root.glob(f'images_*/images/{name}')).unlink()
  return rf'Data_Entry_2017.csv, line {facts["entry_line"]}: image {name} not found in'


def _in_no_list(root, images):
  name, facts = _boxed_image(images, 'Atelectasis')
  _edit(root / nih.TEST_LIST, facts['list_line'], None)
  return (
    rf'Data_Entry_2017.csv, line {facts["entry_line"]}: image {name} is in neither'
    r' train_val_list.txt nor test_list.txt'
  )


def _unknown_list_name(root, images):
  _edit(root / nih.TEST_LIST, None, '00099999_000.png')
  line = sum(f['list'] == 'test' for f in images.values()) + 1
  return rf'test_list.txt, line {line}: image 00099999_000.png is not in Data_Entry_2017.csv'


def _box_of_unknown_image(root, images):
  _edit(root / nih.BOXES, None, '00099999_000.png,Mass,1,1,4,4')
  line = 1 + sum(len(f['boxes']) for f in images.values()) + 1
  return rf'BBox_List_2017.csv, line {line}: image 00099999_000.png is not in Data_Entry'


def _box_outside(root, images):
  name, facts = _boxed_image(images, 'Atelectasis')
  _edit(root / nih.BOXES, facts['box_lines'][0], f'{name},Atelectasis,20,2,13,4')
  return (
    rf'BBox_List_2017.csv, line {facts["box_lines"][0]}: image {name}: box .* outside the 32x32'
  )


# case: (edit, images left out when skipping, lesion boxes left).
MULTILABEL_BAD = {
  'box finding not among the findings': (_bad_box_finding, 0, 10),
  'unknown finding': (_unknown_finding, 1, 10),
  'No Finding with a finding': (_no_finding_with_a_finding, 1, 10),
  'empty patient id': (_empty_patient, 1, 10),
  'missing image': (_missing_image, 1, 10),
  'image in no list': (_in_no_list, 1, 10),
  'list name not in Data_Entry': (_unknown_list_name, 0, 11),
  'box of an image not in Data_Entry': (_box_of_unknown_image, 0, 11),
  'box outside the image': (_box_outside, 0, 10),
}


@pytest.mark.parametrize('case', sorted(MULTILABEL_BAD))
def test_multilabel_bad_rows_name_file_and_line_or_are_skipped(tmp_path, case, caplog):
  images = _write_multilabel(tmp_path)
  edit, left_out, lesion_boxes = MULTILABEL_BAD[case]
  message = edit(tmp_path, images)
  builder = nih.from_data_config(_multilabel_config(tmp_path, tmp_path / 'cache'))
  with pytest.raises(ValueError, match=message + r'.*data.nih_chestxray14.skip_bad_rows=True'):
    builder.download_and_prepare()
  with caplog.at_level(logging.WARNING):
    splits = _load(tmp_path, tmp_path / 'cache', skip_bad_rows=True)
  assert {s: len(e) for s, e in splits.items()} == dict(train=17, validation=17, test=24 - left_out)
  assert any('skipped 1 bad row(s)' in r.getMessage() for r in caplog.records)
  lesion = sum(len(ex['lesion_box_labels']) for e in splits.values() for ex in e.values())
  # The Atelectasis image's box goes with its image or its bad row.
  assert lesion == lesion_boxes


def _listed_twice(root, images):
  name, facts = next(iter(images.items()))
  _edit(root / nih.DATA_ENTRY, None, _entry(name, facts))
  return rf'Data_Entry_2017.csv, line {len(images) + 2}: image .{name}. is listed again'


def _in_both_lists(root, images):
  name, facts = next(iter(images.items()))
  _edit(root / nih.TEST_LIST, None, name)
  return rf'test_list.txt, line \d+: image {name} is also in .*train_val_list.txt, line 1'


def _twice_in_a_list(root, images):
  name = next(n for n, f in images.items() if f['list'] == 'test')
  _edit(root / nih.TEST_LIST, None, name)
  return rf'test_list.txt, line \d+: image {name} is listed again \(first on line 1\)'


def _patient_in_both_lists(root, images):
  first, facts = next(iter(images.items()))
  name = f'{int(facts["patient"]):08d}_007.png'
  fx.save_image(root / 'images' / name, fx.lesion_image(SIZE, SIZE, None))
  _edit(root / nih.DATA_ENTRY, None, _entry(name, dict(facts, follow_up=7)))
  _edit(root / nih.TEST_LIST, None, name)
  return (
    rf'Patient {facts["patient"]} has images in both train_val_list.txt and test_list.txt: {first}'
  )


def _missing_column(root, images):
  del images
  _edit(root / nih.DATA_ENTRY, 1, DATA_ENTRY_HEADER.replace('Patient ID', 'Patient'))
  return r"Data_Entry_2017.csv, line 1: missing column\(s\) \['Patient ID'\]"


ALWAYS_RAISE = {
  'listed twice': _listed_twice,
  'in both lists': _in_both_lists,
  'twice in a list': _twice_in_a_list,
  'patient in both lists': _patient_in_both_lists,
  'missing column': _missing_column,
}


@pytest.mark.parametrize('case', sorted(ALWAYS_RAISE))
@pytest.mark.parametrize('skip', [False, True])
def test_ambiguous_multilabel_files_always_raise(tmp_path, case, skip):
  message = ALWAYS_RAISE[case](tmp_path, _write_multilabel(tmp_path))
  builder = nih.from_data_config(
    _multilabel_config(tmp_path, tmp_path / 'cache', skip_bad_rows=skip)
  )
  with pytest.raises(ValueError, match=message):
    builder.download_and_prepare()


def test_a_finding_missing_in_a_split_is_one_counted_warning(tmp_path, caplog):
  images = _write_multilabel(tmp_path)
  name, facts = next(
    (n, f) for n, f in images.items() if f['list'] == 'test' and f['findings'] == 'Hernia'
  )
  _edit(tmp_path / nih.DATA_ENTRY, facts['entry_line'], _entry(name, facts, 'No Finding'))
  with caplog.at_level(logging.WARNING):
    splits = _load(tmp_path, tmp_path / 'cache')
  assert len(splits['test']) == 24
  (warning,) = [r.getMessage() for r in caplog.records if 'without images' in r.getMessage()]
  assert warning.endswith(
    'Data_Entry_2017.csv: 1 (split, class) pair(s) without images, whose scores there are'
    " undefined: 'test' has no image of 'Hernia'"
  )


@pytest.mark.parametrize('file', [nih.DATA_ENTRY, nih.TRAIN_VAL_LIST, nih.TEST_LIST, nih.BOXES])
def test_multilabel_missing_files_name_the_download(tmp_path, file):
  _write_multilabel(tmp_path)
  (tmp_path / file).unlink()
  with pytest.raises(ValueError, match=rf'(?s){file} does not exist.*nihcc.*{nih.DATA_ENTRY}'):
    nih.from_data_config(_multilabel_config(tmp_path, tmp_path / 'cache'))


def test_mode_parameters_defaults_and_checks(tmp_path):
  assert {
    k: v
    for k, v in fx.default_parameters('nih_chestxray14').items()
    if k in ('mode', 'boxed_images')
  } == dict(mode='auto', boxed_images='test')  # 'auto': 'boxed' without a task.
  _write_multilabel(tmp_path)
  for key, value in (('mode', 'multi'), ('boxed_images', 'validation')):
    with pytest.raises(
      ValueError, match=rf"data.nih_chestxray14.{key} = '{value}': must be one of"
    ):
      nih.from_data_config(_config(tmp_path, tmp_path / 'cache', **{key: value}))

  def name(**params):
    return nih.from_data_config(_config(tmp_path, tmp_path / 'cache', **params)).builder_config.name

  # boxed_images is a multilabel parameter: the boxed mode's data keep their name.
  assert name() == name(mode='boxed') == name(boxed_images='train') != name(mode='multilabel')
  assert name().startswith('boxed_') and name(mode='multilabel').startswith('multilabel_')
  assert name(mode='multilabel') != name(mode='multilabel', boxed_images='train')
  # test_fraction is not used: the official test list is the test split.
  assert name(mode='multilabel') == name(mode='multilabel', test_fraction=0.5)
  with pytest.raises(
    ValueError, match=r"data.rare_classes has unknown class name\(s\) \['Infiltrate'\]"
  ):
    nih.from_data_config(_config(tmp_path, tmp_path / 'cache', ('Infiltrate',), mode='multilabel'))


def test_multilabel_mode_trains_through_the_pipeline_with_one_mask_per_finding(tmp_path):
  root = tmp_path / 'nih'
  root.mkdir()
  images = _write_multilabel(root)
  config = _multilabel_config(
    root, tmp_path / 'cache', boxed_images='train', rare_classes=('Nodule',)
  )
  info = info_lib.get_dataset_info(config)
  assert info.task == 'multilabel' and info.class_names == FINDINGS
  assert info.rare_classes == (FINDINGS.index('Nodule'),)
  size = info.split_sizes['train']
  batch = next(pipeline.train_batches(config, batch_size=size, seed=0))
  assert batch['label'].shape == (size, len(FINDINGS))
  assert batch['mask'].shape == (size, len(FINDINGS), config.image_size, config.image_size)
  # One epoch: every training image once; its labels are those of Data_Entry_2017.csv.
  counts = batch['label'].sum(0)
  np.testing.assert_array_equal(counts, info.train_class_counts)
  nodule = FINDINGS.index('Nodule')
  # The masks: Nodule's boxes only (the rare finding), on the images that show a nodule.
  assert not np.any(np.delete(batch['has_mask'], nodule, axis=1))
  assert np.all(batch['label'][batch['has_mask'][:, nodule], nodule] == 1)
  assert batch['has_mask'][:, nodule].sum() == 2  # Nodule's image and 'Mass|Nodule'.
  del images
  eval_batch = next(pipeline.eval_batches(config, 'test', batch_size=64))
  valid = eval_batch['valid']
  has = eval_batch['has_lesion_mask'][valid]
  # Evaluation scores every box of every finding; a box only where its finding is present.
  assert np.all(eval_batch['label'][valid][has] == 1)
