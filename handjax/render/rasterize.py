"""Hard z-buffer rasterisation of triangle meshes in pure ``jnp``.

Conventions (shared by the whole ``handjax.render`` package):

* Vertices are in the camera frame with OpenCV axes (x right, y down, z forward),
  in metres. Images are ``(H, W)`` / ``(H, W, C)`` (batched: NHWC).
* Pixel coordinates come from the pinhole intrinsics ``K`` (3x3, skew ``K[0, 1]``
  honoured) via :func:`handjax.geometry.project_perspective`; the centre of pixel
  ``(row i, column j)`` is the point ``(x=j, y=i)`` (OpenCV). Coverage is tested at
  pixel centres, with no anti-aliasing.
* Faces are two-sided (no back-face culling). A face is rasterised only if all
  three of its vertices have ``z > near``; there is no near-plane clipping, so a
  face crossing the near plane is dropped entirely and vertices behind the camera
  are never rasterised.
* A pixel centre exactly on an edge counts as inside (closed triangles), so meshes
  without holes are rasterised without cracks. Depth ties are won by the lowest
  face index.

The visibility pass (which face is nearest at each pixel) is discrete and carries
no gradient. It is exact and picks the cheapest of two strategies at run time
(see :func:`visible_faces`): a dense pass over chunks of ``face_chunk`` faces with
``lax.scan`` and a running z-buffer (memory ``O(face_chunk * H * W)``, never
``O(F * H * W)``), or a windowed pass testing each face only on a small pixel
block around its bounding box (memory ``O(F * S^2)``).
The barycentrics and depth of the selected face are then recomputed from the
vertex positions with differentiable ``jnp`` (as nvdiffrast's ``interpolate``
does), so :class:`Fragments` ``bary``/``depth`` have gradients w.r.t. ``verts``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from handjax.geometry.camera import project_perspective

DEFAULT_NEAR = 1e-3
DEFAULT_FACE_CHUNK = 64
DEFAULT_WINDOWS = (8, 16, 32, 64)
DEFAULT_DENSE_FACES = 32
# Faces whose doubled screen-space area is below this (pixels^2) are skipped.
_MIN_AREA2 = 1e-8


class Fragments(NamedTuple):
    """Per-pixel rasterisation result for one mesh (leading batch dims when vmapped).

    face_id: (H, W) int32, index of the visible face, -1 on background.
    bary: (H, W, 3) float, perspective-correct barycentrics of the pixel centre in
        the visible face (w.r.t. the face's vertices in ``faces`` order); they sum
        to 1 on covered pixels and are 0 on background.
    depth: (H, W) float, camera-frame z of the surface point; **0 on background**.
    mask: (H, W) bool, ``face_id >= 0``.
    """

    face_id: jnp.ndarray
    bary: jnp.ndarray
    depth: jnp.ndarray
    mask: jnp.ndarray


# --------------------------------------------------------------------------- checks


def check_image_size(image_size: Sequence[int]) -> Tuple[int, int]:
    """Validate ``image_size`` = (H, W) of positive Python ints (static under jit)."""
    try:
        h, w = (int(s) for s in image_size)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise TypeError(
            f"image_size must be a static (H, W) pair of ints (mark it static under jax.jit), got {image_size!r}"
        ) from err
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {image_size!r}")
    return h, w


def check_mesh(verts: jnp.ndarray, faces: jnp.ndarray, K: jnp.ndarray, batched: bool = False) -> None:
    """Raise a ValueError naming the argument if shapes are not (V,3), (F,3), (3,3)."""
    lead = 1 if batched else 0
    if verts.ndim != 2 + lead or verts.shape[-1] != 3:
        want = "(B, V, 3)" if batched else "(V, 3)"
        raise ValueError(f"verts must have shape {want}, got {verts.shape}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {faces.shape}")
    if not jnp.issubdtype(faces.dtype, jnp.integer):
        raise ValueError(f"faces must be an integer array, got dtype {faces.dtype}")
    if K.shape[-2:] != (3, 3) or K.ndim not in ((2, 3) if batched else (2,)):
        want = "(3, 3) or (B, 3, 3)" if batched else "(3, 3)"
        raise ValueError(f"K must have shape {want}, got {K.shape}")


# --------------------------------------------------------------------------- geometry helpers


def pixel_centers(image_size: Sequence[int], dtype=jnp.float32) -> jnp.ndarray:
    """(H, W, 2) pixel-centre coordinates, ``[i, j] = (x=j, y=i)``."""
    h, w = check_image_size(image_size)
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=dtype), jnp.arange(w, dtype=dtype), indexing="ij")
    return jnp.stack([xs, ys], axis=-1)


def project(points: jnp.ndarray, K: jnp.ndarray) -> jnp.ndarray:
    """:func:`handjax.geometry.project_perspective` with full-precision matmuls.

    TPUs default to bf16 matmul passes, which would move projected vertices by up to
    a pixel; rasterisation needs float32 pixel coordinates on every backend.
    """
    with jax.default_matmul_precision("highest"):
        return project_perspective(points, K)


def screen_space(verts: jnp.ndarray, K: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Project camera-frame ``verts`` (V, 3) with ``K`` -> pixel coords (V, 2) and depth z (V,)."""
    return project(verts, K), verts[..., 2]


def edge_functions(tri_xy: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
    """Doubled signed sub-triangle areas (..., 3) of point p (..., 2) in triangles (..., 3, 2).

    ``w_k`` is the area opposite vertex k: ``w_0 = cross(v2 - v1, p - v1)`` and
    cyclically; ``sum_k w_k`` is the doubled signed area of the triangle and
    ``w_k / sum(w)`` are the screen-space barycentrics of p.
    """
    v = tri_xy
    a = jnp.roll(v, -1, axis=-2)  # v1, v2, v0
    b = jnp.roll(v, -2, axis=-2)  # v2, v0, v1
    pa = p[..., None, :] - a
    ba = b - a
    return ba[..., 0] * pa[..., 1] - ba[..., 1] * pa[..., 0]


def perspective_barycentrics(
    tri_xy: jnp.ndarray, tri_z: jnp.ndarray, p: jnp.ndarray, valid: jnp.ndarray
) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Perspective-correct barycentrics and depth of screen point p in a projected triangle.

    tri_xy (..., 3, 2) pixel coords, tri_z (..., 3) camera depths, p (..., 2),
    valid (...) bool. With screen barycentrics ``l_k`` the surface point has
    ``1/z = sum_k l_k / z_k`` and barycentrics ``b_k = (l_k / z_k) * z``.
    Returns (bary (..., 3), depth (...)), both 0 where ``valid`` is False. Invalid
    entries are replaced by safe values *before* any division, so gradients stay
    finite everywhere (double-where).
    """
    w = edge_functions(jnp.where(valid[..., None, None], tri_xy, 0.0), p)
    area2 = jnp.sum(w, axis=-1)
    ok = valid & (jnp.abs(area2) > _MIN_AREA2)
    lam = w / jnp.where(ok, area2, 1.0)[..., None]
    q = lam / jnp.where(ok[..., None], tri_z, 1.0)
    inv_z = jnp.sum(q, axis=-1)
    inv_z_safe = jnp.where(ok, inv_z, 1.0)
    bary = jnp.where(ok[..., None], q / inv_z_safe[..., None], 0.0)
    depth = jnp.where(ok, 1.0 / inv_z_safe, 0.0)
    return bary, depth


# --------------------------------------------------------------------------- visibility pass
#
# Two exact strategies give the same face ids:
# * dense: every face is tested at every pixel, in chunks of ``face_chunk`` faces
#   (lax.scan with a running z-buffer), O(F * H * W) work;
# * windowed: each face is tested on an S x S block of pixel centres starting at its
#   bounding box, O(F * S^2) work, with a scatter-max z-buffer; the ``dense_faces``
#   faces with the largest boxes also go through the dense pass, so the result is
#   exact as long as every other face fits in S x S.
# ``lax.switch`` picks the smallest window of the ladder that is exact for the
# input (or dense), outside any vmap in the *_batch functions.

_NO_FACE = jnp.iinfo(jnp.int32).max
# Pixel tests per block of faces in the windowed pass (bounds its memory).
_WINDOW_BLOCK = 1 << 18
# Relative cost of a windowed pixel test vs a dense one (see _useful_windows).
_WINDOW_COST = 24


class _FaceData(NamedTuple):
    """Per-face screen-space data (leading axis F). Invalid faces (a vertex at z <= near,
    degenerate or non-finite) have ``valid`` False, zero geometry and span 0.

    Edge k (opposite vertex k) is stored from its lower- to its higher-indexed vertex
    with the orientation sign folded into ``scale``, so the two faces sharing an edge
    evaluate bitwise-identical edge functions (no cracks on shared edges). Screen
    barycentric ``l_k = cross(direction_k, p - origin_k) * scale_k``.
    """

    origin: jnp.ndarray  # (F, 3, 2)
    direction: jnp.ndarray  # (F, 3, 2)
    scale: jnp.ndarray  # (F, 3)
    inv_z: jnp.ndarray  # (F, 3)
    valid: jnp.ndarray  # (F,)
    start: jnp.ndarray  # (F, 2) first pixel centre (x, y) >= the bounding box minimum
    span: jnp.ndarray  # (F,) pixel centres covered by the bounding box along its longer side


def _face_data(xy: jnp.ndarray, z: jnp.ndarray, faces: jnp.ndarray, near: float) -> _FaceData:
    """Screen-space face table from projected vertices xy (V, 2), depths z (V,), faces (F, 3)."""
    tri_xy = xy[faces]
    tri_z = z[faces]
    area2 = jnp.sum(edge_functions(tri_xy, tri_xy[..., 0, :]), axis=-1)
    valid = (
        jnp.all(tri_z > near, axis=-1)
        & (jnp.abs(area2) > _MIN_AREA2)
        & jnp.all(jnp.isfinite(tri_xy), axis=(-1, -2))
    )
    tri_xy = jnp.where(valid[:, None, None], tri_xy, 0.0)
    inv_z = jnp.where(valid[:, None], 1.0 / jnp.where(valid[:, None], tri_z, 1.0), 0.0)
    inv_area2 = jnp.where(valid, 1.0 / jnp.where(valid, area2, 1.0), 0.0)
    # Edge k runs from vertex k+1 to vertex k+2 (cyclically); reorder by global index.
    ia, ib = jnp.roll(faces, -1, axis=1), jnp.roll(faces, -2, axis=1)
    pa, pb = jnp.roll(tri_xy, -1, axis=1), jnp.roll(tri_xy, -2, axis=1)
    forward = (ia < ib)[..., None]
    start = jnp.ceil(jnp.min(tri_xy, axis=1))
    extent = jnp.floor(jnp.max(tri_xy, axis=1)) - start + 1.0
    return _FaceData(
        origin=jnp.where(forward, pa, pb),
        direction=jnp.where(forward, pb - pa, pa - pb),
        scale=jnp.where(ia < ib, 1.0, -1.0).astype(xy.dtype) * inv_area2[:, None],
        inv_z=inv_z,
        valid=valid,
        start=start,
        span=jnp.where(valid, jnp.maximum(jnp.max(extent, axis=-1), 0.0), 0.0),
    )


def _inverse_depth(fd: _FaceData, px: jnp.ndarray, py: jnp.ndarray) -> jnp.ndarray:
    """1/z of faces fd (N,) at pixel centres px, py (N or 1, P); 0 where not covered -> (N, P)."""
    inside = fd.valid[:, None]
    inv_depth = 0.0
    for k in range(3):
        lam = (
            fd.direction[:, k, 0, None] * (py - fd.origin[:, k, 1, None])
            - fd.direction[:, k, 1, None] * (px - fd.origin[:, k, 0, None])
        ) * fd.scale[:, k, None]
        # The sign of the area is folded into scale, so both windings are covered.
        inside = inside & (lam >= 0)
        inv_depth = inv_depth + lam * fd.inv_z[:, k, None]
    return jnp.where(inside, inv_depth, 0.0)


def _max_with_id(values: jnp.ndarray, ids: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Max of values (N, P) over axis 0 and the id (N,) of the winner; ties -> lowest id.

    Two plain reductions (max, then min id among the maxima); XLA fuses the producer
    of ``values`` into both, and this vectorises far better than a variadic reduce.
    """
    best = jnp.max(values, axis=0)
    winner = jnp.min(jnp.where(values == best[None], ids[:, None], _NO_FACE), axis=0)
    return best, winner


def _dense_pass(
    fd: _FaceData, face_ids: jnp.ndarray, image_size: Tuple[int, int], face_chunk: int
) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Nearest of the faces ``face_ids`` (N,) at every pixel centre, chunked with lax.scan.

    Returns (inverse depth (P,), 0 = none; face id (P,), meaningful where inv > 0).
    """
    h, w = image_size
    face_chunk = max(1, min(face_chunk, face_ids.shape[0]))
    n_chunks = -(-face_ids.shape[0] // face_chunk)
    ids = jnp.pad(face_ids, (0, n_chunks * face_chunk - face_ids.shape[0]), constant_values=-1)
    ids = ids.reshape(n_chunks, face_chunk)
    pix = pixel_centers((h, w), fd.scale.dtype).reshape(-1, 2)
    px, py = pix[None, :, 0], pix[None, :, 1]

    def step(carry, chunk_ids):
        best_inv, best_id = carry
        sub = jax.tree_util.tree_map(lambda a: a[jnp.maximum(chunk_ids, 0)], fd)
        sub = sub._replace(valid=sub.valid & (chunk_ids >= 0))
        inv, idx = _max_with_id(_inverse_depth(sub, px, py), chunk_ids)
        take = (inv > best_inv) | ((inv == best_inv) & (idx < best_id))
        return (jnp.where(take, inv, best_inv), jnp.where(take, idx, best_id)), None

    init = (jnp.zeros((h * w,), fd.scale.dtype), jnp.full((h * w,), _NO_FACE, jnp.int32))
    (best_inv, best_id), _ = lax.scan(step, init, ids)
    return best_inv, best_id


def _dense_visibility(fd: _FaceData, image_size: Tuple[int, int], face_chunk: int) -> jnp.ndarray:
    """Face id (P,) by testing every face at every pixel; -1 = background."""
    n_faces = fd.valid.shape[0]
    inv, ids = _dense_pass(fd, jnp.arange(n_faces, dtype=jnp.int32), image_size, face_chunk)
    return jnp.where(inv > 0, ids, -1)


def _window_pass(fd: _FaceData, image_size: Tuple[int, int], window: int) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Each face tested on the window x window pixel centres from its box start.

    Returns (inverse depth (F, S^2), 0 = not covered; flat pixel index (F, S^2),
    ``H * W`` where not covered or outside the image).
    """
    h, w = image_size
    limit = jnp.array([w, h], fd.start.dtype)
    start = jnp.clip(fd.start, -window, limit).astype(jnp.int32)  # keeps int32 in range
    offs = jnp.arange(window, dtype=jnp.int32)
    cols = jnp.broadcast_to(start[:, 0, None, None] + offs[None, None, :], (start.shape[0], window, window))
    rows = jnp.broadcast_to(start[:, 1, None, None] + offs[None, :, None], (start.shape[0], window, window))
    cols, rows = cols.reshape(-1, window * window), rows.reshape(-1, window * window)
    inv = _inverse_depth(fd, cols.astype(fd.scale.dtype), rows.astype(fd.scale.dtype))
    hit = (inv > 0) & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    return jnp.where(hit, inv, 0.0), jnp.where(hit, rows * w + cols, h * w)


def _chunk_faces(fd: _FaceData, chunk: int) -> Tuple[_FaceData, jnp.ndarray]:
    """Split the face table into (N, chunk, ...) blocks, padding with invalid faces.

    Returns the blocked table and the face ids (N, chunk) (padding ids are 0 and invalid).
    """
    n_faces = fd.valid.shape[0]
    chunk = max(1, min(chunk, n_faces))
    n_chunks = -(-n_faces // chunk)
    pad = n_chunks * chunk - n_faces
    blocked = jax.tree_util.tree_map(
        lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape((n_chunks, chunk) + a.shape[1:]), fd
    )
    ids = jnp.pad(jnp.arange(n_faces, dtype=jnp.int32), (0, pad)).reshape(n_chunks, chunk)
    return blocked, ids


def _windowed_visibility(
    fd: _FaceData, image_size: Tuple[int, int], window: int, dense_faces: int, face_chunk: int
) -> jnp.ndarray:
    """Face id (P,): window pass for all faces + dense pass for the ``dense_faces`` largest.

    Exact when every face outside the largest ``dense_faces`` has span <= window. The
    window pass runs over blocks of faces (about ``_WINDOW_BLOCK`` pixel tests each)
    twice: a scatter-max builds the z-buffer, then a scatter-min of the face ids
    that reach it picks the lowest id among ties.
    """
    h, w = image_size
    n_pix = h * w
    blocked, block_ids = _chunk_faces(fd, _WINDOW_BLOCK // (window * window))
    _, largest = lax.top_k(fd.span, dense_faces)
    inv_d, id_d = _dense_pass(fd, largest.astype(jnp.int32), image_size, face_chunk)

    def depth_step(zbuf, block):
        inv, flat = _window_pass(block, image_size, window)
        return zbuf.at[flat.reshape(-1)].max(inv.reshape(-1), mode="drop"), None

    zbuf, _ = lax.scan(depth_step, inv_d, blocked)

    def id_step(best, block_and_ids):
        block, ids = block_and_ids
        inv, flat = _window_pass(block, image_size, window)
        winner = (inv > 0) & (inv == zbuf[jnp.minimum(flat, n_pix - 1)])
        target = jnp.where(winner, flat, n_pix).reshape(-1)
        ids = jnp.broadcast_to(ids[:, None], flat.shape).reshape(-1)
        return best.at[target].min(ids, mode="drop"), None

    best_d = jnp.where((inv_d > 0) & (inv_d == zbuf), id_d, _NO_FACE)
    best, _ = lax.scan(id_step, best_d, (blocked, block_ids))
    return jnp.where(zbuf > 0, best, -1)


def _useful_windows(windows: Sequence[int], n_faces: int, image_size, dense_faces: int) -> Tuple[int, ...]:
    """Windows of the ladder predicted to beat the dense pass (sorted, unique).

    A windowed pixel test (two scatters) is costed ``_WINDOW_COST`` dense pixel tests,
    which matches XLA:CPU; the choice only affects speed, never the result.
    """
    h, w = image_size
    if dense_faces >= n_faces:
        return ()
    dense_cost = n_faces * h * w
    keep = [
        s for s in sorted(set(int(s) for s in windows))
        if _WINDOW_COST * n_faces * s * s + dense_faces * h * w < dense_cost
    ]
    return tuple(keep)


def _branch_index(fd: _FaceData, windows: Tuple[int, ...], dense_faces: int) -> jnp.ndarray:
    """Index of the smallest exact window (``len(windows)`` = dense) for one mesh."""
    if not windows:
        return jnp.array(0, jnp.int32)
    kth = lax.top_k(fd.span, dense_faces + 1)[0][-1]  # largest span outside the dense set
    fits = kth <= jnp.asarray(windows, fd.span.dtype)
    return jnp.where(jnp.any(fits), jnp.argmax(fits), len(windows)).astype(jnp.int32)


def _visibility_branches(image_size, windows, dense_faces, face_chunk, batched):
    """The lax.switch branches: one per window, then dense; vmapped when ``batched``."""
    fns = [
        functools.partial(
            _windowed_visibility, image_size=image_size, window=s, dense_faces=dense_faces, face_chunk=face_chunk
        )
        for s in windows
    ]
    fns.append(functools.partial(_dense_visibility, image_size=image_size, face_chunk=face_chunk))
    return [jax.vmap(f) if batched else f for f in fns]


@functools.partial(
    jax.jit, static_argnames=("image_size", "face_chunk", "near", "windows", "dense_faces", "batched")
)
def _visible_faces(verts, faces, K, image_size, face_chunk, near, windows, dense_faces, batched):
    """face id (..., H, W) for one mesh, or a batch (B, V, 3) when ``batched`` (one switch for all)."""
    h, w = image_size
    verts, K = lax.stop_gradient(verts), lax.stop_gradient(K)
    faces = faces.astype(jnp.int32)
    windows = _useful_windows(windows, faces.shape[0], image_size, dense_faces)
    if batched:
        xy, z = jax.vmap(screen_space, in_axes=(0, 0 if K.ndim == 3 else None))(verts, K)
        fd = jax.vmap(_face_data, in_axes=(0, 0, None, None))(xy, z, faces, near)
        branch = jnp.max(jax.vmap(lambda f: _branch_index(f, windows, dense_faces))(fd))
    else:
        xy, z = screen_space(verts, K)
        fd = _face_data(xy, z, faces, near)
        branch = _branch_index(fd, windows, dense_faces)
    branches = _visibility_branches(image_size, windows, dense_faces, face_chunk, batched)
    face_id = branches[0](fd) if len(branches) == 1 else lax.switch(branch, branches, fd)
    return face_id.reshape(face_id.shape[:-1] + (h, w))


def _check_visibility_args(image_size, face_chunk, windows, dense_faces):
    h, w = check_image_size(image_size)
    if int(face_chunk) < 1:
        raise ValueError(f"face_chunk must be a positive int, got {face_chunk!r}")
    if int(dense_faces) < 1:
        raise ValueError(f"dense_faces must be a positive int, got {dense_faces!r}")
    windows = tuple(int(s) for s in windows)
    if any(s < 1 for s in windows):
        raise ValueError(f"windows must be positive ints, got {windows!r}")
    return (h, w), int(face_chunk), windows, int(dense_faces)


def visible_faces(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    dense_faces: int = DEFAULT_DENSE_FACES,
) -> jnp.ndarray:
    """Index of the nearest face covering each pixel centre, (H, W) int32, -1 = background.

    Non-differentiable (inputs are wrapped in ``stop_gradient``). ``windows`` is the
    ladder of window sizes (pixels) for the windowed pass, ``()`` forces the dense
    pass; ``dense_faces`` faces with the largest boxes always go through the dense
    pass; ``face_chunk`` bounds the dense pass's memory to O(face_chunk * H * W).
    All strategies return the same ids (up to float ties). Under a user ``jax.vmap``
    the strategy switch turns into a select that evaluates every branch: prefer
    :func:`visible_faces_batch` for batches.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    check_mesh(verts, faces, K)
    image_size, face_chunk, windows, dense_faces = _check_visibility_args(image_size, face_chunk, windows, dense_faces)
    return _visible_faces(verts, faces, K, image_size, face_chunk, float(near), windows, dense_faces, False)


def visible_faces_batch(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    dense_faces: int = DEFAULT_DENSE_FACES,
) -> jnp.ndarray:
    """Batched :func:`visible_faces`: verts (B, V, 3), shared faces (F, 3), K (3, 3) or (B, 3, 3).

    One strategy (the smallest window exact for every mesh of the batch) is chosen
    for the whole batch, so only that branch runs. Returns (B, H, W) int32.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    check_mesh(verts, faces, K, batched=True)
    image_size, face_chunk, windows, dense_faces = _check_visibility_args(image_size, face_chunk, windows, dense_faces)
    return _visible_faces(verts, faces, K, image_size, face_chunk, float(near), windows, dense_faces, True)


# --------------------------------------------------------------------------- public API


@jax.jit
def fragments_from_face_id(
    verts: jnp.ndarray, faces: jnp.ndarray, K: jnp.ndarray, face_id: jnp.ndarray
) -> Fragments:
    """Differentiable barycentrics/depth of each pixel centre in the given (fixed) faces.

    ``face_id`` (H, W) is treated as a constant; ``bary`` and ``depth`` are
    recomputed from ``verts`` and ``K`` and carry their gradients.
    """
    face_id = lax.stop_gradient(face_id).astype(jnp.int32)
    mask = face_id >= 0
    xy, z = screen_space(verts, K)
    tri = faces.astype(jnp.int32)[jnp.maximum(face_id, 0)]  # (H, W, 3)
    pix = pixel_centers(face_id.shape, xy.dtype)
    bary, depth = perspective_barycentrics(xy[tri], z[tri], pix, mask)
    return Fragments(face_id=jnp.where(mask, face_id, -1), bary=bary, depth=depth, mask=mask)


def rasterize(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    dense_faces: int = DEFAULT_DENSE_FACES,
) -> Fragments:
    """Rasterise ONE mesh: verts (V, 3) camera frame, faces (F, 3) int, K (3, 3).

    ``image_size`` = (H, W) and the integer options must be static under
    ``jax.jit`` (e.g. ``functools.partial(rasterize, image_size=(H, W))``). For
    batches use :func:`rasterize_batch` (``jax.vmap(rasterize)`` also works but
    evaluates every visibility strategy). See :func:`visible_faces` for the options
    and the module docstring for conventions; ``depth`` is 0 on background.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    check_mesh(verts, faces, K)
    face_id = visible_faces(verts, faces, K, image_size, face_chunk, near, windows, dense_faces)
    return fragments_from_face_id(verts, faces, K, face_id)


def rasterize_batch(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    dense_faces: int = DEFAULT_DENSE_FACES,
) -> Fragments:
    """Batched :func:`rasterize`: verts (B, V, 3), shared faces (F, 3), K (3, 3) or (B, 3, 3).

    Returns :class:`Fragments` with a leading batch axis.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    face_id = visible_faces_batch(verts, faces, K, image_size, face_chunk, near, windows, dense_faces)
    k_axis = 0 if K.ndim == 3 else None
    return jax.vmap(fragments_from_face_id, in_axes=(0, None, k_axis, 0))(verts, faces, K, face_id)
