"""3D hand pose/mesh metrics with FreiHAND's semantics.

Per-sample values; average over samples with ``summarize``. Procrustes is a
similarity (scale included) aligning the prediction onto the ground truth,
reflection allowed as scipy.orthogonal_procrustes in the official scripts.
Units follow the inputs (metres in handjax); thresholds are in the same units.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from handjax.geometry import procrustes_align

PCK_THRESHOLDS = np.linspace(0.0, 0.05, 100)  # FreiHAND eval: 0..50 mm, 100 steps


def point_errors(pred: jnp.ndarray, gt: jnp.ndarray) -> jnp.ndarray:
    """Euclidean error per point. (..., N, 3) -> (..., N)."""
    return jnp.linalg.norm(pred - gt, axis=-1)


def mpjpe(pred, gt, root: int | None = None):
    """Mean per-joint error per sample; root-relative when ``root`` is given."""
    if root is not None:
        pred = pred - pred[..., root: root + 1, :]
        gt = gt - gt[..., root: root + 1, :]
    return jnp.mean(point_errors(pred, gt), axis=-1)


def pa_errors(pred, gt):
    """Per-point errors after Procrustes alignment of pred onto gt. (..., N)."""
    return point_errors(procrustes_align(pred, gt, allow_reflection=True), gt)


def pa_mpjpe(pred, gt):
    return jnp.mean(pa_errors(pred, gt), axis=-1)


def f_score(pred, gt, threshold: float):
    """F-score between point sets (per sample): harmonic mean of precision
    (pred points within ``threshold`` of some gt point) and recall (vice versa)."""
    d = jnp.linalg.norm(pred[..., :, None, :] - gt[..., None, :, :], axis=-1)  # (..., Np, Ng)
    precision = jnp.mean(jnp.min(d, axis=-1) < threshold, axis=-1)
    recall = jnp.mean(jnp.min(d, axis=-2) < threshold, axis=-1)
    return jnp.where(precision + recall > 0, 2 * precision * recall / jnp.maximum(precision + recall, 1e-12), 0.0)


def pck_curve(errors: np.ndarray, thresholds=PCK_THRESHOLDS) -> np.ndarray:
    """Fraction of points with error <= threshold, per threshold; errors (S, N) over all samples."""
    errors = np.asarray(errors)
    return np.array([np.mean(errors <= t) for t in thresholds])


def auc(curve: np.ndarray, thresholds=PCK_THRESHOLDS) -> float:
    """Area under the PCK curve normalised by the threshold range (FreiHAND calc_auc)."""
    return float(np.trapezoid(curve, thresholds) / (thresholds[-1] - thresholds[0]))


def hand_metrics(pred_joints, gt_joints, pred_verts=None, gt_verts=None) -> dict:
    """Per-sample metrics of a batch (numpy arrays, metres).

    mpjpe: root(0)-relative; pa_mpjpe, pa_mpvpe: after Procrustes;
    f5/f15: F-score at 5 mm / 15 mm on Procrustes-aligned vertices (joints if no
    vertices); pa_joint_errors: per-joint aligned errors, for the AUC.
    """
    out = {
        "mpjpe": mpjpe(pred_joints, gt_joints, root=0),
        "pa_mpjpe": pa_mpjpe(pred_joints, gt_joints),
        "pa_joint_errors": pa_errors(pred_joints, gt_joints),
    }
    if pred_verts is not None and gt_verts is not None:
        aligned = procrustes_align(pred_verts, gt_verts, allow_reflection=True)
        out["pa_mpvpe"] = jnp.mean(point_errors(aligned, gt_verts), axis=-1)
        pts, ref = aligned, gt_verts
    else:
        pts, ref = procrustes_align(pred_joints, gt_joints, allow_reflection=True), gt_joints
    out["f5"] = f_score(pts, ref, 0.005)
    out["f15"] = f_score(pts, ref, 0.015)
    return {k: np.asarray(v) for k, v in out.items()}


def summarize(per_sample: dict) -> dict:
    """Concatenated per-sample metrics -> means (mm for distances) and the PCK AUC."""
    res = {}
    for k, v in per_sample.items():
        if k == "pa_joint_errors":
            res["auc_pa"] = auc(pck_curve(v))
        elif k.startswith("f"):
            res[k] = float(np.mean(v))
        else:
            res[k + "_mm"] = float(np.mean(v) * 1000.0)
    return res


class MetricAccumulator:
    """Collects per-sample metric arrays over batches (host side)."""

    def __init__(self):
        self._parts: dict = {}

    def add(self, per_sample: dict, valid=None):
        for k, v in per_sample.items():
            v = np.asarray(v)
            if valid is not None:
                v = v[np.asarray(valid, bool)]
            self._parts.setdefault(k, []).append(v)

    def result(self) -> dict:
        return summarize({k: np.concatenate(v) for k, v in self._parts.items()})

    @property
    def count(self) -> int:
        first = next(iter(self._parts.values()), [])
        return int(sum(len(x) for x in first))
