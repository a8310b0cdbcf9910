"""IdHandMesh's loss terms (``src/loss.py`` and the models' ``loss`` methods), by name.

Every term is ``fn(out, batch, ctx) -> scalar``: ``out`` the network dict
(``handjax.models.idhandmesh.IdHandMeshModel``) plus ``vertices`` (B, 778, 3) of the predicted
mesh in the MANO frame (metres), ``batch`` the data batch, ``ctx`` a dict with ``faces`` (F, 3)
and ``image_size``. Geometry is compared in upstream's units of 0.2 m; reductions are plain
means over the samples carrying the label (``has_mano``; every sample when absent), i.e.
upstream's ``.mean()`` on a fully labelled batch:

=========  ===============================================================================
vertices   L1 of the mesh vs the ground-truth mesh minus its translation (778 x 3)
normal     mean |cos| between the predicted faces' unit edges and the GT unit face normal
edge       mean |len_pred - len_gt| over the 3 edges of every face
pose6d     L1 of the last stage's 6D rows vs those of the ground-truth absolute rotations
betas      L1 of the predicted betas (baseline)
heatmaps   BCE of the keypoint heatmap logits vs Gaussians at the 2D joints (upstream's 2D net)
ranking    MarginRankingLoss(margin) over all C(B, 2) pairs: higher confidence <-> smaller
           mean |beta_gt - beta_pred| (betas detached)
=========  ===============================================================================
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from handjax.geometry import axis_angle_to_matrix
from handjax.losses.terms import check_weights
from handjax.models.idhandmesh import UNIT, matrix_to_rows6d

TERMS: Dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        if name in TERMS:
            raise ValueError(f"IdHandMesh loss term {name!r} registered twice")
        TERMS[name] = fn
        return fn

    return wrap


def _mask(batch, key: str, n: int) -> jnp.ndarray:
    return jnp.asarray(batch[key], jnp.float32).reshape(n) if key in batch else jnp.ones((n,), jnp.float32)


def masked_mean(per_sample: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """(B,) values, (B,) 0/1 -> their mean over the masked samples (0 when none)."""
    return jnp.sum(per_sample * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def gt_mesh(batch) -> jnp.ndarray:
    """Ground-truth vertices in the MANO frame (translation removed), metres (B, 778, 3)."""
    return batch["vertices"] - batch["transl"][:, None, :]


def gt_pose6d(batch) -> jnp.ndarray:
    """(B, 96) 6D rows of the ground-truth absolute axis-angle pose (B, 48)."""
    rot = axis_angle_to_matrix(batch["mano_pose"].reshape(-1, 16, 3))
    return matrix_to_rows6d(rot).reshape(-1, 96)


def _unit(v, eps=1e-12):
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), eps)


def normal_loss(pred, gt, faces) -> jnp.ndarray:
    """(B, V, 3) x2, (F, 3) -> (B,): mean over the 3F (edge, face) pairs of |<unit edge, unit GT normal>|."""
    def edges(v):
        a, b, c = v[:, faces[:, 0]], v[:, faces[:, 1]], v[:, faces[:, 2]]
        return b - a, c - a, c - b

    e1, e2, e3 = (_unit(e) for e in edges(pred))
    g1, g2, _ = edges(gt)
    n = _unit(jnp.cross(g1, g2))
    cos = jnp.stack([jnp.abs(jnp.sum(e * n, -1)) for e in (e1, e2, e3)], -1)
    return jnp.mean(cos, axis=(1, 2))


def edge_length_loss(pred, gt, faces) -> jnp.ndarray:
    """(B, V, 3) x2, (F, 3) -> (B,): mean |len_pred - len_gt| over the 3 edges of every face."""
    def lengths(v):
        a, b, c = v[:, faces[:, 0]], v[:, faces[:, 1]], v[:, faces[:, 2]]
        return jnp.stack([jnp.linalg.norm(b - a, axis=-1), jnp.linalg.norm(c - a, axis=-1),
                          jnp.linalg.norm(c - b, axis=-1)], -1)

    return jnp.mean(jnp.abs(lengths(pred) - lengths(gt)), axis=(1, 2))


def margin_ranking(conf: jnp.ndarray, error: jnp.ndarray, margin: float = 1.0) -> jnp.ndarray:
    """All pairs i < j of the batch: x1 = conf_i, x2 = conf_j, y = sign(error_j - error_i);
    mean of max(0, -y (x1 - x2) + margin) (torch MarginRankingLoss; y = 0 gives ``margin``)."""
    i, j = np.triu_indices(conf.shape[0], k=1)
    y = jnp.sign(error[j] - error[i])
    return jnp.mean(jnp.maximum(0.0, -y * (conf[i] - conf[j]) + margin))


def gaussian_heatmaps(joints2d: jnp.ndarray, image_size: int, size: Tuple[int, int], sigma: float) -> jnp.ndarray:
    """(B, 21, 2) crop pixels -> (B, h, w, 21) Gaussians of ``sigma`` heatmap cells, peak 1, at the
    joints' heatmap positions (cell centres as in ``idhandmesh.heatmap_keypoints``)."""
    h, w = size
    u = (joints2d[..., 0] + 0.5) * w / image_size - 0.5
    v = (joints2d[..., 1] + 0.5) * h / image_size - 0.5
    cols = jnp.arange(w, dtype=jnp.float32)
    rows = jnp.arange(h, dtype=jnp.float32)
    gx = jnp.exp(-jnp.square(cols[None, None, :] - u[..., None]) / (2 * sigma ** 2))  # (B, 21, w)
    gy = jnp.exp(-jnp.square(rows[None, None, :] - v[..., None]) / (2 * sigma ** 2))  # (B, 21, h)
    return jnp.einsum("bkh,bkw->bhwk", gy, gx)


