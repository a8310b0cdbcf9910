"""Preemption safety of the training loop: kill -9 and SIGTERM mid-run, resume, half-written checkpoints.

A tiny Task (an MLP regressing a fixed function on seeded batches, SGD with momentum so the
optimizer state matters) runs through ``handjax.train.loop.train``: in this process for the
reference trajectory, and in subprocesses started from this file
(``python tests/test_preemption.py --workdir ... --losses ...``) that are killed or signalled.
Every process appends ``{"step", "loss"}`` lines (full precision, via ``train(on_log=...)``) to
``<losses>.p<process index>``.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local_multiprocess.sh")
GLOBAL_BATCH = 16
PREEMPTED = 75  # handjax.distributed.PREEMPTED_EXIT_CODE (checked below)


# ----------------------------------------------------------------------------- the tiny task
def global_batch_np(index: int) -> dict:
    """Batch ``index`` of the global stream (the same on every process)."""
    rng = np.random.default_rng(index)
    x = rng.normal(size=(GLOBAL_BATCH, 4)).astype(np.float32)
    return {"x": x, "y": np.sin(x).sum(-1, keepdims=True).astype(np.float32)}


class SliceIter:
    """Checkpointable iterator: this process's rows of global batch 0, 1, 2, ... (state: JSON bytes)."""

    def __init__(self, process_index: int = 0, process_count: int = 1, sleep: float = 0.0):
        self.i, self.sleep = 0, sleep
        per = GLOBAL_BATCH // process_count
        self.rows = slice(process_index * per, (process_index + 1) * per)

    def __iter__(self):
        return self

    def __next__(self):
        if self.sleep:
            time.sleep(self.sleep)  # makes the run slow enough to be interrupted mid-way
        batch = {k: v[self.rows] for k, v in global_batch_np(self.i).items()}
        self.i += 1
        return batch

    def get_state(self):
        return json.dumps({"i": self.i}).encode()

    def set_state(self, state):
        self.i = json.loads(state)["i"]

    def start_prefetch(self):
        pass


