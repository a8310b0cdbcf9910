"""DIGIT-style per-pixel hand part segmentation (render_mano_ih conventions).

* 16 parts per hand; face labels are an input array (F,) in 0..15.
* Classes: 0 background, 1..16 right hand (face label + 1), 17..32 left hand
  (face label + 17). Both hands are rasterised together in one z-buffer, so each
  pixel shows the visible (modal) part.
* The MANO wrist is "sealed" (:func:`seal_wrist`): one vertex at the mean of the
  wrist-boundary vertices and a fan of faces (label 8, palm) closing the hole.
* The left hand uses the right hand's faces with reversed winding (``[1, 0, 2]``).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from handjax.render.rasterize import DEFAULT_FACE_CHUNK, DEFAULT_NEAR, check_mesh, visible_faces, visible_faces_batch

NUM_PARTS = 16
PALM_LABEL = 8
NUM_CLASSES = 1 + 2 * NUM_PARTS  # 33
RIGHT_OFFSET = 1
LEFT_OFFSET = 1 + NUM_PARTS  # 17
# The 16 MANO wrist-boundary vertex ids used by render_mano_ih / DIGIT for the seal.
MANO_WRIST_BOUNDARY_IDS = (108, 79, 78, 121, 214, 215, 279, 239, 234, 92, 38, 122, 118, 117, 119, 120)


def _static_faces(faces) -> np.ndarray:
    try:
        arr = np.asarray(faces)
    except Exception as err:  # noqa: BLE001
        raise TypeError("faces must be a concrete (non-traced) integer array for seal_wrist") from err
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"faces must be an integer array of shape (F, 3), got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def boundary_loop(faces, boundary_ids: Sequence[int]) -> np.ndarray:
    """Order ``boundary_ids`` along the mesh boundary, following the faces' winding.

    A boundary edge is a directed face edge (a, b) whose reverse (b, a) is in no
    face. Starting at ``boundary_ids[0]`` the loop follows boundary edges
    a -> b; it must visit every id exactly once and close. Raises ValueError
    otherwise. Returns (n,) int64 vertex ids in loop order.
    """
    faces = _static_faces(faces)
    ids = [int(i) for i in boundary_ids]
    if len(ids) < 3 or len(set(ids)) != len(ids):
        raise ValueError(f"boundary_ids must hold >= 3 distinct vertex ids, got {ids}")
    directed = set(map(tuple, np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).tolist()))
    id_set = set(ids)
    nxt = {}
    for a, b in directed:
        if a in id_set and b in id_set and (b, a) not in directed:
            if a in nxt:
                raise ValueError(f"boundary_ids: vertex {a} has several outgoing boundary edges (non-manifold)")
            nxt[a] = b
    loop = [ids[0]]
    while len(loop) <= len(ids):
        a = loop[-1]
        if a not in nxt:
            raise ValueError(f"boundary_ids: vertex {a} has no boundary edge to another boundary id")
        b = nxt[a]
        if b == loop[0]:
            break
        loop.append(b)
    if len(loop) != len(ids) or set(loop) != id_set or nxt.get(loop[-1]) != loop[0]:
        raise ValueError(f"boundary_ids do not form one closed boundary loop of the mesh: {ids}")
    return np.asarray(loop, np.int64)


def seal_wrist(verts: jnp.ndarray, faces, boundary_ids: Sequence[int] = MANO_WRIST_BOUNDARY_IDS):
    """Close a boundary loop with a fan: returns (verts (V+1, 3), faces (F+n, 3) int32).

    The new vertex V is the mean of the ``boundary_ids`` vertices; for each
    boundary edge a -> b (as wound in the existing faces) the fan face is
    ``(b, a, V)``, so the closed mesh is consistently oriented. ``verts`` may be
    traced (any leading batch dims: (..., V, 3)); ``faces`` must be concrete.
    Fan faces follow the loop order starting at ``boundary_ids[0]``.
    """
    faces_np = _static_faces(faces)
    loop = boundary_loop(faces_np, boundary_ids)
    verts = jnp.asarray(verts)
    n_verts = verts.shape[-2]
    if loop.max() >= n_verts or faces_np.max() >= n_verts:
        raise ValueError(f"boundary_ids / faces index past the {n_verts} vertices of verts")
    centre = jnp.mean(verts[..., loop, :], axis=-2, keepdims=True)
    fan = np.stack([np.roll(loop, -1), loop, np.full_like(loop, n_verts)], axis=1)
    sealed_faces = np.concatenate([faces_np, fan]).astype(np.int32)
    return jnp.concatenate([verts, centre], axis=-2), jnp.asarray(sealed_faces)


def seal_face_labels(face_labels, num_fan_faces: int = len(MANO_WRIST_BOUNDARY_IDS)) -> jnp.ndarray:
    """Append ``num_fan_faces`` palm labels (8) to per-face labels (F,) -> (F + n,)."""
    labels = jnp.asarray(face_labels)
    return jnp.concatenate([labels, jnp.full((num_fan_faces,), PALM_LABEL, labels.dtype)])


def mirror_faces(faces) -> jnp.ndarray:
    """Reverse the winding of faces (F, 3): columns ``[1, 0, 2]`` (left hand from right faces)."""
    return jnp.asarray(faces)[:, jnp.array([1, 0, 2])]


def _two_hand_mesh(verts_right, verts_left, faces, right_valid, left_valid):
    """Concatenate both hands (left: mirrored faces, offset ids); a missing hand moves
    behind the camera, where it is never rasterised. -> verts (2V, 3), faces (2F, 3)."""
    behind = jnp.array([0.0, 0.0, -1.0], verts_right.dtype)
    right = jnp.where(jnp.asarray(right_valid), verts_right, behind)
    left = jnp.where(jnp.asarray(left_valid), verts_left, behind)
    both = jnp.concatenate([faces.astype(jnp.int32), mirror_faces(faces).astype(jnp.int32) + verts_right.shape[-2]])
    return jnp.concatenate([right, left], axis=-2), both


def classes_from_face_id(face_id: jnp.ndarray, face_labels: jnp.ndarray) -> jnp.ndarray:
    """Class map from a two-hand face-id map (right faces 0..F-1, left F..2F-1) -> int32 0..32."""
    n_faces = face_labels.shape[0]
    labels = face_labels.astype(jnp.int32)[jnp.clip(face_id, 0, 2 * n_faces - 1) % n_faces]
    classes = jnp.where(face_id < n_faces, labels + RIGHT_OFFSET, labels + LEFT_OFFSET)
    return jnp.where(face_id >= 0, classes, 0).astype(jnp.int32)


def _check_parts_inputs(verts_right, verts_left, faces, face_labels, K, batched):
    check_mesh(verts_right, faces, K, batched)
    check_mesh(verts_left, faces, K, batched)
    if verts_right.shape != verts_left.shape:
        raise ValueError(
            f"verts_right and verts_left must have the same shape, got {verts_right.shape} vs {verts_left.shape}"
        )
    if face_labels.shape != faces.shape[:1]:
        raise ValueError(f"face_labels must have shape ({faces.shape[0]},) like faces, got {face_labels.shape}")


def part_segmentation(
    verts_right: jnp.ndarray,
    verts_left: jnp.ndarray,
    faces: jnp.ndarray,
    face_labels: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    right_valid=True,
    left_valid=True,
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
) -> jnp.ndarray:
    """Render the class map (H, W) int32 in 0..32 of a right and a left hand together.

    verts_right, verts_left (V, 3) camera frame (already sealed if wanted);
    faces (F, 3) the right-hand faces (the left hand uses :func:`mirror_faces`);
    face_labels (F,) in 0..15. ``right_valid`` / ``left_valid`` (bool, may be
    traced) drop a missing hand. Non-differentiable. See :func:`part_segmentation_batch`.
    """
    verts_right, verts_left = jnp.asarray(verts_right), jnp.asarray(verts_left)
    faces, face_labels, K = jnp.asarray(faces), jnp.asarray(face_labels), jnp.asarray(K)
    _check_parts_inputs(verts_right, verts_left, faces, face_labels, K, batched=False)
    verts, both = _two_hand_mesh(verts_right, verts_left, faces, right_valid, left_valid)
    return classes_from_face_id(visible_faces(verts, both, K, image_size, face_chunk, near), face_labels)


def part_segmentation_batch(
    verts_right: jnp.ndarray,
    verts_left: jnp.ndarray,
    faces: jnp.ndarray,
    face_labels: jnp.ndarray,
    K: jnp.ndarray,
    image_size: Sequence[int],
    right_valid=True,
    left_valid=True,
    face_chunk: int = DEFAULT_FACE_CHUNK,
    near: float = DEFAULT_NEAR,
) -> jnp.ndarray:
    """Batched :func:`part_segmentation`: verts (B, V, 3), K (3, 3) or (B, 3, 3), valid
    flags scalar or (B,). Returns (B, H, W) int32."""
    verts_right, verts_left = jnp.asarray(verts_right), jnp.asarray(verts_left)
    faces, face_labels, K = jnp.asarray(faces), jnp.asarray(face_labels), jnp.asarray(K)
    _check_parts_inputs(verts_right, verts_left, faces, face_labels, K, batched=True)
    rv = jnp.broadcast_to(jnp.asarray(right_valid), verts_right.shape[:1])[:, None, None]
    lv = jnp.broadcast_to(jnp.asarray(left_valid), verts_left.shape[:1])[:, None, None]
    verts, both = _two_hand_mesh(verts_right, verts_left, faces, rv, lv)
    return classes_from_face_id(visible_faces_batch(verts, both, K, image_size, face_chunk, near), face_labels)


def flip_part_classes(classes: jnp.ndarray) -> jnp.ndarray:
    """Swap right (1..16) and left (17..32) classes, as DIGIT does for flipped images."""
    classes = jnp.asarray(classes)
    right = (classes >= RIGHT_OFFSET) & (classes < LEFT_OFFSET)
    left = classes >= LEFT_OFFSET
    return jnp.where(right, classes + NUM_PARTS, jnp.where(left, classes - NUM_PARTS, classes))


def seal_mano(verts: jnp.ndarray, faces, face_labels) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Seal a MANO hand (778 verts) at the DIGIT wrist loop: (verts 779, faces 1554, labels 1554)."""
    sealed_v, sealed_f = seal_wrist(verts, faces, MANO_WRIST_BOUNDARY_IDS)
    return sealed_v, sealed_f, seal_face_labels(face_labels, len(MANO_WRIST_BOUNDARY_IDS))
