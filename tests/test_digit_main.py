"""End to end: ``python -m handjax.main --config configs/digit.py:size=tiny`` (train -> eval on the
built-in two-hand scenes, 8 CPU devices), then ``python -m handjax.predict`` with its checkpoint."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, args, timeout=900):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_digit_tiny_train_eval_predict(tmp_path):
    work = tmp_path / "work"
    r = _run("handjax.main", ["--config", "configs/digit.py:size=tiny", "--workdir", str(work),
                              f"--config.data.data_dir={tmp_path / 'data'}"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[train] step 4/4" in r.stdout and "digit_segm" in r.stdout and "digit_bone" in r.stdout
    assert "mean pose / all background" in r.stdout and "mrrpe_mm" in r.stdout and "miou" in r.stdout
    rows = json.loads((work / "results.json").read_text())["eval"]
    assert set(rows) == {"mean pose / all background", "DIGIT"}
    for row in rows.values():
        assert 0 < row["mpjpe_all_mm"] < 500 and 0 <= row["handedness_acc"] <= 1 and 0 <= row["miou"] <= 1
        assert row["frames_single"] + row["frames_interacting"] == 24  # the tiny test split
    assert rows["mean pose / all background"]["miou"] == 0.0  # all background scores no hand part
    panels = sorted((work / "train" / "summaries").glob("digit_*.png"))
    assert panels
    img = np.asarray(Image.open(panels[0]))
    assert img.shape[1] == 4 * 128 and img.shape[0] % 128 == 0  # GT joints | joints | parts | GT parts

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "pred"
    r = _run("handjax.predict", ["--config", "configs/digit.py:size=tiny", "--checkpoint", str(work / "train"),
                                 "--images", str(images), "--out", str(out)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.loads((out / "a.json").read_text())
    sides = [h["side"] for h in record["hands"]]
    assert sides == ["right", "left"]
    for hand in record["hands"]:
        assert np.asarray(hand["joints3d"]).shape == (21, 3) and np.all(np.asarray(hand["joints3d"])[:, 2] > 0)
    assert (out / "a_overlay.png").is_file()
