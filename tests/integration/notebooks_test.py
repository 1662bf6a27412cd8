"""The notebooks in notebooks/ run top to bottom, as CI runs them (CARE_JAX_SMOKE=1).

Each notebook is executed with nbclient in a fresh 'python3' kernel started from this
interpreter (jupyter_client runs a kernelspec's `python` as `sys.executable`), with the
working directory a temporary directory, so the runs and data they write stay there. Any
cell error fails the test.
"""

import json
import os
import pathlib
import re
import sys

import nbclient
import nbformat
import pytest

import care_jax
from tests.helpers import paths

NOTEBOOKS = paths.REPO / 'notebooks'
NAMES = ('quickstart', 'care_loss', 'own_data')
# Figures each notebook draws: the map, its gradient and the tau sweep in care_loss; the data,
# the training curves, the metrics and the attention maps in the others.
IMAGES = {'care_loss': 3, 'quickstart': 5, 'own_data': 7}
CELL_TIMEOUT_S = 600
BADGE = (
  '[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]'
  '(https://colab.research.google.com/github/care-jax/care-jax/blob/main/notebooks/{}.ipynb)'
)


def _kernel_env() -> dict[str, str]:
  env = dict(os.environ, CARE_JAX_SMOKE='1', TF_CPP_MIN_LOG_LEVEL='2')
  # conftest.py simulates 8 CPU devices for the multi-device tests; a notebook user has one.
  env['XLA_FLAGS'] = ' '.join(
    f
    for f in env.get('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
  )
  # The checkout's package, also where it is not installed (the install cell must not pip).
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(paths.REPO), env.get('PYTHONPATH')]))
  return env


def _execute(nb: nbformat.NotebookNode, cwd: pathlib.Path) -> nbformat.NotebookNode:
  client = nbclient.NotebookClient(
    nb, kernel_name='python3', timeout=CELL_TIMEOUT_S, resources={'metadata': {'path': str(cwd)}}
  )
  client.execute(env=_kernel_env())  # Raises CellExecutionError on the first failing cell.
  return nb


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOKS / f'{name}.ipynb', as_version=4)


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == 'code']


def _outputs(nb, output_type=None):
  return [
    o
    for c in _code_cells(nb)
    for o in c.outputs
    if output_type is None or o.output_type == output_type
  ]


def _images(nb) -> int:
  return sum('image/png' in o.get('data', {}) for o in _outputs(nb))


def _text(nb) -> str:
  return ''.join(o.get('text', '') for o in _outputs(nb, 'stream'))


@pytest.mark.parametrize('name', NAMES)
def test_notebook_is_a_clean_colab_notebook(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  assert nb.metadata.kernelspec.name == 'python3'
  assert BADGE.format(name) in nb.cells[0].source
  install, params = _code_cells(nb)[:2]
  # Installs a release tag of the repository, only where care_jax is missing.
  release = care_jax.__version__.split('.dev')[0]
  assert install.source.startswith(f'# Installs care-jax {release} ')
  assert 'except ImportError:' in install.source
  assert f'git+https://github.com/care-jax/care-jax@v{release}"' in install.source
  assert params.metadata.get('tags') == ['parameters']
  assert "os.environ.get('CARE_JAX_SMOKE') == '1'" in params.source


@pytest.mark.parametrize('name', NAMES)
def test_notebook_stores_the_small_outputs_of_a_clean_full_run(name):
  # scripts/run_notebooks.py: what a reader on GitHub sees, the figures included.
  nb = _read(name)
  assert (NOTEBOOKS / f'{name}.ipynb').stat().st_size < 1_000_000
  assert _images(nb) == IMAGES[name]
  assert not _outputs(nb, 'error')
  assert all(o.name == 'stdout' for o in _outputs(nb, 'stream')), 'progress bars or logs stored'
  assert not any(
    'application/vnd.jupyter.widget-view+json' in o.get('data', {}) for o in _outputs(nb)
  )
  counts = [c.execution_count for c in _code_cells(nb)]
  assert counts == list(range(1, len(counts) + 1)), 'not one clean run top to bottom'
  assert 'CARE_JAX_SMOKE' not in _text(nb)


def test_kernel_runs_this_python():
  nb = nbformat.v4.new_notebook(
    cells=[
      nbformat.v4.new_code_cell(
        'import json, os, sys\n'
        "print(json.dumps([sys.executable, os.environ.get('CARE_JAX_SMOKE')]))"
      )
    ]
  )
  executable, smoke = json.loads(_text(_execute(nb, paths.REPO)))
  assert executable == sys.executable
  assert smoke == '1'


def test_care_loss_notebook_runs_and_checks_the_loss_by_hand(tmp_path):
  nb = _execute(_read('care_loss'), tmp_path)
  assert not _code_cells(nb)[0].outputs, 'the install cell ran pip'
  text = _text(nb)
  # The numpy recomputation agrees with care_loss and jax.grad (the cells assert it too).
  by_hand, library = map(
    float, re.search(r'L_in \+ lam \* L_out = (\S+)\s+care_loss = (\S+)', text).groups()
  )
  assert by_hand == pytest.approx(library, abs=1e-5)
  grad_error = float(re.search(r'max \|jax.grad - by hand\| = (\S+)', text).group(1))
  assert grad_error < 1e-5
  assert 'no box      : loss = +0.000000, |grad| = 0.000000, finite: True' in text
  assert _images(nb) == IMAGES['care_loss']


@pytest.mark.slow
def test_quickstart_notebook_trains_both_runs_and_shows_the_figures(tmp_path):
  nb = _execute(_read('quickstart'), tmp_path)
  for run in ('baseline', 'care'):
    metrics = json.loads((tmp_path / 'runs/quickstart' / run / 'metrics.json').read_text())
    assert metrics['step'] == 6
  assert (
    json.loads((tmp_path / 'runs/quickstart/care/config.json').read_text())['care']['alpha'] == 0.5
  )
  assert (
    json.loads((tmp_path / 'runs/quickstart/baseline/config.json').read_text())['care']['alpha']
    == 0.0
  )
  # The data examples, then attention, confusion, recall and training curves.
  assert _images(nb) == IMAGES['quickstart']
  assert re.search(r'^baseline .*%\n^CARE .*%', _text(nb), re.M)


@pytest.mark.slow
def test_own_data_notebook_trains_on_the_folder_it_writes(tmp_path):
  nb = _execute(_read('own_data'), tmp_path)
  data_dir = tmp_path / 'my_lesions'
  labels = (data_dir / 'labels.csv').read_text().splitlines()
  boxes = (data_dir / 'boxes.csv').read_text().splitlines()
  assert labels[0] == 'image,label,split' and len(labels) == 1 + 5 * 6 + 5 * 2
  # Every image of the two rare classes, in both splits, has one box.
  assert boxes[0] == 'image,xmin,ymin,xmax,ymax' and len(boxes) == 1 + 2 * 6 + 2 * 2
  metrics = json.loads((tmp_path / 'runs/own_data/care/metrics.json').read_text())
  assert metrics['step'] == 6
  assert metrics['rare_classes'] == ['dotted', 'striped']
  assert sum(sum(row) for row in metrics['test']['confusion']) == 10
  # The example images, five figures, the attention of one predicted file.
  assert _images(nb) == IMAGES['own_data']
