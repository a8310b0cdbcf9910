"""DIGIT's 33-class part segmentation of InterHand2.6M frames, rendered from the NeuralAnnot MANO fits.

DIGIT's masks (render_mano_ih) cannot be redistributed, so the builder renders them itself,
at BUILD time (one PNG per record, at the image's resolution). Measured on this project's
2-core CPU (shared, load ~8), jit-compiled :func:`handjax.render.part_segmentation` of two
sealed hands (3108 faces) at 512x334 takes ~0.45-0.6 s per frame with the hands ~1 m away
(~13k hand pixels) and ~0.8-1.3 s for close-ups (~25k hand pixels), plus ~10 s of compilation
per image size; each build prints and stores its own measured mean. That is too much to pay
again for every sample of every epoch in the input pipeline, hence build time. The renderer
runs on whatever JAX backend is active.

Conventions (render_mano_ih, see ``shared/reference/digit.md`` section 3):
* classes 0 background, 1..16 right-hand parts (face label + 1), 17..32 left-hand parts
  (face label + 17); both hands in ONE z-buffer, so a pixel shows the visible (nearer) part;
* each hand's wrist is sealed with a fan (palm label) around the mean of DIGIT's 16 wrist
  boundary vertices; the left hand uses the right faces with reversed winding;
* a hand is rendered when the frame has a NeuralAnnot fit for it; ``has_part_seg`` follows
  DIGIT's ``mano_valid``: interacting frames need both fits, single-hand frames the fit of
  that hand and none of the other;
* vertices: MANO (``flat_hand_mean=False``) with the world-frame fit (pose, shape, trans in
  metres), moved to the camera with the same R, t as the joints; projected with K
  (focal, princpt) at pixel centres. DIGIT's neural_renderer K carried a skew of 1.0 (a bug
  noted in digit.md); it is not reproduced.
* face part labels: each face takes the joint with the largest summed LBS weight over its
  vertices of the given MANO model, mapped to DIGIT's 16 parts
  (:func:`handjax.mano.builtin.face_part_labels`), since DIGIT's ``sealed_faces.npy`` labels
  derive from the licensed MANO model.

A real MANO model is required: the builder renders only with ``mano_dir`` (official
MANO_{RIGHT,LEFT}.pkl); without it it stores empty masks with ``has_part_seg`` False and says so.
"""
from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import numpy as np

from . import layout


def digit_mask_valid(hand_type: str, has_fit: Dict[str, bool]) -> bool:
    """DIGIT's ``mano_valid`` (= ``segm_valid``) of a frame from its hand type and fits."""
    if hand_type == "interacting":
        return has_fit["right"] and has_fit["left"]
    other = "left" if hand_type == "right" else "right"
    return has_fit[hand_type] and not has_fit[other]


class PartSegRenderer:
    """Renders (H, W) uint8 class maps from world-frame NeuralAnnot fits.

    ``right`` / ``left``: :class:`handjax.mano.ManoModel` of each side (the left one with
    InterHand2.6M's shapedirs fix when it applies); ``source`` names them.
    """

    def __init__(self, right, left, source: str):
        import jax.numpy as jnp

        from handjax.mano.builtin import face_part_labels
        from handjax.render import seal_mano

        self.models = {"right": right, "left": left}
        self.source = source
        labels = face_part_labels(np.asarray(right.faces), np.asarray(right.lbs_weights))
        _, self.faces, self.face_labels = seal_mano(right.v_template, right.faces, jnp.asarray(labels, jnp.int32))
        self._render = _jit_render()
        self._forward = _jit_forward()

    def camera_vertices(self, hand: str, pose_world, betas, trans_world, camera: "layout.Camera") -> np.ndarray:
        """(778, 3) camera-frame metres of one hand's world-frame fit (pose (48,) with the hand
        part relative to the mean pose, betas (10,), trans (3,) world metres)."""
        verts_world = np.asarray(self._forward(self.models[hand], np.asarray(pose_world, np.float32),
                                               np.asarray(betas, np.float32), np.asarray(trans_world, np.float32)),
                                 np.float64)
        return camera.from_world(verts_world * 1000.0)  # Camera.from_world takes world millimetres

    def render(self, verts: Dict[str, Optional[np.ndarray]], K, image_size: Tuple[int, int]) -> np.ndarray:
        """(H, W) uint8 classes 0..32 of the hands in ``verts`` (a None hand is not drawn)."""
        zeros = np.zeros((self.models["right"].num_verts, 3), np.float32)
        vr, vl = (zeros if verts[h] is None else np.asarray(verts[h], np.float32) for h in layout.HANDS)
        out = self._render(vr, vl, verts["right"] is not None, verts["left"] is not None,
                           np.asarray(K, np.float32), self.faces, self.face_labels, tuple(int(s) for s in image_size))
        return np.asarray(out, np.uint8)


@functools.lru_cache(maxsize=None)
def _jit_forward():
    import jax

    from handjax.mano import from_axis_angle, mano_forward

    @jax.jit
    def forward(model, pose, betas, transl):
        rot = from_axis_angle(model, pose[None], flat_hand_mean=False)
        return mano_forward(model, rot, betas[None], transl[None], "ih26m").vertices[0]

    return forward


@functools.lru_cache(maxsize=None)
def _jit_render():
    import jax
    import jax.numpy as jnp

    from handjax.render import MANO_WRIST_BOUNDARY_IDS, part_segmentation

    @functools.partial(jax.jit, static_argnames=("image_size",))
    def render(vr, vl, right_valid, left_valid, K, faces, face_labels, image_size):
        loop = jnp.asarray(MANO_WRIST_BOUNDARY_IDS)
        seal = lambda v: jnp.concatenate([v, jnp.mean(v[loop], axis=0, keepdims=True)])  # noqa: E731
        return part_segmentation(seal(vr), seal(vl), faces, face_labels, K, image_size, right_valid, left_valid)

    return render


def load_renderer(mano_dir: str, fix_left_shapedirs: bool = True) -> PartSegRenderer:
    """The renderer of the official MANO_{RIGHT,LEFT}.pkl in ``mano_dir`` (left fix as InterHand2.6M)."""
    from handjax.mano import apply_left_shapedirs_fix, load_model

    right, left = load_model(mano_dir, "right"), load_model(mano_dir, "left")
    if fix_left_shapedirs and layout.needs_left_shapedirs_fix(right.shapedirs, left.shapedirs):
        left = apply_left_shapedirs_fix(left)
    return PartSegRenderer(right, left, str(mano_dir))
