"""TempCLR as a system: contrastive pretraining on video -> supervised fine-tuning -> evaluation.

In order: the model (a registered backbone + TempCLR's iterative MANO regressor, plus a
projection head for pretraining), the loss terms (NT-Xent; the shared supervised terms), the
stages, the evaluation (single hand, FreiHAND semantics; the mean pose x0 as the trivial
baseline; CodaLab pred.json for the benchmarks) and the predictor. Everything else (stage
checks, workdirs, init/restore, the loops, tables) is the shared runner's.
"""
from __future__ import annotations

import functools
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax import mano
from handjax.eval import protocols
from handjax.losses import loss_from_weights, needs_mesh, nt_xent, undo_equivariance, window_pairs
from handjax.models import CONV_IMPLS
from handjax.models.checkpoint import is_model_checkpoint, load_model, read_meta
from handjax.models.tempclr import TempCLRModel, decode, default_mean_param
from handjax.train import guards
from handjax.train.loop import Task, restore_model
from handjax.train.summaries import reprojection_summary
from handjax.train.system import EvalStage, Predictor, System, TrainStage

MODEL_CONVENTION = "tempclr"
# TempCLR's MANOLossModule temporal_consistency (pose_w, shape_w) on fine-tuning video windows
TEMPORAL_TERMS = ("temporal_pose", "temporal_shape")
FINETUNE_TERMS = ("joints2d", "joints3d", "vertices", "wrist_pose", "hand_pose", "betas",  # built-in tuned terms
                  "expose_joints2d", "expose_joints3d", "expose_vertices", "expose_wrist_pose",  # paper recipes
                  "expose_hand_pose", "expose_betas") + TEMPORAL_TERMS


# ----------------------------------------------------------------------------- model
def backbone_name(cfg) -> str:
    """``model.backbone`` (a registered name, e.g. resnet50)."""
    return str(cfg.model.backbone)


def build_model(cfg, with_projection: bool, seed: int = 0) -> TempCLRModel:
    m = cfg.model
    conv_impl = m.get("conv_impl", "auto")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"config model.conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    return TempCLRModel(backbone=backbone_name(cfg), rngs=nnx.Rngs(seed), num_stages=int(m.num_stages),
                        hidden=tuple(m.hidden), projection=tuple(m.projection) if with_projection else None,
                        dtype=jnp.bfloat16 if m.get("bf16", False) else jnp.float32,
                        camera_scale=float(m.get("camera_scale", 0.9)), conv_impl=conv_impl)


def mano_model(cfg):
    return mano.load_model(cfg.mano.model_path or None, "right")


def hand_output(model, images, hand_model, remap, image_size: int, with_mesh: bool = True, convention="dataset"):
    """The last regressor stage decoded into the hand-output contract, joints reordered by ``remap``."""
    out = decode(model(images)[-1], hand_model, image_size, with_mesh=with_mesh, convention=MODEL_CONVENTION)
    return out.reorder(remap, convention)


# ----------------------------------------------------------------------------- losses
def pretrain_loss(model, batch, rng, *, temperature: float, equivariance: bool):
    """NT-Xent over the global batch of temporal windows (B, k, ...): frames 0/1 are positives."""
    images = batch["image"]
    b, k = images.shape[:2]
    z = model.embed(images.reshape((b * k,) + images.shape[2:]))
    if equivariance:
        z = undo_equivariance(z, batch["aug_rotation"].reshape(-1), batch["aug_shift"].reshape(-1, 2))
    positive, anchor = window_pairs(b, k)
    loss = nt_xent(z, positive, temperature, anchor)
    return loss, {"nt_xent": loss}


