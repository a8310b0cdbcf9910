"""tfds builder of ``hand_object``: rendered videos of a right hand holding a textured rigid
object (no TensorFlow).

Each record is ONE frame; sequences are contiguous runs of records (``disable_shuffling``)
and ``info.metadata['index'][split]`` holds sequence_id / frame_index / annotated /
object_id in record order. The canonical object meshes are stored in the metadata
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
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.synthetic_hands.synthetic_hands_dataset_builder import default_data_dir, png_bytes
from data_pipelines.synthetic_hands.scene import annotated_flags

from . import objects

NAME = "hand_object"
VERSION = "1.0.0"
SPLITS = ("train", "test")


@dataclasses.dataclass
class HandObjectConfig(tfds.core.BuilderConfig):
    """Size of the generated dataset. ``test_sequences`` sequences form the test split."""

    num_sequences: int = 4
    test_sequences: int = 2
    frames: int = 6
    image_size: int = 64
    seed: int = 0
    annotate_every: int = 3
    render_batch: int = 64  # frames rendered per jitted call


BASE_CONFIGS = {
    "tiny": HandObjectConfig(
        name="tiny", description="4 train + 2 test sequences x 6 frames at 64x64 (tests).",
        num_sequences=4, test_sequences=2, frames=6, image_size=64, annotate_every=3, render_batch=12),
    "default": HandObjectConfig(
        name="default", description="240 train + 32 test sequences x 16 frames at 64x64, every 4th annotated.",
        num_sequences=240, test_sequences=32, frames=16, image_size=64, annotate_every=4, render_batch=64),
}
OVERRIDABLE = ("num_sequences", "test_sequences", "frames", "image_size", "seed", "annotate_every")
_SHORT = {"num_sequences": "n", "test_sequences": "nt", "frames": "t", "image_size": "s", "seed": "seed",
          "annotate_every": "k"}
_MINIMUM = {"seed": 0, "test_sequences": 0}


def derive_config(dataset: str, base_configs: Dict, base: str, overridable, short: Dict[str, str],
                  minimum: Dict[str, int], overrides: Dict):
    """A config from a base config name plus integer overrides (None values ignored); with
    overrides it gets a derived name (e.g. ``default_n50_s96``) so each size has its own
    directory. Unknown config names or keys and values below their minimum (default 1) raise."""
    if base not in base_configs:
        raise ValueError(f"unknown {dataset} config {base!r}; known: {sorted(base_configs)}")
    unknown = sorted(set(overrides) - set(overridable))
    if unknown:
        raise ValueError(f"{dataset} make_config: unknown override(s) {unknown}; allowed: {list(overridable)}")
    cfg = base_configs[base]
    changes = {k: int(v) for k, v in overrides.items() if v is not None and int(v) != getattr(cfg, k)}
    if not changes:
        return cfg
    for key, value in changes.items():
        if value < minimum.get(key, 1):
            raise ValueError(f"{dataset} make_config: {key} must be >= {minimum.get(key, 1)}, got {value}")
    name = base + "".join(f"_{short[k]}{changes[k]}" for k in overridable if k in changes)
    return dataclasses.replace(cfg, name=name, description=f"{base} with {changes}", **changes)


def make_config(base: str = "default", **overrides) -> HandObjectConfig:
    """``BASE_CONFIGS[base]`` with size overrides (see :func:`derive_config`)."""
    return derive_config(NAME, BASE_CONFIGS, base, OVERRIDABLE, _SHORT, _MINIMUM, overrides)


def split_sequences(cfg: HandObjectConfig, split: str) -> Tuple[int, int]:
    """(number of sequences, first sequence_id) of a split."""
    if split == "train":
        return cfg.num_sequences, 0
    if split == "test":
        return cfg.test_sequences, cfg.num_sequences
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def split_index(cfg: HandObjectConfig, split: str) -> Dict[str, List]:
    """Record layout of a split: sequence_id / frame_index / annotated lists in record order."""
    n, first = split_sequences(cfg, split)
    flags = annotated_flags(cfg.frames, cfg.annotate_every)
    return {
        "sequence_id": np.repeat(np.arange(first, first + n), cfg.frames).tolist(),
        "frame_index": np.tile(np.arange(cfg.frames), n).tolist(),
        "annotated": np.tile(flags, n).tolist(),
    }


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


def _features(size: int) -> tfds.features.FeaturesDict:
    f32 = np.float32
    tensor = tfds.features.Tensor
    mask = lambda: tfds.features.Image(shape=(size, size, 1), encoding_format="png")  # noqa: E731
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
        "mask": mask(),
        "hand_mask": mask(),
        "object_mask": mask(),
        "part_seg": mask(),
        "joints2d": tensor(shape=(21, 2), dtype=f32),
        "joints3d": tensor(shape=(21, 3), dtype=f32),
        "vertices": tensor(shape=(778, 3), dtype=f32),
        "mano_pose": tensor(shape=(48,), dtype=f32),
        "betas": tensor(shape=(10,), dtype=f32),
        "transl": tensor(shape=(3,), dtype=f32),
        "K": tensor(shape=(3, 3), dtype=f32),
        "is_right": tensor(shape=(), dtype=np.bool_),
        "sequence_id": tensor(shape=(), dtype=np.int64),
        "frame_index": tensor(shape=(), dtype=np.int64),
        "annotated": tensor(shape=(), dtype=np.bool_),
        "object_id": tensor(shape=(), dtype=np.int64),
        "object_rot": tensor(shape=(3, 3), dtype=f32),
        "object_transl": tensor(shape=(3,), dtype=f32),
        "object_vertices": tensor(shape=(objects.NUM_VERTICES, 3), dtype=f32),
    })


def _mask_png(mask: np.ndarray) -> bytes:
    return png_bytes((np.asarray(mask, bool).astype(np.uint8) * 255)[..., None])


def _encode(frame: Dict[str, np.ndarray]) -> Dict:
    """Rendered frame arrays -> tfds example (PNG bytes for the images)."""
    example = {k: frame[k] for k in ("joints2d", "joints3d", "vertices", "mano_pose", "betas", "transl", "K",
                                     "object_rot", "object_transl", "object_vertices")}
    example["image"] = png_bytes(frame["image"])
    example["mask"] = _mask_png(frame["hand_mask"] | frame["object_mask"])
    example["hand_mask"] = _mask_png(frame["hand_mask"])
    example["object_mask"] = _mask_png(frame["object_mask"])
    example["part_seg"] = png_bytes(frame["part_seg"][..., None])
    example["is_right"] = bool(frame["is_right"])
    example["annotated"] = bool(frame["annotated"])
    for key in ("sequence_id", "frame_index", "object_id"):
        example[key] = int(frame[key])
    return example


class Builder(tfds.core.GeneratorBasedBuilder):
    """A right hand holding a textured procedural object, rendered with handjax."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = list(BASE_CONFIGS.values())
    DEFAULT_CONFIG_NAME = "default"
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        metadata = tfds.core.MetadataDict(
            generator={k: getattr(cfg, k) for k in ("name",) + OVERRIDABLE},
            index={split: split_index(cfg, split) for split in SPLITS},
            objects=objects_metadata(),
        )
        return self.dataset_info_from_configs(description=__doc__, features=_features(cfg.image_size),
                                              disable_shuffling=True, metadata=metadata)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[Tuple[int, Dict]]:
        from .generate import render_split  # imports jax lazily: reading needs no jax

        for key, frame in render_split(self.builder_config, split):
            yield key, _encode(frame)


def get_builder(config: str | HandObjectConfig = "default", data_dir: Optional[str] = None, **overrides) -> Builder:
    """The builder of a config (name or object) plus optional size overrides."""
    if isinstance(config, str):
        config = make_config(config, **overrides)
    elif overrides:
        raise ValueError("get_builder: give overrides with a config name, not a config object")
    return Builder(config=config, data_dir=data_dir or default_data_dir())


def ensure_built(config_name: str = "default", data_dir: Optional[str] = None, **overrides) -> str:
    """Build ``config_name`` (+ overrides) under ``data_dir`` unless it exists; return the
    builder directory ``<data_dir>/hand_object/<config>/<VERSION>``."""
    builder = get_builder(config_name, data_dir, **overrides)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return os.fspath(builder.data_path)
