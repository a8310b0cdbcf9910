"""Subjects and sequences of the ``identities`` dataset (pure numpy + a MANO joints pass).

A subject is a RIGHT hand with fixed betas and a fixed skin albedo. Its sequences are
``synthetic_hands`` sequences (motion, camera, light, background drawn per sequence) whose
betas and skin colours are replaced by the subject's; the translation is corrected so the
hand lands on the same image point.

Shape spread: subject betas are drawn uniformly in [-BETA_RANGE, BETA_RANGE] and, to keep
subjects apart, each subject takes the best of ``CANDIDATES`` draws: the one whose
:func:`bone_lengths_px` differ most (max over bones) from every earlier subject's. Bone
lengths are measured in pixels of a hand crop (the hand's wrist -> middle-tip length spans
``crop_size / bbox_pad`` pixels, TempCLR-style crops), i.e. after the crop has removed the
overall scale: what remains visible in a crop is the shape's proportions.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from data_pipelines.synthetic_hands import scene as hand_scene

BETA_RANGE = 3.0
CANDIDATES = 16
# Parent of each joint in the 21-joint OpenPose / "freihand" order (0 wrist, then 4 per finger).
PARENTS = (0, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)
SPLIT_CODES = {"train": 0, "test": 1}
_SALT = 0x1D5


def bone_lengths_px(joints: np.ndarray, crop_size: int, bbox_pad: float = 1.5) -> np.ndarray:
    """Bone lengths (..., 20) in crop pixels of rest-pose joints (..., 21, 3) ("freihand"
    order): each bone / (wrist -> middle-tip length) * crop_size / bbox_pad."""
    joints = np.asarray(joints, np.float64)
    bones = np.linalg.norm(joints[..., 1:, :] - joints[..., list(PARENTS[1:]), :], axis=-1)
    length = np.linalg.norm(joints[..., 12, :] - joints[..., 0, :], axis=-1)
    return bones / length[..., None] * (crop_size / bbox_pad)


def sample_subject_betas(seed: int, num_subjects: int, rest_joints_fn: Callable[[np.ndarray], np.ndarray],
                         crop_size: int, num_betas: int = 10) -> np.ndarray:
    """(num_subjects, num_betas) float32 betas, spread apart (see module docstring).

    rest_joints_fn(betas (N, B)) -> (N, 21, 3) rest-pose joints ("freihand" order).
    Subject s depends only on (seed, subjects 0..s-1).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SALT]))
    chosen, lengths = [], []
    for _ in range(num_subjects):
        cand = rng.uniform(-BETA_RANGE, BETA_RANGE, size=(CANDIDATES, num_betas)).astype(np.float32)
        cand_len = bone_lengths_px(rest_joints_fn(cand), crop_size)
        if lengths:
            gap = np.abs(cand_len[:, None] - np.stack(lengths)[None]).max(-1).min(-1)
            best = int(np.argmax(gap))
        else:
            best = 0
        chosen.append(cand[best])
        lengths.append(cand_len[best])
    return np.stack(chosen)


def subject_colors(seed: int, subject_id: int, rig: hand_scene.HandRig) -> np.ndarray:
    """(778, 3) float32 skin albedo of a subject (fixed across its sequences)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SALT, 1, int(subject_id)]))
    return hand_scene.sample_skin_colors(rng, rig.rest_vertices, rig.rest_normals, rig.space.palm).astype(np.float32)


def sequence_rng(seed: int, split: str, number: int) -> np.random.Generator:
    """The generator of sequence ``number`` (within its split) of ``split``."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SALT, 2, SPLIT_CODES[split], int(number)]))


def sample_sequence(rng: np.random.Generator, rig: hand_scene.HandRig, betas: np.ndarray, colors: np.ndarray,
                    frames: int, image_size: int, annotate_every: int) -> Dict[str, np.ndarray]:
    """One sequence of a subject: ``synthetic_hands.scene.sample_sequence`` (right hand) with
    the subject's betas (10,) and colours (778, 3); same keys and shapes as there."""
    cfg = hand_scene.SceneConfig(frames=frames, image_size=image_size, annotate_every=annotate_every,
                                 left_fraction=0.0)
    seq = hand_scene.sample_sequence(rng, rig, cfg)
    subject = np.repeat(np.asarray(betas, np.float32)[None], frames, axis=0)
    before = np.asarray(rig.centroid_fn(seq["pose"], seq["betas"]), np.float64)
    after = np.asarray(rig.centroid_fn(seq["pose"], subject), np.float64)
    seq["transl"] = (seq["transl"].astype(np.float64) + before - after).astype(np.float32)
    seq["betas"] = subject
    seq["colors"] = np.asarray(colors, np.float32)
    return seq
