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
from handjax.models.checkpoint import is_model_checkpoint
from handjax.models.tempclr import TempCLRModel, decode, default_mean_param
from handjax.train.loop import Task, restore_model
from handjax.train.system import EvalStage, Predictor, System, TrainStage

MODEL_CONVENTION = "tempclr"
FINETUNE_TERMS = ("joints2d", "joints3d", "vertices", "wrist_pose", "hand_pose", "betas")


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


def finetune_loss(model, batch, rng, *, mano_model, remap, weights, image_size: int):
    """The shared supervised terms (``handjax.losses.terms``) on the last stage (TempCLR's pose_last_stage)."""
    del rng
    pred = hand_output(model, batch["image"], mano_model, remap, image_size, with_mesh=needs_mesh(weights))
    return loss_from_weights(pred, batch, weights, image_size)


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
    summaries = summary_fn(hand, remap, size) if ctx.stage_cfg.get("summary_every", 0) else None
    return Task(build_model(cfg, with_projection=False, seed=ctx.seed), loss, summary_fn=summaries)


def init_backbone(ctx, model, path: str) -> str:
    """TempCLR's fine-tune init: only the backbone weights (params and BN statistics) of ``path``."""
    # a pretrain workdir holds a projection head; a converted model-only checkpoint does not
    source = build_model(ctx.cfg, with_projection=not is_model_checkpoint(path), seed=0)
    restore_model(source, path)
    nnx.update(model.backbone, nnx.state(source.backbone))
    return f"backbone initialised from {path} (backbone weights only, as TempCLR)"


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


class _PredJson:
    """Collects the evaluated predictions for the CodaLab pred.json."""

    def __init__(self):
        self.collector = protocols.PredictionCollector()

    def add(self, pred, labels):
        self.collector.add_batch(pred["joints"], pred["vertices"], labels)


def _collectors(ctx):
    return [_PredJson()] if _protocol(ctx.cfg) else []


def _finish(ctx, collectors):
    import jax

    benchmark = _protocol(ctx.cfg)
    if benchmark and collectors and jax.process_index() == 0:
        path = ctx.stage_cfg.get("pred_json", "") or os.path.join(ctx.workdir, "pred.json")
        return {"pred_json": write_pred_json(benchmark, collectors[0].collector, path)}
    return None


def write_pred_json(benchmark: str, collector, path: str) -> str:
    """The CodaLab submission file of the collected predictions (official order); returns its path."""
    joints, verts = collector.arrays()
    expected = protocols.pred_format(benchmark).num_samples
    if expected is not None and len(joints) != expected:
        print(f"[eval] note: {len(joints)} samples, the {benchmark} benchmark has {expected}: pred.json is not a "
              f"complete submission", flush=True)
    protocols.write_pred_json(path, benchmark, joints, verts, check_count=False)
    print(f"[eval] {benchmark} pred.json ({len(joints)} samples) written to {path}; submit with: "
          f"zip -j pred.zip {path}", flush=True)
    return path


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


# ----------------------------------------------------------------------------- summaries
WEAK_PERSPECTIVE_DEPTH = 20.0  # metres: a far pinhole camera that reproduces the weak-perspective projection


def summary_fn(mano_model, remap, image_size: int, num_images: int = 4, min_display: int = 128):
    """Re-projection summaries (host side): crop with GT joints | predicted joints | predicted mesh over the crop.

    Crops smaller than ``min_display`` pixels are shown enlarged by an integer factor (nearest
    neighbour), with the skeletons and the mesh drawn at the display resolution.
    """
    from handjax import render
    from handjax.eval.visualize import denormalize, draw_skeleton, overlay
    from handjax.geometry import affine_to_perspective

    zoom = max(1, -(-min_display // image_size))
    size = image_size * zoom

    def to_display(u):  # crop pixel coordinates (OpenCV centres) -> display ones: pixel u covers zoom x zoom
        return (u + 0.5) * zoom - 0.5

    @nnx.jit
    def predict(model, images):
        out = hand_output(model, images, mano_model, remap, image_size)
        # the affine crop camera as a far pinhole camera at display resolution (focal: depth x pixel scale)
        cam = out.camera.at[:, :2].multiply(zoom).at[:, :2, 3].add((zoom - 1) / 2.0)
        focal = cam[:, 0, 0] * WEAK_PERSPECTIVE_DEPTH
        K, t = affine_to_perspective(cam, focal, jnp.full((cam.shape[0], 2), to_display(image_size / 2)))
        return out, K, out.vertices + t[:, None]

    def summarize(model, batch):
        images = jnp.asarray(batch["image"][:num_images])
        out, K, verts = predict(model, images)
        rendered = render.render_mesh_batch(verts, mano_model.faces, K, (size, size),
                                            vertex_colors=jnp.tile(jnp.array([[0.55, 0.65, 0.9]]), (verts.shape[1], 1)))
        crops = denormalize(np.asarray(images)).repeat(zoom, axis=1).repeat(zoom, axis=2)
        pred_px = to_display(np.asarray(out.joints2d))
        gt_px = to_display(np.asarray(batch["joints2d"][:num_images]))
        panels = []
        for i in range(len(crops)):
            panels.append(np.concatenate([
                draw_skeleton(crops[i], gt_px[i]), draw_skeleton(crops[i], pred_px[i]),
                overlay(crops[i], np.asarray(rendered.rgb[i]), np.asarray(rendered.mask[i]))], axis=1))
        return {"reprojection": np.stack(panels)}

    return summarize


# ----------------------------------------------------------------------------- the system
def _check(cfg):
    if _protocol(cfg) and _protocol(cfg) not in protocols.PROTOCOLS:
        raise ValueError(f"config key eval.protocol={_protocol(cfg)!r}: known protocols {list(protocols.PROTOCOLS)}")


SYSTEM = System(
    name="tempclr",
    stages=(
        TrainStage("pretrain", pretrain_task, data={"mode": "window"}),
        TrainStage("finetune", finetune_task, data={"mode": "frame"}, init_from="pretrain", init=init_backbone,
                   loss_terms=FINETUNE_TERMS),
        EvalStage("eval", model_from="finetune", model=lambda ctx: build_model(ctx.cfg, with_projection=False,
                                                                                seed=ctx.seed),
                  predict=_eval_predict, evaluator=_evaluator, baselines=_baselines, label=_label, table=_table,
                  collectors=_collectors, finish=_finish),
    ),
    predictor=predictor,
    check=_check,
)
