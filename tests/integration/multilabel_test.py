"""Multi-label training end to end: the generator, the pipeline, the CARE step and the run.

The CARE step is checked against a written-out per-(image, finding) computation (sigmoid
BCE, the CAM of each finding's logit, min-max, bilinear upsampling, the two terms, the mean
over the boxed positive pairs) on one device and on 8 simulated devices (conftest.py).
"""

import csv
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from care_jax import classification_loss
from care_jax import config as config_lib
from care_jax import inference
from care_jax import run_figures
from care_jax import training
from care_jax.data import info as data_info
from care_jax.data import pipeline
from care_jax.data import preprocess
from care_jax.data import reading
from care_jax.data import registry
from care_jax.data import synthetic_multilabel

NUM_CLASSES = 4
IMAGE = 32
TAU, LAM, ALPHA = 0.5, 0.7, 0.5
SMALL = dict(image_size=48, num_train=40, num_validation=16, num_test=24, rare_rate_train=0.3)


def _data_config(tmp_path, **overrides):
  config = config_lib.default_config()
  config.data.name = 'synthetic_multilabel'
  config.data.dir = str(tmp_path / 'tfds')
  config.data.image_size = 48
  for key, value in {**SMALL, **overrides}.items():
    config.data.synthetic_multilabel[key] = value
  return config.data


# The pipeline ----------------------------------------------------------------------------


def test_dataset_info_of_a_multilabel_dataset(tmp_path):
  data_config = _data_config(tmp_path)
  info = data_info.get_dataset_info(data_config)
  assert info.task == 'multilabel'
  assert info.class_names == synthetic_multilabel.CLASS_NAMES
  assert info.rare_classes == (2, 4)  # The findings with boxes: dotted, striped.
  builder = registry.prepared_builder(data_config)
  table = reading.read_split(builder, 'train')
  np.testing.assert_array_equal(info.train_class_counts, table.labels.sum(0))
  assert info.num_train_examples == SMALL['num_train']


@pytest.mark.parametrize('augmented', [False, True])
def test_train_batches_hold_one_mask_per_finding(tmp_path, augmented):
  data_config = _data_config(tmp_path)
  data_config.augment.enabled = augmented
  builder = registry.prepared_builder(data_config)
  table = reading.read_split(builder, 'train')
  batch = next(pipeline.train_batches(data_config, batch_size=8, seed=3))
  assert batch['label'].dtype == np.float32 and batch['label'].shape == (8, 5)
  assert batch['mask'].dtype == np.uint8 and batch['mask'].shape == (8, 5, 48, 48)
  np.testing.assert_array_equal(batch['has_mask'], batch['mask'].any(axis=(2, 3)))
  if not augmented:
    # Without augmentation the masks are the per-finding rasterised boxes of an example.
    starts, ends = table.box_splits[:-1], table.box_splits[1:]
    for row in range(8):
      matches = []
      for n in range(len(table.images)):
        if not np.array_equal(table.labels[n], batch['label'][row]):
          continue
        boxes, classes = (
          table.box_values[starts[n] : ends[n]],
          table.box_labels[starts[n] : ends[n]],
        )
        expected = np.zeros((5, 48, 48), np.uint8)
        for box, k in zip(boxes, classes):
          expected[k] |= preprocess.rasterize_boxes(box[None], 48).numpy().astype(np.uint8)
        matches.append(np.array_equal(expected, batch['mask'][row]))
      assert any(matches), row
  # Boxes only where the finding is present, and only for the rare findings.
  assert not np.any(batch['has_mask'] & (batch['label'] == 0))
  assert not np.any(batch['has_mask'][:, [0, 1, 3]])


