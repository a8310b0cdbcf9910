"""Crop cameras of the hand-output contract: hand-computed cases and the identities they must satisfy."""
import jax.numpy as jnp
import numpy as np
import pytest

from handjax.geometry import (affine_to_perspective, intrinsics, project_matrix, project_perspective,
                              project_weak_perspective, weak_perspective_matrix)
from handjax.models.hand_output import make_hand_output


def test_weak_perspective_matrix_by_hand():
    # s = 2, t = (0.1, -0.2), S = 100: u = (2 (X + 0.1) + 1) * 50 = 100 X + 60, v = 100 Y + 30
    P = weak_perspective_matrix(jnp.float32(2.0), jnp.array([0.1, -0.2]), 100)
    np.testing.assert_allclose(P, [[100, 0, 0, 60], [0, 100, 0, 30], [0, 0, 0, 1]], atol=1e-5)
    pts = jnp.array([[[0.0, 0.0, 5.0], [0.3, -0.1, -2.0]]])
    np.testing.assert_allclose(project_matrix(pts, P[None]), [[[60, 30], [90, 20]]], atol=1e-4)


def test_weak_perspective_matrix_equals_normalised_projection():
    rng = np.random.default_rng(0)
    pts = jnp.asarray(rng.normal(size=(3, 21, 3)), jnp.float32)
    s = jnp.asarray(rng.uniform(0.5, 9, 3), jnp.float32)
    t = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    expected = (project_weak_perspective(pts, s, t) + 1) * 64 / 2
    np.testing.assert_allclose(project_matrix(pts, weak_perspective_matrix(s, t, 64)), expected, rtol=1e-5, atol=1e-4)


def test_project_matrix_pinhole_equals_project_perspective():
    K = intrinsics(500.0, 480.0, 320.0, 240.0)
    P = jnp.concatenate([K, jnp.zeros((3, 1))], -1)
    pts = jnp.array([[0.1, -0.2, 1.0], [0.0, 0.0, 2.0], [-0.3, 0.25, 0.7]])
    np.testing.assert_allclose(project_matrix(pts, P), project_perspective(pts, K), rtol=1e-6)
    np.testing.assert_allclose(project_matrix(pts[:1], P), [[370.0, 144.0]], rtol=1e-6)  # 320 + 500 * 0.1, ...


def test_affine_to_perspective_places_the_origin_exactly():
    # affine camera u = 100 X + 60, v = 100 Y + 30; focal 1000, principal point (50, 50)
    P = jnp.array([[100.0, 0, 0, 60], [0, 100, 0, 30], [0, 0, 0, 1]])
    K, t = affine_to_perspective(P, jnp.float32(1000.0), jnp.array([50.0, 50.0]))
    np.testing.assert_allclose(t, [0.1, -0.2, 10.0], rtol=1e-6)  # tz = f / a, t_xy = (b - c) / a
    np.testing.assert_allclose(K, [[1000, 0, 50], [0, 1000, 50], [0, 0, 1]])
    # points at the origin's depth project exactly as before; off-depth points by the factor tz / (tz + dz)
    flat = jnp.array([[0.0, 0.0, 0.0], [0.05, -0.02, 0.0]])
    np.testing.assert_allclose(project_perspective(flat + t, K), project_matrix(flat, P), atol=1e-3)
    off = jnp.array([[0.05, 0.0, 0.5]])
    u_affine = project_matrix(off, P)[0, 0]
    u_persp = project_perspective(off + t, K)[0, 0]
    np.testing.assert_allclose(u_persp - 50, (u_affine - 50) * 10.0 / 10.5, rtol=1e-5)


def test_hand_output_joints2d_and_reorder():
    joints = jnp.asarray(np.random.default_rng(1).normal(size=(2, 21, 3)), jnp.float32)
    P = jnp.broadcast_to(weak_perspective_matrix(jnp.float32(4.0), jnp.zeros(2), 32), (2, 3, 4))
    out = make_hand_output(joints, P, jnp.tile(jnp.eye(3), (2, 16, 1, 1)), jnp.zeros((2, 10)), convention="mano")
    np.testing.assert_allclose(out.joints2d, joints[..., :2] * 64 + 16, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.normalized_joints2d(32), 4.0 * joints[..., :2], rtol=1e-5, atol=1e-5)
    assert bool(out.is_right.all()) and out.vertices is None
    order = list(range(20, -1, -1))
    r = out.reorder(order, "reversed")
    assert r.convention == "reversed"
    np.testing.assert_array_equal(r.joints, joints[:, order])
    np.testing.assert_array_equal(r.joints2d, out.joints2d[:, order])


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_backbones_by_name(name):
    from flax import nnx

    from handjax.models import registry

    model = registry.build("backbone", name, rngs=nnx.Rngs(0))
    assert model.depth == int(name[len("resnet"):])
    assert name in registry.names("backbone") and "iterative_mano" in registry.names("head")
    with pytest.raises(ValueError, match=r"unknown head 'nope'; known: (\w+, )*iterative_mano, (\w+, )*projection"):
        registry.build("head", "nope")
