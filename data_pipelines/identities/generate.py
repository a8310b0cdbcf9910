"""Frame generation of the ``identities`` builder: subjects' sequences rendered in jitted
batches with the ``synthetic_hands`` renderer (batching: :func:`data_pipelines.builtin.render_sequences`).

``render_split(cfg, split)`` yields ``(key, frame)`` in record order (key = local sequence
number * frames + frame index).
"""
from __future__ import annotations

import functools
from typing import Dict, Iterator, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import builtin
from data_pipelines.synthetic_hands import renderer
from data_pipelines.synthetic_hands import scene as hand_scene
from handjax.mano import from_axis_angle, mano_forward
from handjax.mano.builtin import builtin_mano_arrays

from . import scene as scene_lib

PER_SEQUENCE = ("colors", "light_dir", "light_color", "ambient", "diffuse", "background", "is_right", "subject_id")
PER_FRAME = ("pose", "betas", "transl", "K", "noise", "annotated")
_LABELS = ("betas", "transl", "K", "is_right", "annotated", "subject_id")  # scene entries stored with each frame


@functools.lru_cache(maxsize=None)
def make_rig() -> hand_scene.HandRig:
    return hand_scene.HandRig.from_arrays(builtin_mano_arrays("right"), renderer.posed_centroid)


@jax.jit
def _rest_joints(model, betas):
    rotmats = from_axis_angle(model, jnp.zeros((betas.shape[0], 48), betas.dtype), flat_hand_mean=True)
    return mano_forward(model, rotmats, betas, None, renderer.CONVENTION).joints


def rest_joints(betas: np.ndarray) -> np.ndarray:
    """(N, 21, 3) zero-pose joints ("freihand" order) of the built-in right hand, betas (N, 10)."""
    return np.asarray(_rest_joints(renderer.builtin_models().right, jnp.asarray(betas, jnp.float32)))


@functools.lru_cache(maxsize=8)
def subject_betas(seed: int, num_subjects: int, crop_size: int) -> np.ndarray:
    """(num_subjects, 10) betas of subject ids 0..num_subjects-1 (train ids first)."""
    return scene_lib.sample_subject_betas(seed, num_subjects, rest_joints, crop_size)


def sample_split_sequence(cfg, split: str, number: int) -> Dict[str, np.ndarray]:
    """Scene parameters of sequence ``number`` of ``split`` (subject entries included) plus
    its per-frame sensor noise."""
    from .identities_dataset_builder import sequence_subject

    subject = sequence_subject(cfg, split, number)
    betas = subject_betas(cfg.seed, cfg.train_subjects + cfg.test_subjects, cfg.crop_size)[subject]
    rig = make_rig()
    rng = scene_lib.sequence_rng(cfg.seed, split, number)
    seq = scene_lib.sample_sequence(rng, rig, betas, scene_lib.subject_colors(cfg.seed, subject, rig), cfg.frames,
                                    cfg.image_size, cfg.annotate_every)
    seq["subject_id"] = np.int64(subject)
    return builtin.add_sensor_noise(seq, rng, (cfg.frames, cfg.image_size, cfg.image_size, 3))


def render_split(cfg, split: str) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(key, frame)`` for every frame of ``split`` in record order."""
    from .identities_dataset_builder import split_sequences

    models = renderer.builtin_models()
    return builtin.render_sequences(
        cfg, split, dataset="identities", sequences=split_sequences(cfg, split),
        sample=lambda number: sample_split_sequence(cfg, split, number), per_frame=PER_FRAME,
        per_sequence=PER_SEQUENCE, not_rendered=("annotated", "subject_id"), labels=_LABELS,
        render=lambda inputs: renderer.render_batch(models, inputs, cfg.image_size))
