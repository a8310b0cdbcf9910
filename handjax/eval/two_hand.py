"""InterHand2.6M two-hand evaluation protocol: MPJPE and MPVPE single / interacting / all,
MRRPE, handedness accuracy and part-segmentation mIoU, with DIGIT's and InterWild's aggregation.

Semantics follow InterHand2.6M's ``Dataset.evaluate`` as DIGIT uses it (``rule="digit"``,
the default) or as InterWild's ``InterHand26M.evaluate`` / ``HIC.evaluate`` aggregate
(``rule="interwild"``):

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
  = interacting frames. ``all``:

  - ``digit``: per-joint means over the samples of both categories pooled, then the mean
    over joints (single and interacting frames weighted by their number);
  - ``interwild``: the mean over the per-joint means of both categories taken together,
    i.e. the mean of the two category means (each category weighs one half).

  A joint that never has a valid sample in a category is left out of that category's mean
  over joints (DIGIT's code would crash on it, InterWild's would return NaN);
  ``joints_without_samples_*`` lists them and ``joint_count_*`` gives every joint's count.
* MRRPE: ``|| (pred_left_root - pred_right_root) - (gt_left_root - gt_right_root) ||``, mean
  over frames whose two GT roots are valid and that are interacting frames
  (``mrrpe_frames="interacting"``: DIGIT, and InterWild on HIC) or of any hand type
  (``"all"``: InterWild on InterHand2.6M). Default: "interacting" for ``digit``, "all" for
  ``interwild``.
* MPVPE (both rules): vertices (..., 2, V, 3), hand 0 right, 1 left; each mesh minus its own
  wrist -- the wrist joint of the same side (20 / 41: predicted joints for the prediction, GT
  joints for the ground truth, the GT root must be valid), or, given ``wrist_regressor`` (V,),
  the wrist regressed from each mesh (InterWild's rule, no joint validity needed). A hand's
  error is its mean per-vertex distance; hands count when ``vertex_valid`` says so, on single
  frames only the hand of the frame's type, on interacting frames both. ``all`` pools the
  hands of both categories.
* Handedness accuracy over frames with ``hand_type_valid``: prediction (p_right, p_left)
  is correct for a right frame when p_right > 0.5 and p_left < 0.5, for a left frame when
  p_right < 0.5 and p_left > 0.5, for an interacting frame when both exceed 0.5.
* Part-segmentation mIoU: :mod:`handjax.eval.segmentation` (classes 1..32, background skipped,
  classes absent from both maps skipped with the default ``seg_tol=1``; mean over images).

Hand types are integer codes ``HAND_TYPES.index(name)``: 0 right, 1 left, 2 interacting
(the order of the ``hand_type`` ClassLabel of the ``interhand`` tfds builder). Inputs are
never modified.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from handjax.eval import segmentation
from handjax.eval.metrics import point_errors

RULES = ("digit", "interwild")
MRRPE_FRAMES = ("interacting", "all")
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


def mrrpe_errors(pred_rel_root, gt_joints, joint_valid, hand_type, frames: str = "interacting"):
    """Per-frame MRRPE (B,) and the frames it applies to (B,) bool.

    pred_rel_root: (B, 3) predicted left-root minus right-root position (use
    :func:`relative_root` on absolute predicted joints). Applies to frames whose two roots
    are valid and, with ``frames="interacting"``, that are interacting frames (``"all"``:
    any hand type).
    """
    if frames not in MRRPE_FRAMES:
        raise ValueError(f"mrrpe_frames must be one of {MRRPE_FRAMES}, got {frames!r}")
    gt = _check_joints("gt_joints", gt_joints)
    pred_rel_root = np.asarray(pred_rel_root, np.float64)
    if pred_rel_root.shape != gt.shape[:-2] + (3,):
        raise ValueError(f"pred_rel_root: expected {gt.shape[:-2] + (3,)}, got {pred_rel_root.shape}")
    valid = np.asarray(joint_valid).astype(bool)
    mask = valid[..., ROOTS["right"]] & valid[..., ROOTS["left"]]
    if frames == "interacting":
        mask &= hand_type_codes(hand_type) == INTERACTING
    errors = np.linalg.norm(pred_rel_root - relative_root(gt), axis=-1)
    return errors, mask


def _check_verts(name: str, verts) -> np.ndarray:
    verts = np.asarray(verts, np.float64)
    if verts.ndim < 3 or verts.shape[-3] != 2 or verts.shape[-1] != 3:
        raise ValueError(f"{name}: expected (..., 2, V, 3) vertices (hand 0 right, 1 left), got {verts.shape}")
    return verts


def wrist_joints(joints) -> np.ndarray:
    """The two wrists (..., 2, 3) (right, left) of (..., 42, 3) joints."""
    joints = _check_joints("wrist_joints joints", joints)
    return np.stack([joints[..., ROOTS["right"], :], joints[..., ROOTS["left"], :]], axis=-2)


def regress_wrist(verts, regressor) -> np.ndarray:
    """Wrists regressed from meshes: (..., 2, V, 3) vertices, (V,) weights -> (..., 2, 3)."""
    verts = _check_verts("regress_wrist verts", verts)
    regressor = np.asarray(regressor, np.float64)
    if regressor.shape != verts.shape[-2:-1]:
        raise ValueError(f"wrist_regressor: expected ({verts.shape[-2]},) weights, got {regressor.shape}")
    return np.einsum("v,...vc->...c", regressor, verts)


def vertex_errors(pred_verts, gt_verts, pred_root, gt_root) -> np.ndarray:
    """Root-relative mean vertex error per hand: (..., 2, V, 3) meshes and (..., 2, 3) roots
    (each mesh minus its own root) -> (..., 2)."""
    pv, gv = _check_verts("pred_verts", pred_verts), _check_verts("gt_verts", gt_verts)
    if pv.shape != gv.shape:
        raise ValueError(f"pred_verts {pv.shape} and gt_verts {gv.shape} differ in shape")
    pr, gr = np.asarray(pred_root, np.float64), np.asarray(gt_root, np.float64)
    if pr.shape != pv.shape[:-2] + (3,) or gr.shape != pr.shape:
        raise ValueError(f"vertex roots: expected {pv.shape[:-2] + (3,)}, got {pr.shape} and {gr.shape}")
    return np.linalg.norm((pv - pr[..., None, :]) - (gv - gr[..., None, :]), axis=-1).mean(-1)


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

    ``rule``: "digit" or "interwild" (how ``mpjpe_all`` is aggregated, the default MRRPE
    frames); ``mrrpe_frames``: "interacting" / "all" (None: the rule's default);
    ``wrist_regressor``: (V,) weights to root MPVPE on the mesh's own regressed wrist instead of
    the wrist joints; ``seg_tol`` / ``seg_classes``: the mIoU rule (:mod:`.segmentation`).

    ``add`` takes one batch; optional arguments switch the corresponding metric on.
    ``valid`` (B,) bool drops padded samples. ``result()`` returns millimetres for
    inputs in metres: ``mpjpe_{all,single,interacting}_mm``, per-joint means
    ``per_joint_{all,single,interacting}_mm`` (42,), ``joint_count_*`` (42,),
    ``joints_without_samples_*``, ``mrrpe_mm``, ``handedness_acc``,
    ``mpvpe_{all,single,interacting}_mm`` and ``miou`` (when given), and the frame counts.
    """

    CATEGORIES = ("single", "interacting")

    def __init__(self, unit_scale: float = 1000.0, rule: str = "digit", mrrpe_frames: Optional[str] = None,
                 wrist_regressor=None, seg_tol: int = 1, seg_classes: int = segmentation.NUM_CLASSES):
        if rule not in RULES:
            raise ValueError(f"two-hand aggregation rule must be one of {RULES}, got {rule!r}")
        mrrpe_frames = mrrpe_frames or ("interacting" if rule == "digit" else "all")
        if mrrpe_frames not in MRRPE_FRAMES:
            raise ValueError(f"mrrpe_frames must be one of {MRRPE_FRAMES}, got {mrrpe_frames!r}")
        if seg_tol < 0:
            raise ValueError(f"seg_tol must be >= 0, got {seg_tol}")
        self.unit_scale, self.rule, self.mrrpe_frames = unit_scale, rule, mrrpe_frames
        self.wrist_regressor = None if wrist_regressor is None else np.asarray(wrist_regressor, np.float64)
        self.seg_tol, self.seg_classes = int(seg_tol), int(seg_classes)
        self.sums = {c: np.zeros(NUM_JOINTS) for c in self.CATEGORIES}
        self.counts = {c: np.zeros(NUM_JOINTS, np.int64) for c in self.CATEGORIES}
        self.mrrpe_sum, self.mrrpe_count = 0.0, 0
        self.hand_correct, self.hand_count = 0, 0
        self.frames = {c: 0 for c in self.CATEGORIES}
        self.vert_sums = {c: 0.0 for c in self.CATEGORIES}
        self.vert_counts = {c: 0 for c in self.CATEGORIES}
        self.seg_ious: list = []
        self.seg_images = 0

    def add(self, pred_joints, gt_joints, joint_valid, hand_type, *, pred_rel_root=None,
            pred_hand_prob=None, hand_type_valid=None, valid=None, pred_verts=None, gt_verts=None,
            vertex_valid=None, pred_seg=None, gt_seg=None) -> None:
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
            err, m = mrrpe_errors(pred_rel_root, gt_joints, joint_valid, codes, self.mrrpe_frames)
            m &= keep
            self.mrrpe_sum += float(np.sum(err[m]))
            self.mrrpe_count += int(np.sum(m))
        if pred_hand_prob is not None:
            m = keep if hand_type_valid is None else keep & np.asarray(hand_type_valid).astype(bool)
            self.hand_correct += int(np.sum(handedness_correct(pred_hand_prob, codes)[m]))
            self.hand_count += int(np.sum(m))
        if (pred_verts is None) != (gt_verts is None):
            raise ValueError("InterHandEvaluator.add: give both pred_verts and gt_verts, or neither")
        if pred_verts is not None:
            self._add_vertices(pred_joints, gt_joints, joint_valid, codes, keep, pred_verts, gt_verts, vertex_valid)
        if (pred_seg is None) != (gt_seg is None):
            raise ValueError("InterHandEvaluator.add: give both pred_seg and gt_seg, or neither")
        if pred_seg is not None:
            per_image = segmentation.image_iou(pred_seg, gt_seg, self.seg_classes, self.seg_tol)
            if per_image.shape != keep.shape:
                raise ValueError(f"part segmentation: expected one (H, W) map per frame {keep.shape}, "
                                 f"got maps {np.shape(pred_seg)}")
            self.seg_images += int(keep.sum())
            per_image = per_image[keep]
            self.seg_ious.extend(per_image[~np.isnan(per_image)].tolist())

    def _add_vertices(self, pred_joints, gt_joints, joint_valid, codes, keep, pred_verts, gt_verts, vertex_valid):
        pv, gv = _check_verts("pred_verts", pred_verts), _check_verts("gt_verts", gt_verts)
        hands = np.ones(pv.shape[:-2], bool) if vertex_valid is None else np.asarray(vertex_valid).astype(bool)
        if hands.shape != pv.shape[:-2]:
            raise ValueError(f"vertex_valid: expected {pv.shape[:-2]}, got {hands.shape}")
        if self.wrist_regressor is None:
            pred_root, gt_root = wrist_joints(pred_joints), wrist_joints(gt_joints)
            jv = np.asarray(joint_valid).astype(bool)
            hands = hands & np.stack([jv[..., ROOTS["right"]], jv[..., ROOTS["left"]]], axis=-1)
        else:
            pred_root, gt_root = regress_wrist(pv, self.wrist_regressor), regress_wrist(gv, self.wrist_regressor)
        # single frames: only the annotated hand; interacting frames: both
        side = np.stack([codes != LEFT, codes != RIGHT], axis=-1)
        hands = hands & side & keep[..., None]
        err = vertex_errors(pv, gv, pred_root, gt_root)
        for cat, in_cat in (("single", codes != INTERACTING), ("interacting", codes == INTERACTING)):
            m = hands & in_cat[..., None]
            self.vert_sums[cat] += float(np.sum(err[m]))
            self.vert_counts[cat] += int(np.sum(m))

    def _category(self, sums: np.ndarray, counts: np.ndarray) -> tuple:
        per_joint = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan) * self.unit_scale
        mean = float(np.mean(per_joint[counts > 0])) if np.any(counts > 0) else float("nan")
        return mean, per_joint

    def result(self) -> Dict[str, object]:
        out: Dict[str, object] = {}
        for cat in self.CATEGORIES:
            out[f"mpjpe_{cat}_mm"], out[f"per_joint_{cat}_mm"] = self._category(self.sums[cat], self.counts[cat])
            out[f"joint_count_{cat}"] = self.counts[cat].copy()
        counts_all = self.counts["single"] + self.counts["interacting"]
        if self.rule == "digit":
            out["mpjpe_all_mm"], out["per_joint_all_mm"] = self._category(
                self.sums["single"] + self.sums["interacting"], counts_all)
        else:  # interwild: the per-joint means of both categories taken together
            both = np.concatenate([out["per_joint_single_mm"], out["per_joint_interacting_mm"]])
            out["mpjpe_all_mm"] = float(np.mean(both[~np.isnan(both)])) if np.any(~np.isnan(both)) else float("nan")
            stacked = np.stack([out["per_joint_single_mm"], out["per_joint_interacting_mm"]])
            have = ~np.isnan(stacked)
            out["per_joint_all_mm"] = np.where(have.any(0), np.where(have, stacked, 0).sum(0) /
                                               np.maximum(have.sum(0), 1), np.nan)
        out["joint_count_all"] = counts_all
        for cat in ("single", "interacting", "all"):
            out[f"joints_without_samples_{cat}"] = np.flatnonzero(out[f"joint_count_{cat}"] == 0)
        if self.mrrpe_count:
            out["mrrpe_mm"] = self.mrrpe_sum / self.mrrpe_count * self.unit_scale
        if self.hand_count:
            out["handedness_acc"] = self.hand_correct / self.hand_count
        if sum(self.vert_counts.values()):
            for cat in self.CATEGORIES:
                n = self.vert_counts[cat]
                out[f"mpvpe_{cat}_mm"] = self.vert_sums[cat] / n * self.unit_scale if n else float("nan")
                out[f"mpvpe_hands_{cat}"] = n
            out["mpvpe_all_mm"] = sum(self.vert_sums.values()) / sum(self.vert_counts.values()) * self.unit_scale
        if self.seg_images:
            out["miou"] = float(np.mean(self.seg_ious)) if self.seg_ious else float("nan")
            out["miou_images"] = len(self.seg_ious)
        out["frames_single"] = self.frames["single"]
        out["frames_interacting"] = self.frames["interacting"]
        out["mrrpe_frames"] = self.mrrpe_count
        return out


def evaluate_interhand(pred_joints, gt_joints, joint_valid, hand_type, *, pred_rel_root: Optional[np.ndarray] = None,
                       pred_hand_prob: Optional[np.ndarray] = None, hand_type_valid=None,
                       unit_scale: float = 1000.0, rule: str = "digit", mrrpe_frames: Optional[str] = None,
                       **extra) -> Dict[str, object]:
    """The whole protocol on full arrays at once (see :class:`InterHandEvaluator`); ``extra``:
    the vertex / segmentation arguments of :meth:`InterHandEvaluator.add`."""
    ev = InterHandEvaluator(unit_scale, rule=rule, mrrpe_frames=mrrpe_frames)
    ev.add(pred_joints, gt_joints, joint_valid, hand_type, pred_rel_root=pred_rel_root,
           pred_hand_prob=pred_hand_prob, hand_type_valid=hand_type_valid, **extra)
    return ev.result()
