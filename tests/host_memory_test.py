"""host_memory.keep_freed_memory: XLA's CPU steps stop page-faulting their scratch memory.

Each behaviour runs in a fresh Python (the settings must precede jax's threads, and they last
for the process), counting the minor page faults of 16 calls of one jitted function whose
scratch buffer (a 64 MB intermediate product) is far above glibc's ``mmap`` threshold. By
default every call faults the buffer's 16,384 pages in again. With the settings the heap grows
over the first calls until a call's allocations fit in it; after that most calls fault nothing,
though a call may still move a block (more often on a loaded machine), so the tests count the
calls among the last ten that fault less than a tenth of the buffer.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from care_jax import host_memory

_SCRIPT = textwrap.dedent(
  """
  import json, resource, sys, warnings
  from care_jax import host_memory
  mode = sys.argv[1]
  result = {}
  if mode == 'before':
    result['kept'] = host_memory.keep_freed_memory()
  if mode == 'asked':
    result['kept'] = host_memory.keep_freed_memory_if_asked()
  import jax, jax.numpy as jnp
  # [4096, 4096] scratch (64 MB) from a rank-16 product: the buffer's size, not its FLOPs,
  # is what faults (1/60 of the work of x [4096, 1024], the same faults).
  x = jnp.ones((4096, 16), jnp.float32)
  f = jax.jit(lambda x: jnp.tanh(x @ x.T) @ x)
  jax.block_until_ready(f(x))
  if mode == 'after':
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      result['kept'] = host_memory.keep_freed_memory()
    result['warnings'] = [str(w.message) for w in caught]
  faults = []
  for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  result['faults'] = faults
  print(json.dumps(result))
  """
)
_PAGES = 64 * 2**20 // 4096  # The scratch buffer's pages of 4 KiB.


def _quiet_calls(result: dict) -> int:
  """How many of the last ten calls faulted less than a tenth of the scratch buffer in."""
  return sum(f < _PAGES // 10 for f in result['faults'][-10:])


def _run(mode: str, **env: str) -> dict:
  environment = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith('MALLOC_') and k not in ('XLA_FLAGS', host_memory.ENV_SWITCH)
  }
  environment.update(env)
  out = subprocess.run(
    [sys.executable, '-c', _SCRIPT, mode],
    env=environment,
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
  )
  return json.loads(out.stdout.splitlines()[-1])


needs_glibc = pytest.mark.skipif(host_memory._glibc() is None, reason='glibc only')  # pylint: disable=protected-access


@needs_glibc
def test_steps_page_fault_their_scratch_memory_at_every_call_by_default():
  assert _quiet_calls(_run('never')) == 0


@needs_glibc
def test_kept_freed_memory_is_reused_without_page_faults():
  result = _run('before')
  assert result['kept'] is True
  assert _quiet_calls(result) >= 4


@needs_glibc
def test_a_call_after_jax_started_changes_nothing_and_says_so():
  result = _run('after')
  assert result['kept'] is False
  assert len(result['warnings']) == 1 and 'before anything runs on jax' in result['warnings'][0]
  assert _quiet_calls(result) == 0


@needs_glibc
def test_the_commands_keep_freed_memory_only_when_the_environment_asks():
  assert _run('asked')['kept'] is False  # Off by default: it slows small models (docstring).
  assert _run('asked', CARE_JAX_KEEP_FREED_MEMORY='0')['kept'] is False
  asked = _run('asked', CARE_JAX_KEEP_FREED_MEMORY='1')
  assert asked['kept'] is True
  assert _quiet_calls(asked) >= 4


def test_a_bad_environment_switch_is_refused(monkeypatch):
  monkeypatch.setenv(host_memory.ENV_SWITCH, 'maybe')
  with pytest.raises(ValueError, match='CARE_JAX_KEEP_FREED_MEMORY must be 1 or 0'):
    host_memory.keep_freed_memory_if_asked()


def test_the_switch_off_wins_over_a_default_of_on(monkeypatch):
  monkeypatch.setenv(host_memory.ENV_SWITCH, '0')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert host_memory.keep_freed_memory_if_asked(default=True) is False


def test_environment_holds_the_same_settings_for_child_processes():
  assert host_memory.ENVIRONMENT == {
    'MALLOC_ARENA_MAX': '1',
    'MALLOC_MMAP_MAX_': '0',
    'MALLOC_TRIM_THRESHOLD_': str(2**62),
  }
