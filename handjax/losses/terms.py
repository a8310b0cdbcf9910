"""Supervised loss terms by name, selected with weights from config.

Every term reads the hand-output contract (``handjax.models.hand_output.HandOutput``, joints
already in the dataset's order) and the batch (``data_pipelines.pipeline``'s format), and
returns a scalar averaged over the samples that carry the label (``has_<label>`` flags; absent
flags mean every sample has it):

==========  ============================================================  ===============
name        definition                                                    label flag
==========  ============================================================  ===============
joints2d    L1 of normalised crop coordinates ``2 u / S - 1``              has_joints2d
joints3d    L1 of root-relative joints (root = joint 0 of the order)      has_joints3d
vertices    L1 of vertices relative to joint 0 (needs the mesh)           has_vertices
wrist_pose  MSE of the global-orientation rotation matrix                 has_mano
hand_pose   MSE of the 15 finger rotation matrices                        has_mano
betas       MSE of the shape parameters                                   has_betas, else
                                                                          has_mano
==========  ============================================================  ===============

ExPose's definitions and reductions (vchoutas/expose ``losses/losses.py`` and
``models/common/mano_loss_modules.py``, which TempCLR's training code started from), for
recipes whose published loss weights assume them: per-sample SUMS over joints / vertices /
coordinates / rotations, divided by the number of samples (the batch for ``expose_joints2d``,
whose missing labels count as zero-confidence keypoints as in ExPose; the samples carrying
the label for the others, as ExPose stacks only those):

===============  ==============================================================================
expose_joints2d  ``sum |x_n - x_n_gt|`` of normalised crop coordinates (KeypointLoss, L1)
expose_joints3d  ``sum |j - j_gt|`` of wrist-centred joints (KeypointLoss, L1)
expose_vertices  ``sum |A(v) - v_gt|`` with A the least-squares similarity (scale, proper rotation,
                 translation) of the predicted onto the GT vertices (``use_alignment``,
                 RotationTranslationAlignment; weighted-l1)
expose_wrist_pose  geodesic angle ``acos(clamp((tr(R^T R_gt) - 1) / 2, -1 + 1e-7, 1 - 1e-7))``
                 (RotationDistance)
expose_hand_pose the same angle summed over the 15 finger rotations
expose_betas     ``sum (b - b_gt)^2`` (WeightedMSELoss)
===============  ==============================================================================

The betas terms read ``has_betas`` where the batch carries it: FreiHAND without the MANO
file's hand mean has its finger poses masked (``has_mano`` False) but its betas valid.

Systems register their own terms (``@register_term("name")``) next to these. ``loss_from_weights``
sums the terms with a non-zero weight; an unknown weight name is an error that names it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Tuple

import jax.numpy as jnp

from handjax.geometry import axis_angle_to_matrix, procrustes_align
from handjax.losses.supervised import keypoint_l1, param_mse, root_relative


@dataclasses.dataclass(frozen=True)
class Term:
    """fn(pred, batch, image_size) -> scalar; ``needs_mesh``: the prediction must carry vertices."""

    fn: Callable
    needs_mesh: bool = False


TERMS: Dict[str, Term] = {}


def register_term(name: str, needs_mesh: bool = False):
    def wrap(fn):
        if name in TERMS:
            raise ValueError(f"loss term {name!r} is registered twice")
        TERMS[name] = Term(fn, needs_mesh)
        return fn

    return wrap


def _valid(batch, label: str):
    flag = batch.get("has_" + label)
    n = next(iter(batch.values())).shape[0]
    return jnp.ones(n, bool) if flag is None else flag


def _gt_rotmats(batch):
    return axis_angle_to_matrix(batch["mano_pose"].reshape(-1, 16, 3))


@register_term("joints2d")
def joints2d_l1(pred, batch, image_size):
    gt = 2.0 * batch["joints2d"] / image_size - 1.0
    return keypoint_l1(pred.normalized_joints2d(image_size), gt, _valid(batch, "joints2d"))


@register_term("joints3d")
def joints3d_l1(pred, batch, image_size):
    del image_size
    return keypoint_l1(root_relative(pred.joints, pred.joints), root_relative(batch["joints3d"], batch["joints3d"]),
                       _valid(batch, "joints3d"))


@register_term("vertices", needs_mesh=True)
def vertices_l1(pred, batch, image_size):
    del image_size
    return keypoint_l1(root_relative(pred.vertices, pred.joints), root_relative(batch["vertices"], batch["joints3d"]),
                       _valid(batch, "vertices"))


# Separate wrist and finger terms (TempCLR's MANOLossModule: wrist_pose, hand_pose, betas); in one 16-joint
# mean the global orientation would carry only 1/16 of the weight.
@register_term("wrist_pose")
def wrist_pose_mse(pred, batch, image_size):
    del image_size
    return param_mse(pred.rotmats[:, :1], _gt_rotmats(batch)[:, :1], _valid(batch, "mano"))


@register_term("hand_pose")
def hand_pose_mse(pred, batch, image_size):
    del image_size
    return param_mse(pred.rotmats[:, 1:], _gt_rotmats(batch)[:, 1:], _valid(batch, "mano"))


def _betas_valid(batch):
    """``has_betas`` when the batch carries it (betas valid while the pose is masked), else ``has_mano``."""
    return _valid(batch, "betas") if "has_betas" in batch else _valid(batch, "mano")


@register_term("betas")
def betas_mse(pred, batch, image_size):
    del image_size
    return param_mse(pred.betas, batch["betas"], _betas_valid(batch))


# ----------------------------------------------------------------------------- ExPose's definitions
GEODESIC_EPS = 1e-7  # ExPose RotationDistance's clamp margin


def _per_label_mean(per_sample: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """sum over the valid samples / their number (ExPose stacks only the samples with the label)."""
    per_sample = jnp.where(valid, per_sample, 0.0)  # an unlabelled sample's NaN must not leak through 0 * NaN
    return jnp.sum(per_sample) / jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def geodesic_angle(r: jnp.ndarray, r_gt: jnp.ndarray, eps: float = GEODESIC_EPS) -> jnp.ndarray:
    """Angle (radians) of ``r^T r_gt``: acos of (trace - 1) / 2 clamped to [-1 + eps, 1 - eps]. (..., 3, 3) -> (...)."""
    cos = (jnp.einsum("...ij,...ij->...", r, r_gt) - 1.0) * 0.5
    return jnp.arccos(jnp.clip(cos, -1.0 + eps, 1.0 - eps))


def _spread_points(n: int) -> jnp.ndarray:
    """(n, 3) fixed points with three distinct spreads (a well-conditioned SVD)."""
    k = jnp.arange(n, dtype=jnp.float32)
    return jnp.stack([jnp.cos(k), 0.5 * jnp.sin(2.0 * k), k / max(n, 1) - 0.5], axis=-1)


def similarity_aligned(points: jnp.ndarray, target: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """``points`` (B, N, 3) after the least-squares similarity onto ``target`` (gradients flow through it).

    Samples that are not ``valid`` align fixed points onto themselves instead (their result is
    masked by the caller): a zero-filled target or degenerate prediction never enters the SVD,
    whose backward pass would otherwise be NaN even where masked.
    """
    v = valid[:, None, None]
    spread = _spread_points(points.shape[-2])
    return procrustes_align(jnp.where(v, points, spread), jnp.where(v, target, spread))


@register_term("expose_joints2d")
def expose_joints2d(pred, batch, image_size):
    gt = 2.0 * batch["joints2d"] / image_size - 1.0
    per_sample = jnp.sum(jnp.abs(pred.normalized_joints2d(image_size) - gt), axis=(-2, -1))
    return jnp.sum(jnp.where(_valid(batch, "joints2d"), per_sample, 0.0)) / per_sample.shape[0]


@register_term("expose_joints3d")
def expose_joints3d(pred, batch, image_size):
    del image_size
    diff = root_relative(pred.joints, pred.joints) - root_relative(batch["joints3d"], batch["joints3d"])
    return _per_label_mean(jnp.sum(jnp.abs(diff), axis=(-2, -1)), _valid(batch, "joints3d"))


@register_term("expose_vertices", needs_mesh=True)
def expose_vertices(pred, batch, image_size):
    del image_size
    valid = _valid(batch, "vertices")
    aligned = similarity_aligned(pred.vertices, batch["vertices"], valid)
    return _per_label_mean(jnp.sum(jnp.abs(aligned - batch["vertices"]), axis=(-2, -1)), valid)


@register_term("expose_wrist_pose")
def expose_wrist_pose(pred, batch, image_size):
    del image_size
    angles = geodesic_angle(pred.rotmats[:, :1], _gt_rotmats(batch)[:, :1])
    return _per_label_mean(jnp.sum(angles, axis=-1), _valid(batch, "mano"))


@register_term("expose_hand_pose")
def expose_hand_pose(pred, batch, image_size):
    del image_size
    angles = geodesic_angle(pred.rotmats[:, 1:], _gt_rotmats(batch)[:, 1:])
    return _per_label_mean(jnp.sum(angles, axis=-1), _valid(batch, "mano"))


@register_term("expose_betas")
def expose_betas(pred, batch, image_size):
    del image_size
    return _per_label_mean(jnp.sum(jnp.square(pred.betas - batch["betas"]), axis=-1), _betas_valid(batch))


def check_weights(weights: Mapping[str, float], allowed, config_key: str) -> None:
    """Raise ValueError naming ``config_key.<name>`` for a weight that names no (allowed) term."""
    for name in weights:
        if name not in allowed:
            raise ValueError(f"config key {config_key}.{name}: no such loss term; known terms: {', '.join(allowed)}")


def needs_mesh(weights: Mapping[str, float]) -> bool:
    """Whether a weighted term needs the predicted vertices."""
    return any(n in TERMS and TERMS[n].needs_mesh and float(w) for n, w in weights.items())


def loss_from_weights(pred, batch, weights: Mapping[str, float], image_size: int) -> Tuple[jnp.ndarray, dict]:
    """sum_k w_k term_k(pred, batch) over the terms with a non-zero weight; returns (total, {name: term})."""
    check_weights(weights, tuple(TERMS), "loss_weights")
    total, used = 0.0, {}
    for name, w in weights.items():
        if float(w):
            value = TERMS[name].fn(pred, batch, image_size)
            total = total + float(w) * value
            used[name] = value
    return total, used
