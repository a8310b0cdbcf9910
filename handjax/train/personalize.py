"""Identity-aware hand mesh estimation and personalisation (IdHandMesh, ECCV 2022) as a handjax system.

Model (``handjax.models.idhandmesh``, registered parts): backbone -> fc feature -> iterative 6D pose
(+ shape MLP, confidence branch on the detached feature, 2D keypoint heatmap head). Loss terms:
``handjax.losses.idhandmesh`` by name. Stages (``cfg.stages``):

1. ``baseline`` (TrainStage): the anonymous model (pose + per-image betas, additive 6D updates) and
   the heatmap head (upstream trains a separate CMR 2D network; here a head on the same backbone,
   trained in the same stage, gives the optimisation its 2D targets);
2. ``confidence`` (TrainStage, init = baseline): only the confidence branch trains (``Task.trainable``),
   pairwise margin ranking over the batch; backbone BatchNorm statistics keep updating as upstream;
3. ``identity`` (TrainStage): the identity-aware model (no shape head, multiplicative 6D updates),
   ground-truth betas through MANO;
4. ``calibrate`` (Stage): predictions of the confidence and identity models on the test split; per
   test subject, calibrated betas from ``calibrate.num_images`` random images by each method
   (``handjax.models.personalization``); the curve of shape error and MPVPE against N, as a PNG;
5. ``optimize`` (Stage): per-image fit of translation then translation + pose to the heatmap
   keypoints, betas fixed, for every row, the whole test split in one jitted program;
6. ``eval`` (Stage): the table (DexYCB metrics: root-relative and PA MPJPE / MPVPE) of every row,
   with and without the optimisation, and a trivial baseline (mean pose, mean shape).
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax import mano
from handjax.losses import idhandmesh as losses
from handjax.models import idhandmesh as idm
from handjax.models import personalization as pers
from handjax.models.resnet import CONV_IMPLS
from handjax.train import guards
from handjax.train.loop import Task, restore_model
from handjax.train.system import Stage, System, TrainStage

TERMS = tuple(losses.TERMS)
ROW_BASELINE = "baseline (per-image betas)"
ROW_GT = "identity-aware, GT betas"
ROW_CAL = "identity-aware, calibrated ({})"
ROW_TRIVIAL = "mean pose + mean shape"
COLUMNS = ("mpjpe_mm", "pa_mpjpe_mm", "mpvpe_mm", "pa_mpvpe_mm")


# ----------------------------------------------------------------------------- model
def build_model(cfg, kind: str, seed: int = 0) -> idm.IdHandMeshModel:
    """kind: "baseline" (shape head, confidence branch, heatmap head, additive updates) or "identity"."""
    m = cfg.model
    if m.get("conv_impl", "auto") not in CONV_IMPLS:
        raise ValueError(f"config key model.conv_impl must be one of {CONV_IMPLS}, got {m.conv_impl!r}")
    baseline = kind == "baseline"
    return idm.IdHandMeshModel(backbone=str(m.backbone), rngs=nnx.Rngs(seed), feature_dim=int(m.feature_dim),
                               pose_mode="add" if baseline else "multiply", iterations=int(m.iterations),
                               pose_hidden=tuple(m.pose_hidden), shape_head=baseline,
                               shape_hidden=tuple(m.shape_hidden), confidence=baseline, heatmaps=baseline,
                               conv_impl=m.get("conv_impl", "auto"))


def mano_model(cfg):
    return mano.load_model(cfg.mano.model_path or None, "right")


# ----------------------------------------------------------------------------- losses
def model_loss(model, batch, rng, *, hand, weights, ctx, gt_betas: bool):
    """The network's outputs, the mesh of its last pose stage (betas: predicted, or the batch's for
    the identity-aware model) in the MANO frame, and the weighted terms."""
    del rng
    out = model(batch["image"])
    betas = batch["betas"] if gt_betas else out["betas"]
    if any(float(weights.get(k, 0.0)) for k in losses.MESH_TERMS):
        _, mesh = idm.mano_mesh(hand, out["pose6d"][0], betas)
        out = dict(out, vertices=mesh.vertices)
    return losses.loss_from_weights(out, batch, weights, ctx)


def _loss_ctx(cfg, hand):
    return {"faces": jnp.asarray(hand.faces), "image_size": int(cfg.data.image_size),
            "heatmap_sigma": float(cfg.model.heatmap_sigma), "margin": float(cfg.confidence.margin)}


def _task(ctx, kind: str, trainable=nnx.Param) -> Task:
    cfg, hand = ctx.cfg, mano_model(ctx.cfg)
    loss = functools.partial(model_loss, hand=hand, weights=dict(ctx.stage_cfg.loss_weights),
                             ctx=_loss_ctx(cfg, hand), gt_betas=kind == "identity")
    return Task(build_model(cfg, kind, seed=ctx.seed), loss, trainable=trainable)


def baseline_task(ctx) -> Task:
    return _task(ctx, "baseline")


CONF_ONLY = nnx.All(nnx.Param, nnx.PathContains("conf"))  # the confidence stage trains only this branch


def confidence_task(ctx) -> Task:
    return _task(ctx, "baseline", trainable=CONF_ONLY)


def identity_task(ctx) -> Task:
    return _task(ctx, "identity")


# ----------------------------------------------------------------------------- test-set predictions
def _trained(ctx, models, stage: str, kind: str):
    """The model trained by ``stage`` in this job, or restored from ``<workdir>/<stage>``."""
    if stage in models:
        return models[stage]
    model = build_model(ctx.cfg, kind)
    restore_model(model, os.path.join(ctx.workdir, stage))  # the checkpoint records its stage's trainable split
    return model


def collect_predictions(ctx, conf_model, id_model) -> dict:
    """Both models over the test split (one pass, in order): numpy arrays of the valid samples."""
    cfg, hand = ctx.cfg, mano_model(ctx.cfg)
    size = int(cfg.data.image_size)
    mode = str(cfg.optimize.keypoints)
    conf_model.eval()
    id_model.eval()

    @nnx.jit
    def run(cm, im, images, pose_gt, betas_gt, transl_gt):
        a, b = cm(images), im(images)
        _, gt = idm.mano_mesh(hand, losses.gt_pose6d({"mano_pose": pose_gt}), betas_gt)
        return {"baseline_pose": a["pose6d"][0], "baseline_betas": a["betas"], "conf": a["conf"],
                "keypoints": idm.heatmap_keypoints(a["heatmaps"], size, mode), "identity_pose": b["pose6d"][0],
                "gt_joints": gt.joints + transl_gt[:, None], "gt_vertices": gt.vertices + transl_gt[:, None]}

    keep = {}
    batches = ctx.data(split=str(cfg.calibrate.split), mode="frame", batch_size=int(ctx.stage_cfg.batch_size),
                       train=False, seed=0)
    for batch in batches:
        out = run(conf_model, id_model, jnp.asarray(batch["image"]), jnp.asarray(batch["mano_pose"]),
                  jnp.asarray(batch["betas"]), jnp.asarray(batch["transl"]))
        valid = np.asarray(batch.get("valid", np.ones(len(batch["image"]), bool)), bool)
        extra = {"subject": batch["subject_id"], "gt_betas": batch["betas"], "K": batch["K"],
                 "gt_transl": batch["transl"], "joints2d": batch["joints2d"]}
        for k, v in dict(jax.device_get(out), **extra).items():
            keep.setdefault(k, []).append(np.asarray(v)[valid])
    if not keep:
        raise ValueError(f"config key calibrate.split={cfg.calibrate.split!r}: the split has no samples")
    return {k: np.concatenate(v) for k, v in keep.items()}


# ----------------------------------------------------------------------------- calibrate
def _shape_error(cal: dict, gt: dict) -> float:
    """Mean |beta - beta_gt| over subjects and coefficients."""
    return float(np.mean([np.abs(cal[s] - gt[s]).mean() for s in cal]))


def _subject_gt(pred) -> dict:
    return {int(s): pred["gt_betas"][np.flatnonzero(pred["subject"] == s)[0]] for s in np.unique(pred["subject"])}


def _per_image(cal: dict, subjects: np.ndarray) -> np.ndarray:
    return np.stack([cal[int(s)] for s in subjects]).astype(np.float32)


_mesh = jax.jit(lambda hand, pose6d, betas: idm.mano_mesh(hand, pose6d, betas)[1])


def mesh_rows(hand, pose6d, betas, transl):
    """(N, 96), (N, 10), (N, 3) -> joints (N, 21, 3), vertices (N, 778, 3) in the camera frame."""
    out = _mesh(hand, jnp.asarray(pose6d, jnp.float32), jnp.asarray(betas, jnp.float32))
    t = np.asarray(transl)[:, None]
    return np.asarray(out.joints) + t, np.asarray(out.vertices) + t


def _metrics(joints, verts, pred) -> dict:
    from handjax.eval.evaluators import make_evaluator

    ev = make_evaluator("dexycb")
    n = len(joints)
    ev.add({"joints": joints, "vertices": verts}, {"joints3d": pred["gt_joints"], "vertices": pred["gt_vertices"],
                                                  "has_joints3d": np.ones(n, bool), "has_vertices": np.ones(n, bool),
                                                  "valid": np.ones(n, bool)})
    return ev.result()


def run_calibrate(ctx, models) -> dict:
    cfg, c = ctx.cfg, ctx.stage_cfg
    pred = collect_predictions(ctx, _trained(ctx, models, "confidence", "baseline"),
                               _trained(ctx, models, "identity", "identity"))
    np.savez(os.path.join(ctx.stage_dir, "predictions.npz"), **pred)
    gt = _subject_gt(pred)
    kw = dict(temperature=float(c.temperature), top_fraction=float(c.top_fraction))
    methods = tuple(c.methods)
    calib = {m: pers.calibrate_subjects(pred["baseline_betas"], pred["conf"], pred["subject"], int(c.num_images), m,
                                        np.random.default_rng(int(cfg.seed)), **kw) for m in methods}
    metrics = {f"shape_error_{m}": _shape_error(calib[m], gt) for m in methods}
    per_image = {int(s): pred["baseline_betas"][pred["subject"] == s] for s in gt}
    metrics["shape_error_per_image"] = float(np.mean([np.abs(b - gt[s]).mean() for s, b in per_image.items()]))
    with open(os.path.join(ctx.stage_dir, "calibration.json"), "w") as fh:
        json.dump({"num_images": int(c.num_images), "betas": {m: {str(s): v.tolist() for s, v in calib[m].items()}
                                                              for m in methods}, "metrics": metrics}, fh, indent=2)
    curve = calibration_curve(pred, mano_model(cfg), methods, tuple(int(n) for n in c.curve_n), int(c.curve_repeats),
                              int(cfg.seed), kw)
    with open(os.path.join(ctx.stage_dir, "curve.json"), "w") as fh:
        json.dump(curve, fh, indent=2)
    plot_curve(curve, os.path.join(ctx.workdir, "calibration_curve.png"))
    print(f"[calibrate] N={int(c.num_images)}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()) +
          f"; curve: {os.path.join(ctx.workdir, 'calibration_curve.png')}", flush=True)
    return metrics


def calibration_curve(pred, hand, methods, ns, repeats: int, seed: int, kw) -> dict:
    """For each N and method, averaged over ``repeats`` random draws of N images per subject (the
    same draws for every method: a paired comparison): the calibrated-shape error (mean |beta -
    beta_gt|) and the identity-aware model's root-relative MPVPE (mm) with those betas."""
    gt = _subject_gt(pred)
    out = {"n": list(ns), **{m: {"shape_error": [], "mpvpe_mm": []} for m in methods}}
    j, v = mesh_rows(hand, pred["identity_pose"], pred["gt_betas"], pred["gt_transl"])
    per_image = np.abs(pred["baseline_betas"] - pred["gt_betas"]).mean(-1)
    per_subject = [per_image[pred["subject"] == s].mean() for s in gt]  # weighted as _shape_error: per subject
    out["reference"] = {"shape_error": {"per-image betas (baseline)": float(np.mean(per_subject))},
                        "mpvpe_mm": {"GT betas": _mpvpe_mm(j, v, pred)}}
    for n in ns:
        errs = {m: [] for m in methods}
        mpvpe = {m: [] for m in methods}
        for r in range(repeats):
            for m in methods:
                rng = np.random.default_rng([seed, n, r])  # same images for every method
                cal = pers.calibrate_subjects(pred["baseline_betas"], pred["conf"], pred["subject"], n, m, rng, **kw)
                errs[m].append(_shape_error(cal, gt))
                j, v = mesh_rows(hand, pred["identity_pose"], _per_image(cal, pred["subject"]), pred["gt_transl"])
                mpvpe[m].append(_mpvpe_mm(j, v, pred))
        for m in methods:
            out[m]["shape_error"].append(float(np.mean(errs[m])))
            out[m]["mpvpe_mm"].append(float(np.mean(mpvpe[m])))
    return out


