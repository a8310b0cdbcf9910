"""InterWild's loss terms by name (``handjax.losses.terms.register_term``), on a two-hand batch.

All terms are L1 and, as upstream, the mean over the FULL tensor (masked entries count in the
denominator); InterWild sums them with weight 1 except ``iw_joint_cam`` and ``iw_mesh_cam``
(x10). ``pred`` is :func:`prediction`'s dict (raw network outputs, their MANO decode and the
static geometry); the batch is a two-hand sample batch (``data_pipelines``): 42 joints per
sample in the ``ih26m`` order (right 0-20, left 21-41, wrists 20 / 41), per-hand arrays (B, 2, ...).

==================  ===========================  =========================================
term                tensor                       mask
==================  ===========================  =========================================
iw_bbox_center      (B, 2 hands, 2) heatmap      hand_valid (GT box present)
iw_bbox_size        (B, 2, 2) heatmap units      hand_valid
iw_rel_trans        (B, 3) metres                both wrists valid and 3D labels
iw_mano_pose        (B, 32, 3, 3) rotation L1    mano_valid per hand (relative poses)
iw_mano_shape       (B, 20)                      mano_valid
iw_joint_cam        (B, 42, 3) root-relative     joint_valid (root valid) and 3D labels
iw_mesh_cam         (B, 1556, 3) root-relative   mano_valid and has_vertices
iw_joint_img        (B, 42, 3) hand-grid units   joint_valid and inside the crop; z: 3D only
iw_mano_joint_img   (B, 42, 3) hand-grid units   mesh-derived joints inside the crop
iw_joint_proj       (B, 42, 2) hand-grid units   joint_valid and inside the crop
==================  ===========================  =========================================

Targets enter each hand's crop through the prediction's (detached) ``orig2hand`` as upstream;
depth: root-relative z -> (z / 0.15 + 1) / 2 * D bins.
"""
from __future__ import annotations

from typing import Dict

import jax.numpy as jnp
from jax import lax

from handjax.geometry import axis_angle_to_matrix
from handjax.losses.terms import register_term
from handjax.models import interwild as iw

TERMS = ("iw_bbox_center", "iw_bbox_size", "iw_rel_trans", "iw_mano_pose", "iw_mano_shape", "iw_joint_cam",
         "iw_mesh_cam", "iw_joint_img", "iw_mano_joint_img", "iw_joint_proj")
# the terms of the body branch's boxes and TransNet; the others supervise the hand branch alone (the optional
# ``hands`` warm-up stage, handjax.train.interwild)
BODY_TERMS = ("iw_bbox_center", "iw_bbox_size", "iw_rel_trans")
HAND_TERMS = tuple(t for t in TERMS if t not in BODY_TERMS)
WEIGHTS = dict(iw_bbox_center=1.0, iw_bbox_size=1.0, iw_rel_trans=1.0, iw_mano_pose=1.0, iw_mano_shape=1.0,
               iw_joint_cam=10.0, iw_mesh_cam=10.0, iw_joint_img=1.0, iw_mano_joint_img=1.0, iw_joint_proj=1.0)
ROOTS = (20, 41)  # ih26m wrists of the right / left hand


def prediction(raw, geometry: iw.Geometry, mano_right, mano_left) -> Dict:
    """What the terms read: raw outputs, their decode (ih26m order) and the static context."""
    from handjax.mano.conventions import joint_remap

    hands, coords = iw.decode(raw, geometry, mano_right, mano_left)
    order = jnp.array(joint_remap(iw.interwild_convention(), "ih26m"))
    cat = lambda key: jnp.concatenate([coords["right"][key][:, order], coords["left"][key][:, order]], 1)  # noqa
    return dict(raw=raw, hands=hands, geometry=geometry, hm_hw=geometry.body_hm_hw, mano=(mano_right, mano_left),
                joint_cam=cat("joint_cam"),
                joint_proj=cat("joint_proj"),
                mesh_cam=jnp.concatenate([coords["right"]["mesh_cam"], coords["left"]["mesh_cam"]], 1))


def _flag(batch, key: str, n: int):
    v = batch.get(key)
    return jnp.ones((n,), bool) if v is None else jnp.asarray(v).astype(bool).reshape(n)


def _n(batch) -> int:
    return batch["image"].shape[0]


def _hand_valid(batch):
    n = _n(batch)
    hv = batch.get("hand_valid")
    return jnp.ones((n, 2), bool) if hv is None else hv.astype(bool)


def _per_hand_joints(mask_hand):
    """(B, 2) -> (B, 42)."""
    return jnp.repeat(mask_hand, 21, axis=1)