def temporal_consistency(rotmats, betas, in_window):
    """TempCLR's temporal-consistency term on fine-tuning windows (anchor = frame 0).

    rotmats (B, F, 16, 3, 3) wrist + finger rotations, betas (B, F, 10), in_window (B, F) bool.
    Returns (pose, shape): the squared Frobenius distance of the 16 rotations and the squared
    L2 distance of the betas between the anchor and every other in-window frame, summed over
    joints / coefficients and averaged over those frame pairs. (TempCLR's MANOLossModule feeds
    ``wrist_pose``, ``hand_pose`` and ``betas`` of a batch of contiguous subsequences to a
    ``temporal_consistency`` loss weighted by ``pose_w`` / ``shape_w``; its definition is not
    in the released code, so this is the plain squared difference of those parameters.)
    """
    pairs = in_window[:, 1:].astype(jnp.float32)
    n = jnp.maximum(jnp.sum(pairs), 1.0)
    d_pose = jnp.sum(jnp.square(rotmats[:, 1:] - rotmats[:, :1]), axis=(-3, -2, -1))
    d_shape = jnp.sum(jnp.square(betas[:, 1:] - betas[:, :1]), axis=-1)
    return jnp.sum(d_pose * pairs) / n, jnp.sum(d_shape * pairs) / n


def flatten_frames(batch, b: int, f: int) -> dict:
    """A window batch (leading (B, F)) as a frame batch of B * F samples."""
    return {k: v.reshape((b * f,) + v.shape[2:]) if v.ndim >= 2 and v.shape[:2] == (b, f) else v
            for k, v in batch.items()}


def finetune_loss(model, batch, rng, *, mano_model, remap, weights, image_size: int):
    """The supervised terms (``handjax.losses.terms``) on the last stage (TempCLR's pose_last_stage).

    Window batches (B, F, ...) (temporal terms weighted): every frame is supervised, and the
    temporal-consistency terms tie each window's frames to its anchor.
    """
    del rng
    images = batch["image"]
    temporal = {k: float(weights.get(k, 0.0)) for k in TEMPORAL_TERMS}
    frame_weights = {k: w for k, w in weights.items() if k not in TEMPORAL_TERMS}
    if images.ndim == 4:
        if any(temporal.values()):
            raise ValueError("finetune: the temporal terms need window batches (B, F, ...)")
        pred = hand_output(model, images, mano_model, remap, image_size, with_mesh=needs_mesh(frame_weights))
        return loss_from_weights(pred, batch, frame_weights, image_size)
    b, f = images.shape[:2]
    flat = flatten_frames(batch, b, f)
    pred = hand_output(model, flat["image"], mano_model, remap, image_size, with_mesh=needs_mesh(frame_weights))
    total, used = loss_from_weights(pred, flat, frame_weights, image_size)
    pose, shape = temporal_consistency(pred.rotmats.reshape((b, f) + pred.rotmats.shape[1:]),
                                       pred.betas.reshape(b, f, -1), batch["in_window"])
    for name, value in zip(TEMPORAL_TERMS, (pose, shape)):
        if temporal[name]:
            total = total + temporal[name] * value
            used[name] = value
    return total, used


# ----------------------------------------------------------------------------- stages
def _remap(cfg):
    return mano.joint_remap(MODEL_CONVENTION, cfg.data.joint_convention)


def pretrain_task(ctx) -> Task:
    p = ctx.stage_cfg
    loss = functools.partial(pretrain_loss, temperature=float(p.temperature), equivariance=bool(p.equivariance))
    return Task(build_model(ctx.cfg, with_projection=True, seed=ctx.seed), loss)


def finetune_task(ctx) -> Task:
    cfg = ctx.cfg
    hand, remap, size = mano_model(cfg), _remap(cfg), int(cfg.data.image_size)
    loss = functools.partial(finetune_loss, mano_model=hand, remap=remap, weights=dict(ctx.stage_cfg.loss_weights),
                             image_size=size)
    summaries = (reprojection_summary(lambda m, x: hand_output(m, x, hand, remap, size), hand.faces, size)
                 if ctx.stage_cfg.get("summary_every", 0) else None)
    return Task(build_model(cfg, with_projection=False, seed=ctx.seed), loss, summary_fn=summaries)


def _meta(path: str) -> dict:
    return read_meta(path) if is_model_checkpoint(path) else {}


