"""handjax.host_memory: freed memory is reused instead of page-faulted in again (Linux/glibc)."""
import os
import platform
import subprocess
import sys

import pytest

from handjax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each call of the jitted function allocates a fresh 64 MB output; with glibc's defaults
# that block is mmap-ed and returned on free, so every call faults its 16k pages in again.
# With freed memory kept, the heap grows for the first few calls (a result may be freed
# after the next call allocated) and then serves every call from reused memory.
PROBE = r"""
import os, resource, sys
from handjax import host_memory
if "PROBE_ONLY_PLATFORMS" in os.environ:  # what keep_freed_memory sees; jax itself then runs on the CPU
    os.environ["JAX_PLATFORMS"] = os.environ["PROBE_ONLY_PLATFORMS"]
kept = host_memory.keep_freed_memory()
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, jax.numpy as jnp
f = jax.jit(lambda x: x * 2.0)
x = jnp.ones((4096, 4096), jnp.float32)  # 64 MB
for _ in range(20):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(kept, faults)
"""


def run_probe(mode: str, **env_vars) -> tuple[bool, float]:
    env = dict(os.environ, HANDJAX_MALLOC=mode, XLA_FLAGS="", PYTHONPATH=ROOT, **env_vars)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    kept, faults = out.stdout.split()[-2:]
    return kept == "True", float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_reused():
    kept, faults = run_probe("keep")
    assert kept
    default_kept, default_faults = run_probe("default")
    assert not default_kept
    assert default_faults > 10_000  # 64 MB / 4 KiB pages = 16,384 faults per call
    assert faults < default_faults / 4, (faults, default_faults)  # steady state: mostly 0


def test_bad_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("HANDJAX_MALLOC", "tcmalloc")
    with pytest.raises(ValueError, match="HANDJAX_MALLOC must be 'auto', 'keep' or 'default'"):
        host_memory.keep_freed_memory()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_auto_applies_on_cpu_only():
    """HANDJAX_MALLOC=auto (the default): applied for a CPU run, not when JAX_PLATFORMS names an accelerator."""
    assert run_probe("auto", JAX_PLATFORMS="cpu")[0]
    assert not run_probe("auto", JAX_PLATFORMS="cpu", PROBE_ONLY_PLATFORMS="tpu")[0]


def test_accelerator_expected(monkeypatch):
    for value, expected in (("cpu", False), ("cuda", True), ("tpu,cpu", True), (" cpu ", False)):
        monkeypatch.setenv("JAX_PLATFORMS", value)
        assert host_memory.accelerator_expected() is expected, value
