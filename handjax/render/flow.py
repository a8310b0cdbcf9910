"""Rendered optical flow between two posed meshes with the same topology.

For a pixel covered in frame 0 with visible face f and perspective-correct
barycentrics b (recomputed differentiably from frame-0 vertices), the surface point
in frame 1 is ``X1 = sum_k b_k V1[f_k]``. Two definitions of the flow are offered:

* ``method="surface"`` (default, exact): ``flow = pi_1(X1) - p`` with p the pixel
  centre (x=j, y=i) and pi_1 the frame-1 projection: where the surface point seen at
  p moves to.
* ``method="vertex"`` (handobjectconsist / neural_renderer parity): per-vertex 2-D
  displacements ``pi_1(V1) - pi_0(V0)`` interpolated with the frame-0 perspective-
  correct barycentrics. It equals the exact flow when projections are affine on
  each face (e.g. fronto-parallel faces) and differs slightly otherwise.

``occluded`` marks covered frame-0 pixels whose surface point is not visible in
frame 1: it projects outside the image, or onto a frame-1 pixel (nearest pixel
centre) that is background, or whose frame-1 z-buffer depth is nearer than the
point's frame-1 depth by more than ``depth_tol`` (metres), or its face has a
vertex at ``z <= near`` in frame 1. ``flow`` is 0 on background and on pixels
whose face is behind the frame-1 camera; other occluded pixels keep their flow.
Gradients reach ``verts1`` / ``K1`` (flow values) and ``verts0`` / ``K0`` (via the
barycentrics); the visibility in both frames is discrete.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from handjax.render.interpolate import interpolate_bary
from handjax.render.rasterize import (
    DEFAULT_FACE_CHUNK,
    DEFAULT_NEAR,
    Fragments,
    check_image_size,
    check_mesh,
    fragments_from_face_id,
    pixel_centers,
    project,
    visible_faces,
    visible_faces_batch,
)

FLOW_METHODS = ("surface", "vertex")


class FlowResult(NamedTuple):
    """flow (H, W, 2) pixels (x, y) from frame 0 to frame 1; occluded (H, W) bool;
    mask (H, W) bool frame-0 coverage; frags0 the frame-0 fragments."""

    flow: jnp.ndarray
    occluded: jnp.ndarray
    mask: jnp.ndarray
    frags0: Fragments


def occlusion_test(
    points1: jnp.ndarray,
    pix1: jnp.ndarray,
    face_id1: jnp.ndarray,
    depth1: jnp.ndarray,
    depth_tol: float,
) -> jnp.ndarray:
    """Visibility of surface points in frame 1 against frame 1's z-buffer.

    points1 (H, W, 3) frame-1 camera coordinates, pix1 (H, W, 2) their frame-1
    pixel positions, face_id1 / depth1 (H1, W1) frame-1 fragments. Returns (H, W)
    bool: True where the point leaves the image, lands on background (nearest pixel
    centre), or lies behind the z-buffer by more than ``depth_tol``.
    """
    h1, w1 = face_id1.shape
    col = jnp.round(pix1[..., 0])
    row = jnp.round(pix1[..., 1])
    inside = (col >= 0) & (col <= w1 - 1) & (row >= 0) & (row <= h1 - 1)
    inside = inside & jnp.isfinite(col) & jnp.isfinite(row)
    ci = jnp.clip(jnp.where(inside, col, 0), 0, w1 - 1).astype(jnp.int32)
    ri = jnp.clip(jnp.where(inside, row, 0), 0, h1 - 1).astype(jnp.int32)
    covered = face_id1[ri, ci] >= 0
    behind = points1[..., 2] > depth1[ri, ci] + depth_tol
    return ~inside | ~covered | behind


def _flow_values(verts0, verts1, faces, K0, K1, frags0: Fragments, method: str, near: float):
    """Flow (H, W, 2) on frame 0's grid, plus the frame-1 surface points (H, W, 3), their
    frame-1 pixel positions (H, W, 2) and ``ok`` (H, W): covered and in front of camera 1."""
    tri = faces[jnp.maximum(frags0.face_id, 0)]
    ok = frags0.mask & jnp.all(verts1[:, 2][tri] > near, axis=-1)
    front = jnp.array([0.0, 0.0, 1.0], verts1.dtype)  # safe stand-in where not ok (finite gradients)
    points1 = jnp.where(ok[..., None], interpolate_bary(verts1, faces, frags0), front)
    pix1 = project(points1, K1)
    if method == "surface":
        flow = pix1 - pixel_centers(frags0.face_id.shape, verts0.dtype)
    else:
        disp = project(jnp.where(verts1[:, 2:3] > near, verts1, front), K1) - project(verts0, K0)
        flow = interpolate_bary(disp, faces, frags0)
    return jnp.where(ok[..., None], flow, 0.0), points1, pix1, ok


def optical_flow(
    verts0: jnp.ndarray,
    verts1: jnp.ndarray,
    faces: jnp.ndarray,
    K0: jnp.ndarray,
    K1: Optional[jnp.ndarray],
    image_size: Sequence[int],
    method: str = "surface",
    depth_tol: float = 1e-2,
    face_id0: Optional[jnp.ndarray] = None,
    face_id1: Optional[jnp.ndarray] = None,
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
) -> FlowResult:
    """Flow of ONE mesh pair on frame 0's pixel grid (:func:`optical_flow_batch` for batches).

    verts0, verts1 (V, 3) camera frames of the two frames; faces (F, 3); K0, K1
    (3, 3) (K1=None -> K0); ``image_size`` (H, W) static, used for both frames.
    ``face_id0`` / ``face_id1`` (H, W) may be passed to reuse existing
    rasterisations (``Fragments.face_id`` of each frame).
    """
    verts0, verts1, faces, K0 = (jnp.asarray(a) for a in (verts0, verts1, faces, K0))
    K1 = K0 if K1 is None else jnp.asarray(K1)
    check_mesh(verts0, faces, K0)
    check_mesh(verts1, faces, K1)
    if verts0.shape != verts1.shape:
        raise ValueError(
            f"verts0 and verts1 must have the same shape (same topology): {verts0.shape} vs {verts1.shape}"
        )
    if method not in FLOW_METHODS:
        raise ValueError(f"method must be one of {FLOW_METHODS}, got {method!r}")
    h, w = check_image_size(image_size)
    faces = faces.astype(jnp.int32)

    if face_id0 is None:
        face_id0 = visible_faces(verts0, faces, K0, (h, w), face_chunk, near)
    frags0 = fragments_from_face_id(verts0, faces, K0, face_id0)
    flow, points1, pix1, ok = _flow_values(verts0, verts1, faces, K0, K1, frags0, method, near)

    if face_id1 is None:
        face_id1 = visible_faces(verts1, faces, K1, (h, w), face_chunk, near)
    depth1 = fragments_from_face_id(verts1, faces, K1, face_id1).depth
    points1, pix1, depth1 = (lax.stop_gradient(a) for a in (points1, pix1, depth1))
    occluded = occlusion_test(points1, pix1, face_id1, depth1, depth_tol)
    occluded = frags0.mask & (occluded | ~ok)
    return FlowResult(flow=flow, occluded=occluded, mask=frags0.mask, frags0=frags0)


def optical_flow_batch(
    verts0: jnp.ndarray,
    verts1: jnp.ndarray,
    faces: jnp.ndarray,
    K0: jnp.ndarray,
    K1: Optional[jnp.ndarray],
    image_size: Sequence[int],
    method: str = "surface",
    depth_tol: float = 1e-2,
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
) -> FlowResult:
    """Batched :func:`optical_flow`: verts0, verts1 (B, V, 3), shared faces, K0/K1 (3, 3) or (B, 3, 3)."""
    verts0, verts1, faces, K0 = (jnp.asarray(a) for a in (verts0, verts1, faces, K0))
    K1 = K0 if K1 is None else jnp.asarray(K1)
    face_id0 = visible_faces_batch(verts0, faces, K0, image_size, face_chunk, near)
    face_id1 = visible_faces_batch(verts1, faces, K1, image_size, face_chunk, near)

    def one(v0, v1, k0, k1, f0, f1):
        return optical_flow(v0, v1, faces, k0, k1, image_size, method, depth_tol, f0, f1, face_chunk, near)

    k_axes = tuple(0 if k.ndim == 3 else None for k in (K0, K1))
    return jax.vmap(one, in_axes=(0, 0) + k_axes + (0, 0))(verts0, verts1, K0, K1, face_id0, face_id1)
