"""handjax.eval.evaluators: the named evaluators of the shared evaluation loop against hand-built
cases with known answers and direct numpy references (two-hand rules, mIoU, DexYCB / hand-object
averaging), padding, label immutability, registry errors and the table."""
import copy
import json

import numpy as np
import pytest

from handjax.eval import protocols, segmentation, two_hand
from handjax.eval.evaluators import COLUMNS, EVALUATORS, format_table, make_evaluator


def _same(a, b):
    """Deep equality of label dicts (arrays compared exactly)."""
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _hands42(rng, n):
    return rng.normal(0, 0.04, (n, 42, 3)) + np.array([0.0, 0.0, 0.5])


# ----------------------------------------------------------------------------- single hand
def test_single_hand_known_answers_padding_and_key_names():
    rng = np.random.default_rng(0)
    gj = rng.normal(0, 0.04, (3, 21, 3)) + [0, 0, 0.6]
    grid = np.stack(np.meshgrid(*[np.arange(10) * 0.02] * 3, indexing="ij"), -1).reshape(-1, 3)[:778]
    gv = grid[None] + rng.normal(0, 0.001, (3, 778, 3)) + [0, 0, 0.6]  # vertices >= ~17 mm apart
    shift = np.array([0.0036, 0.0, 0.0048])  # 6 mm: cancelled by root-relative / aligned errors
    pj = np.concatenate([gj + shift, rng.normal(size=(1, 21, 3))])  # 4th row: padding garbage
    pv = np.concatenate([gv + shift, rng.normal(size=(1, 778, 3))])
    labels = {"hand_joints": np.concatenate([gj, gj[:1]]), "vertices": np.concatenate([gv, gv[:1]]),
              "valid": np.array([True, True, True, False])}
    before = copy.deepcopy(labels)
    ev = make_evaluator("single_hand", protocol="ho3d", label_keys={"joints3d": "hand_joints"},
                        pred_keys={"joints": "kp3d"})
    ev.add({"kp3d": pj[:2], "vertices": pv[:2]}, {k: v[:2] for k, v in labels.items()})
    ev.add({"kp3d": pj[2:], "vertices": pv[2:]}, {k: v[2:] for k, v in labels.items()})
    res = ev.result()
    _same(labels, before)
    json.dumps(res)
    assert res["num_joints"] == 3 and res["num_vertices"] == 3
    assert res["mpjpe_mm"] == pytest.approx(0.0, abs=1e-4)
    assert res["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)
    assert res["xyz_mean3d_mm"] == pytest.approx(6.0, rel=1e-5)      # unaligned: the shift
    assert res["mesh_mean3d_mm"] == pytest.approx(6.0, rel=1e-5)
    assert res["xyz_scale_trans_al_mean3d_mm"] == pytest.approx(0.0, abs=1e-4)
    # unaligned: every vertex 6 mm from its own GT vertex, the others far -> F@5 0, F@15 1
    assert res["f_score_5"] == 0.0 and res["f_score_15"] == 1.0 and res["f_al_score_5"] == 1.0
    direct = protocols.evaluate(pj[:3], pv[:3], gj, gv, protocol="ho3d")
    for key in ("pa_mpvpe_mm", "auc_pa", "xyz_auc3d", "mesh_auc3d", "f15"):
        assert res[key] == pytest.approx(direct[key], abs=1e-4), key  # float32 noise of the batch split


def test_single_hand_missing_keys_name_them():
    ev = make_evaluator("single_hand")
    with pytest.raises(ValueError, match="'joints'.*has"):
        ev.add({"kp": np.zeros((1, 21, 3))}, {"joints3d": np.zeros((1, 21, 3))})
    with pytest.raises(ValueError, match="'vertices'.*vertex metrics"):
        ev.add({"joints": np.zeros((1, 21, 3)), "vertices": np.zeros((1, 778, 3))}, {"joints3d": np.zeros((1, 21, 3))})
    with pytest.raises(ValueError, match=r"'valid'\] must be \(1,\)"):
        ev.add({"joints": np.zeros((1, 21, 3))}, {"joints3d": np.zeros((1, 21, 3)), "valid": np.ones(3, bool)})


# ----------------------------------------------------------------------------- two hands: the two rules
def _rules_case():
    """5 frames: 0 right, 1 left (single), 2-4 interacting, + 1 padded frame.

    Non-wrist joints are off by 8 mm on single frames (the annotated hand only), 2 mm on
    interacting frames (both hands); wrists exact. Frame 1 (left) has BOTH wrists valid (its
    right non-wrist joints are not), so it enters MRRPE on every frame but not on interacting
    ones: its relative-root error is 30 mm, the interacting frames' 6 mm.
    """
    rng = np.random.default_rng(1)
    gt = _hands42(rng, 6)
    pred = gt.copy()
    valid = np.zeros((6, 42), bool)
    hand_type = np.array([0, 1, 2, 2, 2, 0])
    non_wrist = {"right": np.arange(0, 20), "left": np.arange(21, 41)}
    valid[0, :21] = True
    pred[0, non_wrist["right"]] += [0.008, 0.0, 0.0]
    valid[1, 21:] = True
    valid[1, 20] = True
    pred[1, non_wrist["left"]] += [0.0, 0.008, 0.0]
    pred[1, non_wrist["right"]] += 0.5  # invalid joints: must not count
    for f in (2, 3, 4):
        valid[f] = True
        pred[f, non_wrist["right"]] += [0.0, 0.0, 0.002]
        pred[f, non_wrist["left"]] += [0.002, 0.0, 0.0]
    pred[5] += 1.0  # padding
    valid[5] = True
    rel = two_hand.relative_root(gt)
    rel[1] += [0.0, 0.030, 0.0]
    rel[2:5] += [0.006, 0.0, 0.0]
    rel[5] += 3.0
    pred_d = {"joints": pred, "rel_root": rel}
    labels = {"joints3d": gt, "joint_valid": valid, "hand_type": hand_type, "valid": np.arange(6) < 5}
    return pred_d, labels


def test_two_hand_rules_differ_on_hand_built_case():
    pred, labels = _rules_case()
    before = copy.deepcopy(labels)
    res = {}
    for rule in ("digit", "interwild"):
        ev = make_evaluator("two_hand", rule=rule)
        ev.add(pred, labels)
        res[rule] = ev.result()
        json.dumps(res[rule])
    _same(labels, before)
    k = 40 / 42  # 40 non-wrist joints with error, 2 wrists at 0
    for rule in ("digit", "interwild"):
        assert res[rule]["mpjpe_single_mm"] == pytest.approx(8.0 * k, rel=1e-6)
        assert res[rule]["mpjpe_interacting_mm"] == pytest.approx(2.0 * k, rel=1e-6)
        assert res[rule]["frames_single"] == 2 and res[rule]["frames_interacting"] == 3
    # DIGIT: per joint 1 single sample at 8 mm + 3 interacting at 2 mm -> 3.5 mm
    assert res["digit"]["mpjpe_all_mm"] == pytest.approx(3.5 * k, rel=1e-6)
    np.testing.assert_allclose(res["digit"]["per_joint_all_mm"][:20], 3.5, rtol=1e-6)
    # InterWild: the mean of the two category means
    assert res["interwild"]["mpjpe_all_mm"] == pytest.approx(5.0 * k, rel=1e-6)
    # MRRPE: DIGIT on interacting frames only; InterWild (IH26M) on every frame with both wrists
    assert res["digit"]["mrrpe_mm"] == pytest.approx(6.0, rel=1e-6) and res["digit"]["mrrpe_frames"] == 3
    assert res["interwild"]["mrrpe_mm"] == pytest.approx((30.0 + 3 * 6.0) / 4, rel=1e-6)
    assert res["interwild"]["mrrpe_frames"] == 4
    hic = make_evaluator("two_hand", rule="interwild", mrrpe_frames="interacting")
    hic.add(pred, labels)
    assert hic.result()["mrrpe_mm"] == pytest.approx(6.0, rel=1e-6)
    assert res["digit"]["joints_without_samples_single"] == []


def _reference(pred, gt, valid, hand_type, rel, keep, rule, frames):
    """Loop transcription of both aggregation rules (metres in, mm out)."""
    sh, ih, mrrpe = [[] for _ in range(42)], [[] for _ in range(42)], []
    for n in range(len(gt)):
        if not keep[n]:
            continue
        v = valid[n].astype(float).copy()
        v[:21] *= v[20]
        v[21:] *= v[41]
        if valid[n, 20] and valid[n, 41] and (frames == "all" or hand_type[n] == 2):
            mrrpe.append(np.linalg.norm(rel[n] - (gt[n, 41] - gt[n, 20])))
        p, g = pred[n].copy(), gt[n].copy()
        for root, sl in ((20, slice(0, 21)), (41, slice(21, 42))):
            p[sl] -= p[root]
            g[sl] -= g[root]
        for j in range(42):
            if v[j]:
                (sh if hand_type[n] != 2 else ih)[j].append(np.linalg.norm(p[j] - g[j]))
    per_sh = [np.mean(x) for x in sh if x]
    per_ih = [np.mean(x) for x in ih if x]
    if rule == "digit":
        all_ = np.mean([np.mean(a + b) for a, b in zip(sh, ih) if a + b])
    else:
        all_ = np.mean(per_sh + per_ih)
    return {"all": all_ * 1000, "single": np.mean(per_sh) * 1000, "interacting": np.mean(per_ih) * 1000,
            "mrrpe": np.mean(mrrpe) * 1000}


@pytest.mark.parametrize("rule,frames", [("digit", "interacting"), ("interwild", "all"), ("interwild", "interacting")])
def test_two_hand_rules_match_loop_reference_over_padded_batches(rule, frames):
    rng = np.random.default_rng(2)
    n = 23
    gt = _hands42(rng, n)
    pred = gt + rng.normal(0, 0.01, gt.shape)
    hand_type = np.array([0, 1, 2, 2])[np.arange(n) % 4]  # unequal category sizes
    valid = rng.random((n, 42)) > 0.15
    valid[np.arange(n) % 5 == 0, 41] = False
    valid[0, 7] = valid[4, 7] = valid[8, 7] = valid[12, 7] = valid[16, 7] = valid[20, 7] = False  # joint 7 ...
    valid[1, 7] = valid[5, 7] = valid[9, 7] = valid[13, 7] = valid[17, 7] = valid[21, 7] = False  # ... never single
    rel = two_hand.relative_root(gt) + rng.normal(0, 0.02, (n, 3))
    keep = np.ones(n, bool)
    ev = make_evaluator("two_hand", rule=rule, mrrpe_frames=frames)
    for s in range(0, n, 8):  # batches of 8, the last padded with garbage marked invalid
        sl = slice(s, s + 8)
        extra = 8 - len(gt[sl])
        pad = lambda a: np.concatenate([a[sl], np.repeat(a[:1], extra, 0)])  # noqa: E731
        ok = np.arange(8) < 8 - extra
        ev.add({"joints": pad(pred) + (~ok)[:, None, None], "rel_root": pad(rel)},
               {"joints3d": pad(gt), "joint_valid": pad(valid), "hand_type": pad(hand_type), "valid": ok})
    res = ev.result()
    ref = _reference(pred, gt, valid, hand_type, rel, keep, rule, frames)
    for cat in ("all", "single", "interacting"):
        np.testing.assert_allclose(res[f"mpjpe_{cat}_mm"], ref[cat], rtol=1e-6)
    np.testing.assert_allclose(res["mrrpe_mm"], ref["mrrpe"], rtol=1e-6)
    assert res["joints_without_samples_single"] == [7] and res["joint_count_single"][7] == 0
    assert np.isnan(res["per_joint_single_mm"][7])


def test_two_hand_mpvpe_handedness_and_defaults():
    rng = np.random.default_rng(3)
    gt = _hands42(rng, 3)
    gv = rng.normal(0, 0.04, (3, 2, 778, 3)) + [0, 0, 0.5]
    pv = gv.copy()
    pv[0, 0] += [0.0, 0.005, 0.0]   # right frame: right mesh 5 mm off (its wrist joint exact)
    pv[0, 1] += 0.3                 # left mesh of a right frame: not counted
    pv[1, 0] += [0.001, 0.0, 0.0]   # interacting frame: 1 mm and 3 mm
    pv[1, 1] += [0.0, 0.0, 0.003]
    pv[2] += 1.0                    # padding
    labels = {"joints3d": gt, "joint_valid": np.ones((3, 42), bool), "hand_type": np.array([0, 2, 1]),
              "vertices": gv, "vertex_valid": np.ones((3, 2), bool), "valid": np.array([True, True, False]),
              "hand_type_valid": np.array([True, False, True])}
    before = copy.deepcopy(labels)
    pred = {"joints": gt, "vertices": pv, "hand_prob": np.array([[0.9, 0.2], [0.1, 0.1], [0.9, 0.9]])}
    ev = make_evaluator("two_hand")
    ev.add(pred, labels)
    res = ev.result()
    _same(labels, before)
    assert res["mpvpe_single_mm"] == pytest.approx(5.0, rel=1e-6)
    assert res["mpvpe_interacting_mm"] == pytest.approx(2.0, rel=1e-6)
    assert res["mpvpe_all_mm"] == pytest.approx(3.0, rel=1e-6)  # pooled over the 3 counted hands
    assert res["mpvpe_hands_single"] == 1 and res["mpvpe_hands_interacting"] == 2
    assert res["handedness_acc"] == 1.0  # frame 1 has no valid hand type, frame 2 is padding
    assert res["mrrpe_mm"] == pytest.approx(0.0, abs=1e-9)  # rel_root from the (exact) absolute joints
    # InterWild's root: each mesh's own regressed wrist -> a mesh shifted as a whole has no error
    reg = np.zeros(778)
    reg[[0, 1]] = 0.5
    ev = make_evaluator("two_hand", rule="interwild", wrist_regressor=reg)
    ev.add(pred, labels)
    res = ev.result()
    assert res["mpvpe_all_mm"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="'vertex_valid'.*MPVPE"):
        make_evaluator("two_hand").add(pred, {k: v for k, v in labels.items() if k != "vertex_valid"})
    with pytest.raises(ValueError, match="rule must be one of"):
        make_evaluator("two_hand", rule="average")


# ----------------------------------------------------------------------------- mIoU
def _maps():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
    pred = np.array([[0, 0, 1, 1], [0, 0, 1, 0], [2, 3, 0, 0], [0, 0, 0, 0]])
    return pred, gt


def test_miou_hand_built_and_tolerance_rules():
    pred, gt = _maps()
    # class 1: 3 / 4, class 2: 1 / 4, class 3: 0 / 1 (predicted only); background and 4..32 skipped
    assert segmentation.image_iou(pred, gt) == pytest.approx((0.75 + 0.25 + 0.0) / 3)
    # DIGIT tol=0: all 32 classes count, absent ones as 0
    assert segmentation.image_iou(pred, gt, tol=0) == pytest.approx((0.75 + 0.25) / 32)
    # tol=2: classes with a union below 2 pixels (class 3) are skipped too
    assert segmentation.image_iou(pred, gt, tol=2) == pytest.approx(0.5)
    empty = np.zeros((4, 4), int)  # background only in both: NaN, left out of the mean over images
    value, images = segmentation.mean_iou(np.stack([pred, empty]), np.stack([gt, empty]))
    assert value == pytest.approx(1 / 3) and images == 1
    with pytest.raises(ValueError, match="0..32"):
        segmentation.image_iou(pred + 40, gt)


def test_miou_matches_direct_reference():
    rng = np.random.default_rng(4)
    pred, gt = rng.integers(0, 6, (3, 8, 8)), rng.integers(0, 6, (3, 8, 8))
    for tol in (0, 1, 3):
        ref = []
        for p, g in zip(pred, gt):
            ious = []
            for c in range(1, 33):
                inter = np.sum((p == c) & (g == c))
                union = np.sum((p == c) | (g == c))
                if tol >= 1 and union < tol:
                    continue
                ious.append(inter / max(union, 1))
            ref.append(np.mean(ious))
        np.testing.assert_allclose(segmentation.image_iou(pred, gt, tol=tol), ref, rtol=1e-12)


def test_two_hand_miou_through_the_evaluator():
    pred_map, gt_map = _maps()
    gt = _hands42(np.random.default_rng(5), 3)
    labels = {"joints3d": gt, "joint_valid": np.ones((3, 42), bool), "hand_type": np.array([2, 2, 2]),
              "part_seg": np.stack([gt_map, np.zeros_like(gt_map), gt_map]), "valid": np.array([True, True, False])}
    pred = {"joints": gt, "part_seg": np.stack([pred_map, np.zeros_like(pred_map), np.full_like(pred_map, 5)])}
    ev = make_evaluator("two_hand")
    ev.add(pred, labels)
    res = ev.result()
    assert res["miou"] == pytest.approx(1 / 3) and res["miou_images"] == 1  # image 1 empty, image 2 padding
    ev = make_evaluator("two_hand", seg_tol=0)
    ev.add(pred, labels)
    assert ev.result()["miou"] == pytest.approx((1 / 32 + 0.0) / 2)  # the empty image counts as 0 with tol 0


# ----------------------------------------------------------------------------- DexYCB
def test_dexycb_sample_and_batch_averages():
    gt = np.zeros((4, 21, 3))
    gt[..., 2] = 0.5
    pred = gt.copy()
    pred[0, :, 0] += 0.001   # absolute errors 1, 2 mm (batch 1) and 6 mm (batch 2)
    pred[1, :, 0] += 0.002
    pred[2, :, 0] += 0.006
    pred[3] += 1.0           # padding in batch 2
    labels = {"joints3d": gt, "valid": np.array([True, True, True, False])}
    out = {}
    for average in ("sample", "batch"):
        ev = make_evaluator("dexycb", average=average)
        ev.add({"joints": pred[:2]}, {k: v[:2] for k, v in labels.items()})
        ev.add({"joints": pred[2:]}, {k: v[2:] for k, v in labels.items()})
        out[average] = ev.result()
        json.dumps(out[average])
    assert out["sample"]["abs_mpjpe_mm"] == pytest.approx(3.0, rel=1e-5)
    assert out["batch"]["abs_mpjpe_mm"] == pytest.approx((1.5 + 6.0) / 2, rel=1e-5)  # IdHandMesh
    assert out["sample"]["mpjpe_mm"] == pytest.approx(0.0, abs=1e-4)
    assert out["sample"]["auc_abs"] == out["batch"]["auc_abs"]  # AUCs pooled either way
    with pytest.raises(ValueError, match="average must be one of"):
        make_evaluator("dexycb", average="frame")


def test_dexycb_vertices_and_has_flags():
    rng = np.random.default_rng(6)
    gj, gv = rng.normal(0, 0.04, (3, 21, 3)), rng.normal(0, 0.04, (3, 778, 3))
    pv = gv + [0.0, 0.004, 0.0]
    pv[1] += 0.5  # no vertex ground truth for sample 1
    labels = {"joints3d": gj, "vertices": gv, "has_vertices": np.array([True, False, True]),
              "has_joints3d": np.array([True, True, False])}
    ev = make_evaluator("dexycb")
    ev.add({"joints": gj, "vertices": pv}, labels)
    res = ev.result()
    assert res["mpvpe_mm"] == pytest.approx(4.0, rel=1e-5)  # only sample 0 has both
    assert res["abs_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- hand-object
def test_hand_object_joints_hand_built():
    rng = np.random.default_rng(7)
    gt = rng.normal(0, 0.04, (2, 21, 3)) + [0, 0, 0.6]
    ev = make_evaluator("hand_object")
    ev.add({"joints": gt + [0.003, 0.0, 0.004]}, {"joints3d": gt})
    res = ev.result()
    assert res["joints3d_epe_mm"] == pytest.approx(5.0, rel=1e-9)
    step = 0.5 / 19  # 20 thresholds over [0, 0.5] m: 5 mm is below the 2nd -> PCK 0, 1, 1, ...
    assert res["joints3d_auc"] == pytest.approx((18.5 * step) / 0.5, rel=1e-9)
    assert res["joints3d_cent_epe_mm"] == pytest.approx(0.0, abs=1e-9)
    # shifting only the centre joint (9): 1 of 21 camera-space errors, 20 of 21 centred ones
    pred = gt.copy()
    pred[:, 9] += [0.0, 0.021, 0.0]
    for center, cent in ((9, 20 / 21 * 21.0), (0, 1 / 21 * 21.0)):
        ev = make_evaluator("hand_object", center=center)
        ev.add({"joints": pred}, {"joints3d": gt, "has_joints3d": np.array([True, True])})
        res = ev.result()
        assert res["joints3d_epe_mm"] == pytest.approx(1.0, rel=1e-9)
        assert res["joints3d_cent_epe_mm"] == pytest.approx(cent, rel=1e-9)
        assert res["num_hands"] == 2 and np.isnan(res["objverts3d_mepe_mm"]) and res["num_objects"] == 0


def test_hand_object_object_error_batch_and_sample_means():
    gt = np.zeros((3, 5, 3))
    gt[..., 2] = 0.4
    pred = gt.copy()
    pred[0, :, 0] += 0.001
    pred[1, :, 0] += 0.003
    batch1 = ({"object_vertices": pred[:2]}, {"object_vertices": gt[:2]})
    pred2 = np.concatenate([gt[:1] + [0.008, 0, 0], gt[:1] + 9.0, gt[:1] + 9.0])
    pred2[0, 4] += 5.0  # a padding vertex of a smaller object
    vv = np.ones((3, 5), bool)
    vv[0, 4] = False
    batch2 = ({"object_vertices": pred2},
              {"object_vertices": np.repeat(gt[:1], 3, 0), "has_object": np.array([True, False, True]),
               "object_vertex_valid": vv, "valid": np.array([True, True, False])})
    out = {}
    for average in ("batch", "sample"):
        ev = make_evaluator("hand_object", average=average)
        for p, lab in (batch1, batch2):
            before = copy.deepcopy(lab)
            ev.add(p, lab)
            _same(lab, before)
        out[average] = ev.result()
        json.dumps(out[average])
    assert out["batch"]["objverts3d_mepe_mm"] == pytest.approx((2.0 + 8.0) / 2)  # AverageMeter, n=1 per batch
    assert out["sample"]["objverts3d_mepe_mm"] == pytest.approx((1.0 + 3.0 + 8.0) / 3)
    assert out["batch"]["num_objects"] == 3 and np.isnan(out["batch"]["joints3d_epe_mm"])
    bad = copy.deepcopy(batch2[1])
    bad["object_vertex_valid"][0] = False
    with pytest.raises(ValueError, match="no valid object vertex"):
        make_evaluator("hand_object").add(batch2[0], bad)
    with pytest.raises(ValueError, match="neither 'joints' nor 'object_vertices'"):
        make_evaluator("hand_object").add({"x": gt}, {})


# ----------------------------------------------------------------------------- registry and table
def test_registry_errors_name_the_culprit():
    assert set(COLUMNS) == set(EVALUATORS)
    with pytest.raises(ValueError, match=r"unknown evaluator 'two_hands'.*known.*two_hand"):
        make_evaluator("two_hands")
    with pytest.raises(ValueError, match=r"'dexycb': unknown option\(s\) \['protocol'\].*average"):
        make_evaluator("dexycb", protocol="ho3d")
    with pytest.raises(ValueError, match=r"unknown label_keys entry \['joints'\].*joints3d"):
        make_evaluator("single_hand", label_keys={"joints": "x"})
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        make_evaluator("single_hand", protocol="interhand")


def test_format_table():
    rows = {"mean pose (x0)": {"mpjpe_mm": 40.12345, "pa_mpjpe_mm": float("nan"), "num_joints": 12},
            "fine-tuned": {"mpjpe_mm": 9.0}}
    table = format_table(rows, ["mpjpe_mm", "pa_mpjpe_mm", "num_joints"])
    lines = table.splitlines()
    assert lines[0].split() == ["model", "mpjpe_mm", "pa_mpjpe_mm", "num_joints"]
    assert lines[1].startswith("mean pose (x0)") and lines[1].split()[-3:] == ["40.123", "NaN", "12"]
    assert lines[2].split()[-3:] == ["9.000", "NaN", "NaN"]
    assert len({len(x) for x in lines}) == 1  # aligned columns
    with pytest.raises(ValueError, match="'fine-tuned' column 'per_joint'"):
        format_table({"fine-tuned": {"per_joint": [1.0, 2.0]}}, ["per_joint"])
