"""The tiled visibility pass of handjax.render.rasterize: exact, i.e. the same face ids as the dense pass.

References: the dense pass (every face at every pixel), a float64 numpy z-buffer, and brute-force numpy versions of
the tile bookkeeping (per-tile face counts, slot owners). Every test checks that the tiled pass is the strategy that
actually ran (or, for the capacity test, that it is not).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from handjax.render import rasterize_batch, seal_wrist, visibility_strategy, visible_faces, visible_faces_batch
from handjax.render.rasterize import _FaceData, _segment_owner, _tile_counts, _tile_layout, _tile_needs, _tile_ranges

# Small tiles and items, so that the tests' tiny images have many tiles and tiles hold several items.
TILES = dict(windows=(), tile=5, tile_faces=4, tile_items=(128, 1024))
DENSE = dict(windows=(), tile_items=())


def np_project(points, K):
    p = points @ K.T
    return p[..., :2] / p[..., 2:3]


def sealed_hand():
    builtin = pytest.importorskip("handjax.mano.builtin")
    a = builtin.builtin_mano_arrays("right")
    v, f = seal_wrist(jnp.asarray(a["v_template"]), np.asarray(a["f"]).astype(np.int64))
    v = np.asarray(v) @ np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]).T  # palm (+y) -> -z
    return v - v.mean(0), np.asarray(f)


def hand_batch(size):
    """Four posed hands on a size^2 image: large, small, half off the left edge, and tilted through the near plane
    (faces crossing it are dropped, the ones just in front of it are larger than the image)."""
    v, f = sealed_hand()
    c, s = np.cos(0.5), np.sin(0.5)
    turned = v @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T
    extent = np.abs(v[:, :2]).max()
    verts = np.stack([
        v + [0.0, 0.0, 0.5],
        0.3 * turned + [0.02, 0.01, 0.5],
        turned + [-0.5 * extent, 0.0, 0.5],
        v @ np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]]).T + [0.0, 0.0, 0.03],  # tilted through z = near
    ])
    focal = 0.45 * size * 0.5 / extent
    K = np.array([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]])
    return jnp.asarray(verts, jnp.float32), jnp.asarray(f), jnp.asarray(K, jnp.float32)


def test_tile_bookkeeping_matches_numpy():
    rng = np.random.default_rng(0)
    h, w = 23, 31
    layout = _tile_layout((h, w), 5, 3)
    assert (layout.rows, layout.cols) == (5, 7)
    # boxes: random, partly outside, fully outside, between two pixel centres, invalid
    start = np.concatenate([rng.uniform(-10, 35, (40, 2)), [[-8.0, -3.0], [40.0, 2.0], [3.2, 4.0], [1.0, 1.0]]])
    start = np.ceil(start)
    stop = np.floor(start + np.concatenate([rng.uniform(-1, 18, (40, 2)), [[20.0, 6.0], [3.0, 3.0], [-1.0, 2.0],
                                                                           [2.0, 2.0]]]))
    valid = np.ones(len(start), bool)
    valid[-1] = False
    n = len(start)
    fd = _FaceData(origin=jnp.zeros((n, 3, 2)), direction=jnp.zeros((n, 3, 2)), scale=jnp.zeros((n, 3)),
                   inv_z=jnp.zeros((n, 3)), valid=jnp.asarray(valid), start=jnp.asarray(start, jnp.float32),
                   span=jnp.zeros(n), stop=jnp.asarray(stop, jnp.float32))
    lo, hi, count = _tile_ranges(fd, (h, w), layout)
    per_tile = np.asarray(_tile_counts(lo, hi, count, layout)).reshape(layout.rows, layout.cols)
    # brute force: a face is listed in a tile iff one of its box's pixel centres inside the image lies in the tile
    ref = np.zeros((layout.rows, layout.cols), int)
    ref_count = np.zeros(n, int)
    for k in range(n):
        ys, xs = np.mgrid[0:h, 0:w]
        inside = valid[k] & (xs >= start[k, 0]) & (xs <= stop[k, 0]) & (ys >= start[k, 1]) & (ys <= stop[k, 1])
        tiles = np.zeros_like(ref, bool)
        tiles[ys[inside] // 5, xs[inside] // 5] = True
        ref += tiles
        ref_count[k] = tiles.sum()
    np.testing.assert_array_equal(np.asarray(count), ref_count)
    np.testing.assert_array_equal(per_tile, ref)
    assert ref_count[-4:].tolist() == [3, 0, 0, 0] and ref.max() >= 3
    items, pairs = _tile_needs(fd, (h, w), layout)
    assert float(items) == np.sum(-(-ref // 3)) and float(pairs) == ref.sum()
    # slot owners: owner k holds count[k] consecutive slots (empty owners in between)
    counts = np.array([0, 3, 1, 0, 0, 2, 4, 0])
    first = np.cumsum(counts) - counts
    got = np.asarray(_segment_owner(jnp.asarray(first), jnp.asarray(counts), 12))
    np.testing.assert_array_equal(got[:10], np.repeat(np.arange(8), counts))
    assert np.all(got[10:] == 6)


def test_tiled_equals_dense_on_a_batch_of_hands():
    size = 48
    verts, faces, K = hand_batch(size)
    strategy = visibility_strategy(verts, faces, K, (size, size), near=1e-3, **TILES)
    assert strategy.startswith("tiles 5px/4 faces") and strategy.endswith("of 1024 items")
    got = np.asarray(visible_faces_batch(verts, faces, K, (size, size), **TILES))
    dense = np.asarray(visible_faces_batch(verts, faces, K, (size, size), **DENSE))
    cover = (dense >= 0).mean(axis=(1, 2))
    assert cover[0] > 0.2 and 0.01 < cover[1] < 0.1 and 0.1 < cover[2] < cover[0] and cover[3] > 0.5
    assert (dense[2][:, 0] >= 0).any() and len(np.unique(dense)) > 400  # mesh 2 leaves the image on the left
    assert (verts[3, :, 2] < 1e-3).any() and (verts[3, :, 2] > 0.05).any()  # mesh 3: huge faces, some dropped
    np.testing.assert_array_equal(got, dense)
    # one mesh alone takes the smaller capacity; the others run as many items as the batch's largest needs
    small = visibility_strategy(verts[1], faces, K, (size, size), near=1e-3, **TILES)
    assert small.endswith("of 128 items"), small
    np.testing.assert_array_equal(np.asarray(visible_faces(verts[1], faces, K, (size, size), **TILES)), dense[1])


def test_tiled_matches_numpy_zbuffer_with_large_faces_and_ties():
    h, w = 24, 32
    K = np.array([[40.0, 0.0, 15.5], [0.0, 40.0, 11.5], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(3)
    # 200 small fronto-parallel triangles at random depths, a background quad far larger than the image (every
    # tile lists it), and a duplicated triangle (the same geometry under two ids: the lower id must win).
    n = 200
    centre = np.stack([rng.uniform(-2, w + 1, n), rng.uniform(-2, h + 1, n)], -1)
    angle = rng.uniform(0, 2 * np.pi, (n, 1)) + np.array([0, 2.1, 4.2])
    uv = centre[:, None, :] + rng.uniform(1.5, 5, (n, 1, 1)) * np.stack([np.cos(angle), np.sin(angle)], -1)
    rays = np.concatenate([uv, np.ones((n, 3, 1))], -1) @ np.linalg.inv(K).T
    small = (rays * rng.uniform(1.0, 2.0, (n, 1, 1))).reshape(-1, 3)
    big = np.array([[-5, -5, 3.0], [5, -5, 3.0], [5, 5.37, 3.0], [-5, 5, 3.0]])  # diagonal off pixel centres
    dup = np.array([[-0.1, -0.08, 0.9], [0.12, -0.05, 0.9], [0.0, 0.1, 0.95]])
    verts = np.concatenate([small, big, dup])
    m = 3 * n
    faces = np.concatenate([np.arange(m).reshape(n, 3), [[m, m + 1, m + 2], [m, m + 2, m + 3]],
                            [[m + 4, m + 5, m + 6], [m + 4, m + 5, m + 6]]])
    depth = np.full((h, w), np.inf)
    ref = np.full((h, w), -1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T
    for i, f in enumerate(faces):  # float64 ray casting; '<' keeps the lower id on exact ties
        tri = verts[f]
        e = []
        p = np_project(tri, K)
        for a, b in ((1, 2), (2, 0), (0, 1)):
            e.append((p[b, 0] - p[a, 0]) * (ys - p[a, 1]) - (p[b, 1] - p[a, 1]) * (xs - p[a, 0]))
        inside = np.all(np.stack(e) >= 0, 0) | np.all(np.stack(e) <= 0, 0)
        normal = np.cross(tri[1] - tri[0], tri[2] - tri[0])
        d = (rays * ((normal @ tri[0]) / (rays @ normal))[..., None])[..., 2]
        closer = inside & (d < depth)
        depth[closer], ref[closer] = d[closer], i
    args = (jnp.asarray(verts, jnp.float32), jnp.asarray(faces), jnp.asarray(K, jnp.float32), (h, w))
    opts = dict(windows=(), tile=5, tile_faces=8, tile_items=(256,))  # a capacity the cost model prefers to dense
    assert visibility_strategy(*args, **opts).startswith("tiles")
    got = np.asarray(visible_faces(*args, **opts))
    assert (ref == n + 2).sum() > 20 and not (ref == n + 3).any() and (ref == n).any() and (ref == n + 1).any()
    assert len(np.unique(ref[ref < n])) > 60
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, np.asarray(visible_faces(*args, **DENSE)))


def test_capacity_too_small_falls_back_exactly():
    size = 32
    verts, faces, K = hand_batch(size)
    verts = verts[:2]
    dense = np.asarray(visible_faces_batch(verts, faces, K, (size, size), **DENSE))
    needs = [float(_tile_needs(_face_table(v, faces, K), (size, size), _tile_layout((size, size), 5, 4))[0])
             for v in verts]
    assert needs[1] <= 64 < needs[0]
    # the small hand alone fits 64 items; with the big one the batch falls back to the windowed pass
    opts = dict(tile=5, tile_faces=4, tile_items=(64,), windows=(4,), dense_faces=64)
    assert visibility_strategy(verts[1:], faces, K, (size, size), near=1e-3, **opts).startswith("tiles")
    assert visibility_strategy(verts, faces, K, (size, size), near=1e-3, **opts) == "window 4"
    np.testing.assert_array_equal(np.asarray(visible_faces_batch(verts, faces, K, (size, size), **opts)), dense)


def _face_table(v, faces, K):
    from handjax.render.rasterize import _face_data, screen_space

    return _face_data(*screen_space(v, K), faces.astype(jnp.int32), 1e-3)


def test_tiled_under_jit_vmap_sharding_and_grad():
    size = 32
    verts, faces, K = hand_batch(size)
    verts = jnp.concatenate([verts, verts + jnp.array([0.01, -0.02, 0.03])])  # 8 meshes, one per device
    dense = np.asarray(visible_faces_batch(verts, faces, K, (size, size), **DENSE))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.device_put(verts, NamedSharding(mesh, PartitionSpec("data")))
    fn = jax.jit(functools.partial(visible_faces_batch, faces=faces, K=K, image_size=(size, size), **TILES))
    assert visibility_strategy(verts, faces, K, (size, size), near=1e-3, **TILES).startswith("tiles")
    np.testing.assert_array_equal(np.asarray(fn(sharded)), dense)
    # a user vmap of the single-mesh function (the switch becomes a select)
    single = functools.partial(visible_faces, faces=faces, K=K, image_size=(size, size), **TILES)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(single))(verts[:2])), dense[:2])

    # gradients flow through the fragments of the tiled face ids exactly as through the dense ones
    def loss(v, opts):
        frags = rasterize_batch(v, faces, K, (size, size), **opts)
        return jnp.sum(frags.depth * frags.bary[..., 0])

    g_tiled = jax.jit(jax.grad(functools.partial(loss, opts=TILES)))(verts[:2])
    g_dense = jax.jit(jax.grad(functools.partial(loss, opts=DENSE)))(verts[:2])
    assert np.all(np.isfinite(np.asarray(g_tiled))) and float(jnp.abs(g_tiled).max()) > 0
    np.testing.assert_allclose(np.asarray(g_tiled), np.asarray(g_dense), rtol=1e-6, atol=1e-9)


def test_bad_tile_options_raise():
    verts, faces, K = hand_batch(16)
    for key, value in (("tile", 0), ("tile_faces", 0), ("tile_items", (64, 0))):
        with pytest.raises(ValueError, match=key):
            visible_faces_batch(verts, faces, K, (16, 16), **{key: value})


def test_strategy_choice_follows_the_options():
    """The tiled pass is the default choice for hands; without it the windowed pass runs (and is still exact)."""
    size = 48
    verts, faces, K = hand_batch(size)
    verts = verts[:2]
    dense = np.asarray(visible_faces_batch(verts, faces, K, (size, size), **DENSE))
    assert visibility_strategy(verts, faces, K, (size, size), near=1e-3, windows=(8, 16)).startswith("tiles 8px/16")
    opts = dict(windows=(8, 16), tile_items=())
    assert visibility_strategy(verts, faces, K, (size, size), near=1e-3, **opts) == "window 8"
    np.testing.assert_array_equal(np.asarray(visible_faces_batch(verts, faces, K, (size, size), **opts)), dense)
    assert visibility_strategy(verts, faces, K, (size, size), near=1e-3, **DENSE) == "dense"
