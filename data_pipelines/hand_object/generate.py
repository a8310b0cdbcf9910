"""Frame generation of the ``hand_object`` builder: sample scenes, render in jitted batches.

``render_split(cfg, split)`` yields ``(key, frame)`` in record order (key = local sequence
number * frames + frame index). :func:`stack_sequences` and :func:`render_ahead` are the
generic batching pieces (also used by the ``identities`` builder): batches hold whole
sequences, the last one padded by repeating its last frame so the renderer compiles once,
and each batch is dispatched before the previous one is read back.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

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


def stack_sequences(seqs: List[Dict[str, np.ndarray]], per_frame: Sequence[str], per_sequence: Sequence[str],
                    frames: int, batch: int) -> Dict[str, np.ndarray]:
    """Per-frame arrays (batch, ...) of whole sequences: per-frame entries concatenated,
    per-sequence entries repeated ``frames`` times, padded by repeating the last frame."""
    out = {k: np.concatenate([s[k] for s in seqs]) for k in per_frame}
    for key in per_sequence:
        out[key] = np.concatenate([np.repeat(np.asarray(s[key])[None], frames, axis=0) for s in seqs])
    n = len(seqs) * frames
    if n < batch:
        out = {k: np.concatenate([v, np.repeat(v[-1:], batch - n, axis=0)]) for k, v in out.items()}
    return out


def render_ahead(jobs: Iterable[Tuple[object, Dict[str, np.ndarray]]],
                 render: Callable[[Dict[str, np.ndarray]], Dict]) -> Iterator[Tuple[object, Dict, Dict]]:
    """For each ``(meta, scene)`` job yield ``(meta, scene, rendered)`` with ``rendered`` as
    numpy arrays; batch i + 1 is dispatched (JAX runs asynchronously) before batch i is read
    back, so rendering overlaps the caller's encoding and writing."""
    pending = None
    for meta, scene in jobs:
        job = (meta, scene, render(scene))
        if pending is not None:
            yield pending[0], pending[1], {k: np.asarray(v) for k, v in pending[2].items()}
        pending = job
    if pending is not None:
        yield pending[0], pending[1], {k: np.asarray(v) for k, v in pending[2].items()}


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
    shape_img = (cfg.frames, cfg.image_size, cfg.image_size, 3)
    seq["noise"] = (rng.standard_normal(shape_img) * seq["noise_std"]).astype(np.float32)
    return seq


def render_split(cfg, split: str) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(key, frame)`` for every frame of ``split`` in record order."""
    from .hand_object_dataset_builder import split_sequences

    n_seq, first_id = split_sequences(cfg, split)
    per_batch = max(1, cfg.render_batch // cfg.frames)
    batch = per_batch * cfg.frames
    models = hand_renderer.builtin_models()
    faces = objects.uv_sphere_faces()

    def jobs():
        for start in range(0, n_seq, per_batch):
            numbers = range(start, min(start + per_batch, n_seq))
            seqs = [sample_split_sequence(cfg, split, i) for i in numbers]
            yield numbers, stack_sequences(seqs, PER_FRAME, PER_SEQUENCE, cfg.frames, batch)

    def render(scene):
        inputs = {k: v for k, v in scene.items() if k not in _NOT_RENDERED}
        return renderer.render_batch(models, faces, inputs, cfg.image_size)

    bar = tqdm(total=n_seq * cfg.frames, desc=f"rendering hand_object/{cfg.name}/{split}", unit=" frames",
               leave=False)
    for numbers, scene, rendered in render_ahead(jobs(), render):
        for s, number in enumerate(numbers):
            for t in range(cfg.frames):
                i = s * cfg.frames + t
                frame = {k: v[i] for k, v in rendered.items()}
                frame.update({k: scene[k][i] for k in ("betas", "transl", "K", "is_right", "annotated", "object_id",
                                                      "object_rot", "object_transl", "object_vertices")})
                frame.update(mano_pose=scene["pose"][i], sequence_id=first_id + number, frame_index=t)
                yield number * cfg.frames + t, frame
        bar.update(len(numbers) * cfg.frames)
    bar.close()
