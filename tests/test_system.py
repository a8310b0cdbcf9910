"""The system layer: a system declared in a few lines runs through the shared runner; job errors come first.

A toy system (a learned mean hand: joints and vertices as parameters) is declared here the way a real
system is (stages, loss, evaluation stage, baseline) and trained, validated during training, evaluated,
and evaluated again from its checkpoint alone (restore without an optimizer). The TempCLR declaration
is checked for the errors the runner must raise before any training step, each naming its config key.
"""
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from handjax import mano
from handjax.eval.evaluators import make_evaluator
from handjax.losses import keypoint_l1
from handjax.train import runner
from handjax.train.loop import Task
from handjax.train.system import EvalStage, Stage, System, TrainStage

B = 8


class MeanHand(nnx.Module):
    """Predicts the same hand for every image: learned joints (21, 3) and vertices (778, 3)."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.joints = nnx.Param(jnp.asarray(rng.normal(0, 0.05, (21, 3)), jnp.float32))
        self.vertices = nnx.Param(jnp.asarray(rng.normal(0, 0.05, (778, 3)), jnp.float32))

    def __call__(self, images):
        n = images.shape[0]
        return {"joints": jnp.broadcast_to(self.joints[...], (n, 21, 3)),
                "vertices": jnp.broadcast_to(self.vertices[...], (n, 778, 3))}


def _loss(model, batch, rng):
    del rng
    out = model(batch["image"])
    j = keypoint_l1(out["joints"], batch["joints3d"], jnp.ones(batch["image"].shape[0], bool))
    v = keypoint_l1(out["vertices"], batch["vertices"], jnp.ones(batch["image"].shape[0], bool))
    return j + v, {"joints": j, "vertices": v}


def _task(ctx):
    return Task(MeanHand(ctx.seed), _loss)


def _zero_baseline(model, images):
    n = images.shape[0]
    return {"joints": jnp.zeros((n, 21, 3)), "vertices": jnp.zeros((n, 778, 3))}


TOY = System(
    name="toy",
    stages=(
        TrainStage("warmup", _task),
        TrainStage("main", _task, init_from="warmup", loss_terms=()),
        EvalStage("eval", model_from="main", model=lambda ctx: MeanHand(0), predict=lambda ctx: lambda m, x: m(x),
                  evaluator=lambda ctx: make_evaluator("single_hand"),
                  baselines=lambda ctx: {"zeros": _zero_baseline}, label=lambda ctx, here: "mean hand"),
    ),
)


def _hands(n, seed):
    hand = mano.load_model(None)
    rng = np.random.default_rng(seed)
    aa = jnp.asarray(rng.normal(0, 0.2, (n, 48)), jnp.float32)
    out = mano.mano_forward(hand, mano.from_axis_angle(hand, aa), jnp.zeros((n, 10)), convention="freihand")
    return {"image": np.zeros((n, 4, 4, 3), np.float32), "joints3d": np.asarray(out.joints),
            "vertices": np.asarray(out.vertices)}


def _factory(calls):
    train_set, test_set = _hands(32, 0), _hands(12, 1)

    def data(split, mode, batch_size, train, seed=0, **sampling):
        calls.append(dict(split=split, mode=mode, batch_size=batch_size, train=train, seed=seed, **sampling))
        if train:
            def forever():
                i = 0
                while True:
                    idx = np.arange(i, i + batch_size) % 32
                    yield {k: v[idx] for k, v in train_set.items()}
                    i += batch_size
            return forever()
        n = len(test_set["image"])
        batches = []
        for s in range(0, n, batch_size):
            idx = np.minimum(np.arange(s, s + batch_size), n - 1)
            batches.append(dict({k: v[idx] for k, v in test_set.items()}, valid=np.arange(s, s + batch_size) < n))
        return iter(batches)

    return data


def _stage(**kw):
    d = dict(num_steps=6, batch_size=B, log_every=3, checkpoint_every=3, keep_checkpoints=1, summary_every=0,
             init_from="", optim=dict(name="adam", lr=0.02, schedule="constant", warmup_steps=0))
    d.update(kw)
    return d


def _cfg(**over):
    c = ml_collections.ConfigDict(dict(system="toy", seed=3, stages="warmup,main,eval", warmup=_stage(),
                                       main=_stage(eval_every=3, eval_split="test"),
                                       eval=dict(split="test", batch_size=B, checkpoint="")))
    c.update(over)
    return c


def test_toy_system_trains_validates_and_evaluates(tmp_path, capsys, caplog):
    calls = []
    results = runner.run(TOY, _cfg(), str(tmp_path), _factory(calls))
    out = capsys.readouterr().out
    # stages in order, each with its seed (cfg.seed + declared index) and its data request
    train_calls = [c for c in calls if c["train"]]
    assert [(c["seed"], c["mode"], c["split"]) for c in train_calls] == [(3, "frame", "train"), (4, "frame", "train")]
    assert "[main] initialised from" in out and os.path.join(str(tmp_path), "warmup") in out
    # validation during training: at steps 3 and 6 on the held-out split, printed and in TensorBoard
    assert out.count("[main] step 3 validation:") == 1 and out.count("[main] step 6 validation:") == 1
    assert any(p.name.startswith("events") for p in (tmp_path / "main" / "tb").iterdir())
    rows = results["eval"]
    assert set(rows) == {"zeros", "mean hand"}
    assert rows["mean hand"]["num_joints"] == 12  # the 4 padded samples of the last batch are ignored
    assert rows["mean hand"]["mpjpe_mm"] < rows["zeros"]["mpjpe_mm"]
    assert "mean hand" in out and "zeros" in out
    saved = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert saved["mean hand"]["pa_mpjpe_mm"] == pytest.approx(rows["mean hand"]["pa_mpjpe_mm"])

    # evaluation alone restores the 'main' stage's weights (no optimizer is built) and gives the same numbers
    caplog.clear()
    again = runner.run(TOY, _cfg(stages="eval"), str(tmp_path), _factory([]))
    assert again["eval"]["mean hand"]["mpjpe_mm"] == pytest.approx(rows["mean hand"]["mpjpe_mm"], rel=1e-6)
    assert not [r for r in caplog.records if "does not exist" in r.getMessage()]  # no spurious Orbax warning


def _never_called(**kw):
    raise AssertionError(f"data requested before the job was validated: {kw}")


def _tempclr_cfg():
    from handjax.configs.tempclr import get_config

    return get_config("size=tiny")


@pytest.mark.parametrize("change,error,needle", [
    (lambda c: setattr(c, "stages", "pretrain,finetune,evaluate"), ValueError, r"'stages': unknown stage\(s\) \['evaluate'\]"),
    (lambda c: c.finetune.loss_weights.update(pose=1.0), ValueError, r"finetune\.loss_weights\.pose: no such loss term"),
    (lambda c: setattr(c.finetune, "init_from", "/nonexistent/run/pretrain"), FileNotFoundError,
     r"finetune\.init_from='/nonexistent/run/pretrain': no checkpoint there"),
    (lambda c: setattr(c, "stages", "eval"), FileNotFoundError, r"eval\.checkpoint"),
    (lambda c: setattr(c.pretrain, "batch_size", 12), ValueError, r"pretrain\.batch_size=12: must be a positive "
                                                                   r"multiple of the 8 devices"),
    (lambda c: setattr(c.eval, "batch_size", 4), ValueError, r"eval\.batch_size=4"),
    (lambda c: setattr(c.finetune, "eval_every", 2) or setattr(c, "stages", "finetune"), None, None),
])
def test_tempclr_job_errors_come_before_any_stage(tmp_path, change, error, needle):
    from handjax.train.tempclr import SYSTEM

    cfg = _tempclr_cfg()
    with cfg.unlocked():
        change(cfg)
    if error is None:  # a valid job: the first thing it does is ask for data
        with pytest.raises(AssertionError, match="data requested"):
            runner.run(SYSTEM, cfg, str(tmp_path), _never_called)
        return
    with pytest.raises(error, match=needle):
        runner.run(SYSTEM, cfg, str(tmp_path), _never_called)


def test_unknown_system_and_backbone_name_the_key():
    from handjax.train.system import get_system
    from handjax.train.tempclr import build_model

    with pytest.raises(ValueError, match=r"config key 'system': unknown system 'digitt'.*tempclr"):
        get_system("digitt")
    cfg = _tempclr_cfg()
    cfg.model.backbone = "resnet19"
    with pytest.raises(ValueError, match=r"config key model\.backbone: unknown backbone 'resnet19'; known: .*resnet18"):
        build_model(cfg, with_projection=False)


def test_preempted_evaluation_reruns_to_full_results(tmp_path):
    """A SIGTERM during the eval stage abandons it (Preempted, as main turns into exit 75); the rerun resumes the
    finished training stages at their last step (same metrics) and evaluates again, giving the full results."""
    import signal

    from handjax import distributed

    first = runner.run(TOY, _cfg(stages="warmup,main"), str(tmp_path), _factory([]))
    calls = []
    base = _factory(calls)

    def interrupted(split, mode, batch_size, train, seed=0, **kw):
        it = base(split, mode, batch_size, train, seed, **kw)
        if train:
            return it

        def gen():
            for i, b in enumerate(it):
                if i == 1:
                    os.kill(os.getpid(), signal.SIGTERM)  # the notice arrives during the evaluation pass
                yield b
        return gen()

    assert distributed.install_preemption_handler()
    try:
        with pytest.raises(distributed.Preempted, match="during evaluation"):
            runner.run(TOY, _cfg(stages="warmup,main,eval"), str(tmp_path), interrupted)
    finally:
        distributed.uninstall_preemption_handler()
    assert not (tmp_path / "eval_metrics.json").exists()
    again = runner.run(TOY, _cfg(stages="warmup,main,eval"), str(tmp_path), _factory([]))
    assert again["warmup"] == first["warmup"] and again["main"] == first["main"]  # resumed at the last step
    assert set(again["eval"]) == {"zeros", "mean hand"} and again["eval"]["mean hand"]["num_joints"] == 12
    assert (tmp_path / "eval_metrics.json").exists()


def _offset_stage_run(ctx, models):
    """A non-gradient stage: measures the trained mean hand's wrist offset from the training labels."""
    model = models["main"]
    labels = next(ctx.data(split="train", mode="frame", batch_size=B, train=True, seed=0))
    offset = np.asarray(model.joints[...][0]) - labels["joints3d"][:, 0].mean(0)
    np.save(os.path.join(ctx.stage_dir, "offset.npy"), offset)
    return {"offset_mm": float(np.linalg.norm(offset) * 1000.0)}


