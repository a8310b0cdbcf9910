"""tfds builder of ``synthetic_hands``: rendered videos of single moving hands (no TensorFlow).

Each record is ONE frame; sequences are contiguous runs of records (``disable_shuffling``),
and the record layout of every split is stored in the dataset metadata
(``info.metadata['index'][split]`` = sequence_id / frame_index / annotated lists in record
order) so samplers can index sequences without reading the records.

Features (S = image_size; camera frame OpenCV x right / y down / z forward, metres; pixel
centre of (row i, col j) at (x=j, y=i)):

=============  ==================  =========================================================
image          (S, S, 3) uint8     PNG; shaded hand over a random background
mask           (S, S, 1) uint8     PNG; 255 on the hand (sealed wrist), 0 elsewhere
part_seg       (S, S, 1) uint8     PNG; 0 background, 1..16 right-hand / 17..32 left-hand
                                   DIGIT parts (face label + 1 / + 17)
joints2d       (21, 2) float32     pixels, = project_perspective(joints3d, K)
joints3d       (21, 3) float32     camera frame; handjax "freihand" convention (OpenPose order)
vertices       (778, 3) float32    camera frame
mano_pose      (48,) float32       axis-angle, flat hand mean (absolute), 0:3 = global
                                   orientation in the camera frame
betas          (10,) float32       shape (built-in model)
transl         (3,) float32        MANO translation: mano_forward(model_side, pose, betas,
                                   transl, "freihand") reproduces vertices / joints3d
K              (3, 3) float32      pinhole intrinsics, fx = fy, fixed within a sequence
is_right       () bool             right hand (built-in right model) or left (left model)
sequence_id    () int64            unique across splits (test ids follow the train ids)
frame_index    () int64            0..T-1 within the sequence
annotated      () bool             sparse-supervision flag: frames 0, k, 2k, ... and the last
                                   (labels are stored for every frame regardless)
=============  ==================  =========================================================

Build: ``python -m data_pipelines.synthetic_hands.build --config tiny|default [...]`` or
``tfds build data_pipelines/synthetic_hands --config tiny --data_dir DIR`` or
:func:`ensure_built`. The same config and seed give an identical dataset.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from . import scene as scene_lib

NAME = "synthetic_hands"
VERSION = "1.1.0"
SPLITS = ("train", "test")


@dataclasses.dataclass
class SyntheticHandsConfig(tfds.core.BuilderConfig):
    """Size of the generated dataset. ``test_sequences`` sequences form the test split."""

    num_sequences: int = 8
    test_sequences: int = 4
    frames: int = 4
    image_size: int = 64
    seed: int = 0
    annotate_every: int = 2
    render_batch: int = 64  # frames rendered per jitted call


BASE_CONFIGS = {
    "tiny": SyntheticHandsConfig(
        name="tiny", description="8 train + 4 test sequences x 4 frames at 64x64 (tests).",
        num_sequences=8, test_sequences=4, frames=4, image_size=64, annotate_every=2, render_batch=16),
    "default": SyntheticHandsConfig(
        name="default", description="500 train + 50 test sequences x 8 frames at 128x128.",
        num_sequences=500, test_sequences=50, frames=8, image_size=128, annotate_every=4, render_batch=64),
}
OVERRIDABLE = ("num_sequences", "test_sequences", "frames", "image_size", "seed", "annotate_every")
_SHORT = {"num_sequences": "n", "test_sequences": "nt", "frames": "t", "image_size": "s", "seed": "seed",
          "annotate_every": "k"}


def make_config(base: str = "default", **overrides) -> SyntheticHandsConfig:
    """A config from a base config name plus size overrides (None values are ignored).

    With overrides the config gets a derived name, e.g. ``default_n50_t16_s96_seed3``, so
    each size lives in its own directory. Unknown keys raise a ValueError.
    """
    if base not in BASE_CONFIGS:
        raise ValueError(f"unknown synthetic_hands config {base!r}; known: {sorted(BASE_CONFIGS)}")
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"make_config: unknown override(s) {unknown}; allowed: {list(OVERRIDABLE)}")
    cfg = BASE_CONFIGS[base]
    changes = {k: int(v) for k, v in overrides.items() if v is not None and int(v) != getattr(cfg, k)}
    if not changes:
        return cfg
    for key, value in changes.items():
        low = 0 if key in ("seed", "test_sequences") else 1
        if value < low:
            raise ValueError(f"make_config: {key} must be >= {low}, got {value}")
    name = base + "".join(f"_{_SHORT[k]}{changes[k]}" for k in OVERRIDABLE if k in changes)
    return dataclasses.replace(cfg, name=name, description=f"{base} with {changes}", **changes)


split_sequences = scene_lib.split_sequences  # (number of sequences, first sequence_id) of a split


def split_index(cfg: SyntheticHandsConfig, split: str) -> Dict[str, List]:
    """Record layout of a split: lists sequence_id / frame_index / annotated in record order."""
    n, first = split_sequences(cfg, split)
    flags = scene_lib.annotated_flags(cfg.frames, cfg.annotate_every)
    return {
        "sequence_id": np.repeat(np.arange(first, first + n), cfg.frames).tolist(),
        "frame_index": np.tile(np.arange(cfg.frames), n).tolist(),
        "annotated": np.tile(flags, n).tolist(),
    }


def _features(size: int) -> tfds.features.FeaturesDict:
    f32 = np.float32
    tensor = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
        "mask": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
        "part_seg": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
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
    })


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W, 3) or (H, W, 1) uint8 array."""
    if array.dtype != np.uint8:
        raise ValueError(f"png_bytes: expected uint8, got {array.dtype}")
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Builder(tfds.core.GeneratorBasedBuilder):
    """Synthetic hand videos rendered with handjax's built-in MANO model and rasteriser."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Global orientations of third-person raised-hand views (palm to side) "
                              "instead of nearly uniform ones."}
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
        )
        return self.dataset_info_from_configs(
            description=__doc__,
            features=_features(cfg.image_size),
            disable_shuffling=True,
            metadata=metadata,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[Tuple[int, Dict]]:
        from .generate import render_split  # imports jax lazily: reading needs no jax

        cfg = self.builder_config
        for key, frame in render_split(cfg, split):
            yield key, _encode(frame)


def _encode(frame: Dict[str, np.ndarray]) -> Dict:
    """Rendered frame arrays -> tfds example (PNG bytes for the images)."""
    example = {k: frame[k] for k in ("joints2d", "joints3d", "vertices", "mano_pose", "betas", "transl", "K")}
    example["image"] = png_bytes(frame["image"])
    example["mask"] = png_bytes((frame["mask"].astype(np.uint8) * 255)[..., None])
    example["part_seg"] = png_bytes(frame["part_seg"][..., None])
    example["is_right"] = bool(frame["is_right"])
    example["sequence_id"] = int(frame["sequence_id"])
    example["frame_index"] = int(frame["frame_index"])
    example["annotated"] = bool(frame["annotated"])
    return example


def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def get_builder(config: str | SyntheticHandsConfig = "default", data_dir: Optional[str] = None,
                **overrides) -> Builder:
    """The builder of a config (name or object) plus optional size overrides."""
    if isinstance(config, str):
        config = make_config(config, **overrides)
    elif overrides:
        raise ValueError("get_builder: give overrides with a config name, not a config object")
    return Builder(config=config, data_dir=data_dir or default_data_dir())


def ensure_built(config_name: str = "default", data_dir: Optional[str] = None, **overrides) -> str:
    """Build ``config_name`` (+ overrides) under ``data_dir`` unless it exists; return the
    builder directory (``<data_dir>/synthetic_hands/<config>/<VERSION>``) for
    ``tfds.builder_from_directory`` / :func:`data_pipelines.pipeline.make_pipeline`."""
    builder = get_builder(config_name, data_dir, **overrides)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return os.fspath(builder.data_path)
