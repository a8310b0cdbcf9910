"""handjax.eval.protocols: FreiHAND/HO3D metrics (hand-built cases and a cross-check with an
independent numpy/scipy implementation of FreiHAND's eval.py), masking, pred.json format."""
import json

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from handjax.eval import protocols


# ----------------------------------------------------------------------------- independent reference
def ref_align_w_scale(gt, pred):
    """Similarity alignment of pred onto gt, written from FreiHAND's description: centre and
    normalise both to unit norm, rotate with scipy's orthogonal_procrustes, rescale by the sum
    of singular values, map back into gt's position and size."""
    gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    mu_g, mu_p = gt.mean(0), pred.mean(0)
    g, p = gt - mu_g, pred - mu_p
    ng, np_ = np.linalg.norm(g), np.linalg.norm(p)
    g, p = g / ng, p / np_
    r, s = orthogonal_procrustes(g, p)  # argmin ||g R - p|| -> p ~ g R, i.e. p R^T ~ g
    return (p @ r.T) * s * ng + mu_g


def ref_fscore(gt, pred, th):
    d_pg, _ = cKDTree(gt).query(pred)
    d_gp, _ = cKDTree(pred).query(gt)
    precision, recall = np.mean(d_pg < th), np.mean(d_gp < th)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def ref_auc(errors, lo=0.0, hi=0.05, steps=100):
    ts = np.linspace(lo, hi, steps)
    pck = np.array([np.mean(errors <= t) for t in ts])
    area = sum((pck[k] + pck[k + 1]) / 2 * (ts[k + 1] - ts[k]) for k in range(steps - 1))
    return area / (hi - lo)


def ref_protocol(pj, pv, gj, gv):
    ej = np.stack([np.linalg.norm(ref_align_w_scale(g, p) - g, axis=-1) for p, g in zip(pj, gj)])
    ev = np.stack([np.linalg.norm(ref_align_w_scale(g, p) - g, axis=-1) for p, g in zip(pv, gv)])
    f5 = [ref_fscore(g, ref_align_w_scale(g, p), 0.005) for p, g in zip(pv, gv)]
    f15 = [ref_fscore(g, ref_align_w_scale(g, p), 0.015) for p, g in zip(pv, gv)]
    rr = np.linalg.norm((pj - pj[:, :1]) - (gj - gj[:, :1]), axis=-1)
    return {"pa_mpjpe_mm": ej.mean() * 1000, "pa_mpvpe_mm": ev.mean() * 1000, "f5": np.mean(f5), "f15": np.mean(f15),
            "auc_pa": ref_auc(ej.ravel()), "auc_pa_mesh": ref_auc(ev.ravel()), "mpjpe_mm": rr.mean() * 1000}


def random_case(rng, n=4, noise=0.006):
    gj = rng.normal(0, 0.04, (n, 21, 3)) + [0, 0, 0.6]
    gv = rng.normal(0, 0.04, (n, 778, 3)) + [0, 0, 0.6]
    rot = Rotation.random(n, random_state=1).as_matrix()
    scale = rng.uniform(0.8, 1.2, n)[:, None, None]
    shift = rng.normal(0, 0.1, (n, 1, 3))
    pj = scale * (gj + rng.normal(0, noise, gj.shape)) @ np.swapaxes(rot, 1, 2) + shift
    pv = scale * (gv + rng.normal(0, noise, gv.shape)) @ np.swapaxes(rot, 1, 2) + shift
    return pj, pv, gj, gv


# ----------------------------------------------------------------------------- metrics
def test_matches_independent_freihand_implementation():
    pj, pv, gj, gv = random_case(np.random.default_rng(0))
    got = protocols.evaluate(pj, pv, gj, gv)
    ref = ref_protocol(pj, pv, gj, gv)
    for key in ("pa_mpjpe_mm", "pa_mpvpe_mm", "mpjpe_mm"):
        assert got[key] == pytest.approx(ref[key], abs=2e-3), key
    for key in ("f5", "f15", "auc_pa", "auc_pa_mesh"):
        assert got[key] == pytest.approx(ref[key], abs=2e-3), key
    assert 0.05 < got["f5"] < 0.95 and got["num_joints"] == 4 and got["num_vertices"] == 4


