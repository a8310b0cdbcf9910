"""End to end: `python -m handjax.main --config configs/personalize.py:size=tiny` (baseline -> confidence ->
identity -> calibrate -> optimize -> eval on the tiny built-in identities, 8 CPU devices), then checks of what
it wrote: the table's rows, the calibration files and plot, the confidence stage having trained only its
branch, and the ground truth the stages score against being the dataset's own meshes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout=600):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "handjax.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("personalize")
    work, data = tmp / "work", tmp / "data"
    r = _run(["--config", "configs/personalize.py:size=tiny", "--workdir", str(work),
              f"--config.data.data_dir={data}"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work, data, r.stdout


def test_tiny_run_prints_the_table_and_writes_the_calibration(tiny_run):
    work, _, out = tiny_run
    for stage in ("baseline", "confidence", "identity"):
        assert f"[{stage}] step 2/2" in out
    assert "[confidence] initialised from" in out
    rows = ["mean pose + mean shape", "baseline (per-image betas)", "identity-aware, GT betas"] + [
        f"identity-aware, calibrated ({m})" for m in ("mean", "confidence", "topk")]
    table = json.loads((work / "eval_metrics.json").read_text())
    assert set(table) == set(rows) | {r + " + opt" for r in rows[1:]}
    for row in rows + [r + " + opt" for r in rows[1:]]:
        assert row in out
        assert all(0 < table[row][k] < 1000 for k in ("mpjpe_mm", "pa_mpjpe_mm", "mpvpe_mm", "pa_mpvpe_mm"))
    results = json.loads((work / "results.json").read_text())
    assert set(results) >= {"baseline", "confidence", "identity", "calibrate", "optimize", "eval"}
    cal = json.loads((work / "calibrate" / "calibration.json").read_text())
    assert cal["num_images"] == 3 and set(cal["betas"]) == {"mean", "confidence", "topk"}
    assert len(cal["betas"]["mean"]) == 2 and all(len(b) == 10 for b in cal["betas"]["mean"].values())
    curve = json.loads((work / "calibrate" / "curve.json").read_text())
    assert curve["n"] == [1, 2, 4] and len(curve["topk"]["mpvpe_mm"]) == 3
    assert set(curve["reference"]) == {"shape_error", "mpvpe_mm"}
    ref_gt = curve["reference"]["mpvpe_mm"]["GT betas"]  # the same quantity as the table's GT-betas row
    np.testing.assert_allclose(ref_gt, table["identity-aware, GT betas"]["mpvpe_mm"], rtol=1e-4)
    per_image = json.loads((work / "calibrate" / "calibration.json").read_text())["metrics"]["shape_error_per_image"]
    np.testing.assert_allclose(curve["reference"]["shape_error"]["per-image betas (baseline)"], per_image, rtol=1e-6)
    assert (work / "calibration_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fits = np.load(work / "optimize" / "fits.npz")
    assert fits["0_energy"].shape[1] == 5 + 3  # tiny: 5 translation + 3 pose iterations, every one recorded


def test_the_confidence_stage_trains_only_its_branch(tiny_run):
    from handjax.configs.personalize import get_config
    from handjax.train import personalize
    from handjax.train.loop import restore_model

    work, _, _ = tiny_run
    cfg = get_config("size=tiny")
    base, conf = personalize.build_model(cfg, "baseline", 1), personalize.build_model(cfg, "baseline", 2)
    restore_model(base, str(work / "baseline"))
    restore_model(conf, str(work / "confidence"), trainable=personalize.CONF_ONLY)
    flat = lambda m, f: {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(m, f))}
    pb, pc = flat(base, nnx.Param), flat(conf, nnx.Param)
    changed = sorted(k for k in pb if not np.array_equal(pb[k], pc[k]))
    assert changed and all(k[0] == "conf" for k in changed)
    sb, sc = flat(base, nnx.BatchStat), flat(conf, nnx.BatchStat)  # BN statistics kept updating, as upstream
    assert any(not np.array_equal(sb[k], sc[k]) for k in sb)
    again = personalize.build_model(cfg, "baseline", 3)
    restore_model(again, str(work / "confidence"))  # no filter: the checkpoint records its trainable split
    ca, cc = flat(again, ...), flat(conf, ...)
    assert sorted(ca) == sorted(cc) and all(np.array_equal(ca[k], cc[k]) for k in cc)


def test_ground_truth_is_the_datasets_meshes(tiny_run):
    from data_pipelines.factory import make_data_factory
    from handjax.configs.personalize import get_config

    work, data, _ = tiny_run
    cfg = get_config("size=tiny")
    cfg.data.data_dir = str(data)
    pred = np.load(work / "calibrate" / "predictions.npz")
    batches = make_data_factory(cfg.data, seed=0)(split="test", mode="frame", batch_size=8, train=False, seed=0)
    verts, joints, subjects = [], [], []
    for b in batches:
        keep = np.asarray(b.get("valid", np.ones(len(b["image"]), bool)))
        verts.append(b["vertices"][keep])
        joints.append(b["joints3d"][keep])
        subjects.append(b["subject_id"][keep])
    # MANO(mano_pose, betas) + transl (the MANO frame plus the translation) reproduces the stored meshes; the
    # joints are the dataset's except the fingertips, which are DexYCB's tip vertices (745, 317, 444, 556, 673
    # in the manopth order) where the built-in data stores FreiHAND's
    np.testing.assert_allclose(pred["gt_vertices"], np.concatenate(verts), atol=1e-5)
    tips = [4, 8, 12, 16, 20]
    body = [i for i in range(21) if i not in tips]
    np.testing.assert_allclose(pred["gt_joints"][:, body], np.concatenate(joints)[:, body], atol=1e-5)
    np.testing.assert_allclose(pred["gt_joints"][:, tips], pred["gt_vertices"][:, [745, 317, 444, 556, 673]],
                               atol=1e-6)
    np.testing.assert_array_equal(pred["subject"], np.concatenate(subjects))
    assert len(np.unique(pred["subject"])) == 2 and np.all(np.isfinite(pred["conf"]))


def test_predict_with_a_subject_shape(tiny_run, tmp_path):
    """python -m handjax.predict on two test crops with the baseline checkpoint and a calibrated subject shape."""
    from PIL import Image

    work, data, _ = tiny_run
    cal = json.loads((work / "calibrate" / "calibration.json").read_text())
    subject, betas = next(iter(cal["betas"]["mean"].items()))
    (tmp_path / "shape.json").write_text(json.dumps({"betas": betas}))
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "handjax.predict", "--config", "configs/personalize.py:size=tiny",
                        "--checkpoint", str(work / "baseline"), "--images", str(tmp_path / "img0.png"),
                        "--images", str(tmp_path / "img1.png"), "--out", str(tmp_path / "out"), "--batch_size", "2",
                        f"--subject_shape={tmp_path / 'shape.json'}", "--noprogress"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for i in range(2):
        rec = json.loads((tmp_path / "out" / f"img{i}.json").read_text())
        hand = rec["hands"][0]
        np.testing.assert_allclose(hand["mano"]["betas"], betas, atol=1e-5)
        assert hand["mano"]["transl"][2] > 0.1  # the fitted translation (the camera K [I | t]), in front
        assert (tmp_path / "out" / f"img{i}_right.obj").is_file()
