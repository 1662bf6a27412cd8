"""Test session set-up: 8 simulated CPU devices, a shared compilation cache, the test tiers.

* The device flag must be set before jax initialises its backends, hence in conftest.
* Many tests compile the same small programs (a tiny CNN's step, in one process or in the
  command-line runs they start): jax's persistent compilation cache, shared by the pytest
  workers and the processes they start, compiles each once per session. It lives in
  ``.cache/jax-tests`` of the clone (kept between local runs; a fresh clone starts empty), and
  the cached programs are those jax would compile: a hit returns the same executable.
* Every test under ``tests/integration/`` is marked ``integration``; ``scripts/test.sh --fast``
  leaves those and the ``slow`` ones out.
* The 25 slowest tests of a run (setup and call) are written to ``test-durations.txt``, which CI
  prints.
"""

import fcntl
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
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

# A script run under a separate torch venv by pretrained_test.py, not a test
# module (and not importable here: no torch in the JAX environment).
collect_ignore = ['torch_reference.py']


@pytest.fixture(scope='session')
def torch_python() -> pathlib.Path:
  """The Python of .torch-venv (3.11, torch 2.13.0 CPU, safetensors, numpy), made once.

  pretrained_test.py's helpers make and cache it (skipping, outside CI, where no Python 3.11
  exists); the lock serialises pytest-xdist workers.
  """
  import pretrained_test  # pylint: disable=g-import-not-at-top

  pretrained_test.TORCH_VENV.mkdir(exist_ok=True)
  with open(pretrained_test.TORCH_VENV / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    return pretrained_test._torch_venv_python()  # pylint: disable=protected-access


def pytest_collection_modifyitems(config, items):
  del config  # Unused.
  integration = REPO / 'tests' / 'integration'
  for item in items:
    if integration in pathlib.Path(str(item.path)).parents:
      item.add_marker(pytest.mark.integration)


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