@register("vertices")
def vertices_term(out, batch, ctx):
    per = jnp.mean(jnp.abs(out["vertices"] - gt_mesh(batch)) / UNIT, axis=(1, 2))
    return masked_mean(per, _mask(batch, "has_mano", per.shape[0]))


@register("normal")
def normal_term(out, batch, ctx):
    per = normal_loss(out["vertices"], gt_mesh(batch), ctx["faces"])
    return masked_mean(per, _mask(batch, "has_mano", per.shape[0]))


@register("edge")
def edge_term(out, batch, ctx):
    per = edge_length_loss(out["vertices"] / UNIT, gt_mesh(batch) / UNIT, ctx["faces"])
    return masked_mean(per, _mask(batch, "has_mano", per.shape[0]))


@register("pose6d")
def pose6d_term(out, batch, ctx):
    per = jnp.mean(jnp.abs(out["pose6d"][0] - gt_pose6d(batch)), axis=-1)
    return masked_mean(per, _mask(batch, "has_mano", per.shape[0]))


@register("betas")
def betas_term(out, batch, ctx):
    per = jnp.mean(jnp.abs(out["betas"] - batch["betas"]), axis=-1)
    return masked_mean(per, _mask(batch, "has_betas" if "has_betas" in batch else "has_mano", per.shape[0]))


@register("heatmaps")
def heatmap_term(out, batch, ctx):
    logits = out["heatmaps"]
    target = gaussian_heatmaps(batch["joints2d"], ctx["image_size"], logits.shape[1:3], ctx["heatmap_sigma"])
    bce = jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    per = jnp.mean(bce, axis=(1, 2, 3))
    return masked_mean(per, _mask(batch, "has_joints2d", per.shape[0]))


@register("ranking")
def ranking_term(out, batch, ctx):
    error = jnp.mean(jnp.abs(batch["betas"] - jax.lax.stop_gradient(out["betas"])), axis=-1)
    return margin_ranking(out["conf"], error, ctx.get("margin", 1.0))


MESH_TERMS = ("vertices", "normal", "edge")


def loss_from_weights(out, batch, weights: Mapping[str, float], ctx) -> Tuple[jnp.ndarray, dict]:
    """Weighted sum of the terms with a non-zero weight -> (total, {name: value})."""
    check_weights(weights, tuple(TERMS), "loss_weights")
    total, used = jnp.zeros((), jnp.float32), {}
    for name, w in weights.items():
        if float(w):
            value = TERMS[name](out, batch, ctx)
            total = total + float(w) * value
            used[name] = value
    return total, used