def make_task():
    import jax.numpy as jnp
    from flax import nnx

    from handjax.train.loop import Task

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.l2 = nnx.Linear(4, 32, rngs=rngs), nnx.Linear(32, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    def loss_fn(model, batch, rng):
        del rng
        loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
        return loss, {"mse": loss}

    return Task(MLP(nnx.Rngs(0)), loss_fn)


def make_cfg(num_steps: int, checkpoint_every: int):
    import ml_collections
    return ml_collections.ConfigDict(dict(
        num_steps=num_steps, log_every=1, checkpoint_every=checkpoint_every, keep_checkpoints=3,
        optim=dict(name="sgd", lr=0.01, momentum=0.9, schedule="constant", warmup_steps=0)))


def run_tiny(workdir: str, num_steps: int, checkpoint_every: int, on_log, sleep: float = 0.0,
             init_from: str = ""):
    """One ``train`` call of the tiny task on this process's slice of the global stream.

    init_from: start from the model of that run's latest checkpoint (``restore_model``).
    """
    import jax

    from handjax.train.loop import restore_model, train
    task = make_task()
    if init_from:
        restore_model(task.model, init_from)
    it = SliceIter(jax.process_index(), jax.process_count(), sleep)
    return train(task, it, make_cfg(num_steps, checkpoint_every), workdir, name="tiny", on_log=on_log)


def worker_main(argv=None):
    """Subprocess entry: join the job (HANDJAX_* env), train, exit 75 on a preemption notice."""
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--losses", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--checkpoint_every", type=int, default=1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--init_from", default="")
    args = p.parse_args(argv)
    from handjax import distributed
    distributed.initialize()
    import jax

    from handjax.train.loop import Preempted
    with open(f"{args.losses}.p{jax.process_index()}", "a") as log:
        def on_log(step, metrics):
            log.write(json.dumps({"step": step, "loss": metrics["loss"]}) + "\n")
            log.flush()

        try:
            run_tiny(args.workdir, args.steps, args.checkpoint_every, on_log, args.sleep, args.init_from)
        except Preempted as e:
            print(f"{e}; exiting with code {distributed.PREEMPTED_EXIT_CODE}", flush=True)
            distributed.shutdown()
            sys.exit(distributed.PREEMPTED_EXIT_CODE)
    distributed.shutdown()


# ----------------------------------------------------------------------------- helpers
def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for k in ("HANDJAX_COORDINATOR_ADDRESS", "HANDJAX_NUM_PROCESSES", "HANDJAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _worker_cmd(workdir, losses, steps, checkpoint_every, sleep=0.0, init_from=""):
    return [sys.executable, os.path.abspath(__file__), "--workdir", str(workdir), "--losses", str(losses),
            "--steps", str(steps), "--checkpoint_every", str(checkpoint_every), "--sleep", str(sleep),
            "--init_from", str(init_from)]


def _read_losses(path) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.endswith("\n")]


def _wait_for_step(path, step: int, proc, timeout: float = 240.0):
    """Block until ``path`` logs ``step`` (fails if ``proc`` exits first or on timeout)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        rows = _read_losses(path)
        if rows and rows[-1]["step"] >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before step {step}: "
                                 f"{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.1)
    raise AssertionError(f"no step {step} in {path} after {timeout} s")


def _session_pids(sid: int) -> list:
    """Processes of session ``sid`` (the launcher and its children, whatever their process group)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ...
                pids.append(int(name))
    return pids


def _worker_pid(sid: int, process_id: int) -> int:
    """The pid of the python worker with HANDJAX_PROCESS_ID=process_id in session ``sid``."""
    for pid in _session_pids(sid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if f"HANDJAX_PROCESS_ID={process_id}".encode() in environ and b"test_preemption.py" in cmdline:
            return pid
    raise AssertionError(f"no worker process {process_id} in session {sid}")


def _stop(proc):
    """Make sure ``proc`` (started with start_new_session=True) and everything it started is gone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the launcher forwards it; workers checkpoint and exit
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    for pid in _session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.wait(timeout=30)


def _drop_partial_line(path):
    """Cut a line torn by kill -9 so that the restarted run appends to whole lines."""
    with open(path, "rb+") as fh:
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


def _complete_steps(ckpt_dir) -> list:
    return sorted(int(n) for n in os.listdir(ckpt_dir)
                  if n.isdigit() and os.path.exists(os.path.join(ckpt_dir, n, "commit_success.txt")))


def _resumed_step(stdout: str) -> int:
    line = next(ln for ln in stdout.splitlines() if "resumed from" in ln)
    return int(line.rsplit("at step", 1)[1])


def _assert_on_reference(rows, reference, rtol: float, after: int = 0):
    """Every logged step > ``after`` has the reference (uninterrupted run's) loss."""
    rows = [r for r in rows if r["step"] > after]
    assert rows
    np.testing.assert_allclose([r["loss"] for r in rows], [reference[r["step"]] for r in rows], rtol=rtol)


STEPS = 200  # SIGTERM runs: room for the cross-process agreement (it takes a few steps)
KILL_STEPS = 40


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted single-process losses {step: loss} (8 devices, like the workers below)."""
    rows = {}
    run_tiny(str(tmp_path_factory.mktemp("ref")), STEPS, 10_000, lambda s, m: rows.__setitem__(s, m["loss"]))
    return rows


# ----------------------------------------------------------------------------- tests
def test_exit_code_constant():
    from handjax.distributed import PREEMPTED_EXIT_CODE
    assert PREEMPTED_EXIT_CODE == PREEMPTED


def test_kill9_then_restart_resumes_from_last_complete_checkpoint(tmp_path, reference):
    work, losses = tmp_path / "work", tmp_path / "losses"
    proc = subprocess.Popen(_worker_cmd(work, losses, KILL_STEPS, 2, sleep=0.05), env=_env(8), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_step(f"{losses}.p0", 12, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _stop(proc)
    _drop_partial_line(f"{losses}.p0")
    killed_at = _read_losses(f"{losses}.p0")[-1]["step"]
    complete = _complete_steps(work / "checkpoints")
    assert complete and complete[-1] <= killed_at
    # the restart is the same command (minus the slow-down)
    r = subprocess.run(_worker_cmd(work, losses, KILL_STEPS, 2), env=_env(8), cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    resumed = _resumed_step(r.stdout)
    assert resumed == complete[-1]
    rows = _read_losses(f"{losses}.p0")
    first_run, second_run = rows[:killed_at], rows[killed_at:]
    assert [r["step"] for r in first_run] == list(range(1, killed_at + 1))
    assert second_run[0]["step"] == resumed + 1
    assert second_run[-1]["step"] == KILL_STEPS
    # same losses as the uninterrupted run, before the kill and after the resume
    _assert_on_reference(first_run, reference, rtol=1e-6)
    _assert_on_reference(second_run, reference, rtol=1e-6)


def test_half_written_step_directory_is_ignored_with_warning(tmp_path, caplog, reference):
    import shutil

    from handjax.train.checkpoint import Checkpointer
    work = tmp_path / "work"
    run_tiny(str(work), 4, 2, None)
    ckpts = work / "checkpoints"
    assert _complete_steps(ckpts) == [2, 4]
    # a step written by a killed non-atomic writer: partial state, no commit file
    shutil.copytree(ckpts / "4", ckpts / "6")
    os.remove(ckpts / "6" / "commit_success.txt")
    shutil.rmtree(ckpts / "6" / "state")
    os.makedirs(ckpts / "6" / "state")
    # an interrupted Orbax write (temporary directory)
    os.makedirs(ckpts / "5.orbax-checkpoint-tmp-1234567" / "state")
    with caplog.at_level("WARNING"):
        ckpt = Checkpointer(str(ckpts))
        try:
            assert ckpt.latest_step() == 4
        finally:
            ckpt.close()
    text = caplog.text
    assert "5.orbax-checkpoint-tmp-1234567" in text and "incomplete checkpoint step" in text and "/6" in text
    assert not (ckpts / "6").exists() and (ckpts / "6.incomplete" / "state").is_dir()
    # training resumes from step 4 with the reference trajectory, and step 6 is written properly this time
    rows = {}
    run_tiny(str(work), 8, 2, lambda s, m: rows.__setitem__(s, m["loss"]))
    assert sorted(rows) == [5, 6, 7, 8]
    np.testing.assert_allclose([rows[s] for s in range(5, 9)], [reference[s] for s in range(5, 9)], rtol=1e-6)
    assert _complete_steps(ckpts)[-2:] == [6, 8]


def test_sigterm_checkpoints_current_step_and_exits_cleanly(tmp_path, reference):
    work, losses = tmp_path / "work", tmp_path / "losses"
    proc = subprocess.Popen(_worker_cmd(work, losses, STEPS, 10_000, sleep=0.05), env=_env(8), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_step(f"{losses}.p0", 5, proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    assert proc.returncode == PREEMPTED, out[-3000:]
    stopped = _read_losses(f"{losses}.p0")[-1]["step"]
    assert 5 <= stopped < STEPS
    assert f"preemption notice (SIGTERM): checkpoint of step {stopped} written" in out
    assert _complete_steps(work / "checkpoints") == [stopped]  # the only checkpoint: the preemption one
    r = subprocess.run(_worker_cmd(work, losses, STEPS, 10_000), env=_env(8), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert _resumed_step(r.stdout) == stopped
    rows = _read_losses(f"{losses}.p0")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    _assert_on_reference(rows, reference, rtol=1e-6)


def test_sigterm_two_processes_agree_on_the_stop_step(tmp_path, reference):
    """SIGTERM to process 1 only (one host preempted): both processes checkpoint the same step and exit 75."""
    work, losses = tmp_path / "work", tmp_path / "losses"
    cmd = ["bash", LAUNCHER, "-n", "2", "-d", "4", "--"]
    env = dict(_env(4), PYTHON=sys.executable)
    proc = subprocess.Popen(cmd + _worker_cmd(work, losses, STEPS, 10_000, sleep=0.05), env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_step(f"{losses}.p1", 5, proc)
        os.kill(_worker_pid(proc.pid, 1), signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        _stop(proc)
    assert proc.returncode == PREEMPTED, out[-3000:]
    last = [_read_losses(f"{losses}.p{i}")[-1]["step"] for i in (0, 1)]
    assert last[0] == last[1] < STEPS, last
    stopped = last[0]
    assert f"checkpoint of step {stopped} written" in out
    assert _complete_steps(work / "checkpoints") == [stopped]
    data = sorted(os.listdir(work / "checkpoints" / str(stopped) / "data"))
    assert "process_0-of-2.json" in data and "process_1-of-2.json" in data
    r = subprocess.run(cmd + _worker_cmd(work, losses, STEPS, 10_000), env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert _resumed_step(r.stdout) == stopped
    # 2 processes x 4 devices vs the 1 x 8 reference: the same global batches, but the gradient
    # all-reduce crosses processes (gloo) in another order, so float32 sums differ in the last bits
    rows = {i: _read_losses(f"{losses}.p{i}") for i in (0, 1)}
    assert rows[0] == rows[1]  # both processes see the same (replicated) loss
    assert [r["step"] for r in rows[0]] == list(range(1, STEPS + 1))
    _assert_on_reference(rows[0], reference, rtol=1e-5)


def test_two_processes_start_from_a_single_process_checkpoint(tmp_path):
    """restore_model (e.g. fine-tuning from a pretraining run) on 2 processes: the restored
    process-local arrays must reach the global mesh."""
    run_tiny(str(tmp_path / "pre"), 4, 4, None)
    expected = {}
    run_tiny(str(tmp_path / "one"), 3, 10, lambda s, m: expected.__setitem__(s, m["loss"]),
             init_from=str(tmp_path / "pre"))
    env = dict(_env(4), PYTHON=sys.executable)
    r = subprocess.run(["bash", LAUNCHER, "-n", "2", "-d", "4", "--"]
                       + _worker_cmd(tmp_path / "two", tmp_path / "losses", 3, 10, init_from=tmp_path / "pre"),
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = _read_losses(f"{tmp_path / 'losses'}.p0")
    assert [r["step"] for r in rows] == [1, 2, 3]
    # started from the restored model (a fresh one has another loss), up to cross-process summation order
    _assert_on_reference(rows, expected, rtol=1e-5)


if __name__ == "__main__":
    worker_main()
