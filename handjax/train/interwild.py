"""InterWild as a system: [hands: optional warm-up, the hand branch alone at the labelled boxes] -> train (both
branches end to end, upstream's one stage) -> evaluation.

In order: the model (registered backbones + BoxNet / PositionNet / RotationNet / TransNet of
``handjax.models.interwild``), its loss terms (``handjax.losses.interwild``: InterWild's masks
and full-tensor means), the stages, the evaluation (the two-hand evaluator with InterWild's
aggregation plus box IoU; trivial baseline: the mean GT pose (root-relative joints and meshes) at
the mean relative translation with a centred box of the mean size) and the predictor (the whole
image is the person crop; the hands are found by the model).
"""
from __future__ import annotations

import functools
from typing import Dict

import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax import mano
from handjax.losses import interwild as iw_losses
from handjax.losses import loss_from_weights
from handjax.models import interwild as iw
from handjax.models.input_norm import from_imagenet
from handjax.train.loop import Task
from handjax.train.system import EvalStage, Predictor, System, TrainStage

SIDES = ("right", "left")
BASELINE = "mean pose, mean rel. transl., centred box"
CONVERTER = "handjax.convert.interwild.convert_interwild"


# ----------------------------------------------------------------------------- model
def geometry(cfg) -> iw.Geometry:
    """``data.image_size`` = person-crop height (width 3/4 of it, as the data pipelines' person crops)."""
    m, h = cfg.model, int(cfg.data.image_size)
    if h % 4:
        raise ValueError(f"config key data.image_size={h}: InterWild's person crops are H x 3H/4 with H a "
                         f"multiple of 4")
    return iw.Geometry(image_hw=(h, 3 * h // 4), body_downsample=int(m.body_downsample), hand_size=int(m.hand_size),
                       depth_bins=int(m.depth_bins), trans_hm=int(m.trans_hm), sigma=float(m.sigma),
                       cell_centres=bool(m.get("cell_centres", False)))


def build_model(cfg, seed: int = 0) -> iw.InterWildModel:
    m = cfg.model
    return iw.InterWildModel(geometry(cfg), body_backbone=str(m.body_backbone), hand_backbone=str(m.hand_backbone),
                             trans_backbone=str(m.trans_backbone), deconv_channels=int(m.deconv_channels),
                             rot_channels=int(m.rot_channels), conv_impl=m.get("conv_impl", "auto"),
                             rngs=nnx.Rngs(seed))


@functools.lru_cache(maxsize=4)
def _mano_pair(path: str):
    return mano.load_model(path or None, "right"), iw.left_mano(path)


def mano_models(cfg):
    """(right, left) MANO layers (``mano.model_path``; empty: the built-in hand)."""
    return _mano_pair(str(cfg.mano.model_path or ""))


def to_unit_range(images: jnp.ndarray) -> jnp.ndarray:
    """ImageNet-normalised crops (the datasets' and predict's) -> RGB in [0, 1] (InterWild's input)."""
    return from_imagenet(images)


def forward(model, images, cfg_geometry, mano_pair, **crop):
    """Normalised person crops -> the loss terms' prediction dict (``crop``: the model's optional
    ``crop_boxes`` / ``crop_valid``)."""
    return iw_losses.prediction(model(to_unit_range(images), **crop), cfg_geometry, *mano_pair)


# ----------------------------------------------------------------------------- loss
CROP_BOXES = ("predicted", "ground_truth")


def loss_fn(model, batch, rng, *, geometry, mano_pair, weights, crop_boxes: str = "predicted"):
    """The weighted iw_* terms. crop_boxes 'predicted' (upstream: hands cut at the box branch's detached boxes)
    or 'ground_truth' (cut at the labelled hand boxes where a hand is valid, the predicted ones elsewhere)."""
    del rng
    crop = {}
    if crop_boxes == "ground_truth":
        crop = dict(crop_boxes=batch["hand_box"], crop_valid=batch["hand_valid"])
    pred = forward(model, batch["image"], geometry, mano_pair, **crop)
    return loss_from_weights(pred, batch, weights, geometry.image_hw[0])


def hands_loss_fn(model, batch, rng, *, geometry, mano_pair, weights):
    """The hand branch alone at the labelled boxes (the ``hands`` stage): the weighted hand terms."""
    del rng
    boxes = iw.labelled_crop_boxes(batch["hand_box"], batch["hand_valid"], geometry.image_hw)
    raw = model.hands(to_unit_range(batch["image"]), boxes[:, 0], boxes[:, 1])
    pred = iw_losses.prediction(raw, geometry, *mano_pair)
    return loss_from_weights(pred, batch, weights, geometry.image_hw[0])


def _crop_mode(stage_cfg, name: str) -> str:
    mode = str(stage_cfg.get("crop_boxes", "predicted"))
    if mode not in CROP_BOXES:
        raise ValueError(f"config key {name}.crop_boxes must be one of {CROP_BOXES}, got {mode!r}")
    return mode


def train_task(ctx) -> Task:
    cfg = ctx.cfg
    mode = _crop_mode(ctx.stage_cfg, ctx.name)
    loss = functools.partial(loss_fn, geometry=geometry(cfg), mano_pair=mano_models(cfg),
                             weights=dict(ctx.stage_cfg.loss_weights), crop_boxes=mode)
    return Task(build_model(cfg, seed=ctx.seed), loss)


def hands_task(ctx) -> Task:
    """An optional warm-up (not upstream, which starts from ImageNet ResNets): the hand branch alone, cut at the
    labelled boxes, at ~0.4 of a whole step's cost; ``train`` starts from its weights when both run."""
    cfg = ctx.cfg
    loss = functools.partial(hands_loss_fn, geometry=geometry(cfg), mano_pair=mano_models(cfg),
                             weights=dict(ctx.stage_cfg.loss_weights))
    return Task(build_model(cfg, seed=ctx.seed), loss)


# ----------------------------------------------------------------------------- evaluation
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes (..., 4) (continuous coordinates, no +1) -> (...)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw_ = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw_ * ih
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class InterWildEvaluator:
    """The two-hand evaluator (``rule="interwild"``, MPVPE rooted on each mesh's regressed wrist)
    plus InterWild's box IoU: the mean over hands with a GT box (``hand_valid``) of the IoU of
    the predicted box (``boxes`` (B, 2, 4), right then left) with ``hand_box``."""

    def __init__(self, wrist_regressor, mrrpe_frames=None, vertex_valid_key: str = "mano_valid"):
        from handjax.eval.evaluators import make_evaluator

        self._two = make_evaluator("two_hand", rule="interwild", wrist_regressor=wrist_regressor,
                                   mrrpe_frames=mrrpe_frames, label_keys={"vertex_valid": vertex_valid_key})
        self.iou_sum, self.iou_count = 0.0, 0

    def add(self, pred, labels) -> None:
        self._two.add({k: v for k, v in pred.items() if k in ("joints", "rel_root", "vertices")}, labels)
        if "boxes" in pred:
            if "hand_box" not in labels:
                raise ValueError(f"InterWild evaluator: the labels have no 'hand_box' (box IoU); they have "
                                 f"{sorted(labels)}")
            valid = np.asarray(labels.get("valid", np.ones(len(pred["boxes"]), bool)), bool)[:, None]
            hv = np.asarray(labels.get("hand_valid", np.ones(valid.shape[:1] + (2,), bool)), bool) & valid
            iou = box_iou(pred["boxes"], labels["hand_box"])
            self.iou_sum += float(iou[hv].sum())
            self.iou_count += int(hv.sum())

    def result(self) -> Dict:
        out = self._two.result()
        out["box_iou"] = self.iou_sum / self.iou_count * 100.0 if self.iou_count else float("nan")
        out["box_count"] = self.iou_count
        return out


TABLE_COLUMNS = ("box_iou", "mrrpe_mm", "mpvpe_all_mm", "mpvpe_single_mm", "mpvpe_interacting_mm", "mpjpe_all_mm",
                 "mpjpe_single_mm", "mpjpe_interacting_mm")


def _table(rows, ctx) -> str:
    from handjax.eval.evaluators import format_table

    return format_table(rows, TABLE_COLUMNS)


def _evaluator(ctx):
    right, _ = mano_models(ctx.cfg)
    return InterWildEvaluator(iw.wrist_weights(right), ctx.cfg.eval.get("mrrpe_frames") or None,
                              ctx.cfg.eval.get("vertex_valid_key", "mano_valid"))


def eval_outputs(pred) -> Dict[str, jnp.ndarray]:
    """The evaluator's prediction: root-relative joints (B, 42, 3) ih26m order (each hand at the
    origin), rel_root = TransNet's relative translation, vertices (B, 2, 778, 3) root-relative,
    boxes (B, 2, 4) person-crop pixels and their confidences (B, 2)."""
    raw = pred["raw"]
    b = raw["rel_trans"].shape[0]
    return {"joints": pred["joint_cam"], "rel_root": raw["rel_trans"],
            "vertices": pred["mesh_cam"].reshape(b, 2, -1, 3),
            "boxes": jnp.stack([raw["rhand_bbox"], raw["lhand_bbox"]], 1),
            "box_conf": jnp.stack([raw["rhand_conf"], raw["lhand_conf"]], 1)}


def predict_fn(cfg):
    g, pair = geometry(cfg), mano_models(cfg)

    def predict(model, images):
        return eval_outputs(forward(model, images, g, pair))

    return predict


def _eval_predict(ctx):
    return predict_fn(ctx.cfg)


def mean_hand_outputs(cfg):
    """The MANO mean hand (relative pose 0, betas 0) of each side, root-relative: joints (42, 3)
    ih26m order and vertices (2, 778, 3)."""
    g, (right, left) = geometry(cfg), mano_models(cfg)
    zeros = jnp.zeros((1, 3))
    raw = dict(root_pose=jnp.zeros((2, 3)), hand_pose=jnp.zeros((2, 45)), shape=jnp.zeros((2, 10)),
               root_trans=jnp.array([[0.0, 0.0, 1.0]] * 2), rel_trans=zeros, hand2orig=jnp.tile(
                   jnp.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]), (2, 1, 1)))
    pred = iw_losses.prediction(raw, g, right, left)
    return np.asarray(pred["joint_cam"][0]), np.asarray(pred["mesh_cam"][0]).reshape(2, -1, 3)


