"""handobjectconsist's photometric-consistency pieces (handjax.losses.photometric) and MeshRegNet's decoding
(handjax.models.meshregnet) on hand-computed cases, plus parity of the masking / warping / loss with a PyTorch
reference written from the notes (tests/torch_reference/photometric_torch.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handjax import mano
from handjax.losses import photometric as pl
from handjax.models import meshregnet as mr
from handjax.render import visible_faces_batch
from tests.torch_reference.photometric_torch import consistency_loss_ref

S = 32
F = 40.0
C = 16.0
# jitted once per shape (op-by-op dispatch of the rasteriser is slow on CPU)
consistency = jax.jit(pl.photometric_consistency, static_argnames=("pixel_center", "upstream_grid",
                                                                   "occlusion_threshold", "near"))


def plane(cx, cy, z, half, n=3):
    """A fronto-parallel square at depth z centred on (cx, cy) metres, n x n quads: verts (V, 3), faces (F, 3)."""
    t = np.linspace(-half, half, n + 1)
    xs, ys = np.meshgrid(cx + t, cy + t)
    verts = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], -1)
    faces = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = i * (n + 1) + j, i * (n + 1) + j + 1, (i + 1) * (n + 1) + j, (i + 1) * (n + 1) + j + 1
            faces += [(a, b, d), (a, d, c)]
    return verts.astype(np.float32), np.asarray(faces, np.int32)


def join(*meshes):
    verts, faces, off = [], [], 0
    for v, f in meshes:
        verts.append(v)
        faces.append(f + off)
        off += len(v)
    return np.concatenate(verts), np.concatenate(faces)


def intrinsics(b=1, f=F, c=C):
    return jnp.asarray(np.tile(np.array([[f, 0, c], [0, f, c], [0, 0, 1]], np.float32), (b, 1, 1)))


def raw_flows(qv, rv, faces, ignore, K, size, pixel_center=0.5):
    """The rendered quantities photometric_consistency starts from, via its public pieces."""
    k = pl.canvas_intrinsics(K, pixel_center)
    fid_q = visible_faces_batch(qv, faces, k, (size, size), near=pl.UPSTREAM_NEAR)
    fid_r = visible_faces_batch(rv, faces, k, (size, size), near=pl.UPSTREAM_NEAR)
    flow21 = pl.vertex_flow(rv, qv, faces, k, k, fid_r)
    flow12 = pl.vertex_flow(qv, rv, faces, k, k, fid_q)
    keep = lambda fid: (fid >= 0) & ~ignore[jnp.maximum(fid, 0)]  # noqa: E731
    return flow21, flow12, keep(fid_r), fid_r >= 0, keep(fid_q)


# ----------------------------------------------------------------------------- rendered flow
def test_rendered_flow_matches_the_analytic_flow_of_a_rigid_motion():
    """A fronto-parallel plane moving from depth z to z' and sideways: the reference-grid flow at the canvas point
    u = col + 0.5 (neural_renderer's pixel centres) is (u - c)(z / z' - 1) + f d / z' exactly."""
    z, z2, dx, dy = 1.0, 0.8, 0.03, -0.02
    v, faces = plane(0.0, 0.0, z, 0.25, n=4)
    q = v + np.array([dx, dy, z2 - z], np.float32)
    ignore = jnp.zeros(len(faces), bool)
    flow21, _, keep_r, _, _ = raw_flows(jnp.asarray(q)[None], jnp.asarray(v)[None], jnp.asarray(faces), ignore,
                                        intrinsics(), S)
    rows, cols = np.mgrid[0:S, 0:S].astype(np.float64)
    expect = np.stack([(cols + 0.5 - C) * (z / z2 - 1) + F * dx / z2, (rows + 0.5 - C) * (z / z2 - 1) + F * dy / z2],
                      -1)
    covered = np.asarray(keep_r[0])
    # the plane spans |u - c| <= f * 0.25 = 10 px around the centre
    assert covered.sum() == 20 * 20 and covered[6:26, 6:26].all()
    np.testing.assert_allclose(np.asarray(flow21[0])[covered], expect[covered], atol=2e-4)
    assert np.all(np.asarray(flow21[0])[~covered] == 0)


