"""End to end: `python -m handjax.main` on the tiny handobjectconsist config (supervised -> control ->
consistency -> eval on the built-in hand + object videos, 8 CPU devices)."""
import json
import math
import os
import subprocess
import sys

from handjax.configs.photometric import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_tiny_photometric_end_to_end(tmp_path):
    work = tmp_path / "work"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "handjax.main", "--config", "configs/photometric.py:size=tiny",
                        "--workdir", str(work), f"--config.data.data_dir={tmp_path / 'data'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for stage in ("supervised", "control", "consistency"):
        assert f"[{stage}] step 2/2" in out
    assert "[consistency] initialised from" in out and "[control] initialised from" in out
    # the warping term is computed on rendered pixels in the consistency stage, never in the control
    consist_lines = [line for line in out.splitlines() if line.startswith("[consistency] step")]
    assert all(" consist " in line and "consist_pixels" in line for line in consist_lines)
    assert not any(" consist " in line for line in out.splitlines() if line.startswith("[control] step"))
    pixels = float(consist_lines[-1].split("consist_pixels ")[1].split()[0])
    assert pixels > 0
    rows = json.loads((work / "results.json").read_text())["eval"]
    assert set(rows) == {"mean labelled pose (trivial)", "supervised only", "continued without consistency (control)",
                         "continued with consistency"}
    for row in rows.values():
        assert 0 < row["joints3d_epe_mm"] < 2000 and 0 < row["objverts3d_mepe_mm"] < 2000
        assert row["num_hands"] == row["num_objects"] > 0
        assert math.isfinite(row["joints2d_epe_px"]) or row is rows["mean labelled pose (trivial)"]
    assert "joints3d_epe_mm" in out and "continued with consistency" in out

    # predict: a test frame of the built-in data -> hand and object meshes and their overlay
    import numpy as np
    import tensorflow_datasets as tfds
    from PIL import Image

    from data_pipelines.hand_object import NUM_VERTICES

    frame = tfds.builder_from_directory(str(tmp_path / "data" / "hand_object" / "tiny" / "1.0.0")).as_data_source(
        "test")[0]
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.asarray(frame["image"])).save(tmp_path / "imgs" / "f0.png")
    p = subprocess.run([sys.executable, "-m", "handjax.predict", "--config", "configs/photometric.py:size=tiny",
                        "--checkpoint", str(work / "consistency"), "--images", str(tmp_path / "imgs"), "--out",
                        str(tmp_path / "pred"), f"--config.data.data_dir={tmp_path / 'data'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    def count(name):
        return sum(line.startswith("v ") for line in (tmp_path / "pred" / name).read_text().splitlines())

    assert count("f0_right.obj") == 778 and count("f0_object.obj") == NUM_VERTICES
    record = json.loads((tmp_path / "pred" / "f0.json").read_text())
    assert [h["side"] for h in record["hands"]] == ["right", "object"]
    assert (tmp_path / "pred" / "f0_overlay.png").is_file()


def test_config_arguments():
    c = get_config("control=false")
    assert c.stages == "supervised,consistency,eval"
    assert c.consistency.loss_weights.consist == 1e-3 and c.control.loss_weights.consist == 0.0
    fphab = get_config("recipe=fphab")
    assert (fphab.model.trans_factor, fphab.model.scale_factor, fphab.model.depth_offset) == (100.0, 1e-4, 0.4)
    assert fphab.model.freeze_bn and fphab.sparse.fraction == 0.00625 and fphab.consistency.ramp_steps == 1000
    for bad, key in (("recipe=bogus", "recipe"), ("size=huge", "size")):
        try:
            get_config(bad)
        except ValueError as err:
            assert key in str(err)
        else:
            raise AssertionError(f"{bad} accepted")
