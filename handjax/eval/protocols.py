"""Benchmark protocols of FreiHAND and HO3D: local evaluation and CodaLab ``pred.json``.

Local evaluation (against the public ground truth) uses the official metrics of
FreiHAND's ``eval.py`` (which HO3D's scorer re-purposes), computed with
:mod:`handjax.eval.metrics`:

* ``pa_mpjpe_mm`` / ``pa_mpvpe_mm``: mean over samples of the mean per-joint / per-vertex
  error after Procrustes alignment with scale (reflections allowed, as scipy's
  ``orthogonal_procrustes`` in the official scripts), millimetres;
* ``f5`` / ``f15``: F-score of the aligned vertices at 5 mm / 15 mm, mean over samples;
* ``auc_pa``: area under the PCK curve of the aligned joint errors over 0-50 mm
  (100 thresholds, normalised), ``auc_pa_mesh`` the same for the vertices;
* ``mpjpe_mm``: root(wrist)-relative mean joint error, no alignment (not an official
  number, useful as a sanity check);
* ``num_joints`` / ``num_vertices``: samples that had ground truth for each.

With ``protocol="ho3d"`` (:class:`HandEvaluator`) the report ALSO holds the numbers of HO3D's
official ``eval.py`` as its ``scores.txt`` names them, in millimetres where scores.txt has cm
(``*_mm`` keys, see :data:`HO3D_KEYS`):

* ``xyz_mean3d_mm`` / ``xyz_auc3d``: joint error WITHOUT any alignment (camera space), AUC 0-50 mm;
* ``xyz_procrustes_al_mean3d_mm`` / ``xyz_procrustes_al_auc3d``: Procrustes-aligned (the same
  values as ``pa_mpjpe_mm`` / ``auc_pa``);
* ``xyz_scale_trans_al_mean3d_mm`` / ``xyz_scale_trans_al_auc3d``: after :func:`align_sc_tr`;
* ``mesh_mean3d_mm`` / ``mesh_auc3d``: vertex error without alignment; ``mesh_al_mean3d_mm`` /
  ``mesh_al_auc3d`` Procrustes-aligned (= ``pa_mpvpe_mm`` / ``auc_pa_mesh``);
* ``f_score_5`` / ``f_score_15``: F-scores of the UNaligned vertices; ``f_al_score_5`` /
  ``f_al_score_15`` of the aligned ones (= ``f5`` / ``f15``).

The official script averages each keypoint's error over samples, then over keypoints; every
keypoint of every sample counts there, so that equals the pooled mean used here.

Samples without ground truth (``has_joints3d`` / ``has_vertices`` False, e.g. HO3D's
evaluation split in releases without its GT) are left out of the corresponding metrics;
a metric with no sample at all is NaN. Predictions and ground truth are metres in the
OpenCV camera frame (x right, y down, z forward), joints in the dataset's convention
('freihand' or 'ho3d' in :mod:`handjax.mano.conventions`).

``pred.json`` (CodaLab, TempCLR ``evaluation.py``): ``json.dump([xyz_list, verts_list])``
with xyz N x 21 x 3 in the dataset's joint order and verts N x 778 x 3 in MANO vertex
order, metres, every value rounded to 5 decimals, samples in the official order
(FreiHAND: index order of ``evaluation_*.json``; HO3D: the line order of
``evaluation.txt``). FreiHAND is written in the OpenCV frame as predicted; HO3D expects
OpenGL, so y and z are negated (:func:`opengl_to_opencv`, its own inverse).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from handjax.eval import metrics
from handjax.geometry import procrustes_align
from handjax.geometry.frames import opengl_to_opencv, opengl_to_opencv_rotation  # noqa: F401 (re-exported)

DATASETS = ("freihand", "ho3d")
METRIC_KEYS = ("mpjpe_mm", "pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "auc_pa", "auc_pa_mesh", "num_joints",
               "num_vertices")
DECIMALS = 5
NUM_VERTICES = 778
PROTOCOLS = ("", "freihand", "ho3d")
HO3D_KEYS = ("xyz_mean3d_mm", "xyz_auc3d", "xyz_procrustes_al_mean3d_mm", "xyz_procrustes_al_auc3d",
             "xyz_scale_trans_al_mean3d_mm", "xyz_scale_trans_al_auc3d", "mesh_mean3d_mm", "mesh_auc3d",
             "mesh_al_mean3d_mm", "mesh_al_auc3d", "f_score_5", "f_al_score_5", "f_score_15", "f_al_score_15")
HO3D_SCALE_JOINT = 4  # HO3D joint order (MANO tree): 0 wrist, 4 middle-finger MCP (middle1)


# coordinate frames: handjax.geometry.frames (opengl_to_opencv is re-exported here)
# ----------------------------------------------------------------------------- HO3D scale + translation alignment
def align_sc_tr(pred: np.ndarray, gt: np.ndarray, root: int = 0, scale_joint: int = HO3D_SCALE_JOINT) -> np.ndarray:
    """HO3D's scale-and-translation alignment (its ``eval.py`` ``align_sc_tr``) of ``pred`` onto ``gt``.

    pred, gt: (..., J, 3) joints in HO3D's order; returns the aligned prediction (..., J, 3).
    Rule, per sample: with ``l_p = ||pred[scale_joint] - pred[root]||`` and
    ``l_g = ||gt[scale_joint] - gt[root]||`` (HO3D: joint 4, the middle-finger MCP, and joint 0,
    the wrist), the prediction is multiplied by ``l_g / l_p`` -- by ``l_g`` alone when
    ``l_p == 0``, as the official code divides by ``l_p`` only when it is > 0 -- and then
    translated so that its ``root`` joint lands on the ground truth's:
    ``aligned = s * (pred - pred[root]) + gt[root]``. No rotation. Scaling and translating
    commute with HO3D's OpenGL axis flip, so the frame (OpenGL / OpenCV) does not matter.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim < 2 or pred.shape[-1] != 3:
        raise ValueError(f"align_sc_tr: pred and gt must both be (..., J, 3), got {pred.shape} and {gt.shape}")
    j = pred.shape[-2]
    if not (0 <= root < j and 0 <= scale_joint < j):
        raise ValueError(f"align_sc_tr: root {root} / scale_joint {scale_joint} outside 0..{j - 1}")
    len_pred = np.linalg.norm(pred[..., scale_joint, :] - pred[..., root, :], axis=-1)
    len_gt = np.linalg.norm(gt[..., scale_joint, :] - gt[..., root, :], axis=-1)
    scale = len_gt / np.where(len_pred > 0, len_pred, 1.0)
    return scale[..., None, None] * (pred - pred[..., root: root + 1, :]) + gt[..., root: root + 1, :]


