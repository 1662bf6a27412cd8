"""host_memory.keep_freed_memory: XLA's CPU steps stop page-faulting their scratch memory.

Each behaviour runs in a fresh Python (the settings must precede jax's threads, and they last
for the process), counting the minor page faults of 12 calls of one jitted function whose
scratch buffer (a 64 MB intermediate product) is far above glibc's ``mmap`` threshold. With the
settings the heap grows over the first few calls, until the frees and allocations of a call
fit in it, and then nearly stops (a call may still move a block): the last eight calls are
compared, by how many of them page-fault a scratch buffer's worth (16,384 pages) or more than
a tenth of one.
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
  keep = sys.argv[1]
  result = {}
  if keep == 'before':
    result['kept'] = host_memory.keep_freed_memory()
  import jax, jax.numpy as jnp
  x = jnp.ones((4096, 1024), jnp.float32)
  f = jax.jit(lambda x: jnp.tanh(x @ x.T) @ x)  # [4096, 4096] scratch: 64 MB
  jax.block_until_ready(f(x))
  if keep == 'after':
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      result['kept'] = host_memory.keep_freed_memory()
    result['warnings'] = [str(w.message) for w in caught]
  faults = []
  for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  result['faults'] = faults
  print(json.dumps(result))
  """
)


_PAGES = 64 * 2**20 // 4096  # The scratch buffer's pages of 4 KiB.


def _faulting_calls(result: dict) -> int:
  return sum(f > _PAGES // 10 for f in result['faults'][-8:])


def _run(keep: str, **env: str) -> dict:
  environment = {
    k: v for k, v in os.environ.items() if not k.startswith('MALLOC_') and k != 'XLA_FLAGS'
  }
  environment.update(env)
  out = subprocess.run(
    [sys.executable, '-c', _SCRIPT, keep],
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
  # The premise: 64 MB of scratch is 16,384 pages of 4 KiB, mapped anew at each call.
  assert _faulting_calls(_run('never')) == 8


@needs_glibc
def test_kept_freed_memory_is_reused_without_page_faults():
  result = _run('before')
  assert result['kept'] is True
  assert _faulting_calls(result) <= 2


@needs_glibc
def test_a_call_after_jax_started_changes_nothing_and_says_so():
  result = _run('after')
  assert result['kept'] is False
  assert len(result['warnings']) == 1 and 'before anything runs on jax' in result['warnings'][0]
  assert _faulting_calls(result) == 8


@needs_glibc
def test_the_environment_switch_turns_it_off():
  result = _run('before', CARE_JAX_KEEP_FREED_MEMORY='0')
  assert result['kept'] is False
  assert _faulting_calls(result) == 8


def test_environment_holds_the_same_settings_for_child_processes():
  assert host_memory.ENVIRONMENT == {
    'MALLOC_ARENA_MAX': '1',
    'MALLOC_MMAP_MAX_': '0',
    'MALLOC_TRIM_THRESHOLD_': str(2**62),
  }


def test_accelerator_hosts_are_skipped_when_asked(monkeypatch):
  monkeypatch.setattr(host_memory, '_kept', False)
  monkeypatch.setattr(host_memory.importlib.util, 'find_spec', lambda name: name == 'libtpu')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert host_memory.keep_freed_memory(only_on_cpu_hosts=True) is False
