"""End to end: train_and_evaluate, the CLI, config validation and `compare`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from care_jax import comparison
from care_jax import config as config_lib
from care_jax import training
from care_jax.commands import cli
from care_jax.training import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def _tiny_config(tmp_path, *extra):
  config = config_lib.default_config()
  return config_lib.apply_overrides(config, TINY_DATA + [f'data.dir={tmp_path / "tfds"}', *extra])


@pytest.mark.slow
def test_train_and_evaluate_writes_the_metrics_contract(tmp_path):
  workdir = tmp_path / 'run'
  result = training.train_and_evaluate(_tiny_config(tmp_path), str(workdir))
  with open(workdir / 'metrics.json') as f:
    metrics = json.load(f)
  assert metrics == json.loads(json.dumps(result))
  assert metrics['step'] == 6
  assert metrics['classes'] == ['brown', 'dark', 'dotted', 'pink', 'striped']
  assert metrics['rare_classes'] == ['dotted', 'striped']
  for split, size in (('validation', 20), ('test', 28)):
    block = metrics[split]
    for key in ('accuracy', 'mca', 'rare_recall'):
      assert 0.0 <= block[key] <= 1.0
    assert set(block['recall']) == set(block['precision']) == set(metrics['classes'])
    confusion = np.array(block['confusion'])
    assert confusion.shape == (5, 5) and confusion.sum() == size
    assert set(block['auroc']) == set(block['ap']) == set(metrics['classes'])
    assert all(0.0 <= v <= 1.0 for v in (*block['auroc'].values(), *block['ap'].values()))
    assert 0.0 <= block['macro_auroc'] <= 1.0 and 0.0 <= block['ece'] <= 1.0
    assert sum(block['calibration']['count']) == size
  log = [json.loads(line) for line in open(workdir / 'train_log.jsonl')]
  assert [r['step'] for r in log] == [2, 4, 6]
  assert all(np.isfinite(r['loss']) and r['boxed'] >= 0 for r in log)
  assert json.load(open(workdir / 'config.json'))['care']['alpha'] == 0.5


def _run_cli(*args, cwd=REPO, env=None):
  env = env or dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
    [sys.executable, '-m', 'care_jax.commands.train', *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.slow
def test_cli_trains_a_packaged_config_by_name_from_any_directory_and_prints_little(tmp_path):
  flags = [f'--config.{o}' for o in TINY_DATA + [f'data.dir={tmp_path / "tfds"}']]
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  proc = _run_cli(
    '--config=synthetic_baseline',
    f'--workdir={tmp_path / "w"}',
    *flags,
    '--config.train.num_steps=3',
    cwd=tmp_path,  # no configs/ folder here: the name finds the packaged file
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.load(open(tmp_path / 'w' / 'metrics.json'))
  assert metrics['step'] == 3
  # Quiet by default: progress bars, our own lines, warnings; no INFO of the libraries below
  # (TensorFlow's C++ prints a few lines on import that no setting of ours can hide).
  output = proc.stdout + proc.stderr
  assert 'Downloading' not in output and 'orbax' not in output
  assert output.count('\n') <= 40, output  # lines as `wc -l` counts them (bars redraw with \r)


def test_cli_rejects_an_unknown_config_key(tmp_path):
  proc = _run_cli(
    '--config=configs/default.py', f'--workdir={tmp_path}', '--config.care.alphaa=0.1'
  )
  assert proc.returncode != 0
  assert 'alphaa' in proc.stderr


def test_cli_rejects_a_wrongly_typed_value(tmp_path):
  proc = _run_cli(
    '--config=configs/default.py', f'--workdir={tmp_path}', '--config.care.alpha=lots'
  )
  assert proc.returncode != 0
  assert 'care.alpha' in proc.stderr


@pytest.mark.parametrize(
  'override, key',
  [
    ('care.alpha=1.5', 'care.alpha'),
    ('care.tau=0.0', 'care.tau'),
    ('loss.name=focal_typo', 'loss.name'),
    ('model.name=resnet9', 'model.name'),
    ('parallel=xmap', 'parallel'),
    ('train.num_steps=0', 'train.num_steps'),
    ('dtype=float16', 'dtype'),
  ],
)
def test_validate_names_the_offending_key(override, key):
  config = config_lib.apply_overrides(config_lib.default_config(), [override])
  with pytest.raises(ValueError, match=key.replace('.', r'\.')):
    config_lib.validate(config)


def test_apply_overrides_rejects_unknown_keys_and_keeps_types():
  config = config_lib.apply_overrides(config_lib.default_config(), ['care.alpha=1'])
  assert config.care.alpha == 1.0 and isinstance(config.care.alpha, float)
  with pytest.raises(KeyError, match='care.alphaa'):
    config_lib.apply_overrides(config_lib.default_config(), ['care.alphaa=1'])
  with pytest.raises(ValueError, match='key=value'):
    config_lib.apply_overrides(config_lib.default_config(), ['care.alpha'])


def test_batch_size_must_split_over_the_devices(tmp_path):
  config = _tiny_config(tmp_path, 'train.batch_size=12')  # 8 simulated devices
  with pytest.raises(ValueError, match='train.batch_size = 12 must be divisible'):
    training.train_and_evaluate(config, str(tmp_path / 'w'))


def test_compare_lists_each_seed_and_tests_each_config_against_the_first_paired():
  from scipy import stats  # pylint: disable=g-import-not-at-top

  control, treatment = [0.4, 0.5, 0.3], [0.6, 0.45, 0.7]
  summary = {
    name: {'runs': [{'seed': s, 'rare_recall': v} for s, v in enumerate(values)]}
    for name, values in (('base', control), ('care', treatment))
  }
  text = comparison.format_seeds(summary)
  assert '| 0 | 40.00 | 60.00 |' in text and '| 1 | 50.00 | 45.00 |' in text
  p = stats.ttest_rel(treatment, control).pvalue
  assert f'| care vs base | 3 | +18.33 | {p:.3g} | 2/3 |' in text


@pytest.mark.slow
def test_compare_tabulates_every_config_and_resumes(tmp_path):
  configs = [os.path.join(REPO, 'configs', f'synthetic_{n}.py') for n in ('baseline', 'care')]
  overrides = TINY_DATA + [f'data.dir={tmp_path / "tfds"}']
  workdir = str(tmp_path / 'cmp')
  summary = comparison.compare(configs, [0], workdir, overrides=overrides)
  assert list(summary) == ['synthetic_baseline', 'synthetic_care']
  table = open(os.path.join(workdir, 'summary.md')).read()
  assert '| synthetic_baseline |' in table and '| synthetic_care |' in table
  for name in summary:
    run = json.load(open(os.path.join(workdir, name, 'seed_0', 'metrics.json')))
    assert summary[name]['runs'][0]['rare_recall'] == run['test']['rare_recall']
  # A second call finds the metrics and does not train again.
  mtime = os.path.getmtime(os.path.join(workdir, 'synthetic_care', 'seed_0', 'metrics.json'))
  comparison.compare(configs, [0], workdir, overrides=overrides)
  assert (
    os.path.getmtime(os.path.join(workdir, 'synthetic_care', 'seed_0', 'metrics.json')) == mtime
  )
  # Different settings in the same workdir are refused, naming the key.
  with pytest.raises(ValueError, match=r'care\.lam'):
    comparison.compare(configs, [0], workdir, overrides=overrides + ['care.lam=0.1'])


def test_compare_fails_fast_on_a_missing_config(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.py'):
    comparison.compare(['configs/nope.py'], [0], str(tmp_path))
  with pytest.raises(FileNotFoundError, match="config 'nope' does not exist.*synthetic_care"):
    comparison.compare(['nope'], [0], str(tmp_path))


@pytest.mark.slow
def test_compare_command_takes_names_seed_ranges_and_config_overrides(tmp_path):
  overrides = TINY_DATA + [f'data.dir={tmp_path / "tfds"}', 'train.num_steps=2']
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'care_jax.commands.cli',
      'compare',
      f'--workdir={tmp_path / "cmp"}',
      '--configs=synthetic_baseline',
      '--seeds=0-0',
      *[f'--config.{o}' for o in overrides[:-1]],
      '--set=train.num_steps=2',  # the deprecated spelling still works, with a warning
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '--set=KEY=VALUE is deprecated' in proc.stderr
  metrics = json.load(open(tmp_path / 'cmp' / 'synthetic_baseline' / 'seed_0' / 'metrics.json'))
  assert metrics['step'] == 2
  config = json.load(open(tmp_path / 'cmp' / 'synthetic_baseline' / 'seed_0' / 'config.json'))
  assert config['data']['image_size'] == 32
  assert '| synthetic_baseline |' in proc.stdout


@pytest.mark.parametrize(
  'command, flag, source',
  [
    ('train', '--workdir', 'care_jax/commands/train.py'),
    ('compare', '--workdir', 'care_jax/commands/compare.py'),
    ('experiments', '--suite', 'care_jax/commands/experiments.py'),
    ('visualize', '--num_images', 'care_jax/commands/visualize.py'),
    ('boxes', '--method', 'care_jax/commands/boxes.py'),
    ('predict', '--attention_dir', 'care_jax/commands/predict.py'),
    ('evaluate', '--split', 'care_jax/commands/evaluate.py'),
    ('export', '--platforms', 'care_jax/commands/export.py'),
  ],
)
def test_care_jax_command_help_shows_the_subcommands_flags_and_exits_0(command, flag, source):
  proc = subprocess.run(
    [sys.executable, '-m', 'care_jax.commands.cli', command, '--helpshort'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert flag in proc.stdout
  assert source in proc.stdout


def test_care_jax_command_without_a_subcommand_prints_usage():
  proc = subprocess.run(
    [sys.executable, '-m', 'care_jax.commands.cli', 'fly'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert "unknown command 'fly'" in proc.stderr and 'usage: care-jax COMMAND' in proc.stderr
  assert all(f'  {command} ' in proc.stderr for command in cli.COMMANDS)


@pytest.mark.parametrize('name', list(config_lib.packaged_configs()))
def test_every_config_file_loads_and_validates(name):
  config = config_lib.load_config(os.path.join(REPO, 'configs', f'{name}.py'))
  config_lib.validate(config)
  assert set(config.keys()) == set(config_lib.default_config().keys())


@pytest.mark.slow
def test_training_compiles_each_step_once(tmp_path, monkeypatch):
  traces = {'train': 0, 'eval': 0}
  make_train, make_eval = training.make_train_step, training.make_eval_step

  def counting(kind, make):
    def wrapped(*args, **kwargs):
      step = make(*args, **kwargs)

      def traced(*a):
        traces[kind] += 1  # Python runs only while jax traces the step.
        return step(*a)

      return traced

    return wrapped

  # The loop builds its steps through care_jax.training.step.
  monkeypatch.setattr(step_lib, 'make_train_step', counting('train', make_train))
  monkeypatch.setattr(step_lib, 'make_eval_step', counting('eval', make_eval))
  # Stage switch at step 3 and evaluations in between: still one compilation each.
  config = _tiny_config(tmp_path, 'care.start_step=3', 'train.eval_every_steps=2')
  training.train_and_evaluate(config, str(tmp_path / 'w'))
  assert traces == {'train': 1, 'eval': 1}


@pytest.mark.slow
def test_bfloat16_training_converges_like_float32(tmp_path):
  curves = {}
  for dtype in ('float32', 'bfloat16'):
    config = _tiny_config(
      tmp_path, f'dtype={dtype}', 'train.num_steps=40', 'train.log_every_steps=5'
    )
    training.train_and_evaluate(config, str(tmp_path / dtype))
    curves[dtype] = [json.loads(line)['ce'] for line in open(tmp_path / dtype / 'train_log.jsonl')]
  bf16, f32 = np.array(curves['bfloat16']), np.array(curves['float32'])
  assert bf16[-2:].mean() < 0.6 * bf16[:2].mean(), bf16  # it learns
  np.testing.assert_allclose(bf16, f32, atol=0.15)  # and tracks the float32 run
