"""DIGIT's targets (2.5D encoding of a two-hand batch) and its five loss terms, by name.

Target encoding (digit.md 4.5, :func:`encode_targets`), for a square crop of side S and
heatmaps of side h (S / 4), depth range R = 400 mm and D = 64 depth units:

* x, y: crop pixels x h / S (heatmap cells; decoding multiplies by S / h);
* z: each hand's root-relative camera depth z - z_wrist in mm -> ``(z / (R / 2) + 1) / 2 * D``
  (6.25 mm per unit, the wrist at 32);
* joint validity: the batch's ``joint_valid`` x that hand's wrist flag (InterHand2.6M's
  root-masked annotation validity), x inside the crop (0 <= x, y < S), x 0 <= z < D;
* relative root depth: z(left wrist) - z(right wrist) encoded the same way with ``root_bins``
  bins; valid only for interacting frames (hand type 2) with both wrists valid and in range;
* hand type: right [1, 0], left [0, 1], interacting [1, 1], with ``hand_type_valid``;
* segmentation: ``part_seg`` (B, S, S) labels 0..32 taken at even rows / columns (torch's
  nearest 2x downsampling) -> (B, S/2, S/2), valid per sample by ``has_part_seg`` (absent: all).

Loss terms (digit.md 2; the pred is a :class:`handjax.models.digit.DigitOutput`):

================  =============================================================  ======
name              definition and reduction                                       weight
================  =============================================================  ======
digit_joints      sum |pred - gt| over valid (joint, coordinate) / (B * 42 * 3)  1
digit_root_depth  sum |pred - gt| x root_valid / B                               1
digit_hand_type   BCE with logits, mean over the 2 outputs, x hand_type_valid,   1
                  / B
digit_segm        cross-entropy over 33 classes per pixel (background included,  10
                  no ignore index) x segm_valid / (B * S/2 * S/2)
digit_bone        per hand: bone = joint - parent (20 bones), squared error x     0.1
                  valid(child) valid(parent) / (B * 20 * 3); left + right
================  =============================================================  ======

Invalid entries stay in the denominators, as upstream.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from handjax.losses.terms import register_term

BBOX_3D_MM = 400.0  # bbox_3d_size = bbox_3d_size_root
DEPTH_UNITS = 64  # output_hm_shape[0]
ROOTS = (20, 41)
# ih26m order per hand: 4 fingers of (tip, 3, 2, 1) for thumb, index, middle, ring, pinky, then the wrist
PARENTS_21 = tuple(20 if i % 4 == 3 else i + 1 for i in range(20))
DEFAULT_WEIGHTS = dict(digit_joints=1.0, digit_root_depth=1.0, digit_hand_type=1.0, digit_segm=10.0, digit_bone=0.1)
TERMS = tuple(DEFAULT_WEIGHTS)


def encode_depth(z_mm, units: int = DEPTH_UNITS, range_mm: float = BBOX_3D_MM):
    """Root-relative depth (mm) -> DIGIT's units: ``(z / (range / 2) + 1) / 2 * units``."""
    return (z_mm / (range_mm / 2.0) + 1.0) / 2.0 * units


def decode_depth(z, units: int = DEPTH_UNITS, range_mm: float = BBOX_3D_MM):
    """Inverse of :func:`encode_depth`: units -> mm (``(z / units * 2 - 1) * range / 2``)."""
    return (z / units * 2.0 - 1.0) * (range_mm / 2.0)


def hand_type_target(hand_type):
    """Codes (B,) 0 right / 1 left / 2 interacting -> (B, 2) presence [right, left]."""
    ht = jnp.asarray(hand_type)
    return jnp.stack([(ht == 0) | (ht == 2), (ht == 1) | (ht == 2)], axis=-1).astype(jnp.float32)


