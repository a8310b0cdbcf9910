"""MANO forward pass: pose + shape -> vertices, 21 joints, 16 global transforms."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from flax import struct

from handjax.mano.conventions import get_convention
from handjax.mano.skinning import lbs, lbs_subset
from handjax.mano.model import ManoModel


@struct.dataclass
class ManoOutput:
    vertices: Optional[jnp.ndarray]  # (..., V, 3), None on the joints-only path
    joints: jnp.ndarray  # (..., 21, 3) in the convention's order
    transforms: jnp.ndarray  # (..., 16, 4, 4) global joint transforms (model frame, before translation)


def _finish(joints16, tips, verts, transl, conv):
    """Assemble 21 joints, apply translation, centring and units."""
    joints = jnp.concatenate([joints16, tips], axis=-2)[..., jnp.array(conv.joint_order), :]
    if transl is not None:
        offset = transl[..., None, :]
    else:
        offset = jnp.zeros_like(joints[..., :1, :])
    if conv.center_idx is not None:
        center = joints[..., conv.center_idx: conv.center_idx + 1, :]
        if conv.center_only_without_transl and transl is not None:
            no_transl = jnp.all(transl == 0, axis=-1)[..., None, None]
            offset = jnp.where(no_transl, -center, offset)
        else:
            offset = offset - center
    joints = (joints + offset) * conv.unit_scale
    if verts is not None:
        verts = (verts + offset) * conv.unit_scale
    return joints, verts


def mano_forward(model: ManoModel, rotmats: jnp.ndarray, betas: Optional[jnp.ndarray] = None,
                 transl: Optional[jnp.ndarray] = None, convention="smplx", chunk_size="auto") -> ManoOutput:
    """Posed MANO mesh.

    rotmats: (..., 16, 3, 3) local joint rotations (root first), see
    ``handjax.mano.pose`` for axis-angle / PCA / quaternion / 6D inputs.
    betas: (..., num_betas) or None (mean shape). transl: (..., 3) or None.
    convention: a name from ``handjax.mano.CONVENTIONS`` or a Convention
    (tip vertices, joint order, units, centring).
    chunk_size: see ``handjax.mano.skinning.lbs`` (cache-sized chunks for large CPU batches).
    """
    conv = get_convention(convention)
    betas = _default_betas(model, rotmats, betas)
    verts, glob = lbs(model, rotmats, betas, chunk_size)
    tips = verts[..., jnp.array(conv.tips(model.side)), :]
    joints, verts = _finish(glob[..., :3, 3], tips, verts, transl, conv)
    return ManoOutput(vertices=verts, joints=joints, transforms=glob)


def mano_joints(model: ManoModel, rotmats: jnp.ndarray, betas: Optional[jnp.ndarray] = None,
                transl: Optional[jnp.ndarray] = None, convention="smplx") -> ManoOutput:
    """Joints-only forward: skins just the 5 tip vertices instead of all 778."""
    conv = get_convention(convention)
    betas = _default_betas(model, rotmats, betas)
    tips, glob = lbs_subset(model, rotmats, betas, conv.tips(model.side))
    joints, _ = _finish(glob[..., :3, 3], tips, None, transl, conv)
    return ManoOutput(vertices=None, joints=joints, transforms=glob)


def _default_betas(model, rotmats, betas):
    if betas is None:
        return jnp.zeros(rotmats.shape[:-3] + (model.num_betas,), rotmats.dtype)
    return betas
