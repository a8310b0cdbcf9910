"""TempCLR recipe: contrastive pretraining -> supervised fine-tuning -> evaluation.

``run(cfg, workdir, data)`` runs the stages listed in ``cfg.stages``. ``data``
is a factory supplied by ``handjax.main`` (the loop never imports datasets):
``data(split=..., mode='frame'|'window', batch_size=..., train=bool, seed=...)``
returns an iterator of process-local numpy batches (see
``data_pipelines.pipeline`` for the format); evaluation iterators are finite
and mark padded samples with ``valid=False``.
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from handjax import mano
from handjax.eval import protocols
from handjax.geometry import axis_angle_to_matrix
from handjax.losses import (keypoint_l1, nt_xent, param_mse, root_relative, undo_equivariance,
                            weighted_sum, window_pairs)
from handjax.models import CONV_IMPLS
from handjax.models.tempclr import TempCLRModel, decode, default_mean_param
from handjax.models.checkpoint import is_model_checkpoint
from handjax.train.loop import Task, global_batch, make_mesh, replicate, restore_model, train

MODEL_CONVENTION = "tempclr"
FINETUNE_TERMS = ("joints2d", "joints3d", "vertices", "wrist_pose", "hand_pose", "betas")


def build_model(cfg, with_projection: bool, seed: int = 0) -> TempCLRModel:
    m = cfg.model
    conv_impl = m.get("conv_impl", "auto")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"config model.conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    return TempCLRModel(depth=int(m.depth), rngs=nnx.Rngs(seed), num_stages=int(m.num_stages),
                        hidden=tuple(m.hidden), projection=tuple(m.projection) if with_projection else None,
                        dtype=jnp.bfloat16 if m.get("bf16", False) else jnp.float32,
                        camera_scale=float(m.get("camera_scale", 0.9)), conv_impl=conv_impl)


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
    """Supervised losses on the last stage (TempCLR's pose_last_stage), in the dataset's joint order."""
    del rng
    params = model(batch["image"])[-1]
    out = decode(params, mano_model, with_mesh=float(weights.get("vertices", 0)) > 0, convention=MODEL_CONVENTION)
    idx = jnp.array(remap)
    joints, proj = out["joints"][:, idx], out["proj_joints"][:, idx]
    ones = jnp.ones(joints.shape[0], bool)
    valid = lambda key: batch.get("has_" + key, ones)
    gt_rot = axis_angle_to_matrix(batch["mano_pose"].reshape(-1, 16, 3))
    terms = {
        "joints2d": keypoint_l1(proj, 2.0 * batch["joints2d"] / image_size - 1.0, valid("joints2d")),
        "joints3d": keypoint_l1(root_relative(joints, joints), root_relative(batch["joints3d"], batch["joints3d"]),
                                valid("joints3d")),
        # separate wrist and finger terms (TempCLR's MANOLossModule: wrist_pose, hand_pose, betas); in one
        # 16-joint mean the global orientation would carry only 1/16 of the weight
        "wrist_pose": param_mse(out["rotmats"][:, :1], gt_rot[:, :1], valid("mano")),
        "hand_pose": param_mse(out["rotmats"][:, 1:], gt_rot[:, 1:], valid("mano")),
        "betas": param_mse(out["betas"], batch["betas"], valid("mano")),
    }
    if out["vertices"] is not None:
        terms["vertices"] = keypoint_l1(root_relative(out["vertices"], joints),
                                        root_relative(batch["vertices"], batch["joints3d"]), valid("vertices"))
    total, used = weighted_sum(terms, weights, optional=("vertices",))
    return total, used


def predict_fn(mano_model, remap):
    """jit-able (model, images) -> joints (dataset order) and vertices, in metres."""

    def predict(model, images):
        out = decode(model(images)[-1], mano_model, convention=MODEL_CONVENTION)
        return out["joints"][:, jnp.array(remap)], out["vertices"]

    return predict


WEAK_PERSPECTIVE_DEPTH = 20.0  # metres: a far pinhole camera that reproduces the weak-perspective projection


def summary_fn(mano_model, remap, image_size: int, num_images: int = 4, min_display: int = 128):
    """Re-projection summaries (host side): crop with GT joints | predicted joints | predicted mesh over the crop.

    Crops smaller than ``min_display`` pixels are shown enlarged by an integer factor (nearest
    neighbour), with the skeletons and the mesh drawn at the display resolution.
    """
    from handjax import render
    from handjax.eval.visualize import denormalize, draw_skeleton, overlay

    zoom = max(1, -(-min_display // image_size))
    size = image_size * zoom

    def to_display(u):  # crop pixel coordinates (OpenCV centres) -> display ones: pixel u covers zoom x zoom
        return (u + 0.5) * zoom - 0.5

    @nnx.jit
    def predict(model, images):
        return decode(model(images)[-1], mano_model, convention=MODEL_CONVENTION)

    def summarize(model, batch):
        images = jnp.asarray(batch["image"][:num_images])
        out = predict(model, images)
        s, t = out["camera_scale"], out["camera_translation"]
        # weak perspective x_n = s (X + t), pixel = (x_n + 1) S / 2  ==  pinhole at depth Z0 with f = s S Z0 / 2
        f = s * size / 2 * WEAK_PERSPECTIVE_DEPTH
        verts = out["vertices"] + jnp.concatenate([t, jnp.full_like(t[:, :1], WEAK_PERSPECTIVE_DEPTH)], -1)[:, None]
        zeros = jnp.zeros_like(f)
        c = to_display(image_size / 2)  # principal point: the crop centre
        K = jnp.stack([jnp.stack([f, zeros, zeros + c], -1), jnp.stack([zeros, f, zeros + c], -1),
                       jnp.stack([zeros, zeros, zeros + 1], -1)], -2)
        rendered = render.render_mesh_batch(verts, mano_model.faces, K, (size, size),
                                            vertex_colors=jnp.tile(jnp.array([[0.55, 0.65, 0.9]]), (verts.shape[1], 1)))
        crops = denormalize(np.asarray(images)).repeat(zoom, axis=1).repeat(zoom, axis=2)
        pred_px = to_display((np.asarray(out["proj_joints"][:, jnp.array(remap)]) + 1) * image_size / 2)
        gt_px = to_display(np.asarray(batch["joints2d"][:num_images]))
        panels = []
        for i in range(len(crops)):
            panels.append(np.concatenate([
                draw_skeleton(crops[i], gt_px[i]), draw_skeleton(crops[i], pred_px[i]),
                overlay(crops[i], np.asarray(rendered.rgb[i]), np.asarray(rendered.mask[i]))], axis=1))
        return {"reprojection": np.stack(panels)}

    return summarize


def evaluate(model, predict, data_iter, mesh, predictions=None) -> dict:
    """Metrics of ``model`` over a finite iterator (``handjax.eval.protocols``: padded samples
    carry valid=False, samples without ground truth has_joints3d / has_vertices=False).
    ``predictions``: an optional ``protocols.PredictionCollector`` that receives every prediction."""
    model.eval()
    graphdef, state = nnx.split(model)
    # replicate on the mesh: a restored model-only checkpoint lives on one device, the images are sharded
    state = replicate(state, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    @functools.partial(jax.jit, out_shardings=replicated)
    def step(state, images):
        return predict(nnx.merge(graphdef, state), images)

    acc = protocols.HandEvaluator()
    for local in data_iter:
        images = global_batch({"image": local["image"]}, mesh)["image"]
        joints, verts = jax.device_get(step(state, images))  # the whole global batch, on every process
        labels = _gather_labels(local)
        acc.add_batch(joints, verts, labels)
        if predictions is not None:
            predictions.add_batch(joints, verts, labels)
    return acc.result()


def _gather_labels(local: dict) -> dict:
    """Process-local labels -> the global batch's, in the order global_batch lays samples out."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    arrays = {k: np.asarray(v) for k, v in local.items() if np.asarray(v).dtype.kind in "biuf"}
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(arrays, tiled=True))