# ----------------------------------------------------------------------------- warp
def _linear_images(flow_fn, a=(0.05, -0.02, 0.01), b=(0.01, 0.03, -0.04)):
    """Query image linear in its canvas coordinates; the reference image is the query's colour at the point each
    reference pixel's surface point moved to (flow_fn(u, v) -> (du, dv)), i.e. the ideal photometric target."""
    rows, cols = np.mgrid[0:S, 0:S].astype(np.float64)
    u, v = cols + 0.5, rows + 0.5
    colour = lambda uu, vv: np.stack([a[k] * uu + b[k] * vv - 0.3 for k in range(3)], -1)  # noqa: E731
    du, dv = flow_fn(u, v)
    return colour(u, v).astype(np.float32), colour(u + du, v + dv).astype(np.float32)


@pytest.mark.parametrize("shift_px", [0.0, 1.5])
def test_warp_reproduces_the_target_where_the_flow_is_exact(shift_px):
    """Exact sampling: with the true query mesh the warped query equals the reference on every valid pixel (loss 0);
    a query mesh predicted ``shift_px`` pixels too far right gives exactly |a| * shift_px per channel."""
    z, z2, dx = 1.0, 0.9, 0.05
    v, faces = plane(0.0, 0.0, z, 0.2, n=4)
    true_q = v + np.array([dx, 0.0, z2 - z], np.float32)
    pred_q = true_q + np.array([shift_px * z2 / F, 0.0, 0.0], np.float32)
    a = (0.05, -0.02, 0.01)
    img_q, img_r = _linear_images(lambda u, vv: ((u - C) * (z / z2 - 1) + F * dx / z2, (vv - C) * (z / z2 - 1)), a=a)
    res = consistency(jnp.asarray(pred_q)[None], jnp.asarray(v)[None], jnp.asarray(faces),
                                     jnp.zeros(len(faces), bool), intrinsics(), intrinsics(), jnp.asarray(img_q)[None],
                                     jnp.asarray(img_r)[None], upstream_grid=False)
    valid = np.asarray(res.valid[0])
    assert valid.sum() > 150
    per_pixel = np.abs(np.asarray(res.warped[0]) - img_r)[valid]
    np.testing.assert_allclose(per_pixel, np.broadcast_to(np.abs(a) * shift_px, per_pixel.shape), atol=2e-5)
    np.testing.assert_allclose(float(res.loss[0]), np.mean(np.abs(a)) * shift_px, atol=2e-5)


def test_upstream_grid_samples_with_the_half_pixel_stretch():
    """upstream_grid: the sample index is (x + flow) W / (W - 1) - 0.5 (PWC-Net normalisation, align_corners=False)."""
    v, faces = plane(0.0, 0.0, 1.0, 0.2, n=2)
    q = v + np.array([0.02, 0.0, 0.0], np.float32)  # flow 0.8 px
    img_q = np.tile(np.arange(S, dtype=np.float32)[None, :, None], (S, 1, 3)) * 0.01  # value = 0.01 * column
    res = consistency(jnp.asarray(q)[None], jnp.asarray(v)[None], jnp.asarray(faces),
                                     jnp.zeros(len(faces), bool), intrinsics(), intrinsics(), jnp.asarray(img_q)[None],
                                     jnp.asarray(img_q)[None], upstream_grid=True)
    valid = np.asarray(res.valid[0])
    cols = np.mgrid[0:S, 0:S][1].astype(np.float64)
    expect = 0.01 * ((cols + 0.8) * S / (S - 1) - 0.5)
    np.testing.assert_allclose(np.asarray(res.warped[0, ..., 0])[valid], expect[valid], atol=1e-5)