def _load_imagenet_backbone(ctx, model, path: str, meta: dict) -> str:
    """A converted torchvision ResNet (``python -m handjax.convert torchvision-resnet``) into model.backbone."""
    want = backbone_name(ctx.cfg)
    have = f"resnet{meta.get('depth')}"
    if have != want:
        raise ValueError(f"config key {ctx.name}.init_from={path!r}: a converted torchvision ResNet-{meta.get('depth')}"
                         f", but model.backbone={want!r}")
    load_model(model.backbone, path)
    return f"backbone initialised from the ImageNet {have} weights at {path} (upstream's backbone.pretrained=True)"


def init_backbone(ctx, model, path: str) -> str:
    """TempCLR's fine-tune init: only the backbone weights (params and BN statistics) of ``path``
    (a pretrain workdir, a TempCLR model-only checkpoint, or a converted torchvision ResNet)."""
    meta = _meta(path)
    if meta.get("system") == "torchvision-resnet":
        return _load_imagenet_backbone(ctx, model, path, meta)
    # a pretrain workdir holds a projection head; a converted model-only checkpoint does not
    source = build_model(ctx.cfg, with_projection=not is_model_checkpoint(path), seed=0)
    restore_model(source, path)
    nnx.update(model.backbone, nnx.state(source.backbone))
    return f"backbone initialised from {path} (backbone weights only, as TempCLR)"


def init_pretrain(ctx, model, path: str) -> str:
    """``pretrain.init_from``: ImageNet weights (a converted torchvision ResNet: the backbone; the
    projection head starts fresh), a TempCLR model-only checkpoint (its backbone) or a pretrain
    workdir (the whole model, projection head included)."""
    meta = _meta(path)
    if meta.get("system") == "torchvision-resnet":
        return _load_imagenet_backbone(ctx, model, path, meta)
    if meta:
        return init_backbone(ctx, model, path)
    restore_model(model, path)
    return f"initialised from {path}"


def _finetune_data(ctx):
    """Frames, or (temporal terms weighted) windows of ``data.sampling.window`` / k=2, window=1 pairs."""
    weights = dict(ctx.stage_cfg.get("loss_weights") or {})
    if any(float(weights.get(k, 0.0)) for k in TEMPORAL_TERMS):
        return {"mode": "window", **dict(ctx.stage_cfg.get("temporal_window") or {"k": 2, "window": 1})}
    return {"mode": "frame"}


# ----------------------------------------------------------------------------- evaluation
def predict_fn(mano_model, remap, image_size: int):
    """jit-able (model, images) -> {"joints": dataset order, "vertices"}, metres."""

    def predict(model, images):
        out = hand_output(model, images, mano_model, remap, image_size)
        return {"joints": out.joints, "vertices": out.vertices}

    return predict


def mean_pose_fn(mano_model, remap, image_size: int, camera_scale: float = 0.9):
    """Baseline: the regressor's starting point x0 (mean pose/shape) predicted for every image."""
    out = decode(default_mean_param(camera_scale)[None], mano_model, image_size, convention=MODEL_CONVENTION)
    out = out.reorder(remap, "dataset")

    def predict(model, images):
        del model
        n = images.shape[0]
        return {"joints": jnp.repeat(out.joints, n, 0), "vertices": jnp.repeat(out.vertices, n, 0)}

    return predict


def _protocol(cfg) -> str:
    return cfg.eval.get("protocol", "") or ""  # 'freihand' | 'ho3d': also write the CodaLab pred.json


def _evaluator(ctx):
    from handjax.eval.evaluators import make_evaluator

    return make_evaluator("single_hand", protocol=_protocol(ctx.cfg))


def _collectors(ctx):
    return [protocols.PredJsonWriter(_protocol(ctx.cfg))] if _protocol(ctx.cfg) else []


def _finish(ctx, collectors):
    import jax

    if collectors and jax.process_index() == 0:
        return {"pred_json": collectors[0].write(ctx.stage_cfg.get("pred_json", "") or
                                                 os.path.join(ctx.workdir, "pred.json"))}
    return None


