"""IdHandMesh personalisation: the math pieces against hand-computed cases / numpy.

6D rows and the two update rules of the iterative pose regressor, the margin-ranking loss, the
calibration aggregations, the mesh losses, heatmap keypoints, and the inference-time fit recovering
a known translation and pose of a synthetic hand from exact 2D keypoints. The end-to-end run of
``configs/personalize.py:size=tiny`` is in tests/test_personalize_main.py.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from handjax import mano
from handjax.geometry import axis_angle_to_matrix, project_matrix
from handjax.losses import idhandmesh as L
from handjax.models import idhandmesh as idm
from handjax.models import personalization as pers


_mano_mesh = jax.jit(idm.mano_mesh, static_argnums=(3,))  # eager op-by-op MANO is slow on CPU
_init_translation = jax.jit(idm.init_translation, static_argnums=(5,))


def _rot_z(t):
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32)


def _rot_x(t):
    c, s = np.cos(t), np.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)


# ----------------------------------------------------------------------------- 6D rows
def test_rows6d_gram_schmidt_hand_computed():
    # a = (2, 0, 0) -> b1 = x; b = (1, 3, 0) minus its x part -> (0, 3, 0) -> b2 = y; b3 = x cross y = z
    m = np.asarray(idm.rows6d_to_matrix(jnp.asarray([2.0, 0, 0, 1, 3, 0])))
    np.testing.assert_allclose(m, np.eye(3), atol=1e-7)
    # rows, not columns: the 6D of a rotation is its first two rows
    r = _rot_z(0.3) @ _rot_x(-1.1)
    six = np.asarray(idm.matrix_to_rows6d(jnp.asarray(r)))
    np.testing.assert_allclose(six, np.concatenate([r[0], r[1]]), atol=0)
    np.testing.assert_allclose(np.asarray(idm.rows6d_to_matrix(jnp.asarray(six))), r, atol=1e-6)
    # a = (0, 0, 0): torch's F.normalize clamps the norm (eps) instead of dividing by zero
    assert np.all(np.isfinite(np.asarray(idm.rows6d_to_matrix(jnp.zeros(6)))))


def test_compose_6d_is_left_multiplication():
    rng = np.random.default_rng(0)
    a = np.asarray(axis_angle_to_matrix(jnp.asarray(rng.normal(0, 1, (16, 3)), jnp.float32)))
    b = np.asarray(axis_angle_to_matrix(jnp.asarray(rng.normal(0, 1, (16, 3)), jnp.float32)))
    delta = np.concatenate([a[:, 0], a[:, 1]], -1).reshape(96) * 2.5  # unnormalised 6D: Gram-Schmidt fixes it
    pose = np.concatenate([b[:, 0], b[:, 1]], -1).reshape(96)
    out = np.asarray(idm.compose_6d(jnp.asarray(delta), jnp.asarray(pose))).reshape(16, 6)
    want = np.einsum("jab,jbc->jac", a, b)
    np.testing.assert_allclose(out, np.concatenate([want[:, 0], want[:, 1]], -1), atol=2e-6)


def _constant_stages(head, delta):
    """Zero every weight of the pose MLPs and set the last bias: each stage's delta is ``delta``."""
    for mlp in head.stages:
        for layer in mlp.layers:
            layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
            layer.bias[...] = jnp.zeros_like(layer.bias[...])
        mlp.layers[-1].bias[...] = jnp.asarray(delta, jnp.float32)


def test_iterative_pose_baseline_init_and_additive_update():
    head = idm.IterativePose(5, rngs=nnx.Rngs(0), mode="add", iterations=3, hidden=(4,))
    delta = np.linspace(-0.5, 0.5, 96).astype(np.float32)
    _constant_stages(head, delta)
    out = head(jnp.ones((2, 5)))
    init = np.tile([1.0, 0, 0, 1, 0, 0], 16)  # eye(3)[:, :, :2] flattened: columns sliced, upstream's baseline
    assert len(out) == 3
    for k, pose in enumerate(out[::-1]):  # output is last stage first
        np.testing.assert_allclose(np.asarray(pose), np.tile(init + (k + 1) * delta, (2, 1)), atol=1e-6)


def test_iterative_pose_identity_init_and_multiplicative_update():
    head = idm.IterativePose(5, rngs=nnx.Rngs(0), mode="multiply", iterations=3, hidden=(4,))
    r = _rot_z(0.2)
    _constant_stages(head, np.tile(np.concatenate([r[0], r[1]]), 16))
    out = head(jnp.ones((1, 5)))
    for k, pose in enumerate(out[::-1]):  # R(delta)^(k+1) @ I: rows of R_z(0.2 (k + 1))
        rk = _rot_z(0.2 * (k + 1))
        np.testing.assert_allclose(np.asarray(pose)[0], np.tile(np.concatenate([rk[0], rk[1]]), 16), atol=1e-6)
    with pytest.raises(ValueError, match="pose_mode"):
        idm.IterativePose(5, rngs=nnx.Rngs(0), mode="bogus")