def training_statistics(ctx, batches: int) -> Dict[str, np.ndarray]:
    """The trivial baselines' constants over ``batches`` training batches (no augmentation): the mean GT
    root-relative joints (42, 3) and meshes (2, 778, 3) (each hand minus its own wrist: the GT wrist joint,
    the mesh's regressed wrist), the mean relative translation (frames with both wrists) and the mean box
    size (w, h). Means over the labelled hands; the MANO mean hand where a hand never has labels."""
    right, _ = mano_models(ctx.cfg)
    wrist_w = iw.wrist_weights(right)
    joints, verts = mean_hand_outputs(ctx.cfg)
    sums = dict(j=np.zeros((42, 3)), nj=np.zeros((42, 1)), v=np.zeros((2, 778, 3)), nv=np.zeros((2, 1, 1)))
    rel, sizes = [], []
    it = ctx.data("train", "frame", int(ctx.cfg.eval.batch_size), False)
    for i, batch in enumerate(it):
        if i >= batches:
            break
        v = np.asarray(batch.get("valid", np.ones(len(batch["image"]), bool)), bool)
        jv = np.asarray(batch["joint_valid"], bool) & v[:, None]
        both = jv[:, 20] & jv[:, 41]
        rel.append(np.asarray(batch["rel_root"])[both])
        rr = np.asarray(iw_losses.root_relative_42(jnp.asarray(batch["joints3d"])), np.float64)
        root_ok = np.concatenate([np.repeat(jv[:, 20:21], 21, 1), np.repeat(jv[:, 41:42], 21, 1)], 1) & jv
        sums["j"] += (rr * root_ok[..., None]).sum(0)
        sums["nj"] += root_ok.sum(0)[:, None]
        if "vertices" in batch:
            mv = np.asarray(batch.get("mano_valid", np.ones((len(v), 2), bool)), bool) & v[:, None]
            gv = np.asarray(batch["vertices"], np.float64)
            gv = gv - np.einsum("v,bhvc->bhc", wrist_w, gv)[:, :, None]
            sums["v"] += (gv * mv[..., None, None]).sum(0)
            sums["nv"] += mv.sum(0)[:, None, None]
        hv = np.asarray(batch["hand_valid"], bool) & v[:, None]
        box = np.asarray(batch["hand_box"])[hv]
        sizes.append(box[:, 2:] - box[:, :2])
    rel, sizes = np.concatenate(rel), np.concatenate(sizes)
    joints = np.where(sums["nj"] > 0, sums["j"] / np.maximum(sums["nj"], 1), joints)
    verts = np.where(sums["nv"] > 0, sums["v"] / np.maximum(sums["nv"], 1), verts)
    return dict(joints=joints, vertices=verts, rel=rel.mean(0) if len(rel) else np.zeros(3),
                box_size=sizes.mean(0) if len(sizes) else np.ones(2))


