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
no gradient. It is exact and runs the cheapest of three strategies that is exact for
the input, chosen at run time with ``lax.switch`` (see :func:`visible_faces`), all
giving the same face ids:

* tiled (the usual one): the image is cut into ``tile`` x ``tile`` pixel tiles, each
  face is listed in the tiles its bounding box touches, and every tile tests only its
  listed faces, ``tile_faces`` at a time, at its own pixel centres. Work and memory
  follow the mesh's screen footprint, O(items * (tile_faces + tile^2)) for a static
  ladder of item capacities ``tile_items``;
* windowed: each face is tested on a small pixel block around its bounding box
  (memory ``O(F * S^2)``);
* dense, the fallback: chunks of ``face_chunk`` faces at every pixel with ``lax.scan``
  and a running z-buffer (memory ``O(face_chunk * H * W)``, never ``O(F * H * W)``).

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
DEFAULT_TILE = 8
DEFAULT_TILE_FACES = 16
DEFAULT_TILE_ITEMS = (512, 4096, 32768)
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
# Three exact strategies give the same face ids, because each evaluates the same
# operations (_inverse_depth) on the same per-face values and pixel centres and
# resolves depth ties to the lowest face index:
# * dense: every face is tested at every pixel, in chunks of ``face_chunk`` faces
#   (lax.scan with a running z-buffer), O(F * H * W) work;
# * windowed: each face is tested on an S x S block of pixel centres starting at its
#   bounding box, O(F * S^2) work, with a scatter-max z-buffer; the ``dense_faces``
#   faces with the largest boxes also go through the dense pass, so the result is
#   exact as long as every other face fits in S x S;
# * tiled: (tile, face) pairs for every tile a face's box touches, sorted by tile and
#   cut into work items of up to ``tile_faces`` faces; exact when the items and pairs
#   fit the static capacities, O(items * tile_faces * tile^2) work.
# ``lax.switch`` picks the cheapest strategy exact for the input (for every mesh of
# a batch), outside any vmap in the *_batch functions.

_NO_FACE = jnp.iinfo(jnp.int32).max
# Pixel tests per block of faces in the windowed pass (bounds its memory).
_WINDOW_BLOCK = 1 << 18
# Relative cost of a windowed pixel test vs a dense one (see _useful_windows).
_WINDOW_COST = 24
# Relative cost of a tiled pixel test vs a dense one, and the fixed cost (pair sort,
# item lists, merge) per work item of capacity, in dense pixel tests (XLA:CPU).
_TILE_COST = 1.0
_TILE_ITEM_OVERHEAD = 256


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
    stop: jnp.ndarray  # (F, 2) last pixel centre (x, y) <= the bounding box maximum


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
    stop = jnp.floor(jnp.max(tri_xy, axis=1))
    extent = stop - start + 1.0
    return _FaceData(
        origin=jnp.where(forward, pa, pb),
        direction=jnp.where(forward, pb - pa, pa - pb),
        scale=jnp.where(ia < ib, 1.0, -1.0).astype(xy.dtype) * inv_area2[:, None],
        inv_z=inv_z,
        valid=valid,
        start=start,
        span=jnp.where(valid, jnp.maximum(jnp.max(extent, axis=-1), 0.0), 0.0),
        stop=stop,
    )


def _inverse_depth(fd: _FaceData, px: jnp.ndarray, py: jnp.ndarray) -> jnp.ndarray:
    """1/z of faces fd (..., N) at pixel centres px, py (..., N or 1, P); 0 where not covered -> (..., N, P).

    Every strategy evaluates exactly these operations on the same per-face values and
    pixel coordinates, so they agree bit for bit.
    """
    inside = fd.valid[..., None]
    inv_depth = 0.0
    for k in range(3):
        lam = (
            fd.direction[..., k, 0, None] * (py - fd.origin[..., k, 1, None])
            - fd.direction[..., k, 1, None] * (px - fd.origin[..., k, 0, None])
        ) * fd.scale[..., k, None]
        # The sign of the area is folded into scale, so both windings are covered.
        inside = inside & (lam >= 0)
        inv_depth = inv_depth + lam * fd.inv_z[..., k, None]
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


