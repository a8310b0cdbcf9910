"""End to end: `python -m handjax.main` on the tiny TempCLR config (pretrain -> finetune -> eval, 8 CPU devices)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, timeout=600):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "handjax.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_main_tiny_tempclr_end_to_end(tmp_path):
    work = tmp_path / "work"
    r = _run(["--config", "configs/tempclr.py:size=tiny", "--workdir", str(work),
              f"--config.data.data_dir={tmp_path / 'data'}"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[pretrain] step 4/4" in r.stdout and "[finetune] step 4/4" in r.stdout
    assert "backbone initialised from" in r.stdout
    assert "pa_mpjpe_mm" in r.stdout and "mean pose (x0)" in r.stdout
    config = json.loads((work / "config.json").read_text())
    assert config["model"]["hidden"] == [64, 64]
    results = json.loads((work / "results.json").read_text())
    rows = results["eval"]
    assert len(rows) == 2 and all(0 < row["pa_mpjpe_mm"] < 200 for row in rows.values())
    assert (work / "finetune" / "checkpoints" / "4").is_dir()
    assert any(p.name.startswith("events") for p in (work / "pretrain" / "tb").iterdir())


@pytest.mark.parametrize("override,needle", [
    ("--config.finetune.no_such_key=1", "no_such_key"),
    ("--config.finetune.num_steps=abc", "num_steps"),
])
def test_main_rejects_unknown_key_and_wrong_type(tmp_path, override, needle):
    r = _run(["--config", "configs/tempclr.py:size=tiny", "--workdir", str(tmp_path), override], tmp_path, 120)
    assert r.returncode != 0 and needle in r.stderr


def test_config_argument_errors_name_the_key(tmp_path):
    r = _run(["--config", "configs/tempclr.py:bogus=1", "--workdir", str(tmp_path)], tmp_path, 120)
    assert r.returncode != 0 and "bogus" in r.stderr


def test_config_arguments_are_checked_against_their_choices():
    from handjax.config_utils import parse_arg
    from handjax.configs.tempclr import get_config

    a = parse_arg("size=tiny", choices=dict(size=("default", "tiny")), size="default")
    assert a.size == "tiny"
    with pytest.raises(ValueError, match="config argument 'size' must be one of default, tiny, got 'huge'"):
        parse_arg("size=huge", choices=dict(size=("default", "tiny")), size="default")
    with pytest.raises(ValueError, match="config argument 'recipe' must be one of default, freihand, ho3d"):
        get_config("recipe=interhand")
    with pytest.raises(ValueError, match="unknown key 'sise'"):
        get_config("sise=tiny")