def test_hand_built_case_with_known_alignment():
    """gt = 4 points (+-1, 0, 0), (0, +-1, 0); pred moves them by +-d along z. The optimal
    similarity is R = I, t = 0, s = 1 / (1 + d^2): every aligned error is d / sqrt(1 + d^2)."""
    base = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])
    for d, f5, f15 in ((0.004, 1.0, 1.0), (0.01, 0.0, 1.0), (0.02, 0.0, 0.0)):
        pred = base + np.array([[0, 0, d], [0, 0, d], [0, 0, -d], [0, 0, -d]])
        m = protocols.evaluate(pred[None], pred[None], base[None], base[None])
        err = d / np.sqrt(1 + d * d)
        assert m["pa_mpjpe_mm"] == pytest.approx(err * 1000, rel=1e-4)
        assert m["pa_mpvpe_mm"] == pytest.approx(err * 1000, rel=1e-4)
        assert m["f5"] == f5 and m["f15"] == f15
        # every error equals err: PCK is 1 from the first threshold >= err on
        ts = np.linspace(0, 0.05, 100)
        k = int(np.argmax(ts >= err))
        expected_auc = ((99 - k) * 1.0 + 0.5) * (0.05 / 99) / 0.05 if k > 0 else 1.0
        assert m["auc_pa"] == pytest.approx(expected_auc, abs=1e-6)
        # root-relative error without alignment: joint 0 moves by d, joint i by +-d: |e_i - e_0|
        assert m["mpjpe_mm"] == pytest.approx(np.mean([0, 0, 2 * d, 2 * d]) * 1000, rel=1e-5)


