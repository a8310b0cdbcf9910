"""Reliability (issue 19): damaged checkpoints, preemption outside the training loop, resumed
stage metrics, failed checkpoint writes, errors that name their file or key, per-split skip
reports, one-line user errors.

The training probes use the tiny MLP task of ``tests/test_preemption.py`` (in this process, or
in a subprocess started from that file); the end-to-end probes run ``python -m handjax.main``
on ``configs/tempclr.py:size=tiny`` with a few steps.
"""
import glob
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_preemption import ROOT, _env, make_cfg, make_task, run_tiny

PREEMPTED = 75


def _losses(work, steps, every=2):
    rows = {}
    out = run_tiny(str(work), steps, every, lambda s, m: rows.__setitem__(s, m["loss"]))
    return rows, out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run: {step: loss} and its returned (final) metrics."""
    return _losses(tmp_path_factory.mktemp("ref"), 6)


def _damage(step_dir, how: str):
    state = os.path.join(step_dir, "state")
    if how == "metadata_emptied":
        open(os.path.join(state, "_METADATA"), "w").close()
        return
    data_files = [f for f in glob.glob(os.path.join(state, "**", "d", "*"), recursive=True) if os.path.isfile(f)]
    for path in data_files:  # every data file of the step (the train state is spread over them)
        size = os.path.getsize(path)
        if how == "truncated":
            os.truncate(path, size // 2)
        else:  # zeroed: the first 64 KiB
            with open(path, "r+b") as fh:
                fh.write(b"\0" * min(size, 65536))


# ----------------------------------------------------------------------------- 1. damaged checkpoints
@pytest.mark.parametrize("how", ["truncated", "metadata_emptied", "zeroed"])
def test_damaged_newest_step_is_set_aside_and_the_run_resumes_from_the_previous(tmp_path, caplog, reference, how):
    ref_losses, ref_metrics = reference
    work = tmp_path / "work"
    run_tiny(str(work), 4, 2, None)
    ckpts = work / "checkpoints"
    _damage(str(ckpts / "4"), how)
    with caplog.at_level(logging.WARNING):
        rows, metrics = _losses(work, 6)
    # resumed from step 2 on the reference trajectory; final metrics as the uninterrupted run's
    assert sorted(rows) == [3, 4, 5, 6]
    np.testing.assert_allclose([rows[s] for s in rows], [ref_losses[s] for s in rows], rtol=1e-6)
    assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-6)
    # set aside with a warning naming the step, the path and the reason; its files are kept
    warning = next(r.getMessage() for r in caplog.records if "does not restore" in r.getMessage())
    assert "step 4" in warning and str(ckpts / "4") in warning and "Error" in warning
    assert (ckpts / "4.unreadable" / "state").is_dir()
    assert sorted(n for n in os.listdir(ckpts) if n.isdigit())[-1] == "6"


def test_no_step_restores_is_a_clear_error_and_nothing_is_renamed(tmp_path):
    from handjax.train.checkpoint import CheckpointRestoreError
    work = tmp_path / "work"
    run_tiny(str(work), 4, 2, None)
    for step in ("2", "4"):
        open(work / "checkpoints" / step / "state" / "_METADATA", "w").close()
    with pytest.raises(CheckpointRestoreError) as err:
        run_tiny(str(work), 6, 2, None)
    text = str(err.value)
    assert "step 4" in text and "step 2" in text and "JSONDecodeError" in text and "Move" in text
    assert sorted(os.listdir(work / "checkpoints")) == ["2", "4"]


def test_checkpoint_of_another_model_is_a_config_error_not_damage(tmp_path):
    """A readable step written for another model is not set aside: ValueError naming the keys."""
    from flax import nnx

    from handjax.train.loop import Task, train
    work = tmp_path / "work"
    run_tiny(str(work), 2, 2, None)

    class Wider(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.l2 = nnx.Linear(4, 16, rngs=rngs), nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(self.l1(x))

    task = Task(Wider(nnx.Rngs(0)), make_task().loss_fn)
    from test_preemption import SliceIter
    with pytest.raises(ValueError, match=r"(?s)does not match the model.*params/l1/kernel"):
        train(task, SliceIter(), make_cfg(4, 2), str(work), name="tiny")
    assert sorted(os.listdir(work / "checkpoints")) == ["2"]


def test_half_deleted_old_step_is_reported_as_such_and_removed(tmp_path, caplog):
    """kill -9 during the keep-N clean-up: an OLD step without its commit file is not an interrupted write."""
    from handjax.train.checkpoint import Checkpointer
    work = tmp_path / "work"
    run_tiny(str(work), 4, 2, None)
    ckpts = work / "checkpoints"
    os.remove(ckpts / "2" / "commit_success.txt")
    shutil.rmtree(ckpts / "2" / "state")
    with caplog.at_level(logging.WARNING):
        Checkpointer(str(ckpts)).close()
    assert "deletion by the keep-N clean-up" in caplog.text and "interrupted write" not in caplog.text
    assert sorted(os.listdir(ckpts)) == ["4"]


# ----------------------------------------------------------------------------- 3. resumed stage metrics
def test_stage_resumed_at_its_last_step_reports_its_final_metrics(tmp_path, reference):
    work = tmp_path / "work"
    _, first = _losses(work, 6)
    rows, again = _losses(work, 6)  # nothing left to train
    assert rows == {} and again == first and again["loss"] == pytest.approx(reference[1]["loss"], rel=1e-6)


def test_stage_result_marker_round_trip(tmp_path):
    from handjax.train.checkpoint import STAGE_RESULT, read_stage_result, write_stage_result
    assert read_stage_result(str(tmp_path / "eval")) is None
    write_stage_result(str(tmp_path / "eval"), {"mpjpe_mm": 12.5})
    assert read_stage_result(str(tmp_path / "eval")) == {"mpjpe_mm": 12.5}
    (tmp_path / "eval" / STAGE_RESULT).write_text('{"mpjpe')  # torn by hand: the stage counts as not done
    assert read_stage_result(str(tmp_path / "eval")) is None


# ----------------------------------------------------------------------------- 4. failed checkpoint writes
def _read_only_cmd(ckpt_dir: str, cmd: list) -> list:
    """``cmd`` with ``ckpt_dir`` unwritable: a read-only bind mount (root ignores permissions), else chmod."""
    if os.geteuid() != 0:
        os.chmod(ckpt_dir, 0o555)
        return cmd
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: cannot make a folder unwritable")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root and unshare -m is not permitted: {probe.stderr.decode()[:200]}")
    quoted = " ".join(f"'{c}'" for c in cmd)
    return ["unshare", "-m", "sh", "-c", f"mount --bind '{ckpt_dir}' '{ckpt_dir}' && "
                                         f"mount -o remount,bind,ro '{ckpt_dir}' && exec {quoted}"]


def test_unwritable_checkpoint_folder_stops_the_run_within_seconds(tmp_path):
    work, losses = tmp_path / "work", tmp_path / "losses"
    run_tiny(str(work), 2, 2, None)
    ckpts = str(work / "checkpoints")
    worker = [sys.executable, os.path.join(ROOT, "tests", "test_preemption.py"), "--workdir", str(work),
              "--losses", str(losses), "--steps", "40", "--checkpoint_every", "2"]
    t0 = time.time()
    r = subprocess.run(_read_only_cmd(ckpts, worker), env=_env(8), cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    elapsed = time.time() - t0
    os.chmod(ckpts, 0o755)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    err = r.stderr
    assert "CheckpointWriteError: cannot write checkpoint step 4" in err and ckpts in err
    assert "Read-only file system" in err or "Permission denied" in err
    assert elapsed < 60  # was ~300 s (an Orbax barrier timing out), most of this is start-up
    assert sorted(os.listdir(ckpts)) == ["2"]  # the previous step intact, no temporary folder


def test_failed_background_write_is_reported_with_its_step_and_os_error(tmp_path):
    """The error of a background write (e.g. a full disk) surfaces at the next check, naming the step."""
    from handjax.train.checkpoint import CheckpointWriteError, Checkpointer, os_error_of
    ts_message = ('RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database at local file "/c/4.orbax-checkpoint-tmp/": '
                  'Failed writing: "/c/4.orbax-checkpoint-tmp/state/manifest.ocdbt": Failed to write 378 bytes to '
                  "file 7: No space left on device [os_error_code='28']")
    assert os_error_of(ValueError(ts_message)) == ("/c/4.orbax-checkpoint-tmp/state/manifest.ocdbt",
                                                   "No space left on device (errno 28)")
    ckpt = Checkpointer(str(tmp_path / "ck"), async_save=True)
    os.makedirs(tmp_path / "ck" / "4.orbax-checkpoint-tmp" / "state")
    ckpt._pending = 4

    def failed():
        raise ValueError(ts_message)

    ckpt.manager.check_for_errors = failed
    with pytest.raises(CheckpointWriteError, match=r"step 4 .*No space left on device \(errno 28\)"):
        ckpt.check()
    assert os.listdir(tmp_path / "ck") == []  # the failed step's temporary folder is gone
    ckpt.manager.check_for_errors = lambda: None
    ckpt.close()


# ----------------------------------------------------------------------------- 5. errors name their file / key
def test_damaged_mano_pickles_name_the_file(tmp_path):
    from handjax.mano.io import load_mano_pickle
    from mano_fixtures import random_mano_arrays, write_official_mano_pkl
    good = tmp_path / "MANO_RIGHT.pkl"
    write_official_mano_pkl(good, random_mano_arrays())
    junk, cut = tmp_path / "junk.pkl", tmp_path / "cut.pkl"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path, needle in ((junk, "invalid load key"), (cut, "truncated")):
        with pytest.raises(pickle.UnpicklingError) as err:
            load_mano_pickle(str(path))
        assert str(err.value).startswith(f"{path}: not a readable MANO pickle") and needle in str(err.value)


def test_truncated_zip_torch_checkpoint_is_named_as_such(tmp_path):
    torch = pytest.importorskip("torch")
    from handjax.convert.torch_reader import CheckpointFormatError, load_torch_checkpoint
    path = tmp_path / "model.pth"
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError, match=r"cut\.pth: truncated zip-format torch checkpoint"):
        load_torch_checkpoint(cut)


def test_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path):
    import jax.numpy as jnp

    from handjax.train.loop import NonFiniteLossError, Task, train
    from test_preemption import SliceIter
    base = make_task()
    task = Task(base.model, lambda model, batch, rng: (jnp.float32(np.nan) * base.loss_fn(model, batch, rng)[0],
                                                       {}))
    with pytest.raises(NonFiniteLossError) as err:
        train(task, SliceIter(), make_cfg(4, 2), str(tmp_path / "work"), name="tiny")
    text = str(err.value)
    assert "step None" not in text and "no checkpoint yet" in text and "--config.tiny.optim.lr" in text


# ----------------------------------------------------------------------------- 6. skip reports per split
def test_freihand_skips_are_recorded_per_split_with_sample_ids(tmp_path, capsys):
    import tensorflow_datasets as tfds

    from data_pipelines.freihand import build as build_cli
    from hand_dataset_fixtures import corrupt_file, write_freihand
    n_train = 3
    root = tmp_path / "raw"
    write_freihand(root, n_train, 2, 16)
    corrupt_file(root / "training" / "rgb" / f"{n_train + 1:08d}.jpg")  # sample 1, version 'hom'
    xyz = json.loads((root / "training_xyz.json").read_text())
    xyz[2][0][0] = float("nan")  # a NaN label: sample 2 of every version
    (root / "training_xyz.json").write_text(json.dumps(xyz))
    ev = json.loads((root / "evaluation_xyz.json").read_text())
    ev[0] = ev[0][:20]  # a 20-joint annotation
    (root / "evaluation_xyz.json").write_text(json.dumps(ev))
    path = build_cli.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "out"), "--skip_corrupt"])
    skipped = tfds.builder_from_directory(path).info.metadata["skipped"]
    assert [r["sample_id"] for r in skipped["evaluation"]] == [0]  # its own skip only
    assert "evaluation_xyz.json" in skipped["evaluation"][0]["path"]
    train = skipped["train"]
    assert len(train) == 5 and all("training" in r["path"] for r in train)
    ids = [r["sample_id"] for r in train]
    assert len(set(ids)) == 5  # every line names its sample and image version: no repeated lines
    assert "1 (version hom, image 00000004)" in ids
    assert {i for i in ids if i.startswith("2 (")} == {f"2 (version {v}, image {2 + 3 * k:08d})"
                                                        for k, v in enumerate(("gs", "hom", "sample", "auto"))}
    assert all("non-finite" in r["reason"] for r in train if r["sample_id"].startswith("2 ("))
    err = capsys.readouterr().err
    assert "skipped 6" in err and "split train, sample 2 (version auto, image 00000011)" in err


# ----------------------------------------------------------------------------- 2, 5, 7: python -m handjax.main
def _main(args, tmp_path, timeout=300, **popen):
    env = dict(_env(8), HANDJAX_COMPILATION_CACHE=str(tmp_path / "jax_cache"))
    env.pop("HANDJAX_TRACEBACK", None)
    return [sys.executable, "-m", "handjax.main", *args], env


def _run_main(args, tmp_path, timeout=300):
    cmd, env = _main(args, tmp_path)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("extra,needle,key", [
    (["--config.finetune.no_such_key=1"], "--config.finetune.no_such_key: unknown config key 'no_such_key'",
     "no_such_key"),
    (["--config.stages=eval", "--config.eval.checkpoint=/nonexistent/run"],
     "there is no checkpoint at '/nonexistent/run'", "/nonexistent/run"),
])
def test_expected_errors_are_one_line_and_verbose_shows_the_traceback(tmp_path, extra, needle, key):
    base = ["--config", "configs/tempclr.py:size=tiny", "--workdir", str(tmp_path / "w"),
            f"--config.data.data_dir={tmp_path / 'data'}"]
    r = _run_main(base + extra, tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("WARNING", "I0000", "W0000"))]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[-2].startswith("handjax: error: ") and needle in lines[-2] and "--verbose" in lines[-1]
    r = _run_main(base + extra + ["--verbose"], tmp_path)
    assert r.returncode == 1 and "Traceback" in r.stderr and key in r.stderr


def test_workdir_that_is_a_file_is_named(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = _run_main(["--config", "configs/tempclr.py:size=tiny", "--workdir", str(afile)], tmp_path)
    assert r.returncode == 1 and f"--workdir must be a directory: {afile} is a file" in r.stderr, r.stderr[-2000:]


# ----------------------------------------------------------------------------- 2. preemption outside training
def test_sigterm_during_evaluation_abandons_the_pass(tmp_path):
    """The process-wide handler (installed by main) + the shared evaluation loop's poll between batches."""
    from handjax import distributed
    from handjax.eval.loop import evaluate
    from handjax.sharding import make_mesh

    class Mean:
        def __init__(self):
            self.rows = []

        def add(self, pred, labels):
            self.rows.append(pred["x"].mean())

        def result(self):
            return {"mean": float(np.mean(self.rows))}

    def batches(n, signal_after=None):
        for i in range(n):
            if i == signal_after:
                os.kill(os.getpid(), signal.SIGTERM)  # the preemption notice arrives mid-pass
            yield {"image": np.full((8, 2), i, np.float32)}

    predict = lambda model, images: {"x": images * 2.0}  # noqa: E731
    assert distributed.install_preemption_handler()
    try:
        assert evaluate(predict, None, batches(3), make_mesh(), Mean()) == {"mean": 2.0}
        evaluator = Mean()
        with pytest.raises(distributed.Preempted, match="during evaluation"):
            evaluate(predict, None, batches(3, signal_after=1), make_mesh(), evaluator)
        assert len(evaluator.rows) == 1  # abandoned after the batch in flight: no partial result returned
    finally:
        distributed.uninstall_preemption_handler()
    assert not distributed.preemption_requested()


def test_sigterm_during_data_building_exits_75_and_leaves_nothing_half_built(tmp_path):
    data = tmp_path / "data"
    cmd, env = _main(["--config", "configs/tempclr.py:size=tiny", "--workdir", str(tmp_path / "w"),
                      f"--config.data.data_dir={data}"], tmp_path)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        t0 = time.time()
        while not glob.glob(str(data / "synthetic_hands" / "tiny" / "incomplete*")):
            assert proc.poll() is None and time.time() - t0 < 240, "the data set was not being built"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == PREEMPTED, out[-3000:]
    assert "preemption notice (SIGTERM) during building synthetic_hands/tiny" in out
    assert f"exiting with code {PREEMPTED}" in out
    built = data / "synthetic_hands" / "tiny"
    assert not glob.glob(str(built / "incomplete*")) and not (built / "1.1.0").exists()
    # what the rerun does first: build the data set from scratch, completely
    from data_pipelines.synthetic_hands import ensure_built
    path = ensure_built("tiny", str(data))
    assert os.path.isfile(os.path.join(path, "dataset_info.json"))
