"""InterHand2.6M two-hand evaluation protocol (MPJPE single / interacting / all, MRRPE, handedness).

Semantics are those of InterHand2.6M's ``Dataset.evaluate`` (also used by DIGIT):

* Joints: (..., 42, 3) in the InterHand2.6M layout, right hand 0-20 then left hand 21-41,
  each hand in the handjax ``"ih26m"`` order (finger tip -> base, thumb first, wrist last),
  so the wrists (roots) are joints 20 (right) and 41 (left). Units are those of the
  inputs (metres in handjax); the summaries report millimetres (``*_mm`` keys).
* ``joint_valid`` (..., 42): a hand's joints only count when that hand's root is valid
  (root-relative errors need the root), see :func:`root_masked_valid`.
* MPJPE: each hand is made root-relative (its own wrist subtracted, prediction and
  ground truth separately); per-joint Euclidean errors of valid joints are collected per
  joint over the frames of a category; the category's MPJPE is the mean over the 42
  joints of the per-joint means (the wrists count, with error 0 by construction).
  Categories: ``single`` = frames whose ``hand_type`` is right or left, ``interacting``
  = interacting frames, ``all`` = per-joint means over both. A joint that never has a
  valid sample in a category is left out of that category's mean over joints (the
  reference code would fail on it); ``joint_count_*`` in the summary says which.
* MRRPE: over interacting frames with both roots valid,
  ``|| (pred_left_root - pred_right_root) - (gt_left_root - gt_right_root) ||``, mean over
  frames.
* Handedness accuracy over frames with ``hand_type_valid``: prediction (p_right, p_left)
  is correct for a right frame when p_right > 0.5 and p_left < 0.5, for a left frame when
  p_right < 0.5 and p_left > 0.5, for an interacting frame when both exceed 0.5.

Hand types are integer codes ``HAND_TYPES.index(name)``: 0 right, 1 left, 2 interacting
(the order of the ``hand_type`` ClassLabel of the ``interhand`` tfds builder).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from handjax.eval.metrics import point_errors

HAND_TYPES = ("right", "left", "interacting")
RIGHT, LEFT, INTERACTING = 0, 1, 2
NUM_JOINTS = 42
ROOTS = {"right": 20, "left": 41}
HAND_SLICES = {"right": slice(0, 21), "left": slice(21, 42)}


def _check_joints(name: str, joints) -> np.ndarray:
    joints = np.asarray(joints, np.float64)
    if joints.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"{name}: expected (..., {NUM_JOINTS}, 3) InterHand2.6M joints, got {joints.shape}")
    return joints


def hand_type_codes(hand_type) -> np.ndarray:
    """Hand types as integer codes: accepts codes already or the strings right/left/interacting."""
    arr = np.asarray(hand_type)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 2):
            raise ValueError(f"hand_type codes must lie in 0..2 ({HAND_TYPES}), got {np.unique(arr)}")
        return arr.astype(np.int64)
    names = np.char.decode(arr.astype(bytes)) if arr.dtype.kind == "S" else arr.astype(str)
    unknown = sorted(set(names.ravel().tolist()) - set(HAND_TYPES))
    if unknown:
        raise ValueError(f"hand_type must be one of {HAND_TYPES}, got {unknown}")
    return np.vectorize(HAND_TYPES.index, otypes=[np.int64])(names)


def root_relative(joints) -> np.ndarray:
    """Each hand minus its own wrist: (..., 42, 3) -> (..., 42, 3)."""
    joints = _check_joints("root_relative joints", joints)
    out = joints.copy()
    for hand, sl in HAND_SLICES.items():
        out[..., sl, :] -= joints[..., ROOTS[hand]: ROOTS[hand] + 1, :]
    return out


def root_masked_valid(joint_valid) -> np.ndarray:
    """(..., 42) validity with each hand's flags multiplied by its root's flag -> bool."""
    valid = np.asarray(joint_valid).astype(bool)
    if valid.shape[-1] != NUM_JOINTS:
        raise ValueError(f"joint_valid: expected (..., {NUM_JOINTS}), got {valid.shape}")
    out = valid.copy()
    for hand, sl in HAND_SLICES.items():
        out[..., sl] &= valid[..., ROOTS[hand]: ROOTS[hand] + 1]
    return out


def joint_errors(pred_joints, gt_joints, joint_valid):
    """Root-relative per-joint errors (..., 42) and their mask (..., 42) bool."""
    pred = root_relative(_check_joints("pred_joints", pred_joints))
    gt = root_relative(_check_joints("gt_joints", gt_joints))
    return np.asarray(point_errors(pred, gt)), root_masked_valid(joint_valid)


def relative_root(joints) -> np.ndarray:
    """Left wrist minus right wrist: (..., 42, 3) -> (..., 3)."""
    joints = _check_joints("relative_root joints", joints)
    return joints[..., ROOTS["left"], :] - joints[..., ROOTS["right"], :]


def mrrpe_errors(pred_rel_root, gt_joints, joint_valid, hand_type):
    """Per-frame MRRPE (B,) and the frames it applies to (B,) bool.

    pred_rel_root: (B, 3) predicted left-root minus right-root position (use
    :func:`relative_root` on absolute predicted joints). Applies to interacting frames
    whose two roots are valid.
    """
    gt = _check_joints("gt_joints", gt_joints)
    pred_rel_root = np.asarray(pred_rel_root, np.float64)
    if pred_rel_root.shape != gt.shape[:-2] + (3,):
        raise ValueError(f"pred_rel_root: expected {gt.shape[:-2] + (3,)}, got {pred_rel_root.shape}")
    valid = np.asarray(joint_valid).astype(bool)
    mask = (hand_type_codes(hand_type) == INTERACTING) & valid[..., ROOTS["right"]] & valid[..., ROOTS["left"]]
    errors = np.linalg.norm(pred_rel_root - relative_root(gt), axis=-1)
    return errors, mask


def handedness_correct(pred_hand_prob, hand_type) -> np.ndarray:
    """(B,) bool: whether (p_right, p_left) (B, 2) matches the ground-truth hand type."""
    prob = np.asarray(pred_hand_prob, np.float64)
    if prob.shape[-1] != 2:
        raise ValueError(f"pred_hand_prob: expected (..., 2) = (p_right, p_left), got {prob.shape}")
    codes = hand_type_codes(hand_type)
    right, left = prob[..., 0] > 0.5, prob[..., 1] > 0.5
    return np.select([codes == RIGHT, codes == LEFT], [right & ~left, left & ~right], right & left)


class InterHandEvaluator:
    """Accumulates the InterHand2.6M protocol over batches (host-side numpy).

    ``add`` takes one batch; optional arguments switch the corresponding metric on.
    ``valid`` (B,) bool drops padded samples. ``result()`` returns millimetres for
    inputs in metres: ``mpjpe_{all,single,interacting}_mm``, per-joint means
    ``per_joint_{all,single,interacting}_mm`` (42,), ``joint_count_*`` (42,),
    ``mrrpe_mm`` and ``handedness_acc`` (when given), and the frame counts.
    """

    CATEGORIES = ("single", "interacting")

    def __init__(self, unit_scale: float = 1000.0):
        self.unit_scale = unit_scale
        self.sums = {c: np.zeros(NUM_JOINTS) for c in self.CATEGORIES}
        self.counts = {c: np.zeros(NUM_JOINTS, np.int64) for c in self.CATEGORIES}
        self.mrrpe_sum, self.mrrpe_count = 0.0, 0
        self.hand_correct, self.hand_count = 0, 0
        self.frames = {c: 0 for c in self.CATEGORIES}

    def add(self, pred_joints, gt_joints, joint_valid, hand_type, *, pred_rel_root=None,
            pred_hand_prob=None, hand_type_valid=None, valid=None) -> None:
        codes = hand_type_codes(hand_type)
        keep = np.ones(codes.shape, bool) if valid is None else np.asarray(valid, bool)
        errors, mask = joint_errors(pred_joints, gt_joints, joint_valid)
        mask &= keep[..., None]
        for cat, in_cat in (("single", codes != INTERACTING), ("interacting", codes == INTERACTING)):
            m = mask & in_cat[..., None]
            self.sums[cat] += np.sum(np.where(m, errors, 0.0), axis=0)
            self.counts[cat] += np.sum(m, axis=0)
            self.frames[cat] += int(np.sum(in_cat & keep))
        if pred_rel_root is not None:
            err, m = mrrpe_errors(pred_rel_root, gt_joints, joint_valid, codes)
            m &= keep
            self.mrrpe_sum += float(np.sum(err[m]))
            self.mrrpe_count += int(np.sum(m))
        if pred_hand_prob is not None:
            m = keep if hand_type_valid is None else keep & np.asarray(hand_type_valid).astype(bool)
            self.hand_correct += int(np.sum(handedness_correct(pred_hand_prob, codes)[m]))
            self.hand_count += int(np.sum(m))

    def _category(self, sums: np.ndarray, counts: np.ndarray) -> tuple:
        per_joint = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan) * self.unit_scale
        mean = float(np.mean(per_joint[counts > 0])) if np.any(counts > 0) else float("nan")
        return mean, per_joint

    def result(self) -> Dict[str, object]:
        out: Dict[str, object] = {}
        parts = {c: (self.sums[c], self.counts[c]) for c in self.CATEGORIES}
        parts["all"] = (self.sums["single"] + self.sums["interacting"],
                        self.counts["single"] + self.counts["interacting"])
        for cat, (sums, counts) in parts.items():
            out[f"mpjpe_{cat}_mm"], out[f"per_joint_{cat}_mm"] = self._category(sums, counts)
            out[f"joint_count_{cat}"] = counts.copy()
        if self.mrrpe_count:
            out["mrrpe_mm"] = self.mrrpe_sum / self.mrrpe_count * self.unit_scale
        if self.hand_count:
            out["handedness_acc"] = self.hand_correct / self.hand_count
        out["frames_single"] = self.frames["single"]
        out["frames_interacting"] = self.frames["interacting"]
        out["mrrpe_frames"] = self.mrrpe_count
        return out


def evaluate_interhand(pred_joints, gt_joints, joint_valid, hand_type, *, pred_rel_root: Optional[np.ndarray] = None,
                       pred_hand_prob: Optional[np.ndarray] = None, hand_type_valid=None,
                       unit_scale: float = 1000.0) -> Dict[str, object]:
    """The whole protocol on full arrays at once (see :class:`InterHandEvaluator`)."""
    ev = InterHandEvaluator(unit_scale)
    ev.add(pred_joints, gt_joints, joint_valid, hand_type, pred_rel_root=pred_rel_root,
           pred_hand_prob=pred_hand_prob, hand_type_valid=hand_type_valid)
    return ev.result()