# ----------------------------------------------------------------------------- losses
def _ranking_numpy(conf, err, margin):
    vals = []
    for i, j in itertools.combinations(range(len(conf)), 2):  # torch MarginRankingLoss on every pair
        y = np.sign(err[j] - err[i])
        vals.append(max(0.0, -y * (conf[i] - conf[j]) + margin))
    return np.mean(vals)


def test_margin_ranking_matches_numpy():
    rng = np.random.default_rng(1)
    conf, err = rng.normal(0, 2, 11).astype(np.float32), rng.uniform(0, 1, 11).astype(np.float32)
    err[3] = err[7]  # a tie: y = 0, the pair costs the margin
    for margin in (1.0, 0.3):
        got = float(L.margin_ranking(jnp.asarray(conf), jnp.asarray(err), margin))
        np.testing.assert_allclose(got, _ranking_numpy(conf, err, margin), rtol=1e-6)
    # hand-computed: two images, the first has the smaller error but the lower confidence
    np.testing.assert_allclose(float(L.margin_ranking(jnp.asarray([0.0, 0.5]), jnp.asarray([0.1, 0.2]))), 1.5)
    np.testing.assert_allclose(float(L.margin_ranking(jnp.asarray([3.0, 0.5]), jnp.asarray([0.1, 0.2]))), 0.0)


def test_ranking_term_detaches_betas_and_orders_confidence():
    out = {"conf": jnp.asarray([0.0, 0.0, 0.0]), "betas": jnp.zeros((3, 10))}
    batch = {"betas": jnp.asarray(np.array([[0.1], [0.5], [0.3]]) * np.ones((1, 10)), jnp.float32)}
    grad = jax.grad(lambda o: L.TERMS["ranking"](o, batch, {"margin": 1.0}))(out)
    assert np.all(np.asarray(grad["betas"]) == 0)  # the shape error is a target, not trained through
    g = np.asarray(grad["conf"])  # descending the loss raises the confidence of the smallest error most
    assert g[0] < g[2] < g[1]


def test_mesh_losses_hand_computed():
    faces = jnp.asarray([[0, 1, 2]])
    gt = jnp.asarray([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]])  # GT normal = z
    np.testing.assert_allclose(np.asarray(L.edge_length_loss(gt, gt, faces)), [0.0])
    np.testing.assert_allclose(np.asarray(L.normal_loss(gt, gt, faces)), [0.0], atol=1e-7)
    # doubled triangle: edges 1, 1, sqrt(2) -> 2, 2, 2 sqrt(2): mean |diff| = (1 + 1 + sqrt 2) / 3
    np.testing.assert_allclose(np.asarray(L.edge_length_loss(2 * gt, gt, faces)), [(2 + np.sqrt(2)) / 3], rtol=1e-6)
    # prediction tilted out of the plane: vertex 2 at (0, 1, 1): edges (1,0,0), (0,1,1)/sqrt2, (-1,1,1)/sqrt3
    pred = jnp.asarray([[[0.0, 0, 0], [1, 0, 0], [0, 1, 1]]])
    np.testing.assert_allclose(np.asarray(L.normal_loss(pred, gt, faces)),
                               [(0 + 1 / np.sqrt(2) + 1 / np.sqrt(3)) / 3], rtol=1e-6)


def test_gt_pose6d_and_vertices_term_on_a_mano_hand():
    hand = mano.load_model(None, "right")
    rng = np.random.default_rng(2)
    pose = jnp.asarray(rng.normal(0, 0.4, (2, 48)), jnp.float32)
    betas = jnp.asarray(rng.normal(0, 1, (2, 10)), jnp.float32)
    transl = jnp.asarray([[0.1, 0.0, 0.5], [-0.05, 0.02, 0.7]], jnp.float32)
    six = L.gt_pose6d({"mano_pose": pose})
    np.testing.assert_allclose(np.asarray(idm.pose_to_rotmats(six)),
                               np.asarray(axis_angle_to_matrix(pose.reshape(2, 16, 3))), atol=1e-6)
    _, out = _mano_mesh(hand, six, betas, True)
    batch = {"vertices": out.vertices + transl[:, None], "transl": transl, "mano_pose": pose, "betas": betas}
    pred = {"vertices": out.vertices, "pose6d": [six]}
    assert float(L.TERMS["vertices"](pred, batch, {})) < 1e-6
    assert float(L.TERMS["pose6d"](pred, batch, {})) < 1e-6
    # units of 0.2 m: 1 cm off on every coordinate is 0.05
    moved = {"vertices": out.vertices + 0.01}
    np.testing.assert_allclose(float(L.TERMS["vertices"](moved, batch, {})), 0.05, rtol=1e-4)
    # has_mano masks samples out of the mean
    masked = dict(batch, has_mano=np.array([True, False]))
    half = {"vertices": out.vertices.at[1].add(0.01)}
    assert float(L.TERMS["vertices"](half, masked, {})) < 1e-6


