"""handobjectconsist (Hasson et al., CVPR 2020) as a system: sparse supervision -> photometric
consistency over time -> evaluation.

In order: the model (a registered backbone + MeshRegNet's heads, ``handjax.models.meshregnet``), the
loss terms (``handjax.losses.photometric``: MSE on camera-space joints / object vertices, MANO priors,
the warping term ``consist``), the stages, the evaluation (hand joints EPE, centred EPE, object vertex
error: ``make_evaluator("hand_object")``; a table of supervised-only / control / consistency rows and a
trivial baseline) and the system declaration.

Stages (upstream's two scripts; the control run is a stage of its own so that one job prints the
paper's comparison):

* ``supervised`` (``trainmeshreg.py --fraction``): annotated frames of the labelled fraction, supervised
  terms;
* ``control`` (``trainmeshwarp.py --lambda_data 1 --lambda_consist 0``) and ``consistency``
  (``trainmeshwarp.py --consist_gt_refs``): both resume from ``supervised`` and train on pairs
  [query frame, nearest labelled frame] of the pair sampler. One step is upstream's data batch + consist
  batch in one: ``lambda_d`` x (the supervised terms on the reference frames -- labelled, as upstream's
  data batch -- plus the MANO priors on the queries) + ``lambda_c`` x the warping loss of the queries,
  with upstream's ramp ``lambda_c = min(lambda_consist n / ramp, lambda_consist)`` over the first consist
  batches (n counted in the model, ``consist_batches``) and ``lambda_d = lambda_data - lambda_c``.
  Differences from upstream: upstream's data batch draws labelled frames uniformly, here each labelled
  frame appears as often as it is the nearest one to a query; the ramp counter is checkpointed (upstream's
  restarts with the process).
* ``eval``: the consistency model, the supervised and control models restored from their stage folders,
  and the mean of the labelled training frames (trivial baseline).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax import mano
from handjax.losses import photometric as pl
from handjax.models import CONV_IMPLS
from handjax.geometry import project_perspective
from handjax.models.meshregnet import MeshRegNet, decode, model_convention
from handjax.models.input_norm import from_imagenet
from handjax.render import MANO_WRIST_BOUNDARY_IDS, seal_wrist
from handjax.train import guards
from handjax.train.loop import Task, restore_model
from handjax.train.system import EvalStage, Predictor, System, TrainStage

SUPERVISED_TERMS = tuple(pl.TERMS)
CONSIST_TERMS = SUPERVISED_TERMS + ("consist",)
EVAL_INPUTS = ("image", "K", "object_id")


# ----------------------------------------------------------------------------- model
def build_model(cfg, seed: int = 0) -> MeshRegNet:
    m = cfg.model
    if m.get("conv_impl", "auto") not in CONV_IMPLS:
        raise ValueError(f"config model.conv_impl must be one of {CONV_IMPLS}, got {m.conv_impl!r}")
    adaptor = fphab_adaptor(cfg)
    return MeshRegNet(str(m.backbone), rngs=nnx.Rngs(seed), ncomps=int(m.ncomps),
                      mano_neurons=tuple(m.mano_neurons), use_shape=bool(m.use_shape),
                      input_norm=str(m.input_norm), conv_impl=str(m.get("conv_impl", "auto")), adaptor=adaptor)


def fphab_adaptor(cfg):
    """The frozen FPHAB skeleton adaptor (21, 778) of the config, or None.

    ``model.fphab_adaptor=PATH``: upstream's ``assets/mano/fhb_skel_centeridx9.pkl`` (read with a restricted
    unpickler, :func:`data_pipelines.fphab.layout.read_skeleton_adaptor`), for training on FPHAB from scratch (the
    path implies the adaptor); otherwise ``model.fhb_adaptor=True`` makes a zero placeholder whose values come
    from the checkpoint the model is restored from (a converted release, ``init_from``). A restored checkpoint's
    adaptor replaces the file's values."""
    m = cfg.model
    path = str(m.get("fphab_adaptor", "") or "")
    if path:
        from data_pipelines.fphab.layout import read_skeleton_adaptor

        return jnp.asarray(read_skeleton_adaptor(path)["adaptor"])
    return jnp.zeros((21, 778), jnp.float32) if m.get("fhb_adaptor", False) else None


