"""Hand-object evaluation as handobjectconsist reports it (``meshreg/netscripts/evaluate.py``,
libyana's ``EvalUtil`` and ``AverageMeter``).

Units of the inputs (metres in handjax); summaries in millimetres (``*_mm``), AUCs unitless.

* ``joints3d``: per-joint Euclidean error of the camera-space hand joints, mean over every
  joint of every evaluated sample (``joints3d_epe_mm``); PCK AUC over [0, 0.5] m in 20 steps,
  normalised (``joints3d_auc``).
* ``joints3d_cent``: the same after subtracting joint ``center`` from prediction and ground
  truth separately (default 9, the middle-finger MCP in handobjectconsist's manopth joint
  order; give the index of that joint in the dataset's order), all joints counted (the centre
  with error 0), AUC over [0, 0.2] m in 20 steps (``joints3d_cent_epe_mm``, ``joints3d_cent_auc``).
  ``EvalUtil`` averages per joint over samples then over joints, and its AUC is the mean of
  per-joint AUCs; every joint of every evaluated sample counts, so both equal the pooled values.
* ``objverts3d``: mean camera-space distance between predicted and ground-truth object
  vertices (``objverts3d_mepe_mm``); per sample the mean over its vertices (those marked by
  ``object_vertex_valid`` when given: padding of objects with fewer vertices), then either the
  mean of per-batch means (``average="batch"``, upstream's ``AverageMeter`` updated once per
  batch; batches without an evaluated object are left out) or the mean over samples
  (``average="sample"``). Upstream's collate instead tiles smaller objects' vertices; that
  weighting is not reproduced.

Samples count when ``valid`` (not padding) and, for the hand, ``has_joints`` / for the object
``has_object``; a metric without any sample is NaN. ``num_hands`` / ``num_objects`` count them.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from handjax.eval.metrics import auc, pck_curve

CENTER = 9
JOINTS_THRESHOLDS = np.linspace(0.0, 0.5, 20)  # metres
CENT_THRESHOLDS = np.linspace(0.0, 0.2, 20)
AVERAGES = ("batch", "sample")
KEYS = ("joints3d_epe_mm", "joints3d_auc", "joints3d_cent_epe_mm", "joints3d_cent_auc", "objverts3d_mepe_mm",
        "num_hands", "num_objects")


def _points(name: str, arr) -> np.ndarray:
    arr = np.asarray(arr, np.float64)
    if arr.ndim < 2 or arr.shape[-1] != 3:
        raise ValueError(f"{name}: expected (..., N, 3) points, got {arr.shape}")
    return arr


def hand_joint_errors(pred_joints, gt_joints, center: int = CENTER) -> Dict[str, np.ndarray]:
    """(S, J, 3) camera-space joints -> ``joints3d`` (S, J) errors and ``joints3d_cent`` (S, J)
    errors of the joints centred on joint ``center``."""
    pred, gt = _points("pred_joints", pred_joints), _points("gt_joints", gt_joints)
    if pred.shape != gt.shape:
        raise ValueError(f"hand joints: prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    if not 0 <= center < pred.shape[-2]:
        raise ValueError(f"hand_object center joint {center} outside 0..{pred.shape[-2] - 1}")
    cent_pred = pred - pred[..., center: center + 1, :]
    cent_gt = gt - gt[..., center: center + 1, :]
    return {"joints3d": np.linalg.norm(pred - gt, axis=-1),
            "joints3d_cent": np.linalg.norm(cent_pred - cent_gt, axis=-1)}


def object_vertex_errors(pred_verts, gt_verts, vertex_valid=None) -> np.ndarray:
    """Mean per-vertex distance (S,) of (S, V, 3) object vertices, over the vertices marked by
    ``vertex_valid`` (S, V) when given (a sample without one gives NaN)."""
    pred, gt = _points("pred object vertices", pred_verts), _points("gt object vertices", gt_verts)
    if pred.shape != gt.shape:
        raise ValueError(f"object vertices: prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    dist = np.linalg.norm(pred - gt, axis=-1)
    if vertex_valid is None:
        return dist.mean(-1)
    vv = np.asarray(vertex_valid).astype(bool)
    if vv.shape != dist.shape:
        raise ValueError(f"object_vertex_valid: expected {dist.shape}, got {vv.shape}")
    n = vv.sum(-1)
    return np.where(n > 0, np.where(vv, dist, 0.0).sum(-1) / np.maximum(n, 1), np.nan)


class HandObjectEvaluator:
    """Accumulates the hand-object metrics over batches (host side); see the module docstring."""

    def __init__(self, center: int = CENTER, average: str = "batch", unit_scale: float = 1000.0):
        if average not in AVERAGES:
            raise ValueError(f"hand_object average must be one of {AVERAGES}, got {average!r}")
        self.center, self.average, self.unit_scale = int(center), average, unit_scale
        self._joints: Dict[str, list] = {"joints3d": [], "joints3d_cent": []}
        self._objects: list = []
        self._object_batch_means: list = []

    def add(self, pred_joints=None, gt_joints=None, *, pred_object=None, gt_object=None, has_joints=None,
            has_object=None, object_vertex_valid=None, valid: Optional[np.ndarray] = None) -> None:
        if (pred_joints is None) != (gt_joints is None):
            raise ValueError("HandObjectEvaluator.add: give both pred_joints and gt_joints, or neither")
        if (pred_object is None) != (gt_object is None):
            raise ValueError("HandObjectEvaluator.add: give both pred_object and gt_object, or neither")
        if pred_joints is not None:
            err = hand_joint_errors(pred_joints, gt_joints, self.center)
            keep = _mask(len(err["joints3d"]), valid, has_joints)
            for key, value in err.items():
                self._joints[key].append(value[keep])
        if pred_object is not None:
            per = object_vertex_errors(pred_object, gt_object, object_vertex_valid)
            keep = _mask(len(per), valid, has_object)
            if np.isnan(per[keep]).any():
                raise ValueError(f"hand_object: samples {np.flatnonzero(keep & np.isnan(per)).tolist()} of the batch "
                                 "have an object (has_object) but no valid object vertex (object_vertex_valid)")
            self._objects.append(per[keep])
            if keep.any():
                self._object_batch_means.append(float(per[keep].mean()))

    def result(self) -> Dict[str, float]:
        out: Dict[str, float] = {k: float("nan") for k in KEYS}
        for key, thresholds in (("joints3d", JOINTS_THRESHOLDS), ("joints3d_cent", CENT_THRESHOLDS)):
            errors = np.concatenate(self._joints[key]) if self._joints[key] else np.zeros((0, 0))
            if len(errors):
                out[f"{key}_epe_mm"] = float(errors.mean() * self.unit_scale)
                out[f"{key}_auc"] = auc(pck_curve(errors, thresholds), thresholds)
        objects = np.concatenate(self._objects) if self._objects else np.zeros(0)
        if len(objects):
            mean = np.mean(self._object_batch_means) if self.average == "batch" else objects.mean()
            out["objverts3d_mepe_mm"] = float(mean * self.unit_scale)
        out["num_hands"] = int(sum(len(x) for x in self._joints["joints3d"]))
        out["num_objects"] = int(len(objects))
        return out


def _mask(n: int, *flags) -> np.ndarray:
    keep = np.ones(n, bool)
    for flag in flags:
        if flag is not None:
            flag = np.asarray(flag).astype(bool)
            if flag.shape != (n,):
                raise ValueError(f"hand_object: expected ({n},) sample flags, got {flag.shape}")
            keep &= flag
    return keep
