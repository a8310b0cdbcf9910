"""Training summaries shared by the systems (host side, uint8 RGB panels for TensorBoard / PNG)."""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

WEAK_PERSPECTIVE_DEPTH = 20.0  # metres: a far pinhole camera that reproduces an affine (weak-perspective) camera


def reprojection_summary(predict_hand: Callable, faces, image_size: int, num_images: int = 4,
                         min_display: int = 128) -> Callable:
    """``summarize(model, batch) -> {"reprojection": (N, H, 3 W, 3) uint8}``: crop with the ground-truth joints |
    predicted joints | predicted mesh over the crop.

    predict_hand(model, images) -> HandOutput (``handjax.models.hand_output``) with joints in the
    batch's joint order (the skeleton is drawn in the OpenPose / FreiHAND order) and vertices;
    faces: (F, 3) of its mesh. Crops smaller than ``min_display`` pixels are shown enlarged by an
    integer factor (nearest neighbour), with the skeletons and the mesh drawn at display resolution.
    Affine crop cameras are rendered as a far pinhole camera (``WEAK_PERSPECTIVE_DEPTH``).
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
        out = predict_hand(model, images)
        # the crop camera at display resolution, as a far pinhole camera (focal: depth x pixel scale)
        cam = out.camera.at[:, :2].multiply(zoom).at[:, :2, 3].add((zoom - 1) / 2.0)
        focal = cam[:, 0, 0] * WEAK_PERSPECTIVE_DEPTH
        K, t = affine_to_perspective(cam, focal, jnp.full((cam.shape[0], 2), to_display(image_size / 2)))
        return out, K, out.vertices + t[:, None]

    def summarize(model, batch):
        images = jnp.asarray(batch["image"][:num_images])
        out, K, verts = predict(model, images)
        rendered = render.render_mesh_batch(verts, faces, K, (size, size),
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
