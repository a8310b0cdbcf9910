"""MANO layer: loading, safety, parity with smplx, transforms (jit/vmap/grad), conventions, mirroring."""
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import smplx
import torch
from scipy.spatial.transform import Rotation

from handjax import mano
from handjax.geometry import axis_angle_to_matrix, quaternion_to_matrix, matrix_to_rot6d
from mano_fixtures import random_mano_arrays, write_official_mano_pkl, write_plain_mano_pkl


@pytest.fixture(scope="module")
def mano_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mano")
    arrays = random_mano_arrays(seed=0)
    official = d / "official" / "MANO_RIGHT.pkl"
    official.parent.mkdir()
    write_official_mano_pkl(official, arrays)
    plain = d / "plain"
    plain.mkdir()
    write_plain_mano_pkl(plain / "MANO_RIGHT.pkl", arrays)
    return arrays, str(official), str(plain)


def test_official_pickle_decodes_without_chumpy(mano_files):
    arrays, official, _ = mano_files
    raw = open(official, "rb").read()
    for g in (b"chumpy.ch\nCh", b"chumpy.reordering\nSelect", b"scipy.sparse.csc\ncsc_matrix",
              b"numpy.core.multiarray\n_reconstruct", b"__builtin__\nset"):
        assert g in raw  # the fixture really uses the official globals
    out = mano.load_mano_pickle(official)
    for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "hands_components", "hands_mean", "J"):
        np.testing.assert_array_equal(out[k], arrays[k], err_msg=k)
    assert out["f"].dtype == np.uint32 and out["kintree_table"][0, 0] == 4294967295
    assert out["bs_style"] == "lbs" and out["bs_type"] == "lrotmin"
    model = mano.load_model(os.path.dirname(official))
    assert model.parents == mano.MANO_PARENTS and model.shapedirs.shape == (778, 3, 10)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"v_template": _Evil(target)}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '(posix|os|nt)\.system'"):
        mano.load_mano_pickle(str(path))
    assert not target.exists()


def test_restricted_unpickler_refuses_unknown_global(tmp_path):
    import collections
    path = tmp_path / "other.pkl"
    with open(path, "wb") as f:
        pickle.dump(collections.OrderedDict(a=1), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"collections\.OrderedDict"):
        mano.load_mano_pickle(str(path))


def test_missing_file_says_where_to_get_it():
    with pytest.raises(FileNotFoundError) as e:
        mano.load_model("/nonexistent/models/MANO_RIGHT.pkl")
    msg = str(e.value)
    assert "/nonexistent/models/MANO_RIGHT.pkl" in msg and "mano.is.tue.mpg.de" in msg and "mano.model_path" in msg


def test_bad_arrays_name_the_key(mano_files):
    arrays = dict(mano_files[0])
    arrays["posedirs"] = arrays["posedirs"][:, :, :100]
    with pytest.raises(ValueError, match="posedirs"):
        mano.model_from_arrays(arrays, source="x.pkl")


def test_npz_roundtrip(mano_files, tmp_path):
    model = mano.load_model(mano_files[1])
    mano.save_npz(model, str(tmp_path / "m.npz"))
    back = mano.load_model(str(tmp_path / "m.npz"))
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)
    assert back.parents == model.parents and back.side == model.side


# --------------------------------------------------------------------------- parity with smplx


def _smplx(plain_dir, **kw):
    return smplx.MANO(model_path=plain_dir, is_rhand=True, batch_size=8, **kw)


