"""Test set-up: 8 forced CPU devices so every test exercises sharding.

The XLA flag must be set before JAX initialises its backends, so it is done
here at import time, before any test module imports jax.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

# Many tests compile the same small train steps (same model, shapes and mesh): share compiled
# executables across tests and xdist workers through JAX's persistent compilation cache.
import tempfile  # noqa: E402

_cache_dir = os.environ.get("HANDJAX_TEST_COMPILE_CACHE") or os.path.join(tempfile.gettempdir(), "handjax_test_jax_cache")
jax.config.update("jax_compilation_cache_dir", _cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
