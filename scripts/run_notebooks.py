"""Runs the notebooks at their full settings and stores their outputs, small, in the notebooks.

    .venv/bin/python scripts/run_notebooks.py                # all of notebooks/*.ipynb
    .venv/bin/python scripts/run_notebooks.py quickstart     # one (about 10 minutes on 2 cores)
    .venv/bin/python scripts/run_notebooks.py --shrink-only  # re-encode the stored figures only

Each notebook runs top to bottom in a fresh kernel of this Python, in a temporary working directory
(its runs and data are thrown away), with the checkout's `care_jax` importable (the install cell
does not pip). The outputs kept are what a reader needs on GitHub: printed text and figures.
Progress bars and log lines (stderr), widget states and execution timings are dropped, and
figures are stored as PNGs re-encoded with at most 256 colours (a third of the size or less, the
same picture to the eye). A cell error stops the script and stores nothing.
CI runs the notebooks at their smoke settings (tests/integration/notebooks_test.py) and checks
what is stored.
"""

import base64
import io
import os
import pathlib
import sys
import tempfile

import nbclient
import nbformat
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / 'notebooks'
CELL_TIMEOUT_S = 3600


def _kernel_env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ('CARE_JAX_SMOKE', 'XLA_FLAGS')}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')]))
  return env


def _keep(output: nbformat.NotebookNode) -> bool:
  if output.output_type == 'stream':
    return output.name == 'stdout'
  return output.output_type in ('display_data', 'execute_result')


def _small_png(data: str) -> str:
  """A base64 PNG re-encoded with a palette of at most 256 colours, when that is smaller."""
  raw = base64.b64decode(data)
  image = Image.open(io.BytesIO(raw))
  # Fast octree is the quantiser PIL offers for RGBA too (matplotlib draws RGBA).
  image = image.quantize(256, method=Image.Quantize.FASTOCTREE)
  buffer = io.BytesIO()
  image.save(buffer, format='PNG', optimize=True)
  small = buffer.getvalue()
  return base64.b64encode(small).decode('ascii') + '\n' if len(small) < len(raw) else data


def _small(output: nbformat.NotebookNode) -> nbformat.NotebookNode:
  if 'data' in output:
    # A figure's PNG, or text; no widget views (they need the live kernel).
    output.data = {
      k: v for k, v in output.data.items() if k in ('image/png', 'text/plain', 'text/markdown')
    }
    if 'image/png' in output.data:
      output.data['image/png'] = _small_png(output.data['image/png'])
  return output


def _write(nb: nbformat.NotebookNode, path: pathlib.Path) -> None:
  nbformat.validate(nb)
  nbformat.write(nb, path)
  print(f'{path.relative_to(REPO)}: {path.stat().st_size / 1e3:.0f} kB')


def run(name: str) -> None:
  path = NOTEBOOKS / f'{name}.ipynb'
  nb = nbformat.read(path, as_version=4)
  with tempfile.TemporaryDirectory() as cwd:
    client = nbclient.NotebookClient(
      nb,
      kernel_name='python3',
      timeout=CELL_TIMEOUT_S,
      resources={'metadata': {'path': cwd}},
      record_timing=False,
    )
    client.execute(env=_kernel_env())
  for cell in nb.cells:
    if cell.cell_type == 'code':
      cell.outputs = [_small(o) for o in cell.outputs if _keep(o)]
      cell.metadata.pop('execution', None)
  nb.metadata.pop('widgets', None)
  _write(nb, path)


def shrink(name: str) -> None:
  path = NOTEBOOKS / f'{name}.ipynb'
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      cell.outputs = [_small(o) for o in cell.outputs]
  _write(nb, path)


def main(args: list[str]) -> None:
  step = shrink if '--shrink-only' in args else run
  names = [a for a in args if a != '--shrink-only']
  for name in names or sorted(p.stem for p in NOTEBOOKS.glob('*.ipynb')):
    step(name)


if __name__ == '__main__':
  main(sys.argv[1:])