def adaptor_of(model: MeshRegNet):
    """The model's frozen FPHAB adaptor (21, 778), or None."""
    return None if model.adaptor is None else model.adaptor[...]


@dataclasses.dataclass(frozen=True)
class Parts:
    """Everything the decode / losses close over (constants of the jitted steps).

    Objects (:class:`data_pipelines.object_models.ObjectMeshes`): ``object_vertices`` (O, Vmax, 3) canonical,
    bounding-box centred, padded by tiling; ``object_faces`` (Fr, 3) the render topology over
    :meth:`render_object`'s vertices (the objects' one shared topology, or a triangle soup whose render vertex r
    is padded vertex ``object_soup[object_id, r]``, -1 = parked behind the camera);
    ``object_mesh_faces`` / ``object_num_vertices`` each object's own faces and vertex count (OBJ export)."""

    hand_model: Any
    convention: Any
    object_vertices: jnp.ndarray   # (O, Vmax, 3) canonical, bounding-box centred
    object_faces: np.ndarray       # (Fr, 3) render topology
    hand_faces: np.ndarray         # (1538 + fan, 3) wrist-sealed hand faces
    wrist_fan: int
    image_hw: tuple
    factors: dict
    object_soup: Optional[np.ndarray] = None      # (O, Vr) int32, see render_topology
    object_names: tuple = ()
    object_mesh_faces: tuple = ()
    object_num_vertices: tuple = ()
    source_hw: Optional[tuple] = None  # (H, W) of the stored frames when the batches carry no jitter_mask

    def decode(self, raw, K, object_id, adaptor=None):
        canon = self.object_vertices[object_id] if object_id is not None else None
        return decode(raw, K, self.image_hw, self.hand_model, object_canonical=canon, convention=self.convention,
                      adaptor=adaptor, **self.factors)

    def render_object(self, verts: jnp.ndarray, object_id: jnp.ndarray) -> jnp.ndarray:
        """Padded object vertices (B, Vmax, 3) of objects ``object_id`` (B,) -> the render topology's vertices
        (B, Vr, 3): with a triangle soup each sample's own object's face corners, the unused faces' corners
        behind the camera (never rasterised); gradients reach the sample's object vertices through the gather."""
        if self.object_soup is None:
            return verts
        from data_pipelines.object_models import BEHIND_CAMERA

        index = jnp.asarray(self.object_soup)[jnp.asarray(object_id).reshape(-1)]          # (B, Vr)
        gathered = jnp.take_along_axis(verts, jnp.maximum(index, 0)[..., None], axis=1)
        return jnp.where((index >= 0)[..., None], gathered, jnp.asarray(BEHIND_CAMERA, verts.dtype))


OBJECT_MODELS_HELP = {
    "fphab": "the FPHAB download's Object_models folder (<dir>/juice_model/juice_model.ply, liquid_soap_model/..., "
             "milk_model/..., salt_model/...); default <data.manual_dir>/Object_models",
    "ho3d": "upstream's modelsprocess folder (<dir>/<ycb name>/textured_simple_2000.obj) or the YCB models folder "
            "(<dir>/<ycb name>/textured_simple.obj); default <data.manual_dir>/modelsprocess",
}