# Tiled pass: the image is cut into tile x tile pixel blocks; each face is listed in
# every tile its bounding box touches, the (tile, face) pairs are sorted by tile and
# cut into work items of up to ``tile_faces`` faces of one tile. An item tests its
# faces on its tile's pixel centres (a dense z-buffer in miniature, no scatter), and
# the items of a tile are merged with a small per-tile scatter-max / scatter-min.
# Exact whenever the number of items fits the static capacity.


class _TileLayout(NamedTuple):
    """Static tiling of an (H, W) image: ``rows`` x ``cols`` tiles of ``size`` x ``size`` pixels."""

    size: int
    faces: int  # faces per work item
    rows: int
    cols: int


def _tile_layout(image_size: Tuple[int, int], tile: int, tile_faces: int) -> _TileLayout:
    h, w = image_size
    return _TileLayout(tile, tile_faces, -(-h // tile), -(-w // tile))


def _tile_ranges(fd: _FaceData, image_size: Tuple[int, int], layout: _TileLayout):
    """Inclusive tile range of each face's pixel centres inside the image.

    Returns lo (F, 2), hi (F, 2) int32 tile coordinates (column, row) and the tile
    count (F,) int32, 0 for faces that cover no pixel centre of the image (invalid,
    off-screen, or a box between pixel centres).
    """
    h, w = image_size
    limit = jnp.array([w - 1, h - 1], fd.start.dtype)
    first = jnp.clip(fd.start, 0.0, limit + 1.0)  # clipped in float: boxes may be huge or far off
    last = jnp.clip(fd.stop, -1.0, limit)
    some = fd.valid & jnp.all(first <= last, axis=-1)
    lo = jnp.where(some[:, None], first, 0.0).astype(jnp.int32) // layout.size
    hi = jnp.where(some[:, None], last, 0.0).astype(jnp.int32) // layout.size
    count = jnp.where(some, (hi[:, 0] - lo[:, 0] + 1) * (hi[:, 1] - lo[:, 1] + 1), 0)
    return lo, hi, count


def _tile_counts(lo: jnp.ndarray, hi: jnp.ndarray, count: jnp.ndarray, layout: _TileLayout) -> jnp.ndarray:
    """Faces listed in each tile, (rows * cols,) int32 (2-D difference array + prefix sums)."""
    one = (count > 0).astype(jnp.int32)
    rows = jnp.stack([lo[:, 1], lo[:, 1], hi[:, 1] + 1, hi[:, 1] + 1], -1).reshape(-1)
    cols = jnp.stack([lo[:, 0], hi[:, 0] + 1, lo[:, 0], hi[:, 0] + 1], -1).reshape(-1)
    signs = (one[:, None] * jnp.array([1, -1, -1, 1], jnp.int32)).reshape(-1)
    grid = jnp.zeros((layout.rows + 1, layout.cols + 1), jnp.int32).at[rows, cols].add(signs)
    grid = jnp.cumsum(jnp.cumsum(grid, axis=0), axis=1)
    return grid[: layout.rows, : layout.cols].reshape(-1)


def _tile_pairs(items: int, layout: _TileLayout) -> int:
    """(tile, face) pair capacity that goes with a capacity of ``items`` work items: half
    full items on average (a mesh needing more takes the next capacity of the ladder)."""
    return max(1, items * layout.faces // 2)


def _tile_needs(fd: _FaceData, image_size: Tuple[int, int], layout: _TileLayout) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """(work items, (tile, face) pairs) the tiled pass needs for one mesh, scalars.

    Summed in float32 (exact below 2^24, and larger sums stay larger than any capacity)
    so that huge meshes on huge images cannot overflow int32.
    """
    lo, hi, count = _tile_ranges(fd, image_size, layout)
    per_tile = _tile_counts(lo, hi, count, layout)
    f32 = jnp.float32
    return jnp.sum((-(-per_tile // layout.faces)).astype(f32)), jnp.sum(count.astype(f32))


def _segment_owner(first: jnp.ndarray, count: jnp.ndarray, n: int) -> jnp.ndarray:
    """Owner (n,) int32 of each of n slots when owner k holds slots first[k] .. first[k] + count[k] - 1
    (first = exclusive cumsum of count (K,)); slots past the last are given the last non-empty owner."""
    owner = jnp.where(count > 0, jnp.arange(count.shape[0], dtype=jnp.int32), 0)
    marks = jnp.zeros((n,), jnp.int32).at[first].max(owner, mode="drop")
    return lax.cummax(marks)


def _tiled_visibility(
    fd: _FaceData, n_items: jnp.ndarray, image_size: Tuple[int, int], layout: _TileLayout, items: int
) -> jnp.ndarray:
    """Face id (P,) by the tiled pass with a capacity of ``items`` work items and
    ``_tile_pairs(items, layout)`` (tile, face) pairs; -1 = background.

    Exact when the mesh's needs (:func:`_tile_needs`) fit both capacities and
    ``n_items`` (a scalar, unbatched under vmap: the batch maximum) is at least its
    items: only the first ``n_items`` items are tested, so the pixel tests cost
    O(n_items * tile_faces * tile^2) whatever the capacity (they run twice: depth, then
    ids). Memory: O(items * tile_faces) for the pair and item lists, plus two image-sized
    tile buffers, plus ``_WINDOW_BLOCK`` pixel tests per step of the loops over blocks.
    """
    h, w = image_size
    t, c = layout.size, layout.faces
    n_tiles = layout.rows * layout.cols
    n_pairs = _tile_pairs(items, layout)
    lo, hi, count = _tile_ranges(fd, image_size, layout)
    n_faces = count.shape[0]
    # (tile, face) pairs in face order: face f owns pairs first[f] .. first[f] + count[f] - 1.
    first = jnp.cumsum(count) - count
    n_used = first[-1] + count[-1]
    p = jnp.arange(n_pairs, dtype=jnp.int32)
    face = _segment_owner(first, count, n_pairs)
    info = jnp.stack([first, lo[:, 0], lo[:, 1], hi[:, 0] - lo[:, 0] + 1], -1)[face]  # one row gather
    local = p - info[:, 0]
    dy = lax.div(local, info[:, 3])  # non-negative: truncating division
    tile = (info[:, 2] + dy) * layout.cols + info[:, 1] + local - dy * info[:, 3]
    tile = jnp.where(p < n_used, tile, n_tiles)  # unused slots sort last
    if (n_tiles + 1) * n_faces < 2**31:  # one packed key sorts much faster than two operands
        key = lax.sort(tile * n_faces + face)
        tile = lax.div(key, jnp.int32(n_faces))
        face = key - tile * n_faces
    else:
        tile, face = lax.sort((tile, face), num_keys=1)
    del tile  # sorted by tile; the items below know their tile
    # Work items: tile k holds ceil(per_tile[k] / c) of them, in tile order.
    per_tile = _tile_counts(lo, hi, count, layout)
    per_item = -(-per_tile // c)
    item_first = jnp.cumsum(per_item) - per_item
    n_items_used = item_first[-1] + per_item[-1]
    item_tile = _segment_owner(item_first, per_item, items)
    tab = jnp.stack([jnp.cumsum(per_tile) - per_tile, per_tile, item_first], -1)[item_tile]
    i = jnp.arange(items, dtype=jnp.int32)
    slot = (i - tab[:, 2])[:, None] * c + jnp.arange(c, dtype=jnp.int32)
    item_ok = i < n_items_used
    pair_ok = item_ok[:, None] & (slot < tab[:, 1, None])
    item_faces = jnp.where(pair_ok, face[jnp.clip(tab[:, 0, None] + slot, 0, n_pairs - 1)], -1)
    item_tile = jnp.where(item_ok, item_tile, n_tiles)

    offs = jnp.arange(t * t, dtype=jnp.int32)
    block = max(1, min(items, _WINDOW_BLOCK // (c * t * t)))
    n_blocks = -(-items // block)
    pad = n_blocks * block - items
    item_faces = jnp.pad(item_faces, ((0, pad), (0, 0)), constant_values=-1)
    item_tile = jnp.pad(item_tile, (0, pad), constant_values=n_tiles)

    def block_tests(j):
        """Nearest inverse depth and face (block, t*t) of the items of block j, and their tiles (block,)."""
        ids = lax.dynamic_slice_in_dim(item_faces, j * block, block)
        tiles = lax.dynamic_slice_in_dim(item_tile, j * block, block)
        sub = jax.tree_util.tree_map(lambda a: a[jnp.maximum(ids, 0)], fd)
        sub = sub._replace(valid=sub.valid & (ids >= 0))
        row, col = tiles // layout.cols, tiles % layout.cols
        px = (col[:, None] * t + offs % t)[:, None, :].astype(fd.scale.dtype)
        py = (row[:, None] * t + offs // t)[:, None, :].astype(fd.scale.dtype)
        inv = _inverse_depth(sub, px, py)  # (block, c, t*t)
        best = jnp.max(inv, axis=1)
        return best, jnp.min(jnp.where(inv == best[:, None], ids[:, :, None], _NO_FACE), axis=1), tiles

    def depth_block(j, zbuf):
        best, _, tiles = block_tests(j)
        return zbuf.at[tiles].max(best, mode="drop")

    def id_block(j, ids):
        best, winner, tiles = block_tests(j)  # recomputed: cheaper than storing items x t*t results
        top = (best > 0) & (best == zbuf[jnp.minimum(tiles, n_tiles - 1)])
        return ids.at[tiles].min(jnp.where(top, winner, _NO_FACE), mode="drop")

    # Only the blocks holding the first n_items items run: the per-tile z-buffer (scatter-max
    # of each item's nearest depths), then the lowest id among each tile's items reaching it.
    steps = jnp.minimum(-(-jnp.asarray(n_items, jnp.int32) // block), n_blocks)
    zbuf = lax.fori_loop(0, steps, depth_block, jnp.zeros((n_tiles, t * t), fd.scale.dtype))
    ids = lax.fori_loop(0, steps, id_block, jnp.full((n_tiles, t * t), _NO_FACE, jnp.int32))
    ids = jnp.where(zbuf > 0, ids, -1)
    image = ids.reshape(layout.rows, layout.cols, t, t).transpose(0, 2, 1, 3)
    return image.reshape(layout.rows * t, layout.cols * t)[:h, :w].reshape(-1)


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


class _Branch(NamedTuple):
    """One visibility strategy of the plan: kind "tiles" (size = work-item capacity),
    "window" (size = window side) or "dense" (size 0)."""

    kind: str
    size: int


def _visibility_plan(
    n_faces: int, image_size, windows: Tuple[int, ...], dense_faces: int, layout: _TileLayout, tile_items
) -> Tuple[Tuple[_Branch, ...], Tuple[int, ...]]:
    """The strategies worth compiling (dense last, always exact) and the useful windows."""
    h, w = image_size
    useful = _useful_windows(windows, n_faces, image_size, dense_faces)
    max_items = layout.rows * layout.cols * -(-n_faces // layout.faces)
    caps = sorted(set(min(int(c), max_items) for c in tile_items))
    # A capacity whose fixed cost alone reaches the dense pass's can never win.
    caps = [c for c in caps if _TILE_ITEM_OVERHEAD * c < n_faces * h * w]
    plan = [_Branch("tiles", c) for c in caps] + [_Branch("window", s) for s in useful] + [_Branch("dense", 0)]
    return tuple(plan), useful


def _branch_costs(plan, n_items: jnp.ndarray, n_faces: int, image_size, dense_faces: int, layout) -> jnp.ndarray:
    """Predicted cost (len(plan),) float32 of each strategy in dense pixel tests.

    Tiled: a fixed cost per item of capacity plus ``_TILE_COST`` per pixel test of the
    ``n_items`` items run; windowed: ``_WINDOW_COST`` per pixel test (two scatters) plus
    the dense pass of its ``dense_faces`` largest faces. The constants match XLA:CPU;
    the choice only affects speed, never the result.
    """
    h, w = image_size
    costs = []
    for b in plan:
        if b.kind == "tiles":
            tests = n_items * layout.faces * layout.size**2
            costs.append(_TILE_ITEM_OVERHEAD * b.size + _TILE_COST * tests)
        elif b.kind == "window":
            costs.append(jnp.float32(_WINDOW_COST * n_faces * b.size**2 + dense_faces * h * w))
        else:
            costs.append(jnp.float32(n_faces * h * w))
    return jnp.stack([jnp.asarray(c, jnp.float32) for c in costs])


def _exact_branches(fd: _FaceData, plan, useful_windows, dense_faces, image_size, layout):
    """(len(plan),) bool: which strategies of the plan are exact for one mesh, and the
    work items the tiled pass needs (float32 scalar, 0 without tiles)."""
    flags = []
    items = pairs = jnp.float32(0)
    if any(b.kind == "tiles" for b in plan):
        items, pairs = _tile_needs(fd, image_size, layout)
    if useful_windows:
        smallest = _branch_index(fd, useful_windows, dense_faces)
    for b in plan:
        if b.kind == "tiles":
            flags.append((items <= b.size) & (pairs <= _tile_pairs(b.size, layout)))
        elif b.kind == "window":
            flags.append(smallest <= useful_windows.index(b.size))
        else:
            flags.append(jnp.array(True))
    return jnp.stack(flags), items


def _branch_fn(b: _Branch, image_size, dense_faces, face_chunk, layout):
    """The strategy as a function of (face table, items to run)."""
    if b.kind == "tiles":
        return functools.partial(_tiled_visibility, image_size=image_size, layout=layout, items=b.size)
    if b.kind == "window":
        fn = functools.partial(
            _windowed_visibility, image_size=image_size, window=b.size, dense_faces=dense_faces, face_chunk=face_chunk
        )
    else:
        fn = functools.partial(_dense_visibility, image_size=image_size, face_chunk=face_chunk)
    return lambda fd, n_items: fn(fd)


def _screen_faces(verts, faces, K, near, batched) -> _FaceData:
    if batched:
        xy, z = jax.vmap(screen_space, in_axes=(0, 0 if K.ndim == 3 else None))(verts, K)
        return jax.vmap(_face_data, in_axes=(0, 0, None, None))(xy, z, faces, near)
    xy, z = screen_space(verts, K)
    return _face_data(xy, z, faces, near)


_STATIC = ("image_size", "face_chunk", "near", "windows", "dense_faces", "tile", "tile_faces", "tile_items", "batched")


def _plan_and_choice(verts, faces, K, image_size, near, windows, dense_faces, tile, tile_faces, tile_items, batched):
    """(plan, layout, face table, chosen index, tiled items to run) with one choice for
    the whole batch: the cheapest strategy exact for every mesh."""
    verts, K = lax.stop_gradient(verts), lax.stop_gradient(K)
    layout = _tile_layout(image_size, tile, tile_faces)
    plan, useful = _visibility_plan(faces.shape[0], image_size, windows, dense_faces, layout, tile_items)
    fd = _screen_faces(verts, faces, K, near, batched)
    exact = functools.partial(
        _exact_branches, plan=plan, useful_windows=useful, dense_faces=dense_faces, image_size=image_size,
        layout=layout,
    )
    if batched:
        ok, items = jax.vmap(exact)(fd)
        ok, items = jnp.all(ok, axis=0), jnp.max(items)
    else:
        ok, items = exact(fd)
    costs = _branch_costs(plan, items, faces.shape[0], image_size, dense_faces, layout)
    choice = jnp.argmin(jnp.where(ok, costs, jnp.inf)).astype(jnp.int32)  # dense (last) is always exact
    # items <= the chosen capacity when tiles are chosen; clipped so that the cast cannot overflow
    n_items = jnp.minimum(items, max([b.size for b in plan if b.kind == "tiles"], default=0)).astype(jnp.int32)
    return plan, layout, fd, choice, n_items


@functools.partial(jax.jit, static_argnames=_STATIC)
def _visible_faces(verts, faces, K, image_size, face_chunk, near, windows, dense_faces, tile, tile_faces,
                   tile_items, batched):
    """face id (..., H, W) for one mesh, or a batch (B, V, 3) when ``batched`` (one switch for all)."""
    h, w = image_size
    faces = faces.astype(jnp.int32)
    plan, layout, fd, choice, n_items = _plan_and_choice(
        verts, faces, K, image_size, near, windows, dense_faces, tile, tile_faces, tile_items, batched
    )
    fns = [_branch_fn(b, image_size, dense_faces, face_chunk, layout) for b in plan]
    fns = [jax.vmap(f, in_axes=(0, None)) if batched else f for f in fns]
    face_id = fns[0](fd, n_items) if len(fns) == 1 else lax.switch(choice, fns, fd, n_items)
    return face_id.reshape(face_id.shape[:-1] + (h, w))


@functools.partial(jax.jit, static_argnames=_STATIC)
def _chosen_branch(verts, faces, K, image_size, face_chunk, near, windows, dense_faces, tile, tile_faces,
                   tile_items, batched):
    del face_chunk
    return _plan_and_choice(
        verts, faces.astype(jnp.int32), K, image_size, near, windows, dense_faces, tile, tile_faces, tile_items,
        batched,
    )[3:]


def _check_visibility_args(image_size, face_chunk, windows, dense_faces, tile=DEFAULT_TILE,
                           tile_faces=DEFAULT_TILE_FACES, tile_items=DEFAULT_TILE_ITEMS):
    h, w = check_image_size(image_size)
    for name, value in (("face_chunk", face_chunk), ("dense_faces", dense_faces), ("tile", tile),
                        ("tile_faces", tile_faces)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    windows = tuple(int(s) for s in windows)
    if any(s < 1 for s in windows):
        raise ValueError(f"windows must be positive ints, got {windows!r}")
    tile_items = tuple(int(s) for s in tile_items)
    if any(s < 1 for s in tile_items):
        raise ValueError(f"tile_items must be positive ints, got {tile_items!r}")
    return dict(image_size=(h, w), face_chunk=int(face_chunk), windows=windows, dense_faces=int(dense_faces),
                tile=int(tile), tile_faces=int(tile_faces), tile_items=tile_items)


def visible_faces(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    dense_faces: int = DEFAULT_DENSE_FACES,
    tile: int = DEFAULT_TILE,
    tile_faces: int = DEFAULT_TILE_FACES,
    tile_items: Sequence[int] = DEFAULT_TILE_ITEMS,
) -> jnp.ndarray:
    """Index of the nearest face covering each pixel centre, (H, W) int32, -1 = background.

    Non-differentiable (inputs are wrapped in ``stop_gradient``). The cheapest exact
    strategy runs (module docstring): ``tile_items`` is the ladder of work-item
    capacities of the tiled pass (``tile`` x ``tile`` pixel tiles, up to ``tile_faces``
    faces per item; ``()`` turns it off), ``windows`` the ladder of window sizes
    (pixels) of the windowed pass (``()`` turns it off), where the ``dense_faces``
    faces with the largest boxes go through the dense pass; with both off the dense
    pass runs alone; ``face_chunk`` bounds the dense pass's memory to
    O(face_chunk * H * W). All strategies return the same ids. Under a user
    ``jax.vmap`` the strategy switch turns into a select that evaluates every branch:
    prefer :func:`visible_faces_batch` for batches.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    check_mesh(verts, faces, K)
    opts = _check_visibility_args(image_size, face_chunk, windows, dense_faces, tile, tile_faces, tile_items)
    return _visible_faces(verts, faces, K, near=float(near), batched=False, **opts)


def visible_faces_batch(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    dense_faces: int = DEFAULT_DENSE_FACES,
    tile: int = DEFAULT_TILE,
    tile_faces: int = DEFAULT_TILE_FACES,
    tile_items: Sequence[int] = DEFAULT_TILE_ITEMS,
) -> jnp.ndarray:
    """Batched :func:`visible_faces`: verts (B, V, 3), shared faces (F, 3), K (3, 3) or (B, 3, 3).

    One strategy (the cheapest exact for every mesh of the batch) is chosen for the
    whole batch, so only that branch runs. Returns (B, H, W) int32.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    check_mesh(verts, faces, K, batched=True)
    opts = _check_visibility_args(image_size, face_chunk, windows, dense_faces, tile, tile_faces, tile_items)
    return _visible_faces(verts, faces, K, near=float(near), batched=True, **opts)


def visibility_strategy(
    verts: jnp.ndarray,
    faces: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    near: float = DEFAULT_NEAR,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    dense_faces: int = DEFAULT_DENSE_FACES,
    tile: int = DEFAULT_TILE,
    tile_faces: int = DEFAULT_TILE_FACES,
    tile_items: Sequence[int] = DEFAULT_TILE_ITEMS,
) -> str:
    """Which visibility pass :func:`visible_faces_batch` (verts (B, V, 3)) or
    :func:`visible_faces` (verts (V, 3)) runs for these inputs, for reports:
    ``"tiles 8px/16 faces: 606 of 4096 items"`` (items run of the capacity),
    ``"window 32"`` or ``"dense"``. Host-side (not jittable)."""
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    batched = verts.ndim == 3
    check_mesh(verts, faces, K, batched=batched)
    opts = _check_visibility_args(image_size, DEFAULT_FACE_CHUNK, windows, dense_faces, tile, tile_faces, tile_items)
    index, n_items = (int(a) for a in _chosen_branch(verts, faces, K, near=float(near), batched=batched, **opts))
    layout = _tile_layout(opts["image_size"], opts["tile"], opts["tile_faces"])
    plan, _ = _visibility_plan(faces.shape[0], opts["image_size"], opts["windows"], opts["dense_faces"], layout,
                               opts["tile_items"])
    b = plan[index]
    if b.kind == "tiles":
        return f"tiles {layout.size}px/{layout.faces} faces: {n_items} of {b.size} items"
    return f"window {b.size}" if b.kind == "window" else "dense"


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
    tile: int = DEFAULT_TILE,
    tile_faces: int = DEFAULT_TILE_FACES,
    tile_items: Sequence[int] = DEFAULT_TILE_ITEMS,
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
    face_id = visible_faces(
        verts, faces, K, image_size, face_chunk, near, windows, dense_faces, tile, tile_faces, tile_items
    )
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
    tile: int = DEFAULT_TILE,
    tile_faces: int = DEFAULT_TILE_FACES,
    tile_items: Sequence[int] = DEFAULT_TILE_ITEMS,
) -> Fragments:
    """Batched :func:`rasterize`: verts (B, V, 3), shared faces (F, 3), K (3, 3) or (B, 3, 3).

    Returns :class:`Fragments` with a leading batch axis.
    """
    verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K)
    face_id = visible_faces_batch(
        verts, faces, K, image_size, face_chunk, near, windows, dense_faces, tile, tile_faces, tile_items
    )
    k_axis = 0 if K.ndim == 3 else None
    return jax.vmap(fragments_from_face_id, in_axes=(0, None, k_axis, 0))(verts, faces, K, face_id)