# ----------------------------------------------------------------------------- occlusion
@pytest.mark.parametrize("upstream_grid", [False, True])
def test_occlusion_test_masks_the_surface_hidden_in_the_query_frame(upstream_grid):
    """Back plane moving 2 px right; a front plane moving 10 px right covers, in the query frame, back-plane points
    that the reference sees: those reference pixels fail the round trip; the rest survives."""
    back = plane(0.0, 0.0, 1.0, 0.35, n=4)
    front = plane(-0.1, 0.0, 0.5, 0.05, n=2)
    v, faces = join(back, front)
    nb = len(back[0])
    size = 64
    K = intrinsics(f=2 * F, c=32.0)  # 64 px canvas: the 0.03 threshold is 1.9 px
    move = np.zeros_like(v)
    move[:nb, 0] = 2.0 * 1.0 / (2 * F)  # 2 px at depth 1
    move[nb:, 0] = 10.0 * 0.5 / (2 * F)  # 10 px at depth 0.5
    q = v + move
    qv, rv = jnp.asarray(q)[None], jnp.asarray(v)[None]
    img = jnp.zeros((1, size, size, 3))
    res = consistency(qv, rv, jnp.asarray(faces), jnp.zeros(len(faces), bool), K, K, img, img,
                                     upstream_grid=upstream_grid)
    fid_r = np.asarray(visible_faces_batch(rv, jnp.asarray(faces), pl.canvas_intrinsics(K, 0.5), (size, size)))[0]
    fid_q = np.asarray(visible_faces_batch(qv, jnp.asarray(faces), pl.canvas_intrinsics(K, 0.5), (size, size)))[0]
    nfb = len(back[1])
    rows, cols = np.mgrid[0:size, 0:size]
    on_back = (fid_r >= 0) & (fid_r < nfb)
    # reference back-plane pixels whose point (2 px right in the query) is covered by the front plane there
    lands = np.zeros_like(on_back)
    inside = cols + 2 < size
    lands[inside] = fid_q[rows[inside], cols[inside] + 2] >= nfb
    valid = np.asarray(res.valid[0])
    hidden = on_back & lands
    assert hidden.sum() > 50
    core = hidden.copy()  # away from the occluder's outline (nearest sampling may land either side of it)
    for shift, axis in ((1, 1), (-1, 1), (1, 0), (-1, 0)):
        core &= np.roll(hidden, shift, axis)
    assert not valid[core].any()
    seen = on_back & ~lands
    assert valid[seen].mean() > 0.8
    assert valid[fid_r >= nfb].mean() > 0.6  # the front plane itself is visible in both frames


# ----------------------------------------------------------------------------- parity with the torch reference
def test_masks_warp_and_loss_match_the_torch_reference():
    rng = np.random.default_rng(0)
    back = plane(0.0, 0.02, 1.0, 0.3, n=5)
    front = plane(-0.05, 0.0, 0.6, 0.08, n=3)
    v, faces = join(back, front)
    nb = len(back[0])
    ref = np.stack([v, v + rng.normal(0, 0.004, v.shape).astype(np.float32)])
    query = ref.copy()
    query[:, :nb] += np.array([0.03, -0.01, 0.05], np.float32)
    query[:, nb:] += np.array([0.05, 0.02, -0.02], np.float32)
    ignore = np.zeros(len(faces), bool)
    ignore[[3, 7, len(faces) - 2]] = True
    K = intrinsics(2)
    imgs = rng.uniform(-0.5, 0.5, (2, 2, S, S, 3)).astype(np.float32)
    qv, rv, fj, ig = jnp.asarray(query), jnp.asarray(ref), jnp.asarray(faces), jnp.asarray(ignore)
    res = consistency(qv, rv, fj, ig, K, K, jnp.asarray(imgs[0]), jnp.asarray(imgs[1]))
    flow21, flow12, keep_r, cover_r, keep_q = raw_flows(qv, rv, fj, ig, K, S)
    loss, f21, valid = consistency_loss_ref(flow21, flow12, keep_r, cover_r, keep_q, imgs[0], imgs[1])
    assert valid.sum() > 200 and (~valid & np.asarray(cover_r)).sum() > 20  # both outcomes occur
    np.testing.assert_array_equal(np.asarray(res.valid), valid)
    np.testing.assert_allclose(np.asarray(res.flow21), f21, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.loss), loss, rtol=1e-5)