def encode_targets(batch, image_size: int, hm_size: int, root_bins: int = 64) -> dict:
    """A two-hand batch -> DIGIT's targets (module docstring).

    Reads joints2d (B, 42, 2) crop pixels, joints3d (B, 42, 3) metres, joint_valid (B, 42),
    hand_type (B,), hand_type_valid (B,) (optional), part_seg (B, S, S) (optional), has_part_seg
    (optional). Returns joints25d (B, 42, 3), joint_valid (B, 42) float, rel_root (B,),
    root_valid (B,), hand_type (B, 2), hand_type_valid (B,), and segm (B, S/2, S/2) int /
    segm_valid (B,) when part_seg is present.
    """
    j2d = jnp.asarray(batch["joints2d"], jnp.float32)
    j3d = jnp.asarray(batch["joints3d"], jnp.float32)
    jv = jnp.asarray(batch["joint_valid"]).astype(bool)
    n = j2d.shape[0]
    roots_z = j3d[:, ROOTS, 2]  # (B, 2)
    z_rel_mm = (j3d[..., 2] - jnp.repeat(roots_z, 21, axis=1)) * 1000.0
    z = encode_depth(z_rel_mm)
    xy = j2d * (hm_size / image_size)
    root_ok = jnp.repeat(jv[:, ROOTS], 21, axis=1)
    in_crop = jnp.all((j2d >= 0) & (j2d < image_size), axis=-1)
    in_depth = (z >= 0) & (z < DEPTH_UNITS)
    valid = jv & root_ok & in_crop & in_depth
    rel = encode_depth((roots_z[:, 1] - roots_z[:, 0]) * 1000.0, units=root_bins)
    ht = jnp.asarray(batch["hand_type"])
    root_valid = (ht == 2) & jv[:, ROOTS[0]] & jv[:, ROOTS[1]] & (rel >= 0) & (rel < root_bins)
    htv = batch.get("hand_type_valid")
    out = dict(joints25d=jnp.concatenate([xy, z[..., None]], axis=-1), joint_valid=valid.astype(jnp.float32),
               rel_root=rel, root_valid=root_valid.astype(jnp.float32), hand_type=hand_type_target(ht),
               hand_type_valid=(jnp.ones(n) if htv is None else jnp.asarray(htv).astype(jnp.float32)))
    if "part_seg" in batch:
        seg = jnp.asarray(batch["part_seg"])
        if seg.ndim == 4:
            seg = seg[..., 0]
        out["segm"] = seg[:, ::2, ::2].astype(jnp.int32)
        has = batch.get("has_part_seg")
        out["segm_valid"] = jnp.ones(n) if has is None else jnp.asarray(has).astype(jnp.float32)
    return out


def _targets(pred, batch, image_size):
    return encode_targets(batch, image_size, pred.hm_size, pred.root_logits.shape[-1])


def joints_l1(pred_25d, gt_25d, valid):
    """mean over B * 42 * 3 of |pred - gt| * valid (invalid entries count in the denominator)."""
    return jnp.mean(jnp.abs(pred_25d - gt_25d) * valid[..., None])


def root_depth_l1(pred, gt, valid):
    return jnp.mean(jnp.abs(pred - gt) * valid)


def hand_type_bce(logits, target, valid):
    """BCE with logits (mean over the 2 outputs) x valid, mean over B."""
    bce = jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.mean(jnp.mean(bce, axis=-1) * valid)


def segm_cross_entropy(logits, labels, valid):
    """Per-pixel cross-entropy (logits (B, H, W, C), labels (B, H, W)) x valid (B,), mean over B * H * W."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    return jnp.mean(nll * valid[:, None, None])


def bone_l2(pred_25d, gt_25d, valid):
    """Sum over the two hands of mean over B * 20 * 3 of (bone_pred - bone_gt)^2 * v(child) v(parent)."""
    total = 0.0
    for off in (0, 21):
        child = jnp.arange(20) + off
        parent = jnp.asarray(PARENTS_21) + off
        bp = pred_25d[:, child] - pred_25d[:, parent]
        bg = gt_25d[:, child] - gt_25d[:, parent]
        v = valid[:, child] * valid[:, parent]
        total = total + jnp.mean(jnp.square(bp - bg) * v[..., None])
    return total


@register_term("digit_joints")
def digit_joints(pred, batch, image_size):
    t = _targets(pred, batch, image_size)
    return joints_l1(pred.joints25d, t["joints25d"], t["joint_valid"])


@register_term("digit_root_depth")
def digit_root_depth(pred, batch, image_size):
    t = _targets(pred, batch, image_size)
    return root_depth_l1(pred.rel_root, t["rel_root"], t["root_valid"])


@register_term("digit_hand_type")
def digit_hand_type(pred, batch, image_size):
    t = _targets(pred, batch, image_size)
    return hand_type_bce(pred.hand_logits, t["hand_type"], t["hand_type_valid"])


@register_term("digit_segm")
def digit_segm(pred, batch, image_size):
    if "part_seg" not in batch:
        raise ValueError("loss term digit_segm needs the batch key 'part_seg' (a dataset with part segmentation, "
                         "e.g. two_hands or interhand built with --mano_dir); set its weight to 0 otherwise")
    t = _targets(pred, batch, image_size)
    if t["segm"].shape != pred.segm_logits.shape[:3]:
        raise ValueError(f"digit_segm: part_seg at half resolution is {t['segm'].shape[1:]}, the segmentation "
                         f"logits are {pred.segm_logits.shape[1:3]}")
    return segm_cross_entropy(pred.segm_logits, t["segm"], t["segm_valid"])


@register_term("digit_bone")
def digit_bone(pred, batch, image_size):
    t = _targets(pred, batch, image_size)
    return bone_l2(pred.joints25d, t["joints25d"], t["joint_valid"])


def parents42() -> np.ndarray:
    """(40, 2) (child, parent) index pairs of both hands (for tests and drawing)."""
    pairs = [(i, p) for i, p in enumerate(PARENTS_21)]
    return np.asarray(pairs + [(i + 21, p + 21) for i, p in pairs])