def mean_pose_metrics(mano_model, remap, data_iter) -> dict:
    """Baseline: the regressor's starting point x0 (mean pose/shape) predicted for every image."""
    out = decode(default_mean_param()[None], mano_model, convention=MODEL_CONVENTION)
    joints, verts = np.asarray(out["joints"][:, jnp.array(remap)]), np.asarray(out["vertices"])
    acc = protocols.HandEvaluator()
    for local in data_iter:
        labels = _gather_labels(local)
        n = len(labels["joints3d"])
        acc.add_batch(np.repeat(joints, n, 0), np.repeat(verts, n, 0), labels)
    return acc.result()


def _copy_backbone(src: TempCLRModel, dst: TempCLRModel):
    """TempCLR's fine-tune init: keep only backbone weights (params and BN statistics)."""
    nnx.update(dst.backbone, nnx.state(src.backbone))


def run(cfg, workdir: str, data) -> dict:
    stages = tuple(x.strip() for x in cfg.stages.split(",") if x.strip())
    unknown = set(stages) - {"pretrain", "finetune", "eval"}
    if unknown:
        raise ValueError(f"config key 'stages': unknown stage(s) {sorted(unknown)}; use pretrain, finetune, eval")
    bad_weights = sorted(set(cfg.finetune.loss_weights) - set(FINETUNE_TERMS))
    if bad_weights:  # checked before any stage runs
        raise ValueError(f"config key finetune.loss_weights.{bad_weights[0]}: no such loss term; "
                         f"known terms: {', '.join(FINETUNE_TERMS)}")
    mano_model = mano.load_model(cfg.mano.model_path or None, "right")
    remap = mano.joint_remap(MODEL_CONVENTION, cfg.data.joint_convention)
    mesh = make_mesh()
    image_size = int(cfg.data.image_size)
    results = {}
    pre_dir, ft_dir = os.path.join(workdir, "pretrain"), os.path.join(workdir, "finetune")

    pretrained = None
    if "pretrain" in stages:
        p = cfg.pretrain
        pretrained = build_model(cfg, with_projection=True, seed=cfg.seed)
        loss = functools.partial(pretrain_loss, temperature=float(p.temperature), equivariance=bool(p.equivariance))
        it = data(split="train", mode="window", batch_size=int(p.batch_size), train=True, seed=cfg.seed)
        results["pretrain"] = train(Task(pretrained, loss), it, p, pre_dir, name="pretrain", mesh=mesh, seed=cfg.seed)

    model = build_model(cfg, with_projection=False, seed=cfg.seed + 1)
    if "finetune" in stages:
        f = cfg.finetune
        init_from = f.init_from or (pre_dir if "pretrain" in stages else "")
        if init_from:
            if pretrained is None:
                # a pretrain workdir holds a projection head; a converted model-only checkpoint does not
                pretrained = build_model(cfg, with_projection=not is_model_checkpoint(init_from), seed=cfg.seed)
                restore_model(pretrained, init_from, cfg.pretrain)
            _copy_backbone(pretrained, model)
            print(f"[finetune] backbone initialised from {init_from} (backbone weights only, as TempCLR)", flush=True)
        loss = functools.partial(finetune_loss, mano_model=mano_model, remap=remap, weights=dict(f.loss_weights),
                                 image_size=image_size)
        it = data(split="train", mode="frame", batch_size=int(f.batch_size), train=True, seed=cfg.seed + 1)
        summaries = summary_fn(mano_model, remap, image_size) if f.summary_every else None
        results["finetune"] = train(Task(model, loss, summary_fn=summaries), it, f, ft_dir, name="finetune",
                                    mesh=mesh, seed=cfg.seed + 1)
    elif "eval" in stages:
        restore_model(model, cfg.eval.checkpoint or ft_dir, cfg.finetune)

    if "eval" in stages:
        e = cfg.eval
        benchmark = e.get("protocol", "") or ""  # 'freihand' | 'ho3d': also write the CodaLab pred.json
        collector = protocols.PredictionCollector() if benchmark else None
        make_it = lambda: data(split=e.split, mode="frame", batch_size=int(e.batch_size), train=False, seed=0)
        results["eval"] = {
            "mean pose (x0)": mean_pose_metrics(mano_model, remap, make_it()),
            "fine-tuned" + (" (with TempCLR pretraining)" if "pretrain" in stages or cfg.finetune.init_from else
                            " (no pretraining)"): evaluate(model, predict_fn(mano_model, remap), make_it(), mesh,
                                                           collector),
        }
        if jax.process_index() == 0:
            print(protocols.format_metrics(results["eval"]) if benchmark else format_table(results["eval"]),
                  flush=True)
            with epath.Path(workdir, "eval_metrics.json").open("w") as fh:
                json.dump(results["eval"], fh, indent=2)
            if benchmark:
                results["pred_json"] = _write_pred_json(benchmark, collector, e.get("pred_json", "") or
                                                        os.path.join(workdir, "pred.json"))
    return results


def _write_pred_json(benchmark: str, collector, path: str) -> str:
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


def format_table(rows: dict) -> str:
    cols = ["mpjpe_mm", "pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "auc_pa"]
    width = max(len(r) for r in rows) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{c:>13}" for c in cols)]
    for name, m in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{m.get(c, float('nan')):>13.3f}" for c in cols))
    return "\n".join(lines)
