"""Test session set-up: 8 simulated CPU devices, a shared compilation cache, the test tiers.

* The device flag must be set before jax initialises its backends, hence in conftest.
* Many tests compile the same small programs (a tiny CNN's step, in one process or in the
  command-line runs they start): jax's persistent compilation cache, shared by the pytest
  workers and the processes they start, compiles each once per session. It lives in
  ``.cache/jax-tests`` of the clone (kept between local runs; a fresh clone starts empty), and
  the cached programs are those jax would compile: a hit returns the same executable.
* Every test under ``tests/integration/`` (several layers together) and ``tests/benchmarks/`` (the
  scripts of benchmarks/, run as programs) is marked ``integration``; ``scripts/test.sh --fast``
  leaves those and the ``slow`` ones out. The files with ``slow`` tests run first (the workers
  end on short tests).
* Session fixtures that several test files share: the torch environment of the parity tests
  (``torch_python``, ``torch_exports``), a short run trained on a folder dataset
  (``folder_run``) and one trained by the ``care-jax train`` command (``care_jax_train_run``);
  their code is in ``tests/helpers/``.
* The 25 slowest tests of a run (setup and call) are written to ``test-durations.txt``, which CI
  prints.
"""

import fcntl
import os
import pathlib

import pytest

from tests.helpers.paths import REPO

DURATIONS_FILE = REPO / 'test-durations.txt'
SLOWEST = 25

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  ).strip()
# TensorFlow only feeds data: keep it off accelerators and quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(REPO / '.cache' / 'jax-tests'))
# Every program, however fast it compiles: the small ones are the ones the tests repeat.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

# A script run by path under a separate torch venv (tests/helpers/torch_venv.py), not a test
# module (and not importable here: no torch in the JAX environment).
collect_ignore = [
  'helpers/torch_reference.py',
  'helpers/torch_convnet_reference.py',
  'helpers/torch_vit_reference.py',
  'helpers/torchvision_import.py',
]


@pytest.fixture(scope='session')
def torch_python() -> pathlib.Path:
  """The Python of .torch-venv (3.11, torch 2.13.0 CPU, safetensors, numpy), made once.

  tests/helpers/torch_venv.py makes and caches it (skipping, outside CI, where no Python 3.11
  exists); the lock serialises pytest-xdist workers.
  """
  from tests.helpers import torch_venv  # pylint: disable=g-import-not-at-top

  torch_venv.TORCH_VENV.mkdir(exist_ok=True)
  with open(torch_venv.TORCH_VENV / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    return torch_venv.torch_venv_python()


@pytest.fixture(scope='session')
def torch_exports(torch_python) -> pathlib.Path:
  """tests/helpers/torch_reference.py's outputs (PyTorch weights, inputs, logits), cached."""
  from tests.helpers import torch_venv  # pylint: disable=g-import-not-at-top

  return torch_venv.torch_exports(torch_python)


@pytest.fixture(scope='session')
def folder_run(tmp_path_factory):
  """A 6-step run on a small folder dataset (tests/helpers/folder_run.py), trained once."""
  # Imported here: jax and TensorFlow must load after the settings above.
  from tests.helpers import folder_run as folder_run_lib  # pylint: disable=g-import-not-at-top

  return folder_run_lib.train(tmp_path_factory)


@pytest.fixture(scope='session')
def care_jax_train_run(tmp_path_factory):
  """`care-jax train --config=synthetic_care` on tiny data, run once as a user runs it."""
  from tests.helpers import command_line  # pylint: disable=g-import-not-at-top

  return command_line.train_synthetic_care(tmp_path_factory.mktemp('care_jax_train'))


def pytest_collection_modifyitems(config, items):
  del config  # Unused.
  integrated = (REPO / 'tests' / 'integration', REPO / 'tests' / 'benchmarks')
  for item in items:
    if any(folder in pathlib.Path(str(item.path)).parents for folder in integrated):
      item.add_marker(pytest.mark.integration)
  # The files with slow tests first: pytest-xdist hands the tests out in this order, so the
  # long ones start early and the short ones fill the end of the run, instead of one long test
  # keeping a worker busy while the other has nothing left. Each file stays in one piece (its
  # module fixtures are made once) and in its order.
  slow_files = {item.path for item in items if item.get_closest_marker('slow')}
  items.sort(key=lambda item: item.path not in slow_files)


_durations: dict[str, float] = {}


def pytest_runtest_logreport(report):
  # On the controller of a pytest-xdist run, the reports of every worker arrive here.
  if report.when in ('setup', 'call'):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
  if hasattr(session.config, 'workerinput') or not _durations:
    return  # A worker: the controller writes the file.
  slowest = sorted(_durations.items(), key=lambda item: -item[1])[:SLOWEST]
  lines = [f'{seconds:8.2f}s  {nodeid}' for nodeid, seconds in slowest]
  total = sum(_durations.values())
  header = (
    f'# The {len(slowest)} slowest of {len(_durations)} tests (setup + call); all: {total:.0f} s'
  )
  DURATIONS_FILE.write_text('\n'.join([header, *lines]) + '\n')
