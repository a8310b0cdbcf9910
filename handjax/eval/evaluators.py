"""Named evaluators for the shared evaluation loop (host side, numpy).

The loop (:mod:`handjax.eval.loop`) builds one with :func:`make_evaluator` ``(name, **options)``,
then calls ``add(pred, labels)`` once per GLOBAL batch -- ``pred`` the system's prediction dict,
``labels`` the batch's label dict, both numpy, ``labels["valid"]`` (B,) False on padding (such
samples are ignored; an absent ``valid`` means every sample is real) -- and finally ``result()``
for a JSON-serialisable dict (floats, ints and lists). Evaluators never modify their inputs.

Every evaluator takes ``pred_keys`` / ``label_keys`` options: dicts that rename some of the keys
it reads (the defaults below), so that datasets with other key names can be served, e.g.
``make_evaluator("hand_object", label_keys={"joints3d": "hand_joints3d"})``.

========== ================================================== =====================================
name       reads (pred | labels)                              options
========== ================================================== =====================================
single_hand joints (B,21,3), vertices (B,778,3) |              ``protocol`` "" / "freihand" / "ho3d"
           joints3d, vertices, has_joints3d, has_vertices,    (:mod:`handjax.eval.protocols`)
           valid (absent flags: all True)
two_hand   joints (B,42,3); optional rel_root (B,3),           ``rule`` "digit" / "interwild",
           hand_prob (B,2), vertices (B,2,778,3),             ``mrrpe_frames``, ``wrist_regressor``,
           part_seg (B,H,W) | joints3d, joint_valid,          ``seg_tol``, ``seg_classes``
           hand_type, hand_type_valid (optional), vertices,   (:mod:`handjax.eval.two_hand`)
           vertex_valid, part_seg, valid
dexycb     joints (B,21,3), optional vertices (B,778,3) |      ``average`` "sample" / "batch"
           joints3d, vertices, has_joints3d, has_vertices,    (:mod:`handjax.eval.dexycb`)
           valid
hand_object joints (B,21,3) and/or object_vertices (B,V,3) |   ``center`` (9), ``average`` "batch" /
           joints3d, object_vertices, has_joints3d,           "sample" (:mod:`handjax.eval.hand_object`)
           has_object, object_vertex_valid, valid
========== ================================================== =====================================

A prediction key a model does not produce switches that metric off (e.g. no ``part_seg``: no
mIoU); a prediction key whose ground truth is missing from the labels is an error naming it.
:data:`COLUMNS` gives each evaluator's default table columns for :func:`format_table`.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Dict, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from handjax.eval import dexycb, hand_object, protocols, segmentation, two_hand


class Evaluator(Protocol):
    def add(self, pred: Dict[str, np.ndarray], labels: Dict[str, np.ndarray]) -> None:
        """One global batch (numpy prediction and label dicts; labels["valid"] marks real samples)."""

    def result(self) -> Dict[str, float | list]:
        """The metrics, JSON-serialisable."""


# ----------------------------------------------------------------------------- helpers
def _key_map(evaluator: str, kind: str, defaults: Mapping[str, str], overrides: Optional[Mapping[str, str]]):
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"evaluator {evaluator!r}: unknown {kind} {unknown}; known: {sorted(defaults)}")
    return {**defaults, **overrides}


class _Base:
    NAME = ""
    PRED: Mapping[str, str] = {}
    LABELS: Mapping[str, str] = {}

    def __init__(self, pred_keys=None, label_keys=None):
        self.pred_keys = _key_map(self.NAME, "pred_keys entry", self.PRED, pred_keys)
        self.label_keys = _key_map(self.NAME, "label_keys entry", self.LABELS, label_keys)

    def _pred(self, pred: Mapping, name: str, required: bool = True):
        key = self.pred_keys[name]
        if key not in pred:
            if required:
                raise ValueError(f"evaluator {self.NAME!r}: the prediction has no key {key!r} ({name}); "
                                 f"it has {sorted(pred)}")
            return None
        return np.asarray(pred[key])

    def _label(self, labels: Mapping, name: str, required: bool = True, needed_for: str = ""):
        key = self.label_keys[name]
        if key not in labels:
            if required:
                why = f" (needed for {needed_for})" if needed_for else ""
                raise ValueError(f"evaluator {self.NAME!r}: the labels have no key {key!r}{why}; "
                                 f"they have {sorted(labels)}")
            return None
        return np.asarray(labels[key])

    def _valid(self, labels: Mapping, n: int) -> np.ndarray:
        valid = self._label(labels, "valid", required=False)
        if valid is None:
            return np.ones(n, bool)
        valid = valid.astype(bool).reshape(-1)
        if valid.shape != (n,):
            raise ValueError(f"evaluator {self.NAME!r}: labels[{self.label_keys['valid']!r}] must be ({n},) for a "
                             f"batch of {n}, got {valid.shape}")
        return valid


def _jsonable(value):
    """numpy scalars / arrays -> Python floats, ints and lists (recursively)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise TypeError(f"evaluator result: cannot serialise {type(value).__name__}")