# ----------------------------------------------------------------------------- gradients
def test_gradients_reach_the_query_prediction_through_the_flow_values_only():
    rng = np.random.default_rng(1)
    v, faces = join(plane(0.0, 0.0, 1.0, 0.3, n=4), plane(0.05, 0.0, 0.7, 0.06, n=2))
    q = v + np.array([0.02, 0.01, -0.03], np.float32)
    img_q = jnp.asarray(rng.uniform(-0.5, 0.5, (1, S, S, 3)).astype(np.float32))
    img_r = jnp.asarray(rng.uniform(-0.5, 0.5, (1, S, S, 3)).astype(np.float32))
    fj, ig, K = jnp.asarray(faces), jnp.zeros(len(faces), bool), intrinsics()

    def loss(qv, rv):
        return consistency(qv, rv, fj, ig, K, K, img_q, img_r).loss[0]

    qv, rv = jnp.asarray(q)[None], jnp.asarray(v)[None]
    g_q, g_r = jax.grad(loss, argnums=(0, 1))(qv, rv)
    assert np.all(np.asarray(g_r) == 0)  # the reference (ground truth) and its rasterisation are constants
    assert np.abs(np.asarray(g_q)).max() > 0
    # only vertices of faces seen in the reference render can move the flow values
    res = consistency(qv, rv, fj, ig, K, K, img_q, img_r)
    fid_r = np.asarray(visible_faces_batch(rv, fj, pl.canvas_intrinsics(K, 0.5), (S, S), near=pl.UPSTREAM_NEAR))[0]
    used = np.zeros(len(v), bool)
    used[np.unique(faces[fid_r[np.asarray(res.valid[0])]])] = True
    assert np.all(np.asarray(g_q)[0][~used] == 0)
    # directional derivative = central finite difference at a step that changes no mask (the occlusion round trip
    # and the in-bounds test are discrete in the flow, so the step must not move any pixel across them)
    d = jnp.asarray(rng.normal(0, 1, q.shape).astype(np.float32))[None]
    compared = 0
    for eps in (1e-4, 3e-5, 1e-5):
        plus, minus = (consistency(qv + s * eps * d, rv, fj, ig, K, K, img_q, img_r) for s in (1, -1))
        if np.array_equal(np.asarray(plus.valid), np.asarray(minus.valid)):
            fd = (plus.loss[0] - minus.loss[0]) / (2 * eps)
            np.testing.assert_allclose(float(jnp.vdot(g_q, d)), float(fd), rtol=1e-2)
            compared += 1
    assert compared


def test_skip_and_consist_weight():
    v, faces = plane(0.0, 0.0, 1.0, 0.2)
    q = v + np.array([0.02, 0.0, 0.0], np.float32)
    rng = np.random.default_rng(2)
    imgs = jnp.asarray(rng.uniform(-0.5, 0.5, (2, 2, S, S, 3)).astype(np.float32))
    qv, rv = jnp.asarray(np.stack([q, q])), jnp.asarray(np.stack([v, v]))
    args = (qv, rv, jnp.asarray(faces), jnp.zeros(len(faces), bool), intrinsics(2), intrinsics(2), imgs[0], imgs[1])
    full = consistency(*args).loss
    skipped = consistency(*args, skip=jnp.array([True, False])).loss
    assert float(full[0]) > 0 and float(skipped[0]) == 0 and float(skipped[1]) == float(full[1])
    # upstream's progressive_consist: min(lam * step / ramp, lam)
    np.testing.assert_allclose([float(pl.consist_weight(s, 1e-3, 1000)) for s in (0, 250, 1000, 5000)],
                               [0.0, 2.5e-4, 1e-3, 1e-3], rtol=1e-6)
    assert float(pl.consist_weight(0, 1e-3, 0)) == pytest.approx(1e-3)


def test_masked_mse_and_priors():
    pred = jnp.asarray([[[1.0, 2.0, 3.0]], [[0.0, 0.0, 0.0]], [[5.0, 5.0, 5.0]]])
    target = jnp.zeros_like(pred)
    # samples 0 and 1 labelled: (1 + 4 + 9) / 3 and 0 -> mean 14 / 6
    assert float(pl.masked_mse(pred, target, jnp.array([True, True, False]))) == pytest.approx(14 / 6)
    assert float(pl.masked_mse(pred, target, jnp.zeros(3, bool))) == 0.0


