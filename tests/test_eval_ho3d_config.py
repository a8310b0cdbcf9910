"""configs/eval_ho3d.py end to end on an HO3D fixture whose evaluation split has no ground
truth (old releases): metrics are reported as n/a, pred.json follows evaluation.txt's order
(checked with two lines sharing one frame) in OpenGL axes."""
import json
import shutil

import numpy as np

from hand_dataset_fixtures import load_config, run_main, save_random_tempclr_model, write_ho3d


def test_eval_ho3d_without_ground_truth(tmp_path):
    raw = tmp_path / "raw"
    gt = write_ho3d(raw, "v2", train={"ABF10": 1}, evaluation={"SM1": 2, "AP10": 3}, size=(24, 32))
    lines = gt["evaluation"]["lines"]  # file order: AP10/0002, AP10/0001, AP10/0000, SM1/0001, SM1/0000
    (src_seq, src_fid), (dst_seq, dst_fid) = lines[0].split("/"), lines[3].split("/")
    for sub, ext in (("rgb", "png"), ("meta", "pkl")):  # line 3 shows the same frame as line 0
        shutil.copy(raw / "evaluation" / src_seq / sub / f"{src_fid}.{ext}",
                    raw / "evaluation" / dst_seq / sub / f"{dst_fid}.{ext}")
    save_random_tempclr_model(load_config("eval_ho3d", "size=tiny"), tmp_path / "ckpt")
    work = tmp_path / "work"
    out = run_main(["--config", "configs/eval_ho3d.py:version=v2,size=tiny", "--workdir", str(work),
                    f"--config.eval.checkpoint={tmp_path / 'ckpt'}", f"--config.data.data_dir={tmp_path / 'data'}",
                    f"--config.data.manual_dir={raw}",
                    "--config.mano.allow_builtin=True"])  # fixture labels made with the built-in hand
    assert "n/a" in out and "ho3d pred.json (5 samples) written" in out
    row = json.loads((work / "eval_metrics.json").read_text())["fine-tuned (no pretraining)"]
    assert row["num_joints"] == 0 and row["num_vertices"] == 0 and np.isnan(row["pa_mpjpe_mm"])
    xyz, verts = (np.asarray(v) for v in json.loads((work / "pred.json").read_text()))
    assert xyz.shape == (5, 21, 3) and verts.shape == (5, 778, 3)
    # entries follow evaluation.txt: lines 0 and 3 (same frame) match, the others differ
    np.testing.assert_allclose(xyz[3], xyz[0], atol=2e-5)
    np.testing.assert_allclose(verts[3], verts[0], atol=2e-5)
    for i in (1, 2, 4):
        assert np.abs(xyz[i] - xyz[0]).max() > 1e-3
