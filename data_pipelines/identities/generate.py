"""Frame generation of the ``identities`` builder: subjects' sequences rendered in jitted
batches with the ``synthetic_hands`` renderer (batching from :mod:`data_pipelines.hand_object.generate`).

``render_split(cfg, split)`` yields ``(key, frame)`` in record order (key = local sequence
number * frames + frame index).
"""
from __future__ import annotations

import functools
from typing import Dict, Iterator, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from data_pipelines.hand_object.generate import render_ahead, stack_sequences
from data_pipelines.synthetic_hands import renderer
from data_pipelines.synthetic_hands import scene as hand_scene
from handjax.mano import from_axis_angle, mano_forward
from handjax.mano.builtin import builtin_mano_arrays

from . import scene as scene_lib

PER_SEQUENCE = ("colors", "light_dir", "light_color", "ambient", "diffuse", "background", "is_right", "subject_id")
PER_FRAME = ("pose", "betas", "transl", "K", "noise", "annotated")


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
    shape = (cfg.frames, cfg.image_size, cfg.image_size, 3)
    seq["noise"] = (rng.standard_normal(shape) * seq["noise_std"]).astype(np.float32)
    return seq


def render_split(cfg, split: str) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(key, frame)`` for every frame of ``split`` in record order."""
    from .identities_dataset_builder import split_sequences

    n_seq, first_id = split_sequences(cfg, split)
    per_batch = max(1, cfg.render_batch // cfg.frames)
    batch = per_batch * cfg.frames
    models = renderer.builtin_models()

    def jobs():
        for start in range(0, n_seq, per_batch):
            numbers = range(start, min(start + per_batch, n_seq))
            seqs = [sample_split_sequence(cfg, split, i) for i in numbers]
            yield numbers, stack_sequences(seqs, PER_FRAME, PER_SEQUENCE, cfg.frames, batch)

    def render(scene):
        inputs = {k: v for k, v in scene.items() if k not in ("annotated", "subject_id")}
        return renderer.render_batch(models, inputs, cfg.image_size)

    bar = tqdm(total=n_seq * cfg.frames, desc=f"rendering identities/{cfg.name}/{split}", unit=" frames",
               leave=False)
    for numbers, scene, rendered in render_ahead(jobs(), render):
        for s, number in enumerate(numbers):
            for t in range(cfg.frames):
                i = s * cfg.frames + t
                frame = {k: v[i] for k, v in rendered.items()}
                frame.update({k: scene[k][i] for k in ("betas", "transl", "K", "is_right", "annotated", "subject_id")})
                frame.update(mano_pose=scene["pose"][i], sequence_id=first_id + number, frame_index=t)
                yield number * cfg.frames + t, frame
        bar.update(len(numbers) * cfg.frames)
    bar.close()
