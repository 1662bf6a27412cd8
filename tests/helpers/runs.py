"""Tiny runs: the config of a few-step run on tiny synthetic data, and a stand-in for training.

The stand-in (`fake_train`) writes what a finished run writes from fabricated results, so the
suite tests (tests/suites_test.py, tests/integration/filesystems_test.py) run in a second.
"""

import json

from etils import epath

from care_jax import boxes
from care_jax import config as config_lib

# A small dataset: 5 classes, 32x32, a few dozen images per split.
TINY_DATA = [
  'data.image_size=32',
  'data.synthetic.image_size=32',
  'data.synthetic.train_counts=(24, 24, 8, 24, 8)',
  'data.synthetic.validation_counts=(4, 4, 4, 4, 4)',
  'data.synthetic.test_counts=(6, 6, 5, 6, 5)',
  'train.batch_size=16',
  'train.eval_batch_size=16',
  'train.num_steps=6',
  'train.log_every_steps=2',
  'train.progress=False',
]


def tiny_config(tmp_path, *extra):
  """The default config on the tiny synthetic data in tmp_path/tfds, with `extra` overrides."""
  config = config_lib.default_config()
  return config_lib.apply_overrides(config, TINY_DATA + [f'data.dir={tmp_path / "tfds"}', *extra])


# Fabricated test-split results: (care.alpha, seed) -> (rare recall, MCA).
FAKE_RESULTS = {
  (0.0, 0): (0.10, 0.50),
  (0.0, 1): (0.20, 0.60),
  (0.0, 2): (0.30, 0.70),
  (0.5, 0): (0.30, 0.55),
  (0.5, 1): (0.35, 0.60),
  (0.5, 2): (0.40, 0.65),
}


def fake_train(calls):
  """Stands in for training.train_and_evaluate: writes config.json and metrics.json.

  config.json is written as training writes it, with the recipe resolved
  (``train.learning_rate`` None becomes a number): a finished run must still
  count as the same config.
  """

  def fake(config, workdir, *, boxes_fn):
    assert boxes_fn is boxes.replace_boxes  # The commands wire in the generated boxes.
    calls.append((config.care.alpha, config.seed))
    rare, mca = FAKE_RESULTS[(config.care.alpha, config.seed)]
    metrics = {'step': 1, 'classes': ['a', 'b'], 'test': {'rare_recall': rare, 'mca': mca}}
    # Through epath, as training writes: tests/integration/filesystems_test.py runs it on gs://.
    run = epath.Path(workdir)
    run.mkdir(parents=True, exist_ok=True)
    (run / 'config.json').write_text(
      config_lib.resolve_recipe(config).to_json_best_effort(indent=2)
    )
    (run / 'metrics.json').write_text(json.dumps(metrics))
    return metrics

  return fake


def no_training(config, workdir, **_):
  raise AssertionError(f'trained {workdir} again')


def base_config(dataset='isic2018'):
  """The default config of `dataset` (the suites' base)."""
  return config_lib.apply_overrides(config_lib.default_config(), [f'data.name={dataset}'])


def figures_run_config(data_dir, alpha):
  """A 2-step run on a small synthetic dataset in `data_dir`, with care.alpha `alpha` (figures)."""
  config = config_lib.default_config()
  config.data.dir = str(data_dir)
  config.data.image_size = 32
  config.data.synthetic.update(
    dict(
      image_size=32, train_counts=(8, 8, 4, 8, 4), validation_counts=(2,) * 5, test_counts=(3,) * 5
    )
  )
  config.care.alpha = alpha
  config.train.num_steps = 2
  config.train.batch_size = 8
  config.train.eval_batch_size = 8
  config.train.log_every_steps = 1
  config.train.progress = False
  return config