def object_meshes(cfg, builder_dir: str):
    """The known objects of the configured dataset (:class:`data_pipelines.object_models.ObjectMeshes`): the
    built-in ``hand_object`` scenes' meshes stored with the dataset, FPHAB's / HO3D's read from the folder of
    config key ``data.object_models`` (the same table the data factory labels the records with)."""
    from data_pipelines import object_models

    name = cfg.data.name
    if name == "hand_object":
        from data_pipelines.hand_object import load_object_meshes

        m = load_object_meshes(builder_dir)
        return object_models.ObjectMeshes.shared(m["names"], m["vertices"], m["faces"], builder_dir)
    if name in OBJECT_MODELS_HELP:
        meshes = object_models.configured_objects(name, cfg.data)
        if meshes is None:
            raise ValueError(f"config key data.object_models is empty and data.manual_dir has no default folder: "
                             f"the photometric system needs the known object meshes of {name!r}: set "
                             f"data.object_models to {OBJECT_MODELS_HELP[name]}")
        return meshes
    raise ValueError(f"config key data.name={name!r}: the photometric system knows the object meshes of "
                     f"'hand_object', {sorted(OBJECT_MODELS_HELP)} only")


def crop_area_mask(crop_affine: jnp.ndarray, source_hw, out_hw) -> jnp.ndarray:
    """Upstream's JITTERMASK from the crop transform: crop_affine (B, 3, 3) (original pixels -> crop pixels, pixel
    centres at integer coordinates), the original frame size (H0, W0) and the crop size (H, W) -> (B, H, W) bool,
    True where the crop pixel's nearest original pixel ``floor(p + 0.5)`` lies inside the frame (as the pipeline's
    nearest resampling of a white image), False on the padding."""
    h, w = out_hw
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    pix = jnp.stack([xs, ys, jnp.ones_like(xs)], -1)                     # (H, W, 3)
    src = jnp.einsum("bij,hwj->bhwi", jnp.linalg.inv(crop_affine.astype(jnp.float32)), pix)
    sx = jnp.floor(src[..., 0] / src[..., 2] + 0.5)
    sy = jnp.floor(src[..., 1] / src[..., 2] + 0.5)
    return (sx >= 0) & (sx < source_hw[1]) & (sy >= 0) & (sy < source_hw[0])


def jitter_masks(parts: Parts, frames: dict):
    """(B, H, W) bool image area of the frames' crops: the pipeline's ``jitter_mask`` (FPHAB / HO3D records), else
    computed from ``crop_affine`` when the stored frame size is known (the built-in scenes), else None."""
    if "jitter_mask" in frames:
        return frames["jitter_mask"]
    if parts.source_hw is not None and "crop_affine" in frames:
        return crop_area_mask(frames["crop_affine"], parts.source_hw, frames["image"].shape[1:3])
    return None


def _stored_frame_size(cfg, builder_dir: str) -> Optional[tuple]:
    """(H, W) of the built-in scenes' frames (their jitter masks are computed from the crop), else None."""
    if cfg.data.name != "hand_object":
        return None
    import tensorflow_datasets as tfds

    shape = tfds.builder_from_directory(builder_dir).info.features["image"].shape
    return (int(shape[0]), int(shape[1])) if shape[0] and shape[1] else None


def make_parts(cfg, builder_dir: str) -> Parts:
    hand = mano.load_model(cfg.mano.model_path or None, "right")
    meshes = object_meshes(cfg, builder_dir)
    padded, _ = meshes.padded()
    faces, soup = meshes.render_topology()
    _, sealed = seal_wrist(hand.v_template, np.asarray(hand.faces), MANO_WRIST_BOUNDARY_IDS)
    m = cfg.model
    size = int(cfg.data.image_size)
    return Parts(hand_model=hand, convention=model_convention(str(m.tips)),
                 object_vertices=jnp.asarray(padded), object_faces=np.asarray(faces, np.int32),
                 hand_faces=np.asarray(sealed), wrist_fan=len(MANO_WRIST_BOUNDARY_IDS), image_hw=(size, size),
                 factors=dict(trans_factor=float(m.trans_factor), scale_factor=float(m.scale_factor),
                              depth_offset=float(m.depth_offset)),
                 object_soup=soup, object_names=tuple(meshes.names),
                 object_mesh_faces=tuple(meshes.faces), object_num_vertices=tuple(int(n) for n in meshes.num_vertices),
                 source_hw=_stored_frame_size(cfg, builder_dir))


