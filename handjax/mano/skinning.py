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

    Runs one batched rotation/translation composition per tree level (MANO:
    4 levels), never a per-joint Python loop: every parent of a level-l joint
    is on level l-1, so each level gathers its parents from the previous
    level's result. Returns (..., 16, 4, 4); G_j[:3, 3] is the posed position
    of joint j.
    """
    rot, trans = forward_kinematics_rt(rotmats, joints, parents)
    return make_transform(rot, trans)


def forward_kinematics_rt(rotmats: jnp.ndarray, joints: jnp.ndarray, parents):
    """``forward_kinematics`` as (global rotations (..., 16, 3, 3), joint positions (..., 16, 3))."""
    parents = tuple(parents)
    levels = kinematic_levels(parents)
    has_parent = jnp.array([p >= 0 for p in parents])[:, None]
    rel = joints - jnp.where(has_parent, joints[..., jnp.array([max(p, 0) for p in parents]), :], 0.0)
    rots, trans = [rotmats[..., levels[0], :, :]], [rel[..., levels[0], :]]
    for prev, cur in zip(levels[:-1], levels[1:]):
        pos = jnp.array([prev.index(parents[j]) for j in cur])  # parent's slot in the previous level
        r_par, t_par = rots[-1][..., pos, :, :], trans[-1][..., pos, :]
        cur_idx = jnp.array(cur)
        rots.append(r_par @ rotmats[..., cur_idx, :, :])
        trans.append(jnp.einsum("...ij,...j->...i", r_par, rel[..., cur_idx, :]) + t_par)
    order = [j for level in levels for j in level]
    back = jnp.array([order.index(j) for j in range(len(parents))])  # level order -> joint order
    return jnp.concatenate(rots, -3)[..., back, :, :], jnp.concatenate(trans, -2)[..., back, :]


def skinning_transforms(rot: jnp.ndarray, trans: jnp.ndarray, joints: jnp.ndarray) -> jnp.ndarray:
    """Per-joint 3x4 transforms that move REST-pose points: [R_j | t_j - R_j J_j]. -> (..., 16, 3, 4)."""
    t_rest = trans - jnp.einsum("...jab,...jb->...ja", rot, joints)
    return jnp.concatenate([rot, t_rest[..., None]], axis=-1)


def skin(weights: jnp.ndarray, transforms: jnp.ndarray, verts: jnp.ndarray) -> jnp.ndarray:
    """Blend the per-joint transforms with skinning weights and apply them.

    weights (V, 16); transforms (..., 16, 3, 4) (or 4x4); verts (..., V, 3) -> (..., V, 3).
    The blended 3x4 transform is applied with explicit multiply-adds per output
    coordinate: on XLA-CPU a (B*V)-batched 3x3 dot, or a sum over a broadcast
    product, is several times slower.
    """
    flat = transforms[..., :3, :].reshape(transforms.shape[:-2] + (12,))  # (..., 16, 12), row-major 3x4
    b = jnp.matmul(weights, flat)  # (..., V, 12)
    x, y, z = verts[..., 0], verts[..., 1], verts[..., 2]
    rows = [b[..., 4 * r] * x + b[..., 4 * r + 1] * y + b[..., 4 * r + 2] * z + b[..., 4 * r + 3] for r in range(3)]
    return jnp.stack(rows, axis=-1)


def joints_from_betas(model: ManoModel, betas: jnp.ndarray) -> jnp.ndarray:
    """Rest joints J_regressor . (v_template + shapedirs . betas), through the 16-joint shape space.

    Equal to ``regress_joints(model, shape_blend(model, betas))`` but the
    regressor is applied to the (tiny) basis once per call instead of to every
    shaped mesh.
    """
    betas = betas[..., : model.num_betas]
    j_template = model.J_regressor @ model.v_template
    j_dirs = jnp.einsum("jv,vck->jck", model.J_regressor, model.shapedirs[..., : betas.shape[-1]])
    return j_template + jnp.einsum("jck,...k->...jc", j_dirs, betas)


def lbs(model: ManoModel, rotmats: jnp.ndarray, betas: jnp.ndarray):
    """Full MANO skinning. Returns (vertices (..., V, 3), global transforms (..., 16, 4, 4)).

    Steps: shape blend -> joint regression -> pose correctives -> forward
    kinematics -> skinning (as in smplx ``lbs`` with ``pose2rot=False``).
    """
    v_shaped = shape_blend(model, betas)
    joints = joints_from_betas(model, betas)
    v_posed = v_shaped + pose_correctives(model, rotmats)
    rot, trans = forward_kinematics_rt(rotmats, joints, model.parents)
    verts = skin(model.lbs_weights, skinning_transforms(rot, trans, joints), v_posed)
    return verts, make_transform(rot, trans)


def lbs_subset(model: ManoModel, rotmats: jnp.ndarray, betas: jnp.ndarray, vertex_ids):
    """Skin only the listed vertices (e.g. the 5 fingertips): the joints-only path.

    Returns (vertices (..., len(ids), 3), global transforms).
    """
    ids = jnp.asarray(vertex_ids)
    betas = betas[..., : model.num_betas]
    joints = joints_from_betas(model, betas)
    v_sub = model.v_template[ids] + jnp.einsum("vck,...k->...vc", model.shapedirs[ids][..., : betas.shape[-1]], betas)
    v_sub = v_sub + jnp.einsum("vck,...k->...vc", model.posedirs[ids], pose_features(rotmats))
    rot, trans = forward_kinematics_rt(rotmats, joints, model.parents)
    return skin(model.lbs_weights[ids], skinning_transforms(rot, trans, joints), v_sub), make_transform(rot, trans)
