"""Tests for benchmarks/vs_pytorch.py and its PyTorch side, benchmarks/torch_care_step.py.

The report test recomputes the ratios from given timings. The others need the torch 2.13.0 venv
(``torch_python``, tests/conftest.py; skipped only where it cannot be made): with identical
weights, in float64, our CARE step's losses and gradients equal torch's vectorised step's, whose
losses equal the official per-image loop's and whose gradients equal the official ones minus the
leak of its extra backward pass; and the whole benchmark runs with tiny settings.
"""

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import paths
from tests.helpers import torch_venv

BENCHMARKS = paths.REPO / 'benchmarks'
BENCHMARK = BENCHMARKS / 'vs_pytorch.py'
TORCH_SCRIPT = BENCHMARKS / 'torch_care_step.py'
ROW = re.compile(r'^((?:ours|torch) [A-Za-z ]+?)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)$')
LAST_LINE = re.compile(r'^official overhead / our overhead: (\d+\.\d{3})$')


def _load_benchmark():
  sys.path.insert(0, str(BENCHMARKS))  # for its `import _common`
  spec = importlib.util.spec_from_file_location('vs_pytorch', BENCHMARK)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(command: list, timeout: float, expect_failure: bool = False):
  # One torch thread where the script leaves torch its default (the checks): values, not times.
  env = dict(torch_venv.one_thread_environment(), TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('XLA_FLAGS', None)  # one CPU device, as a user runs it (not conftest's 8)
  result = subprocess.run(
    [str(c) for c in command],
    capture_output=True,
    text=True,
    env=env,
    cwd=paths.REPO,
    timeout=timeout,
    check=False,
  )
  if bool(result.returncode) != expect_failure:
    pytest.fail(
      f'{command} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    )
  return result


def _rows(output: str) -> dict[str, tuple[float, float, float]]:
  return {
    m.group(1): tuple(float(x) for x in m.groups()[1:])
    for m in map(ROW.match, output.splitlines())
    if m
  }


def test_report_ends_with_the_overhead_ratio_of_the_median_times():
  benchmark = _load_benchmark()
  times = {
    'ours CE': [2.0, 1.0, 3.0],
    'ours CARE': [2.2, 1.1, 9.0],
    'torch CE': [1.0, 1.5, 0.5],
    'torch CARE official': [1.6, 1.7, 1.5],
    'torch CARE vectorised': [1.05, 1.1, 1.0],
  }
  args = benchmark.argparse.Namespace(
    model='resnet18',
    head='linear',
    image_size=64,
    batch=4,
    dtype='float32',
    num_classes=7,
    alpha=0.5,
    repeats=3,
    warmup=1,
    torch_malloc='same',
  )
  text = benchmark.report(
    times, args=args, boxed=1, torch_info={'torch': 'x', 'threads': 2, 'device': 'cpu'}
  )

  rows = _rows(text)
  assert list(rows) == list(benchmark.ROWS)
  assert rows['ours CARE'] == (2.2, 1.1, 1.1)  # median, min, median / our CE median
  assert rows['torch CARE official'] == (1.6, 1.5, 1.6)
  # (1.6 / 1.0) / (2.2 / 2.0) from the medians; (1.5 / 0.5) / (1.1 / 1.0) from the minimums.
  assert text.splitlines()[-1] == 'official overhead / our overhead: 1.455'
  assert 'official overhead / our overhead, from the minimums: 2.727' in text
  assert 'our CE step / torch CE step: 2.000' in text
  # The torch process's glibc settings are named: ours when this process keeps freed memory.
  keeps = benchmark._common.KEEPS_FREED_MEMORY  # pylint: disable=protected-access
  expected = 'as ours (MALLOC_ARENA_MAX=1 ' if keeps else "glibc's defaults"
  assert f'glibc malloc settings: {expected}' in text


def test_missing_torch_venv_explains_how_to_make_it(tmp_path):
  missing = tmp_path / 'nope' / 'python'
  result = _run(
    [sys.executable, BENCHMARK, '--torch-python', missing], timeout=120, expect_failure=True
  )
  assert str(missing) in result.stderr
  assert 'python3.11 -m venv .torch-venv' in result.stderr
  assert "pip install torch==2.13.0 'torchvision==0.28.*' safetensors numpy" in result.stderr


@pytest.mark.parametrize('head', ['linear', 'bn_linear'])
def test_vectorised_torch_step_matches_the_official_per_image_loop(torch_python, tmp_path, head):
  rng = np.random.default_rng(0)
  mask = np.zeros((4, 64, 64), np.float32)
  mask[0, 5:30, 10:20] = mask[1, 40:60, 30:64] = 1.0
  data = tmp_path / 'batch.npz'
  np.savez(
    data,
    image=rng.standard_normal((4, 64, 64, 3), np.float32),
    label=np.array([0, 3, 1, 2], np.int32),
    mask=mask,
    has_mask=np.array([True, True, False, False]),
  )
  result = _run(
    [
      torch_python,
      TORCH_SCRIPT,
      '--check',
      '--data',
      data,
      '--model',
      'resnet18',
      '--head',
      head,
      '--num-classes',
      '5',
    ],
    timeout=300,
  )
  check = json.loads(result.stdout.splitlines()[-1])

  assert check['boxed'] == 2
  assert check['official_care_loss'] != 0.0
  assert check['vectorised_care_loss'] == pytest.approx(check['official_care_loss'], rel=1e-12)
  assert check['vectorised_total_loss'] == pytest.approx(check['official_total_loss'], rel=1e-12)
  # The official gradients are the vectorised ones plus d(sum target logits)/d(theta), and that
  # leak is not small.
  assert check['max_grad_diff_with_leak'] < 1e-10
  assert check['max_grad_diff_without_leak'] > 1e-2


def test_our_care_step_matches_torch_with_identical_weights(torch_python, tmp_path):
  report = tmp_path / 'check.json'
  result = _run(
    [
      sys.executable,
      BENCHMARK,
      '--check',
      '--model',
      'resnet18',
      '--image-size',
      '64',
      '--batch',
      '6',
      '--num-classes',
      '5',
      '--torch-python',
      torch_python,
      '--json',
      report,
    ],
    timeout=600,
  )
  check = json.loads(report.read_text())

  assert result.stdout.splitlines()[-1].startswith('check passed')
  assert check['boxed'] == 2  # round(0.33 * 6)
  assert check['official_care_loss'] != 0.0
  # The official code's loss (lam 1, summed over the boxed images) and the plain CE.
  assert check['ours_care_loss'] == pytest.approx(check['official_care_loss'], rel=1e-9)
  assert check['ours_total_loss'] == pytest.approx(check['official_total_loss'], rel=1e-6)
  assert check['ours_ce_loss'] == pytest.approx(check['ce_loss'], rel=1e-6)
  assert check['max_grad_diff_ours_vs_vectorised'] < 1e-6


@pytest.mark.slow  # compiles two ResNet-18 steps: about a minute
def test_benchmark_with_tiny_settings_reports_positive_times(torch_python):
  result = _run(
    [
      sys.executable,
      BENCHMARK,
      '--model',
      'resnet18',
      '--image-size',
      '64',
      '--batch',
      '2',
      '--repeats',
      '1',
      '--warmup',
      '0',
      '--torch-python',
      torch_python,
    ],
    timeout=600,
  )
  lines = result.stdout.strip().splitlines()

  rows = _rows(result.stdout)
  assert set(rows) == {
    'ours CE',
    'ours CARE',
    'torch CE',
    'torch CARE official',
    'torch CARE vectorised',
  }
  assert all(value > 0 for row in rows.values() for value in row)
  assert rows['ours CE'][2] == rows['torch CE'][2] == 1.0
  last = LAST_LINE.match(lines[-1])
  assert last, lines[-1]
  # Recomputed from the printed medians (4 decimals), so only close.
  expected = (rows['torch CARE official'][0] / rows['torch CE'][0]) / (
    rows['ours CARE'][0] / rows['ours CE'][0]
  )
  assert float(last.group(1)) == pytest.approx(expected, rel=0.05)