def test_missing_ground_truth_is_masked_not_faked():
    pj, pv, gj, gv = random_case(np.random.default_rng(1), n=5)
    has_j = np.array([True, False, True, True, False])
    has_v = np.array([False, False, True, True, True])
    m = protocols.evaluate(pj, pv, gj, gv, has_j, has_v)
    sub_j = protocols.evaluate(pj[has_j], pv[has_j], gj[has_j], gv[has_j])
    sub_v = protocols.evaluate(pj[has_v], pv[has_v], gj[has_v], gv[has_v])
    assert m["pa_mpjpe_mm"] == pytest.approx(sub_j["pa_mpjpe_mm"]) and m["num_joints"] == 3
    assert m["pa_mpvpe_mm"] == pytest.approx(sub_v["pa_mpvpe_mm"]) and m["num_vertices"] == 3
    assert m["f5"] == pytest.approx(sub_v["f5"])
    none = protocols.evaluate(pj, pv, gj, gv, np.zeros(5, bool), np.zeros(5, bool))
    assert none["num_joints"] == 0 and all(np.isnan(none[k]) for k in ("pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "auc_pa"))
    ev = protocols.HandEvaluator()  # a pipeline batch: padding (valid False) is left out too
    ev.add_batch(pj, pv, {"joints3d": gj, "vertices": gv, "has_joints3d": has_j, "has_vertices": has_v,
                          "valid": np.array([True, True, True, False, True])})
    r = ev.result()
    assert r["num_joints"] == 2 and r["num_vertices"] == 2
    table = protocols.format_metrics({"model": none})
    assert "n/a" in table and "pa_mpjpe_mm" in table


# ----------------------------------------------------------------------------- frames
def test_opengl_flip():
    p = np.array([[0.1, 0.2, -0.5]])
    np.testing.assert_array_equal(protocols.opengl_to_opencv(p), [[0.1, -0.2, 0.5]])
    np.testing.assert_array_equal(protocols.opengl_to_opencv(protocols.opengl_to_opencv(p)), p)
    r = Rotation.random(3, random_state=0).as_matrix()
    got = protocols.opengl_to_opencv_rotation(r)
    np.testing.assert_allclose(got, np.diag([1.0, -1.0, -1.0]) @ r, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(got), 1.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        protocols.opengl_to_opencv(np.zeros((2, 2)))


# ----------------------------------------------------------------------------- pred.json
def test_freihand_pred_json_format_and_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    joints, verts = rng.normal(0, 0.1, (3, 21, 3)), rng.normal(0, 0.1, (3, 778, 3))
    joints[0, 0] = [0.123456789, -0.000004, 1.0000049]
    path = protocols.write_pred_json(str(tmp_path / "pred.json"), "freihand", joints, verts, check_count=False)
    raw = json.loads(open(path).read())
    assert isinstance(raw, list) and len(raw) == 2
    assert np.asarray(raw[0]).shape == (3, 21, 3) and np.asarray(raw[1]).shape == (3, 778, 3)
    assert raw[0][0][0] == [0.12346, -0.0, 1.0]  # metres, 5 decimals, OpenCV frame as predicted
    flat = np.concatenate([np.ravel(raw[0]), np.ravel(raw[1])])
    np.testing.assert_array_equal(flat, np.round(flat, 5))
    back_j, back_v = protocols.read_pred_json(path, "freihand")
    np.testing.assert_allclose(back_j, joints, atol=5.1e-6)
    np.testing.assert_allclose(back_v, verts, atol=5.1e-6)
    with pytest.raises(ValueError, match="3960"):
        protocols.write_pred_json(str(tmp_path / "p2.json"), "freihand", joints, verts)


def test_ho3d_pred_json_is_opengl(tmp_path):
    rng = np.random.default_rng(3)
    joints, verts = rng.normal(0, 0.1, (2, 21, 3)) + [0, 0, 0.5], rng.normal(0, 0.1, (2, 778, 3)) + [0, 0, 0.5]
    path = protocols.write_pred_json(str(tmp_path / "pred.json"), "ho3d", joints, verts)
    raw = json.loads(open(path).read())
    x, y, z = joints[1, 7]
    assert raw[0][1][7] == [round(x, 5), round(-y, 5), round(-z, 5)]  # y and z negated: hand along -z
    assert np.all(np.asarray(raw[1])[..., 2] < 0)
    back_j, back_v = protocols.read_pred_json(path, "ho3d")
    np.testing.assert_allclose(back_j, joints, atol=5.1e-6)
    np.testing.assert_allclose(back_v, verts, atol=5.1e-6)


def test_pred_json_local_evaluation_and_bad_files(tmp_path):
    pj, pv, gj, gv = random_case(np.random.default_rng(4), n=3)
    path = protocols.write_pred_json(str(tmp_path / "pred.json"), "ho3d", pj, pv)
    from_file = protocols.evaluate_pred_json(path, "ho3d", gj, gv)
    direct = protocols.evaluate(pj, pv, gj, gv)
    assert from_file["pa_mpjpe_mm"] == pytest.approx(direct["pa_mpjpe_mm"], abs=0.01)
    assert from_file["f15"] == pytest.approx(direct["f15"], abs=0.01)
    (tmp_path / "bad.json").write_text(json.dumps([[[[0.0, 0.0, 0.0]] * 20]]))
    with pytest.raises(ValueError, match="bad.json"):
        protocols.read_pred_json(str(tmp_path / "bad.json"), "freihand")
    (tmp_path / "bad2.json").write_text(json.dumps([[[[0.0] * 3] * 20], [[[0.0] * 3] * 778]]))
    with pytest.raises(ValueError, match=r"\(N, 21, 3\)"):
        protocols.read_pred_json(str(tmp_path / "bad2.json"), "freihand")
    with pytest.raises(ValueError, match="unknown benchmark"):
        protocols.read_pred_json(path, "dexycb")


def test_prediction_collector_restores_the_official_order():
    rng = np.random.default_rng(5)
    joints, verts = rng.normal(size=(5, 21, 3)), rng.normal(size=(5, 778, 3))
    col = protocols.PredictionCollector()
    order = [3, 0, 4, 1, 2]
    col.add_batch(joints[order[:3]], verts[order[:3]], {"eval_index": np.array(order[:3]), "valid": np.ones(3, bool)})
    # last batch padded by repeating its last sample
    pad = order[3:] + [order[-1]]
    col.add_batch(joints[pad], verts[pad], {"eval_index": np.array(pad), "valid": np.array([True, True, False])})
    got_j, got_v = col.arrays(expected=5)
    np.testing.assert_array_equal(got_j, joints.astype(np.float32))
    np.testing.assert_array_equal(got_v, verts.astype(np.float32))
    bad = protocols.PredictionCollector()
    bad.add(joints[:2], verts[:2], np.array([0, 2]))
    with pytest.raises(ValueError, match="1 missing"):
        bad.arrays(expected=3)


# ----------------------------------------------------------------------------- HO3D align_sc_tr and scores
def ref_align_sc_tr(gt, pred):
    """HO3D eval.py's definition, one sample: divide the prediction by its wrist (0) to middle-MCP
    (4) length when that is > 0, multiply by the ground truth's, put its wrist on the GT wrist."""
    p = np.array(pred, np.float64)
    s = np.sqrt(np.sum((p[4] - p[0]) ** 2))
    if s > 0:
        p = p / s
    p = p * np.sqrt(np.sum((gt[4] - gt[0]) ** 2))
    return p - p[0:1] + gt[0:1]


def test_align_sc_tr_matches_definition_and_hand_case():
    pj, _, gj, _ = random_case(np.random.default_rng(6), n=5)
    pj[2, 4] = pj[2, 0]  # zero prediction length: only multiplied by the GT length
    got = protocols.align_sc_tr(pj, gj)
    for k in range(5):
        np.testing.assert_allclose(got[k], ref_align_sc_tr(gj[k], pj[k]), atol=1e-12)
    # hand case: GT wrist (0, 0, 1), middle MCP 0.1 m away; predicted one 0.2 m away -> scale 1/2
    gt, pred = np.zeros((21, 3)), np.zeros((21, 3))
    gt[:, 2] = 1.0
    gt[4] = [0.1, 0.0, 1.0]
    pred[:] = [1.0, 1.0, 1.0]
    pred[4] = [1.0, 1.2, 1.0]
    pred[7] = [1.4, 1.0, 1.0]
    out = protocols.align_sc_tr(pred, gt)
    np.testing.assert_allclose(out[0], [0.0, 0.0, 1.0], atol=1e-15)   # wrist on the GT wrist
    np.testing.assert_allclose(out[4], [0.0, 0.1, 1.0], atol=1e-15)   # no rotation: the length is matched only
    np.testing.assert_allclose(out[7], [0.2, 0.0, 1.0], atol=1e-15)   # (0.4, 0, 0) * 0.5 from the wrist
    with pytest.raises(ValueError, match="align_sc_tr"):
        protocols.align_sc_tr(pred[:, :2], gt[:, :2])


def test_ho3d_report_matches_official_definitions():
    rng = np.random.default_rng(7)
    _, _, gj, gv = random_case(rng, n=3)
    gj, gv = gj * 0.3, gv * 0.3  # hand-sized (a few cm), errors below within the AUC range
    scale, shift = rng.uniform(0.9, 1.1, (3, 1, 1)), rng.normal(0, 0.008, (3, 1, 3))
    pj = scale * (gj - gj[:, :1]) + gj[:, :1] + shift + rng.normal(0, 0.003, gj.shape)
    pv = scale * (gv - gj[:, :1]) + gj[:, :1] + shift + rng.normal(0, 0.003, gv.shape)
    got = protocols.evaluate(pj, pv, gj, gv, protocol="ho3d")
    assert set(protocols.HO3D_KEYS) <= set(got)
    abs_j = np.linalg.norm(pj - gj, axis=-1)
    sc_tr = np.stack([np.linalg.norm(ref_align_sc_tr(g, p) - g, axis=-1) for p, g in zip(pj, gj)])
    abs_v = np.linalg.norm(pv - gv, axis=-1)
    ref = ref_protocol(pj, pv, gj, gv)
    expected = {
        "xyz_mean3d_mm": abs_j.mean() * 1000, "xyz_auc3d": ref_auc(abs_j.ravel()),
        "xyz_scale_trans_al_mean3d_mm": sc_tr.mean() * 1000, "xyz_scale_trans_al_auc3d": ref_auc(sc_tr.ravel()),
        "mesh_mean3d_mm": abs_v.mean() * 1000, "mesh_auc3d": ref_auc(abs_v.ravel()),
        "xyz_procrustes_al_mean3d_mm": ref["pa_mpjpe_mm"], "mesh_al_mean3d_mm": ref["pa_mpvpe_mm"],
        "f_score_5": np.mean([ref_fscore(g, p, 0.005) for p, g in zip(pv, gv)]),
        "f_score_15": np.mean([ref_fscore(g, p, 0.015) for p, g in zip(pv, gv)]),
        "f_al_score_5": ref["f5"], "f_al_score_15": ref["f15"],
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=2e-3), key
    assert 0.05 < got["xyz_auc3d"] < 0.95 and 0.0 < got["f_score_15"] < 1.0
    plain = protocols.evaluate(pj, pv, gj, gv, protocol="freihand")
    assert not set(protocols.HO3D_KEYS) & set(plain)
    with pytest.raises(ValueError, match="unknown evaluation protocol 'ho4d'"):
        protocols.HandEvaluator("ho4d")
