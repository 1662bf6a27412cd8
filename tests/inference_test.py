"""Applying a trained run to new images: `Predictor`, `predict`, listing images, the
exported artifact. The run is tests/helpers/folder_run.py's (the `folder_run` fixture)."""

import csv
import json
import os

import numpy as np
from PIL import Image
import pytest

from care_jax import inference
from care_jax import metrics as metrics_lib
from tests.helpers import folder_run as fr
from tests.helpers import versions


def test_predict_on_the_test_images_reproduces_the_test_confusion_matrix(folder_run, tmp_path):
  workdir, root, rows, metrics = folder_run
  fr.write_test_csv(root, rows, tmp_path / 'test.csv')
  out = tmp_path / 'preds.csv'
  # The end-of-run test block scores the last state: the latest checkpoint.
  inference.predict(str(workdir), str(tmp_path / 'test.csv'), str(out), checkpoint='latest')
  with open(out, newline='') as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == ['image', 'prediction', *(f'p_{c}' for c in fr.CLASSES)]
    predicted = list(reader)
  labels = {os.path.relpath(root / name, tmp_path): label for name, label, _ in rows}
  confusion = np.zeros((3, 3), int)
  for row in predicted:
    confusion[fr.CLASSES.index(labels[row['image']]), fr.CLASSES.index(row['prediction'])] += 1
    probabilities = [float(row[f'p_{c}']) for c in fr.CLASSES]
    assert abs(sum(probabilities) - 1) < 1e-5
    assert row['prediction'] == fr.CLASSES[int(np.argmax(probabilities))]
  assert confusion.tolist() == metrics['test']['confusion']
  # The test block's scores are those of the same probabilities.
  probabilities = np.array([[float(row[f'p_{c}']) for c in fr.CLASSES] for row in predicted])
  truth = np.array([fr.CLASSES.index(labels[row['image']]) for row in predicted])
  scores = metrics_lib.score_metrics(probabilities, truth, class_names=fr.CLASSES)
  for key in ('auroc', 'ap'):
    for name in fr.CLASSES:
      assert abs(scores[key][name] - metrics['test'][key][name]) < 1e-5, (key, name)
  assert abs(scores['ece'] - metrics['test']['ece']) < 1e-5


def test_a_folder_input_is_searched_recursively_and_named_relative_to_it(folder_run, tmp_path):
  workdir, root, rows, _ = folder_run
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


def test_the_predictor_scores_arrays_as_it_scores_files(folder_run):
  workdir, root, rows, _ = folder_run
  predictor = inference.Predictor.from_workdir(str(workdir), checkpoint='latest')
  assert predictor.class_names == fr.CLASSES and predictor.step == 6
  files = [str(root / n) for n, _, s in rows if s == 'test']
  result = predictor.predict_files(files, batch_size=5, keep_images=True)
  probabilities, predictions, maps = predictor.predict(result.images)
  np.testing.assert_allclose(probabilities, result.probabilities, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(predictions, result.predictions)
  assert maps is None and result.images.shape == (12, 16, 16, 3)


def test_unreadable_images_are_named_or_skipped_and_counted(folder_run, tmp_path):
  workdir, root, _, _ = folder_run
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
  run = versions.V0_1_RUN
  image = np.zeros((32, 32, 3), np.uint8)
  Image.fromarray(image).save(tmp_path / 'x.png')
  predictor = inference.Predictor.from_workdir(run)
  result = predictor.predict_files([str(tmp_path / 'x.png')])
  with open(os.path.join(run, 'metrics.json')) as f:
    assert list(predictor.class_names) == json.load(f)['classes']
  assert result.probabilities.shape == (1, 5)


def test_a_csv_without_an_image_column_is_refused(tmp_path):
  (tmp_path / 'in.csv').write_text('file\na.png\n')
  with pytest.raises(ValueError, match='no image column'):
    inference.list_images(str(tmp_path / 'in.csv'))
  with pytest.raises(ValueError, match='does not exist'):
    inference.list_images(str(tmp_path / 'missing'))


def test_the_exported_artifact_reproduces_the_predictor(folder_run, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top

  workdir, root, rows, _ = folder_run
  predictor = inference.Predictor.from_workdir(str(workdir), checkpoint='latest')
  meta = inference.export(predictor, str(tmp_path / 'export'))
  assert meta['class_names'] == list(fr.CLASSES) and meta['input_shape'] == ['batch', 16, 16, 3]
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