def test_heatmaps_and_keypoints_agree():
    size = 32
    cells = np.c_[np.arange(21) % 7 * 2 + 1, np.arange(21) // 7 * 4 + 3]  # (column, row) of a 16-cell map
    joints = jnp.asarray(2.0 * cells + 0.5, jnp.float32)[None]  # their centres in crop pixels
    maps = L.gaussian_heatmaps(joints, size, (16, 16), 1.0)
    assert maps.shape == (1, 16, 16, 21)
    np.testing.assert_allclose(float(maps.max()), 1.0, rtol=1e-6)  # joints on cell centres: peak exactly 1
    # cell (i, j) of a 16-cell map of a 32 px crop is the crop point 2 j + 0.5, 2 i + 0.5
    got = np.asarray(idm.heatmap_keypoints(maps, size, "argmax"))
    np.testing.assert_allclose(got, np.asarray(joints), atol=1e-5)
    soft = np.asarray(idm.heatmap_keypoints(jnp.log(maps + 1e-9) * 4.0, size, "soft_argmax"))
    np.testing.assert_allclose(soft, np.asarray(joints), atol=0.05)
    with pytest.raises(ValueError, match="optimize.keypoints"):
        idm.heatmap_keypoints(maps, size, "bogus")


# ----------------------------------------------------------------------------- calibration
def test_aggregations_on_constructed_cases():
    betas = np.array([[1.0] * 10, [2.0] * 10, [6.0] * 10, [3.0] * 10])
    conf = np.array([0.0, 3.0, -2.0, 1.0])
    np.testing.assert_allclose(pers.aggregate_betas(betas, conf, "mean"), [3.0] * 10)
    # top half by confidence: images 1 (3.0) and 3 (1.0) -> (2 + 3) / 2
    np.testing.assert_allclose(pers.aggregate_betas(betas, conf, "topk", top_fraction=0.5), [2.5] * 10)
    np.testing.assert_allclose(pers.aggregate_betas(betas, conf, "topk", top_fraction=0.1), [2.0] * 10)  # ceil -> 1
    # confidence weights: softmax(conf / (T std(conf)))
    t = 0.7
    w = np.exp(conf / (t * conf.std()))
    np.testing.assert_allclose(pers.aggregate_betas(betas, conf, "confidence", temperature=t),
                               (w / w.sum()) @ betas, rtol=1e-12)
    # a very low temperature picks the most confident image, a very high one is the mean
    np.testing.assert_allclose(pers.aggregate_betas(betas, conf, "confidence", temperature=1e-3), [2.0] * 10)
    np.testing.assert_allclose(pers.aggregate_betas(betas, conf, "confidence", temperature=1e6), [3.0] * 10,
                               rtol=1e-5)
    # equal confidences (or one image): the plain mean; the scale of the confidences does not matter
    np.testing.assert_allclose(pers.aggregate_betas(betas, np.ones(4), "confidence"), [3.0] * 10)
    np.testing.assert_allclose(pers.aggregate_betas(betas, conf * 50, "confidence"),
                               pers.aggregate_betas(betas, conf, "confidence"), rtol=1e-12)
    for bad, match in ((dict(method="bogus"), "calibrate.methods"),
                       (dict(method="topk", top_fraction=0.0), "top_fraction"),
                       (dict(method="confidence", temperature=0.0), "temperature")):
        with pytest.raises(ValueError, match=match):
            pers.aggregate_betas(betas, conf, **bad)


def test_calibrate_subjects_draws_n_images_per_subject():
    subjects = np.array([5, 5, 5, 9, 9])
    betas = np.arange(5, dtype=np.float64)[:, None] * np.ones((1, 10))
    out = pers.calibrate_subjects(betas, np.zeros(5), subjects, 10, "mean", np.random.default_rng(0))
    np.testing.assert_allclose(out[5], [1.0] * 10)  # fewer images than N: all of them
    np.testing.assert_allclose(out[9], [3.5] * 10)
    one = pers.calibrate_subjects(betas, np.zeros(5), subjects, 1, "mean", np.random.default_rng(0))
    assert one[5][0] in (0, 1, 2) and one[9][0] in (3, 4)


# ----------------------------------------------------------------------------- inference-time fit
@pytest.fixture(scope="module")
def synthetic_hands():
    hand = mano.load_model(None, "right")
    rng = np.random.default_rng(3)
    n = 3
    rot = axis_angle_to_matrix(jnp.asarray(rng.normal(0, 0.3, (n, 16, 3)), jnp.float32))
    pose = idm.matrix_to_rows6d(rot).reshape(n, 96)
    betas = jnp.asarray(rng.normal(0, 1, (n, 10)), jnp.float32)
    transl = jnp.asarray(np.array([0.02, -0.01, 0.6]) + rng.normal(0, 0.03, (n, 3)), jnp.float32)
    K = jnp.tile(jnp.asarray([[300.0, 0, 112], [0, 300.0, 112], [0, 0, 1]]), (n, 1, 1))
    _, out = _mano_mesh(hand, pose, betas, with_mesh=False)
    target = project_matrix(out.joints + transl[:, None], jnp.concatenate([K, jnp.zeros((n, 3, 1))], -1))
    return dict(hand=hand, pose=pose, betas=betas, transl=transl, K=K, joints=out.joints, target=target, rng=rng)


def test_fit_recovers_translation_from_exact_keypoints(synthetic_hands):
    s = synthetic_hands
    t0 = _init_translation(s["hand"], s["pose"], s["betas"], s["target"][:, 0], s["K"], 0.85)
    assert np.allclose(np.asarray(t0[:, 2] + s["joints"][:, 0, 2]), 0.85, atol=1e-5)  # the wrist at Z = 0.85 m
    pose, transl, energy = pers.fit(s["hand"], s["pose"], t0, s["betas"], s["K"], s["target"], steps2=300)
    assert energy.shape == (3, 500)
    assert np.all(np.asarray(energy[:, 0]) > 10.0)  # 0.6 m vs 0.85 m: a scale error of several pixels
    np.testing.assert_allclose(np.asarray(transl), np.asarray(s["transl"]), atol=1e-3)
    assert np.all(np.asarray(energy[:, 199]) < 1e-3)  # after stage 1 (translation only, exact pose)
    assert np.all(np.asarray(energy[:, -1]) < 5e-2)  # stage 2's Adam steps (lr 1e-3) jitter the exact pose a little


def test_fit_recovers_pose_from_exact_keypoints_per_image(synthetic_hands):
    s = synthetic_hands
    noisy = s["pose"] + jnp.asarray(s["rng"].normal(0, 0.05, s["pose"].shape), jnp.float32)
    t0 = _init_translation(s["hand"], noisy, s["betas"], s["target"][:, 0], s["K"], 0.85)
    kw = dict(lr2=1e-2, steps2=300)  # longer / faster than upstream's 1e-3 x 100: converge, not just improve
    pose, transl, energy = pers.fit(s["hand"], noisy, t0, s["betas"], s["K"], s["target"], **kw)
    _, before = _mano_mesh(s["hand"], noisy, s["betas"], with_mesh=False)
    _, after = _mano_mesh(s["hand"], pose, s["betas"], with_mesh=False)
    err = lambda j: float(np.mean(np.linalg.norm(np.asarray(j - s["joints"]), axis=-1)))
    assert err(after.joints) < 0.25 * err(before.joints) and err(after.joints) < 2e-3  # metres
    np.testing.assert_allclose(np.asarray(transl), np.asarray(s["transl"]), atol=2e-3)
    assert np.all(np.asarray(energy[:, -1]) < 1e-2)
    # each image is its own problem (not one batch-mean energy): other images' targets change nothing
    other = s["target"].at[0].add(7.0).at[2].mul(1.1)
    p1, t1, _ = pers.fit(s["hand"], noisy, t0, s["betas"], s["K"], other, **kw)
    np.testing.assert_array_equal(np.asarray(p1[1]), np.asarray(pose[1]))
    np.testing.assert_array_equal(np.asarray(t1[1]), np.asarray(transl[1]))
    assert not np.allclose(np.asarray(t1[0]), np.asarray(transl[0]))


# ----------------------------------------------------------------------------- config checks
def test_config_checks_name_their_keys():
    from handjax.configs.personalize import get_config
    from handjax.train.personalize import _check

    _check(get_config("size=tiny"))
    for arg, key, value, match in (
            ("size=tiny", "calibrate.methods", ("mean", "median"), "calibrate.methods"),
            ("size=tiny", "calibrate.top_fraction", 1.5, "calibrate.top_fraction"),
            ("size=tiny", "optimize.keypoints", "centroid", "optimize.keypoints"),
            ("size=tiny", "data.joint_convention", "freihand", "data.joint_convention"),
            ("recipe=dexycb", None, None, "mano.model_path")):
        cfg = get_config(arg)
        if key:
            section, name = key.split(".")
            cfg[section][name] = value
        with pytest.raises(ValueError, match=match):
            _check(cfg)
    with pytest.raises(ValueError, match="recipe"):
        get_config("recipe=humbi")