TABLE_COLUMNS = ("mpjpe_mm", "pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "auc_pa")


def _table(rows, ctx) -> str:
    from handjax.eval.evaluators import format_table

    return protocols.format_metrics(rows) if _protocol(ctx.cfg) else format_table(rows, TABLE_COLUMNS)


def _label(ctx, trained_here: bool) -> str:
    pretrained = "pretrain" in str(ctx.cfg.stages) or ctx.cfg.finetune.init_from
    return "fine-tuned" + (" (with TempCLR pretraining)" if pretrained else " (no pretraining)")


def _eval_predict(ctx):
    return predict_fn(mano_model(ctx.cfg), _remap(ctx.cfg), int(ctx.cfg.data.image_size))


def _baselines(ctx):
    cfg = ctx.cfg
    return {"mean pose (x0)": mean_pose_fn(mano_model(cfg), _remap(cfg), int(cfg.data.image_size))}


# ----------------------------------------------------------------------------- predictor
def predictor(cfg) -> Predictor:
    """Right-hand crops -> {"right": HandOutput} (joints in TempCLR's order; left hands come mirrored)."""
    hand, size = mano_model(cfg), int(cfg.data.image_size)
    identity = tuple(range(21))

    def predict(model, images):
        return {"right": hand_output(model, images, hand, identity, size, convention=MODEL_CONVENTION)}

    return Predictor(model=build_model(cfg, with_projection=False), image_size=size, predict=predict,
                     faces={"right": np.asarray(hand.faces)}, sides=("right",),
                     meta={"system": "tempclr", "backbone": backbone_name(cfg), "joint_convention": MODEL_CONVENTION})


# ----------------------------------------------------------------------------- the system
def _released_checkpoint(path: str) -> bool:
    """A converted release (``python -m handjax.convert tempclr``): its regressor was trained with the real MANO."""
    return bool(path) and _meta(path).get("converter") == "handjax.convert.tempclr.convert_tempclr"


def check_released_checkpoint(cfg) -> None:
    """Evaluating a converted TempCLR release needs the real MANO (``guards.require_real_mano`` covers datasets)."""
    if guards.builtin_hand_allowed(cfg):
        return
    job = guards.job_stages(cfg)
    if "eval" in job and "finetune" not in job and _released_checkpoint(cfg.eval.get("checkpoint", "") or ""):
        raise ValueError(f"config key eval.checkpoint={cfg.eval.checkpoint!r} is a converted TempCLR release, whose "
                         f"regressor was trained with the real MANO model, but mano.model_path is empty (the "
                         f"built-in hand would make every metric and pred.json meaningless): {guards.MANO_REQUIRED}")


def check_video(cfg) -> None:
    """Contrastive pretraining (and the fine-tuning temporal terms) need video datasets."""
    temporal = any(float((cfg.finetune.get("loss_weights") or {}).get(k, 0.0)) for k in TEMPORAL_TERMS)
    needs = {"pretrain": "contrastive pretraining draws its positives from other frames of a video"}
    if temporal:
        needs["finetune"] = "the temporal terms (finetune.loss_weights.temporal_*) need video windows"
    guards.require_video(cfg, needs, hint="e.g. {stage}.data.name='hanco' (FreiHAND's authors' videos) or 'ho3d'")


def _check(cfg):
    if _protocol(cfg) and _protocol(cfg) not in protocols.PROTOCOLS:
        raise ValueError(f"config key eval.protocol={_protocol(cfg)!r}: known protocols {list(protocols.PROTOCOLS)}")
    check_released_checkpoint(cfg)  # the more specific message first
    guards.require_real_mano(cfg, ("finetune", "eval"))
    check_video(cfg)


SYSTEM = System(
    name="tempclr",
    stages=(
        TrainStage("pretrain", pretrain_task, data={"mode": "window"}, init=init_pretrain),
        TrainStage("finetune", finetune_task, data=_finetune_data, init_from="pretrain", init=init_backbone,
                   loss_terms=FINETUNE_TERMS),
        EvalStage("eval", model_from="finetune", model=lambda ctx: build_model(ctx.cfg, with_projection=False,
                                                                                seed=ctx.seed),
                  predict=_eval_predict, evaluator=_evaluator, baselines=_baselines, label=_label, table=_table,
                  collectors=_collectors, finish=_finish),
    ),
    predictor=predictor,
    check=_check,
)
