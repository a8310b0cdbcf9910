"""Frame generation of the ``two_hands`` builder: sample scenes, render in jitted batches.

``render_split(cfg, split)`` yields ``(key, frame)`` in record order (key = local sequence
number * frames + frame index), frame being a dict of numpy arrays (the builder's feature
table). Batches hold whole sequences; the last batch is padded (by repeating its last frame)
so every call has the same shape and the renderer compiles once.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import numpy as np
from tqdm.auto import tqdm

from data_pipelines.synthetic_hands import generate as hand_generate
from data_pipelines.synthetic_hands import renderer as hand_renderer
from data_pipelines.synthetic_hands import scene as hand_scene
from data_pipelines.transforms import project_points, two_hand_labels

from . import render
from . import scene as scene_lib

_PER_SEQUENCE = ("colors", "light_dir", "light_color", "ambient", "diffuse", "background", "kind")
_PER_FRAME = ("pose", "betas", "transl", "K", "noise", "annotated")


def scene_config(cfg) -> scene_lib.TwoHandSceneConfig:
    return scene_lib.TwoHandSceneConfig(frames=cfg.frames, height=cfg.image_size, annotate_every=cfg.annotate_every)


def sample_split_sequence(cfg, split: str, number: int, rig: hand_scene.HandRig) -> Dict[str, np.ndarray]:
    """Scene parameters of sequence ``number`` of ``split`` plus its per-frame sensor noise."""
    rng = hand_scene.sequence_rng(cfg.seed, split, number)
    scfg = scene_config(cfg)
    seq = scene_lib.sample_sequence(rng, rig, render.right_vertices, scfg, scene_lib.kind_of(number))
    shape = (cfg.frames, scfg.height, scfg.width, 3)
    seq["noise"] = (rng.standard_normal(shape) * seq["noise_std"]).astype(np.float32)
    return seq


def _stack_frames(seqs: List[Dict[str, np.ndarray]], frames: int, batch: int) -> Dict[str, np.ndarray]:
    """Per-frame arrays (batch, ...) of whole sequences, padded by repeating the last frame."""
    out = {key: np.concatenate([s[key] for s in seqs]) for key in _PER_FRAME}
    for key in _PER_SEQUENCE:
        out[key] = np.concatenate([np.repeat(np.asarray(s[key])[None], frames, axis=0) for s in seqs])
    n = len(seqs) * frames
    if n < batch:
        out = {k: np.concatenate([v, np.repeat(v[-1:], batch - n, axis=0)]) for k, v in out.items()}
    return out


def _frames_of(cfg, first_id: int, numbers: range, scene: Dict[str, np.ndarray], rendered
               ) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """(key, frame) of every real (non-padding) frame of one rendered batch."""
    rendered = {k: np.asarray(v) for k, v in rendered.items()}  # waits for the device
    height, width = rendered["image"].shape[1:3]
    for s, number in enumerate(numbers):
        for t in range(cfg.frames):
            i = s * cfg.frames + t
            frame = {k: v[i] for k, v in rendered.items()}
            K = scene["K"][i]
            frame.update(two_hand_labels(frame["joints2d"], frame["joints3d"], project_points(frame["vertices"], K),
                                         float(frame["hand_distance"]), height, width))
            frame.update(mano_pose=scene["pose"][i], betas=scene["betas"][i], transl=scene["transl"][i], K=K,
                         annotated=scene["annotated"][i], kind=scene["kind"][i], sequence_id=first_id + number,
                         frame_index=t)
            yield number * cfg.frames + t, frame


def render_split(cfg, split: str) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(key, frame)`` for every frame of ``split`` in record order (rendering of batch
    i + 1 is dispatched before the frames of batch i are handed out)."""
    n_seq, first_id = hand_scene.split_sequences(cfg, split)
    seqs_per_batch = max(1, cfg.render_batch // cfg.frames)
    batch = seqs_per_batch * cfg.frames
    rig = hand_generate.make_rig()
    models = hand_renderer.builtin_models()
    size = (cfg.image_size, scene_lib.person_width(cfg.image_size))
    bar = tqdm(total=n_seq * cfg.frames, desc=f"rendering two_hands/{cfg.name}/{split}", unit=" frames", leave=False)
    pending = None
    for start in range(0, n_seq + seqs_per_batch, seqs_per_batch):
        job = None
        if start < n_seq:
            numbers = range(start, min(start + seqs_per_batch, n_seq))
            scene = _stack_frames([sample_split_sequence(cfg, split, i, rig) for i in numbers], cfg.frames, batch)
            inputs = {k: v for k, v in scene.items() if k not in ("annotated", "kind")}
            job = (numbers, scene, render.render_batch(models, inputs, size))
        if pending is not None:
            yield from _frames_of(cfg, first_id, *pending)
            bar.update(len(pending[0]) * cfg.frames)
        pending = job
    bar.close()
