"""Frame generation of the ``hand_object`` builder: sample scenes, render in jitted batches.

``render_split(cfg, split)`` yields ``(key, frame)`` in record order (key = local sequence
number * frames + frame index). Batching (whole sequences per batch, the last one padded,
each batch dispatched before the previous one is read back) is
:func:`data_pipelines.builtin.render_sequences`.
"""
from __future__ import annotations

import functools
from typing import Dict, Iterator, Tuple

import numpy as np

from data_pipelines import builtin
from data_pipelines.synthetic_hands import renderer as hand_renderer
from data_pipelines.synthetic_hands import scene as hand_scene
from handjax.mano.builtin import builtin_mano_arrays

from . import objects
from . import renderer
from . import scene as scene_lib

PER_SEQUENCE = ("colors", "light_dir", "light_color", "ambient", "diffuse", "background", "is_right",
                "object_id", "object_canonical", "tex_a", "tex_b", "tex_cell", "tex_wave")
PER_FRAME = ("pose", "betas", "transl", "K", "noise", "annotated", "object_rot", "object_transl",
             "object_vertices")
_NOT_RENDERED = ("annotated", "object_id", "object_rot", "object_transl")
_LABELS = ("betas", "transl", "K", "is_right", "annotated", "object_id", "object_rot", "object_transl",
           "object_vertices")  # scene entries stored with each frame


@functools.lru_cache(maxsize=None)
def make_rig() -> Tuple[hand_scene.HandRig, scene_lib.ShapeModel]:
    arrays = builtin_mano_arrays("right")
    rig = hand_scene.HandRig.from_arrays(arrays, hand_renderer.posed_centroid)
    return rig, scene_lib.ShapeModel.from_arrays(arrays)


def sample_split_sequence(cfg, split: str, number: int) -> Dict[str, np.ndarray]:
    """Scene parameters of sequence ``number`` of ``split`` plus its per-frame sensor noise."""
    rig, shape = make_rig()
    meshes = objects.canonical_meshes()
    rng = scene_lib.sequence_rng(cfg.seed, split, number)
    seq = scene_lib.sample_sequence(rng, rig, shape, meshes, cfg.frames, cfg.image_size, cfg.annotate_every)
    seq["object_canonical"] = meshes["vertices"][int(seq["object_id"])]
    return builtin.add_sensor_noise(seq, rng, (cfg.frames, cfg.image_size, cfg.image_size, 3))


def render_split(cfg, split: str) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(key, frame)`` for every frame of ``split`` in record order."""
    models = hand_renderer.builtin_models()
    faces = objects.uv_sphere_faces()
    return builtin.render_sequences(
        cfg, split, dataset="hand_object", sequences=builtin.split_sequences(cfg, split),
        sample=lambda number: sample_split_sequence(cfg, split, number), per_frame=PER_FRAME,
        per_sequence=PER_SEQUENCE, not_rendered=_NOT_RENDERED, labels=_LABELS,
        render=lambda inputs: renderer.render_batch(models, faces, inputs, cfg.image_size))
