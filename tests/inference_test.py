"""Applying a trained run to new images: `Predictor`, `predict`, listing images, the
exported artifact. The run is tests/helpers/folder_run.py's (the `folder_run` fixture)."""

import collections
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
  # Named by the image and the predicted class (before: 001.png.png).
  predicted = fr.CLASSES[result.predictions[0]]
  overlay = np.asarray(Image.open(tmp_path / 'maps' / f'{names[0][:-4]}_{predicted}.png'))
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


def _platform_op_counts(exported, platform: str) -> collections.Counter:
  """The StableHLO ops that `exported` runs on ``platform``: its module, specialised.

  A multi-platform module takes the platform's index as its first argument and picks each
  platform's code with `stablehlo.case` ops on it (`jax.lax.platform_dependent`), which XLA
  folds when it compiles for one platform; here only the branches that the index selects are
  counted, following calls into private functions.
  """
  from jax._src.interpreters import mlir as jax_mlir  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir import ir  # pylint: disable=g-import-not-at-top

  counts = collections.Counter()
  with jax_mlir.make_ir_context():
    module = ir.Module.parse(exported.mlir_module())
    functions = {op.attributes['sym_name'].value: op for op in module.body.operations}

    def constant(value, known):  # The value's integer if the platform index fixes it, or None.
      if value in known or isinstance(value.owner, ir.Block):
        return known.get(value)
      if value.owner.name == 'stablehlo.constant':
        return int(ir.DenseIntElementsAttr(value.owner.attributes['value'])[0])
      if value.owner.name == 'stablehlo.case':
        branch = constant(value.owner.operands[0], known)
        if branch is not None:
          returned = value.owner.regions[branch].blocks[0].operations[-1]
          return constant(returned.operands[ir.OpResult(value).result_number], known)
      return None

    def walk(block, known):
      for op in block.operations:
        counts[op.name] += 1
        if op.name == 'func.call':
          callee = functions[ir.FlatSymbolRefAttr(op.attributes['callee']).value]
          body = callee.regions[0].blocks[0]
          walk(body, {a: constant(v, known) for a, v in zip(body.arguments, op.operands)})
          continue
        regions = list(op.regions)
        branch = constant(op.operands[0], known) if op.name == 'stablehlo.case' else None
        for region in regions if branch is None else [regions[branch]]:
          for inner in region.blocks:
            walk(inner, known)

    main = functions['main'].regions[0].blocks[0]
    walk(main, {main.arguments[0]: exported.platforms.index(platform)})
  return counts


def test_one_exported_artifact_carries_each_platforms_convolutions(folder_run, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top

  predictor = inference.Predictor.from_workdir(str(folder_run.workdir), checkpoint='latest')
  inference.export(predictor, str(tmp_path), platforms=('cpu', 'cuda', 'tpu'))
  exported = jax.export.deserialize(bytearray((tmp_path / inference.EXPORT_MODEL).read_bytes()))
  ops = {p: _platform_op_counts(exported, p) for p in exported.platforms}
  # The tiny CNN at 16 px: four 3x3 convolutions with 8x8, 4x4, 2x2 and 2x2 outputs. On CPU
  # the last three are patches times a matrix (care_jax.models.convolution); on the
  # accelerators all four stay convolutions, although this CPU host exported them. The
  # head's one product (the linear layer) is a dot_general everywhere.
  assert ops['cpu']['stablehlo.convolution'] == 1 and ops['cpu']['stablehlo.dot_general'] == 4
  for accelerator in ('cuda', 'tpu'):
    assert ops[accelerator]['stablehlo.convolution'] == 4
    assert ops[accelerator]['stablehlo.dot_general'] == 1


@pytest.mark.parametrize('platforms', [['gpu'], ['cpu', 'CUDA'], []], ids=str)
def test_an_unknown_export_platform_is_named_with_the_known_ones(platforms, tmp_path):
  # Checked before anything is traced or written (no predictor needed).
  with pytest.raises(ValueError, match=r"platforms = .*: '.*' is not a platform .* cuda, rocm"):
    inference.export(None, str(tmp_path / 'out'), platforms=platforms)
  assert not (tmp_path / 'out').exists()


def test_files_predict_with_one_compilation_and_the_weights_placed_once(
  folder_run, tmp_path, monkeypatch
):
  import functools  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  workdir, root, rows, _ = folder_run
  predictor = inference.Predictor.from_workdir(str(workdir), checkpoint='latest')
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(predictor.variables))
  traced_shapes = []
  predict = inference._predict.__wrapped__  # The Python function under jax.jit.

  def counting(model, variables, images, *args, **kwargs):
    traced_shapes.append(images.shape)  # Python runs only while jax traces.
    return predict(model, variables, images, *args, **kwargs)

  jitted = functools.partial(
    jax.jit, static_argnames=('model', 'method', 'with_maps', 'multilabel')
  )
  monkeypatch.setattr(inference, '_predict', jitted(counting))
  (tmp_path / 'broken.png').write_bytes(b'not a png')
  files = [str(root / n) for n, _, s in rows if s == 'test'][:7]
  files.insert(2, str(tmp_path / 'broken.png'))
  # Batches of 3, 3 (one unreadable: 2 read) and 2: one shape, one compilation.
  result = predictor.predict_files(files, batch_size=3, attention=True, skip_unreadable=True)
  assert traced_shapes == [(3, 16, 16, 3)]
  assert result.index.tolist() == [0, 1, 3, 4, 5, 6, 7]
  one_by_one = [predictor.predict_files([files[i]], attention=True) for i in result.index]
  np.testing.assert_allclose(
    result.probabilities,
    np.concatenate([r.probabilities for r in one_by_one]),
    rtol=1e-6,
    atol=1e-7,
  )
  np.testing.assert_array_equal(
    result.predictions, np.concatenate([r.predictions for r in one_by_one])
  )
  np.testing.assert_allclose(
    result.maps, np.concatenate([r.maps for r in one_by_one]), rtol=1e-5, atol=1e-6
  )
