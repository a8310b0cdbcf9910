"""Host memory allocator setting for training on XLA-CPU.

XLA-CPU allocates each execution's temporary buffer afresh: about 300 MB for a
ResNet-18 train step at batch 16 and 128^2 pixels. glibc's malloc serves blocks
that large with ``mmap`` and returns them to the kernel on ``free``, so every
step page-faults the whole buffer in again (measured: 74,000 minor faults and
~150 ms of kernel time per ResNet-18 step, on a ~380 ms step).
``keep_freed_memory()`` makes glibc keep freed memory for reuse instead:

* ``M_MMAP_MAX = 0``: no ``mmap`` for large blocks; they come from the heap,
* ``M_TRIM_THRESHOLD = 2 GiB - 1``: the heap top is not handed back after each step,
* ``M_ARENA_MAX = 1``: one arena, so blocks freed by one XLA worker thread are
  reused by the next allocation on any thread (per-thread arenas cannot hold
  blocks above 64 MB without ``mmap``).

Effect (2-core CPU, benchmarks/train_step_bench.py, ResNet-18): page faults per step
74,000 -> ~0, step 360-406 ms -> 319-328 ms; peak RSS unchanged (~2.0 GB). The
trade-off is the usual one of a caching allocator: memory freed by the process is
kept by the process (its peak stays resident) rather than returned to the system.

It is process-wide and must run before the first large allocation and before
threads start allocating (call it first thing, before importing jax).
``handjax.main`` calls it. ``HANDJAX_MALLOC`` chooses: ``auto`` (default) applies it
unless JAX will run on an accelerator (``JAX_PLATFORMS`` names one, or, with
``JAX_PLATFORMS`` unset, a GPU/TPU plugin such as ``jax_cuda12_plugin`` or ``libtpu``
is installed: there XLA's step buffers live on the device, and one malloc arena
could slow a many-threaded input pipeline); ``keep`` always applies it; ``default``
never does. Only glibc (Linux) has these settings; elsewhere nothing changes.
"""
from __future__ import annotations

import ctypes
import os
import pkgutil
import platform

__all__ = ["GLIBC_SETTINGS", "accelerator_expected", "keep_freed_memory"]

# mallopt parameter numbers from glibc's <malloc.h>, and the values set
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
GLIBC_SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


ACCELERATOR_MODULES = ("libtpu", "jax_tpu", "jax_cuda", "jax_rocm")  # prefixes of JAX accelerator plugins


def accelerator_expected() -> bool:
    """Whether JAX will (probably) use a GPU/TPU, judged without importing jax."""
    platforms = [p.strip().lower() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return any(p != "cpu" for p in platforms)
    return any(m.name.startswith(ACCELERATOR_MODULES) for m in pkgutil.iter_modules())


def keep_freed_memory() -> bool:
    """Apply ``GLIBC_SETTINGS`` with ``mallopt`` as ``HANDJAX_MALLOC`` says; True if applied.

    False (and nothing changed) for ``HANDJAX_MALLOC=default``, for ``auto`` when an
    accelerator is expected, and when the C library is not glibc. Raises ValueError
    for another ``HANDJAX_MALLOC`` value and RuntimeError if glibc rejects a setting.
    """
    choice = os.environ.get("HANDJAX_MALLOC", "auto").lower()
    if choice not in ("auto", "keep", "default"):
        raise ValueError(f"HANDJAX_MALLOC must be 'auto', 'keep' or 'default', got {choice!r}")
    if choice == "default" or (choice == "auto" and accelerator_expected()):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already uses
    for param, value in GLIBC_SETTINGS:
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"glibc mallopt({param}, {value}) failed")
    return True
