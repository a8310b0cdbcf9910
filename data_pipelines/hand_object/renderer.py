"""Jitted batch renderer of the ``hand_object`` dataset (handjax MANO + handjax.render).

Hand (wrist sealed, as in ``synthetic_hands``) and object are concatenated into ONE mesh and
rasterised with ONE z-buffer pass per frame, so hand-object occlusion is exact. From that
pass: the shaded RGB image (skin albedo on the hand, the procedural texture evaluated at the
interpolated canonical object point on the object), the hand / object masks and the DIGIT
part segmentation of the visible hand pixels.
"""
from __future__ import annotations

import functools
from typing import Dict

import jax
import jax.numpy as jnp

from data_pipelines.synthetic_hands.renderer import HandModels, hand_geometry
from handjax.geometry import project_perspective
from handjax.render import (
    LEFT_OFFSET,
    MANO_WRIST_BOUNDARY_IDS,
    RIGHT_OFFSET,
    composite,
    face_camera,
    fragments_from_face_id,
    interpolate_bary,
    lambertian,
    vertex_normals,
    visible_faces,
)

from .objects import procedural_albedo


def combined_mesh(hand_verts: jnp.ndarray, object_verts: jnp.ndarray, hand_faces: jnp.ndarray,
                  object_faces: jnp.ndarray):
    """One mesh of a hand and an object: (vertices (779 + Vo, 3), faces (Fh + Fo, 3), Fh).

    hand_verts (778, 3) are sealed at the wrist (extra vertex 778 = mean of the wrist loop,
    ``hand_faces`` from :func:`synthetic_hands.renderer.builtin_models`); object vertex i
    becomes vertex 779 + i. Faces ``< Fh`` are the hand's, the others the object's.
    """
    loop = jnp.asarray(MANO_WRIST_BOUNDARY_IDS)
    sealed = jnp.concatenate([hand_verts, jnp.mean(hand_verts[loop], axis=0, keepdims=True)])
    verts = jnp.concatenate([sealed, object_verts])
    faces = jnp.concatenate([hand_faces, object_faces + sealed.shape[0]])
    return verts, faces, hand_faces.shape[0]


def _render_one(hand_verts, joints, obj_verts, obj_canon, K, colors, tex_a, tex_b, tex_cell, tex_wave, light_dir,
                light_color, ambient, diffuse, background, noise, is_right, hand_faces, face_labels, obj_faces,
                image_size):
    """Render one frame; see :func:`render_batch` for shapes."""
    verts, faces, n_hand = combined_mesh(hand_verts, obj_verts, hand_faces, obj_faces)
    loop = jnp.asarray(MANO_WRIST_BOUNDARY_IDS)
    hand_colors = jnp.concatenate([colors, jnp.mean(colors[loop], axis=0, keepdims=True)])
    n_obj = obj_verts.shape[0]
    albedo_attr = jnp.concatenate([hand_colors, jnp.zeros((n_obj, 3), colors.dtype)])
    canon_attr = jnp.concatenate([jnp.zeros_like(hand_colors), obj_canon])
    face_id = visible_faces(verts, faces, K, image_size)
    frags = fragments_from_face_id(verts, faces, K, face_id)
    attrs = jnp.concatenate([albedo_attr, canon_attr, vertex_normals(verts, faces), verts], axis=1)
    values = interpolate_bary(attrs, faces, frags)
    skin, canon, normals, points = values[..., :3], values[..., 3:6], values[..., 6:9], values[..., 9:]
    is_object = face_id >= n_hand
    texture = procedural_albedo(canon, tex_a, tex_b, tex_cell, tex_wave, xp=jnp)
    albedo = jnp.where(is_object[..., None], texture, skin)
    normals = normals / jnp.maximum(jnp.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    shaded = lambertian(face_camera(normals, points), albedo, light_dir, ambient, diffuse) * light_color
    rgb = composite(shaded, frags.mask, background) + noise
    image = jnp.round(jnp.clip(rgb, 0.0, 1.0) * 255.0).astype(jnp.uint8)
    hand_mask = frags.mask & ~is_object
    offset = jnp.where(is_right, RIGHT_OFFSET, LEFT_OFFSET)
    parts = jnp.where(hand_mask, face_labels[jnp.clip(face_id, 0, n_hand - 1)] + offset, 0).astype(jnp.uint8)
    return image, hand_mask, is_object, parts, project_perspective(joints, K)


@functools.partial(jax.jit, static_argnames=("image_size",))
def render_batch(models: HandModels, object_faces: jnp.ndarray, scene: Dict[str, jnp.ndarray], image_size: int
                 ) -> Dict[str, jnp.ndarray]:
    """Render B hand-object frames.

    scene: the hand entries of :func:`synthetic_hands.renderer.render_batch` (pose (B, 48),
    betas (B, 10), transl (B, 3), K (B, 3, 3), is_right (B,), colors (B, 778, 3),
    light_dir (B, 3), light_color (B, 3), ambient (B,), diffuse (B,), background
    (B, S, S, 3), noise (B, S, S, 3)) plus object_vertices (B, Vo, 3) camera frame,
    object_canonical (B, Vo, 3) the same vertices in the object frame, tex_a / tex_b (B, 3),
    tex_cell (B,), tex_wave (B, 4). object_faces (Fo, 3) int32.
    Returns image (B, S, S, 3) uint8, hand_mask / object_mask (B, S, S) bool, part_seg
    (B, S, S) uint8 (visible hand pixels only), joints2d (B, 21, 2), joints3d (B, 21, 3),
    vertices (B, 778, 3).
    """
    verts, joints = hand_geometry(models, scene["pose"], scene["betas"], scene["transl"], scene["is_right"])
    one = functools.partial(_render_one, hand_faces=models.faces, face_labels=models.face_labels,
                            obj_faces=object_faces, image_size=(image_size, image_size))
    per_frame = (verts, joints, scene["object_vertices"], scene["object_canonical"], scene["K"], scene["colors"],
                 scene["tex_a"], scene["tex_b"], scene["tex_cell"], scene["tex_wave"], scene["light_dir"],
                 scene["light_color"], scene["ambient"], scene["diffuse"], scene["background"], scene["noise"],
                 scene["is_right"])
    # lax.map, not vmap: the batched scan-based z-buffer is much slower on CPU (see synthetic_hands).
    image, hand_mask, object_mask, parts, joints2d = jax.lax.map(lambda args: one(*args), per_frame)
    return {"image": image, "hand_mask": hand_mask, "object_mask": object_mask, "part_seg": parts,
            "joints2d": joints2d, "joints3d": joints, "vertices": verts}
