"""Camera-frame conventions: OpenGL (y up, looking along -z) <-> OpenCV (y down, z forward)."""
from __future__ import annotations

import numpy as np


def opengl_to_opencv(points: np.ndarray) -> np.ndarray:
    """Negate y and z of (..., 3) vectors: OpenGL camera frame (y up, hand along -z) <-> OpenCV
    (y down, z forward). Its own inverse. THE place handjax changes HO3D's axes: joints,
    translations and (through :func:`opengl_to_opencv_rotation`) rotations use it."""
    points = np.asarray(points)
    if points.shape[-1:] != (3,):
        raise ValueError(f"opengl_to_opencv: expected (..., 3) vectors, got shape {points.shape}")
    return points * np.array([1.0, -1.0, -1.0], dtype=points.dtype if points.dtype.kind == "f" else np.float64)


def opengl_to_opencv_rotation(rotation: np.ndarray) -> np.ndarray:
    """R -> F R with F = diag(1, -1, -1) for (..., 3, 3) rotations mapping into the camera frame
    (e.g. MANO's global orientation, an object's rotation): F applied to each column."""
    rotation = np.asarray(rotation)
    if rotation.shape[-2:] != (3, 3):
        raise ValueError(f"opengl_to_opencv_rotation: expected (..., 3, 3), got shape {rotation.shape}")
    return np.swapaxes(opengl_to_opencv(np.swapaxes(rotation, -1, -2)), -1, -2)
