"""The torch environment of the parity tests: a Python 3.11 venv with torch, and its exports.

`torch_venv_python` makes (once, cached in .torch-venv/) a venv with torch 2.13.0 CPU,
torchvision 0.28 and timm (their pure-Python models), safetensors and numpy; `torch_exports`
runs tests/helpers/torch_reference.py (or another reference script) there (by path) and caches
its outputs. The comparisons run in the test's own environment, without torch.
tests/conftest.py serves both as session fixtures (`torch_python`, `torch_exports`).
"""

import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import struct
import subprocess

import ml_dtypes
import numpy as np
import pytest

from tests.helpers import paths

TORCH_VENV = paths.REPO / '.torch-venv'
TORCH_REQUIREMENTS = (
  'torch==2.13.0',
  'torchvision==0.28.*',
  'timm==1.0.31',
  'safetensors',
  'numpy',
)
# Scripts, run by path under the torch venv (not importable here: no torch).
REFERENCE_SCRIPT = pathlib.Path(__file__).with_name('torch_reference.py')
# torchvision's and timm's own ConvNeXt and EfficientNet (tests/models/convnext_test.py, ...).
CONVNET_REFERENCE_SCRIPT = pathlib.Path(__file__).with_name('torch_convnet_reference.py')
# torchvision's ViT-B/16, timm's ViT-B/16 and DeiT-S/16 (tests/models/vit_parity_test.py).
VIT_REFERENCE_SCRIPT = pathlib.Path(__file__).with_name('torch_vit_reference.py')
# The scripts another script imports: their text is part of its exports' cache key.
TORCHVISION_IMPORT = pathlib.Path(__file__).with_name('torchvision_import.py')
_SCRIPT_IMPORTS = {
  REFERENCE_SCRIPT: (TORCHVISION_IMPORT,),
  CONVNET_REFERENCE_SCRIPT: (TORCHVISION_IMPORT,),
  VIT_REFERENCE_SCRIPT: (CONVNET_REFERENCE_SCRIPT, TORCHVISION_IMPORT),
}


_SAFETENSORS_DTYPE_NAMES = {
  np.dtype(np.float64): 'F64',
  np.dtype(np.float32): 'F32',
  np.dtype(np.float16): 'F16',
  np.dtype(ml_dtypes.bfloat16): 'BF16',
  np.dtype(np.int64): 'I64',
}


def write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray], metadata=None) -> None:
  """The safetensors format from its spec: u64 LE header size, JSON header (space-padded), data."""
  header = {'__metadata__': metadata} if metadata else {}
  chunks, offset = [], 0
  for name, array in tensors.items():
    raw = np.ascontiguousarray(array).tobytes()  # this machine is little-endian, as the format
    header[name] = {
      'dtype': _SAFETENSORS_DTYPE_NAMES[array.dtype],
      'shape': list(array.shape),
      'data_offsets': [offset, offset + len(raw)],
    }
    chunks.append(raw)
    offset += len(raw)
  header_bytes = json.dumps(header).encode()
  header_bytes += b' ' * (-len(header_bytes) % 8)
  path.write_bytes(struct.pack('<Q', len(header_bytes)) + header_bytes + b''.join(chunks))


def assert_close_to_torch(ours, reference: np.ndarray) -> None:
  """1e-4 relative error, measured against the reference's largest magnitude."""
  np.testing.assert_allclose(
    np.asarray(ours), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max()
  )


def one_thread_environment() -> dict[str, str]:
  """This process's environment with one OpenMP thread, for torch's runs in the tests.

  The suite runs on two pytest-xdist workers per two cores: a torch process with two threads
  shares its cores with the other worker, and torch's threads spin-wait for each other (a
  check run of benchmarks/torch_care_step.py took 9.7 s of CPU with two threads, 5.9 s with
  one, on a loaded 2-core machine). The tests compare values, not times.
  """
  return dict(os.environ, OMP_NUM_THREADS='1')


def _ci() -> bool:
  return os.environ.get('CI', '').lower() not in ('', '0', 'false')


def run(command: list, **kwargs) -> None:
  """Runs `command`; fails the test with the end of its output if it fails."""
  result = subprocess.run(
    [str(part) for part in command], capture_output=True, text=True, check=False, **kwargs
  )
  if result.returncode:
    pytest.fail(
      f'{" ".join(map(str, command))} exited {result.returncode}:\n'
      f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    )


def _find_python311() -> tuple[str, dict[str, str]] | None:
  """pyenv's first 3.11 (PYENV_VERSION=... python3.11), else a python3.11 on PATH."""
  environments = []
  if shutil.which('pyenv'):
    versions = subprocess.run(
      ['pyenv', 'versions', '--bare'], capture_output=True, text=True, check=False
    ).stdout.split()
    version = next((v for v in versions if v.startswith('3.11')), None)
    if version:
      environments.append({**os.environ, 'PYENV_VERSION': version})
  environments.append(dict(os.environ))
  for env in environments:
    python = shutil.which('python3.11', path=env.get('PATH'))
    check = [python, '-c', 'import sys; assert sys.version_info[:2] == (3, 11)'] if python else None
    if check and subprocess.run(check, env=env, capture_output=True, check=False).returncode == 0:
      return python, env
  return None


def torch_venv_python() -> pathlib.Path:
  """.torch-venv/bin/python with torch 2.13.0 (pip takes this machine's local CPU wheel)."""
  python = TORCH_VENV / 'bin' / 'python'
  marker = TORCH_VENV / '.installed'
  if python.exists() and marker.is_file() and marker.read_text() == ' '.join(TORCH_REQUIREMENTS):
    return python
  found = _find_python311()
  if found is None:
    message = 'No Python 3.11 (pyenv or python3.11 on PATH) for the torch 2.13.0 reference venv.'
    if _ci():
      pytest.fail(message)
    pytest.skip(message)
  python311, env = found
  run([python311, '-m', 'venv', TORCH_VENV], env=env)
  run([python, '-m', 'pip', 'install', '--quiet', *TORCH_REQUIREMENTS])
  marker.write_text(' '.join(TORCH_REQUIREMENTS))
  return python


def torch_exports(
  torch_python: pathlib.Path, script: pathlib.Path = REFERENCE_SCRIPT, *, args: tuple[str, ...] = ()
) -> pathlib.Path:
  """``script``'s outputs, cached under .torch-venv/exports/<hash of the script>/ (the
  torch_reference.py default) or .torch-venv/exports_<script name>[_<args>]/<hash>/; ``args``
  go to the script after its output directory (e.g. the models it exports)."""
  sources = (script, *_SCRIPT_IMPORTS.get(script, ()))
  digest = hashlib.sha256(b''.join(path.read_bytes() for path in sources)).hexdigest()[:16]
  root = 'exports' if script == REFERENCE_SCRIPT else '_'.join((f'exports_{script.stem}', *args))
  exports = TORCH_VENV / root / digest
  TORCH_VENV.mkdir(exist_ok=True)
  with open(TORCH_VENV / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers share the venv and the exports
    if not (exports / 'manifest.json').is_file():
      partial = exports.with_name(f'{digest}.partial')
      shutil.rmtree(partial, ignore_errors=True)
      run([torch_python, script, partial, *args], env=one_thread_environment())
      for stale in exports.parent.iterdir():  # exports of older scripts: ~1.3 GB each
        if stale != partial:
          shutil.rmtree(stale)
      partial.rename(exports)
  return exports
