"""Frame generation of the ``two_hands`` builder: sample scenes, render in jitted batches.

``render_split(cfg, split)`` yields ``(key, frame)`` in record order (key = local sequence
number * frames + frame index), frame being a dict of numpy arrays (the builder's feature
table). Batching (whole sequences per batch, the last one padded) is
:func:`data_pipelines.builtin.render_sequences`.
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import numpy as np

from data_pipelines import builtin
from data_pipelines.synthetic_hands import generate as hand_generate
from data_pipelines.synthetic_hands import renderer as hand_renderer
from data_pipelines.synthetic_hands import scene as hand_scene
from data_pipelines.transforms import project_points, two_hand_labels

from . import render
from . import scene as scene_lib

_PER_SEQUENCE = ("colors", "light_dir", "light_color", "ambient", "diffuse", "background", "kind")
_PER_FRAME = ("pose", "betas", "transl", "K", "noise", "annotated")
_LABELS = ("betas", "transl", "K", "annotated", "kind")  # scene entries stored with each frame


def scene_config(cfg) -> scene_lib.TwoHandSceneConfig:
    return scene_lib.TwoHandSceneConfig(frames=cfg.frames, height=cfg.image_size, annotate_every=cfg.annotate_every)


def sample_split_sequence(cfg, split: str, number: int, rig: hand_scene.HandRig) -> Dict[str, np.ndarray]:
    """Scene parameters of sequence ``number`` of ``split`` plus its per-frame sensor noise."""
    rng = hand_scene.sequence_rng(cfg.seed, split, number)
    scfg = scene_config(cfg)
    seq = scene_lib.sample_sequence(rng, rig, render.right_vertices, scfg, scene_lib.kind_of(number))
    return builtin.add_sensor_noise(seq, rng, (cfg.frames, scfg.height, scfg.width, 3))


def frame_labels(frame: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The two-hand labels of a rendered frame (validity, boxes, hand type, interaction)."""
    height, width = frame["image"].shape[:2]
    return two_hand_labels(frame["joints2d"], frame["joints3d"], project_points(frame["vertices"], frame["K"]),
                           float(frame["hand_distance"]), height, width)


def render_split(cfg, split: str) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(key, frame)`` for every frame of ``split`` in record order (rendering of batch
    i + 1 is dispatched before the frames of batch i are handed out)."""
    rig = hand_generate.make_rig()
    models = hand_renderer.builtin_models()
    size = (cfg.image_size, scene_lib.person_width(cfg.image_size))
    return builtin.render_sequences(
        cfg, split, dataset="two_hands", sequences=builtin.split_sequences(cfg, split),
        sample=lambda number: sample_split_sequence(cfg, split, number, rig), per_frame=_PER_FRAME,
        per_sequence=_PER_SEQUENCE, not_rendered=("annotated", "kind"), labels=_LABELS,
        render=lambda inputs: render.render_batch(models, inputs, size), finish=frame_labels)
