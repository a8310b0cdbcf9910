"""Jitted batch renderer of the synthetic hand dataset (handjax MANO + handjax.render).

One call renders B frames at once: MANO forward with the built-in right and left models,
the wrist sealed (DIGIT's fan, so the hand is a closed surface), ONE z-buffer pass per
frame, and from that pass the shaded RGB image, the mask and the DIGIT part segmentation
(0 background, 1..16 right-hand parts, 17..32 left-hand parts). Camera and pixel
conventions are those of :mod:`handjax.render` (OpenCV).
"""
from __future__ import annotations

import functools
from typing import Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from handjax.geometry import project_perspective
from handjax.mano import ManoModel, from_axis_angle, load_model, mano_forward
from handjax.mano.builtin import face_part_labels
from handjax.render import (
    LEFT_OFFSET,
    MANO_WRIST_BOUNDARY_IDS,
    RIGHT_OFFSET,
    composite,
    face_camera,
    fragments_from_face_id,
    interpolate_bary,
    lambertian,
    seal_mano,
    vertex_normals,
    visible_faces,
)

CONVENTION = "freihand"  # joint order (OpenPose) and tip vertices of the stored labels


class HandModels(NamedTuple):
    """Built-in right and left models, sealed faces (F + 16, 3) and their DIGIT labels (F + 16,)."""

    right: ManoModel
    left: ManoModel
    faces: jnp.ndarray
    face_labels: jnp.ndarray


@functools.lru_cache(maxsize=None)
def builtin_models() -> HandModels:
    """The built-in models with the sealed-wrist faces (the right faces serve both sides:
    rasterisation is two-sided and shading flips normals towards the camera)."""
    right, left = load_model(None, "right"), load_model(None, "left")
    labels = face_part_labels(np.asarray(right.faces), np.asarray(right.lbs_weights))
    _, faces, sealed_labels = seal_mano(right.v_template, right.faces, jnp.asarray(labels, jnp.int32))
    return HandModels(right, left, faces, sealed_labels)


def hand_geometry(models: HandModels, pose: jnp.ndarray, betas: jnp.ndarray, transl: jnp.ndarray,
                  is_right: jnp.ndarray):
    """MANO forward of a batch with the side's model -> (vertices (B, 778, 3), joints (B, 21, 3)).

    pose (B, 48) flat-mean axis-angle, betas (B, 10), transl (B, 3), is_right (B,) bool.
    """
    rotmats = from_axis_angle(models.right, pose, flat_hand_mean=True)
    out_r = mano_forward(models.right, rotmats, betas, transl, CONVENTION)
    out_l = mano_forward(models.left, rotmats, betas, transl, CONVENTION)
    pick = is_right[:, None, None]
    return jnp.where(pick, out_r.vertices, out_l.vertices), jnp.where(pick, out_r.joints, out_l.joints)


@jax.jit
def _posed_centroid(model: ManoModel, pose: jnp.ndarray, betas: jnp.ndarray) -> jnp.ndarray:
    out = mano_forward(model, from_axis_angle(model, pose, flat_hand_mean=True), betas, None, CONVENTION)
    return jnp.mean(out.vertices, axis=-2)


def posed_centroid(pose: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Mean vertex (T, 3) of the built-in RIGHT hand posed with pose (T, 48), betas (T, 10),
    zero translation (used to place sampled hands in the image)."""
    return np.asarray(_posed_centroid(builtin_models().right, jnp.asarray(pose), jnp.asarray(betas)))


def _render_one(verts, joints, K, colors, light_dir, light_color, ambient, diffuse, background, noise,
                is_right, faces, face_labels, image_size):
    """Render one frame; see :func:`render_batch` for shapes."""
    loop = jnp.asarray(MANO_WRIST_BOUNDARY_IDS)
    # The seal's extra vertex (index 778) sits at the mean of the wrist loop (handjax.render.seal_wrist).
    sealed = jnp.concatenate([verts, jnp.mean(verts[loop], axis=0, keepdims=True)])
    sealed_colors = jnp.concatenate([colors, jnp.mean(colors[loop], axis=0, keepdims=True)])
    face_id = visible_faces(sealed, faces, K, image_size)
    frags = fragments_from_face_id(sealed, faces, K, face_id)
    attrs = jnp.concatenate([sealed_colors, vertex_normals(sealed, faces), sealed], axis=1)
    values = interpolate_bary(attrs, faces, frags)
    albedo, normals, points = values[..., :3], values[..., 3:6], values[..., 6:]
    normals = normals / jnp.maximum(jnp.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    shaded = lambertian(face_camera(normals, points), albedo, light_dir, ambient, diffuse) * light_color
    rgb = composite(shaded, frags.mask, background) + noise
    image = jnp.round(jnp.clip(rgb, 0.0, 1.0) * 255.0).astype(jnp.uint8)
    offset = jnp.where(is_right, RIGHT_OFFSET, LEFT_OFFSET)
    parts = jnp.where(frags.mask, face_labels[jnp.maximum(face_id, 0)] + offset, 0).astype(jnp.uint8)
    return image, frags.mask, parts, project_perspective(joints, K)


@functools.partial(jax.jit, static_argnames=("image_size",))
def render_batch(models: HandModels, scene: Dict[str, jnp.ndarray], image_size: int) -> Dict[str, jnp.ndarray]:
    """Render B frames.

    scene: pose (B, 48), betas (B, 10), transl (B, 3), K (B, 3, 3), is_right (B,) bool,
    colors (B, 778, 3) albedo in [0, 1], light_dir (B, 3) unit vector towards the light,
    light_color (B, 3), ambient (B,), diffuse (B,), background (B, S, S, 3) in [0, 1],
    noise (B, S, S, 3) additive sensor noise.
    Returns image (B, S, S, 3) uint8, mask (B, S, S) bool, part_seg (B, S, S) uint8,
    joints2d (B, 21, 2), joints3d (B, 21, 3), vertices (B, 778, 3) (float32).
    """
    verts, joints = hand_geometry(models, scene["pose"], scene["betas"], scene["transl"], scene["is_right"])
    one = functools.partial(_render_one, faces=models.faces, face_labels=models.face_labels,
                            image_size=(image_size, image_size))
    # lax.map, not vmap: the batched form of the scan-based z-buffer is ~100x slower on CPU.
    per_frame = (verts, joints, scene["K"], scene["colors"], scene["light_dir"], scene["light_color"],
                 scene["ambient"], scene["diffuse"], scene["background"], scene["noise"], scene["is_right"])
    image, mask, parts, joints2d = jax.lax.map(lambda args: one(*args), per_frame)
    return {"image": image, "mask": mask, "part_seg": parts, "joints2d": joints2d,
            "joints3d": joints, "vertices": verts}
