"""InterHand2.6M and DexYCB evaluation protocols against hand-built cases and loop references."""
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes

from handjax.eval.dexycb import DexYCBEvaluator, dexycb_metrics, summarize_dexycb
from handjax.eval.two_hand import (
    InterHandEvaluator,
    evaluate_interhand,
    handedness_correct,
    hand_type_codes,
    mrrpe_errors,
    relative_root,
    root_masked_valid,
)


# ----------------------------------------------------------------------------- InterHand2.6M
def _hands(rng, n):
    return rng.normal(0, 0.05, (n, 42, 3)) + np.array([0, 0, 0.5])


def test_interhand_mpjpe_hand_built():
    rng = np.random.default_rng(0)
    gt = _hands(rng, 2)
    pred = gt + np.array([0.2, -0.1, 0.3])  # a global shift: cancelled per hand
    pred[1, 21:] += np.array([0.05, 0.0, 0.0])  # left hand of frame 1 shifted as a whole: cancelled too
    pred[0, 0] += [0.003, 0, 0]          # single frame, right joint 0: 3 mm
    pred[1, 21] += [0, 0.004, 0]         # interacting frame, left joint 21: 4 mm
    pred[1, 5] += [0, 0, 0.006]          # interacting frame, right joint 5: 6 mm but invalid
    valid = np.ones((2, 42), bool)
    valid[0, 21:] = False                # right-only frame: left hand invalid
    valid[1, 5] = False
    res = evaluate_interhand(pred, gt, valid, ["right", "interacting"])
    np.testing.assert_allclose(res["mpjpe_single_mm"], 3.0 / 21, rtol=1e-5)
    np.testing.assert_allclose(res["mpjpe_interacting_mm"], 4.0 / 41, rtol=1e-5)
    np.testing.assert_allclose(res["mpjpe_all_mm"], (1.5 + 4.0) / 42, rtol=1e-5)
    assert res["joint_count_single"][21:].sum() == 0 and res["joint_count_interacting"][5] == 0
    np.testing.assert_allclose(res["per_joint_all_mm"][[0, 5, 21]], [1.5, 0.0, 4.0], atol=1e-5)


def test_interhand_root_invalid_masks_its_hand():
    valid = np.ones((1, 42), bool)
    valid[0, 41] = False
    masked = root_masked_valid(valid)
    assert masked[0, :21].all() and not masked[0, 21:].any()


def _reference_interhand(pred, gt, valid, hand_type, pred_rel, prob, ht_valid):
    """Loop transcription of InterHand2.6M's Dataset.evaluate semantics (metres in, mm out)."""
    sh, ih = [[] for _ in range(42)], [[] for _ in range(42)]
    mrrpe, acc, cnt = [], 0, 0
    for n in range(len(gt)):
        v = valid[n].astype(float).copy()
        v[:21] *= v[20]
        v[21:] *= v[41]
        p, g = pred[n].copy(), gt[n].copy()
        if hand_type[n] == "interacting" and valid[n, 20] and valid[n, 41]:
            mrrpe.append(np.linalg.norm(pred_rel[n] - (g[41] - g[20])))
        for root, sl in ((20, slice(0, 21)), (41, slice(21, 42))):
            p[sl] -= p[root]
            g[sl] -= g[root]
        for j in range(42):
            if v[j]:
                (sh if hand_type[n] in ("right", "left") else ih)[j].append(np.linalg.norm(p[j] - g[j]))
        if ht_valid[n]:
            r, l = prob[n]
            ok = {"right": r > 0.5 and l < 0.5, "left": r < 0.5 and l > 0.5, "interacting": r > 0.5 and l > 0.5}
            acc += ok[hand_type[n]]
            cnt += 1
    return {"all": np.mean([np.mean(sh[j] + ih[j]) for j in range(42)]) * 1000,
            "single": np.mean([np.mean(sh[j]) for j in range(42)]) * 1000,
            "interacting": np.mean([np.mean(ih[j]) for j in range(42)]) * 1000,
            "mrrpe": np.mean(mrrpe) * 1000, "acc": acc / cnt}


def test_interhand_matches_loop_reference_and_batches():
    rng = np.random.default_rng(1)
    n = 37  # not a multiple of the batch: the last batch is padded
    gt = _hands(rng, n)
    pred = gt + rng.normal(0, 0.01, gt.shape)
    hand_type = np.array(["right", "left", "interacting"])[np.arange(n) % 3]
    valid = rng.random((n, 42)) > 0.1
    valid[np.arange(n) % 7 == 0, 20] = False
    pred_rel = relative_root(gt) + rng.normal(0, 0.02, (n, 3))
    prob = rng.random((n, 2))
    ht_valid = rng.random(n) > 0.2
    ref = _reference_interhand(pred, gt, valid, hand_type, pred_rel, prob, ht_valid)
    ev = InterHandEvaluator()
    pad = np.ones(8, bool)
    for start in range(0, n, 8):  # batches of 8, the last one padded with garbage marked invalid
        sl = slice(start, start + 8)
        extra = 8 - len(gt[sl])
        padded = lambda a: np.concatenate([a[sl], np.repeat(a[:1], extra, 0)])  # noqa: E731
        keep = pad.copy()
        keep[8 - extra:] = False
        ev.add(padded(pred) + (~keep)[:, None, None], padded(gt), padded(valid), padded(hand_type),
               pred_rel_root=padded(pred_rel), pred_hand_prob=padded(prob), hand_type_valid=padded(ht_valid),
               valid=keep)
    res = ev.result()
    for key in ("all", "single", "interacting"):
        np.testing.assert_allclose(res[f"mpjpe_{key}_mm"], ref[key], rtol=1e-5)
    np.testing.assert_allclose(res["mrrpe_mm"], ref["mrrpe"], rtol=1e-5)
    np.testing.assert_allclose(res["handedness_acc"], ref["acc"], rtol=1e-12)
    assert res["frames_single"] + res["frames_interacting"] == n