def _parts(ctx) -> Parts:
    return make_parts(ctx.cfg, ctx.data.builder_dir)


def forward(model, parts: Parts, images, K, object_id, freeze_bn: bool = False):
    """images (B, H, W, 3) ImageNet-normalised, K (B, 3, 3), object_id (B,) -> MeshRegOutput."""
    if freeze_bn:  # upstream --freeze_batchnorm: BatchNorm uses its running (ImageNet) statistics in training
        model.backbone.eval()
    return parts.decode(model(images), K, object_id, adaptor_of(model))


# ----------------------------------------------------------------------------- losses
def supervised_loss(model, batch, rng, *, parts: Parts, weights: dict, freeze_bn: bool):
    """Upstream's MeshRegNet loss on a frame batch (only labelled samples carry the data terms)."""
    del rng
    out = forward(model, parts, batch["image"], batch["K"], batch["object_id"], freeze_bn)
    return pl.weighted_terms(out, batch, weights)


def _frames(batch, i: int) -> dict:
    return {k: v[:, i] for k, v in batch.items() if v.ndim >= 2 and v.shape[1] == 2}


def to_unit_range(images):
    """ImageNet-normalised images -> upstream's [-0.5, 0.5] intensities."""
    return from_imagenet(images, -0.5)


def consistency_loss(model, batch, rng, *, parts: Parts, weights: dict, freeze_bn: bool, consist: dict):
    """One step on a pair batch (B, 2, ...): element 0 the query, 1 its nearest labelled frame (see the module
    docstring for the weighting)."""
    del rng
    b = batch["image"].shape[0]
    flat = {k: v.reshape((2 * b,) + v.shape[2:]) for k, v in batch.items() if v.ndim >= 2 and v.shape[1] == 2}
    out = forward(model, parts, flat["image"], flat["K"], flat["object_id"], freeze_bn)
    take = lambda x, i: None if x is None else x.reshape((b, 2) + x.shape[1:])[:, i]  # noqa: E731
    out_q, out_r = (jax.tree.map(lambda x, i=i: take(x, i), out) for i in (0, 1))
    query, ref = _frames(batch, 0), _frames(batch, 1)
    sup, used = pl.weighted_terms(out_r, ref, weights)
    reg, _ = pl.weighted_terms(out_q, query, weights, pl.REGULARISERS)
    n = model.consist_batches[...]
    model.consist_batches[...] = n + 1
    lam = float(weights.get("consist", 0.0))
    lam_c = pl.consist_weight(n, lam, int(consist["ramp_steps"]))
    lam_d = float(consist["lambda_data"]) - lam_c
    total = lam_d * (sup + reg)
    metrics = dict(used, lambda_consist=lam_c)
    if lam:
        q_obj = parts.render_object(out_q.object.vertices, query["object_id"])
        q_verts, q_faces, ignore = pl.hand_object_mesh(out_q.hand.vertices, q_obj, parts.hand_faces,
                                                       parts.object_faces, parts.wrist_fan)
        skip = query["annotated"] if consist["skip_annotated_queries"] else jnp.zeros(b, bool)
        if consist["gt_refs"]:
            r_hand, has_ref = reference_hand(parts, ref, b)
            r_obj = ref["object_vertices"]
            has_ref = has_ref & pl.labelled(ref, b, "object")
            skip = skip | ~has_ref  # a reference without its ground-truth mesh cannot be rendered: counted below
            metrics["consist_refs_without_mesh"] = jnp.sum(~has_ref)
        else:
            r_hand, r_obj = out_r.hand.vertices, out_r.object.vertices
        r_obj = parts.render_object(r_obj, ref["object_id"])
        r_verts, _, _ = pl.hand_object_mesh(r_hand, r_obj, parts.hand_faces, parts.object_faces, parts.wrist_fan)
        result = pl.photometric_consistency(
            q_verts, jax.lax.stop_gradient(r_verts), q_faces, ignore, query["K"], ref["K"],
            to_unit_range(query["image"]), to_unit_range(ref["image"]), pixel_center=float(consist["pixel_center"]),
            upstream_grid=bool(consist["upstream_grid"]), occlusion_threshold=float(consist["occlusion_threshold"]),
            skip=skip, jitter_query=jitter_masks(parts, query), jitter_ref=jitter_masks(parts, ref))
        warp_loss = jnp.mean(result.loss)
        total = total + lam_c * warp_loss
        metrics.update(consist=warp_loss, **pl.summary_stats(result))
    return total, metrics


