"""configs/eval_freihand.py end to end: ``python -m handjax.main`` builds the FreiHAND fixture
from ``data.manual_dir``, restores a tiny model-only checkpoint, prints the protocol table and
writes a pred.json that reproduces the printed numbers when evaluated locally."""
import json

import numpy as np
import pytest

from hand_dataset_fixtures import load_config, run_main, save_random_tempclr_model, write_freihand
from handjax.eval import protocols


def test_eval_freihand_end_to_end(tmp_path):
    raw = tmp_path / "raw"
    gt = write_freihand(raw, n_train=2, n_eval=3, size=24)["evaluation"]
    save_random_tempclr_model(load_config("eval_freihand", "size=tiny"), tmp_path / "ckpt")
    work = tmp_path / "work"
    out = run_main(["--config", "configs/eval_freihand.py:size=tiny", "--workdir", str(work),
                    f"--config.eval.checkpoint={tmp_path / 'ckpt'}", f"--config.data.data_dir={tmp_path / 'data'}",
                    f"--config.data.manual_dir={raw}",
                    "--config.mano.allow_builtin=True"])  # fixture labels made with the built-in hand
    assert "pa_mpjpe_mm" in out and "f15" in out and "auc_pa" in out
    assert "pred.json (3 samples) written" in out and "is not a complete submission" in out
    row = json.loads((work / "eval_metrics.json").read_text())["fine-tuned (no pretraining)"]
    assert row["num_joints"] == 3 and row["num_vertices"] == 3 and 0 < row["pa_mpjpe_mm"] < 500
    pred = work / "pred.json"
    raw_pred = json.loads(pred.read_text())
    assert np.asarray(raw_pred[0]).shape == (3, 21, 3) and np.asarray(raw_pred[1]).shape == (3, 778, 3)
    flat = np.ravel(raw_pred[0])
    np.testing.assert_array_equal(flat, np.round(flat, 5))
    assert len({json.dumps(j) for j in raw_pred[0]}) == 3  # the three images got different predictions
    # the file, evaluated locally against the public GT, reproduces the printed numbers
    local = protocols.evaluate_pred_json(str(pred), "freihand", gt["xyz"], gt["verts"])
    for key in ("pa_mpjpe_mm", "pa_mpvpe_mm"):
        assert local[key] == pytest.approx(row[key], abs=0.02)
    for key in ("f5", "f15"):
        assert local[key] == pytest.approx(row[key], abs=0.01)