def _mpvpe_mm(joints, verts, pred) -> float:
    """Root-relative MPVPE (mm) as the table's ``mpvpe_mm`` (each mesh minus its own wrist joint)."""
    from handjax.eval.dexycb import ROOT

    a = verts - joints[:, ROOT:ROOT + 1]
    b = pred["gt_vertices"] - pred["gt_joints"][:, ROOT:ROOT + 1]
    return float(np.mean(np.linalg.norm(a - b, axis=-1)) * 1000.0)


COLOURS = {"mean": (31, 119, 180), "confidence": (214, 39, 40), "topk": (44, 160, 44)}


def plot_curve(curve: dict, path: str, panel=(360, 260)) -> None:
    """Two line charts side by side (PIL; log-N x axis): calibrated-shape error and MPVPE vs N."""
    from PIL import Image, ImageDraw

    w, h = panel
    img = Image.new("RGB", (2 * w, h), "white")
    draw = ImageDraw.Draw(img)
    ns = np.log(np.asarray(curve["n"], np.float64))
    methods = [k for k in curve if k not in ("n", "reference")]
    refs = curve.get("reference", {})
    for p, (key, title) in enumerate((("shape_error", "shape error |beta - beta_gt| vs N"),
                                      ("mpvpe_mm", "MPVPE (mm), identity-aware, vs N"))):
        x0, y0, x1, y1 = p * w + 50, 30, p * w + w - 15, h - 40
        values = np.asarray([x for m in methods for x in curve[m][key]] + list(refs.get(key, {}).values()),
                            np.float64)
        lo, hi = float(values.min()), float(values.max())
        hi = hi if hi > lo else lo + 1.0
        sx = lambda v: x0 + (v - ns[0]) / max(ns[-1] - ns[0], 1e-9) * (x1 - x0)
        sy = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 8), title, fill="black")
        for v in (lo, hi):
            draw.text((p * w + 2, sy(v) - 6), f"{v:.4g}", fill="black")
        for n, lx in zip(curve["n"], ns):
            draw.text((sx(lx) - 4, y1 + 4), str(n), fill="black")
        draw.text((x0 + (x1 - x0) // 2 - 10, y1 + 20), "N", fill="black")
        for k, (label, value) in enumerate(refs.get(key, {}).items()):  # dashed grey reference lines
            y = sy(value)
            for xa in range(int(x0), int(x1), 8):
                draw.line([(xa, y), (min(xa + 4, x1), y)], fill=(120, 120, 120), width=1)
            draw.text((x0 + 4, y - 12 if y - 12 > y0 else y + 2), label, fill=(90, 90, 90))
        for k, m in enumerate(methods):
            pts = [(sx(a), sy(b)) for a, b in zip(ns, curve[m][key])]
            draw.line(pts, fill=COLOURS.get(m, (0, 0, 0)), width=2)
            for x, y in pts:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLOURS.get(m, (0, 0, 0)))
            draw.text((x1 - 70, y0 + 4 + 12 * k), m, fill=COLOURS.get(m, (0, 0, 0)))
    img.save(path)


# ----------------------------------------------------------------------------- rows, optimise, evaluate
def _load(ctx):
    d = os.path.join(ctx.workdir, "calibrate")
    for f in ("predictions.npz", "calibration.json"):
        if not os.path.exists(os.path.join(d, f)):
            raise FileNotFoundError(f"stage {ctx.name!r} needs {os.path.join(d, f)} (written by the calibrate stage); "
                                    f"add 'calibrate' to config key stages")
    pred = dict(np.load(os.path.join(d, "predictions.npz")))
    with open(os.path.join(d, "calibration.json")) as fh:
        calib = json.load(fh)
    return pred, calib


def rows(pred, calib) -> dict:
    """Row name -> (initial pose (N, 96), betas (N, 10))."""
    out = {ROW_BASELINE: (pred["baseline_pose"], pred["baseline_betas"]),
           ROW_GT: (pred["identity_pose"], pred["gt_betas"])}
    for m, per_subject in calib["betas"].items():
        cal = {int(s): np.asarray(v, np.float32) for s, v in per_subject.items()}
        out[ROW_CAL.format(m)] = (pred["identity_pose"], _per_image(cal, pred["subject"]))
    return out


def _init_transl(ctx, hand, pose, betas, pred):
    return np.asarray(jax.jit(idm.init_translation, static_argnums=(5,))(
        hand, jnp.asarray(pose), jnp.asarray(betas), jnp.asarray(pred["keypoints"][:, 0]), jnp.asarray(pred["K"]),
        float(ctx.cfg.optimize.init_depth)))


def run_optimize(ctx, models) -> dict:
    o, hand = ctx.stage_cfg, mano_model(ctx.cfg)
    pred, calib = _load(ctx)
    fits, metrics = {}, {}
    for i, (name, (pose, betas)) in enumerate(rows(pred, calib).items()):
        t0 = _init_transl(ctx, hand, pose, betas, pred)
        p, t, energy = pers.fit(hand, jnp.asarray(pose), jnp.asarray(t0), jnp.asarray(betas), jnp.asarray(pred["K"]),
                                jnp.asarray(pred["keypoints"]), lr1=float(o.lr1), steps1=int(o.steps1),
                                lr2=float(o.lr2), steps2=int(o.steps2))
        energy = np.asarray(energy)
        fits.update({f"{i}_pose": np.asarray(p), f"{i}_transl": np.asarray(t), f"{i}_energy": energy})
        metrics[f"{name}: reprojection px (init -> final)"] = [float(np.sqrt(energy[:, 0].mean())),
                                                               float(np.sqrt(energy[:, -1].mean()))]
        print(f"[optimize] {name}: RMS reprojection {metrics[name + ': reprojection px (init -> final)'][0]:.2f} px"
              f" -> {metrics[name + ': reprojection px (init -> final)'][1]:.2f} px", flush=True)
    names = list(rows(pred, calib))
    np.savez(os.path.join(ctx.stage_dir, "fits.npz"), rows=np.asarray(names), subject=pred["subject"], **fits)
    return metrics


def run_eval(ctx, models) -> dict:
    from handjax.eval.evaluators import format_table

    hand = mano_model(ctx.cfg)
    pred, calib = _load(ctx)
    fits_path = os.path.join(ctx.workdir, "optimize", "fits.npz")
    fits = dict(np.load(fits_path)) if os.path.exists(fits_path) else None
    names = list(rows(pred, calib))
    if fits is not None and (list(fits["rows"]) != names or not np.array_equal(fits["subject"], pred["subject"])):
        raise ValueError(f"{fits_path} was fitted for other rows / test images than {ctx.workdir}/calibrate holds "
                         f"now; add 'optimize' to config key stages to fit them again")
    if fits is None:
        print(f"[eval] no {fits_path}: the table has no '+ opt' rows (add 'optimize' to config key stages)",
              flush=True)
    n = len(pred["subject"])
    table = {ROW_TRIVIAL: _metrics(*mesh_rows(hand, np.tile(np.asarray(idm.IDENTITY_INIT_6D, np.float32), (n, 16)),
                                              np.zeros((n, 10), np.float32), pred["gt_transl"]), pred)}
    for i, (name, (pose, betas)) in enumerate(rows(pred, calib).items()):
        table[name] = _metrics(*mesh_rows(hand, pose, betas, pred["gt_transl"]), pred)
        if fits is not None:
            table[name + " + opt"] = _metrics(*mesh_rows(hand, fits[f"{i}_pose"], betas, fits[f"{i}_transl"]), pred)
    text = format_table(table, COLUMNS)
    print(text, flush=True)
    with open(os.path.join(ctx.workdir, "eval_metrics.json"), "w") as fh:
        json.dump(table, fh, indent=2)
    return table


# ----------------------------------------------------------------------------- predictor
def subject_shape(cfg):
    """``predict.subject_shape``: a JSON file ``{"betas": [10 numbers]}`` (a subject's calibrated shape, e.g. an
    entry of ``<run>/calibrate/calibration.json``), or None (per-image betas)."""
    path = str(cfg.get("predict", {}).get("subject_shape", "") or "")
    if not path:
        return None
    try:
        with open(path) as fh:
            betas = np.asarray(json.load(fh)["betas"], np.float32)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"config key predict.subject_shape={path!r}: expected a JSON file {{\"betas\": [10 "
                         f"numbers]}} ({type(e).__name__}: {e})") from None
    if betas.shape != (10,) or not np.all(np.isfinite(betas)):
        raise ValueError(f"config key predict.subject_shape={path!r}: 'betas' must be 10 finite numbers, got shape "
                         f"{betas.shape}")
    return betas


