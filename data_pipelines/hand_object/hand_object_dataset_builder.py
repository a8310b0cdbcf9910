"""tfds builder of ``hand_object``: rendered videos of a right hand holding a textured rigid
object (no TensorFlow).

Each record is ONE frame; sequences are contiguous runs of records (``disable_shuffling``)
and ``info.metadata['index'][split]`` holds sequence_id / frame_index / annotated in
record order (``object_id`` is a feature of every record). The canonical object meshes are stored in the metadata
(``info.metadata['objects']``: names, vertices, faces) and read back with
:func:`load_object_meshes`.

Features (S = image_size; camera frame OpenCV, metres; pixel centre of (row i, col j) at
(x=j, y=i)); the hand features are those of ``synthetic_hands``:

===============  ==================  ====================================================
image            (S, S, 3) uint8     PNG; shaded hand + textured object over a background
mask             (S, S, 1) uint8     PNG; 255 on hand OR object pixels (hand + object mask)
hand_mask        (S, S, 1) uint8     PNG; 255 where the hand is visible (object in front
                                     of the hand hides it)
object_mask      (S, S, 1) uint8     PNG; 255 where the object is visible
part_seg         (S, S, 1) uint8     PNG; DIGIT parts 1..16 of the VISIBLE hand, 0 elsewhere
joints2d         (21, 2) float32     pixels, = project_perspective(joints3d, K)
joints3d         (21, 3) float32     camera frame, handjax "freihand" convention
vertices         (778, 3) float32    camera frame
mano_pose        (48,) float32       axis-angle, flat hand mean, 0:3 global orientation
betas            (10,) float32
transl           (3,) float32        mano_forward(right model, pose, betas, transl) = vertices
K                (3, 3) float32      pinhole intrinsics, fixed within a sequence
is_right         () bool             always True (handobjectconsist uses right hands only)
sequence_id      () int64            unique across splits (test ids follow the train ids)
frame_index      () int64            0..T-1
annotated        () bool             frames 0, k, 2k, ... and the last (labels stored for all)
object_id        () int64            index into OBJECT_NAMES (box, cylinder, sphere, bottle),
                                     fixed within a sequence
object_rot       (3, 3) float32      object -> camera rotation
object_transl    (3,) float32        object -> camera translation (metres)
object_vertices  (Vo, 3) float32     camera frame = canonical[object_id] @ object_rot.T
                                     + object_transl (Vo = objects.NUM_VERTICES)
===============  ==================  ====================================================

Build: ``python -m data_pipelines.hand_object.build --config tiny|default [...]`` or
:func:`ensure_built`. The same config and seed give an identical dataset.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import builtin

from . import objects

NAME = "hand_object"
VERSION = "1.0.0"
SPLITS = builtin.SPLITS


@dataclasses.dataclass
class HandObjectConfig(builtin.SequencesConfig):
    """Size of the generated dataset. ``test_sequences`` sequences form the test split."""


BASE_CONFIGS = {
    "tiny": HandObjectConfig(
        name="tiny", description="4 train + 2 test sequences x 6 frames at 64x64 (tests).",
        num_sequences=4, test_sequences=2, frames=6, image_size=64, annotate_every=3, render_batch=12),
    "default": HandObjectConfig(
        name="default", description="240 train + 32 test sequences x 16 frames at 64x64, every 4th annotated.",
        num_sequences=240, test_sequences=32, frames=16, image_size=64, annotate_every=4, render_batch=64),
}
OVERRIDABLE = builtin.SEQUENCE_SIZES


def make_config(base: str = "default", **overrides) -> HandObjectConfig:
    """``BASE_CONFIGS[base]`` with size overrides (see :func:`data_pipelines.builtin.derive_config`)."""
    return builtin.derive_config(NAME, BASE_CONFIGS, base, OVERRIDABLE, builtin.SEQUENCE_SHORT,
                                 builtin.SEQUENCE_MINIMUM, overrides)


split_sequences = builtin.split_sequences  # (number of sequences, first sequence_id) of a split
split_index = builtin.split_index  # record layout of a split (sequence_id / frame_index / annotated)


def objects_metadata() -> Dict[str, List]:
    """The canonical meshes as JSON-able lists (float32 values are exact in JSON doubles)."""
    meshes = objects.canonical_meshes()
    return {"names": meshes["names"].tolist(), "vertices": meshes["vertices"].astype(np.float64).tolist(),
            "faces": meshes["faces"].tolist()}


def load_object_meshes(builder_dir: str | os.PathLike) -> Dict[str, np.ndarray]:
    """The canonical object meshes stored with a built dataset: names (O,) str, vertices
    (O, Vo, 3) float32 (object frame, metres), faces (Fo, 3) int32 (shared by all objects).
    ``object_vertices`` of a frame = vertices[object_id] @ object_rot.T + object_transl."""
    path = os.path.join(os.fspath(builder_dir), "metadata.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_object_meshes: {path} not found; pass a built hand_object directory "
                                f"(ensure_built(...)'s result)")
    with open(path) as f:
        meta = json.load(f)
    if "objects" not in meta:
        raise KeyError(f"load_object_meshes: {path} has no 'objects' entry (not a hand_object dataset?)")
    obj = meta["objects"]
    missing = [k for k in ("names", "vertices", "faces") if k not in obj]
    if missing:
        raise KeyError(f"load_object_meshes: {path}: 'objects' lacks {missing}")
    verts = np.asarray(obj["vertices"], np.float32)
    faces = np.asarray(obj["faces"], np.int32)
    names = np.asarray(obj["names"])
    if verts.ndim != 3 or verts.shape[0] != len(names) or verts.shape[2] != 3 or faces.ndim != 2 \
            or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= verts.shape[1]:
        raise ValueError(f"load_object_meshes: {path}: inconsistent shapes: names {names.shape}, vertices "
                         f"{verts.shape}, faces {faces.shape}")
    return {"names": names, "vertices": verts, "faces": faces}


def features(size: int) -> tfds.features.FeaturesDict:
    """The features of a hand-object frame at ``size`` x ``size`` (the table above): the
    single-hand ones plus the hand / object masks and the object's pose and vertices."""
    f32, tensor = np.float32, tfds.features.Tensor
    mask = lambda: tfds.features.Image(shape=(size, size, 1), encoding_format="png")  # noqa: E731
    return tfds.features.FeaturesDict({
        **builtin.hand_features(size),
        "hand_mask": mask(),
        "object_mask": mask(),
        "object_id": tensor(shape=(), dtype=np.int64),
        "object_rot": tensor(shape=(3, 3), dtype=f32),
        "object_transl": tensor(shape=(3,), dtype=f32),
        "object_vertices": tensor(shape=(objects.NUM_VERTICES, 3), dtype=f32),
    })


