"""Geometry against independent references: scipy Rotation, torch, hand-computed cases."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

from handjax import geometry as G


def _rand_aa(n, scale=1.0, seed=0):
    return np.random.default_rng(seed).normal(0, scale, (n, 3)).astype(np.float32)


@pytest.mark.parametrize("scale", [1e-5, 0.3, 2.0])
def test_axis_angle_to_matrix_matches_scipy(scale):
    aa = _rand_aa(64, scale)
    ref = Rotation.from_rotvec(aa.astype(np.float64)).as_matrix()
    np.testing.assert_allclose(G.axis_angle_to_matrix(jnp.asarray(aa)), ref, atol=2e-6)


def test_axis_angle_exact_zero_and_gradient_is_finite_and_correct():
    assert np.allclose(G.axis_angle_to_matrix(jnp.zeros(3)), np.eye(3))
    jac = jax.jacfwd(G.axis_angle_to_matrix)(jnp.zeros(3))
    assert np.all(np.isfinite(jac))
    # dR/dw_k at zero is the generator [e_k]_x
    for k in range(3):
        np.testing.assert_allclose(jac[..., k], G.skew(jnp.eye(3)[k]), atol=1e-6)
    g = jax.grad(lambda w: jnp.sum(G.axis_angle_to_matrix(w) ** 2))(jnp.zeros(3))
    assert np.all(np.isfinite(g))


def test_quaternion_conversions_match_scipy():
    aa = _rand_aa(128, 1.2, seed=1)
    r = Rotation.from_rotvec(aa.astype(np.float64))
    q_ref = r.as_quat()[:, [3, 0, 1, 2]]  # scipy is (x, y, z, w)
    q_ref *= np.sign(q_ref[:, :1])
    q = G.matrix_to_quaternion(jnp.asarray(r.as_matrix(), jnp.float32))
    np.testing.assert_allclose(q, q_ref, atol=2e-6)
    np.testing.assert_allclose(G.quaternion_to_matrix(jnp.asarray(q_ref, jnp.float32)), r.as_matrix(), atol=2e-6)
    q_aa = np.asarray(G.axis_angle_to_quaternion(jnp.asarray(aa)))  # w < 0 for angles > pi: compare up to sign
    np.testing.assert_allclose(q_aa * np.sign(q_aa[:, :1]), q_ref, atol=2e-6)
    np.testing.assert_allclose(G.matrix_to_axis_angle(jnp.asarray(r.as_matrix(), jnp.float32)),
                               r.as_rotvec(), atol=1e-5)


def test_matrix_to_quaternion_near_pi_rotations():
    aa = np.array([[np.pi - 1e-4, 0, 0], [0, np.pi, 0], [0.0, 0.0, -np.pi + 1e-3], [1, 1, 1]], np.float64)
    aa[3] *= np.pi / np.sqrt(3)
    m = Rotation.from_rotvec(aa).as_matrix()
    q = G.matrix_to_quaternion(jnp.asarray(m, jnp.float32))
    np.testing.assert_allclose(G.quaternion_to_matrix(q), m, atol=1e-5)


def _torch_pytorch3d_6d(d6):  # the PyTorch3D formula, written here as an independent reference
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack((b1, b2, torch.cross(b1, b2, dim=-1)), dim=-2)


def _torch_interleaved_6d(d6):  # ExPose/TempCLR ContinuousRotReprDecoder as described in tempclr.md 1.5
    m = d6.view(-1, 3, 2)
    b1 = torch.nn.functional.normalize(m[:, :, 0], dim=1)
    dot = torch.sum(b1 * m[:, :, 1], dim=1, keepdim=True)
    b2 = torch.nn.functional.normalize(m[:, :, 1] - dot * b1, dim=1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=1)], dim=-1)


def test_rot6d_layouts_match_torch_references():
    x = np.random.default_rng(2).normal(size=(50, 6)).astype(np.float32)
    np.testing.assert_allclose(G.rot6d_to_matrix(jnp.asarray(x), "pytorch3d"),
                               _torch_pytorch3d_6d(torch.from_numpy(x)).numpy(), atol=1e-6)
    np.testing.assert_allclose(G.rot6d_to_matrix(jnp.asarray(x), "interleaved"),
                               _torch_interleaved_6d(torch.from_numpy(x)).numpy(), atol=1e-6)
    # zhou = columns: the transpose of the pytorch3d (rows) result
    np.testing.assert_allclose(G.rot6d_to_matrix(jnp.asarray(x), "zhou"),
                               np.swapaxes(_torch_pytorch3d_6d(torch.from_numpy(x)).numpy(), -1, -2), atol=1e-6)
    np.testing.assert_allclose(G.rot6d_to_matrix(jnp.array([1.0, 0, 0, 1, 0, 0]), "interleaved"), np.eye(3))


@pytest.mark.parametrize("layout", G.ROT6D_LAYOUTS)
def test_rot6d_roundtrip(layout):
    m = Rotation.from_rotvec(_rand_aa(20, 1.0, seed=3).astype(np.float64)).as_matrix().astype(np.float32)
    d6 = G.matrix_to_rot6d(jnp.asarray(m), layout)
    np.testing.assert_allclose(G.rot6d_to_matrix(d6, layout), m, atol=1e-6)
    with pytest.raises(ValueError, match="layout"):
        G.rot6d_to_matrix(d6, "bogus")


def test_perspective_projection_hand_computed():
    K = G.intrinsics(100.0, 200.0, 32.0, 16.0)
    pts = jnp.array([[[0.1, -0.2, 2.0], [0.0, 0.0, 1.0]]])
    uv = G.project_perspective(pts, K[None])
    np.testing.assert_allclose(uv, [[[32 + 100 * 0.05, 16 + 200 * -0.1], [32, 16]]], rtol=1e-6)
    # skew term
    Ks = G.intrinsics(100.0, 100.0, 0.0, 0.0, skew=1.0)
    np.testing.assert_allclose(G.project_perspective(jnp.array([[1.0, 2.0, 1.0]]), Ks), [[102.0, 200.0]])


def test_weak_perspective_and_softplus():
    pts = jnp.array([[[1.0, 2.0, 5.0]], [[0.0, -1.0, 3.0]]])
    out = G.project_weak_perspective(pts, jnp.array([[2.0], [0.5]]), jnp.array([[0.5, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(out, [[[3.0, 4.0]], [[0.5, 0.0]]])
    x = np.linspace(-30, 30, 101).astype(np.float32)
    np.testing.assert_allclose(G.torch_softplus(jnp.asarray(x)),
                               torch.nn.functional.softplus(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(G.torch_softplus(G.inverse_softplus(jnp.float32(0.9))), 0.9, rtol=1e-6)
    np.testing.assert_allclose(G.inverse_softplus(jnp.float32(0.9)), 0.37816456, rtol=1e-6)  # TempCLR camera mean


def test_procrustes_recovers_known_similarity():
    rng = np.random.default_rng(4)
    src = rng.normal(size=(5, 21, 3)).astype(np.float32)
    R = Rotation.random(5, random_state=5).as_matrix().astype(np.float32)
    s = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    t = rng.normal(size=(5, 3)).astype(np.float32)
    dst = s[:, None, None] * np.einsum("bij,bnj->bni", R, src) + t[:, None]
    s_hat, r_hat, t_hat = G.procrustes_transform(jnp.asarray(src), jnp.asarray(dst))
    np.testing.assert_allclose(s_hat, s, rtol=1e-5)
    np.testing.assert_allclose(r_hat, R, atol=1e-5)
    np.testing.assert_allclose(t_hat, t, atol=1e-5)
    np.testing.assert_allclose(G.procrustes_align(jnp.asarray(src), jnp.asarray(dst)), dst, atol=1e-5)


def _scipy_align_w_scale(gt, pred):
    """Independent reference: FreiHAND-style alignment built on scipy.orthogonal_procrustes."""
    t1, t2 = gt.mean(0), pred.mean(0)
    g, p = gt - t1, pred - t2
    s1, s2 = np.linalg.norm(g), np.linalg.norm(p)
    g, p = g / s1, p / s2
    R, s = orthogonal_procrustes(g, p)
    return (p @ R.T) * s * s1 + t1


def test_procrustes_matches_scipy_on_random_data():
    rng = np.random.default_rng(6)
    for allow_reflection in (True, False):
        for _ in range(10):
            gt, pred = rng.normal(size=(2, 21, 3))
            ours = np.asarray(G.procrustes_align(jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32),
                                                 allow_reflection=allow_reflection))
            ref = _scipy_align_w_scale(gt, pred)
            R_ref = orthogonal_procrustes(gt - gt.mean(0), pred - pred.mean(0))[0]
            if allow_reflection or np.linalg.det(R_ref) > 0:
                np.testing.assert_allclose(ours, ref, atol=2e-5)
            else:  # a proper rotation cannot do better than the reflection-allowing optimum
                assert np.sum((ours - gt) ** 2) >= np.sum((ref - gt) ** 2) - 1e-6


def test_rigid_transforms_roundtrip():
    R = jnp.asarray(Rotation.random(3, random_state=1).as_matrix(), jnp.float32)
    T = G.make_transform(R, jnp.array([[1.0, 2, 3], [0, 0, 1], [-1, 0, 0]]))
    pts = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7, 3)), jnp.float32)
    back = G.apply_transform(G.invert_transform(T), G.apply_transform(T, pts))
    np.testing.assert_allclose(back, pts, atol=1e-5)


def test_numpy_inputs_compute_in_numpy_and_agree_with_jax():
    rng = np.random.default_rng(9)
    aa = rng.normal(0, 1.0, (10, 3))
    aa[0] = 0.0
    aa[1] = [np.pi, 0, 0]
    m = np.asarray(Rotation.from_rotvec(aa).as_matrix())
    d6 = rng.normal(size=(10, 6))
    cases = [
        (G.axis_angle_to_matrix, aa), (G.matrix_to_axis_angle, m), (G.matrix_to_quaternion, m),
        (G.quaternion_to_matrix, rng.normal(size=(10, 4))), (G.axis_angle_to_quaternion, aa),
        (lambda x: G.rot6d_to_matrix(x, "interleaved"), d6), (lambda x: G.matrix_to_rot6d(x, "pytorch3d"), m),
    ]
    with np.errstate(all="raise"):  # no warnings from the unused branches of the safe formulas
        for fn, x in cases:
            out = fn(x)
            assert isinstance(out, np.ndarray) and out.dtype == np.float64
            with jax.enable_x64(True):
                np.testing.assert_allclose(out, np.asarray(fn(jnp.asarray(x))), atol=1e-12)
    np.testing.assert_allclose(G.axis_angle_to_matrix(aa), m, atol=1e-12)
