"""Tests for handjax.render: rasterisation, interpolation, soft silhouette, shading, flow, parts.

References are independent numpy computations: edge-function coverage, ray/plane
intersection for perspective-correct barycentrics, brute-force SoftRas, analytic
flows. Gradient checks use central finite differences in float64.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handjax.render import (
    MANO_WRIST_BOUNDARY_IDS,
    PALM_LABEL,
    boundary_loop,
    flip_part_classes,
    interpolate,
    optical_flow,
    optical_flow_batch,
    part_segmentation,
    part_segmentation_batch,
    rasterize,
    rasterize_batch,
    render_mesh,
    render_mesh_batch,
    seal_face_labels,
    seal_mano,
    seal_wrist,
    soft_silhouette,
    vertex_normals,
    visibility_strategy,
    visible_faces,
    visible_faces_batch,
)

H, W = 24, 32
K_SKEW = np.array([[60.0, 3.0, 15.3], [0.0, 55.0, 11.7], [0.0, 0.0, 1.0]])
K_PLAIN = np.array([[40.0, 0.0, 15.5], [0.0, 40.0, 11.5], [0.0, 0.0, 1.0]])

# Whole-call jits: one compilation per configuration instead of op-by-op eager dispatch.
raster = jax.jit(rasterize, static_argnames=("image_size", "face_chunk", "near", "windows", "dense_faces"))
render_mesh = jax.jit(render_mesh, static_argnames=("image_size", "two_sided", "face_chunk", "near"))
render_mesh_batch = jax.jit(render_mesh_batch, static_argnames=("image_size", "face_chunk", "near"))
optical_flow = jax.jit(optical_flow, static_argnames=("image_size", "method", "depth_tol", "face_chunk", "near"))
optical_flow_batch = jax.jit(optical_flow_batch, static_argnames=("image_size", "method", "depth_tol", "face_chunk", "near"))
part_segmentation = jax.jit(part_segmentation, static_argnames=("image_size", "face_chunk", "near"))
part_segmentation_batch = jax.jit(part_segmentation_batch, static_argnames=("image_size", "face_chunk", "near"))
interpolate = jax.jit(interpolate)


# ----------------------------------------------------------------------------- numpy references


def np_project(points, K):
    p = points @ K.T
    return p[..., :2] / p[..., 2:3]


def np_inside_mask(tri_xy, h, w):
    """Pixel centres (x=j, y=i) inside (or on) a 2-D triangle, by edge functions in float64."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    e = []
    for a, b in ((1, 2), (2, 0), (0, 1)):
        ax, ay = tri_xy[a]
        bx, by = tri_xy[b]
        e.append((bx - ax) * (ys - ay) - (by - ay) * (xs - ax))
    e = np.stack(e)
    return np.all(e >= 0, axis=0) | np.all(e <= 0, axis=0)