def reference_hand(parts: Parts, ref: dict, b: int):
    """Ground-truth hand vertices (B, 778, 3) of the reference frames and whether each has them: the stored
    ``vertices`` where ``has_vertices`` (absent flag = stored), else MANO(``mano_pose`` (flat hand mean, axis-angle),
    ``betas``) + ``transl`` where ``has_mano`` and ``has_transl`` (FPHAB's MANO fits, HO3D built without
    ``--mano_model``), else not available."""
    has_v = pl.labelled(ref, b, "vertices")
    if "has_vertices" not in ref or "mano_pose" not in ref:  # every frame stores its mesh (the built-in scenes)
        return ref["vertices"], has_v
    rot = mano.from_axis_angle(parts.hand_model, ref["mano_pose"], flat_hand_mean=True)
    fitted = mano.mano_forward(parts.hand_model, rot, ref["betas"], ref["transl"], convention="smplx").vertices
    has_fit = pl.labelled(ref, b, "mano") & pl.labelled(ref, b, "transl")
    verts = jnp.where(has_v[:, None, None], ref["vertices"], fitted)
    return verts, has_v | has_fit


# ----------------------------------------------------------------------------- stages
def _weights(ctx) -> dict:
    return dict(ctx.stage_cfg.loss_weights)


def supervised_task(ctx) -> Task:
    loss = functools.partial(supervised_loss, parts=_parts(ctx), weights=_weights(ctx),
                             freeze_bn=bool(ctx.cfg.model.freeze_bn))
    return Task(build_model(ctx.cfg, seed=ctx.seed), loss)


def consistency_task(ctx) -> Task:
    s = ctx.stage_cfg
    consist = dict(lambda_data=float(s.lambda_data), ramp_steps=int(s.ramp_steps), gt_refs=bool(s.gt_refs),
                   skip_annotated_queries=bool(s.skip_annotated_queries), pixel_center=float(s.pixel_center),
                   upstream_grid=bool(s.upstream_grid), occlusion_threshold=float(s.occlusion_threshold))
    loss = functools.partial(consistency_loss, parts=_parts(ctx), weights=_weights(ctx),
                             freeze_bn=bool(ctx.cfg.model.freeze_bn), consist=consist)
    return Task(build_model(ctx.cfg, seed=ctx.seed), loss)


def _fraction(ctx) -> float:
    """``sparse.fraction``: the labelled fraction of the annotated training frames (upstream's --fraction)."""
    return float(ctx.cfg.sparse.fraction)


def _labels(ctx) -> dict:
    """The labelled-frame selection every stage shares: ``sparse.fraction`` chosen with ``sparse.fraction_seed``
    (None: the run's seed)."""
    seed = int(ctx.cfg.sparse.get("fraction_seed", -1))
    return {"fraction": _fraction(ctx), "fraction_seed": None if seed < 0 else seed}


def _supervised_data(ctx):
    return {"mode": "frame", "annotated_only": True, **_labels(ctx)}


def _pair_data(ctx):
    distance = int(ctx.cfg.sparse.get("max_distance", -1))
    return {"mode": "pair", "max_distance": None if distance < 0 else distance, "unannotated_only": False,
            **_labels(ctx)}


