"""Deferred shading on top of :func:`rasterize`: normals, textures, Lambertian lighting.

Lighting model (per pixel): ``rgb = albedo * (ambient + diffuse * max(0, n . l))``
with ``n`` the interpolated, renormalised vertex normal and ``l`` the unit direction
*towards* the light (camera frame, OpenCV axes; the default ``(0, 0, -1)`` is a
light at the camera looking down +z). With ``two_sided=True`` normals facing away
from the camera are flipped before lighting, matching the two-sided rasteriser.
Background pixels take ``background`` (a colour (C,) or an image (H, W, C)).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from handjax.render.interpolate import interpolate_bary
from handjax.render.rasterize import (
    DEFAULT_FACE_CHUNK,
    DEFAULT_NEAR,
    Fragments,
    check_mesh,
    fragments_from_face_id,
    visible_faces,
    visible_faces_batch,
)
from handjax.render.warp import grid_sample

_EPS = 1e-12


def _normalize(v: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """Unit vectors along ``axis``; zero vectors stay zero (finite gradient)."""
    n2 = jnp.sum(v * v, axis=axis, keepdims=True)
    safe = jnp.where(n2 > _EPS, n2, 1.0)
    return jnp.where(n2 > _EPS, v / jnp.sqrt(safe), 0.0)


def face_normals(verts: jnp.ndarray, faces: jnp.ndarray, normalize: bool = True) -> jnp.ndarray:
    """(F, 3) normals ``(v1 - v0) x (v2 - v0)`` (length = 2 * area unless normalised).

    For a mesh wound counter-clockwise seen from outside (MANO) they point outwards.
    """
    tri = verts[jnp.asarray(faces).astype(jnp.int32)]
    n = jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return _normalize(n) if normalize else n


def vertex_normals(verts: jnp.ndarray, faces: jnp.ndarray) -> jnp.ndarray:
    """(V, 3) unit vertex normals: area-weighted sum of incident face normals."""
    faces = jnp.asarray(faces).astype(jnp.int32)
    fn = face_normals(verts, faces, normalize=False)
    acc = jnp.zeros_like(verts).at[faces.reshape(-1)].add(jnp.repeat(fn, 3, axis=0))
    return _normalize(acc)


def lambertian(
    normals: jnp.ndarray,
    albedo: jnp.ndarray,
    light_dir: Sequence[float] | jnp.ndarray = (0.0, 0.0, -1.0),
    ambient: float | jnp.ndarray = 0.5,
    diffuse: float | jnp.ndarray = 0.5,
) -> jnp.ndarray:
    """``albedo * (ambient + diffuse * max(0, n . l))``; normals (..., 3), albedo (..., C)."""
    light = _normalize(jnp.asarray(light_dir, normals.dtype))
    cos = jnp.maximum(jnp.sum(normals * light, axis=-1, keepdims=True), 0.0)
    return albedo * (ambient + diffuse * cos)


def face_camera(normals: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
    """Flip normals (..., 3) that face away from the camera at the origin (surface points (..., 3))."""
    away = jnp.sum(normals * points, axis=-1, keepdims=True) > 0  # n . (point - camera) > 0
    return jnp.where(away, -normals, normals)


def composite(rgb: jnp.ndarray, mask: jnp.ndarray, background) -> jnp.ndarray:
    """Put ``background`` (colour (C,), scalar or image (H, W, C)) where ``mask`` (H, W) is False."""
    background = jnp.broadcast_to(jnp.asarray(background, rgb.dtype), rgb.shape)
    return jnp.where(mask[..., None], rgb, background)


def sample_texture(texture: jnp.ndarray, uv: jnp.ndarray) -> jnp.ndarray:
    """Bilinear texture lookup: texture (Ht, Wt, C), uv (H, W, 2) -> (H, W, C).

    uv in [0, 1], OBJ/OpenGL convention: u left->right, v **bottom->top** (v = 1 is
    texture row 0). Texel centres at ((j + 0.5) / Wt, 1 - (i + 0.5) / Ht); clamped
    at the border.
    """
    if texture.ndim != 3:
        raise ValueError(f"texture must have shape (Ht, Wt, C), got {texture.shape}")
    grid = jnp.stack([2.0 * uv[..., 0] - 1.0, 1.0 - 2.0 * uv[..., 1]], axis=-1)
    return grid_sample(texture[None], grid[None], align_corners=False, padding_mode="border")[0]


class RenderOutput(NamedTuple):
    """Outputs of :func:`render_mesh` for one mesh (leading batch axis under vmap).

    rgb (H, W, C) shaded colour composited over the background; mask (H, W) bool;
    depth (H, W) camera z, 0 on background; normals (H, W, 3) interpolated unit
    vertex normals of the posed mesh (as oriented by the mesh, not flipped), 0 on
    background; frags the :class:`Fragments`.
    """

    rgb: jnp.ndarray
    mask: jnp.ndarray
    depth: jnp.ndarray
    normals: jnp.ndarray
    frags: Fragments


def _albedo_attribute(n_verts, dtype, vertex_colors, uv, texture):
    """Validate the colour inputs; return the per-vertex attribute to interpolate (V, C)."""
    if vertex_colors is not None and (uv is not None or texture is not None):
        raise ValueError("give either vertex_colors or (uv, texture), not both")
    if (uv is None) != (texture is None):
        raise ValueError("uv (V, 2) and texture (Ht, Wt, C) must be given together")
    if vertex_colors is None and uv is None:
        return jnp.ones((n_verts, 3), dtype)
    name = "vertex_colors" if vertex_colors is not None else "uv"
    attr = jnp.asarray(vertex_colors if vertex_colors is not None else uv, dtype)
    if attr.ndim != 2 or attr.shape[0] != n_verts or (uv is not None and attr.shape[1] != 2):
        want = f"({n_verts}, 2)" if uv is not None else f"({n_verts}, C)"
        raise ValueError(f"{name} must have shape {want}, got {attr.shape}")
    return attr


@functools.partial(jax.jit, static_argnames=("two_sided",))
def shade_face_ids(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    face_id: jnp.ndarray,
    vertex_colors: Optional[jnp.ndarray] = None,
    uv: Optional[jnp.ndarray] = None,
    texture: Optional[jnp.ndarray] = None,
    light_dir: Sequence[float] | jnp.ndarray = (0.0, 0.0, -1.0),
    ambient: float = 0.5,
    diffuse: float = 0.5,
    background=0.0,
    two_sided: bool = True,
) -> RenderOutput:
    """Deferred shading of ONE mesh given its visible-face map ``face_id`` (H, W).

    Arguments as :func:`render_mesh`; everything after the visibility pass.
    """
    albedo_attr = _albedo_attribute(verts.shape[0], verts.dtype, vertex_colors, uv, texture)
    frags = fragments_from_face_id(verts, faces, K, face_id)
    c = albedo_attr.shape[1]
    # One gather for all attributes: albedo (or uv) | normal | 3-D position.
    attrs = jnp.concatenate([albedo_attr, vertex_normals(verts, faces), verts], axis=1)
    attrs = interpolate_bary(attrs, faces, frags)
    albedo, normals, points = attrs[..., :c], _normalize(attrs[..., c : c + 3]), attrs[..., c + 3 :]
    if texture is not None:
        albedo = sample_texture(jnp.asarray(texture, verts.dtype), albedo)
    lit_normals = face_camera(normals, points) if two_sided else normals
    rgb = composite(lambertian(lit_normals, albedo, light_dir, ambient, diffuse), frags.mask, background)
    normals = jnp.where(frags.mask[..., None], normals, 0.0)
    return RenderOutput(rgb=rgb, mask=frags.mask, depth=frags.depth, normals=normals, frags=frags)


def render_mesh(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    vertex_colors: Optional[jnp.ndarray] = None,
    uv: Optional[jnp.ndarray] = None,
    texture: Optional[jnp.ndarray] = None,
    light_dir: Sequence[float] | jnp.ndarray = (0.0, 0.0, -1.0),
    ambient: float = 0.5,
    diffuse: float = 0.5,
    background=0.0,
    two_sided: bool = True,
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
) -> RenderOutput:
    """Rasterise + shade ONE mesh (use :func:`render_mesh_batch` for batches).

    Albedo from ``vertex_colors`` (V, C), or from ``texture`` (Ht, Wt, C) looked up
    at interpolated per-vertex ``uv`` (V, 2), or white if neither is given.
    Differentiable w.r.t. verts (through the barycentrics, no silhouette gradient),
    K, colours, texture, lighting and background.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    check_mesh(verts, faces, K)
    _albedo_attribute(verts.shape[0], verts.dtype, vertex_colors, uv, texture)  # fail before rasterising
    face_id = visible_faces(verts, faces, K, image_size, face_chunk, near)
    return shade_face_ids(
        verts, faces, K, face_id, vertex_colors, uv, texture, light_dir, ambient, diffuse, background, two_sided
    )


def render_mesh_batch(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    vertex_colors: Optional[jnp.ndarray] = None,
    background=0.0,
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
    **shading,
) -> RenderOutput:
    """Batched :func:`render_mesh`: verts (B, V, 3), shared faces, K (3, 3) or (B, 3, 3),
    vertex_colors None, (V, C) or (B, V, C), background scalar/colour (shared) or (B, H, W, C).
    Other keyword arguments (uv, texture, light_dir, ambient, diffuse, two_sided) are
    shared across the batch. Returns :class:`RenderOutput` with a leading batch axis.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    face_id = visible_faces_batch(verts, faces, K, image_size, face_chunk, near)
    background = jnp.asarray(background, verts.dtype)
    colors_axis = None if vertex_colors is None or jnp.ndim(vertex_colors) == 2 else 0

    def one(v, k, fid, col, bg):
        return shade_face_ids(v, faces, k, fid, vertex_colors=col, background=bg, **shading)

    in_axes = (0, 0 if K.ndim == 3 else None, 0, colors_axis, 0 if background.ndim == 4 else None)
    return jax.vmap(one, in_axes=in_axes)(verts, K, face_id, vertex_colors, background)