def _joint_valid(batch):
    """(B, 42) joint validity with each hand's flags times its root's (root-relative targets)."""
    jv = batch["joint_valid"].astype(bool)
    root = jnp.stack([jv[:, ROOTS[0]], jv[:, ROOTS[1]]], 1)
    return jv & _per_hand_joints(root)


def _is_3d(batch):
    return _flag(batch, "has_joints3d", _n(batch))


def _mean(x, mask):
    """Mean over the full tensor of |x| * mask (mask broadcast)."""
    return jnp.mean(jnp.abs(x) * jnp.broadcast_to(mask, x.shape).astype(x.dtype))


def gt_boxes_hm(batch, geometry: iw.Geometry, hm_hw):
    """GT hand boxes (B, 2, 4) person-crop pixels -> centres and sizes (B, 2, 2) in heatmap units."""
    box = batch["hand_box"]
    sx, sy = hm_hw[1] / geometry.image_hw[1], hm_hw[0] / geometry.image_hw[0]
    scale = jnp.array([sx, sy], box.dtype)
    return (box[..., :2] + box[..., 2:]) / 2 * scale, (box[..., 2:] - box[..., :2]) * scale


@register_term("iw_bbox_center")
def bbox_center(pred, batch, image_size):
    raw = pred["raw"]
    center, _ = gt_boxes_hm(batch, pred["geometry"], pred["hm_hw"])
    p = jnp.stack([raw["rhand_center"], raw["lhand_center"]], 1)
    m = _hand_valid(batch)[..., None]
    return _mean(p[:, 0] - center[:, 0], m[:, 0]) + _mean(p[:, 1] - center[:, 1], m[:, 1])


@register_term("iw_bbox_size")
def bbox_size(pred, batch, image_size):
    raw = pred["raw"]
    _, size = gt_boxes_hm(batch, pred["geometry"], pred["hm_hw"])
    p = jnp.stack([raw["rhand_size"], raw["lhand_size"]], 1)
    m = _hand_valid(batch)[..., None]
    return _mean(p[:, 0] - size[:, 0], m[:, 0]) + _mean(p[:, 1] - size[:, 1], m[:, 1])


@register_term("iw_rel_trans")
def rel_trans(pred, batch, image_size):
    jv = batch["joint_valid"].astype(bool)
    m = jv[:, ROOTS[0]] & jv[:, ROOTS[1]] & _is_3d(batch) & jnp.all(_hand_valid(batch), 1)
    return _mean(pred["raw"]["rel_trans"] - batch["rel_root"], m[:, None])


def relative_gt_rotmats(batch, mano_right, mano_left):
    """GT (B, 32, 3, 3): each hand's absolute (flat-mean) ``mano_pose`` made relative to its
    model's mean hand (InterWild's flat_hand_mean=False parameters) and converted to matrices."""
    out = []
    for h, model in enumerate((mano_right, mano_left)):
        mean = jnp.concatenate([jnp.zeros(3), model.hands_mean.astype(jnp.float32)])
        out.append(axis_angle_to_matrix((batch["mano_pose"][:, h] - mean).reshape(-1, 16, 3)))
    return jnp.concatenate(out, 1)


def _mano_valid(batch):
    n = _n(batch)
    mv = batch.get("mano_valid")
    mv = jnp.ones((n, 2), bool) if mv is None else mv.astype(bool)
    return mv & _flag(batch, "has_mano", n)[:, None]


@register_term("iw_mano_pose")
def mano_pose(pred, batch, image_size):
    raw = pred["raw"]
    b = _n(batch)
    aa = jnp.concatenate([raw["root_pose"], raw["hand_pose"]], -1).reshape(2, b, 16, 3).transpose(1, 0, 2, 3)
    p = axis_angle_to_matrix(aa.reshape(b, 32, 3))
    gt = relative_gt_rotmats(batch, *pred["mano"])
    m = jnp.repeat(_mano_valid(batch), 16, axis=1)[:, :, None, None]
    return _mean(p - gt, m)


@register_term("iw_mano_shape")
def mano_shape(pred, batch, image_size):
    b = _n(batch)
    p = pred["raw"]["shape"].reshape(2, b, 10).transpose(1, 0, 2)
    gt = batch["betas"]
    return _mean((p - gt).reshape(b, 20), jnp.repeat(_mano_valid(batch), 10, axis=1))


def root_relative_42(joints):
    return jnp.concatenate([joints[:, :21] - joints[:, ROOTS[0]:ROOTS[0] + 1],
                            joints[:, 21:] - joints[:, ROOTS[1]:ROOTS[1] + 1]], 1)


