"""Frame generation for the ``synthetic_hands`` builder: sample scenes, render in jitted batches.

``render_split(cfg, split)`` yields ``(key, frame)`` in record order (key = local sequence
number * frames + frame index), frame being a dict of numpy arrays (see the builder's
feature table). Batches hold whole sequences; the last batch is padded (by repeating its
last frame) so every call has the same shape and the renderer compiles once.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import numpy as np
from tqdm.auto import tqdm

from handjax.mano.builtin import builtin_mano_arrays

from . import renderer
from . import scene as scene_lib

_PER_SEQUENCE = ("colors", "light_dir", "light_color", "ambient", "diffuse", "background", "is_right")
_PER_FRAME = ("pose", "betas", "transl", "K", "noise", "annotated")


def make_rig() -> scene_lib.HandRig:
    return scene_lib.HandRig.from_arrays(builtin_mano_arrays("right"), renderer.posed_centroid)


def sample_split_sequence(cfg, split: str, number: int, rig: scene_lib.HandRig) -> Dict[str, np.ndarray]:
    """Scene parameters of sequence ``number`` of ``split`` plus its per-frame sensor noise."""
    rng = scene_lib.sequence_rng(cfg.seed, split, number)
    scene_cfg = scene_lib.SceneConfig(frames=cfg.frames, image_size=cfg.image_size,
                                      annotate_every=cfg.annotate_every)
    seq = scene_lib.sample_sequence(rng, rig, scene_cfg)
    shape = (cfg.frames, cfg.image_size, cfg.image_size, 3)
    seq["noise"] = (rng.standard_normal(shape) * seq["noise_std"]).astype(np.float32)
    return seq


def _stack_frames(seqs: List[Dict[str, np.ndarray]], frames: int, batch: int) -> Dict[str, np.ndarray]:
    """Per-frame arrays (batch, ...) of whole sequences, padded by repeating the last frame."""
    out = {}
    for key in _PER_FRAME:
        out[key] = np.concatenate([s[key] for s in seqs])
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
    for s, number in enumerate(numbers):
        for t in range(cfg.frames):
            i = s * cfg.frames + t
            frame = {k: v[i] for k, v in rendered.items()}
            frame.update(mano_pose=scene["pose"][i], betas=scene["betas"][i], transl=scene["transl"][i],
                         K=scene["K"][i], is_right=scene["is_right"][i], annotated=scene["annotated"][i],
                         sequence_id=first_id + number, frame_index=t)
            yield number * cfg.frames + t, frame


def render_split(cfg, split: str) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(key, frame)`` for every frame of ``split`` in record order.

    Rendering is dispatched asynchronously one batch ahead, so the device renders batch
    i + 1 while the caller encodes and writes the frames of batch i.
    """
    n_seq, first_id = scene_lib.split_sequences(cfg, split)
    seqs_per_batch = max(1, cfg.render_batch // cfg.frames)
    batch = seqs_per_batch * cfg.frames
    rig = make_rig()
    models = renderer.builtin_models()
    bar = tqdm(total=n_seq * cfg.frames, desc=f"rendering {cfg.name}/{split}", unit=" frames", leave=False)
    pending = None
    for start in range(0, n_seq + seqs_per_batch, seqs_per_batch):
        job = None
        if start < n_seq:
            numbers = range(start, min(start + seqs_per_batch, n_seq))
            scene = _stack_frames([sample_split_sequence(cfg, split, i, rig) for i in numbers], cfg.frames, batch)
            inputs = {k: v for k, v in scene.items() if k != "annotated"}
            job = (numbers, scene, renderer.render_batch(models, inputs, cfg.image_size))
        if pending is not None:
            yield from _frames_of(cfg, first_id, *pending)
            bar.update(len(pending[0]) * cfg.frames)
        pending = job
    bar.close()
