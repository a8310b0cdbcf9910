"""Camera models: pinhole (intrinsics K) and weak perspective."""
from __future__ import annotations

import jax.numpy as jnp


def project_perspective(points: jnp.ndarray, K: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
    """Pinhole projection of camera-frame points (OpenCV axes: x right, y down, z forward).

    points: (..., N, 3); K: (..., 3, 3) intrinsics (a skew term K[0, 1] is honoured).
    Returns pixel coordinates (..., N, 2).
    """
    p = jnp.einsum("...ij,...nj->...ni", K, points)
    z = p[..., 2:3]
    z = jnp.where(jnp.abs(z) < eps, jnp.where(z < 0, -eps, eps), z)
    return p[..., :2] / z


def project_weak_perspective(points: jnp.ndarray, scale: jnp.ndarray, trans: jnp.ndarray) -> jnp.ndarray:
    """Weak perspective x2d = s * (X[:, :2] + t) (HMR/ExPose/TempCLR convention).

    points: (..., N, 3); scale: (...,) or (..., 1); trans: (..., 2).
    """
    scale = jnp.asarray(scale)
    if scale.ndim == trans.ndim:  # (..., 1)
        scale = scale[..., 0]
    return scale[..., None, None] * (points[..., :2] + trans[..., None, :])


def torch_softplus(x: jnp.ndarray, beta: float = 1.0, threshold: float = 20.0) -> jnp.ndarray:
    """torch.nn.functional.softplus: log(1 + exp(beta x)) / beta, linear above threshold."""
    bx = beta * x
    safe = jnp.where(bx > threshold, 0.0, bx)
    return jnp.where(bx > threshold, x, jnp.log1p(jnp.exp(safe)) / beta)


def inverse_softplus(y: jnp.ndarray) -> jnp.ndarray:
    """Inverse of softplus with beta=1 (y > 0)."""
    return y + jnp.log(-jnp.expm1(-y))


def intrinsics(fx, fy, cx, cy, skew=0.0) -> jnp.ndarray:
    """Build a 3x3 intrinsics matrix (broadcasts over batched arguments)."""
    fx, fy, cx, cy, skew = jnp.broadcast_arrays(*(jnp.asarray(v, jnp.float32) for v in (fx, fy, cx, cy, skew)))
    o, l = jnp.zeros_like(fx), jnp.ones_like(fx)
    return jnp.stack([jnp.stack([fx, skew, cx], -1), jnp.stack([o, fy, cy], -1), jnp.stack([o, o, l], -1)], -2)


def project_matrix(points: jnp.ndarray, P: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
    """Pixels of camera-frame points under a 3x4 projection matrix (perspective or affine).

    points: (..., N, 3); P: (..., 3, 4). ``[u, v, w] = P @ [X, Y, Z, 1]``, pixel = (u / w, v / w);
    an affine camera (weak perspective) has last row (0, 0, 0, 1), a pinhole camera ``K [I | 0]``.
    Returns (..., N, 2).
    """
    p = jnp.einsum("...ij,...nj->...ni", P[..., :3], points) + P[..., None, :, 3]
    w = p[..., 2:3]
    w = jnp.where(jnp.abs(w) < eps, jnp.where(w < 0, -eps, eps), w)
    return p[..., :2] / w


def weak_perspective_matrix(scale: jnp.ndarray, trans: jnp.ndarray, image_size: float) -> jnp.ndarray:
    """The affine 3x4 camera, in crop pixels, of ``x_n = s (X[:2] + t)`` with ``pixel = (x_n + 1) S / 2``.

    scale: (...,); trans: (..., 2); image_size S: the square crop side. ``project_matrix`` with it
    gives ``(project_weak_perspective(X, s, t) + 1) * S / 2``. Returns (..., 3, 4).
    """
    a = scale * (image_size / 2.0)
    o = jnp.zeros_like(a)
    bx = (scale * trans[..., 0] + 1.0) * (image_size / 2.0)
    by = (scale * trans[..., 1] + 1.0) * (image_size / 2.0)
    return jnp.stack([jnp.stack([a, o, o, bx], -1), jnp.stack([o, a, o, by], -1),
                      jnp.stack([o, o, o, o + 1.0], -1)], -2)


def affine_to_perspective(P: jnp.ndarray, focal: jnp.ndarray, principal: jnp.ndarray) -> tuple:
    """A weak-perspective (affine) camera as a pinhole camera and a translation (SPIN-style).

    P: (..., 3, 4) affine camera ``pixel = a X[:2] + b`` (isotropic, P[0, 0] = P[1, 1] = a);
    focal: (...,) focal length in pixels; principal: (..., 2). The object is placed at depth
    ``tz = focal / a`` and shifted so that its origin projects where the affine camera puts it:
    ``t = ((b - c) / a, tz)``. Points near the origin's depth then project (almost) as before;
    a point at depth offset dz moves by a factor tz / (tz + dz). Returns (K (..., 3, 3), t (..., 3)).
    """
    a = P[..., 0, 0]
    b = P[..., :2, 3]
    tz = focal / a
    t = jnp.concatenate([(b - principal) / a[..., None], tz[..., None]], -1)
    return intrinsics(focal, focal, principal[..., 0], principal[..., 1]), t
