"""DIGIT as a system: one supervised stage (2.5D joints, root depth, handedness, part
segmentation) on square two-hand crops, then the InterHand2.6M evaluation with DIGIT's rules.

In order: the model (a registered HRNet + DIGIT's head, ``handjax.models.digit``), its decode
into the hand-output contract (2.5D -> camera space with the crop intrinsics and a root depth),
the loss terms (``handjax.losses.digit``, by name, with DIGIT's weights; optional micro-batches
= upstream's gradient accumulation), the stages, the evaluation (``two_hand`` evaluator with
``rule="digit"``: MPJPE single / interacting / all, MRRPE, handedness, part-segmentation mIoU;
trivial baselines: the training set's mean pose and "all background"), and the predictor.

Root depths (config ``eval.root_depth``): "gt" (each hand's ground-truth wrist depth, from the
batch's ``joints3d``; the built-in scenes) or "rootnet" (InterHand2.6M's RootNet depths,
``rootnet_depth``, DIGIT's released evaluation). MPJPE places each hand at its own root depth
(root-relative errors barely depend on it); MRRPE anchors the right root at its depth and the
left one at that depth + the predicted relative depth, as DIGIT does.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax.losses import digit as digit_losses
from handjax.losses.terms import loss_from_weights
from handjax.models.digit import DigitModel, DigitSpec
from handjax.models.hand_output import make_hand_output
from handjax.train.loop import Task
from handjax.train.system import EvalStage, Predictor, System, TrainStage

SIDES = ("right", "left")
ROOT_DEPTHS = ("gt", "rootnet")
MODEL_CONVENTION = "ih26m"


# ----------------------------------------------------------------------------- model
def build_model(cfg, seed: int = 0) -> DigitModel:
    m = cfg.model
    spec = DigitSpec(**dict(m.get("spec") or {}))
    return DigitModel(rngs=nnx.Rngs(seed), backbone=str(m.backbone), backbone_kw=dict(m.get("backbone_kw") or {}),
                      spec=spec, input_norm=str(m.get("input_norm", "unit")), conv_impl=str(m.get("conv_impl", "auto")),
                      backbone_init=str(m.get("backbone_init", "kaiming")))


def _rays(uv, K):
    """Pixels (B, N, 2) -> rays K^-1 [u, v, 1] (B, N, 3) (z = 1 for a pinhole K)."""
    hom = jnp.concatenate([uv, jnp.ones(uv.shape[:-1] + (1,), uv.dtype)], axis=-1)
    return jnp.einsum("bij,bnj->bni", jnp.linalg.inv(K), hom)


def decode(out, K, root_depth, image_size: int):
    """DigitOutput -> ({"right", "left"}: HandOutput, rel_root (B, 3) metres).

    K (B, 3, 3) crop intrinsics; root_depth (B, 2) metres (right, left wrists). x, y: heatmap
    cells x S / h -> crop pixels; z: DIGIT units -> root-relative mm (:func:`decode_depth`) -> +
    the hand's root depth; back-projected with K. HandOutput: camera ``K [I | 0]``; DIGIT predicts
    no MANO parameters, so rotmats are identities, betas zeros and vertices None (the contract's
    mesh fields are not used by this system). rel_root: left root back-projected at right depth +
    predicted relative depth minus the right root at its depth (DIGIT's MRRPE anchor).
    """
    j = out.joints25d
    uv = j[..., :2] * (image_size / out.hm_size)
    z_rel = digit_losses.decode_depth(j[..., 2]) / 1000.0
    depth = jnp.repeat(root_depth, 21, axis=1) + z_rel
    xyz = _rays(uv, K) * depth[..., None]
    cam = jnp.concatenate([K, jnp.zeros(K.shape[:-1] + (1,), K.dtype)], axis=-1)
    b = j.shape[0]
    hands = {}
    for h, side in enumerate(SIDES):
        sl = slice(21 * h, 21 * h + 21)
        hands[side] = make_hand_output(xyz[:, sl], cam, jnp.broadcast_to(jnp.eye(3), (b, 16, 3, 3)),
                                       jnp.zeros((b, 10)), None, jnp.full((b,), side == "right"), MODEL_CONVENTION)
    rel_m = digit_losses.decode_depth(out.rel_root, units=out.root_logits.shape[-1]) / 1000.0
    roots = _rays(uv[:, digit_losses.ROOTS], K)
    rel_root = roots[:, 1] * (root_depth[:, :1] + rel_m[:, None]) - roots[:, 0] * root_depth[:, :1]
    return hands, rel_root


def joints42(hands) -> jnp.ndarray:
    return jnp.concatenate([hands["right"].joints, hands["left"].joints], axis=1)


def part_map(out, image_size: int) -> jnp.ndarray:
    """Predicted part labels (B, S, S) int32: argmax at half resolution, repeated 2x2 (nearest)."""
    lab = jnp.argmax(out.segm_logits, axis=-1).astype(jnp.int32)
    f = image_size // lab.shape[1]
    return jnp.repeat(jnp.repeat(lab, f, axis=1), f, axis=2)


# ----------------------------------------------------------------------------- losses
def _split(batch, k: int):
    n = batch["image"].shape[0]
    if n % k:
        raise ValueError(f"config key train.micro_batches={k} must divide the batch size {n}")
    m = n // k
    return [{key: v[i * m:(i + 1) * m] if getattr(v, "ndim", 0) and v.shape[0] == n else v
             for key, v in batch.items()} for i in range(k)]


def loss_fn(model, batch, rng, *, weights, image_size: int, micro_batches: int = 1):
    """Sum of the weighted DIGIT terms. ``micro_batches`` k > 1: the batch is cut into k parts run
    one after the other (BatchNorm statistics per part, as upstream's 2 x 32 accumulation) and the
    losses are averaged, which gives the accumulated gradient (memory is not reduced)."""
    del rng
    if micro_batches <= 1:
        return loss_from_weights(model(batch["image"]), batch, weights, image_size)
    total, used = 0.0, {}
    for part in _split(batch, micro_batches):
        t, u = loss_from_weights(model(part["image"]), part, weights, image_size)
        total = total + t / micro_batches
        used = {k: used.get(k, 0.0) + v / micro_batches for k, v in u.items()}
    return total, used


# ----------------------------------------------------------------------------- summaries
PALETTE = np.concatenate([np.zeros((1, 3)), np.stack([np.array([0.3 + 0.7 * (i % 4) / 3, 0.2 + 0.5 * (i // 4) / 3,
                                                                  0.9]) for i in range(16)]),
                          np.stack([np.array([0.9, 0.3 + 0.7 * (i % 4) / 3, 0.2 + 0.5 * (i // 4) / 3])
                                    for i in range(16)])]) * 255
PALETTE = PALETTE.astype(np.uint8)  # 0 black, right hand blue-ish, left hand red-ish


def colorize_parts(labels) -> np.ndarray:
    """(..., H, W) labels 0..32 -> (..., H, W, 3) uint8."""
    return PALETTE[np.clip(np.asarray(labels), 0, 32)]


def summary_fn(image_size: int, num_images: int = 4):
    """``summarize(model, batch) -> {"digit": (N, Z S, 4 Z S, 3)}``: crop with the GT joints | crop
    with the predicted joints | predicted part map | ground-truth part map (Z: zoom to >= 128 px)."""
    from handjax import mano
    from handjax.eval.visualize import denormalize, draw_skeleton

    order = np.asarray(mano.joint_remap(MODEL_CONVENTION, "freihand"))
    zoom = max(1, -(-128 // image_size))

    @nnx.jit
    def predict(model, images):
        out = model(images)
        return out.joints25d[..., :2] * (image_size / out.hm_size), part_map(out, image_size)

    def up(img):
        return np.asarray(img).repeat(zoom, axis=0).repeat(zoom, axis=1)

    def skel(img, uv):
        for h in range(2):
            img = draw_skeleton(img, (uv[21 * h:21 * h + 21][order] + 0.5) * zoom - 0.5)
        return img

    def summarize(model, batch):
        images = jnp.asarray(batch["image"][:num_images])
        uv, seg = jax.device_get(predict(model, images))
        crops = denormalize(np.asarray(images))
        gt_seg = np.asarray(batch.get("part_seg", np.zeros(seg.shape, np.int32))[:num_images])
        panels = [np.concatenate([skel(up(crops[i]), np.asarray(batch["joints2d"][i])), skel(up(crops[i]), uv[i]),
                                  up(colorize_parts(seg[i])), up(colorize_parts(gt_seg[i]))], axis=1)
                  for i in range(len(crops))]
        return {"digit": np.stack(panels)}

    return summarize


# ----------------------------------------------------------------------------- stages
def _weights(ctx) -> dict:
    return dict(ctx.stage_cfg.loss_weights)


def train_task(ctx) -> Task:
    size = int(ctx.cfg.data.image_size)
    loss = functools.partial(loss_fn, weights=_weights(ctx), image_size=size,
                             micro_batches=int(ctx.stage_cfg.get("micro_batches", 1) or 1))
    summaries = summary_fn(size) if ctx.stage_cfg.get("summary_every", 0) else None
    return Task(build_model(ctx.cfg, seed=ctx.seed), loss, summary_fn=summaries)


def _root_mode(cfg) -> str:
    return str(cfg.eval.get("root_depth", "gt"))


def eval_inputs(ctx) -> tuple:
    """The batch keys the evaluation predicts from: image, crop intrinsics and the root-depth source."""
    return ("image", "K", "joints3d") if _root_mode(ctx.cfg) == "gt" else ("image", "K", "rootnet_depth")


def root_depths(inputs, mode: str):
    """(B, 2) root depths (metres) of the right and left wrists."""
    if mode == "gt":
        return inputs["joints3d"][:, digit_losses.ROOTS, 2]
    return inputs["rootnet_depth"]


def predict_fn(image_size: int, mode: str):
    """jit-able (model, inputs) -> two_hand evaluator predictions."""

    def predict(model, inputs):
        out = model(inputs["image"])
        hands, rel_root = decode(out, inputs["K"], root_depths(inputs, mode), image_size)
        return {"joints": joints42(hands), "rel_root": rel_root, "hand_prob": jax.nn.sigmoid(out.hand_logits),
                "part_seg": part_map(out, image_size)}

    return predict


def mean_statistics(ctx, max_batches: int = 16) -> dict:
    """Training-set means for the trivial baseline: root-relative joints (42, 3) per hand (valid
    joints only), relative root (3,) of interacting frames, hand presence (2,)."""
    from handjax.eval.two_hand import root_masked_valid, root_relative

    sums, counts = np.zeros((42, 3)), np.zeros((42, 1))
    rel, n_rel, pres, n = np.zeros(3), 0, np.zeros(2), 0
    batches = ctx.data(split=ctx.cfg.train.get("split", "train"), mode="frame",
                       batch_size=int(ctx.stage_cfg.batch_size),
                       train=False, seed=0)
    for i, b in enumerate(batches):
        if i >= max_batches:
            break
        keep = np.asarray(b.get("valid", np.ones(len(b["image"]), bool)), bool)
        jv = root_masked_valid(b["joint_valid"])[keep][..., None]
        rr = root_relative(b["joints3d"])[keep]
        sums += np.sum(np.where(jv, rr, 0.0), axis=0)
        counts += np.sum(jv, axis=0)
        ht = np.asarray(b["hand_type"])[keep]
        inter = ht == 2
        jvr = np.asarray(b["joint_valid"], bool)[keep]
        both = inter & jvr[:, 20] & jvr[:, 41]
        j3 = np.asarray(b["joints3d"])[keep]
        rel += np.sum(j3[both, 41] - j3[both, 20], axis=0)
        n_rel += int(both.sum())
        pres += np.stack([(ht == 0) | inter, (ht == 1) | inter], -1).sum(0)
        n += int(keep.sum())
    return {"joints": (sums / np.maximum(counts, 1)).astype(np.float32),
            "rel_root": (rel / max(n_rel, 1)).astype(np.float32), "presence": (pres / max(n, 1)).astype(np.float32)}


def _baselines(ctx):
    stats = mean_statistics(ctx)
    size = int(ctx.cfg.data.image_size)

    def predict(model, inputs):
        del model
        b = inputs["image"].shape[0]
        return {"joints": jnp.broadcast_to(jnp.asarray(stats["joints"]), (b, 42, 3)),
                "rel_root": jnp.broadcast_to(jnp.asarray(stats["rel_root"]), (b, 3)),
                "hand_prob": jnp.broadcast_to(jnp.asarray(stats["presence"]), (b, 2)),
                "part_seg": jnp.zeros((b, size, size), jnp.int32)}

    return {"mean pose / all background": predict}


def _evaluator(ctx):
    from handjax.eval.evaluators import make_evaluator

    return make_evaluator("two_hand", rule="digit")


TABLE_COLUMNS = ("mpjpe_single_mm", "mpjpe_interacting_mm", "mpjpe_all_mm", "mrrpe_mm", "handedness_acc", "miou")


def _table(rows, ctx) -> str:
    from handjax.eval.evaluators import format_table

    return format_table(rows, TABLE_COLUMNS)


def _eval_predict(ctx):
    return predict_fn(int(ctx.cfg.data.image_size), _root_mode(ctx.cfg))


# ----------------------------------------------------------------------------- predictor
# DIGIT's 16 part labels (render_mano_ih's face labels; names derived from the mesh's face adjacency and MANO's
# fingertip vertices, as neither repository documents them):
# class 0 background, 1..16 the right hand's label + 1, 17..32 the left hand's label + 17.
PART_LABEL_NAMES = ("ring 1", "index 2", "pinky 1", "middle 1", "middle 3", "ring 3", "pinky 3", "thumb 1",
                    "palm", "thumb 2", "index 1", "index 3", "thumb 3", "pinky 2", "middle 2", "ring 2")
PART_CLASS_NAMES = ("background",) + tuple(f"right {n}" for n in PART_LABEL_NAMES) + tuple(
    f"left {n}" for n in PART_LABEL_NAMES)


def labels_to_original(labels: np.ndarray, affine: np.ndarray, image_hw) -> np.ndarray:
    """A label map of the input crop (S, S) -> the ORIGINAL image's pixel grid (H, W) uint8, nearest.

    ``affine`` (3, 3) maps original pixels to crop pixels (pixel centres at integers): each original
    pixel takes the label of the crop pixel nearest to its image ``round(A [x, y, 1])``; pixels
    whose image falls outside the crop are background (0).
    """
    labels = np.asarray(labels)
    h, w = (int(v) for v in image_hw)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    A = np.asarray(affine, np.float64)
    u = A[0, 0] * xs + A[0, 1] * ys + A[0, 2]
    v = A[1, 0] * xs + A[1, 1] * ys + A[1, 2]
    ui, vi = np.floor(u + 0.5).astype(np.int64), np.floor(v + 0.5).astype(np.int64)
    inside = (ui >= 0) & (ui < labels.shape[1]) & (vi >= 0) & (vi < labels.shape[0])
    out = np.zeros((h, w), np.uint8)
    out[inside] = labels[vi[inside], ui[inside]]
    return out


def blend_parts(image: np.ndarray, labels: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Part colours (:func:`colorize_parts`) blended over a uint8 image (H, W, 3) where the label (H, W) is
    not background; background pixels keep the image."""
    from handjax.eval.visualize import overlay

    return overlay(np.asarray(image), colorize_parts(labels) / 255.0, np.asarray(labels) > 0, alpha)


def part_images(view) -> dict:
    """``Predictor.extra_images``: ``parts`` the predicted part map on the original image's pixel grid
    (uint8 class ids 0..32, an 8-bit grey PNG) and ``parts_overlay`` its colours blended over the image
    (at the overlay zoom)."""
    labels = labels_to_original(view.extras["part_map"], view.affine, view.image.shape[:2])
    z = view.canvas.zoom
    return {"parts": labels, "parts_overlay": blend_parts(view.canvas.base(), labels.repeat(z, 0).repeat(z, 1))}


def _postprocess(outputs, extras, affine):
    """Both hands exported; the JSON names the part classes of ``<name>_parts.png``."""
    del extras, affine
    return list(outputs), {"part_classes": list(PART_CLASS_NAMES)}


def predictor(cfg) -> Predictor:
    """The whole image (a square around it) -> {"right", "left"}: HandOutput (ih26m joints) + the predicted
    part map (``extras["part_map"]`` (B, S, S), written as ``<name>_parts.png`` / ``<name>_parts_overlay.png``
    on the original image's grid by :func:`part_images`).

    Without intrinsics or root depths, the crop camera has focal ``predict.focal`` x S (1.0: the
    crop side, i.e. the original image's longer side as focal length, handjax.predict's default)
    and the principal point at the crop centre; the right wrist sits at ``predict.root_depth``
    metres and the left one at that + the predicted relative depth.
    """
    size = int(cfg.data.image_size)
    p = cfg.get("predict") or {}
    f = float(p.get("focal", 1.0)) * size
    depth = float(p.get("root_depth", 0.6))

    def predict(model, images):
        out = model(images)
        b = images.shape[0]
        K = jnp.broadcast_to(jnp.array([[f, 0.0, (size - 1) / 2.0], [0.0, f, (size - 1) / 2.0], [0.0, 0.0, 1.0]]),
                             (b, 3, 3))
        rel_m = digit_losses.decode_depth(out.rel_root, units=out.root_logits.shape[-1]) / 1000.0
        roots = jnp.stack([jnp.full((b,), depth), depth + rel_m], axis=-1)
        hands, _ = decode(out, K, roots, size)
        return {**hands, "extras": {"part_map": part_map(out, size).astype(jnp.uint8)}}

    return Predictor(model=build_model(cfg), image_size=size, predict=predict, faces={}, sides=SIDES,
                     finds_boxes=True, meta={"system": "digit", "backbone": str(cfg.model.backbone),
                                             "joint_convention": MODEL_CONVENTION},
                     postprocess=_postprocess, extra_images=part_images)


def _check(cfg):
    mode = _root_mode(cfg)
    if mode not in ROOT_DEPTHS:
        raise ValueError(f"config key eval.root_depth={mode!r}: must be one of {ROOT_DEPTHS}")
    size = int(cfg.data.image_size)
    if size % 32:
        raise ValueError(f"config key data.image_size={size}: DIGIT needs a multiple of 32 (HRNet, UNet levels)")
    k = int(cfg.train.get("micro_batches", 1) or 1)
    if k < 1 or int(cfg.train.batch_size) % k:
        raise ValueError(f"config key train.micro_batches={k} must be >= 1 and divide train.batch_size="
                         f"{cfg.train.batch_size}")


def _eval_stage():
    return EvalStage("eval", model_from="train", model=lambda ctx: build_model(ctx.cfg, seed=ctx.seed),
                     predict=_eval_predict, evaluator=_evaluator, baselines=_baselines,
                     label=lambda ctx, here: "DIGIT" + ("" if here else f" ({ctx.cfg.eval.get('checkpoint', '')})"),
                     table=_table, inputs=eval_inputs)


SYSTEM = System(
    name="digit",
    stages=(
        TrainStage("train", train_task, data={"mode": "frame"}, loss_terms=digit_losses.TERMS),
        _eval_stage(),
    ),
    predictor=predictor,
    check=_check,
)