def _compare(ours, ref_layer, betas, go, hp, transl, model):
    with torch.no_grad():
        out = ref_layer(betas=torch.from_numpy(betas), global_orient=torch.from_numpy(go),
                        hand_pose=torch.from_numpy(hp), transl=torch.from_numpy(transl))
    np.testing.assert_allclose(ours.vertices, out.vertices.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours.joints[:, :16], out.joints.numpy(), atol=1e-6, rtol=0)  # "ho3d" = tree order
    tips = out.vertices.numpy()[:, list(mano.CONVENTIONS["ho3d"].tips("right"))]
    np.testing.assert_allclose(ours.joints[:, 16:], tips, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pose_scale", [1e-4, 0.4, 1.5])
@pytest.mark.parametrize("flat_hand_mean", [True, False])
def test_full_pose_parity_with_smplx(mano_files, pose_scale, flat_hand_mean):
    _, official, plain = mano_files
    model = mano.load_model(official)
    rng = np.random.default_rng(int(pose_scale * 1000) + flat_hand_mean)
    aa = rng.normal(0, pose_scale, (8, 48)).astype(np.float32)
    betas = rng.normal(0, 1.5, (8, 10)).astype(np.float32)
    transl = rng.normal(0, 0.3, (8, 3)).astype(np.float32)
    rot = mano.from_axis_angle(model, jnp.asarray(aa), flat_hand_mean=flat_hand_mean)
    ours = mano.mano_forward(model, rot, jnp.asarray(betas), jnp.asarray(transl), convention="ho3d")
    ref = _smplx(plain, use_pca=False, flat_hand_mean=flat_hand_mean)
    _compare(ours, ref, betas, aa[:, :3], aa[:, 3:], transl, model)


@pytest.mark.parametrize("ncomps,flat_hand_mean", [(6, False), (12, True), (45, False)])
def test_pca_pose_parity_with_smplx(mano_files, ncomps, flat_hand_mean):
    _, official, plain = mano_files
    model = mano.load_model(official)
    rng = np.random.default_rng(ncomps)
    go = rng.normal(0, 0.8, (8, 3)).astype(np.float32)
    coeffs = rng.normal(0, 1.0, (8, ncomps)).astype(np.float32)
    betas = rng.normal(0, 1.0, (8, 10)).astype(np.float32)
    transl = rng.normal(0, 0.3, (8, 3)).astype(np.float32)
    rot = mano.from_pca(model, jnp.asarray(go), jnp.asarray(coeffs), flat_hand_mean=flat_hand_mean)
    ours = mano.mano_forward(model, rot, jnp.asarray(betas), jnp.asarray(transl), convention="ho3d")
    if ncomps == 45:  # smplx switches PCA off at 45 components: feed it the decoded axis-angle
        ref = _smplx(plain, use_pca=False, flat_hand_mean=flat_hand_mean)
        hp = coeffs @ np.asarray(model.hands_components)
    else:
        ref = _smplx(plain, use_pca=True, num_pca_comps=ncomps, flat_hand_mean=flat_hand_mean)
        hp = coeffs
    _compare(ours, ref, betas, go, hp.astype(np.float32), transl, model)


def test_other_pose_inputs_agree(mano_files):
    model = mano.load_model(mano_files[1])
    r = Rotation.random(2 * 16, random_state=0)
    R = jnp.asarray(r.as_matrix().reshape(2, 16, 3, 3), jnp.float32)
    q = jnp.asarray(r.as_quat()[:, [3, 0, 1, 2]].reshape(2, 16, 4), jnp.float32)
    aa = jnp.asarray(r.as_rotvec().reshape(2, 48), jnp.float32)
    ref = mano.mano_forward(model, R).vertices
    for rot in (mano.to_rotmats(model, aa), mano.to_rotmats(model, q, "quaternion"),
                mano.to_rotmats(model, matrix_to_rot6d(R, "interleaved"), "rot6d", rot6d_layout="interleaved"),
                mano.to_rotmats(model, matrix_to_rot6d(R, "pytorch3d").reshape(2, 96), "rot6d",
                                rot6d_layout="pytorch3d")):
        np.testing.assert_allclose(mano.mano_forward(model, rot).vertices, ref, atol=2e-6)


# --------------------------------------------------------------------------- transformations


def _naive_fk(rotmats, joints, parents):
    """Per-joint loop reference for forward kinematics (numpy, float64)."""
    G = np.zeros((16, 4, 4))
    for j, p in enumerate(parents):
        T = np.eye(4)
        T[:3, :3] = rotmats[j]
        T[:3, 3] = joints[j] - (joints[p] if p >= 0 else 0)
        G[j] = T if p < 0 else G[p] @ T
    return G


def test_level_parallel_fk_matches_loop():
    assert mano.kinematic_levels(mano.MANO_PARENTS) == ((0,), (1, 4, 7, 10, 13), (2, 5, 8, 11, 14), (3, 6, 9, 12, 15))
    rng = np.random.default_rng(1)
    R = Rotation.random(16, random_state=2).as_matrix()
    J = rng.normal(size=(16, 3))
    ours = mano.forward_kinematics(jnp.asarray(R, jnp.float32), jnp.asarray(J, jnp.float32), mano.MANO_PARENTS)
    np.testing.assert_allclose(ours, _naive_fk(R, J, mano.MANO_PARENTS), atol=1e-5)


def test_zero_pose_gives_template_and_joints_only_path(mano_files):
    model = mano.load_model(mano_files[1])
    out = mano.mano_forward(model, jnp.tile(jnp.eye(3), (16, 1, 1)))
    np.testing.assert_allclose(out.vertices, model.v_template, atol=1e-7)
    rot = mano.from_axis_angle(model, jnp.asarray(np.random.default_rng(0).normal(0, 0.5, (4, 48)), jnp.float32))
    betas = jnp.asarray(np.random.default_rng(1).normal(size=(4, 10)), jnp.float32)
    for conv in ("tempclr", "manopth", "ih26m"):
        full = mano.mano_forward(model, rot, betas, convention=conv)
        fast = mano.mano_joints(model, rot, betas, convention=conv)
        np.testing.assert_allclose(fast.joints, full.joints, atol=2e-6 * mano.get_convention(conv).unit_scale)
        assert fast.vertices is None


def test_jit_vmap_grad(mano_files):
    model = mano.load_model(mano_files[1])
    aa = jnp.asarray(np.random.default_rng(3).normal(0, 0.3, (6, 48)), jnp.float32)
    betas = jnp.zeros((6, 10))

    def verts(m, a, b):
        return mano.mano_forward(m, mano.from_axis_angle(m, a), b).vertices

    batched = jax.jit(verts)(model, aa, betas)
    per_sample = jax.vmap(lambda a, b: verts(model, a, b))(aa, betas)
    np.testing.assert_allclose(batched, per_sample, atol=1e-6)

    loss = lambda a, b: jnp.sum(verts(model, a, b) ** 2)
    g_pose, g_betas = jax.grad(loss, argnums=(0, 1))(jnp.zeros(48), jnp.zeros(10))
    assert np.all(np.isfinite(g_pose)) and np.all(np.isfinite(g_betas)) and np.abs(g_pose).sum() > 0


def test_jacobian_matches_finite_differences(mano_files):
    with jax.enable_x64(True):
        arrays = random_mano_arrays(seed=5)
        model = mano.model_from_arrays(arrays, dtype=jnp.float64)
        x0 = jnp.asarray(np.random.default_rng(0).normal(0, 0.4, 58), jnp.float64)
        x0 = x0.at[:48].set(jnp.where(jnp.arange(48) < 6, 0.0, x0[:48]))  # root and index1 at exactly zero

        def f(x):
            out = mano.mano_forward(model, mano.from_axis_angle(model, x[:48]), x[48:])
            return jnp.concatenate([out.vertices[::50].ravel(), out.joints.ravel()])

        jac = jax.jacfwd(f)(x0)
        eps = 1e-6
        fd = np.stack([(f(x0.at[i].add(eps)) - f(x0.at[i].add(-eps))) / (2 * eps) for i in range(58)], -1)
        np.testing.assert_allclose(jac, fd, atol=1e-7)


# --------------------------------------------------------------------------- conventions and sides


def test_manopth_centring_only_without_translation(mano_files):
    model = mano.load_model(mano_files[1])
    conv = mano.get_convention("manopth").replace(center_idx=9)
    rot = mano.from_axis_angle(model, jnp.asarray(np.random.default_rng(0).normal(0, 0.3, (2, 48)), jnp.float32))
    transl = jnp.array([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3]])
    out = mano.mano_forward(model, rot, None, transl, convention=conv)
    ref = mano.mano_forward(model, rot, None, None, convention=conv.replace(units="m", center_idx=None))
    np.testing.assert_allclose(out.joints[0, 9], 0.0, atol=1e-4)  # centred (mm)
    np.testing.assert_allclose(out.joints[0], (ref.joints[0] - ref.joints[0, 9]) * 1000, atol=1e-3)
    np.testing.assert_allclose(out.joints[1], (ref.joints[1] + transl[1]) * 1000, atol=1e-3)  # translated
    np.testing.assert_allclose(out.vertices[1], (ref.vertices[1] + transl[1]) * 1000, atol=1e-3)


