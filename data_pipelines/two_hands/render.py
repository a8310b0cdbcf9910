"""Jitted batch renderer of the ``two_hands`` dataset (handjax MANO + handjax.render).

One call renders B frames: MANO forward of the built-in right and left models, both hands
sealed at the wrist (DIGIT's fan), concatenated into ONE mesh (right faces first, left faces
with reversed winding after them, as :func:`handjax.render.part_segmentation` does) and
rasterised in ONE z-buffer pass, so mutual occlusion is exact. From that pass come the
shaded RGB image, the hand mask and the 33-class part segmentation (0 background, 1..16
right, 17..32 left; :func:`handjax.render.classes_from_face_id`).
"""
from __future__ import annotations

import functools
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.synthetic_hands.renderer import HandModels, builtin_models
from handjax.geometry import project_perspective
from handjax.mano import from_axis_angle, mano_forward
from handjax.render import (
    MANO_WRIST_BOUNDARY_IDS,
    classes_from_face_id,
    composite,
    face_camera,
    fragments_from_face_id,
    interpolate_bary,
    lambertian,
    mirror_faces,
    vertex_normals,
    visible_faces,
)

CONVENTION = "ih26m"  # per-hand joint order of the stored labels (InterHand2.6M skeleton order)
NUM_VERTS = 778


def two_hand_geometry(models: HandModels, pose: jnp.ndarray, betas: jnp.ndarray, transl: jnp.ndarray):
    """MANO forward of both hands -> vertices (..., 2, 778, 3), joints (..., 42, 3).

    pose (..., 2, 48) flat-mean axis-angle, betas (..., 2, 10), transl (..., 2, 3); hand 0
    uses the right model, hand 1 the left model. Joints: right 0..20 then left 21..41, each
    in the ``"ih26m"`` order (wrists 20 and 41).
    """
    out = []
    for h, model in enumerate((models.right, models.left)):
        rot = from_axis_angle(model, pose[..., h, :], flat_hand_mean=True)
        out.append(mano_forward(model, rot, betas[..., h, :], transl[..., h, :], CONVENTION))
    verts = jnp.stack([o.vertices for o in out], axis=-3)
    joints = jnp.concatenate([o.joints for o in out], axis=-2)
    return verts, joints


@jax.jit
def _right_vertices(models: HandModels, pose: jnp.ndarray, betas: jnp.ndarray) -> jnp.ndarray:
    rot = from_axis_angle(models.right, pose, flat_hand_mean=True)
    return mano_forward(models.right, rot, betas, None, CONVENTION).vertices


def right_vertices(pose: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Vertices (N, 778, 3) of the built-in RIGHT hand posed with pose (N, 48), betas (N, 10),
    zero translation (placement of the sampled hands)."""
    return np.asarray(_right_vertices(builtin_models(), jnp.asarray(pose), jnp.asarray(betas)))


def two_hand_faces(models: HandModels):
    """Faces (2F, 3) of the concatenated sealed hands (right vertices 0..778, left 779..1557)."""
    n = NUM_VERTS + 1
    return jnp.concatenate([models.faces, mirror_faces(models.faces) + n]).astype(jnp.int32)


def _sealed(attr: jnp.ndarray) -> jnp.ndarray:
    """Per-vertex attribute (778, C) plus the seal vertex's (the wrist-loop mean) -> (779, C)."""
    loop = jnp.asarray(MANO_WRIST_BOUNDARY_IDS)
    return jnp.concatenate([attr, jnp.mean(attr[loop], axis=0, keepdims=True)])


def _render_one(verts, joints, K, colors, light_dir, light_color, ambient, diffuse, background, noise,
                faces, face_labels, image_size):
    """Render one frame; see :func:`render_batch` for shapes."""
    sealed = jnp.concatenate([_sealed(verts[0]), _sealed(verts[1])])
    sealed_colors = jnp.concatenate([_sealed(colors[0]), _sealed(colors[1])])
    face_id = visible_faces(sealed, faces, K, image_size)
    frags = fragments_from_face_id(sealed, faces, K, face_id)
    attrs = jnp.concatenate([sealed_colors, vertex_normals(sealed, faces), sealed], axis=1)
    values = interpolate_bary(attrs, faces, frags)
    albedo, normals, points = values[..., :3], values[..., 3:6], values[..., 6:]
    normals = normals / jnp.maximum(jnp.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    shaded = lambertian(face_camera(normals, points), albedo, light_dir, ambient, diffuse) * light_color
    rgb = composite(shaded, frags.mask, background) + noise
    image = jnp.round(jnp.clip(rgb, 0.0, 1.0) * 255.0).astype(jnp.uint8)
    parts = classes_from_face_id(face_id, face_labels).astype(jnp.uint8)
    a, b = verts[0], verts[1]
    d2 = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
    distance = jnp.sqrt(jnp.maximum(jnp.min(d2), 0.0))
    return image, frags.mask, parts, project_perspective(joints, K), distance


@functools.partial(jax.jit, static_argnames=("image_size",))
def render_batch(models: HandModels, scene: Dict[str, jnp.ndarray], image_size) -> Dict[str, jnp.ndarray]:
    """Render B two-hand frames at image_size = (H, W).

    scene: pose (B, 2, 48), betas (B, 2, 10), transl (B, 2, 3), K (B, 3, 3), colors
    (B, 2, 778, 3) albedo in [0, 1], light_dir (B, 3) unit vector towards the light,
    light_color (B, 3), ambient (B,), diffuse (B,), background (B, H, W, 3) in [0, 1],
    noise (B, H, W, 3) additive sensor noise.
    Returns image (B, H, W, 3) uint8, mask (B, H, W) bool, part_seg (B, H, W) uint8,
    joints2d (B, 42, 2), joints3d (B, 42, 3), vertices (B, 2, 778, 3), hand_distance (B,)
    (closest vertices of the two hands, metres).
    """
    verts, joints = two_hand_geometry(models, scene["pose"], scene["betas"], scene["transl"])
    one = functools.partial(_render_one, faces=two_hand_faces(models), face_labels=models.face_labels,
                            image_size=tuple(image_size))
    # lax.map, not vmap: the batched form of the scan-based z-buffer is ~100x slower on CPU.
    per_frame = (verts, joints, scene["K"], scene["colors"], scene["light_dir"], scene["light_color"],
                 scene["ambient"], scene["diffuse"], scene["background"], scene["noise"])
    image, mask, parts, joints2d, distance = jax.lax.map(lambda args: one(*args), per_frame)
    return {"image": image, "mask": mask, "part_seg": parts, "joints2d": joints2d, "joints3d": joints,
            "vertices": verts, "hand_distance": distance}
