"""Frame generation for the ``synthetic_hands`` builder: sample scenes, render in jitted batches.

``render_split(cfg, split)`` yields ``(key, frame)`` in record order (key = local sequence
number * frames + frame index), frame being a dict of numpy arrays (see the builder's
feature table). Batching (whole sequences per batch, the last one padded) is
:func:`data_pipelines.builtin.render_sequences`.
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import numpy as np

from data_pipelines import builtin
from handjax.mano.builtin import builtin_mano_arrays

from . import renderer
from . import scene as scene_lib

_PER_SEQUENCE = ("colors", "light_dir", "light_color", "ambient", "diffuse", "background", "is_right")
_PER_FRAME = ("pose", "betas", "transl", "K", "noise", "annotated")
_LABELS = ("betas", "transl", "K", "is_right", "annotated")  # scene entries stored with each frame


def make_rig() -> scene_lib.HandRig:
    return scene_lib.HandRig.from_arrays(builtin_mano_arrays("right"), renderer.posed_centroid)


def sample_split_sequence(cfg, split: str, number: int, rig: scene_lib.HandRig) -> Dict[str, np.ndarray]:
    """Scene parameters of sequence ``number`` of ``split`` plus its per-frame sensor noise."""
    rng = scene_lib.sequence_rng(cfg.seed, split, number)
    scene_cfg = scene_lib.SceneConfig(frames=cfg.frames, image_size=cfg.image_size,
                                      annotate_every=cfg.annotate_every)
    seq = scene_lib.sample_sequence(rng, rig, scene_cfg)
    return builtin.add_sensor_noise(seq, rng, (cfg.frames, cfg.image_size, cfg.image_size, 3))


def render_split(cfg, split: str) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(key, frame)`` for every frame of ``split`` in record order (rendering of batch
    i + 1 is dispatched before the frames of batch i are handed out)."""
    rig = make_rig()
    models = renderer.builtin_models()
    return builtin.render_sequences(
        cfg, split, dataset="synthetic_hands", sequences=builtin.split_sequences(cfg, split),
        sample=lambda number: sample_split_sequence(cfg, split, number, rig), per_frame=_PER_FRAME,
        per_sequence=_PER_SEQUENCE, not_rendered=("annotated",), labels=_LABELS,
        render=lambda inputs: renderer.render_batch(models, inputs, cfg.image_size))
