"""Geometry: rotations, cameras, Procrustes alignment, rigid transforms."""
from handjax.geometry.camera import (
    affine_to_perspective,
    intrinsics,
    inverse_softplus,
    project_matrix,
    project_perspective,
    project_weak_perspective,
    torch_softplus,
    weak_perspective_matrix,
)
from handjax.geometry.procrustes import procrustes_align, procrustes_transform
from handjax.geometry.rotations import (
    ROT6D_LAYOUTS,
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    matrix_to_rot6d,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
    rot6d_to_matrix,
    skew,
)
from handjax.geometry.transforms import apply_transform, invert_transform, make_transform, small_matmul, small_matvec
