"""Batched similarity (Procrustes) alignment, as used by PA-MPJPE / PA-MPVPE."""
from __future__ import annotations

import jax.numpy as jnp


def procrustes_transform(src: jnp.ndarray, dst: jnp.ndarray, allow_reflection: bool = False):
    """Least-squares similarity (s, R, t) with s R src_i + t ~= dst_i (Umeyama 1991).

    src, dst: (..., N, 3). Returns s (...,), R (..., 3, 3), t (..., 3).
    ``allow_reflection=True`` reproduces scipy.linalg.orthogonal_procrustes as
    used by the FreiHAND/HO3D evaluation scripts (R may have det -1);
    otherwise R is a proper rotation.
    """
    mu_s = jnp.mean(src, axis=-2, keepdims=True)
    mu_d = jnp.mean(dst, axis=-2, keepdims=True)
    xs, xd = src - mu_s, dst - mu_d
    cov = jnp.einsum("...ni,...nj->...ij", xd, xs)  # sum_n dst_n src_n^T
    u, sv, vt = jnp.linalg.svd(cov)
    if allow_reflection:
        sign = jnp.ones_like(sv[..., 2])
    else:
        sign = jnp.sign(jnp.linalg.det(u @ vt))
        sign = jnp.where(sign == 0, 1.0, sign)
    d = jnp.stack([jnp.ones_like(sign), jnp.ones_like(sign), sign], -1)
    rot = (u * d[..., None, :]) @ vt
    var_s = jnp.sum(xs * xs, axis=(-2, -1))
    scale = jnp.sum(sv * d, axis=-1) / var_s
    trans = mu_d[..., 0, :] - scale[..., None] * jnp.einsum("...ij,...j->...i", rot, mu_s[..., 0, :])
    return scale, rot, trans


def procrustes_align(src: jnp.ndarray, dst: jnp.ndarray, allow_reflection: bool = False) -> jnp.ndarray:
    """src aligned onto dst with the best similarity transform. (..., N, 3)."""
    s, r, t = procrustes_transform(src, dst, allow_reflection)
    return s[..., None, None] * jnp.einsum("...ij,...nj->...ni", r, src) + t[..., None, :]