def test_convention_orders_are_permutations_and_named():
    for conv in mano.CONVENTIONS.values():
        assert sorted(conv.joint_order) == list(range(21)), conv.name
        assert len(conv.tips("right")) == 5 and conv.source
    names = mano.get_convention("freihand").joint_names
    assert names[:5] == ("wrist", "thumb1", "thumb2", "thumb3", "thumb_tip") and names[-1] == "pinky_tip"
    assert mano.get_convention("ih26m").joint_names[-1] == "wrist"
    assert mano.get_convention("tempclr").joint_names[16:] == (
        "index_tip", "middle_tip", "pinky_tip", "ring_tip", "thumb_tip")
    with pytest.raises(ValueError, match="unknown MANO convention"):
        mano.get_convention("nope")


def test_mirrored_right_hand_equals_left_hand_with_mirrored_pose(mano_files):
    right = mano.load_model(mano_files[1])
    # The official left file ships the right hand's shapedirs unmirrored; the flag fixes that.
    left = mano.apply_left_shapedirs_fix(mano.mirror_model(right, official_shapedirs_bug=True))
    rng = np.random.default_rng(7)
    aa = jnp.asarray(rng.normal(0, 0.5, (3, 48)), jnp.float32)
    betas = jnp.asarray(rng.normal(0, 1.5, (3, 10)), jnp.float32)
    out_r = mano.mano_forward(right, axis_angle_to_matrix(aa.reshape(3, 16, 3)), betas)
    out_l = mano.mano_forward(left, mano.mirror_rotmats(axis_angle_to_matrix(aa.reshape(3, 16, 3))), betas)
    np.testing.assert_allclose(out_l.vertices, mano.mirror_points(out_r.vertices), atol=1e-6)
    np.testing.assert_allclose(out_l.joints, mano.mirror_points(out_r.joints), atol=1e-6)
    # axis-angle mirroring agrees with the rotation-matrix one, also through the PCA mean
    np.testing.assert_allclose(axis_angle_to_matrix(mano.mirror_axis_angle(aa).reshape(3, 16, 3)),
                               mano.mirror_rotmats(axis_angle_to_matrix(aa.reshape(3, 16, 3))), atol=1e-6)
    out_l2 = mano.mano_forward(left, mano.from_axis_angle(left, mano.mirror_axis_angle(aa), flat_hand_mean=False), betas)
    out_r2 = mano.mano_forward(right, mano.from_axis_angle(right, aa, flat_hand_mean=False), betas)
    np.testing.assert_allclose(out_l2.vertices, mano.mirror_points(out_r2.vertices), atol=1e-6)
    # without the fix, shape changes are not mirrored
    buggy = mano.mirror_model(right, official_shapedirs_bug=True)
    out_b = mano.mano_forward(buggy, mano.mirror_rotmats(axis_angle_to_matrix(aa.reshape(3, 16, 3))), betas)
    assert np.abs(np.asarray(out_b.vertices) - np.asarray(mano.mirror_points(out_r.vertices))).max() > 1e-3
    with pytest.raises(ValueError, match="left-hand"):
        mano.apply_left_shapedirs_fix(right)


