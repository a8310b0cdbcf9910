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
