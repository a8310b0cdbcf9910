"""InterWild end to end: `python -m handjax.main --config configs/interwild.py:size=tiny` (train -> eval with the
baseline row), then `python -m handjax.predict` on whole images with the trained stage folder (both hands found
by the model, meshes and JSON written), and the configs' argument errors."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, args, timeout=1500):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_tiny_interwild_train_eval_predict(tmp_path):
    work = tmp_path / "work"
    r = _run("handjax.main", ["--config", "configs/interwild.py:size=tiny", "--workdir", str(work)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[train] step 2/2" in r.stdout and "iw_joint_cam" in r.stdout and "iw_rel_trans" in r.stdout
    assert "box_iou" in r.stdout and "mean pose, mean rel. transl., centred box" in r.stdout
    rows = json.loads((work / "results.json").read_text())["eval"]
    assert set(rows) == {"InterWild", "mean pose, mean rel. transl., centred box"}
    for row in rows.values():
        assert 0 <= row["box_iou"] <= 100 and row["box_count"] > 0
        assert np.isfinite(row["mpvpe_all_mm"]) and np.isfinite(row["mrrpe_mm"])

    imgs = tmp_path / "images"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(imgs / "person.png")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(imgs / "black.png")
    out = tmp_path / "out"
    r = _run("handjax.predict", ["--config", "configs/interwild.py:size=tiny", "--checkpoint", str(work / "train"),
                                 "--images", str(imgs), "--out", str(out), "--batch_size", "2", "--progress=false"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("person", "black"):
        record = json.loads((out / f"{name}.json").read_text())
        assert [h["side"] for h in record["hands"]] == ["right", "left"]  # threshold 0: every hand, as upstream
        extra = record["interwild"]
        assert extra["box_conf_threshold"] == 0.0 and extra["two_hand_decision"]
        for side in ("right", "left"):
            hand = extra["hands"][side]
            assert hand["found"] and len(hand["box"]) == 4 and 0 <= hand["box_conf"] <= 1
            assert len(hand["root_pose"]) == 3 and len(hand["hand_pose"]) == 45 and len(hand["shape"]) == 10
        assert extra["hands"]["right"]["root_trans"] == [0.0, 0.0, 0.0]
        assert (out / f"{name}_overlay.png").is_file()
        for mesh in os.listdir(out):
            if mesh.startswith(name) and mesh.endswith(".obj"):
                lines = (out / mesh).read_text().splitlines()
                assert sum(line.startswith("v ") for line in lines) == 778


def test_config_arguments_are_checked():
    from handjax.configs.interwild import get_config

    import pytest

    with pytest.raises(ValueError, match="recipe"):
        get_config("recipe=nope")
    with pytest.raises(ValueError, match="size"):
        get_config("size=huge")
    assert get_config().stages == "train,eval" and get_config("recipe=paper").stages == "train,eval"
    paper = get_config("recipe=paper")
    assert paper.model.hand_size == 256 and paper.model.trans_hm == 64 and paper.data.image_size == 512
    assert paper.train.optim.decay_steps == (paper.train.num_steps * 4 // 7,) and paper.train.optim.lr == 1e-4
    assert paper.train.loss_weights.iw_joint_cam == 10 and paper.train.loss_weights.iw_mesh_cam == 10
