"""Evaluation metrics against hand-computed cases and an independent numpy/scipy implementation."""
import numpy as np
import jax.numpy as jnp
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from handjax.eval import MetricAccumulator, auc, f_score, hand_metrics, mpjpe, pa_mpjpe, pck_curve


def test_mpjpe_hand_computed():
    gt = np.zeros((1, 3, 3))
    pred = np.array([[[0.003, 0, 0], [0, 0.004, 0], [0, 0, 0.005]]])
    np.testing.assert_allclose(mpjpe(jnp.asarray(pred), jnp.asarray(gt)), [0.004], rtol=1e-6)
    # root-relative: a global shift costs nothing
    np.testing.assert_allclose(mpjpe(jnp.asarray(gt + 0.3), jnp.asarray(gt), root=0), [0.0], atol=1e-7)


def test_pa_mpjpe_is_zero_for_a_similarity_transform():
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 0.05, (3, 21, 3))
    R = Rotation.random(3, random_state=1).as_matrix()
    pred = 1.7 * np.einsum("bij,bnj->bni", R, gt) + rng.normal(size=(3, 1, 3))
    np.testing.assert_allclose(pa_mpjpe(jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32)), 0, atol=1e-6)
    assert float(mpjpe(jnp.asarray(pred), jnp.asarray(gt)).min()) > 0.01


def test_f_score_constructed_point_sets():
    gt = np.array([[[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]], np.float32) * 0.01
    # 3 of 4 predictions within 5 mm of gt; the 4th is 2 cm away from everything
    pred = gt.copy()
    pred[0, :3, 1] += 0.004
    pred[0, 3] = [0.03, 0.02, 0.0]
    # precision 3/4; recall: gt 0..2 matched, gt 3 (at 3 cm) is 2 cm from pred 3 -> 3/4
    np.testing.assert_allclose(f_score(jnp.asarray(pred), jnp.asarray(gt), 0.005), [0.75], rtol=1e-6)
    np.testing.assert_allclose(f_score(jnp.asarray(pred), jnp.asarray(gt), 0.025), [1.0])
    np.testing.assert_allclose(f_score(jnp.asarray(pred), jnp.asarray(gt), 0.001), [0.0])


def test_auc_of_constant_errors():
    thresholds = np.linspace(0, 0.05, 100)
    # every error is 25 mm: the PCK steps from 0 to 1 at 25 mm -> AUC ~ 0.5
    curve = pck_curve(np.full((10, 21), 0.025), thresholds)
    assert curve[0] == 0 and curve[-1] == 1
    np.testing.assert_allclose(auc(curve, thresholds), 0.5, atol=0.011)
    np.testing.assert_allclose(auc(pck_curve(np.zeros((2, 21)), thresholds), thresholds), 1.0)


def _freihand_reference(pred, gt):
    """Independent implementation: FreiHAND eval.py semantics with scipy."""
    def align(gt_s, pr_s):
        t1, t2 = gt_s.mean(0), pr_s.mean(0)
        g, p = gt_s - t1, pr_s - t2
        s1, s2 = np.linalg.norm(g), np.linalg.norm(p)
        g, p = g / s1, p / s2
        R, s = orthogonal_procrustes(g, p)
        return (p @ R.T) * s * s1 + t1

    out = {"pa": [], "f5": [], "f15": []}
    for p, g in zip(pred, gt):
        a = align(g, p)
        out["pa"].append(np.mean(np.linalg.norm(a - g, axis=1)))
        for th, key in ((0.005, "f5"), (0.015, "f15")):
            d_pg = cKDTree(g).query(a)[0]
            d_gp = cKDTree(a).query(g)[0]
            prec, rec = np.mean(d_pg < th), np.mean(d_gp < th)
            out[key].append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    return {k: np.array(v) for k, v in out.items()}


def test_hand_metrics_match_independent_freihand_implementation():
    rng = np.random.default_rng(3)
    gt = rng.normal(0, 0.04, (6, 50, 3))
    pred = gt * 1.1 + rng.normal(0, 0.008, gt.shape) + rng.normal(size=(6, 1, 3))
    ours = hand_metrics(jnp.asarray(pred[:, :21], jnp.float32), jnp.asarray(gt[:, :21], jnp.float32),
                        jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32))
    ref_j = _freihand_reference(pred[:, :21], gt[:, :21])
    ref_v = _freihand_reference(pred, gt)
    np.testing.assert_allclose(ours["pa_mpjpe"], ref_j["pa"], rtol=1e-4)
    np.testing.assert_allclose(ours["pa_mpvpe"], ref_v["pa"], rtol=1e-4)
    np.testing.assert_allclose(ours["f5"], ref_v["f5"], atol=1e-6)
    np.testing.assert_allclose(ours["f15"], ref_v["f15"], atol=1e-6)


def test_accumulator_skips_padding():
    acc = MetricAccumulator()
    acc.add({"mpjpe": np.array([0.01, 0.02, 99.0])}, valid=np.array([True, True, False]))
    acc.add({"mpjpe": np.array([0.03])})
    assert acc.count == 3
    np.testing.assert_allclose(acc.result()["mpjpe_mm"], 20.0)
