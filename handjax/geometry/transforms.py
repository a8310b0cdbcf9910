"""Rigid transforms as 4x4 homogeneous matrices."""
from __future__ import annotations

import jax.numpy as jnp


def make_transform(rot: jnp.ndarray, trans: jnp.ndarray) -> jnp.ndarray:
    """(..., 3, 3), (..., 3) -> (..., 4, 4)."""
    top = jnp.concatenate([rot, trans[..., :, None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], rot.dtype), top.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def apply_transform(T: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
    """Apply (..., 4, 4) to points (..., N, 3)."""
    return jnp.einsum("...ij,...nj->...ni", T[..., :3, :3], points) + T[..., None, :3, 3]


def invert_transform(T: jnp.ndarray) -> jnp.ndarray:
    rot_t = jnp.swapaxes(T[..., :3, :3], -1, -2)
    return make_transform(rot_t, -jnp.einsum("...ij,...j->...i", rot_t, T[..., :3, 3]))


def small_matmul(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Batched product of small matrices (..., n, k) @ (..., k, m) as k broadcast multiply-adds.

    Same result as ``a @ b``; XLA fuses it with its neighbours, where a batched dot of 3x3
    matrices is a separate, slow kernel on CPU.
    """
    out = a[..., :, 0:1] * b[..., 0:1, :]
    for i in range(1, a.shape[-1]):
        out = out + a[..., :, i: i + 1] * b[..., i: i + 1, :]
    return out


def small_matvec(a: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """(..., n, k) @ (..., k) -> (..., n), as ``small_matmul``."""
    return small_matmul(a, v[..., :, None])[..., 0]
