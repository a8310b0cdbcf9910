"""Pose inputs -> local rotation matrices (..., 16, 3, 3), and left/right mirroring.

The hand pose (joints 1..15) may be given relative to the MANO flat-hand
mean (``flat_hand_mean=False``, smplx's default: ``hands_mean`` is added in
axis-angle space) or as absolute rotations (``flat_hand_mean=True``,
manopth's default). Mean addition only exists in axis-angle space, so it
applies to the axis-angle and PCA inputs.
"""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from handjax.geometry import rotations as rot
from handjax.mano.model import ManoModel

POSE_TYPES = ("axis_angle", "pca", "quaternion", "rot6d", "rotmat")
MIRROR = jnp.diag(jnp.array([-1.0, 1.0, 1.0]))


def _split_aa(pose: jnp.ndarray) -> jnp.ndarray:
    if pose.shape[-1] == 48:
        return pose.reshape(pose.shape[:-1] + (16, 3))
    if pose.shape[-2:] == (16, 3):
        return pose
    raise ValueError(f"axis-angle pose must be (..., 48) or (..., 16, 3), got {pose.shape}")


def from_axis_angle(model: ManoModel, pose: jnp.ndarray, flat_hand_mean: bool = True) -> jnp.ndarray:
    """Full axis-angle pose (root + 15 joints, (..., 48) or (..., 16, 3)) -> rotmats."""
    aa = _split_aa(pose)
    if not flat_hand_mean:
        mean = jnp.concatenate([jnp.zeros(3, aa.dtype), model.hands_mean.astype(aa.dtype)]).reshape(16, 3)
        aa = aa + mean
    return rot.axis_angle_to_matrix(aa)


def from_pca(model: ManoModel, global_orient: jnp.ndarray, coeffs: jnp.ndarray,
             flat_hand_mean: bool = False) -> jnp.ndarray:
    """Root axis-angle (..., 3) + k PCA coefficients (..., k) -> rotmats.

    hand axis-angle = coeffs @ hands_components[:k] (+ hands_mean unless flat).
    """
    k = coeffs.shape[-1]
    if k > model.hands_components.shape[0]:
        raise ValueError(f"{k} PCA coefficients given, the model has {model.hands_components.shape[0]} components")
    hand = coeffs @ model.hands_components[:k].astype(coeffs.dtype)
    return from_axis_angle(model, jnp.concatenate([global_orient, hand], -1), flat_hand_mean)


def from_quaternion(pose: jnp.ndarray) -> jnp.ndarray:
    """(..., 16, 4) quaternions (w, x, y, z) -> rotmats."""
    return rot.quaternion_to_matrix(pose)


def from_rot6d(pose: jnp.ndarray, layout: str = "zhou") -> jnp.ndarray:
    """(..., 16, 6) or (..., 96) 6D rotations in the given layout -> rotmats."""
    if pose.shape[-1] == 96:
        pose = pose.reshape(pose.shape[:-1] + (16, 6))
    return rot.rot6d_to_matrix(pose, layout)


def to_rotmats(model: ManoModel, pose: jnp.ndarray, pose_type: str = "axis_angle", *,
               flat_hand_mean: bool = True, global_orient: Optional[jnp.ndarray] = None,
               rot6d_layout: str = "zhou") -> jnp.ndarray:
    """Dispatch on ``pose_type`` (one of POSE_TYPES). For "pca", ``pose`` holds the
    coefficients and ``global_orient`` the root axis-angle."""
    if pose_type == "axis_angle":
        return from_axis_angle(model, pose, flat_hand_mean)
    if pose_type == "pca":
        if global_orient is None:
            raise ValueError("pose_type='pca' needs global_orient (..., 3)")
        return from_pca(model, global_orient, pose, flat_hand_mean)
    if pose_type == "quaternion":
        return from_quaternion(pose)
    if pose_type == "rot6d":
        return from_rot6d(pose, rot6d_layout)
    if pose_type == "rotmat":
        return pose
    raise ValueError(f"pose_type must be one of {POSE_TYPES}, got {pose_type!r}")


def mirror_rotmats(rotmats: jnp.ndarray) -> jnp.ndarray:
    """Rotations of the mirrored hand: R' = M R M with M = diag(-1, 1, 1)."""
    return MIRROR @ rotmats @ MIRROR


def mirror_axis_angle(aa: jnp.ndarray) -> jnp.ndarray:
    """Axis-angle of M R M: (w0, -w1, -w2) per 3-vector. Works on (..., 3k)."""
    shape = aa.shape
    v = aa.reshape(shape[:-1] + (-1, 3)) * jnp.array([1.0, -1.0, -1.0], aa.dtype)
    return v.reshape(shape)


def mirror_points(points: jnp.ndarray) -> jnp.ndarray:
    """x -> -x (..., 3)."""
    return points * jnp.array([-1.0, 1.0, 1.0], points.dtype)