# ----------------------------------------------------------------------------- evaluators
class SingleHandEvaluator(_Base):
    """FreiHAND / HO3D protocol (:class:`handjax.eval.protocols.HandEvaluator`)."""

    NAME = "single_hand"
    PRED = {"joints": "joints", "vertices": "vertices"}
    LABELS = {"joints3d": "joints3d", "vertices": "vertices", "has_joints3d": "has_joints3d",
              "has_vertices": "has_vertices", "valid": "valid"}

    def __init__(self, protocol: str = "", pred_keys=None, label_keys=None):
        super().__init__(pred_keys, label_keys)
        self._ev = protocols.HandEvaluator(protocol)

    def add(self, pred, labels) -> None:
        joints = self._pred(pred, "joints")
        verts = self._pred(pred, "vertices", required=False)
        gt_joints = self._label(labels, "joints3d")
        gt_verts = None if verts is None else self._label(labels, "vertices", needed_for="vertex metrics")
        self._ev.add(joints, verts, gt_joints, gt_verts, self._label(labels, "has_joints3d", False),
                     self._label(labels, "has_vertices", False), self._valid(labels, len(joints)))

    def result(self):
        return _jsonable(self._ev.result())


class TwoHandEvaluator(_Base):
    """InterHand2.6M protocol with DIGIT's or InterWild's aggregation
    (:class:`handjax.eval.two_hand.InterHandEvaluator`)."""

    NAME = "two_hand"
    PRED = {"joints": "joints", "rel_root": "rel_root", "hand_prob": "hand_prob", "vertices": "vertices",
            "part_seg": "part_seg"}
    LABELS = {"joints3d": "joints3d", "joint_valid": "joint_valid", "hand_type": "hand_type",
              "hand_type_valid": "hand_type_valid", "vertices": "vertices", "vertex_valid": "vertex_valid",
              "part_seg": "part_seg", "valid": "valid"}

    def __init__(self, rule: str = "digit", mrrpe_frames: Optional[str] = None, wrist_regressor=None,
                 seg_tol: int = 1, seg_classes: int = segmentation.NUM_CLASSES, pred_keys=None, label_keys=None):
        super().__init__(pred_keys, label_keys)
        self._ev = two_hand.InterHandEvaluator(rule=rule, mrrpe_frames=mrrpe_frames,
                                               wrist_regressor=wrist_regressor, seg_tol=seg_tol,
                                               seg_classes=seg_classes)

    def add(self, pred, labels) -> None:
        joints = self._pred(pred, "joints")
        rel_root = self._pred(pred, "rel_root", required=False)
        if rel_root is None:  # absolute camera-space joints: the roots' difference
            rel_root = two_hand.relative_root(joints)
        verts = self._pred(pred, "vertices", required=False)
        seg = self._pred(pred, "part_seg", required=False)
        self._ev.add(
            joints, self._label(labels, "joints3d"), self._label(labels, "joint_valid"),
            self._label(labels, "hand_type"), pred_rel_root=rel_root,
            pred_hand_prob=self._pred(pred, "hand_prob", required=False),
            hand_type_valid=self._label(labels, "hand_type_valid", required=False),
            valid=self._valid(labels, len(joints)), pred_verts=verts,
            gt_verts=None if verts is None else self._label(labels, "vertices", needed_for="MPVPE"),
            vertex_valid=None if verts is None else self._label(labels, "vertex_valid", needed_for="MPVPE"),
            pred_seg=seg, gt_seg=None if seg is None else self._label(labels, "part_seg", needed_for="mIoU"))

    def result(self):
        return _jsonable(self._ev.result())


class DexYCBEvaluator(_Base):
    """DexYCB root-relative / Procrustes MPJPE and MPVPE (:class:`handjax.eval.dexycb.DexYCBEvaluator`)."""

    NAME = "dexycb"
    PRED = {"joints": "joints", "vertices": "vertices"}
    LABELS = {"joints3d": "joints3d", "vertices": "vertices", "has_joints3d": "has_joints3d",
              "has_vertices": "has_vertices", "valid": "valid"}

    def __init__(self, average: str = "sample", pred_keys=None, label_keys=None):
        super().__init__(pred_keys, label_keys)
        self._ev = dexycb.DexYCBEvaluator(average=average)

    def add(self, pred, labels) -> None:
        joints = self._pred(pred, "joints")
        verts = self._pred(pred, "vertices", required=False)
        keep = self._valid(labels, len(joints))
        has_joints = self._label(labels, "has_joints3d", required=False)
        if has_joints is not None:
            keep = keep & has_joints.astype(bool).reshape(keep.shape)
        self._ev.add_batch(joints, self._label(labels, "joints3d"), verts,
                           None if verts is None else self._label(labels, "vertices", needed_for="MPVPE"),
                           valid=keep, has_verts=self._label(labels, "has_vertices", required=False))

    def result(self):
        return _jsonable(self._ev.result())