def test_eval_batches_hold_every_lesion_of_every_finding(tmp_path):
  data_config = _data_config(tmp_path)
  builder = registry.prepared_builder(data_config)
  batches = list(pipeline.eval_batches(data_config, 'test', batch_size=16))
  lesion_mask = np.concatenate([b['lesion_mask'] for b in batches])
  label = np.concatenate([b['label'] for b in batches])
  valid = np.concatenate([b['valid'] for b in batches])
  assert valid.sum() == SMALL['num_test'] and lesion_mask.dtype == np.uint8
  has = np.concatenate([b['has_lesion_mask'] for b in batches])
  # Every present finding has its lesion box in test; no annotation boxes there.
  np.testing.assert_array_equal(has[valid], label[valid] > 0)
  assert not np.concatenate([b['has_mask'] for b in batches]).any()
  del builder


def test_class_balanced_sampling_is_refused_for_multilabel_data(tmp_path):
  data_config = _data_config(tmp_path)
  data_config.sampling = 'class_balanced'
  with pytest.raises(ValueError, match="data.sampling = 'class_balanced'.*multi-label"):
    next(pipeline.train_batches(data_config, batch_size=4, seed=0))


# The CARE step ---------------------------------------------------------------------------


def _config(parallel='mesh'):
  config = config_lib.default_config()
  config.task = 'multilabel'
  config.care.stage1_metric = 'mean_auroc'
  config.model.name = 'tiny_cnn'
  config.train.optimizer = 'sgd'
  config.train.learning_rate = 1e-2
  config.care.alpha, config.care.tau, config.care.lam = ALPHA, TAU, LAM
  config.parallel = parallel
  return config