@register_term("iw_joint_cam")
def joint_cam(pred, batch, image_size):
    gt = root_relative_42(batch["joints3d"])
    m = (_joint_valid(batch) & _is_3d(batch)[:, None])[..., None]
    return _mean(pred["joint_cam"] - gt, m)


def gt_mesh_cam(batch, mano_right):
    """GT vertices (B, 2, 778, 3) minus each mesh's regressed wrist -> (B, 1556, 3)."""
    w = mano_right.J_regressor[0].astype(batch["vertices"].dtype)
    wrist = jnp.einsum("v,bhvc->bhc", w, batch["vertices"])
    return (batch["vertices"] - wrist[:, :, None]).reshape(batch["vertices"].shape[0], -1, 3)


@register_term("iw_mesh_cam", needs_mesh=True)
def mesh_cam(pred, batch, image_size):
    if "vertices" not in batch:
        return jnp.zeros(())
    m = _mano_valid(batch) & _flag(batch, "has_vertices", _n(batch))[:, None]
    return _mean(pred["mesh_cam"] - gt_mesh_cam(batch, pred["mano"][0]), jnp.repeat(m, 778, axis=1)[..., None])


def to_hand_grid(pred, xy, z_rel):
    """Person-crop pixels (B, 42, 2) and root-relative depths (B, 42) -> (B, 42, 3) hand-grid
    units of each hand's (detached) crop and the in-crop mask (B, 42)."""
    g, raw = pred["geometry"], pred["raw"]
    b = xy.shape[0]
    o2h = lax.stop_gradient(raw["orig2hand"])
    s = g.hand_grid / g.hand_size
    r = iw.apply_affine(o2h[:b], xy[:, :21]) * s
    l_ = iw.apply_affine(o2h[b:], xy[:, 21:]) * s
    z = (z_rel / (iw.BBOX_3D_SIZE / 2) + 1) / 2 * g.depth_bins
    coords = jnp.concatenate([jnp.concatenate([r, l_], 1), z[..., None]], -1)
    inside = ((coords[..., 0] >= 0) & (coords[..., 0] < g.hand_grid) & (coords[..., 1] >= 0)
              & (coords[..., 1] < g.hand_grid) & (coords[..., 2] >= 0) & (coords[..., 2] < g.depth_bins))
    return coords, inside


def _joint_img_pred(pred):
    raw = pred["raw"]
    from handjax.mano.conventions import joint_remap

    order = jnp.array(joint_remap(iw.interwild_convention(), "ih26m"))
    b = raw["root_pose"].shape[0] // 2
    return jnp.concatenate([raw["joint_img"][:b][:, order], raw["joint_img"][b:][:, order]], 1)


def _targets(pred, batch):
    z_rel = root_relative_42(batch["joints3d"])[..., 2] if "joints3d" in batch else jnp.zeros(
        batch["joints2d"].shape[:2])
    return to_hand_grid(pred, batch["joints2d"], z_rel)


@register_term("iw_joint_img")
def joint_img(pred, batch, image_size):
    target, inside = _targets(pred, batch)
    trunc = _joint_valid(batch) & inside
    zmask = jnp.stack([jnp.ones_like(trunc), jnp.ones_like(trunc), trunc & _is_3d(batch)[:, None]], -1)
    return _mean(_joint_img_pred(pred) - target, trunc[..., None] & zmask)


@register_term("iw_mano_joint_img")
def mano_joint_img(pred, batch, image_size):
    """vs the GT meshes' joints (InterWild's regressor) projected with the crop intrinsics ``K``."""
    if "vertices" not in batch or "K" not in batch:
        return jnp.zeros(())
    from handjax.mano.conventions import joint_remap

    order = jnp.array(joint_remap(iw.interwild_convention(), "ih26m"))
    mr = pred["mano"][0]
    j = iw.sh_joints(mr, batch["vertices"])[:, :, order].reshape(batch["vertices"].shape[0], 42, 3)
    uvw = jnp.einsum("bij,bkj->bki", batch["K"], j)
    uv = uvw[..., :2] / uvw[..., 2:3]
    target, inside = to_hand_grid(pred, uv, root_relative_42(j)[..., 2])
    m = _mano_valid(batch) & _flag(batch, "has_vertices", _n(batch))[:, None] & _flag(batch, "has_K", _n(batch))[
        :, None]
    trunc = _per_hand_joints(m) & inside
    return _mean(_joint_img_pred(pred) - target, trunc[..., None])


@register_term("iw_joint_proj")
def joint_proj(pred, batch, image_size):
    target, inside = _targets(pred, batch)
    trunc = batch["joint_valid"].astype(bool) & inside
    return _mean(pred["joint_proj"] - target[..., :2], trunc[..., None])
