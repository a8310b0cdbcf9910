"""Multi-process training on localhost: 2 processes x 4 CPU devices behave like 1 process x 8.

* ``handjax.distributed.plan``: explicit flags / HANDJAX_* variables / SLURM / TPU detection.
* TempCLR fine-tuning steps driven through ``handjax.train.loop.train`` in two worker
  processes (``python tests/test_multihost.py --workdir ... --out ...``) that each feed their
  half of one fixed global batch, against the same steps on 8 devices in this process.
* The 2-process checkpoint restores onto 1 process x 8 devices (iterator state: warned, restarted).
* ``launch/local_multiprocess.sh`` running the real ``handjax.main`` with 2 processes.
"""
import argparse
import functools
import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local_multiprocess.sh")
S, B = 32, 8  # image size, global batch


# ----------------------------------------------------------------------------- distributed.plan
def test_plan_single_process_by_default():
    from handjax.distributed import initialize, plan
    assert plan(environ={}).mode == "single"
    assert plan(num_processes=1, environ={}).mode == "single"
    assert plan(environ={"HANDJAX_NUM_PROCESSES": "1"}).mode == "single"
    import jax
    assert initialize(environ={}).mode == "single" and not jax.distributed.is_initialized()


def test_plan_explicit_flags_override_environment():
    from handjax.distributed import plan
    env = {"HANDJAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "HANDJAX_NUM_PROCESSES": "4", "HANDJAX_PROCESS_ID": "3"}
    p = plan(environ=env)
    assert (p.mode, p.coordinator_address, p.num_processes, p.process_id) == ("explicit", "10.0.0.1:1234", 4, 3)
    p = plan(coordinator_address="h:9", process_id=1, environ=env)
    assert (p.coordinator_address, p.num_processes, p.process_id) == ("h:9", 4, 1)


@pytest.mark.parametrize("kwargs,env,needle", [
    (dict(num_processes=2), {}, "--coordinator_address ($HANDJAX_COORDINATOR_ADDRESS), --process_id"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, "must lie in [0, 2)"),
    (dict(coordinator_address="h", num_processes=2, process_id=0), {}, "host:port"),
    ({}, {"HANDJAX_NUM_PROCESSES": "two"}, "$HANDJAX_NUM_PROCESSES) must be an integer"),
    (dict(num_processes=0), {}, "must be >= 1"),
])
def test_plan_rejects_incomplete_or_bad_values(kwargs, env, needle):
    from handjax.distributed import plan
    with pytest.raises(ValueError) as e:
        plan(environ=env, **kwargs)
    assert needle in str(e.value)


def test_plan_detects_slurm_and_tpu_pods():
    from handjax.distributed import plan
    slurm = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "16", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
             "SLURM_STEP_NODELIST": "gpu[01-02]"}
    p = plan(environ=slurm)
    assert (p.mode, p.num_processes, p.process_id) == ("slurm", 16, 5)
    assert plan(environ=dict(slurm, SLURM_NTASKS="1")).mode == "single"
    batch_step = {k: v for k, v in slurm.items() if k != "SLURM_STEP_NODELIST"}  # the sbatch script, not srun
    assert plan(environ=batch_step).mode == "single"
    assert plan(environ=dict(slurm, HANDJAX_DISTRIBUTED="off")).mode == "single"
    assert plan(environ={"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}).mode == "tpu"
    explicit = {"HANDJAX_COORDINATOR_ADDRESS": "a:1", "HANDJAX_NUM_PROCESSES": "2", "HANDJAX_PROCESS_ID": "0"}
    assert plan(environ=dict(slurm, **explicit)).mode == "explicit"


def test_first_of_group_finds_each_hosts_first_process():
    from handjax.distributed import first_of_group
    hosts = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [3, 4], [5, 6]], np.uint8)  # process -> host key
    assert first_of_group(hosts).tolist() == [0, 0, 2, 0, 2, 5]