def _shifted_predict(ctx):
    def predict(model, inputs):  # several input keys reach predict as a dict of sharded arrays
        out = model(inputs["image"])
        return {k: v * inputs["scale"][:, None, None] for k, v in out.items()}
    return predict


TOY_WITH_STAGE = System(
    name="toy_stage",
    stages=TOY.stages[:2] + (
        Stage("measure", _offset_stage_run, requires=("main",)),
        EvalStage("eval", model_from="main", model=lambda ctx: MeanHand(0), predict=_shifted_predict,
                  evaluator=lambda ctx: make_evaluator("single_hand"),
                  baselines=lambda ctx: {}, label=lambda ctx, here: "scaled", inputs=("image", "scale")),
    ),
)


def _with_scale(data):
    def scaled(**kw):
        for b in data(**kw):
            yield dict(b, scale=np.full(len(b["image"]), 2.0, np.float32))
    return scaled


def test_generic_stage_and_several_predict_inputs(tmp_path):
    cfg = _cfg(stages="warmup,main,measure,eval", measure=dict())
    results = runner.run(TOY_WITH_STAGE, cfg, str(tmp_path), _with_scale(_factory([])))
    # the Stage ran in its own folder on the trained model and its metrics are in the job's results
    saved = np.load(tmp_path / "measure" / "offset.npy")
    assert results["measure"]["offset_mm"] == pytest.approx(float(np.linalg.norm(saved) * 1000.0))
    # the evaluation got both input keys: the predictions were scaled x2 (Procrustes removes the scale,
    # the root-relative MPJPE does not), compared with the plain evaluation of the same checkpoint
    plain = runner.run(TOY, _cfg(stages="eval"), str(tmp_path), _factory([]))["eval"]["mean hand"]
    scaled = results["eval"]["scaled"]
    assert scaled["pa_mpjpe_mm"] == pytest.approx(plain["pa_mpjpe_mm"], rel=1e-4)
    assert scaled["mpjpe_mm"] > plain["mpjpe_mm"] + 10.0
    # a stage whose required stage is neither in the job nor on disk is refused before anything runs
    with pytest.raises(FileNotFoundError, match="stage 'measure' needs the output of 'main'"):
        runner.run(TOY_WITH_STAGE, _cfg(stages="measure", measure=dict()), str(tmp_path / "fresh"),
                   _with_scale(_factory([])))


def test_seed_from_gives_a_compared_stage_the_same_seed(tmp_path):
    import dataclasses

    warmup, main = TOY.stages[:2]
    twin = dataclasses.replace(main, name="twin", init_from="", seed_from="warmup")
    system = System(name="toy_twin", stages=(warmup, twin))
    calls = []
    results = runner.run(system, _cfg(stages="warmup,twin", twin=_stage()), str(tmp_path), _factory(calls))
    assert [c["seed"] for c in calls if c["train"]] == [3, 3]  # same data order as the stage it is compared with
    # same seed, same initial weights, same batches and settings: the same final losses
    assert results["twin"]["loss"] == pytest.approx(results["warmup"]["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="stage 'main' has seed_from='nope', which is not one of its stages"):
        System(name="toy_broken", stages=(warmup, dataclasses.replace(main, seed_from="nope")))
