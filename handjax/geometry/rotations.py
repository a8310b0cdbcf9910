"""Rotation conversions, batched over any leading dimensions.

One implementation of each conversion, used everywhere in handjax.
Conventions:
  * rotation matrices act on column vectors: ``x' = R @ x``;
  * quaternions are ``(w, x, y, z)``, scalar first;
  * axis-angle is a 3-vector whose norm is the angle in radians.

Every function works on numpy arrays (computing in numpy, e.g. inside data
pipelines and grain workers, with no JAX dispatch) and on JAX arrays/tracers
(jit, vmap, grad): the array namespace follows the input.

6D layouts (all describe the first two columns or rows of R, Gram-Schmidt
orthonormalised; see ``rot6d_to_matrix``):
  * ``"zhou"``: ``[a(3), b(3)]`` are the first two *columns* (Zhou et al. 2019);
  * ``"pytorch3d"``: ``[a(3), b(3)]`` are the first two *rows*
    (``pytorch3d.transforms.rotation_6d_to_matrix``);
  * ``"interleaved"``: the 6-vector is a row-major 3x2 matrix whose columns
    are a = (r0, r2, r4) and b = (r1, r3, r5) (ExPose / TempCLR
    ``ContinuousRotReprDecoder``); identity is ``[1, 0, 0, 1, 0, 0]``.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

ROT6D_LAYOUTS = ("zhou", "pytorch3d", "interleaved")

# Below this squared angle Rodrigues uses its Taylor expansion, which keeps
# the value and the gradient exact and finite at zero rotation.
_SMALL_ANGLE_SQ = 1e-8


def _xp(*arrays):
    """numpy when every input is a numpy array (or scalar), else jax.numpy."""
    return np if all(isinstance(a, (np.ndarray, np.generic, float, int)) for a in arrays) else jnp


def skew(v: jnp.ndarray) -> jnp.ndarray:
    """Cross-product matrix [v]_x with [v]_x @ u == cross(v, u). (..., 3) -> (..., 3, 3)."""
    xp = _xp(v)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = xp.zeros_like(x)
    return xp.stack(
        [xp.stack([o, -z, y], -1), xp.stack([z, o, -x], -1), xp.stack([-y, x, o], -1)], -2
    )


def axis_angle_to_matrix(aa: jnp.ndarray) -> jnp.ndarray:
    """Rodrigues' formula R = I + a [w]_x + b [w]_x^2. (..., 3) -> (..., 3, 3).

    a = sin(t)/t and b = (1 - cos t)/t^2 are evaluated by Taylor series near
    t = 0 (double-``where`` so that neither branch produces NaN gradients).
    """
    xp = _xp(aa)
    t2 = xp.sum(aa * aa, axis=-1)
    small = t2 < _SMALL_ANGLE_SQ
    t2_safe = xp.where(small, 1.0, t2)
    t = xp.sqrt(t2_safe)
    a = xp.where(small, 1.0 - t2 / 6.0, xp.sin(t) / t)
    b = xp.where(small, 0.5 - t2 / 24.0, (1.0 - xp.cos(t)) / t2_safe)
    k = skew(aa)
    eye = xp.broadcast_to(xp.eye(3, dtype=aa.dtype), k.shape)
    k2 = aa[..., :, None] * aa[..., None, :] - t2[..., None, None] * eye  # [w]_x^2 = w w^T - |w|^2 I
    return eye + a[..., None, None] * k + b[..., None, None] * k2


def quaternion_to_matrix(q: jnp.ndarray) -> jnp.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation matrix; q is normalised first."""
    xp = _xp(q)
    q = q / xp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return xp.stack([xp.stack(r, -1) for r in rows], -2)