def test_mrrpe_and_handedness_hand_built():
    gt = np.zeros((3, 42, 3))
    gt[:, 20] = [0.0, 0.0, 0.5]
    gt[:, 41] = [0.1, 0.0, 0.5]
    pred_rel = np.array([[0.1, 0.003, 0.004]] * 3)
    valid = np.ones((3, 42), bool)
    valid[1, 41] = False
    err, mask = mrrpe_errors(pred_rel, gt, valid, ["interacting", "interacting", "right"])
    np.testing.assert_allclose(err[0], 0.005, rtol=1e-12)
    np.testing.assert_array_equal(mask, [True, False, False])
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.7], [0.4, 0.8], [0.5, 0.9]])
    ok = handedness_correct(prob, ["right", "left", "interacting", "left", "interacting"])
    np.testing.assert_array_equal(ok, [True, False, True, True, False])  # 0.5 is not > 0.5
    np.testing.assert_array_equal(hand_type_codes(np.array([b"left", b"right"])), [1, 0])
    with pytest.raises(ValueError, match="hand_type"):
        hand_type_codes(["both"])
    with pytest.raises(ValueError, match="42"):
        evaluate_interhand(np.zeros((1, 21, 3)), np.zeros((1, 21, 3)), np.ones((1, 21)), ["right"])


# ----------------------------------------------------------------------------- DexYCB
def _align_w_scale(gt, pred):
    """FreiHAND eval.py align_w_scale (scipy), the toolkit's 'procrustes' alignment."""
    t1, t2 = gt.mean(0), pred.mean(0)
    g, p = gt - t1, pred - t2
    s1, s2 = np.linalg.norm(g), np.linalg.norm(p)
    R, s = orthogonal_procrustes(g / s1, p / s2)
    return (p / s2 @ R.T) * s * s1 + t1


def test_dexycb_hand_built_and_reference():
    rng = np.random.default_rng(2)
    gt = rng.normal(0, 0.04, (4, 21, 3)) + [0, 0, 0.6]
    gv = rng.normal(0, 0.04, (4, 778, 3)) + [0, 0, 0.6]
    shift = np.array([0.003, 0.0, 0.004])
    m = dexycb_metrics(gt + shift, gt, gv + shift, gv)
    np.testing.assert_allclose(m["abs_mpjpe"], 0.005, rtol=1e-5)
    np.testing.assert_allclose(m["mpjpe"], 0.0, atol=1e-6)
    np.testing.assert_allclose(m["mpvpe"], 0.0, atol=1e-6)  # verts shifted with their wrist
    pred = gt + rng.normal(0, 0.01, gt.shape)
    pv = gv + rng.normal(0, 0.01, gv.shape)
    m = dexycb_metrics(pred, gt, pv, gv)
    ref_pa = [np.mean(np.linalg.norm(_align_w_scale(g, p) - g, axis=-1)) for p, g in zip(pred, gt)]
    np.testing.assert_allclose(m["pa_mpjpe"], ref_pa, rtol=1e-4)
    ref_pv = [np.mean(np.linalg.norm(_align_w_scale(g, p) - g, axis=-1)) for p, g in zip(pv, gv)]
    np.testing.assert_allclose(m["pa_mpvpe"], ref_pv, rtol=1e-4)
    ref_rr = np.mean(np.linalg.norm((pred - pred[:, :1]) - (gt - gt[:, :1]), axis=-1), axis=-1)
    np.testing.assert_allclose(m["mpjpe"], ref_rr, rtol=1e-5)
    ref_v = np.mean(np.linalg.norm((pv - pred[:, :1]) - (gv - gt[:, :1]), axis=-1), axis=-1)
    np.testing.assert_allclose(m["mpvpe"], ref_v, rtol=1e-5)


def test_dexycb_evaluator_summary_and_auc():
    gt = np.zeros((2, 21, 3))
    pred = gt.copy()
    pred[:, :, 0] = 0.025  # every joint 25 mm off (absolute); root-relative error 0
    ev = DexYCBEvaluator()
    ev.add_batch(pred[:1], gt[:1])
    ev.add_batch(np.concatenate([pred[1:], pred[1:] + 1.0]), np.concatenate([gt[1:], gt[1:]]),
                 valid=np.array([True, False]))
    res = ev.result()
    np.testing.assert_allclose(res["abs_mpjpe_mm"], 25.0, rtol=1e-5)
    np.testing.assert_allclose(res["mpjpe_mm"], 0.0, atol=1e-4)
    # PCK steps from 0 to 1 at 25 mm over 0..50 mm -> AUC ~ 0.5; zero errors -> AUC 1
    np.testing.assert_allclose(res["auc_abs"], 0.5, atol=0.011)
    np.testing.assert_allclose(res["auc_rr"], 1.0)
    assert ev.count == 2 and "mpvpe_mm" not in res
    direct = summarize_dexycb(dexycb_metrics(pred, gt))
    np.testing.assert_allclose(direct["abs_mpjpe_mm"], res["abs_mpjpe_mm"])
    with pytest.raises(ValueError, match="both"):
        dexycb_metrics(pred, gt, pred_verts=np.zeros((2, 778, 3)))