def np_ray_plane(tri3d, K, h, w):
    """Barycentrics (H, W, 3) and depth (H, W) of the ray through each pixel centre hitting the
    triangle's plane: solve X = t K^-1 [x, y, 1], X = sum b_k V_k."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T
    n = np.cross(tri3d[1] - tri3d[0], tri3d[2] - tri3d[0])
    t = (n @ tri3d[0]) / (rays @ n)
    X = rays * t[..., None]
    bary = X @ np.linalg.inv(tri3d.T).T  # columns of tri3d.T are the vertices
    return bary, X[..., 2]


def random_mesh(rng, n_faces, z_range=(1.0, 3.0), size=0.25):
    """Independent random triangles (about ``size`` metres across) in front of the camera."""
    centres = np.stack(
        [rng.uniform(-0.3, 0.3, n_faces), rng.uniform(-0.25, 0.25, n_faces), rng.uniform(*z_range, n_faces)], -1
    )
    verts = centres[:, None, :] + rng.normal(0, size, (n_faces, 3, 3)) * np.array([1, 1, 0.3])
    return verts.reshape(-1, 3), np.arange(3 * n_faces).reshape(n_faces, 3)


def quad(x0, x1, y0, y1, z):
    """Fronto-parallel rectangle [x0, x1] x [y0, y1] at depth z as two triangles."""
    v = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float64)
    return v, np.array([[0, 1, 2], [0, 2, 3]])


# ----------------------------------------------------------------------------- rasterisation


def test_single_triangle_coverage_matches_edge_test():
    tri = np.array([[-0.21, -0.13, 1.1], [0.27, -0.09, 1.3], [0.02, 0.19, 0.9]])
    fr = raster(jnp.asarray(tri, jnp.float32), jnp.array([[0, 1, 2]]), jnp.asarray(K_SKEW, jnp.float32), (H, W))
    expected = np_inside_mask(np_project(tri, K_SKEW), H, W)
    assert 40 < expected.sum() < H * W  # non-trivial case
    np.testing.assert_array_equal(np.asarray(fr.mask), expected)
    np.testing.assert_array_equal(np.asarray(fr.face_id), np.where(expected, 0, -1))
    bary = np.asarray(fr.bary, np.float64)
    np.testing.assert_allclose(bary[expected].sum(-1), 1.0, atol=1e-5)
    assert np.all(bary[~expected] == 0) and np.all(np.asarray(fr.depth)[~expected] == 0)
    # The barycentric surface point projects back onto the pixel centre.
    points = bary @ tri
    ys, xs = np.nonzero(expected)
    np.testing.assert_allclose(np_project(points[expected], K_SKEW), np.stack([xs, ys], -1), atol=2e-3)


def test_slanted_triangle_barycentrics_match_ray_plane():
    tri = np.array([[-0.3, -0.2, 0.8], [0.35, -0.15, 2.5], [0.0, 0.3, 1.5]])  # strongly slanted
    fr = raster(jnp.asarray(tri, jnp.float32), jnp.array([[0, 1, 2]]), jnp.asarray(K_SKEW, jnp.float32), (H, W))
    mask = np.asarray(fr.mask)
    bary_ref, depth_ref = np_ray_plane(tri, K_SKEW, H, W)
    assert mask.sum() > 50
    np.testing.assert_allclose(np.asarray(fr.bary)[mask], bary_ref[mask], atol=2e-5)
    np.testing.assert_allclose(np.asarray(fr.depth)[mask], depth_ref[mask], rtol=2e-5)
    # Screen-space (affine) barycentrics differ noticeably here, so the check is discriminative.
    ys, xs = np.mgrid[0:H, 0:W]
    tri2d = np.c_[np_project(tri, K_SKEW), np.ones(3)].T  # columns (x, y, 1) of each vertex
    affine = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(tri2d).T
    assert np.abs(affine[mask] - bary_ref[mask]).max() > 0.05


def test_shared_edge_has_no_cracks_or_double_coverage():
    # A square whose diagonal passes exactly through pixel centres (x = y).
    K = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]])
    v, f = quad(0.2, 1.0, 0.2, 1.0, 1.0)  # pixels 2..10 inclusive
    fr = raster(jnp.asarray(v, jnp.float32), jnp.asarray(f), jnp.asarray(K, jnp.float32), (14, 14))
    expected = np.zeros((14, 14), bool)
    expected[2:11, 2:11] = True
    np.testing.assert_array_equal(np.asarray(fr.mask), expected)
    fid = np.asarray(fr.face_id)
    ii, jj = np.mgrid[0:14, 0:14]
    # Strictly on either side of the diagonal the right face wins; on it, the lower index.
    assert np.all(fid[expected & (jj > ii)] == 0) and np.all(fid[expected & (jj < ii)] == 1)
    assert np.all(fid[expected & (jj == ii)] == 0)


@pytest.mark.parametrize("swap", [False, True])
def test_nearer_triangle_wins_regardless_of_order(swap):
    near_tri = np.array([[-0.3, -0.25, 1.0], [0.3, -0.25, 1.0], [0.0, 0.25, 1.0]])
    far_tri = np.array([[-0.3, 0.25, 1.5], [0.3, 0.25, 1.5], [0.0, -0.3, 1.5]])
    verts = np.concatenate([far_tri, near_tri] if swap else [near_tri, far_tri])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    near_id = 1 if swap else 0
    fr = raster(jnp.asarray(verts, jnp.float32), jnp.asarray(faces), jnp.asarray(K_PLAIN, jnp.float32), (H, W))
    in_near = np_inside_mask(np_project(near_tri, K_PLAIN), H, W)
    in_far = np_inside_mask(np_project(far_tri, K_PLAIN), H, W)
    assert (in_near & in_far).sum() > 20 and (in_far & ~in_near).sum() > 5
    fid, depth = np.asarray(fr.face_id), np.asarray(fr.depth)
    assert np.all(fid[in_near] == near_id)
    assert np.all(fid[in_far & ~in_near] == 1 - near_id)
    np.testing.assert_allclose(depth[in_near], 1.0, rtol=1e-6)
    np.testing.assert_allclose(depth[in_far & ~in_near], 1.5, rtol=1e-6)


def test_faces_behind_or_across_the_near_plane_are_not_rasterised():
    # Face 0 is fully behind the camera but would project over the image centre
    # (x/z, y/z ~ 0); face 1 crosses z = 0; face 2 has a vertex closer than `near`.
    behind = np.array([[-0.5, -0.5, -1.0], [0.5, -0.5, -1.0], [0.0, 0.5, -1.0]])
    across = np.array([[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, -0.5, -0.5]])
    too_near = np.array([[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 0.05]])
    verts = np.concatenate([behind, across, too_near])
    faces = np.arange(9).reshape(3, 3)
    fr = raster(jnp.asarray(verts, jnp.float32), jnp.asarray(faces), jnp.asarray(K_PLAIN, jnp.float32), (H, W), near=0.1)
    assert not np.asarray(fr.mask).any()
    # With a small enough near plane face 2 is drawn: the near test is what removed it.
    fr2 = raster(jnp.asarray(verts, jnp.float32), jnp.asarray(faces), jnp.asarray(K_PLAIN, jnp.float32), (H, W), near=0.01)
    ids = set(np.unique(np.asarray(fr2.face_id)).tolist())
    assert 2 in ids and ids <= {-1, 2}
    # The dropped faces would otherwise cover pixels: their projections contain pixel centres.
    for tri in (behind, across):
        assert np_inside_mask(np_project(tri, K_PLAIN), H, W).sum() > 20


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(0)
    verts, faces = random_mesh(rng, 37)
    args = (jnp.asarray(verts, jnp.float32), jnp.asarray(faces), jnp.asarray(K_SKEW, jnp.float32), (H, W))
    full = raster(*args, face_chunk=37, windows=())
    assert 0.3 < np.asarray(full.mask).mean() < 1.0 and len(np.unique(np.asarray(full.face_id))) > 15
    for chunk in (16,):  # 37 = 2 * 16 + 5: the last chunk is padded
        part = raster(*args, face_chunk=chunk, windows=())
        np.testing.assert_array_equal(np.asarray(part.face_id), np.asarray(full.face_id))
        np.testing.assert_array_equal(np.asarray(part.bary), np.asarray(full.bary))


def test_random_mesh_matches_numpy_zbuffer():
    from handjax.render.rasterize import _branch_index, _face_data, _useful_windows, screen_space

    rng = np.random.default_rng(1)
    big_v, big_f = random_mesh(rng, 4)
    # 16 small triangles (radius 1.6 px around a pixel centre) in front of the big ones.
    centre = np.stack([rng.integers(2, W - 2, 16), rng.integers(2, H - 2, 16)], -1)
    angle = rng.uniform(0, 2 * np.pi, (16, 1)) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    uv = centre[:, None, :] + 1.6 * np.stack([np.cos(angle), np.sin(angle)], -1)
    rays = np.concatenate([uv, np.ones((16, 3, 1))], -1) @ np.linalg.inv(K_SKEW).T
    small_v = (rays * rng.uniform(0.6, 0.9, (16, 1, 1))).reshape(-1, 3)
    small_f = np.arange(48).reshape(16, 3)
    verts, faces = np.concatenate([big_v, small_v]), np.concatenate([big_f, small_f + len(big_v)])
    spans = np.array([np.ptp(np_project(verts[f], K_SKEW), axis=0).max() for f in faces])
    assert np.all(spans[4:] < 4) and np.all(spans[:4] > 8)  # < 4 px across: fits a 4x4 window
    # Windowed pass (4 largest faces dense, the others on 4x4 windows) for a single mesh;
    # check that this is the branch that runs.
    args = (jnp.asarray(verts, jnp.float32), jnp.asarray(faces), jnp.asarray(K_SKEW, jnp.float32), (H, W))
    assert _useful_windows((4,), 20, (H, W), 4) == (4,)
    assert int(_branch_index(_face_data(*screen_space(args[0], args[2]), args[1], 1e-3), (4,), 4)) == 0
    fr = raster(*args, face_chunk=3, windows=(4,), dense_faces=4)
    depth_ref = np.full((H, W), np.inf)
    fid_ref = np.full((H, W), -1)
    for i, f in enumerate(faces):
        tri = verts[f]
        inside = np_inside_mask(np_project(tri, K_SKEW), H, W)
        _, d = np_ray_plane(tri, K_SKEW, H, W)
        closer = inside & (d < depth_ref)
        depth_ref[closer], fid_ref[closer] = d[closer], i
    fid = np.asarray(fr.face_id)
    # float32 could flip exact near-ties (edges, depth crossings); this case has none.
    np.testing.assert_array_equal(fid, fid_ref)
    assert len(np.unique(fid[fid >= 4])) > 8  # small (windowed) faces are visible
    np.testing.assert_allclose(np.asarray(fr.depth)[fid >= 0], depth_ref[fid >= 0], rtol=1e-5)


def test_jit_vmap_and_batch_agree():
    rng = np.random.default_rng(2)
    verts, faces = random_mesh(rng, 9)
    batch = np.stack([verts, verts + np.array([0.05, -0.03, 0.2])])
    Ks = np.stack([K_SKEW, K_PLAIN])
    fn = functools.partial(rasterize, image_size=(H, W), face_chunk=4)
    vm = jax.jit(jax.vmap(fn, in_axes=(0, None, 0)))(jnp.asarray(batch, jnp.float32), jnp.asarray(faces), jnp.asarray(Ks, jnp.float32))
    bt = rasterize_batch(jnp.asarray(batch, jnp.float32), jnp.asarray(faces), jnp.asarray(Ks, jnp.float32), (H, W), face_chunk=4)
    for b in range(2):
        single = fn(jnp.asarray(batch[b], jnp.float32), jnp.asarray(faces), jnp.asarray(Ks[b], jnp.float32))
        for got in (vm, bt):
            np.testing.assert_array_equal(np.asarray(got.face_id[b]), np.asarray(single.face_id))
            np.testing.assert_allclose(np.asarray(got.bary[b]), np.asarray(single.bary), atol=1e-6)
    assert not np.array_equal(np.asarray(vm.face_id[0]), np.asarray(vm.face_id[1]))


def hand_batch(size):
    """Two posed copies of the sealed builtin hand (palm to the camera) filling a size^2 image."""
    builtin = pytest.importorskip("handjax.mano.builtin")
    a = builtin.builtin_mano_arrays("right")
    v, f = seal_wrist(jnp.asarray(a["v_template"]), np.asarray(a["f"]).astype(np.int64))
    v = np.asarray(v) @ np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]).T  # palm (+y) -> -z
    v = v - v.mean(0)
    c, s = np.cos(0.5), np.sin(0.5)
    v2 = v @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T  # turned about y
    verts = np.stack([v, v2]) + np.array([0.0, 0.0, 0.5])
    focal = 0.45 * size * 0.5 / np.abs(v[:, :2]).max()
    K = np.array([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]])
    return jnp.asarray(verts, jnp.float32), jnp.asarray(f), jnp.asarray(K, jnp.float32)


def test_windowed_visibility_equals_dense_on_a_hand():
    from handjax.render.rasterize import _branch_index, _face_data, _useful_windows, screen_space

    size = 48
    verts, faces, K = hand_batch(size)
    # tile_items=() switches the tiled pass off: the reference is the dense pass, the test the windowed one
    dense = np.asarray(visible_faces_batch(verts, faces, K, (size, size), windows=(), tile_items=()))
    assert 0.15 < (dense >= 0).mean() < 0.9 and len(np.unique(dense)) > 300
    windows = _useful_windows((8, 16), faces.shape[0], (size, size), 32)
    assert windows == (8,)  # the cost model keeps the small window only
    for b in range(2):  # ... and the windowed branch is the one that runs
        xy, z = screen_space(verts[b], K)
        assert int(_branch_index(_face_data(xy, z, faces, 1e-3), windows, 32)) == 0
    assert visibility_strategy(verts, faces, K, (size, size), windows=(8, 16), tile_items=()).startswith("window")
    got = np.asarray(visible_faces_batch(verts, faces, K, (size, size), windows=(8, 16), tile_items=()))
    np.testing.assert_array_equal(got, dense)
    # A user vmap of the single-mesh function turns the strategy switch into a select.
    single = functools.partial(visible_faces, faces=faces, K=K, image_size=(size, size), windows=(8, 16),
                               tile_items=())
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(single))(verts)), dense)
    # A window too small for the mesh selects the dense branch (index len(windows)).
    xy, z = screen_space(verts[0], K)
    assert int(_branch_index(_face_data(xy, z, faces, 1e-3), (2,), 4)) == 1


def test_bad_inputs_raise_clear_errors():
    v, f = quad(-0.1, 0.1, -0.1, 0.1, 1.0)
    with pytest.raises(ValueError, match="verts"):
        rasterize(jnp.zeros((4, 2)), jnp.asarray(f), jnp.asarray(K_PLAIN), (H, W))
    with pytest.raises(ValueError, match="faces"):
        rasterize(jnp.asarray(v), jnp.zeros((2, 3)), jnp.asarray(K_PLAIN), (H, W))
    with pytest.raises(ValueError, match="K"):
        rasterize(jnp.asarray(v), jnp.asarray(f), jnp.eye(4), (H, W))
    with pytest.raises(ValueError, match="image_size"):
        rasterize(jnp.asarray(v), jnp.asarray(f), jnp.asarray(K_PLAIN), (0, W))


# ----------------------------------------------------------------------------- interpolation


def test_interpolated_positions_reproject_to_pixel_centres():
    tri = np.array([[-0.3, -0.2, 0.8], [0.35, -0.15, 2.5], [0.0, 0.3, 1.5]])
    v, f, K = jnp.asarray(tri, jnp.float32), jnp.array([[0, 1, 2]]), jnp.asarray(K_SKEW, jnp.float32)
    fr = raster(v, f, K, (H, W))
    pts = np.asarray(interpolate(v, v, f, K, fr), np.float64)
    mask = np.asarray(fr.mask)
    ys, xs = np.nonzero(mask)
    np.testing.assert_allclose(np_project(pts[mask], K_SKEW), np.stack([xs, ys], -1), atol=2e-3)
    assert np.all(pts[~mask] == 0)


def _directional_fd(f, x, direction, h=1e-6):
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


def test_interpolate_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        verts, faces = random_mesh(rng, 6)
        verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K_SKEW)
        attrs = jnp.asarray(rng.normal(size=(verts.shape[0], 2)))
        frags = rasterize(verts, faces, K, (H, W), face_chunk=4)
        weights = jnp.asarray(rng.normal(size=(H, W, 2)))
        assert frags.mask.sum() > 50

        def loss(a, v):
            return jnp.sum(weights * interpolate(a, v, faces, K, frags))

        value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # one compiled program
        _, (ga, gv) = value_and_grad(attrs, verts)
        assert float(jnp.abs(gv).max()) > 1e-3  # the vertex gradient is not trivially zero
        for _ in range(3):
            da = jnp.asarray(rng.normal(size=attrs.shape))
            dv = jnp.asarray(rng.normal(size=verts.shape)) * 0.01
            fd_a = _directional_fd(lambda a: value_and_grad(a, verts)[0], attrs, da)
            fd_v = _directional_fd(lambda v: value_and_grad(attrs, v)[0], verts, dv)
            np.testing.assert_allclose(float(jnp.sum(ga * da)), float(fd_a), rtol=1e-6)
            np.testing.assert_allclose(float(jnp.sum(gv * dv)), float(fd_v), rtol=1e-5)


# ----------------------------------------------------------------------------- soft silhouette


def np_soft_silhouette(tri_list, h, w, sigma):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.stack([xs, ys], -1)
    log_bg = np.zeros((h, w))
    for tri in tri_list:
        d2 = np.full((h, w), np.inf)
        for a, b in ((0, 1), (1, 2), (2, 0)):
            ab = tri[b] - tri[a]
            t = np.clip(((p - tri[a]) @ ab) / (ab @ ab), 0, 1)
            d2 = np.minimum(d2, np.sum((p - tri[a] - t[..., None] * ab) ** 2, -1))
        inside = np_inside_mask(tri, h, w)
        prob = 1 / (1 + np.exp(-np.where(inside, d2, -d2) / sigma))
        log_bg += np.log1p(-np.minimum(prob, 1 - 1e-16))
    return 1 - np.exp(log_bg)


def test_soft_silhouette_matches_numpy():
    rng = np.random.default_rng(4)
    verts, faces = random_mesh(rng, 5)
    args = (jnp.asarray(verts, jnp.float32), jnp.asarray(faces), jnp.asarray(K_SKEW, jnp.float32), (H, W))
    sil = np.asarray(soft_silhouette(*args, sigma=2.0, face_chunk=2))
    ref = np_soft_silhouette([np_project(verts[f], K_SKEW) for f in faces], H, W, 2.0)
    np.testing.assert_allclose(sil, ref, atol=2e-5)  # 5 faces in chunks of 2: padded last chunk
    assert sil.max() > 0.9 and sil.min() < 0.01


def test_soft_silhouette_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        verts, faces = random_mesh(rng, 4)
        verts, faces, K = jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K_SKEW)
        weights = jnp.asarray(rng.normal(size=(H, W)))

        def loss(v):
            return jnp.sum(weights * soft_silhouette(v, faces, K, (H, W), sigma=3.0, face_chunk=3))

        value_and_grad = jax.jit(jax.value_and_grad(loss))
        _, g = value_and_grad(verts)
        assert float(jnp.abs(g).max()) > 1e-2
        for _ in range(3):
            d = jnp.asarray(rng.normal(size=verts.shape)) * 0.01
            fd = _directional_fd(lambda v: value_and_grad(v)[0], verts, d)
            np.testing.assert_allclose(float(jnp.sum(g * d)), float(fd), rtol=1e-5)


# ----------------------------------------------------------------------------- shading


def test_render_mesh_lambert_vertex_colours_and_background():
    # Plane tilted about the y axis: normal (sin a, 0, -cos a) facing the camera.
    a = 0.6
    corners = np.array([[-0.3, -0.25], [0.3, -0.25], [0.3, 0.25], [-0.3, 0.25]])
    verts = np.stack([corners[:, 0] * np.cos(a), corners[:, 1], 1.5 + corners[:, 0] * np.sin(a)], -1)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    normal = np.cross(verts[1] - verts[0], verts[2] - verts[0])
    normal /= np.linalg.norm(normal)
    colours = np.tile([0.2, 0.6, 1.0], (4, 1))
    bg = np.array([0.1, 0.0, 0.3])
    light = np.array([0.3, -0.2, -1.0])
    out = render_mesh(
        jnp.asarray(verts, jnp.float32), jnp.asarray(faces), jnp.asarray(K_PLAIN, jnp.float32), (H, W),
        vertex_colors=jnp.asarray(colours, jnp.float32), light_dir=light, ambient=0.3, diffuse=0.6, background=bg,
    )
    mask = np.asarray(out.mask)
    assert 0.2 < mask.mean() < 0.9
    n_cam = normal if normal @ verts.mean(0) < 0 else -normal  # faces the camera
    cos = max(0.0, n_cam @ light / np.linalg.norm(light))
    assert cos > 0.1
    rgb = np.asarray(out.rgb)
    np.testing.assert_allclose(rgb[mask], np.broadcast_to(colours[0] * (0.3 + 0.6 * cos), rgb[mask].shape), atol=1e-5)
    np.testing.assert_allclose(rgb[~mask], np.broadcast_to(bg, rgb[~mask].shape), atol=0)
    np.testing.assert_allclose(np.abs(np.asarray(out.normals)[mask] @ normal), 1.0, atol=1e-5)
    # One-sided lighting with faces wound away from the camera: only ambient remains.
    away = faces if normal @ verts.mean(0) > 0 else faces[:, ::-1].copy()
    back = render_mesh(
        jnp.asarray(verts, jnp.float32), jnp.asarray(away), jnp.asarray(K_PLAIN, jnp.float32), (H, W),
        vertex_colors=jnp.asarray(colours, jnp.float32), light_dir=light, ambient=0.3, diffuse=0.6, two_sided=False,
    )
    np.testing.assert_allclose(np.asarray(back.rgb)[mask], np.broadcast_to(colours[0] * 0.3, rgb[mask].shape), atol=1e-5)


def test_render_mesh_uv_texture_linear_ramp():
    verts, faces = quad(-0.3, 0.3, -0.25, 0.25, 1.2)
    uv = np.array([[0.1, 0.9], [0.9, 0.9], [0.9, 0.2], [0.1, 0.2]])  # v up = image rows up
    tex_w, tex_h = 64, 16
    # texture value = u at texel centres (a linear ramp is reproduced exactly by bilinear lookup).
    ramp = (np.arange(tex_w) + 0.5) / tex_w
    texture = np.broadcast_to(ramp[None, :, None], (tex_h, tex_w, 1)).copy()
    out = render_mesh(
        jnp.asarray(verts, jnp.float32), jnp.asarray(faces), jnp.asarray(K_PLAIN, jnp.float32), (H, W),
        uv=jnp.asarray(uv, jnp.float32), texture=jnp.asarray(texture, jnp.float32), ambient=1.0, diffuse=0.0,
    )
    mask = np.asarray(out.mask)
    _, xs = np.nonzero(mask)
    x_world = (xs - K_PLAIN[0, 2]) / K_PLAIN[0, 0] * 1.2
    u_ref = 0.1 + 0.8 * (x_world + 0.3) / 0.6
    np.testing.assert_allclose(np.asarray(out.rgb)[mask][:, 0], u_ref, atol=1e-5)


def test_vertex_normals_match_numpy_and_point_outwards():
    v = cube_vertices() - 0.5
    faces = cube_faces()
    ref = np.zeros_like(v)
    for f in faces:  # area-weighted accumulation, one face at a time
        ref[f] += np.cross(v[f[1]] - v[f[0]], v[f[2]] - v[f[0]])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    n = np.asarray(vertex_normals(jnp.asarray(v), jnp.asarray(faces)))
    np.testing.assert_allclose(n, ref, atol=1e-6)
    assert np.all(np.sum(n * v, axis=1) > 0.5)


def test_render_mesh_batch_matches_single():
    rng = np.random.default_rng(6)
    verts, faces = random_mesh(rng, 6)
    batch = jnp.asarray(np.stack([verts, verts + 0.02]), jnp.float32)
    colours = jnp.asarray(rng.uniform(size=(2, verts.shape[0], 3)), jnp.float32)
    out = render_mesh_batch(batch, jnp.asarray(faces), jnp.asarray(K_SKEW, jnp.float32), (H, W), vertex_colors=colours, background=0.5, face_chunk=4)
    for b in range(2):
        single = render_mesh(batch[b], jnp.asarray(faces), jnp.asarray(K_SKEW, jnp.float32), (H, W), vertex_colors=colours[b], background=0.5, face_chunk=4)
        np.testing.assert_allclose(np.asarray(out.rgb[b]), np.asarray(single.rgb), atol=1e-6)


# ----------------------------------------------------------------------------- optical flow


@pytest.mark.parametrize("method", ["surface", "vertex"])
def test_translated_plane_gives_constant_flow(method):
    verts, faces = quad(-0.25, 0.2, -0.2, 0.15, 1.5)
    # A shift whose projection is a whole number of pixels (3, -2) through the skewed K,
    # so destinations land on pixel centres and the occlusion mask is exact.
    dy = -2.0 * 1.5 / K_SKEW[1, 1]
    shift = np.array([(3.0 * 1.5 - K_SKEW[0, 1] * dy) / K_SKEW[0, 0], dy, 0.0])
    res = optical_flow(
        jnp.asarray(verts, jnp.float32), jnp.asarray(verts + shift, jnp.float32), jnp.asarray(faces),
        jnp.asarray(K_SKEW, jnp.float32), None, (H, W), method=method,
    )
    mask = np.asarray(res.mask)
    assert mask.sum() > 100
    expected = (K_SKEW[:2, :2] @ shift[:2]) / 1.5  # includes the skew term
    np.testing.assert_allclose(expected, [3.0, -2.0])
    np.testing.assert_allclose(np.asarray(res.flow)[mask], np.broadcast_to(expected, (mask.sum(), 2)), atol=2e-4)
    assert np.all(np.asarray(res.flow)[~mask] == 0)
    # Pixels whose destination leaves the image are flagged, the others are visible.
    ys, xs = np.mgrid[0:H, 0:W]
    dest_x, dest_y = xs + expected[0], ys + expected[1]
    leaves = (np.round(dest_x) > W - 1) | (np.round(dest_y) < 0)
    np.testing.assert_array_equal(np.asarray(res.occluded), mask & leaves)


def test_surface_flow_matches_rigid_motion_reference_for_a_slanted_plane():
    # A slanted rectangle moved rigidly (rotation about y + translation), seen through a
    # different K in frame 1. Reference: the pixel ray hits the plane at X0 (numpy ray /
    # plane intersection); the same surface point is X1 = R (X0 - c) + c + t.
    corners = np.array([[-0.3, -0.2], [0.25, -0.2], [0.25, 0.2], [-0.3, 0.2]])
    v0 = np.stack([corners[:, 0], corners[:, 1], 1.5 + 1.2 * corners[:, 0]], -1)  # strongly slanted
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    c, s = np.cos(0.3), np.sin(0.3)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    centre, t = v0.mean(0), np.array([0.02, 0.01, 0.1])
    v1 = (v0 - centre) @ R.T + centre + t
    res = optical_flow(
        jnp.asarray(v0, jnp.float32), jnp.asarray(v1, jnp.float32), jnp.asarray(faces),
        jnp.asarray(K_SKEW, jnp.float32), jnp.asarray(K_PLAIN, jnp.float32), (H, W),
    )
    mask = np.asarray(res.mask)
    assert mask.sum() > 100
    bary, depth = np_ray_plane(v0[:3], K_SKEW, H, W)  # plane of the rectangle
    x0 = bary @ v0[:3]
    ys, xs = np.mgrid[0:H, 0:W]
    expected = np_project((x0 - centre) @ R.T + centre + t, K_PLAIN) - np.stack([xs, ys], -1)
    np.testing.assert_allclose(np.asarray(res.flow)[mask], expected[mask], atol=2e-3)
    # The vertex-displacement flow (method="vertex") is a different quantity here:
    # per-vertex 2-D displacements interpolated with perspective-correct barycentrics.
    fid = np.asarray(res.frags0.face_id)
    disp = np_project(v1, K_PLAIN) - np_project(v0, K_SKEW)
    vertex_flow = np.zeros((H, W, 2))
    for f in range(2):
        b, _ = np_ray_plane(v0[faces[f]], K_SKEW, H, W)
        vertex_flow[fid == f] = (b @ disp[faces[f]])[fid == f]
    assert np.abs(vertex_flow[mask] - expected[mask]).max() > 0.05


def test_flow_occlusion_by_a_nearer_surface():
    # Frame 0: a back plane (z = 2) and, to its right, a small front plane (z = 1) that
    # does not overlap it in the image. Frame 1: the back plane slides right, behind it.
    back, fb = quad(-0.6, -0.1, -0.3, 0.3, 2.0)
    front, ff = quad(0.05, 0.25, -0.15, 0.15, 1.0)
    verts0 = np.concatenate([back, front])
    faces = np.concatenate([fb, ff + 4])
    move = np.zeros_like(verts0)
    move[:4, 0] = 0.5
    K = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])
    res = optical_flow(
        jnp.asarray(verts0, jnp.float32), jnp.asarray(verts0 + move, jnp.float32), jnp.asarray(faces),
        jnp.asarray(K, jnp.float32), None, (H, W),
    )
    occ, mask, fid = np.asarray(res.occluded), np.asarray(res.mask), np.asarray(res.frags0.face_id)
    # Independent prediction: back-plane pixel (x, y) moves to x + 20 * 0.5 / 2 = x + 5.
    ys, xs = np.mgrid[0:H, 0:W]
    front_mask = np_inside_mask(np_project(front[[0, 1, 2]], K), H, W) | np_inside_mask(np_project(front[[0, 2, 3]], K), H, W)
    on_back = mask & (fid < 2)
    dest = np.clip(xs + 5, 0, W - 1)
    expected_back = front_mask[ys, dest]
    assert expected_back[on_back].sum() > 10 and (~expected_back[on_back]).sum() > 10
    np.testing.assert_array_equal(occ[on_back], expected_back[on_back])
    assert not occ[mask & (fid >= 2)].any()  # the front plane does not move
    np.testing.assert_allclose(np.asarray(res.flow)[on_back], np.broadcast_to([5.0, 0.0], (on_back.sum(), 2)), atol=1e-4)


def test_flow_gradients_match_finite_differences():
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        verts, faces = random_mesh(rng, 5)
        v0 = jnp.asarray(verts)
        v1 = v0 + jnp.asarray(rng.normal(0, 0.01, verts.shape))
        K = jnp.asarray(K_SKEW)
        frags0 = rasterize(v0, jnp.asarray(faces), K, (H, W))
        weights = jnp.asarray(rng.normal(size=(H, W, 2)))

        def loss(a, b):
            res = optical_flow(a, b, jnp.asarray(faces), K, None, (H, W), face_id0=frags0.face_id)
            return jnp.sum(weights * res.flow)

        value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        _, (g0, g1) = value_and_grad(v0, v1)
        assert float(jnp.abs(g0).max()) > 1e-2 and float(jnp.abs(g1).max()) > 1e-2
        for _ in range(2):
            d = jnp.asarray(rng.normal(size=verts.shape)) * 0.01
            fd1 = _directional_fd(lambda b: value_and_grad(v0, b)[0], v1, d)
            fd0 = _directional_fd(lambda a: value_and_grad(a, v1)[0], v0, d)
            np.testing.assert_allclose(float(jnp.sum(g1 * d)), float(fd1), rtol=1e-5)
            np.testing.assert_allclose(float(jnp.sum(g0 * d)), float(fd0), rtol=1e-5)


# ----------------------------------------------------------------------------- part segmentation


def cube_vertices():
    """Unit cube corners; vertex i = (x, y, z) with x = bit 2, y = bit 1, z = bit 0 of i."""
    return np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float64)


def cube_faces():
    """12 triangles of the unit cube, each wound so that its normal points outwards."""
    v = cube_vertices()
    quads = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
    faces = []
    for a, b, c, d in quads:
        for tri in ((a, b, c), (a, c, d)):
            n = np.cross(v[tri[1]] - v[tri[0]], v[tri[2]] - v[tri[0]])
            outward = n @ (v[list(tri)].mean(0) - 0.5) > 0
            faces.append(tri if outward else tri[::-1])
    return np.array(faces)


def _signed_volume(v, f):
    tri = v[f]
    return np.sum(np.einsum("fi,fi->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2]))) / 6.0


def _is_closed_and_oriented(f):
    directed = [tuple(e) for e in np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).tolist()]
    s = set(directed)
    return len(s) == len(directed) and all((b, a) in s for a, b in directed)


def test_seal_closes_an_open_cube_with_consistent_winding():
    v = cube_vertices()
    faces = cube_faces()
    centred = v - 0.5  # volumes about the cube centre, so every side contributes
    assert np.isclose(_signed_volume(centred, faces), 1.0)
    bottom = np.all(v[faces][:, :, 2] == 0, axis=1)  # the two z = 0 triangles
    open_faces = faces[~bottom]
    assert bottom.sum() == 2 and not _is_closed_and_oriented(open_faces)
    sealed_v, sealed_f = seal_wrist(jnp.asarray(v), open_faces, boundary_ids=(6, 0, 4, 2))  # any order
    sealed_v, sealed_f = np.asarray(sealed_v), np.asarray(sealed_f)
    assert sealed_v.shape == (9, 3) and sealed_f.shape == (14, 3)
    np.testing.assert_allclose(sealed_v[8], [0.5, 0.5, 0.0])
    assert _is_closed_and_oriented(sealed_f)
    np.testing.assert_allclose(_signed_volume(sealed_v - 0.5, sealed_f), 1.0, atol=1e-12)
    np.testing.assert_array_equal(sealed_f[:10], open_faces)
    labels = np.asarray(seal_face_labels(np.arange(10) % 16, 4))
    assert labels.shape == (14,) and np.all(labels[10:] == PALM_LABEL)
    with pytest.raises(ValueError, match="boundary"):
        seal_wrist(jnp.asarray(v), faces, boundary_ids=(0, 2, 4, 6))  # closed mesh: no boundary


def test_seal_builtin_mano_is_watertight():
    builtin = pytest.importorskip("handjax.mano.builtin")
    a = builtin.builtin_mano_arrays("right")
    faces = np.asarray(a["f"]).astype(np.int64)
    loop = boundary_loop(faces, MANO_WRIST_BOUNDARY_IDS)
    assert loop.shape == (16,)
    labels = builtin.face_part_labels(faces, np.asarray(a["weights"]))
    sealed_v, sealed_f, sealed_labels = seal_mano(jnp.asarray(a["v_template"]), faces, labels)
    assert sealed_v.shape == (779, 3) and sealed_f.shape == (1554, 3)
    np.testing.assert_array_equal(np.asarray(sealed_labels), np.concatenate([labels, np.full(16, PALM_LABEL)]))
    assert _is_closed_and_oriented(np.asarray(sealed_f))
    np.testing.assert_allclose(np.asarray(sealed_v)[778], np.asarray(a["v_template"])[list(MANO_WRIST_BOUNDARY_IDS)].mean(0), atol=1e-7)


def test_part_segmentation_labels_and_occlusion():
    # Right "hand": a quad at z = 2 on the left; left "hand": a quad at z = 1 on the right,
    # overlapping the right one in the middle. Face labels: triangle 0 -> 3, triangle 1 -> 12.
    right, faces = quad(-0.8, 0.2, -0.4, 0.4, 2.0)
    left, _ = quad(-0.1, 0.4, -0.2, 0.2, 1.0)
    labels = jnp.array([3, 12])
    K = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])
    args = (jnp.asarray(right, jnp.float32), jnp.asarray(left, jnp.float32), jnp.asarray(faces), labels, jnp.asarray(K, jnp.float32), (H, W))
    seg = np.asarray(part_segmentation(*args))
    proj = lambda v, tri: np_inside_mask(np_project(v[list(tri)], K), H, W)  # noqa: E731
    r0, r1 = proj(right, (0, 1, 2)), proj(right, (0, 2, 3))
    l0, l1 = proj(left, (0, 1, 2)), proj(left, (0, 2, 3))
    left_any = l0 | l1
    assert (r0 & left_any).sum() > 5 and (r0 & ~left_any).sum() > 5 and (r1 & ~left_any & ~r0).sum() > 5
    assert np.all(seg[l0 & ~l1] == 3 + 17) and np.all(seg[l1 & ~l0] == 12 + 17)  # nearer left hand wins
    assert np.all(seg[r0 & ~left_any & ~r1] == 3 + 1) and np.all(seg[r1 & ~left_any & ~r0] == 12 + 1)
    assert np.all(seg[~(r0 | r1 | left_any)] == 0)
    # Without the left hand, the right one is visible everywhere it projects.
    seg_r = np.asarray(part_segmentation(*args, left_valid=False))
    assert np.all(seg_r[l0 & r0 & ~r1] == 4) and not np.any(seg_r > 16)
    np.testing.assert_array_equal(np.asarray(flip_part_classes(seg)), np.where(seg == 0, 0, np.where(seg > 16, seg - 16, seg + 16)))
    # Batched version: per-sample validity flags.
    batch = part_segmentation_batch(
        jnp.stack([args[0]] * 2), jnp.stack([args[1]] * 2), args[2], labels, args[4], (H, W), left_valid=jnp.array([True, False])
    )
    np.testing.assert_array_equal(np.asarray(batch), np.stack([seg, seg_r]))


def test_optical_flow_batch_matches_single_calls():
    verts, faces = quad(-0.25, 0.2, -0.2, 0.15, 1.5)
    v0 = np.stack([verts, verts + [0.01, 0.0, 0.1]])
    v1 = v0 + np.array([[[0.4, 0.0, 0.0]], [[0.0, 0.03, -0.2]]])
    Ks = np.stack([K_SKEW, K_PLAIN])
    args = [jnp.asarray(a, jnp.float32) for a in (v0, v1)]
    batch = optical_flow_batch(*args, jnp.asarray(faces), jnp.asarray(Ks, jnp.float32), None, (H, W))
    for b in range(2):
        one = optical_flow(args[0][b], args[1][b], jnp.asarray(faces), jnp.asarray(Ks[b], jnp.float32), None, (H, W))
        np.testing.assert_allclose(np.asarray(batch.flow[b]), np.asarray(one.flow), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(batch.occluded[b]), np.asarray(one.occluded))
    assert np.asarray(batch.occluded).any() and np.abs(np.asarray(batch.flow)).max() > 1.0