# ----------------------------------------------------------------------------- evaluation
def predict_fn(parts: Parts):
    """jit-able (model, {"image", "K", "object_id"}) -> hand joints (dataset order = manopth's), object vertices."""

    def predict(model, inputs):
        out = parts.decode(model(inputs["image"]), inputs["K"], inputs["object_id"], adaptor_of(model))
        return {"joints": out.hand.joints, "object_vertices": out.object.vertices,
                "joints2d": out.hand.joints2d, "object_vertices2d": out.object.vertices2d}

    return predict


def mean_baseline(ctx, parts: Parts):
    """Trivial baseline: the mean camera-space hand joints of the labelled training frames, and the known object
    in its canonical orientation at their mean object position."""
    batches = ctx.data(split="train", mode="frame", batch_size=int(ctx.stage_cfg.batch_size), train=False, seed=0,
                       annotated_only=True, **_labels(ctx))
    joints, transl = [], []
    for batch in batches:
        keep = np.asarray(batch.get("valid", np.ones(len(batch["image"]), bool))) & np.asarray(batch["annotated"])
        joints.append(np.asarray(batch["joints3d"])[keep])
        transl.append(np.asarray(batch["object_transl"])[keep])
    if not joints or not sum(len(j) for j in joints):
        raise ValueError(f"the labelled fraction sparse.fraction={_fraction(ctx)} leaves no labelled training frame")
    mean_j = jnp.asarray(np.concatenate(joints).mean(0))
    mean_t = jnp.asarray(np.concatenate(transl).mean(0))

    def predict(model, inputs):
        del model
        n = inputs["image"].shape[0]
        obj = parts.object_vertices[inputs["object_id"]] + mean_t
        return {"joints": jnp.broadcast_to(mean_j, (n,) + mean_j.shape), "object_vertices": obj}

    return predict


def _restored_predict(ctx, parts: Parts, stage: str):
    model = build_model(ctx.cfg)
    restore_model(model, os.path.join(ctx.workdir, stage))
    model.eval()
    predict = predict_fn(parts)
    return lambda _model, inputs: predict(model, inputs)


def _has_checkpoint(ctx, stage: str) -> bool:
    return os.path.isdir(os.path.join(ctx.workdir, stage, "checkpoints"))


ROWS = {"supervised": "supervised only", "control": "continued without consistency (control)",
        "consistency": "continued with consistency"}


def _baselines(ctx):
    parts = _parts(ctx)
    rows = {"mean labelled pose (trivial)": mean_baseline(ctx, parts)}
    for stage in ("supervised", "control"):
        if _has_checkpoint(ctx, stage):
            rows[ROWS[stage]] = _restored_predict(ctx, parts, stage)
        elif jax.process_index() == 0:
            print(f"[eval] no {stage!r} checkpoint in {ctx.workdir}: the row {ROWS[stage]!r} is left out of the "
                  f"table (run that stage in this workdir to get it)", flush=True)
    return rows