def encode(frame: Dict[str, np.ndarray]) -> Dict:
    """Rendered frame arrays -> tfds example (PNG bytes for the images); ``mask`` is the hand
    OR object mask."""
    example = builtin.encode_hand({**frame, "mask": frame["hand_mask"] | frame["object_mask"]})
    example.update({k: frame[k] for k in ("object_rot", "object_transl", "object_vertices")})
    example["hand_mask"] = builtin.mask_png(frame["hand_mask"])
    example["object_mask"] = builtin.mask_png(frame["object_mask"])
    example["object_id"] = int(frame["object_id"])
    return example


class Builder(builtin.RenderedBuilder):
    """A right hand holding a textured procedural object, rendered with handjax."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = list(BASE_CONFIGS.values())
    OVERRIDABLE = OVERRIDABLE
    GENERATE = "data_pipelines.hand_object.generate"
    pkg_dir_path = epath.Path(__file__).parent

    def features(self, cfg) -> tfds.features.FeaturesDict:
        return features(cfg.image_size)

    def extra_metadata(self, cfg) -> Dict:
        return {"objects": objects_metadata()}

    def encode(self, frame: Dict[str, np.ndarray]) -> Dict:
        return encode(frame)


def get_builder(config: str | HandObjectConfig = "default", data_dir: Optional[str] = None, **overrides) -> Builder:
    """The builder of a config (name or object) plus optional size overrides."""
    return builtin.get_builder(Builder, make_config, config, data_dir, overrides)


def ensure_built(config_name: str = "default", data_dir: Optional[str] = None, **overrides) -> str:
    """Build ``config_name`` (+ overrides) under ``data_dir`` unless it exists; return the
    builder directory ``<data_dir>/hand_object/<config>/<VERSION>``."""
    return builtin.ensure_built(get_builder(config_name, data_dir, **overrides))
