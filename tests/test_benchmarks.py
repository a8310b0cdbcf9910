"""The benchmark scripts run (smoke test at toy sizes; no assertion on speed)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mano_bench_runs_and_prints_ratios():
    env = dict(os.environ, XLA_FLAGS="")  # one CPU device, as a user runs it
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mano_bench.py"), "--batches", "8",
                          "--repeats", "1", "--min-time", "0"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(r"^\s+8\s+(forward|fwd\+bwd)\s+[\d,]+\s+[\d,]+\s+[\d.]+x$", out.stdout, re.M)
    assert rows == ["forward", "fwd+bwd"], out.stdout


def test_train_step_bench_runs_and_prints_ratios():
    """ResNet-18 train step, Winograd ('auto') and XLA convolutions against torch, at toy size."""
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_step_bench.py"), "--depth", "18",
                          "--batch", "2", "--size", "32", "--rounds", "1", "--steps", "1", "--warmup", "0",
                          "--torch-threads", "1", "--conv-impl", "auto", "xla"],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, XLA_FLAGS=""))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "jax/torch/1t" in out.stdout and "jax-xla/torch/1t" in out.stdout, out.stdout


def test_interwild_bench_runs_and_prints_the_ratio():
    """InterWild's train step (both branches) against the torch reference at toy sizes."""
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "interwild_bench.py"), "--size", "64",
                          "--hand", "32", "--hm", "8", "--channels", "8", "--batch", "2", "--rounds", "1",
                          "--steps", "1"], capture_output=True, text=True, timeout=900, env=dict(os.environ, XLA_FLAGS=""))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "malloc=keep (freed memory kept: True)" in out.stdout, out.stdout
    assert re.search(r"ratio torch/handjax: [\d.]+x", out.stdout), out.stdout