def test_joint_shape_space_equals_regressing_the_shaped_mesh(mano_files):
    model = mano.load_model(mano_files[1])
    betas = jnp.asarray(np.random.default_rng(2).normal(0, 2, (3, 10)), jnp.float32)
    np.testing.assert_allclose(mano.joints_from_betas(model, betas),
                               mano.regress_joints(model, mano.shape_blend(model, betas)), atol=1e-6)


def test_fused_blend_equals_the_step_functions(mano_files):
    """blend_shapes_and_poses (one GEMM) = v_template + shape_blend + pose_correctives, also on a vertex subset."""
    model = mano.load_model(mano_files[1])
    rng = np.random.default_rng(3)
    betas = jnp.asarray(rng.normal(0, 2, (2, 3, 10)), jnp.float32)
    rot = axis_angle_to_matrix(jnp.asarray(rng.normal(0, 0.6, (2, 3, 16, 3)), jnp.float32))
    steps = mano.shape_blend(model, betas) + mano.pose_correctives(model, rot)
    fused = mano.blend_shapes_and_poses(model, rot, betas)
    assert fused.shape == (2, 3, 778, 3)
    np.testing.assert_allclose(fused, steps, atol=1e-5)
    ids = [744, 320, 0, 777]
    np.testing.assert_allclose(mano.blend_shapes_and_poses(model, rot, betas, ids), steps[..., ids, :], atol=1e-5)


