"""SoftRas-style soft silhouette (Liu et al., ICCV 2019), differentiable w.r.t. vertices.

Each face j contributes a coverage probability at pixel centre p

    D_j(p) = sigmoid(delta_j(p) * d_j(p)^2 / sigma),

with ``d_j`` the 2-D Euclidean distance (pixels) from p to the projected triangle's
boundary and ``delta_j = +1`` inside / ``-1`` outside; the silhouette is
``1 - prod_j (1 - D_j)``. ``sigma`` is in **pixels^2** (SoftRas's NDC ``sigma_ndc``
for a W-wide image corresponds to ``sigma_ndc * W^2 / 4``).

The product is accumulated as a sum of ``log(1 - D_j) = log_sigmoid(-delta d^2 / sigma)``
over face chunks with ``lax.scan``; the scan body is rematerialised
(``jax.checkpoint``) so reverse-mode memory stays ``O(face_chunk * H * W)`` plus
one (H, W) carry per chunk. Faces with a vertex at ``z <= near``, degenerate or
non-finite faces contribute nothing. Faces are two-sided.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from handjax.render.rasterize import (
    DEFAULT_FACE_CHUNK,
    DEFAULT_NEAR,
    check_image_size,
    check_mesh,
    edge_functions,
    pixel_centers,
    screen_space,
)

_EPS = 1e-12


def _squared_distance_to_segments(p: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Squared distance from points p (1, P, 2) to segments [a, b] (C, 1, 2) -> (C, P)."""
    ab = b - a
    ap = p - a
    len2 = jnp.sum(ab * ab, axis=-1)
    t = jnp.clip(jnp.sum(ap * ab, axis=-1) / jnp.maximum(len2, _EPS), 0.0, 1.0)
    diff = ap - t[..., None] * ab
    return jnp.sum(diff * diff, axis=-1)


def _chunk_log_background(tri_xy: jnp.ndarray, valid: jnp.ndarray, pix: jnp.ndarray, sigma: float) -> jnp.ndarray:
    """sum_j log(1 - D_j) over a chunk of faces tri_xy (C, 3, 2) at pixels pix (P, 2) -> (P,)."""
    p = pix[None]
    d2 = jnp.minimum(
        jnp.minimum(
            _squared_distance_to_segments(p, tri_xy[:, None, 0], tri_xy[:, None, 1]),
            _squared_distance_to_segments(p, tri_xy[:, None, 1], tri_xy[:, None, 2]),
        ),
        _squared_distance_to_segments(p, tri_xy[:, None, 2], tri_xy[:, None, 0]),
    )
    w = edge_functions(tri_xy[:, None], p)  # (C, P, 3)
    inside = jnp.all(w >= 0, axis=-1) | jnp.all(w <= 0, axis=-1)
    signed = jnp.where(inside, d2, -d2) / sigma
    log_bg = jax.nn.log_sigmoid(-signed)
    return jnp.sum(jnp.where(valid[:, None], log_bg, 0.0), axis=0)


def soft_silhouette(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    sigma: float = 1.0,
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
) -> jnp.ndarray:
    """Soft silhouette (H, W) in [0, 1] of ONE mesh (vmap for batches).

    verts (V, 3) camera frame, faces (F, 3), K (3, 3); ``sigma`` in pixels^2;
    ``image_size`` and ``face_chunk`` static under jit.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    check_mesh(verts, faces, K)
    h, w = check_image_size(image_size)
    if isinstance(sigma, (int, float)) and not sigma > 0:
        raise ValueError(f"sigma must be > 0 (pixels^2), got {sigma!r}")
    face_chunk = max(1, min(int(face_chunk), faces.shape[0]))
    return _soft_silhouette(verts, faces, K, jnp.asarray(sigma, verts.dtype), (h, w), face_chunk, float(near))


@functools.partial(jax.jit, static_argnames=("image_size", "face_chunk", "near"))
def _soft_silhouette(verts, faces, K, sigma, image_size, face_chunk, near):
    h, w = image_size
    faces = faces.astype(jnp.int32)
    xy, z = screen_space(verts, K)
    tri_xy = xy[faces]
    area2 = jnp.sum(edge_functions(tri_xy, tri_xy[:, 0]), axis=-1)
    valid = (
        jnp.all(z[faces] > near, axis=-1)
        & (jnp.abs(area2) > 1e-8)
        & jnp.all(jnp.isfinite(tri_xy), axis=(-1, -2))
    )
    tri_xy = jnp.where(valid[:, None, None], tri_xy, 0.0)

    n_chunks = -(-faces.shape[0] // face_chunk)
    pad = n_chunks * face_chunk - faces.shape[0]
    tri_xy = jnp.pad(tri_xy, ((0, pad), (0, 0), (0, 0))).reshape(n_chunks, face_chunk, 3, 2)
    valid = jnp.pad(valid, (0, pad)).reshape(n_chunks, face_chunk)
    pix = pixel_centers((h, w), xy.dtype).reshape(-1, 2)

    @jax.checkpoint
    def step(acc, chunk):
        return acc + _chunk_log_background(chunk[0], chunk[1], pix, sigma), None

    log_bg, _ = lax.scan(step, jnp.zeros((h * w,), xy.dtype), (tri_xy, valid))
    return (-jnp.expm1(log_bg)).reshape(h, w)