def predictor(cfg):
    """Right-hand crops -> {"right": HandOutput} from the baseline model (``--checkpoint RUN/baseline``): its pose,
    its per-image betas or the subject's shape (``predict.subject_shape``), and the translation fitted to its
    heatmap keypoints (the optimisation's stage 1: wrist back-projected at ``optimize.init_depth``, Adam
    ``optimize.lr1`` x ``steps1``) under a pinhole crop camera of focal ``predict.crop_focal`` crop pixels
    (principal point the crop centre)."""
    from handjax.models.hand_output import make_hand_output
    from handjax.train.system import Predictor

    hand, size, o = mano_model(cfg), int(cfg.data.image_size), cfg.optimize
    p = cfg.predict
    focal = float(p.crop_focal) if float(p.crop_focal) > 0 else 5.6 * size  # the built-in data's crops
    K = jnp.asarray([[focal, 0.0, size / 2.0], [0.0, focal, size / 2.0], [0.0, 0.0, 1.0]], jnp.float32)
    fixed = subject_shape(cfg)

    def predict(model, images):
        out = model(images)
        n = images.shape[0]
        pose = out["pose6d"][0]
        betas = out["betas"] if fixed is None else jnp.broadcast_to(jnp.asarray(fixed), (n, 10))
        kp = idm.heatmap_keypoints(out["heatmaps"], size, str(o.keypoints))
        Ks = jnp.broadcast_to(K, (n, 3, 3))
        t0 = idm.init_translation(hand, pose, betas, kp[:, 0], Ks, float(o.init_depth))
        _, t, _ = pers.fit(hand, pose, t0, betas, Ks, kp, lr1=float(o.lr1), steps1=int(o.steps1), steps2=0)
        rotmats, mesh = idm.mano_mesh(hand, pose, betas)
        camera = jnp.concatenate([Ks, jnp.einsum("bij,bj->bi", Ks, t)[..., None]], -1)  # K [I | t]: exported transl
        return {"right": make_hand_output(mesh.joints, camera, rotmats, betas, mesh.vertices, convention="manopth")}

    return Predictor(model=build_model(cfg, "baseline"), image_size=size, predict=predict,
                     faces={"right": np.asarray(hand.faces)}, sides=("right",),
                     meta={"system": "personalize", "model": "baseline", "backbone": str(cfg.model.backbone),
                           "joint_convention": idm.CONVENTION.name, "crop_focal": focal,
                           "subject_shape": str(p.subject_shape or "")})


