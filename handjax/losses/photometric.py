"""handobjectconsist's objectives: the supervised MeshRegNet terms and the photometric-consistency
(warping) loss, pure JAX (jit / vmap / shard over a device mesh on CPU, GPU and TPU).

Supervised terms (:data:`TERMS`, by name; ``fn(out: MeshRegOutput, batch) -> scalar``; MSE = mean over
every coordinate, here averaged over the samples that carry the label: ``annotated`` and the
``has_*`` flags):

================  ===============================================================  =============
recov_joints3d    MSE of camera-space hand joints (metres)                          upstream 0.5
recov_objverts3d  MSE of camera-space object vertices (metres)                      upstream 0.5
mano_shape        MSE(betas, 0), every sample                                       upstream 5e-7
pose_reg          MSE(PCA coefficients, 0), every sample                            upstream 5e-6
================  ===============================================================  =============

Photometric consistency (:func:`photometric_consistency`, upstream ``warpbranch`` +
``opticalflow.get_opticalflow`` + ``imgflowarp.pair_consist``), for a query frame (index 1 in
upstream's naming: the possibly unannotated one, its mesh PREDICTED) and its reference (the
nearest annotated frame, its mesh the ground truth with ``consist_gt_refs``):

1. both hand + object meshes are rasterised (face ids only, no gradient) on upstream's canvas: a
   square S x S image, S = max(H, W), whose pixel (col c, row r) samples the point (c + p, r + p)
   of the intrinsics' pixel frame (neural_renderer: p = 0.5; ``pixel_center``), flows cropped back
   to H x W;
2. per-vertex displacements ``f21 = pi(K_q V_q) - pi(K_r V_r)`` are interpolated with the reference
   frame's perspective-correct barycentrics into flow21 on the reference grid (and f12 = -f21 with the
   query's barycentrics into flow12 on the query grid, for the occlusion test only). Gradients reach
   ``V_q`` only through these flow VALUES; rasterisation, barycentrics and the reference are constants;
3. flow21 is zeroed on background, on ``ignore_face`` faces (the wrist cap) and on pixels failing the
   forward-backward test (:func:`roundtrip_mask`): the normalised grid (x / S, y / S) sampled (nearest)
   through flow12 then flow21 must come back within ``occlusion_threshold`` (0.03, Euclidean, normalised
   units), landing on a query pixel that carries flow and back on a covered reference pixel;
4. the query image is warped into the reference grid with flow21 (``handjax.render.warp``; with
   ``upstream_grid`` PWC-Net's ``2 x / (W - 1) - 1`` normalisation fed to an ``align_corners=False``
   sampler, exactly as upstream on PyTorch >= 1.3, else exact sampling at pixel + flow);
5. per pair: L1 over the valid pixels x 3 channels, ``sum(mask |warp - I_ref|) / max(3 sum(mask), 1)``
   where mask = in bounds (an all-ones image warped >= 0.99999) and flow21.x != 0; pairs flagged in
   ``skip`` (annotated queries) contribute 0 but count in the batch mean. With jitter masks (upstream's
   ``JITTERMASK``: a white image cropped like the frame, 0 on the crop's padding) the mask also needs the
   reference's jitter mask == 1 and the query's jitter mask warped like the image >= 0.99999, so padding
   pixels of either frame never contribute.

``consist_weight(step, lam, ramp)``: upstream's progressive lambda ``min(lam step / ramp, lam)``.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from handjax.render import fragments_from_face_id, interpolate_bary, visible_faces_batch
from handjax.render.rasterize import project
from handjax.render.warp import unnormalize, warp, warp_valid_mask

OCCLUSION_THRESHOLD = 0.03
UPSTREAM_NEAR = 0.1  # neural_renderer's near plane in upstream's renderer


# ----------------------------------------------------------------------------- supervised terms
def _flag(batch, key: str, n: int):
    v = batch.get(key)
    return jnp.ones(n, bool) if v is None else jnp.asarray(v, bool).reshape(n)


def masked_mse(pred: jnp.ndarray, target: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Mean over the elements of the ``valid`` (B,) samples of (pred - target)^2; 0 without any."""
    per = jnp.mean(jnp.square(pred - target).reshape(pred.shape[0], -1), axis=-1)
    return jnp.sum(jnp.where(valid, per, 0.0)) / jnp.maximum(jnp.sum(valid.astype(per.dtype)), 1.0)


