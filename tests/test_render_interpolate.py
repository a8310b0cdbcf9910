"""handjax.render.interpolate_bary against float64 numpy: values and both gradients (attributes and barycentrics)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handjax.render import Fragments, interpolate_bary


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_interpolate_bary_matches_numpy(channels):
    rng = np.random.default_rng(channels)
    h, w, n_verts, n_faces = 5, 7, 11, 9
    faces = rng.integers(0, n_verts, (n_faces, 3))
    face_id = rng.integers(-1, n_faces, (h, w))
    face_id[0, 0], face_id[1, 1] = -1, n_faces - 1  # background and the last face both present
    bary = rng.dirichlet(np.ones(3), (h, w)) * (face_id >= 0)[..., None]
    attrs = rng.normal(0, 3, (n_verts, channels))
    cot = rng.normal(0, 1, (h, w, channels))
    frags = Fragments(face_id=jnp.asarray(face_id, jnp.int32), bary=jnp.asarray(bary, jnp.float32),
                      depth=jnp.zeros((h, w), jnp.float32), mask=jnp.asarray(face_id >= 0))

    def loss(a, b):
        return jnp.sum(interpolate_bary(a, jnp.asarray(faces), frags._replace(bary=b)) * cot)

    value = np.asarray(interpolate_bary(jnp.asarray(attrs, jnp.float32), jnp.asarray(faces), frags))
    tri = faces[np.maximum(face_id, 0)]  # (H, W, 3)
    ref = np.einsum("hwk,hwkc->hwc", bary, attrs[tri]) * (face_id >= 0)[..., None]
    np.testing.assert_allclose(value, ref, rtol=1e-6, atol=1e-6)
    assert np.all(value[face_id < 0] == 0)

    g_attrs, g_bary = jax.grad(loss, argnums=(0, 1))(jnp.asarray(attrs, jnp.float32), jnp.asarray(bary, jnp.float32))
    ref_attrs = np.zeros_like(attrs)
    covered = face_id >= 0
    for k in range(3):  # d/d attrs[v] = sum over covered pixels whose k-th vertex is v of bary_k * cot
        np.add.at(ref_attrs, tri[..., k][covered], (bary[..., k, None] * cot)[covered])
    ref_bary = np.einsum("hwkc,hwc->hwk", attrs[tri], cot) * covered[..., None]
    np.testing.assert_allclose(np.asarray(g_attrs), ref_attrs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_bary), ref_bary, rtol=1e-5, atol=1e-5)
