"""Linear blend skinning for MANO, one step per function.

All functions broadcast over leading batch dimensions ``...``. Rotations are
local joint rotation matrices (..., 16, 3, 3) in the MANO kinematic order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from handjax.geometry.transforms import make_transform, small_matmul, small_matvec
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
        rots.append(small_matmul(r_par, rotmats[..., cur_idx, :, :]))
        trans.append(small_matvec(r_par, rel[..., cur_idx, :]) + t_par)
    order = [j for level in levels for j in level]
    back = jnp.array([order.index(j) for j in range(len(parents))])  # level order -> joint order
    return jnp.concatenate(rots, -3)[..., back, :, :], jnp.concatenate(trans, -2)[..., back, :]


def skinning_transforms(rot: jnp.ndarray, trans: jnp.ndarray, joints: jnp.ndarray) -> jnp.ndarray:
    """Per-joint 3x4 transforms that move REST-pose points: [R_j | t_j - R_j J_j]. -> (..., 16, 3, 4)."""
    t_rest = trans - small_matvec(rot, joints)
    return jnp.concatenate([rot, t_rest[..., None]], axis=-1)


def skin(weights: jnp.ndarray, transforms: jnp.ndarray, verts: jnp.ndarray) -> jnp.ndarray:
    """Blend the per-joint transforms with skinning weights and apply them.

    weights (V, 16); transforms (..., 16, 3, 4) (or 4x4); verts (..., V, 3) -> (..., V, 3).
    The blend is ONE matrix product (N*12, 16) @ (16, V) over the flattened batch
    (a batch of N small (V,16)@(16,12) products is 2x slower on XLA-CPU) giving the
    blended 3x4 transforms channel-first, (N, 3, 4, V); they are applied with explicit
    multiply-adds over contiguous vertex rows (a (N*V)-batched 3x3 dot, or a sum over a
    broadcast product, is several times slower).
    """
    lead = transforms.shape[:-3]
    num_joints, num_verts = transforms.shape[-3], weights.shape[0]
    flat = transforms[..., :3, :].reshape((-1, num_joints, 12))  # (N, 16, 12), row-major 3x4
    n = flat.shape[0]
    blended = (jnp.swapaxes(flat, 1, 2).reshape(n * 12, num_joints) @ weights.T).reshape(n, 3, 4, num_verts)
    v = jnp.swapaxes(jnp.broadcast_to(verts, lead + verts.shape[-2:]).reshape(n, num_verts, 3), 1, 2)[:, None]
    out = (blended[:, :, 0] * v[:, :, 0] + blended[:, :, 1] * v[:, :, 1] + blended[:, :, 2] * v[:, :, 2]
           + blended[:, :, 3])  # (N, 3, V)
    return jnp.swapaxes(out, 1, 2).reshape(lead + (num_verts, 3))


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


def blend_shapes_and_poses(model: ManoModel, rotmats: jnp.ndarray, betas: jnp.ndarray, vertex_ids=None
                           ) -> jnp.ndarray:
    """v_template + shape_blend + pose_correctives as ONE product [betas | pose_features] @ [shapedirs | posedirs]^T.

    Equal to ``shape_blend(model, betas) + pose_correctives(model, rotmats)``; one (N, 10 + 135) @
    (10 + 135, V*3) product instead of two that each write a (N, V, 3) array. ``vertex_ids``: only
    these vertices. -> (..., V, 3).
    """
    betas = betas[..., : model.num_betas]
    coeff = jnp.concatenate([betas, pose_features(rotmats)], axis=-1)
    dirs = jnp.concatenate([model.shapedirs[..., : betas.shape[-1]], model.posedirs], axis=-1)  # (V, 3, K)
    template = model.v_template
    if vertex_ids is not None:
        ids = jnp.asarray(vertex_ids)
        dirs, template = dirs[ids], template[ids]
    num_verts = dirs.shape[0]
    offsets = coeff @ dirs.reshape(num_verts * 3, -1).T
    return template + offsets.reshape(coeff.shape[:-1] + (num_verts, 3))


# XLA-CPU: large batches are skinned in chunks whose intermediates ((chunk, V, 12) blended transforms,
# (chunk, V, 3) offsets) stay in cache; one pass over B=4096 hands writes and re-reads ~200 MB and runs
# ~3x slower. GPUs/TPUs get the whole batch at once.
CPU_CHUNK = 128


def _auto_chunk_size(batch: int):
    if jax.default_backend() == "cpu" and jax.device_count() == 1 and batch > 2 * CPU_CHUNK:
        return CPU_CHUNK  # several devices: the batch may be sharded; scanning over chunks would gather it
    return None


def lbs(model: ManoModel, rotmats: jnp.ndarray, betas: jnp.ndarray, chunk_size="auto"):
    """Full MANO skinning. Returns (vertices (..., V, 3), global transforms (..., 16, 4, 4)).

    Steps: shape blend + pose correctives -> joint regression -> forward kinematics -> skinning
    (as in smplx ``lbs`` with ``pose2rot=False``). ``chunk_size``: run the batch (leading dims
    flattened) through ``lax.map`` in chunks of this many hands; None = all at once; "auto" =
    ``CPU_CHUNK`` for large batches on a single CPU device, else all at once. Results agree to
    float32 rounding.
    """
    lead = rotmats.shape[:-3]
    betas = jnp.broadcast_to(betas, lead + betas.shape[-1:])
    batch = int(np.prod(lead)) if lead else 1
    if chunk_size == "auto":
        chunk_size = _auto_chunk_size(batch)
    if not chunk_size or batch <= chunk_size:
        return _lbs(model, rotmats, betas)
    n = -(-batch // chunk_size)
    pad = n * chunk_size - batch
    r = jnp.pad(rotmats.reshape((batch,) + rotmats.shape[-3:]), ((0, pad), (0, 0), (0, 0), (0, 0)))
    b = jnp.pad(betas.reshape(batch, -1), ((0, pad), (0, 0)))
    # rematerialised: the backward pass recomputes a chunk instead of storing its (chunk, V, 12) residuals
    verts, glob = jax.lax.map(jax.checkpoint(lambda rb: _lbs(model, *rb)),
                              (r.reshape((n, chunk_size) + r.shape[1:]), b.reshape(n, chunk_size, -1)))
    unchunk = lambda x: x.reshape((n * chunk_size,) + x.shape[2:])[:batch].reshape(lead + x.shape[2:])
    return unchunk(verts), unchunk(glob)


def _lbs(model: ManoModel, rotmats: jnp.ndarray, betas: jnp.ndarray):
    v_posed = blend_shapes_and_poses(model, rotmats, betas)
    joints = joints_from_betas(model, betas)
    rot, trans = forward_kinematics_rt(rotmats, joints, model.parents)
    verts = skin(model.lbs_weights, skinning_transforms(rot, trans, joints), v_posed)
    return verts, make_transform(rot, trans)


def lbs_subset(model: ManoModel, rotmats: jnp.ndarray, betas: jnp.ndarray, vertex_ids):
    """Skin only the listed vertices (e.g. the 5 fingertips): the joints-only path.

    Returns (vertices (..., len(ids), 3), global transforms).
    """
    betas = jnp.broadcast_to(betas, rotmats.shape[:-3] + betas.shape[-1:])
    joints = joints_from_betas(model, betas)
    v_sub = blend_shapes_and_poses(model, rotmats, betas, vertex_ids)
    rot, trans = forward_kinematics_rt(rotmats, joints, model.parents)
    weights = model.lbs_weights[jnp.asarray(vertex_ids)]
    return skin(weights, skinning_transforms(rot, trans, joints), v_sub), make_transform(rot, trans)