def labelled(batch, n: int, label: str) -> jnp.ndarray:
    """Samples that carry ``label``'s supervision: ``annotated`` and ``has_<label>`` (absent = True)."""
    return _flag(batch, "annotated", n) & _flag(batch, "has_" + label, n)


def recov_joints3d(out, batch):
    n = out.hand.joints.shape[0]
    return masked_mse(out.hand.joints, batch["joints3d"], labelled(batch, n, "joints3d"))


def recov_objverts3d(out, batch):
    if out.object is None:
        raise ValueError("loss term recov_objverts3d: the model was decoded without objects (object_id / canonical "
                         "meshes missing)")
    n = out.object.vertices.shape[0]
    return masked_mse(out.object.vertices, batch["object_vertices"], labelled(batch, n, "object"))


def mano_shape(out, batch):
    del batch
    return jnp.mean(jnp.square(out.betas))


def pose_reg(out, batch):
    del batch
    return jnp.mean(jnp.square(out.pca))


TERMS = {"recov_joints3d": recov_joints3d, "recov_objverts3d": recov_objverts3d, "mano_shape": mano_shape,
         "pose_reg": pose_reg}
REGULARISERS = ("mano_shape", "pose_reg")  # upstream's mano_reg_loss, also applied to consistency queries


def weighted_terms(out, batch, weights, names: Optional[Sequence[str]] = None):
    """(sum_k w_k term_k, {name: term}) over the terms of ``names`` (default all) with non-zero weight."""
    total, used = 0.0, {}
    for name, w in weights.items():
        if name not in TERMS:
            continue
        if (names is None or name in names) and float(w):
            value = TERMS[name](out, batch)
            total = total + float(w) * value
            used[name] = value
    return total, used


def consist_weight(step, lam: float, ramp: int):
    """Upstream's ``progressive_consist``: lambda_c = min(lam * step / ramp, lam) (ramp 0: lam at once)."""
    if ramp <= 0:
        return jnp.asarray(lam, jnp.float32)
    return jnp.minimum(lam * jnp.asarray(step, jnp.float32) / float(ramp), lam)


# ----------------------------------------------------------------------------- rendered flow
def canvas_intrinsics(K: jnp.ndarray, pixel_center: float) -> jnp.ndarray:
    """K whose integer pixel centres sample the points (c + pixel_center, r + pixel_center) of K's frame."""
    return K.at[..., 0, 2].add(-pixel_center).at[..., 1, 2].add(-pixel_center)


def vertex_flow(verts_grid, verts_other, faces, K_grid, K_other, face_id):
    """Flow on the grid of ``verts_grid``'s image: per-vertex ``pi(K_other V_other) - pi(K_grid V_grid)``
    interpolated with the perspective-correct barycentrics of ``face_id`` (B, S, S) (computed with
    ``K_grid``, the canvas intrinsics). Gradients reach ``verts_other`` / ``K_other`` only.

    verts_* (B, V, 3); faces (F, 3); K_* (B, 3, 3). Returns (B, S, S, 2), 0 on background.
    """
    grid_v, grid_k = lax.stop_gradient(verts_grid), lax.stop_gradient(K_grid)
    disp = project(verts_other, K_other) - project(grid_v, grid_k)

    def one(v, k, fid, d):
        frags = fragments_from_face_id(v, faces, k, fid)
        frags = frags._replace(bary=lax.stop_gradient(frags.bary))
        return interpolate_bary(d, faces, frags)

    return jax.vmap(one)(grid_v, grid_k, face_id, disp)


def nearest_sample(image: jnp.ndarray, flow: jnp.ndarray, upstream_grid: bool = True) -> jnp.ndarray:
    """``grid_sample(mode='nearest', padding 'zeros')`` of image (B, H, W, C) at pixel + flow (B, H, W, 2) with
    the normalisation of :func:`handjax.render.warp` (``upstream_grid``: align_corners=False). Rounds half to
    even as torch's ``nearbyint``; samples outside the image are 0."""
    b, h, w = flow.shape[:3]
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=flow.dtype), jnp.arange(w, dtype=flow.dtype), indexing="ij")
    gx = 2.0 * (xs + flow[..., 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys + flow[..., 1]) / max(h - 1, 1) - 1.0
    ix = jnp.round(unnormalize(gx, w, not upstream_grid))
    iy = jnp.round(unnormalize(gy, h, not upstream_grid))
    inside = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1) & jnp.isfinite(ix) & jnp.isfinite(iy)
    ci = jnp.clip(jnp.where(inside, ix, 0), 0, w - 1).astype(jnp.int32)
    ri = jnp.clip(jnp.where(inside, iy, 0), 0, h - 1).astype(jnp.int32)
    values = jax.vmap(lambda im, r, c: im[r, c])(image, ri, ci)
    return jnp.where(inside[..., None], values, 0.0)