# ----------------------------------------------------------------------------- the system
def _check(cfg):
    guards.require_real_mano(cfg, ("baseline", "confidence", "identity", "calibrate", "optimize", "eval"))
    c, o = cfg.calibrate, cfg.optimize
    unknown = [m for m in c.methods if m not in pers.METHODS]
    if unknown or not c.methods:
        raise ValueError(f"config key calibrate.methods={tuple(c.methods)}: use a non-empty subset of {pers.METHODS}")
    if int(c.num_images) < 1 or not c.curve_n or min(int(n) for n in c.curve_n) < 1 or int(c.curve_repeats) < 1:
        raise ValueError("config keys calibrate.num_images, calibrate.curve_n, calibrate.curve_repeats: must be >= 1 "
                         f"(got {c.num_images}, {tuple(c.curve_n)}, {c.curve_repeats})")
    if not 0.0 < float(c.top_fraction) <= 1.0 or float(c.temperature) <= 0.0:
        raise ValueError(f"config keys calibrate.top_fraction={c.top_fraction} (in (0, 1]) / calibrate.temperature="
                         f"{c.temperature} (> 0)")
    if o.keypoints not in ("argmax", "soft_argmax"):
        raise ValueError(f"config key optimize.keypoints={o.keypoints!r}: expected argmax or soft_argmax")
    if int(o.steps1) < 1 or int(o.steps2) < 0 or float(o.init_depth) <= 0:
        raise ValueError(f"config keys optimize.steps1 / steps2 / init_depth: got {o.steps1}, {o.steps2}, "
                         f"{o.init_depth} (steps1 >= 1, steps2 >= 0, depth > 0 m)")
    if cfg.data.joint_convention != "manopth":
        raise ValueError(f"config key data.joint_convention={cfg.data.joint_convention!r}: IdHandMesh evaluates in "
                         f"the DexYCB / manopth joint order; set it to 'manopth'")


FRAMES = {"mode": "frame"}  # every frame: the built-in identities carry labels on all of them, as DexYCB

SYSTEM = System(
    name="personalize",
    stages=(
        TrainStage("baseline", baseline_task, data=FRAMES, loss_terms=TERMS),
        TrainStage("confidence", confidence_task, data=FRAMES, init_from="baseline", loss_terms=TERMS),
        TrainStage("identity", identity_task, data=FRAMES, loss_terms=TERMS),
        Stage("calibrate", run_calibrate, requires=("confidence", "identity")),
        Stage("optimize", run_optimize, requires=("calibrate",)),
        Stage("eval", run_eval, requires=("calibrate",)),
    ),
    predictor=predictor,
    check=_check,
)