def test_main_names_missing_distributed_flags(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "handjax.main", "--config", "configs/tempclr.py:size=tiny",
                        "--workdir", str(tmp_path), "--num_processes=2"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "--coordinator_address" in r.stderr and "--process_id" in r.stderr, r.stderr[-2000:]


# ----------------------------------------------------------------------------- TempCLR steps
def tempclr_batch(hand, seed: int = 1) -> dict:
    """A labelled global batch made directly with MANO (random pose/shape, noise images)."""
    import jax.numpy as jnp

    from handjax import mano
    rng = np.random.default_rng(seed)
    aa = rng.normal(0, 0.3, (B, 48)).astype(np.float32)
    betas = rng.normal(0, 1, (B, 10)).astype(np.float32)
    out = mano.mano_forward(hand, mano.from_axis_angle(hand, jnp.asarray(aa)), jnp.asarray(betas),
                            convention="freihand")
    joints = np.asarray(out.joints)
    return {"image": rng.normal(size=(B, S, S, 3)).astype(np.float32),
            "joints2d": ((joints[:, :, :2] * 2 + 1) * S / 2).astype(np.float32),
            "joints3d": joints, "vertices": np.asarray(out.vertices), "mano_pose": aa, "betas": betas}


class FixedBatchSlices:
    """Checkpointable iterator: this process's rows of one fixed global batch, every step."""

    def __init__(self, batch: dict, process_index: int, process_count: int):
        per = B // process_count
        self.local = {k: v[process_index * per:(process_index + 1) * per] for k, v in batch.items()}
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        return self.local

    def get_state(self):
        return json.dumps({"i": self.i}).encode()

    def set_state(self, state):
        self.i = json.loads(state)["i"]

    def start_prefetch(self):
        pass


def _hand():
    from handjax import mano
    return mano.load_model(None)


def _model():
    from flax import nnx

    from handjax.models.tempclr import TempCLRModel
    return TempCLRModel(backbone="resnet18", rngs=nnx.Rngs(0), hidden=(64, 64))


def _cfg(num_steps: int):
    import ml_collections
    # SGD without momentum: the update is linear in the gradient, so the device/process layout only
    # changes float summation order; a small lr keeps the steps from amplifying that noise
    return ml_collections.ConfigDict(dict(num_steps=num_steps, log_every=1, checkpoint_every=2, keep_checkpoints=2,
                                          optim=dict(name="sgd", lr=0.01, momentum=0.0, schedule="constant")))


def _host_params(model) -> dict:
    """Params and BatchNorm statistics as numpy, keyed by path."""
    import jax
    from flax import nnx
    flat, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def finetune_params(workdir: str, num_steps: int) -> tuple:
    """TempCLR fine-tuning steps on this process's slice of the fixed batch: (host params, iterator)."""
    import jax

    from handjax import mano
    from handjax.train import tempclr as recipe
    from handjax.train.loop import Task, train
    hand = _hand()
    loss = functools.partial(recipe.finetune_loss, mano_model=hand, remap=mano.joint_remap("tempclr", "freihand"),
                             # pose weights as one 16-joint mean: gentle SGD steps that do not amplify float noise
                             weights={"joints2d": 1.0, "joints3d": 10.0, "vertices": 10.0, "wrist_pose": 1 / 16,
                                      "hand_pose": 15 / 16, "betas": 0.1},
                             image_size=S)
    model = _model()
    it = FixedBatchSlices(tempclr_batch(hand), jax.process_index(), jax.process_count())
    train(Task(model, loss), it, _cfg(num_steps), workdir, name="finetune")
    return _host_params(model), it


def worker_main(argv=None):
    """Subprocess entry: join the 2-process job (HANDJAX_* env), fine-tune, process 0 saves the params."""
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args(argv)
    from handjax import distributed
    distributed.initialize()
    import jax
    params, _ = finetune_params(args.workdir, args.steps)
    if jax.process_index() == 0:
        np.savez(args.out, **params)
    distributed.shutdown()


def _run_launcher(args, timeout, **kw):
    """``local_multiprocess.sh -n 2 -d 4 -- args``; always leaves no process behind."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen(["bash", LAUNCHER, "-n", "2", "-d", "4", "--", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # forwarded to the workers; the launcher kills leftovers on exit
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"launcher timed out after {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def _assert_params_close(a: dict, b: dict):
    assert sorted(a) == sorted(b) and len(a) > 10
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-5, err_msg=k)


def test_two_processes_equal_one_process_and_checkpoint_moves_between_them(tmp_path, caplog):
    from handjax.train.loop import restore_model
    two_proc, one_proc = tmp_path / "two", tmp_path / "one"
    rc, out, err = _run_launcher([sys.executable, os.path.abspath(__file__), "--workdir", str(two_proc),
                                  "--out", str(tmp_path / "two.npz"), "--steps", "2"], timeout=900)
    assert rc == 0, out[-2000:] + err[-4000:]
    assert out.count("[finetune] step 2/2") == 1  # only process 0 prints
    data = os.listdir(two_proc / "checkpoints" / "2" / "data")
    assert "process_0-of-2.json" in data and "process_1-of-2.json" in data

    # 1 process x 8 devices, the same global batch: 3 steps (checkpoints at 2 and 3)
    one3, _ = finetune_params(str(one_proc), 3)
    one2 = _model()
    assert restore_model(one2, str(one_proc), step=2) == 2
    _assert_params_close(dict(np.load(tmp_path / "two.npz")), _host_params(one2))

    # the 2-process checkpoint on 1 process x 8 devices: train state restored, iterator state warned about
    with caplog.at_level("WARNING"):
        resumed, it = finetune_params(str(two_proc), 3)
    assert "written by 2 process(es); this run has 1" in caplog.text
    assert it.i == 1  # the iterator restarted from its beginning and fed step 3 only
    _assert_params_close(resumed, one3)


# ----------------------------------------------------------------------------- main, end to end
def test_main_two_processes_end_to_end(tmp_path):
    work = tmp_path / "work"
    rc, out, err = _run_launcher(
        [sys.executable, "-m", "handjax.main", "--config", "configs/tempclr.py:size=tiny", "--workdir", str(work),
         f"--config.data.data_dir={tmp_path / 'data'}", "--config.stages=finetune,eval",
         "--config.finetune.num_steps=2", "--config.finetune.summary_every=2"], timeout=900)
    assert rc == 0, out[-2000:] + err[-4000:]
    # process 0 alone prints progress and writes job-level files
    assert out.count("[finetune] step 2/2") == 1 and out.count("config written to") == 1
    results = json.loads((work / "results.json").read_text())
    assert (work / "config.json").is_file() and "finetune" in results
    # evaluation covers both processes' shards: the tiny test split has 4 sequences x 4 frames
    assert out.count("mean pose (x0)") == 1 and all(r["num_joints"] == 16 for r in results["eval"].values())
    assert len(glob.glob(str(work / "finetune" / "tb" / "events*"))) == 1
    assert os.listdir(work / "finetune" / "summaries") == ["reprojection_0000002.png"]
    # the checkpoint holds both processes' grain iterator states (ShardByJaxProcess shards)
    data = os.listdir(work / "finetune" / "checkpoints" / "2" / "data")
    assert "process_0-of-2.json" in data and "process_1-of-2.json" in data


if __name__ == "__main__":
    worker_main()
