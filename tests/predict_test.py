"""Applying a trained run to new images: `Predictor`, `care-jax predict`, checkpoints by step.

The run is trained on a small folder dataset this module writes (three
classes, PNG and JPEG, RGB and greyscale, larger than its stored size), so
that predict has to repeat every step of the run's own preprocessing.
"""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from care_jax import config as config_lib
from care_jax import inference
from care_jax import metrics as metrics_lib
from care_jax import trained_run
from care_jax import training

REPO = pathlib.Path(__file__).resolve().parent.parent
CLASSES = ('amber', 'blue', 'cherry')
COLOURS = {'amber': (200, 140, 40), 'blue': (40, 70, 190), 'cherry': (170, 20, 60)}


def _image(label: str, rng: np.random.Generator) -> np.ndarray:
  """uint8 [30, 40, 3]: the class colour with noise and a random darker square."""
  image = np.asarray(COLOURS[label], np.float64) + rng.normal(0, 25, (30, 40, 3))
  y, x = rng.integers(0, 20), rng.integers(0, 30)
  image[y : y + 10, x : x + 10] *= 0.5
  return np.clip(image, 0, 255).astype(np.uint8)


def _write_dataset(root: pathlib.Path) -> list[tuple[str, str, str]]:
  """Writes images and labels.csv; returns its rows (image, label, split)."""
  rng = np.random.default_rng(0)
  rows = []
  for split, per_class in (('train', 8), ('validation', 2), ('test', 4)):
    for label in CLASSES:
      for i in range(per_class):
        grey = split == 'test' and i == 0  # Greyscale files become RGB, as in training.
        suffix = '.jpg' if i % 2 else '.png'
        name = f'{split}/{label}_{i}{suffix}'
        image = _image(label, rng)
        array = np.asarray(Image.fromarray(image).convert('L')) if grey else image
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / name, quality=90)
        rows.append((name, label, split))
  with open(root / 'labels.csv', 'w', newline='') as f:
    csv.writer(f).writerows([('image', 'label', 'split'), *rows])
  return rows