class HandObjectEvaluator:
    """``make_evaluator("hand_object")`` (3D hand joints, centred joints, object vertices; upstream's
    ``joints3d`` / ``joints3d_cent`` / ``objverts3d_mepe_trans``) plus upstream's 2D errors in pixels of the
    network's input frame (the whole frame: the original pixels when ``data.image_size`` is the stored size):
    ``joints2d_epe_px`` (predicted ``joints2d`` vs the labels' ``joints2d``) and ``objverts2d_mepe_px``
    (``object_vertices2d`` vs the labelled object vertices projected with ``K``, over the vertices marked by
    ``object_vertex_valid`` when the labels carry it), means over the evaluated samples; NaN for a model that
    predicts no 2D (the trivial baseline)."""

    def __init__(self):
        from handjax.eval.evaluators import make_evaluator

        self.inner = make_evaluator("hand_object", center=9)
        self.errors = {"joints2d_epe_px": [], "objverts2d_mepe_px": []}

    def add(self, pred, labels) -> None:
        self.inner.add(pred, labels)
        n = len(labels["valid"])
        valid = np.asarray(labels["valid"], bool)
        flag = lambda key: np.asarray(labels.get(key, np.ones(n, bool)), bool).reshape(n)  # noqa: E731
        if "joints2d" in pred:
            err = np.linalg.norm(np.asarray(pred["joints2d"]) - np.asarray(labels["joints2d"]), axis=-1).mean(-1)
            self.errors["joints2d_epe_px"].append(err[valid & flag("has_joints2d")])
        if "object_vertices2d" in pred:
            gt = np.einsum("bij,bvj->bvi", np.asarray(labels["K"], np.float64), np.asarray(labels["object_vertices"]))
            gt = gt[..., :2] / gt[..., 2:]
            dist = np.linalg.norm(np.asarray(pred["object_vertices2d"]) - gt, axis=-1)
            vv = np.asarray(labels.get("object_vertex_valid", np.ones(dist.shape, bool)), bool).reshape(dist.shape)
            err = (dist * vv).sum(-1) / np.maximum(vv.sum(-1), 1)  # the object's own vertices (padding left out)
            self.errors["objverts2d_mepe_px"].append(err[valid & flag("has_object")])

    def result(self) -> dict:
        out = dict(self.inner.result())
        for key, parts in self.errors.items():
            values = np.concatenate(parts) if parts else np.zeros(0)
            out[key] = float(values.mean()) if len(values) else float("nan")
        return out


def _evaluator(ctx):
    return HandObjectEvaluator()


TABLE_COLUMNS = ("joints3d_epe_mm", "joints3d_cent_epe_mm", "joints3d_auc", "joints3d_cent_auc", "joints2d_epe_px",
                 "objverts3d_mepe_mm", "objverts2d_mepe_px")


def _table(rows, ctx) -> str:
    from handjax.eval.evaluators import format_table

    return (f"handobjectconsist on {ctx.cfg.data.name}, labelled fraction {_fraction(ctx)} of the annotated frames\n"
            + format_table(rows, TABLE_COLUMNS))


def _label(ctx, trained_here: bool) -> str:
    """The evaluated model's row: the consistency stage's, or the model of ``eval.checkpoint`` (a converted release
    or another run's stage) when that key names one."""
    checkpoint = str(ctx.cfg.eval.get("checkpoint", "") or "")
    return f"eval.checkpoint ({checkpoint})" if checkpoint and not trained_here else ROWS["consistency"]