# ----------------------------------------------------------------------------- metrics
def _nan_summary() -> Dict[str, float]:
    return {k: float("nan") for k in METRIC_KEYS}


def joint_metrics(pred_joints: np.ndarray, gt_joints: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-sample joint metrics (S,) plus per-joint aligned errors (S, 21); metres."""
    per = metrics.hand_metrics(pred_joints, gt_joints)
    return {k: per[k] for k in ("mpjpe", "pa_mpjpe", "pa_joint_errors")}


def vertex_metrics(pred_verts: np.ndarray, gt_verts: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-sample vertex metrics: pa_mpvpe (S,), f5 / f15 (S,) on the aligned vertices and the
    per-vertex aligned errors (S, V); metres."""
    aligned = procrustes_align(pred_verts, gt_verts, allow_reflection=True)
    errors = np.asarray(metrics.point_errors(aligned, gt_verts))
    return {"pa_mpvpe": errors.mean(-1), "pa_vertex_errors": errors,
            "f5": np.asarray(metrics.f_score(aligned, gt_verts, 0.005)),
            "f15": np.asarray(metrics.f_score(aligned, gt_verts, 0.015))}


def ho3d_joint_metrics(pred_joints: np.ndarray, gt_joints: np.ndarray) -> Dict[str, np.ndarray]:
    """HO3D's extra per-joint errors (S, 21), metres: unaligned (``abs_joint_errors``) and after
    :func:`align_sc_tr` (``sc_tr_joint_errors``). Joints in HO3D's order."""
    pred, gt = np.asarray(pred_joints, np.float64), np.asarray(gt_joints, np.float64)
    return {"abs_joint_errors": np.linalg.norm(pred - gt, axis=-1),
            "sc_tr_joint_errors": np.linalg.norm(align_sc_tr(pred, gt) - gt, axis=-1)}


def ho3d_vertex_metrics(pred_verts: np.ndarray, gt_verts: np.ndarray) -> Dict[str, np.ndarray]:
    """HO3D's extra vertex metrics: unaligned per-vertex errors (S, V) and F-scores (S,) at
    5 / 15 mm of the unaligned vertices; metres."""
    pv, gv = np.asarray(pred_verts, np.float32), np.asarray(gt_verts, np.float32)
    return {"abs_vertex_errors": np.linalg.norm(pv - gv, axis=-1),
            "f5_unaligned": np.asarray(metrics.f_score(pv, gv, 0.005)),
            "f15_unaligned": np.asarray(metrics.f_score(pv, gv, 0.015))}


def _ho3d_summary(per_sample: Mapping[str, np.ndarray], out: Dict[str, float]) -> Dict[str, float]:
    """scores.txt's numbers (mm instead of cm) from the per-sample arrays; NaN without samples."""
    res = {k: float("nan") for k in HO3D_KEYS}
    for key, name in (("abs_joint_errors", "xyz_mean3d"), ("sc_tr_joint_errors", "xyz_scale_trans_al_mean3d"),
                      ("abs_vertex_errors", "mesh_mean3d")):
        if key in per_sample and len(per_sample[key]):
            res[name + "_mm"] = float(np.mean(per_sample[key]) * 1000.0)
            res[name.replace("mean3d", "auc3d")] = metrics.auc(metrics.pck_curve(per_sample[key]))
    for t in (5, 15):
        if f"f{t}_unaligned" in per_sample and len(per_sample[f"f{t}_unaligned"]):
            res[f"f_score_{t}"] = float(np.mean(per_sample[f"f{t}_unaligned"]))
        res[f"f_al_score_{t}"] = out[f"f{t}"]
    res["xyz_procrustes_al_mean3d_mm"], res["xyz_procrustes_al_auc3d"] = out["pa_mpjpe_mm"], out["auc_pa"]
    res["mesh_al_mean3d_mm"], res["mesh_al_auc3d"] = out["pa_mpvpe_mm"], out["auc_pa_mesh"]
    return res


def summarize(per_sample: Mapping[str, np.ndarray], protocol: str = "") -> Dict[str, float]:
    """Concatenated per-sample metrics -> the protocol's numbers (see module docstring); with
    ``protocol="ho3d"`` also HO3D's official scores (:data:`HO3D_KEYS`)."""
    _check_protocol(protocol)
    out = _nan_summary()
    if "pa_mpjpe" in per_sample and len(per_sample["pa_mpjpe"]):
        out["mpjpe_mm"] = float(np.mean(per_sample["mpjpe"]) * 1000.0)
        out["pa_mpjpe_mm"] = float(np.mean(per_sample["pa_mpjpe"]) * 1000.0)
        out["auc_pa"] = metrics.auc(metrics.pck_curve(per_sample["pa_joint_errors"]))
    if "pa_mpvpe" in per_sample and len(per_sample["pa_mpvpe"]):
        out["pa_mpvpe_mm"] = float(np.mean(per_sample["pa_mpvpe"]) * 1000.0)
        out["f5"] = float(np.mean(per_sample["f5"]))
        out["f15"] = float(np.mean(per_sample["f15"]))
        out["auc_pa_mesh"] = metrics.auc(metrics.pck_curve(per_sample["pa_vertex_errors"]))
    out["num_joints"] = int(len(per_sample.get("pa_mpjpe", ())))
    out["num_vertices"] = int(len(per_sample.get("pa_mpvpe", ())))
    if protocol == "ho3d":
        out.update(_ho3d_summary(per_sample, out))
    return out


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; known: {list(PROTOCOLS)}")
    return protocol


def _mask(n: int, *flags) -> np.ndarray:
    keep = np.ones(n, bool)
    for flag in flags:
        if flag is not None:
            keep &= np.asarray(flag, bool).reshape(n)
    return keep


class HandEvaluator:
    """Accumulates protocol metrics over batches (host side, numpy).

    ``add(pred_joints, pred_verts, gt_joints, gt_verts, has_joints=None, has_verts=None,
    valid=None)``: (B, 21, 3) / (B, 778, 3) arrays; the flags (B,) bool leave samples out
    (``valid`` False: padding; ``has_*`` False: no ground truth). ``add_batch`` reads the
    ground truth and flags from a pipeline batch (keys joints3d, vertices, has_joints3d,
    has_vertices, valid; absent flags mean True). ``result()`` -> :func:`summarize`.
    ``protocol``: "" or "freihand" (the same numbers) or "ho3d" (adds HO3D's official scores,
    joints in HO3D's order).
    """

    def __init__(self, protocol: str = ""):
        self.protocol = _check_protocol(protocol)
        self._parts: Dict[str, list] = {}

    def _extend(self, values: Mapping[str, np.ndarray]):
        for key, value in values.items():
            self._parts.setdefault(key, []).append(np.asarray(value))

    def add(self, pred_joints, pred_verts, gt_joints, gt_verts, has_joints=None, has_verts=None, valid=None):
        pred_joints, gt_joints = np.asarray(pred_joints, np.float32), np.asarray(gt_joints, np.float32)
        n = len(pred_joints)
        joints = _mask(n, valid, has_joints)
        if joints.any():
            self._extend(joint_metrics(pred_joints[joints], gt_joints[joints]))
            if self.protocol == "ho3d":
                self._extend(ho3d_joint_metrics(pred_joints[joints], gt_joints[joints]))
        if pred_verts is None or gt_verts is None:
            return
        verts = _mask(n, valid, has_verts)
        if verts.any():
            pv, gv = np.asarray(pred_verts, np.float32)[verts], np.asarray(gt_verts, np.float32)[verts]
            self._extend(vertex_metrics(pv, gv))
            if self.protocol == "ho3d":
                self._extend(ho3d_vertex_metrics(pv, gv))

    def add_batch(self, pred_joints, pred_verts, batch: Mapping[str, np.ndarray]):
        self.add(pred_joints, pred_verts, batch["joints3d"], batch.get("vertices"), batch.get("has_joints3d"),
                 batch.get("has_vertices"), batch.get("valid"))

    def result(self) -> Dict[str, float]:
        return summarize({k: np.concatenate(v) for k, v in self._parts.items()}, self.protocol)


def evaluate(pred_joints, pred_verts, gt_joints, gt_verts, has_joints=None, has_verts=None,
             batch_size: int = 256, protocol: str = "") -> Dict[str, float]:
    """Protocol metrics of whole arrays (N, 21, 3) / (N, 778, 3), in chunks of ``batch_size``."""
    ev = HandEvaluator(protocol)
    n = len(pred_joints)
    if len(gt_joints) != n or (pred_verts is not None and (len(pred_verts) != n or len(gt_verts) != n)):
        raise ValueError(f"evaluate: predictions and ground truth differ in length ({n} predicted joints, "
                         f"{len(gt_joints)} ground-truth joints)")
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        ev.add(pred_joints[sl], None if pred_verts is None else pred_verts[sl], gt_joints[sl],
               None if gt_verts is None else gt_verts[sl],
               None if has_joints is None else np.asarray(has_joints)[sl],
               None if has_verts is None else np.asarray(has_verts)[sl])
    return ev.result()


# ----------------------------------------------------------------------------- predictions in official order
class PredictionCollector:
    """Collects predictions with their official evaluation index (``eval_index``, or ``record``)
    and returns them in that order; padded samples (``valid`` False) are dropped."""

    def __init__(self):
        self._index, self._joints, self._verts = [], [], []

    def add(self, pred_joints, pred_verts, index, valid=None):
        keep = _mask(len(pred_joints), valid)
        self._index.append(np.asarray(index, np.int64).reshape(-1)[keep])
        self._joints.append(np.asarray(pred_joints, np.float32)[keep])
        self._verts.append(np.asarray(pred_verts, np.float32)[keep])

    def add_batch(self, pred_joints, pred_verts, batch: Mapping[str, np.ndarray]):
        key = "eval_index" if "eval_index" in batch else "record"
        self.add(pred_joints, pred_verts, batch[key], batch.get("valid"))

    def arrays(self, expected: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(joints (N, 21, 3), verts (N, 778, 3)) sorted by index; the indices must be exactly
        0..N-1 (N = ``expected`` when given)."""
        if not self._index:
            raise ValueError("PredictionCollector: no predictions were added")
        index = np.concatenate(self._index)
        n = len(index) if expected is None else int(expected)
        order = np.argsort(index, kind="stable")
        if len(index) != n or not np.array_equal(index[order], np.arange(n)):
            missing = np.setdiff1d(np.arange(n), index)
            dup = len(index) - len(np.unique(index))
            raise ValueError(f"PredictionCollector: expected one prediction for each evaluation index 0..{n - 1}; "
                             f"{len(missing)} missing (first {missing[:10].tolist()}), {dup} duplicated, "
                             f"{len(index)} given")
        return np.concatenate(self._joints)[order], np.concatenate(self._verts)[order]


# ----------------------------------------------------------------------------- pred.json
@dataclasses.dataclass(frozen=True)
class PredFormat:
    """CodaLab submission format: joint convention, whether y/z are negated (OpenGL) and the
    official number of evaluation samples (None: not checked)."""

    dataset: str
    joint_convention: str
    opengl: bool
    num_samples: Optional[int]


PRED_FORMATS = {
    "freihand": PredFormat("freihand", "freihand", False, 3960),
    "ho3d": PredFormat("ho3d", "ho3d", True, None),  # as many as evaluation.txt has lines
}


def pred_format(dataset: str) -> PredFormat:
    if dataset not in PRED_FORMATS:
        raise ValueError(f"unknown benchmark {dataset!r}; known: {sorted(PRED_FORMATS)}")
    return PRED_FORMATS[dataset]


def _check_pred_arrays(joints, verts) -> Tuple[np.ndarray, np.ndarray]:
    joints, verts = np.asarray(joints, np.float64), np.asarray(verts, np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (21, 3):
        raise ValueError(f"pred.json: joints must be (N, 21, 3), got {joints.shape}")
    if verts.ndim != 3 or verts.shape[1:] != (NUM_VERTICES, 3) or len(verts) != len(joints):
        raise ValueError(f"pred.json: vertices must be (N, {NUM_VERTICES}, 3) with N = {len(joints)}, got {verts.shape}")
    if not (np.all(np.isfinite(joints)) and np.all(np.isfinite(verts))):
        raise ValueError("pred.json: predictions contain non-finite values")
    return joints, verts


def pred_json_lists(dataset: str, joints, verts) -> list:
    """``[xyz_list, verts_list]`` of predictions in handjax's frame (OpenCV, metres, the
    dataset's joint order, official sample order): axis flip for HO3D, rounded to 5 decimals."""
    fmt = pred_format(dataset)
    joints, verts = _check_pred_arrays(joints, verts)
    if fmt.opengl:
        joints, verts = opengl_to_opencv(joints), opengl_to_opencv(verts)
    return [np.round(joints, DECIMALS).tolist(), np.round(verts, DECIMALS).tolist()]


def write_pred_json(path: str, dataset: str, joints, verts, *, check_count: bool = True) -> str:
    """Write ``pred.json`` (see :func:`pred_json_lists`); with ``check_count`` the number of
    samples must be the benchmark's (FreiHAND 3,960). Returns the path."""
    fmt = pred_format(dataset)
    if check_count and fmt.num_samples is not None and len(joints) != fmt.num_samples:
        raise ValueError(f"pred.json for {dataset}: expected {fmt.num_samples} samples, got {len(joints)} "
                         f"(pass check_count=False for a subset)")
    lists = pred_json_lists(dataset, joints, verts)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(lists, fh)
    return path


def read_pred_json(path: str, dataset: str) -> Tuple[np.ndarray, np.ndarray]:
    """A ``pred.json`` -> (joints (N, 21, 3), verts (N, 778, 3)) float64 in handjax's frame
    (OpenCV; HO3D's flip undone), for local evaluation."""
    fmt = pred_format(dataset)
    with open(path) as fh:
        try:
            content = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid json ({err})") from None
    if not (isinstance(content, list) and len(content) == 2):
        raise ValueError(f"{path}: expected [xyz_list, verts_list], got a {type(content).__name__}"
                         f"{' of length ' + str(len(content)) if isinstance(content, list) else ''}")
    try:
        joints, verts = np.asarray(content[0], np.float64), np.asarray(content[1], np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: ragged prediction lists ({err})") from None
    try:
        joints, verts = _check_pred_arrays(joints, verts)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if fmt.opengl:
        joints, verts = opengl_to_opencv(joints), opengl_to_opencv(verts)
    return joints, verts


def evaluate_pred_json(path: str, dataset: str, gt_joints, gt_verts, has_joints=None,
                       has_verts=None) -> Dict[str, float]:
    """Local evaluation of a ``pred.json`` against ground truth in the official order."""
    joints, verts = read_pred_json(path, dataset)
    return evaluate(joints, verts, np.asarray(gt_joints), None if gt_verts is None else np.asarray(gt_verts),
                    has_joints, has_verts)


def format_metrics(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A fixed-width table of protocol metrics, one row per model (NaN shown as n/a)."""
    cols = ("pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "auc_pa", "mpjpe_mm", "num_joints", "num_vertices")
    width = max([len(r) for r in rows] + [5]) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{c:>14}" for c in cols)]
    for name, m in rows.items():
        cells = []
        for c in cols:
            v = m.get(c, float("nan"))
            cells.append(f"{'n/a':>14}" if v is None or (isinstance(v, float) and np.isnan(v)) else
                         (f"{int(v):>14d}" if c.startswith("num_") else f"{v:>14.4f}"))
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)


class PredJsonWriter:
    """An evaluation-loop collector (``add(pred, labels)``, ``handjax.eval.loop``) of single-hand
    predictions (``pred["joints"]`` in the dataset's order, ``pred["vertices"]``) that writes the
    benchmark's CodaLab pred.json in the official sample order."""

    def __init__(self, benchmark: str):
        pred_format(benchmark)  # validates the name
        self.benchmark = benchmark
        self.collector = PredictionCollector()

    def add(self, pred, labels) -> None:
        self.collector.add_batch(pred["joints"], pred["vertices"], labels)

    def write(self, path: str) -> str:
        """Write ``path`` (noting when the sample count is not the benchmark's); returns it."""
        joints, verts = self.collector.arrays()
        expected = pred_format(self.benchmark).num_samples
        if expected is not None and len(joints) != expected:
            print(f"[eval] note: {len(joints)} samples, the {self.benchmark} benchmark has {expected}: pred.json is "
                  f"not a complete submission", flush=True)
        write_pred_json(path, self.benchmark, joints, verts, check_count=False)
        print(f"[eval] {self.benchmark} pred.json ({len(joints)} samples) written to {path}; submit with: "
              f"zip -j pred.zip {path}", flush=True)
        return path