def roundtrip_mask(flow_ab: jnp.ndarray, flow_ba: jnp.ndarray, cover_a: jnp.ndarray, keep_b: jnp.ndarray,
                   threshold: float = OCCLUSION_THRESHOLD, upstream_grid: bool = True) -> jnp.ndarray:
    """Forward-backward test on grid a (B, S, S) bool (upstream ``get_occlusion_mask``, its mask for grid a).

    The normalised grid of a, channels (x / S, y / S, cover_a), is sampled (nearest, zeros outside) on grid b at
    q + flow_ba(q) and multiplied by keep_b(q), then sampled back on grid a at p + flow_ab(p). Pixel p passes when
    cover_a(p), the carried coverage (cover_a at the round-trip end, keep_b at the midpoint, both inside the image)
    and |returned (x, y) - p / S| < ``threshold`` (Euclidean, normalised units).

    flow_ab (B, S, S, 2) lives on grid a and points into b; flow_ba on grid b points into a; cover_a (B, S, S) bool
    the raw coverage of a; keep_b (B, S, S) bool the pixels of b that carry flow (coverage minus ignored faces).
    """
    b, h, w = flow_ab.shape[:3]
    size = float(max(h, w))
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=flow_ab.dtype), jnp.arange(w, dtype=flow_ab.dtype), indexing="ij")
    xy = jnp.broadcast_to(jnp.stack([xs, ys], -1) / size, (b, h, w, 2))
    grid = jnp.concatenate([xy, cover_a[..., None].astype(flow_ab.dtype)], axis=-1)
    on_b = nearest_sample(grid, flow_ba, upstream_grid) * keep_b[..., None].astype(flow_ab.dtype)
    back = nearest_sample(on_b, flow_ab, upstream_grid)
    carried = (back[..., 2] > 0.5) & cover_a
    return carried & (jnp.linalg.norm(back[..., :2] - xy, axis=-1) < threshold)


class ConsistencyResult(NamedTuple):
    """loss (B,) per pair; flow21 (B, H, W, 2) final reference-grid flow; valid (B, H, W) pixels used;
    warped (B, H, W, C) the query image warped into the reference frame (masked)."""

    loss: jnp.ndarray
    flow21: jnp.ndarray
    valid: jnp.ndarray
    warped: jnp.ndarray