def _config(root: pathlib.Path, cache: pathlib.Path, *extra: str):
  return config_lib.apply_overrides(
    config_lib.default_config(),
    [
      'data.name=folder',
      f'data.dir={root}',
      f'data.cache_dir={cache}',
      'data.image_size=16',
      'data.folder.stored_size=24',  # The 40 x 30 files are stored shrunk to 24 x 18.
      'care.alpha=0.0',
      'train.num_steps=6',
      'train.batch_size=8',
      'train.eval_batch_size=8',
      'train.eval_every_steps=3',
      'train.progress=False',
      'checkpoint.every_steps=3',
      'checkpoint.keep=3',
      *extra,
    ],
  )


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir, data folder, labels rows, metrics.json) of a 6-step run on the folder data."""
  root = tmp_path_factory.mktemp('data')
  rows = _write_dataset(root)
  work = tmp_path_factory.mktemp('run')
  metrics = training.train_and_evaluate(_config(root, work / 'tfds'), str(work / 'run'))
  return work / 'run', root, rows, metrics


def _test_csv(root: pathlib.Path, rows, path: pathlib.Path) -> list[str]:
  names = [name for name, _, split in rows if split == 'test']
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows(
      [('image',), *[(os.path.relpath(root / n, path.parent),) for n in names]]
    )
  return names


def test_predict_on_the_test_images_reproduces_the_test_confusion_matrix(trained, tmp_path):
  workdir, root, rows, metrics = trained
  _test_csv(root, rows, tmp_path / 'test.csv')
  out = tmp_path / 'preds.csv'
  # The end-of-run test block scores the last state: the latest checkpoint.
  inference.predict(str(workdir), str(tmp_path / 'test.csv'), str(out), checkpoint='latest')
  with open(out, newline='') as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == ['image', 'prediction', *(f'p_{c}' for c in CLASSES)]
    predicted = list(reader)
  labels = {os.path.relpath(root / name, tmp_path): label for name, label, _ in rows}
  confusion = np.zeros((3, 3), int)
  for row in predicted:
    confusion[CLASSES.index(labels[row['image']]), CLASSES.index(row['prediction'])] += 1
    probabilities = [float(row[f'p_{c}']) for c in CLASSES]
    assert abs(sum(probabilities) - 1) < 1e-5
    assert row['prediction'] == CLASSES[int(np.argmax(probabilities))]
  assert confusion.tolist() == metrics['test']['confusion']
  # The test block's scores are those of the same probabilities.
  probabilities = np.array([[float(row[f'p_{c}']) for c in CLASSES] for row in predicted])
  truth = np.array([CLASSES.index(labels[row['image']]) for row in predicted])
  scores = metrics_lib.score_metrics(probabilities, truth, class_names=CLASSES)
  for key in ('auroc', 'ap'):
    for name in CLASSES:
      assert abs(scores[key][name] - metrics['test'][key][name]) < 1e-5, (key, name)
  assert abs(scores['ece'] - metrics['test']['ece']) < 1e-5


def _confusion(root, rows, preds_csv, relative_to) -> list[list[int]]:
  labels = {os.path.relpath(root / name, relative_to): label for name, label, _ in rows}
  confusion = np.zeros((3, 3), int)
  with open(preds_csv, newline='') as f:
    for row in csv.DictReader(f):
      confusion[CLASSES.index(labels[row['image']]), CLASSES.index(row['prediction'])] += 1
  return confusion.tolist()


def test_the_test_block_can_score_the_best_checkpoint(trained, tmp_path):
  _, root, rows, last = trained
  workdir = tmp_path / 'best'
  config = _config(root, tmp_path / 'tfds', 'train.test_checkpoint=best')
  metrics = training.train_and_evaluate(config, str(workdir))
  best = trained_run.load_run(str(workdir), which='best').step
  assert metrics['test_checkpoint'] == {'which': 'best', 'step': best}
  assert last['test_checkpoint'] == {'which': 'last', 'step': 6}
  _test_csv(root, rows, tmp_path / 'test.csv')
  inference.predict(str(workdir), str(tmp_path / 'test.csv'), str(tmp_path / 'p.csv'))
  assert _confusion(root, rows, tmp_path / 'p.csv', tmp_path) == metrics['test']['confusion']


def test_a_folder_input_is_searched_recursively_and_named_relative_to_it(trained, tmp_path):
  workdir, root, rows, _ = trained
  names, files = inference.list_images(str(root / 'test'))
  assert names == sorted(n.split('/', 1)[1] for n, _, s in rows if s == 'test')
  out = tmp_path / 'out' / 'preds.csv'
  result = inference.predict(
    str(workdir), str(root / 'test'), str(out), attention_dir=str(tmp_path / 'maps')
  )
  assert len(result.index) == len(names) == 12
  overlay = np.asarray(Image.open(tmp_path / 'maps' / f'{names[0]}.png'))
  assert overlay.shape == (16, 16, 3) and overlay.dtype == np.uint8
  assert result.maps.shape == (12, 2, 2)


def test_the_predictor_scores_arrays_as_it_scores_files(trained):
  workdir, root, rows, _ = trained
  predictor = inference.Predictor.from_workdir(str(workdir), checkpoint='latest')
  assert predictor.class_names == CLASSES and predictor.step == 6
  files = [str(root / n) for n, _, s in rows if s == 'test']
  result = predictor.predict_files(files, batch_size=5, keep_images=True)
  probabilities, predictions, maps = predictor.predict(result.images)
  np.testing.assert_allclose(probabilities, result.probabilities, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(predictions, result.predictions)
  assert maps is None and result.images.shape == (12, 16, 16, 3)


def test_checkpoints_are_chosen_by_name_or_step(trained):
  workdir = str(trained[0])
  assert trained_run.load_run(workdir, which='latest').step == 6
  assert trained_run.load_run(workdir, which=3).step == 3
  assert trained_run.load_run(workdir, which='3').step == 3
  run = trained_run.load_run(workdir, which='best')
  assert run.class_names == CLASSES and run.train_class_counts == (8, 8, 8)
  with pytest.raises(ValueError, match=r'no checkpoint of step 4 .*its steps: \[3, 6\]'):
    trained_run.load_run(workdir, which=4)
  with pytest.raises(ValueError, match="which must be 'best', 'latest' or a step"):
    trained_run.load_run(workdir, which='first')


def test_unreadable_images_are_named_or_skipped_and_counted(trained, tmp_path):
  workdir, root, _, _ = trained
  folder = tmp_path / 'images'
  folder.mkdir()
  Image.open(next((root / 'test').glob('*.png'))).save(folder / 'good.png')
  (folder / 'broken.jpg').write_bytes(b'not a jpeg')
  predictor = inference.Predictor.from_workdir(str(workdir))
  files = [str(folder / 'broken.jpg'), str(folder / 'good.png')]
  with pytest.raises(ValueError, match='broken.jpg'):
    predictor.predict_files(files)
  result = predictor.predict_files(files, skip_unreadable=True)
  assert result.index.tolist() == [1]
  with pytest.raises(ValueError, match='none of the 1 images could be read'):
    predictor.predict_files(files[:1], skip_unreadable=True)


def test_a_run_of_0_1_predicts(tmp_path):
  run = os.path.join(os.path.dirname(__file__), 'fixtures', 'v0_1_run')
  image = np.zeros((32, 32, 3), np.uint8)
  Image.fromarray(image).save(tmp_path / 'x.png')
  predictor = inference.Predictor.from_workdir(run)
  result = predictor.predict_files([str(tmp_path / 'x.png')])
  with open(os.path.join(run, 'metrics.json')) as f:
    assert list(predictor.class_names) == json.load(f)['classes']
  assert result.probabilities.shape == (1, 5)


def _cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'care_jax.commands.cli', 'predict', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
  )


def test_the_command_answers_bad_input_in_one_line(trained, tmp_path):
  workdir = trained[0]
  (tmp_path / 'empty').mkdir()
  done = _cli(
    f'--workdir={workdir}', f'--input={tmp_path / "empty"}', f'--output={tmp_path / "p.csv"}'
  )
  assert done.returncode == 1
  message = done.stderr.strip().splitlines()[-1]
  assert message.startswith('care-jax predict: ') and 'holds no image' in message
  done = _cli(
    f'--workdir={tmp_path}', f'--input={trained[1] / "test"}', f'--output={tmp_path / "p.csv"}'
  )
  assert done.returncode == 1
  assert 'no checkpoint in' in done.stderr.strip().splitlines()[-1]
  assert not (tmp_path / 'p.csv').exists()


def test_a_csv_without_an_image_column_is_refused(tmp_path):
  (tmp_path / 'in.csv').write_text('file\na.png\n')
  with pytest.raises(ValueError, match='no image column'):
    inference.list_images(str(tmp_path / 'in.csv'))
  with pytest.raises(ValueError, match='does not exist'):
    inference.list_images(str(tmp_path / 'missing'))


def test_evaluate_scores_a_checkpoint_as_the_run_scored_its_test_block(trained, tmp_path):
  from care_jax.commands import evaluate  # pylint: disable=g-import-not-at-top

  workdir, _, _, metrics = trained
  block, path = evaluate.evaluate(str(workdir), split='test', checkpoint='latest')
  assert path == os.path.join(str(workdir), 'evaluation_test_step6.json')
  with open(path) as f:
    assert json.load(f) == json.loads(json.dumps(block))
  assert (block['step'], block['checkpoint'], block['split']) == (6, 'latest', 'test')
  assert block['confusion'] == metrics['test']['confusion']
  for key in ('accuracy', 'mca', 'macro_auroc', 'ece'):
    assert block[key] == pytest.approx(metrics['test'][key], abs=1e-6), key
  assert block['auroc'] == pytest.approx(metrics['test']['auroc'], abs=1e-6)
  validation, _ = evaluate.evaluate(
    str(workdir), split='validation', checkpoint=3, output=str(tmp_path / 'v.json')
  )
  assert validation['step'] == 3 and sum(map(sum, validation['confusion'])) == 6
  with pytest.raises(ValueError, match=r"split 'tset' does not exist; splits: \['test', 'train'"):
    evaluate.evaluate(str(workdir), split='tset')


def test_the_exported_artifact_reproduces_the_predictor(trained, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top

  workdir, root, rows, _ = trained
  predictor = inference.Predictor.from_workdir(str(workdir), checkpoint='latest')
  meta = inference.export(predictor, str(tmp_path / 'export'))
  assert meta['class_names'] == list(CLASSES) and meta['input_shape'] == ['batch', 16, 16, 3]
  assert meta['platforms'] == ['cpu', 'cuda', 'tpu'] and meta['step'] == 6
  files = [str(root / n) for n, _, s in rows if s == 'test']
  expected = predictor.predict_files(files, keep_images=True)
  # The README's loader: jax alone.
  with open(tmp_path / 'export' / 'model.stablehlo', 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  np.testing.assert_allclose(exported.call(expected.images), expected.probabilities, atol=1e-5)
  assert exported.call(expected.images[:1]).shape == (1, 3)  # Any batch size.
  with open(tmp_path / 'export' / 'model.json') as f:
    loaded = json.load(f)
  image = np.asarray(Image.open(files[0]).convert('RGB').resize((16, 16), Image.BILINEAR))
  x = ((image / 255.0 - np.asarray(loaded['mean'])) / np.asarray(loaded['std']))[None]
  probabilities = np.asarray(exported.call(x.astype(np.float32)))
  assert probabilities.shape == (1, 3) and abs(probabilities.sum() - 1) < 1e-5


def test_the_run_writes_the_test_predictions_as_predict_does(trained, tmp_path):
  workdir, root, rows, _ = trained
  with open(workdir / 'predictions_test.csv', newline='') as f:
    written = list(csv.DictReader(f))
  names = [name for name, _, split in rows if split == 'test']
  assert sorted(r['image'] for r in written) == sorted(names)  # Paths relative to data.dir.
  result = inference.Predictor.from_workdir(str(workdir), checkpoint='latest').predict_files(
    [str(root / r['image']) for r in written]
  )
  for row, probabilities, predicted in zip(written, result.probabilities, result.predictions):
    assert row['prediction'] == CLASSES[predicted]
    np.testing.assert_allclose([float(row[f'p_{c}']) for c in CLASSES], probabilities, atol=1e-5)


@pytest.mark.parametrize('processes, global_batch, size', [(1, 8, 21), (2, 8, 21), (4, 8, 30)])
def test_split_positions_follow_the_eval_sharding_of_several_processes(
  processes, global_batch, size
):
  from care_jax.training import evaluation  # pylint: disable=g-import-not-at-top

  # eval_batches: pad to a multiple of the global batch, process p takes every
  # P-th example from p on, batches its share; a global batch concatenates them.
  padded = np.arange(-(-size // global_batch) * global_batch)
  local = global_batch // processes
  shares = [padded[p::processes] for p in range(processes)]
  for k in range(len(padded) // global_batch):
    batch = np.concatenate([share[k * local : (k + 1) * local] for share in shares])
    np.testing.assert_array_equal(evaluation.split_positions(k, global_batch, processes), batch)