# ----------------------------------------------------------------------------- MeshRegNet decoding
def test_placement_is_upstreams_recover_3d_proj():
    """Z0 = f s + 0.4 with s = raw * 1e-4, the root projects to the image centre + 100 * raw t (fx = fy)."""
    K = jnp.asarray([[[350.0, 0, 230.0], [0, 350.0, 140.0], [0, 0, 1]]])
    st = jnp.asarray([[3.0, 0.5, -0.2]])
    pts = jnp.asarray([[[0.0, 0.0, 0.0], [0.01, -0.02, 0.03]]])
    placed, root = mr.place(pts, st, K, (270, 480), **mr.UPSTREAM_PLACEMENT)
    z0 = 350.0 * 3e-4 + 0.4
    np.testing.assert_allclose(np.asarray(root[0, 2]), z0, rtol=1e-6)
    uv = np.asarray(root[0, :2]) * 350.0 / z0 + np.array([230.0, 140.0])
    np.testing.assert_allclose(uv, [240.0 + 50.0, 135.0 - 20.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(placed[0, 1] - placed[0, 0]), [0.01, -0.02, 0.03], atol=1e-7)


def test_decode_centres_on_joint_9_adaptor_and_places_the_object():
    hand = mano.load_model(None, "right")
    rng = np.random.default_rng(3)
    raw = {"pose": jnp.asarray(rng.normal(0, 0.3, (2, 18)), jnp.float32),
           "betas": jnp.asarray(rng.normal(0, 0.5, (2, 10)), jnp.float32),
           "hand_scaletrans": jnp.asarray(rng.normal(0, 1, (2, 3)), jnp.float32),
           "obj_scaletrans": jnp.asarray(rng.normal(0, 1, (2, 6)), jnp.float32)}
    K = intrinsics(2, f=60.0, c=32.0)
    canon = jnp.asarray(rng.normal(0, 0.03, (2, 12, 3)), jnp.float32)
    conv = mr.model_convention("manopth")
    factors = dict(trans_factor=20.0, scale_factor=5e-3, depth_offset=0.5)
    decode = jax.jit(lambda r, k, c, a: mr.decode(r, k, (64, 64), hand, object_canonical=c, convention=conv,
                                                  adaptor=a, **factors))
    out = decode(raw, K, canon, None)
    _, root = mr.place(jnp.zeros((2, 1, 3)), raw["hand_scaletrans"], K, (64, 64), **factors)
    np.testing.assert_allclose(np.asarray(out.hand.joints[:, 9]), np.asarray(root), atol=1e-6)
    # the same hand as MANO in manopth's order (PCA, flat_hand_mean=False), translated rigidly
    rot = mano.from_pca(hand, raw["pose"][:, :3], raw["pose"][:, 3:], flat_hand_mean=False)
    ref = jax.jit(lambda r, b: mano.mano_forward(hand, r, b, convention="manopth"))(rot, raw["betas"])
    ref_j = np.asarray(ref.joints) / 1000.0
    np.testing.assert_allclose(np.asarray(out.hand.joints - out.hand.joints[:, 9:10]), ref_j - ref_j[:, 9:10],
                               atol=1e-6)
    # object: R(aa) canonical + root of its own scale / translation
    aa = np.asarray(raw["obj_scaletrans"][:, 3:])
    _, oroot = mr.place(jnp.zeros((2, 1, 3)), raw["obj_scaletrans"][:, :3], K, (64, 64), **factors)
    for i in range(2):
        th = np.linalg.norm(aa[i])
        k = aa[i] / th
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        R = np.eye(3) + np.sin(th) * kx + (1 - np.cos(th)) * kx @ kx
        expect = np.asarray(canon[i]) @ R.T + np.asarray(oroot[i])
        np.testing.assert_allclose(np.asarray(out.object.vertices[i]), expect, atol=1e-5)
    # FPHAB adaptor: joints regressed from the vertices, joints and vertices re-centred on ITS joint 9
    adaptor = jnp.asarray(rng.uniform(0, 1, (21, 778)) / 778 * 2, jnp.float32)
    out_a = decode(raw, K, None, adaptor)
    np.testing.assert_allclose(np.asarray(out_a.hand.joints[:, 9]), np.asarray(root), atol=1e-6)
    v_mano = np.asarray(out.hand.vertices) - np.asarray(root)[:, None]  # MANO-centred (joint 9) vertices
    j_a = np.einsum("jv,bvc->bjc", np.asarray(adaptor), v_mano)
    np.testing.assert_allclose(np.asarray(out_a.hand.joints) - np.asarray(root)[:, None], j_a - j_a[:, 9:10],
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(out_a.hand.vertices) - np.asarray(root)[:, None], v_mano - j_a[:, 9:10],
                               atol=1e-6)
