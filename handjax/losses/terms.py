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
betas       MSE of the shape parameters                                   has_mano
==========  ============================================================  ===============

Systems register their own terms (``@register_term("name")``) next to these. ``loss_from_weights``
sums the terms with a non-zero weight; an unknown weight name is an error that names it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Tuple

import jax.numpy as jnp

from handjax.geometry import axis_angle_to_matrix
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


@register_term("betas")
def betas_mse(pred, batch, image_size):
    del image_size
    return param_mse(pred.betas, batch["betas"], _valid(batch, "mano"))


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
