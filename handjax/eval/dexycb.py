"""DexYCB hand pose / mesh evaluation (dex-ycb-toolkit ``hpe_eval.py`` plus mesh errors).

Joints (..., 21, 3) in the DexYCB / manopth order (wrist first, handjax ``"manopth"``
joint order), vertices (..., 778, 3); units of the inputs (metres in handjax), summaries
in millimetres.

Per-sample values (:func:`dexycb_metrics`):

* ``abs_mpjpe``: mean joint error without alignment (toolkit "absolute");
* ``mpjpe``: root-relative, each joint set minus its own wrist (toolkit "root-relative");
* ``pa_mpjpe``: after a similarity Procrustes alignment of the prediction onto the ground
  truth (toolkit "procrustes": FreiHAND's ``align_w_scale``, reflections allowed as in
  ``handjax.eval.metrics``);
* ``mpvpe``: root-relative vertex error, each mesh minus its own wrist JOINT (given
  joints) as in IdHandMesh's ``root_relative_mpvpe``; ``pa_mpvpe``: vertices Procrustes
  aligned;
* ``{abs,rr,pa}_joint_errors`` (..., 21): per-joint errors for the PCK curves.

:class:`DexYCBEvaluator` accumulates them; its ``result()`` gives the means in mm and
the toolkit's AUCs (thresholds 0-50 mm, 100 steps, normalised): ``auc_abs``, ``auc_rr``,
``auc_pa``. The toolkit averages per joint then over joints; every joint of every
evaluated sample counts, so this equals the pooled mean used here. With ``average="batch"``
the ``*_mm`` means are IdHandMesh's means of per-batch means instead.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from handjax.eval.metrics import MetricAccumulator, auc, mpjpe, pa_errors, pck_curve, point_errors
from handjax.geometry import procrustes_align

ROOT = 0  # wrist in the manopth / DexYCB joint order
_ERROR_KEYS = {"abs_joint_errors": "auc_abs", "rr_joint_errors": "auc_rr", "pa_joint_errors": "auc_pa"}


def _check(name: str, arr, n: int) -> np.ndarray:
    arr = np.asarray(arr, np.float32)
    if arr.shape[-2:] != (n, 3):
        raise ValueError(f"{name}: expected (..., {n}, 3), got {arr.shape}")
    return arr


def dexycb_metrics(pred_joints, gt_joints, pred_verts=None, gt_verts=None) -> Dict[str, np.ndarray]:
    """Per-sample DexYCB metrics of a batch (see module docstring). Numpy outputs."""
    pj, gj = _check("pred_joints", pred_joints, 21), _check("gt_joints", gt_joints, 21)
    rr_pred, rr_gt = pj - pj[..., ROOT:ROOT + 1, :], gj - gj[..., ROOT:ROOT + 1, :]
    out = {
        "abs_mpjpe": mpjpe(pj, gj),
        "mpjpe": mpjpe(pj, gj, root=ROOT),
        "pa_mpjpe": np.mean(np.asarray(pa_errors(pj, gj)), axis=-1),
        "abs_joint_errors": point_errors(pj, gj),
        "rr_joint_errors": point_errors(rr_pred, rr_gt),
        "pa_joint_errors": pa_errors(pj, gj),
    }
    if (pred_verts is None) != (gt_verts is None):
        raise ValueError("dexycb_metrics: give both pred_verts and gt_verts, or neither")
    if pred_verts is not None:
        pv, gv = _check("pred_verts", pred_verts, 778), _check("gt_verts", gt_verts, 778)
        out["mpvpe"] = np.mean(point_errors(pv - pj[..., ROOT:ROOT + 1, :], gv - gj[..., ROOT:ROOT + 1, :]), -1)
        aligned = procrustes_align(pv, gv, allow_reflection=True)
        out["pa_mpvpe"] = np.mean(point_errors(aligned, gv), axis=-1)
    return {k: np.asarray(v) for k, v in out.items()}


def summarize_dexycb(per_sample: Dict[str, np.ndarray], unit_scale: float = 1000.0) -> Dict[str, float]:
    """Concatenated per-sample metrics -> means (``*_mm``) and the PCK AUCs (0-50 mm)."""
    res = {}
    thresholds = np.linspace(0.0, 50.0, 100) / unit_scale
    for key, value in per_sample.items():
        if key in _ERROR_KEYS:
            res[_ERROR_KEYS[key]] = auc(pck_curve(value, thresholds), thresholds)
        else:
            res[key + "_mm"] = float(np.mean(value) * unit_scale)
    return res


AVERAGES = ("sample", "batch")
_VERTEX_KEYS = ("mpvpe", "pa_mpvpe")


class DexYCBEvaluator(MetricAccumulator):
    """:class:`handjax.eval.MetricAccumulator` of :func:`dexycb_metrics` values.

    ``average="sample"``: every mean is over all evaluated samples (the toolkit's convention).
    ``average="batch"``: every ``*_mm`` mean is the mean of per-batch means, each batch's mean
    taken over its evaluated samples (batches without one are left out), as IdHandMesh's
    ``run_dex_ycb.py`` reports (batch 32, final partial batch kept): the number then depends on
    the evaluation batch size, which should be IdHandMesh's 32. The AUCs are always computed
    from the pooled per-joint errors (IdHandMesh reports none).
    """

    def __init__(self, unit_scale: float = 1000.0, average: str = "sample"):
        if average not in AVERAGES:
            raise ValueError(f"DexYCB average must be one of {AVERAGES}, got {average!r}")
        super().__init__()
        self.unit_scale, self.average = unit_scale, average
        self._batch_means: Dict[str, list] = {}

    def add_batch(self, pred_joints, gt_joints, pred_verts=None, gt_verts=None, valid: Optional[np.ndarray] = None,
                  has_verts: Optional[np.ndarray] = None):
        """One batch; ``valid`` (B,) False drops a sample (padding, no joint ground truth),
        ``has_verts`` (B,) False drops only its vertex metrics."""
        per = dexycb_metrics(pred_joints, gt_joints, pred_verts, gt_verts)
        n = len(per["mpjpe"])
        keep = np.ones(n, bool) if valid is None else np.asarray(valid, bool).reshape(n)
        keep_v = keep if has_verts is None else keep & np.asarray(has_verts, bool).reshape(n)
        for key, value in per.items():
            m = keep_v if key in _VERTEX_KEYS else keep
            self._parts.setdefault(key, []).append(value[m])
            if key not in _ERROR_KEYS and m.any():
                self._batch_means.setdefault(key, []).append(float(np.mean(value[m])))

    def result(self) -> dict:
        pooled = {k: np.concatenate(v) for k, v in self._parts.items()}
        res = summarize_dexycb({k: v for k, v in pooled.items() if len(v)}, self.unit_scale)
        for key, value in pooled.items():  # no evaluated sample (e.g. no vertex ground truth): NaN
            if not len(value):
                res[_ERROR_KEYS.get(key, key + "_mm")] = float("nan")
        if self.average == "batch":
            for key, means in self._batch_means.items():
                res[key + "_mm"] = float(np.mean(means) * self.unit_scale)
        return res