def _batch(batch_size=16, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.uniform(size=(batch_size, NUM_CLASSES)) < 0.4).astype(np.float32)
  mask = np.zeros((batch_size, NUM_CLASSES, IMAGE, IMAGE), np.uint8)
  # Boxes on some pairs, positive or not (a box on a negative pair must not count), unevenly
  # spread over the 8 shards.
  for b, k in [(0, 1), (0, 2), (1, 0), (2, 3), (5, 1), (13, 2), (14, 0), (15, 3)]:
    y0, x0 = rng.integers(0, IMAGE // 2, 2)
    mask[b, k, y0 : y0 + rng.integers(4, IMAGE // 2), x0 : x0 + rng.integers(4, IMAGE // 2)] = 1
    labels[b, k] = 1.0 if b != 15 else 0.0
  return {
    'image': rng.normal(size=(batch_size, IMAGE, IMAGE, 3)).astype(np.float32),
    'label': labels,
    'mask': mask,
    'has_mask': mask.any(axis=(2, 3)),
  }


def _setup(config):
  model = training.create_model(config, NUM_CLASSES)
  state = training.create_train_state(config, model, (IMAGE, IMAGE, 3), 10, jax.random.key(0))
  loss = classification_loss.make_classification_loss(
    'ce', class_counts=[1] * 4, num_steps=10, task='multilabel'
  )
  axis_name = training.PMAP_AXIS if config.parallel == 'pmap' else None
  step = training.make_train_step(
    model, training.StepConfig.from_config(config), classification_loss=loss, axis_name=axis_name
  )
  eval_step = training.make_eval_step(
    model, num_classes=NUM_CLASSES, axis_name=axis_name, task='multilabel'
  )
  return model, state, step, eval_step


def _reference_loss(params, batch_stats, *, model, batch):
  """The multi-label CARE loss written out, pair by pair (``batch`` concrete)."""
  (logits, inter), _ = model.apply(
    {'params': params, 'batch_stats': batch_stats},
    batch['image'],
    train=True,
    mutable=['batch_stats'],
  )
  y = jnp.asarray(batch['label'])
  bce = jnp.mean(jnp.logaddexp(0.0, logits) - y * logits)  # softplus(z) - y z
  kernel = jax.lax.stop_gradient(params['head']['fc']['kernel'])
  terms = []
  for b, k in zip(*np.nonzero(batch['has_mask'] & (batch['label'] > 0.5))):
    cam = jnp.einsum('hwc,c->hw', inter['features'][b], kernel[:, k], precision='highest')
    low, high = cam.min(), cam.max()
    f = jax.image.resize((cam - low) / (high - low), (IMAGE, IMAGE), 'bilinear')
    m = jnp.asarray(batch['mask'][b, k], jnp.float32)
    inner = -jnp.minimum(jnp.sum(m * f) / jnp.sum(m), TAU)
    outer = jnp.sum((1 - m) * f) / jnp.sum(1 - m)
    terms.append(inner + LAM * outer)
  care = jnp.mean(jnp.stack(terms))
  return (1 - ALPHA) * bce + ALPHA * care, (bce, care, len(terms))


def test_multilabel_care_step_equals_the_written_out_per_pair_loss():
  config = _config()
  model, state, step, _ = _setup(config)
  batch = _batch()
  (loss, (bce, care, pairs)), grads = jax.value_and_grad(
    lambda p: _reference_loss(p, state.batch_stats, model=model, batch=batch), has_aux=True
  )(state.params)
  new_state, metrics = jax.jit(step)(state, batch)
  assert pairs == 7 and int(metrics['boxed']) == 7  # The box on a negative pair does not count.
  np.testing.assert_allclose(metrics['ce'], bce, rtol=1e-5)
  np.testing.assert_allclose(metrics['care'], care, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  lr = config.train.learning_rate
  expected = jax.tree.map(lambda p, g: p - lr * g, state.params, grads)
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('parallel', ['mesh', 'pmap'])
def test_multilabel_step_and_eval_on_8_devices_match_one_device(parallel):
  assert jax.device_count() == 8, 'conftest sets 8 simulated devices'
  batch = _batch()
  model, state, step, eval_step = _setup(_config())
  single_state, single_metrics = jax.device_get(jax.jit(step)(state, batch))
  eval_batch = dict(batch, valid=np.arange(16) < 13)
  eval_batch['lesion_mask'], eval_batch['has_lesion_mask'] = batch['mask'], batch['has_mask']
  _, single_quality, single_rows = jax.jit(eval_step)(state, eval_batch)

  config = _config(parallel)
  _, state, step, eval_step = _setup(config)
  runner = training.make_parallel(config, step, eval_step)
  with runner.scope():
    new_state, metrics = runner.train_step(runner.put_state(state), runner.put_batch(batch))
    confusion, quality, rows = runner.fetch(
      runner.eval_step(runner.put_state(state), runner.put_batch(eval_batch))
    )
  metrics = runner.fetch(metrics)
  for key in ('loss', 'ce', 'care', 'accuracy', 'boxed'):
    np.testing.assert_allclose(metrics[key], single_metrics[key], rtol=1e-5, err_msg=key)
  chex.assert_trees_all_close(
    runner.get_state(new_state).params, single_state.params, rtol=1e-5, atol=1e-5
  )
  assert confusion is None
  np.testing.assert_allclose(rows['probabilities'], single_rows['probabilities'], rtol=1e-5)
  np.testing.assert_array_equal(rows['label'], batch['label'])
  # Per-finding attention sums: the valid positive pairs with a box, over all devices.
  scored = eval_batch['valid'][:, None] & batch['has_mask'] & (batch['label'] > 0.5)
  np.testing.assert_array_equal(quality.num_images, scored.sum(0))
  for field in ('mass_inside', 'pointing_game', 'iou'):
    np.testing.assert_allclose(getattr(quality, field), getattr(single_quality, field), rtol=1e-5)


def test_config_refuses_what_a_multilabel_task_cannot_take():
  config = _config()
  config_lib.validate(config)
  for key, value, match in (
    ('loss.name', 'ldam_drw', 'loss.name'),
    ('data.sampling', 'sqrt', 'data.sampling'),
    ('care.stage1_metric', 'mca', 'care.stage1_metric'),
    ('data.box_source', 'grad_cam', 'data.box_source'),
    ('task', 'multi', 'config.task'),
  ):
    bad = config_lib.apply_overrides(config, [f'{key}={value}'])
    with pytest.raises(ValueError, match=match):
      config_lib.validate(bad)
  single_label = config_lib.apply_overrides(config, ['task=multiclass'])
  with pytest.raises(ValueError, match="stage1_metric = 'mean_auroc': is a multi-label metric"):
    config_lib.validate(single_label)


# A run -------------------------------------------------------------------------------------


def test_a_multilabel_run_writes_its_metrics_and_predictions(tmp_path):
  config = config_lib.apply_overrides(
    config_lib.default_config(),
    [
      'task=multilabel',
      'data.name=synthetic_multilabel',
      f'data.dir={tmp_path / "tfds"}',
      'data.image_size=48',
      *(f'data.synthetic_multilabel.{k}={v}' for k, v in SMALL.items()),
      'care.protocol=two_stage',
      'care.stage1_metric=mean_auroc',
      'train.num_steps=12',
      'train.batch_size=8',
      'train.eval_batch_size=8',
      'train.eval_every_steps=4',
      'train.test_checkpoint=best',
      'train.progress=False',
    ],
  )
  workdir = tmp_path / 'run'
  result = training.train_and_evaluate(config, str(workdir))
  saved = json.loads((workdir / 'metrics.json').read_text())
  for block in (saved['test'], saved['validation']):
    assert set(block['auroc']) == set(synthetic_multilabel.CLASS_NAMES)
    assert 0.0 <= block['mean_auroc'] <= 1.0
    assert set(block['attention']['per_class']) == set(synthetic_multilabel.CLASS_NAMES)
  assert saved['stages']['metric'] == 'mean_auroc'
  assert result['test_checkpoint']['which'] == 'best'
  with (workdir / 'predictions_test.csv').open() as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['image', 'prediction', *(f'p_{n}' for n in synthetic_multilabel.CLASS_NAMES)]
  assert len(rows) == 1 + SMALL['num_test']
  for row in rows[1:]:
    probabilities = np.array(row[2:], float)
    positives = [n for n, p in zip(synthetic_multilabel.CLASS_NAMES, probabilities) if p >= 0.5]
    assert row[1] == '|'.join(positives)

  # The trained run applied to image files: sigmoid probabilities, the positives joined by '|'.
  generator = synthetic_multilabel.multilabel_config(**SMALL)
  paths = []
  for i in range(3):
    path = tmp_path / f'image_{i}.png'
    Image.fromarray(synthetic_multilabel.generate_example(generator, 'test', i)['image']).save(path)
    paths.append(str(path))
  # The checkpoint that the test block (and predictions_test.csv) scored.
  test_step = result['test_checkpoint']['step']
  predictor = inference.Predictor.from_workdir(str(workdir), checkpoint=test_step)
  assert predictor.multilabel
  result = predictor.predict_files(paths, attention=True)
  assert result.probabilities.shape == (3, 5) and result.maps.shape[0] == 3
  out = tmp_path / 'preds.csv'
  inference.write_predictions(out, paths, result, predictor.class_names, multilabel=True)
  with out.open() as f:
    predicted = list(csv.reader(f))[1:]
  for row, probabilities in zip(predicted, result.probabilities):
    names = [n for n, p in zip(synthetic_multilabel.CLASS_NAMES, probabilities) if p >= 0.5]
    assert row[1] == '|'.join(names)
  # Sigmoids of the logits, one per finding (not a softmax over the findings).
  images = predictor.predict_files(paths, keep_images=True).images
  logits, _ = predictor.model.apply(predictor.variables, images, train=False)
  np.testing.assert_allclose(result.probabilities, jax.nn.sigmoid(logits), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='is a multi-label run: care-jax visualize'):
    run_figures.write_figures(str(workdir))


def test_a_multiclass_config_on_a_multilabel_dataset_names_the_fix(tmp_path):
  config = config_lib.default_config()
  config.data = _data_config(tmp_path)
  config.train.num_steps = 2
  with pytest.raises(ValueError, match="set config.task = 'multilabel'"):
    training.train_and_evaluate(config, str(tmp_path / 'run'))
