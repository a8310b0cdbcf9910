"""The hand-output contract: what every model's decode step returns, per hand.

Losses, evaluators, summaries and ``python -m handjax.predict`` read this one format. A
single-hand system returns one :class:`HandOutput`; a two-hand system returns one per hand
(``{"right": HandOutput, "left": HandOutput}``). Shapes (B = batch, J = joints):

============  ================  ===========================================================
joints        (B, J, 3)         camera frame (OpenCV axes), metres, in ``convention``'s order
joints2d      (B, J, 2)         crop pixels: ``project_matrix(joints, camera)``
camera        (B, 3, 4)         crop-pixel projection matrix: affine (weak perspective, last
                                row 0 0 0 1) or pinhole ``K [I | 0]``
rotmats       (B, 16, 3, 3)     MANO global orientation (camera frame) + 15 finger rotations,
                                absolute (flat hand mean)
betas         (B, 10)           MANO shape
vertices      (B, 778, 3)|None  same frame as ``joints`` (None when the mesh was not computed)
is_right      (B,) bool         which MANO side the parameters belong to
convention    str (static)      joint order / fingertips (``handjax.mano.CONVENTIONS``)
============  ================  ===========================================================

Crop pixels follow the datasets' convention (``data_pipelines.pipeline``): the normalised
coordinate ``x_n = 2 u / S - 1`` of a crop of side S.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
from flax import struct

from handjax.geometry import project_matrix


@struct.dataclass
class HandOutput:
    joints: jnp.ndarray
    joints2d: jnp.ndarray
    camera: jnp.ndarray
    rotmats: jnp.ndarray
    betas: jnp.ndarray
    vertices: Optional[jnp.ndarray]
    is_right: jnp.ndarray
    convention: str = struct.field(pytree_node=False, default="mano")

    def reorder(self, order: Sequence[int], convention: str) -> "HandOutput":
        """The same hand with joints (and their projections) in another order (``mano.joint_remap``)."""
        idx = jnp.asarray(order)
        return self.replace(joints=self.joints[:, idx], joints2d=self.joints2d[:, idx], convention=convention)

    def normalized_joints2d(self, image_size: int) -> jnp.ndarray:
        """joints2d as normalised crop coordinates in [-1, 1]: ``2 u / S - 1``."""
        return 2.0 * self.joints2d / image_size - 1.0


def make_hand_output(joints, camera, rotmats, betas, vertices=None, is_right=None,
                     convention: str = "mano") -> HandOutput:
    """A :class:`HandOutput` with ``joints2d`` computed from ``camera`` (the contract's definition)."""
    if is_right is None:
        is_right = jnp.ones(joints.shape[:1], bool)
    return HandOutput(joints=joints, joints2d=project_matrix(joints, camera), camera=camera, rotmats=rotmats,
                      betas=betas, vertices=vertices, is_right=jnp.asarray(is_right, bool), convention=convention)