# ----------------------------------------------------------------------------- predictor
def predictor(cfg) -> Predictor:
    """Whole frames -> {"right": the hand, "object": the placed known object} (``python -m handjax.predict``).

    The model places hand and object with intrinsics, which the predict CLI does not pass: the crop camera is
    ``K = [[f, 0, S/2], [0, f, S/2], [0, 0, 1]]`` in pixels of the S x S network input, f = ``predict.focal_length``
    (crop pixels; 0: S, i.e. the CLI's default focal max(H, W) for a whole-frame crop), and the object is
    ``predict.object_id`` of the configured dataset's known objects (its own entry, written as
    ``<name>_object.obj``; its "joints" are its root, its rotation the one 3 x 3 matrix)."""
    from handjax.models.hand_output import HandOutput

    size = int(cfg.data.image_size)
    p = cfg.get("predict") or {}
    focal = float(p.get("focal_length", 0.0) or 0.0) or float(size)
    object_id = int(p.get("object_id", 0))
    from data_pipelines.factory import make_data_factory

    parts = make_parts(cfg, make_data_factory(cfg.data, seed=int(cfg.seed)).builder_dir)
    n_obj = int(parts.object_vertices.shape[0])
    if not 0 <= object_id < n_obj:
        raise ValueError(f"config key predict.object_id={object_id}: the dataset has {n_obj} known objects "
                         f"{list(parts.object_names)}")
    n_verts = parts.object_num_vertices[object_id]  # the object's own vertices (the rest is padding)
    K = jnp.asarray([[focal, 0.0, size / 2.0], [0.0, focal, size / 2.0], [0.0, 0.0, 1.0]], jnp.float32)

    def predict(model, images):
        b = images.shape[0]
        out = parts.decode(model(images), jnp.broadcast_to(K, (b, 3, 3)), jnp.full((b,), object_id, jnp.int32),
                           adaptor_of(model))
        o = out.object
        root = o.transl[:, None]
        obj = HandOutput(joints=root, joints2d=project_perspective(root, out.hand.camera[..., :3]),
                         camera=out.hand.camera, rotmats=o.rot[:, None], betas=jnp.zeros((b, 0), jnp.float32),
                         vertices=o.vertices[:, :n_verts], is_right=jnp.zeros((b,), bool), convention="object")
        return {"right": out.hand, "object": obj}

    return Predictor(model=build_model(cfg), image_size=size, predict=predict,
                     faces={"right": np.asarray(parts.hand_model.faces),
                            "object": np.asarray(parts.object_mesh_faces[object_id])},
                     sides=("right",), finds_boxes=True,
                     meta={"system": "photometric", "backbone": str(cfg.model.backbone),
                           "joint_convention": parts.convention.name, "focal_length_crop_px": focal,
                           "object_id": object_id, "object_name": parts.object_names[object_id]})


# ----------------------------------------------------------------------------- the system
def _check(cfg):
    guards.require_real_mano(cfg, ("supervised", "control", "consistency", "eval"))
    guards.require_video(cfg, {s: "photometric consistency pairs a query with the nearest labelled frame of its video"
                               for s in ("control", "consistency")})
    if not 0.0 < float(cfg.sparse.fraction) <= 1.0:
        raise ValueError(f"config key sparse.fraction={cfg.sparse.fraction}: must lie in (0, 1]")
    if cfg.model.get("fhb_adaptor", False) and not cfg.model.get("fphab_adaptor", ""):
        fresh = [s for s in ("supervised",) if s in guards.job_stages(cfg) and not cfg.supervised.get("init_from")]
        if fresh:
            raise ValueError("config key model.fhb_adaptor=True: the FPHAB skeleton adaptor must come from somewhere: "
                             "set model.fphab_adaptor to upstream's assets/mano/fhb_skel_centeridx9.pkl to train from "
                             "scratch, or supervised.init_from / eval.checkpoint to a converted release (python -m "
                             "handjax.convert handobjectconsist), whose adaptor is used")
    path = str(cfg.model.get("fphab_adaptor", "") or "")
    if path:  # an unreadable file stops the job before any stage, naming the key and the file
        from data_pipelines.manual import CorruptFileError

        try:
            fphab_adaptor(cfg)
        except (OSError, CorruptFileError) as err:
            raise ValueError(f"config key model.fphab_adaptor={path!r}: {err}") from None


SYSTEM = System(
    name="photometric",
    stages=(
        TrainStage("supervised", supervised_task, data=_supervised_data, loss_terms=SUPERVISED_TERMS),
        # the control sees the consistency stage's data order and random draws (a like-for-like comparison)
        TrainStage("control", consistency_task, data=_pair_data, init_from="supervised", loss_terms=CONSIST_TERMS,
                   seed_from="consistency"),
        TrainStage("consistency", consistency_task, data=_pair_data, init_from="supervised",
                   loss_terms=CONSIST_TERMS),
        EvalStage("eval", model_from="consistency", model=lambda ctx: build_model(ctx.cfg),
                  predict=lambda ctx: predict_fn(_parts(ctx)), evaluator=_evaluator, baselines=_baselines,
                  label=_label, table=_table, inputs=EVAL_INPUTS),
    ),
    predictor=predictor,
    check=_check,
)
