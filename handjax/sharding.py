"""The device mesh and moving host batches / model state onto it (shared by training and evaluation).

One 'data' axis over all devices: batches are sharded on it (axis 0), parameters replicated.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> jax.sharding.Mesh:
    devices = devices if devices is not None else jax.devices()
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def global_batch(batch: dict, mesh) -> dict:
    """Process-local numpy batch -> global jax arrays sharded on 'data' (batch axis 0)."""
    sharding = NamedSharding(mesh, P("data"))
    n_data = mesh.shape["data"] // jax.process_count()

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % max(n_data, 1):
            raise ValueError(f"per-process batch dimension {x.shape[:1]} must be divisible by the "
                             f"{n_data} local devices of the 'data' mesh axis")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)


def _host_if_local(x):
    """A process-local jax array as numpy (PRNG keys and global arrays unchanged)."""
    if isinstance(x, jax.Array) and x.is_fully_addressable and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(x)
    return x


def replicate(tree, mesh):
    """Every leaf of ``tree`` replicated on ``mesh``.

    With several processes, process-local arrays (a fresh model, or one filled by
    ``restore_model``) go through host memory: ``device_put`` cannot move an array committed to
    a local device onto other processes' devices. Every process must pass the same values.
    """
    if jax.process_count() > 1:
        tree = jax.tree.map(_host_if_local, tree)
    return jax.device_put(tree, NamedSharding(mesh, P()))


def gather_labels(local: dict) -> dict:
    """Process-local label arrays -> the global batch's, in the order ``global_batch`` lays samples out.

    Non-numeric entries (strings) are dropped with several processes.
    """
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    arrays = {k: np.asarray(v) for k, v in local.items() if np.asarray(v).dtype.kind in "biuf"}
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(arrays, tiled=True))
