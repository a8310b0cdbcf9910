"""Linear blend skinning for MANO, one step per function.

All functions broadcast over leading batch dimensions ``...``. Rotations are
local joint rotation matrices (..., 16, 3, 3) in the MANO kinematic order.
"""
from __future__ import annotations

import jax.numpy as jnp

from handjax.geometry.transforms import make_transform
from handjax.mano.model import ManoModel, kinematic_levels


def shape_blend(model: ManoModel, betas: jnp.ndarray) -> jnp.ndarray:
    """Rest-pose vertices for the given shape: v_template + shapedirs . betas. -> (..., V, 3)."""
    betas = betas[..., : model.num_betas]
    return model.v_template + jnp.einsum("vck,...k->...vc", model.shapedirs[..., : betas.shape[-1]], betas)


def regress_joints(model: ManoModel, verts: jnp.ndarray) -> jnp.ndarray:
    """Joint locations J_regressor . verts. (..., V, 3) -> (..., 16, 3)."""
    return jnp.einsum("jv,...vc->...jc", model.J_regressor, verts)


def pose_features(rotmats: jnp.ndarray) -> jnp.ndarray:
    """(R_j - I) for the 15 non-root joints, flattened row-major. -> (..., 135)."""
    eye = jnp.eye(3, dtype=rotmats.dtype)
    feat = rotmats[..., 1:, :, :] - eye
    return feat.reshape(feat.shape[:-3] + (-1,))


def pose_correctives(model: ManoModel, rotmats: jnp.ndarray) -> jnp.ndarray:
    """Pose-dependent vertex offsets posedirs . pose_features. -> (..., V, 3)."""
    return jnp.einsum("vck,...k->...vc", model.posedirs, pose_features(rotmats))


def forward_kinematics(rotmats: jnp.ndarray, joints: jnp.ndarray, parents) -> jnp.ndarray:
    """Global joint transforms G_j = G_parent(j) @ [R_j | J_j - J_parent(j)].

    Runs one batched matmul per tree level (MANO: 4 levels), never a
    per-joint Python loop. Returns (..., 16, 4, 4); G_j[:3, 3] is the posed
    position of joint j.
    """
    parents = tuple(parents)
    par = jnp.array([max(p, 0) for p in parents])
    rel = joints - jnp.where((jnp.array(parents) >= 0)[:, None], joints[..., par, :], 0.0)
    local = make_transform(rotmats, rel)
    glob = local
    for level in kinematic_levels(parents)[1:]:
        idx = jnp.array(level)
        pidx = jnp.array([parents[j] for j in level])
        glob = glob.at[..., idx, :, :].set(glob[..., pidx, :, :] @ local[..., idx, :, :])
    return glob


def relative_transforms(glob: jnp.ndarray, joints: jnp.ndarray) -> jnp.ndarray:
    """Transforms that move rest-pose points: A_j = G_j with translation t_j - R_j J_j."""
    rot = glob[..., :3, :3]
    t = glob[..., :3, 3] - jnp.einsum("...ij,...j->...i", rot, joints)
    return make_transform(rot, t)


def skin(weights: jnp.ndarray, transforms: jnp.ndarray, verts: jnp.ndarray) -> jnp.ndarray:
    """Blend the per-joint transforms with skinning weights and apply them.

    weights (V, 16); transforms (..., 16, 4, 4); verts (..., V, 3) -> (..., V, 3).
    """
    blended = jnp.einsum("vj,...jab->...vab", weights, transforms[..., :3, :])  # (..., V, 3, 4)
    return jnp.einsum("...vab,...vb->...va", blended[..., :3], verts) + blended[..., 3]


def lbs(model: ManoModel, rotmats: jnp.ndarray, betas: jnp.ndarray):
    """Full MANO skinning. Returns (vertices (..., V, 3), global transforms (..., 16, 4, 4)).

    Steps: shape blend -> joint regression -> pose correctives -> forward
    kinematics -> skinning (as in smplx ``lbs`` with ``pose2rot=False``).
    """
    v_shaped = shape_blend(model, betas)
    joints = regress_joints(model, v_shaped)
    v_posed = v_shaped + pose_correctives(model, rotmats)
    glob = forward_kinematics(rotmats, joints, model.parents)
    verts = skin(model.lbs_weights, relative_transforms(glob, joints), v_posed)
    return verts, glob


def lbs_subset(model: ManoModel, rotmats: jnp.ndarray, betas: jnp.ndarray, vertex_ids):
    """Skin only the listed vertices (e.g. the 5 fingertips): the joints-only path.

    Joint regression still needs the full shaped template, which is cheap
    (J_regressor . shapedirs); posedirs and skinning touch only ``vertex_ids``.
    Returns (vertices (..., len(ids), 3), global transforms).
    """
    ids = jnp.asarray(vertex_ids)
    betas = betas[..., : model.num_betas]
    j_template = model.J_regressor @ model.v_template
    j_dirs = jnp.einsum("jv,vck->jck", model.J_regressor, model.shapedirs[..., : betas.shape[-1]])
    joints = j_template + jnp.einsum("jck,...k->...jc", j_dirs, betas)
    v_sub = model.v_template[ids] + jnp.einsum("vck,...k->...vc", model.shapedirs[ids][..., : betas.shape[-1]], betas)
    v_sub = v_sub + jnp.einsum("vck,...k->...vc", model.posedirs[ids], pose_features(rotmats))
    glob = forward_kinematics(rotmats, joints, model.parents)
    return skin(model.lbs_weights[ids], relative_transforms(glob, joints), v_sub), glob