def baseline_fn(joints, verts, rel, box):
    def predict(model, images):
        del model
        n = images.shape[0]
        return {"joints": jnp.broadcast_to(joints, (n,) + joints.shape),
                "rel_root": jnp.broadcast_to(rel, (n, 3)),
                "vertices": jnp.broadcast_to(verts, (n,) + verts.shape),
                "boxes": jnp.broadcast_to(box, (n, 2, 4))}

    return predict


def _baselines(ctx):
    """The mean GT pose (root-relative joints and meshes, camera orientation included) at the mean relative
    translation, with a centred box of the mean GT size (all from training batches)."""
    cfg = ctx.cfg
    st = training_statistics(ctx, int(cfg.eval.get("baseline_batches", 4)))
    h, w = geometry(cfg).image_hw
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    box = np.concatenate([c - st["box_size"] / 2, c + st["box_size"] / 2]).astype(np.float32)
    return {BASELINE: baseline_fn(jnp.asarray(st["joints"], jnp.float32), jnp.asarray(st["vertices"], jnp.float32),
                                  jnp.asarray(st["rel"], jnp.float32), jnp.asarray(np.stack([box, box])))}


# ----------------------------------------------------------------------------- predictor
def boxes_to_original(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(K, 4) xyxy boxes in input pixels -> original image pixels through the inverse crop affine (3x3, no
    rotation)."""
    inv = np.linalg.inv(np.asarray(affine, np.float64))
    corners = np.stack([boxes[:, :2], boxes[:, 2:]], 1)  # (K, 2, 2)
    mapped = corners @ inv[:2, :2].T + inv[:2, 2]
    lo, hi = mapped.min(1), mapped.max(1)
    return np.concatenate([lo, hi], -1)


def postprocess_fn(threshold: float):
    """InterWild's demo outputs beyond the shared export (``Predictor.postprocess``): per hand the box
    (original pixels), its confidence and InterWild's params (root_pose, hand_pose, shape, root_trans: (0, 0, 0)
    for the right hand and the relative translation for the left, as upstream's params JSON); a hand whose box
    confidence is below ``threshold`` is reported missing (not exported; ``missing`` lists them); and the
    two-hand decision: boxes overlapping (IoU > 0, upstream's rule) -> the left hand is placed by the relative
    translation (``placement`` "relative"), else each hand by its own root translation ("separate"); "single"
    with fewer than two hands."""

    def postprocess(outputs, extras, affine):
        boxes = boxes_to_original(np.asarray(extras["boxes"], np.float64), affine)
        conf = np.asarray(extras["box_conf"], np.float64)
        hands, kept = {}, []
        for k, side in enumerate(SIDES):
            found = bool(conf[k] >= threshold)
            hands[side] = {"found": found, "box": [round(float(v), 3) for v in boxes[k]],
                           "box_conf": round(float(conf[k]), 6),
                           "root_pose": np.round(extras["root_pose"][k], 6).tolist(),
                           "hand_pose": np.round(extras["hand_pose"][k], 6).tolist(),
                           "shape": np.round(extras["shape"][k], 6).tolist(),
                           "root_trans": (np.round(extras["rel_trans"], 6).tolist() if side == "left" else
                                          [0.0, 0.0, 0.0]),
                           "root_cam": np.round(extras["root_trans"][k], 6).tolist()}
            if found and side in outputs:
                kept.append(side)
        both = len(kept) == 2
        iou = float(box_iou(boxes[0], boxes[1]))
        if not both:
            placement, decision = "single", "one hand or none: no relative placement"
        elif iou > 0:
            placement = "relative"
            decision = "relative translation (boxes overlap): left root = right root + root_trans of the left hand"
        else:
            placement, decision = "separate", "separate roots (boxes do not overlap): each hand at its own root_cam"
        return kept, {"interwild": {"hands": hands, "missing": [s for s in SIDES if s not in kept],
                                    "box_conf_threshold": float(threshold), "box_iou": iou,
                                    "placement": placement, "two_hand_decision": decision}}

    return postprocess


BOX_COLORS = {"right": (140, 166, 230), "left": (140, 230, 128)}  # the overlay's mesh colours
MISSING_COLOR = (160, 160, 160)


def depth_offsets(hands, record, extras) -> list:
    """Per exported hand, the depth (metres) added to its rendered depth for z-compositing, so that the hands
    sit at the two-hand decision's depths: placement "relative" puts the left wrist at the right wrist's depth +
    the relative translation's z (each hand is rendered in its own virtual camera, its wrist at its root_cam),
    otherwise every hand stays at its own root_cam (offset 0)."""
    info = record["interwild"]
    if info["placement"] != "relative":
        return [0.0] * len(hands)
    root_z = {side: float(info["hands"][side]["root_cam"][2]) for side in SIDES}
    target = {"right": root_z["right"], "left": root_z["right"] + float(np.asarray(extras["rel_trans"])[2])}
    return [target[h.side] - root_z[h.side] for h in hands]


def draw_boxes(image: np.ndarray, record, to_display) -> np.ndarray:
    """Both hand boxes over a uint8 image with their confidence (text and a bar along the box's top edge, its
    length the confidence times the box width); a missing hand's box is grey with "missing"."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(img)
    info = record["interwild"]
    width = max(1, round(max(image.shape[:2]) / 200))
    for side in SIDES:
        hand = info["hands"][side]
        x0, y0 = (float(v) for v in to_display(hand["box"][:2]))
        x1, y1 = (float(v) for v in to_display(hand["box"][2:]))
        color = BOX_COLORS[side] if hand["found"] else MISSING_COLOR
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        bar = 3 * width
        draw.rectangle([x0, y0 - bar, x0 + max(0.0, x1 - x0) * hand["box_conf"], y0], fill=color)
        text = f"{side} {hand['box_conf']:.2f}" + ("" if hand["found"] else " missing")
        draw.text((x0, y0 + width + 1 + 12 * SIDES.index(side)), text, fill=color)  # left's line below right's
    return np.asarray(img)


def demo_images(view) -> dict:
    """``Predictor.extra_images``: upstream demo's renders, separately: ``boxes`` (both boxes with their
    confidences), ``skeleton`` (the exported hands' 2-D joints), ``mesh`` (their meshes over the image,
    z-composited per pixel at the two-hand decision's depths, :func:`depth_offsets`: the nearer hand in front)."""
    canvas = view.canvas
    return {"boxes": draw_boxes(canvas.base(), view.record, canvas.to_display),
            "skeleton": canvas.skeletons(view.hands),
            "mesh": canvas.meshes(view.hands, depth_offsets=depth_offsets(view.hands, view.record, view.extras))}


def predictor(cfg) -> Predictor:
    """Whole images -> {"right", "left": HandOutput} + InterWild's extras: the square input's centre (H, 3H/4)
    window is the person crop (``python -m handjax.predict`` crops a square around the image centre); each
    hand in its own virtual crop camera, projected to the square input's pixels. ``predict.box_conf_threshold``
    (default 0: every hand, as upstream) reports low-confidence hands as missing."""
    g, pair = geometry(cfg), mano_models(cfg)
    h, w = g.image_hw
    x0 = (h - w) // 2

    def predict(model, images):
        raw = model(to_unit_range(images[:, :, x0:x0 + w]))
        hands, _ = iw.decode(raw, g, *pair, convention="ih26m")
        shift = jnp.array([[1.0, 0.0, float(x0)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        out = {s: hands[s].replace(camera=shift @ hands[s].camera,
                                   joints2d=hands[s].joints2d + jnp.array([float(x0), 0.0])) for s in SIDES}
        b = images.shape[0]
        off = jnp.array([float(x0), 0.0, float(x0), 0.0])
        out["extras"] = {"boxes": jnp.stack([raw["rhand_bbox"], raw["lhand_bbox"]], 1) + off,
                         "box_conf": jnp.stack([raw["rhand_conf"], raw["lhand_conf"]], 1),
                         "root_pose": raw["root_pose"].reshape(2, b, 3).transpose(1, 0, 2),
                         "hand_pose": raw["hand_pose"].reshape(2, b, 45).transpose(1, 0, 2),
                         "shape": raw["shape"].reshape(2, b, 10).transpose(1, 0, 2),
                         "root_trans": raw["root_trans"].reshape(2, b, 3).transpose(1, 0, 2),
                         "rel_trans": raw["rel_trans"]}
        return out

    right, left = pair
    threshold = float((cfg.get("predict") or {}).get("box_conf_threshold", 0.0))
    return Predictor(model=build_model(cfg), image_size=h, predict=predict,
                     faces={"right": np.asarray(right.faces), "left": np.asarray(left.faces)}, sides=SIDES,
                     finds_boxes=True, meta={"system": "interwild", "box_conf_threshold": threshold},
                     postprocess=postprocess_fn(threshold), extra_images=demo_images)


# ----------------------------------------------------------------------------- the system
def _released_checkpoint(path: str) -> bool:
    from handjax.models.checkpoint import is_model_checkpoint, read_meta

    return bool(path) and is_model_checkpoint(path) and read_meta(path).get("converter") == CONVERTER


def _check(cfg):
    from handjax.losses.terms import check_weights
    from handjax.train import guards

    geometry(cfg)
    check_weights(dict(cfg.train.loss_weights), iw_losses.TERMS, "train.loss_weights")
    _crop_mode(cfg.train, "train")
    if not guards.builtin_hand_allowed(cfg) and _released_checkpoint(cfg.eval.get("checkpoint", "") or ""):
        raise ValueError(f"config key eval.checkpoint={cfg.eval.checkpoint!r} is a converted InterWild release, "
                         f"trained with the real MANO model, but mano.model_path is empty: {guards.MANO_REQUIRED}")
    guards.require_real_mano(cfg, ("train", "eval"))


SYSTEM = System(
    name="interwild",
    stages=(
        TrainStage("hands", hands_task, data={"mode": "frame"}, loss_terms=iw_losses.HAND_TERMS),
        # seed_from: the same seed (data order, draws) with or without the optional hands stage
        TrainStage("train", train_task, data={"mode": "frame"}, init_from="hands", loss_terms=iw_losses.TERMS,
                   seed_from="hands"),
        EvalStage("eval", model_from="train", model=lambda ctx: build_model(ctx.cfg, seed=ctx.seed),
                  predict=_eval_predict, evaluator=_evaluator, baselines=_baselines,
                  label=lambda ctx, trained_here: "InterWild", table=_table),
    ),
    predictor=predictor,
    check=_check,
)