def matrix_to_quaternion(m: jnp.ndarray) -> jnp.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z) with w >= 0.

    Computes the four candidate quaternions (one per largest diagonal term,
    Shepperd's method) and picks the best-conditioned one per element.
    """
    xp = _xp(m)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    tr = m00 + m11 + m22
    cands = xp.stack(
        [
            xp.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            xp.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            xp.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], -1),
            xp.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # (..., 4, 4): row i is 4 * q_i * q
    best = xp.argmax(xp.stack([tr, m00, m11, m22], -1), axis=-1)
    q = xp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / xp.linalg.norm(q, axis=-1, keepdims=True)
    return xp.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: jnp.ndarray) -> jnp.ndarray:
    """Unit quaternion -> axis-angle with angle in [0, pi]."""
    xp = _xp(q)
    q = q / xp.linalg.norm(q, axis=-1, keepdims=True)
    q = xp.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s2 = xp.sum(v * v, axis=-1)
    small = s2 < _SMALL_ANGLE_SQ
    s = xp.sqrt(xp.where(small, 1.0, s2))
    angle = 2.0 * xp.arctan2(s, q[..., 0])
    # angle / sin(angle/2); Taylor near zero: 2 / w * (1 + s^2 / (3 w^2)) ~ 2 / w
    factor = xp.where(small, 2.0 / xp.where(small, q[..., 0], 1.0), angle / s)
    return v * factor[..., None]


def axis_angle_to_quaternion(aa: jnp.ndarray) -> jnp.ndarray:
    xp = _xp(aa)
    t2 = xp.sum(aa * aa, axis=-1)
    small = t2 < _SMALL_ANGLE_SQ
    t = xp.sqrt(xp.where(small, 1.0, t2))
    half_sinc = xp.where(small, 0.5 - t2 / 48.0, xp.sin(t / 2) / t)
    w = xp.where(small, 1.0 - t2 / 8.0, xp.cos(t / 2))
    return xp.concatenate([w[..., None], aa * half_sinc[..., None]], -1)


def matrix_to_axis_angle(m: jnp.ndarray) -> jnp.ndarray:
    return quaternion_to_axis_angle(matrix_to_quaternion(m))


def _normalize(v: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """torch.nn.functional.normalize: v / max(||v||, eps)."""
    xp = _xp(v)
    return v / xp.maximum(xp.linalg.norm(v, axis=-1, keepdims=True), eps)


def _gram_schmidt(a: jnp.ndarray, b: jnp.ndarray):
    xp = _xp(a, b)
    b1 = _normalize(a)
    b2 = _normalize(b - xp.sum(b1 * b, axis=-1, keepdims=True) * b1)
    b3 = xp.cross(b1, b2)
    return b1, b2, b3


def rot6d_to_matrix(x: jnp.ndarray, layout: str = "zhou") -> jnp.ndarray:
    """6D representation -> rotation matrix. (..., 6) -> (..., 3, 3)."""
    xp = _xp(x)
    if layout == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
    elif layout in ("zhou", "pytorch3d"):
        a, b = x[..., :3], x[..., 3:6]
    else:
        raise ValueError(f"rot6d layout must be one of {ROT6D_LAYOUTS}, got {layout!r}")
    b1, b2, b3 = _gram_schmidt(a, b)
    axis = -2 if layout == "pytorch3d" else -1  # rows for pytorch3d, columns otherwise
    return xp.stack([b1, b2, b3], axis=axis)


def matrix_to_rot6d(m: jnp.ndarray, layout: str = "zhou") -> jnp.ndarray:
    """Rotation matrix -> 6D (inverse of ``rot6d_to_matrix`` on rotations)."""
    xp = _xp(m)
    if layout == "interleaved":
        return m[..., :, :2].reshape(m.shape[:-2] + (6,))
    if layout == "zhou":
        return xp.concatenate([m[..., :, 0], m[..., :, 1]], -1)
    if layout == "pytorch3d":
        return m[..., :2, :].reshape(m.shape[:-2] + (6,))
    raise ValueError(f"rot6d layout must be one of {ROT6D_LAYOUTS}, got {layout!r}")