def test_chunked_skinning_matches_smplx_and_whole_batch(mano_files):
    """lbs in lax.map chunks (the large-batch XLA-CPU path; 8 = 3 + 3 + 2 padded) equals smplx and
    the whole-batch path (to float32 rounding: the fusions differ), for vertices, joints, extra leading
    dims and gradients."""
    _, official, plain = mano_files
    model = mano.load_model(official)
    rng = np.random.default_rng(5)
    aa = rng.normal(0, 0.8, (8, 48)).astype(np.float32)
    betas = rng.normal(0, 1.5, (8, 10)).astype(np.float32)
    transl = rng.normal(0, 0.3, (8, 3)).astype(np.float32)
    rot = mano.from_axis_angle(model, jnp.asarray(aa))
    chunked = mano.mano_forward(model, rot, jnp.asarray(betas), jnp.asarray(transl), convention="ho3d", chunk_size=3)
    _compare(chunked, _smplx(plain, use_pca=False, flat_hand_mean=True), betas, aa[:, :3], aa[:, 3:], transl, model)
    whole = mano.mano_forward(model, rot, jnp.asarray(betas), jnp.asarray(transl), convention="ho3d", chunk_size=None)
    np.testing.assert_allclose(chunked.vertices, whole.vertices, atol=1e-6, rtol=0)
    np.testing.assert_allclose(chunked.transforms, whole.transforms, atol=1e-6, rtol=0)
    grid = mano.mano_forward(model, rot.reshape(2, 4, 16, 3, 3), jnp.asarray(betas).reshape(2, 4, 10), chunk_size=3)
    np.testing.assert_allclose(grid.vertices.reshape(8, 778, 3),
                               mano.mano_forward(model, rot, jnp.asarray(betas), chunk_size=None).vertices, atol=1e-6)

    def loss(a, b, chunk):
        out = mano.mano_forward(model, mano.from_axis_angle(model, a), b, chunk_size=chunk)
        return jnp.sum(out.vertices ** 2) + jnp.sum(out.joints ** 2)

    g_chunk = jax.grad(loss, argnums=(0, 1))(jnp.asarray(aa), jnp.asarray(betas), 3)
    g_whole = jax.grad(loss, argnums=(0, 1))(jnp.asarray(aa), jnp.asarray(betas), None)
    for a, b in zip(g_chunk, g_whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