class HandObjectEvaluator(_Base):
    """handobjectconsist's hand joint EPE (camera space and centred) and object vertex error
    (:class:`handjax.eval.hand_object.HandObjectEvaluator`)."""

    NAME = "hand_object"
    PRED = {"joints": "joints", "object_vertices": "object_vertices"}
    LABELS = {"joints3d": "joints3d", "object_vertices": "object_vertices", "has_joints3d": "has_joints3d",
              "has_object": "has_object", "object_vertex_valid": "object_vertex_valid", "valid": "valid"}

    def __init__(self, center: int = hand_object.CENTER, average: str = "batch", pred_keys=None, label_keys=None):
        super().__init__(pred_keys, label_keys)
        self._ev = hand_object.HandObjectEvaluator(center=center, average=average)

    def add(self, pred, labels) -> None:
        joints = self._pred(pred, "joints", required=False)
        obj = self._pred(pred, "object_vertices", required=False)
        if joints is None and obj is None:
            raise ValueError(f"evaluator 'hand_object': the prediction has neither {self.pred_keys['joints']!r} nor "
                             f"{self.pred_keys['object_vertices']!r}; it has {sorted(pred)}")
        n = len(joints if joints is not None else obj)
        self._ev.add(joints, None if joints is None else self._label(labels, "joints3d", needed_for="hand EPE"),
                     pred_object=obj,
                     gt_object=None if obj is None else self._label(labels, "object_vertices",
                                                                   needed_for="object vertex error"),
                     has_joints=self._label(labels, "has_joints3d", required=False),
                     has_object=None if obj is None else self._label(labels, "has_object", required=False),
                     object_vertex_valid=None if obj is None else self._label(labels, "object_vertex_valid", False),
                     valid=self._valid(labels, n))

    def result(self):
        return _jsonable(self._ev.result())


# ----------------------------------------------------------------------------- registry
EVALUATORS: Dict[str, Callable[..., Evaluator]] = {
    "single_hand": SingleHandEvaluator,
    "two_hand": TwoHandEvaluator,
    "dexycb": DexYCBEvaluator,
    "hand_object": HandObjectEvaluator,
}

COLUMNS: Dict[str, Tuple[str, ...]] = {
    "single_hand": ("mpjpe_mm", "pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "auc_pa"),
    "two_hand": ("mpjpe_single_mm", "mpjpe_interacting_mm", "mpjpe_all_mm", "mpvpe_all_mm", "mrrpe_mm",
                 "handedness_acc", "miou"),
    "dexycb": ("mpjpe_mm", "pa_mpjpe_mm", "mpvpe_mm", "pa_mpvpe_mm", "abs_mpjpe_mm", "auc_pa"),
    "hand_object": ("joints3d_epe_mm", "joints3d_cent_epe_mm", "joints3d_auc", "joints3d_cent_auc",
                    "objverts3d_mepe_mm"),
}


def make_evaluator(name: str, **options) -> Evaluator:
    """The evaluator registered as ``name``, built with ``options`` (see the module docstring).
    An unknown name or option is a ValueError naming it and the known ones."""
    if name not in EVALUATORS:
        raise ValueError(f"unknown evaluator {name!r}; known: {sorted(EVALUATORS)}")
    factory = EVALUATORS[name]
    known = [p for p in inspect.signature(factory).parameters if p not in ("self",)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"evaluator {name!r}: unknown option(s) {unknown}; known: {known}")
    return factory(**options)


# ----------------------------------------------------------------------------- table
def _cell(value, model: str, column: str) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "NaN"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"format_table: row {model!r} column {column!r} holds a {type(value).__name__}, "
                         f"not a number")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


def format_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> str:
    """Fixed-width text table: one row per model name (e.g. "mean pose (x0)", "fine-tuned"), one
    column per metric in ``columns`` (e.g. ``COLUMNS[name]``); floats with 3 decimals, ints as
    they are, "NaN" for a metric a row does not have (or that is NaN)."""
    columns = list(columns)
    cells = {model: [_cell(m.get(c), model, c) for c in columns] for model, m in rows.items()}
    first = max([len("model")] + [len(m) for m in rows]) + 2
    widths = [max([len(c)] + [len(cells[m][i]) for m in rows]) + 2 for i, c in enumerate(columns)]
    lines = [f"{'model':<{first}}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
    for model, row in cells.items():
        lines.append(f"{model:<{first}}" + "".join(f"{v:>{w}}" for v, w in zip(row, widths)))
    return "\n".join(lines)