def photometric_consistency(query_verts, ref_verts, faces, ignore_face, K_query, K_ref, image_query, image_ref, *,
                            pixel_center: float = 0.5, upstream_grid: bool = True,
                            occlusion_threshold: float = OCCLUSION_THRESHOLD, skip: Optional[jnp.ndarray] = None,
                            near: float = UPSTREAM_NEAR, jitter_query: Optional[jnp.ndarray] = None,
                            jitter_ref: Optional[jnp.ndarray] = None) -> ConsistencyResult:
    """The warping loss of B query / reference pairs (module docstring, steps 1-5).

    query_verts / ref_verts (B, V, 3) camera-frame hand + object meshes (same topology); faces (F, 3) int;
    ignore_face (F,) bool (faces whose pixels never carry flow, upstream's wrist cap); K_* (B, 3, 3);
    images (B, H, W, C) (any affine intensity scale: upstream's are in [-0.5, 0.5]); skip (B,) bool pairs
    contributing 0; jitter_query / jitter_ref (B, H, W) bool or None: the frames' image area in the crop
    (step 5).
    """
    b, h, w, c = image_ref.shape
    size = max(h, w)
    faces = jnp.asarray(faces, jnp.int32)
    ignore_face = jnp.asarray(ignore_face, bool)
    kq, kr = canvas_intrinsics(K_query, pixel_center), canvas_intrinsics(K_ref, pixel_center)
    fid_q = visible_faces_batch(lax.stop_gradient(query_verts), faces, lax.stop_gradient(kq), (size, size),
                                near=near)
    fid_r = visible_faces_batch(lax.stop_gradient(ref_verts), faces, lax.stop_gradient(kr), (size, size), near=near)
    # canvas-shifted K for the barycentrics; the displacements are differences, so either K gives them
    flow21 = vertex_flow(ref_verts, query_verts, faces, kr, kq, fid_r)
    flow12 = lax.stop_gradient(vertex_flow(query_verts, ref_verts, faces, kq, kr, fid_q))
    keep_r = (fid_r >= 0) & ~ignore_face[jnp.maximum(fid_r, 0)]
    keep_q = (fid_q >= 0) & ~ignore_face[jnp.maximum(fid_q, 0)]
    flow12 = flow12 * keep_q[..., None]
    flow21 = flow21 * keep_r[..., None]
    occ_ok = roundtrip_mask(lax.stop_gradient(flow21), flow12, fid_r >= 0, keep_q, occlusion_threshold, upstream_grid)
    flow21 = (flow21 * (keep_r & occ_ok)[..., None])[:, :h, :w]
    align = not upstream_grid
    inbound = warp_valid_mask(flow21, align)
    warped = warp(image_query, flow21, align, "zeros") * inbound[..., None]
    valid = inbound & (lax.stop_gradient(flow21[..., 0]) != 0)
    if jitter_ref is not None:
        valid = valid & jnp.asarray(jitter_ref, bool).reshape(valid.shape)
    if jitter_query is not None:  # the query's image area sampled as the image is (bilinear), upstream's test
        warped_area = warp(jnp.asarray(jitter_query, image_query.dtype).reshape(valid.shape)[..., None],
                           lax.stop_gradient(flow21), align, "zeros")[..., 0]
        valid = valid & (warped_area >= 0.99999)
    diff = jnp.abs(warped - image_ref) * valid[..., None]
    loss = jnp.sum(diff, axis=(1, 2, 3)) / jnp.maximum(c * jnp.sum(valid, axis=(1, 2)).astype(diff.dtype), 1.0)
    if skip is not None:
        loss = jnp.where(jnp.asarray(skip, bool), 0.0, loss)
    return ConsistencyResult(loss=loss, flow21=flow21, valid=valid, warped=warped)


def hand_object_mesh(hand_verts, object_verts, hand_faces, object_faces, wrist_fan: int):
    """One mesh of a hand (B, 778, 3) sealed at the wrist and an object (B, Vo, 3): (verts (B, 779 + Vo, 3),
    faces (F, 3) int32, ignore_face (F,) bool). ``hand_faces`` (Fh + wrist_fan, 3) are the sealed faces
    (``handjax.render.seal_wrist``; the last ``wrist_fan`` cap faces are ignored, as upstream's
    ``hand_ignore_faces``); object face indices are offset past the hand's vertices."""
    import numpy as np

    from handjax.render import MANO_WRIST_BOUNDARY_IDS

    loop = jnp.asarray(MANO_WRIST_BOUNDARY_IDS)
    sealed = jnp.concatenate([hand_verts, jnp.mean(hand_verts[:, loop], axis=1, keepdims=True)], axis=1)
    verts = sealed if object_verts is None else jnp.concatenate([sealed, object_verts], axis=1)
    hf = np.asarray(hand_faces, np.int32)
    parts = [hf] if object_faces is None else [hf, np.asarray(object_faces, np.int32) + sealed.shape[1]]
    faces = np.concatenate(parts)
    ignore = np.zeros(len(faces), bool)
    ignore[len(hf) - wrist_fan: len(hf)] = True
    return verts, jnp.asarray(faces), jnp.asarray(ignore)


def summary_stats(result: ConsistencyResult) -> Dict[str, jnp.ndarray]:
    """Diagnostics: mean number of valid pixels per pair, mean |flow| over them."""
    n = jnp.sum(result.valid, axis=(1, 2)).astype(jnp.float32)
    mag = jnp.linalg.norm(result.flow21, axis=-1)
    return {"consist_pixels": jnp.mean(n),
            "consist_flow_px": jnp.sum(mag * result.valid) / jnp.maximum(jnp.sum(n), 1.0)}
