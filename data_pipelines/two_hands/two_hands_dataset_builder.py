"""tfds builder of ``two_hands``: rendered videos of a person's two hands (no TensorFlow).

Person crops (height : width = 4 : 3, InterWild's body-crop aspect) in which a right and a
left hand cover a minority of the frame, in sequences that mix separate hands and
interacting ones (touching, crossing, one occluding the other, a hand leaving the image or
outside it; see :mod:`data_pipelines.two_hands.scene`). Both hands are rasterised in one
z-buffer, so the image, mask and part segmentation show the correct mutual occlusion. The
pipelines cut either a square crop around both hands (DIGIT) or the whole person crop
(InterWild) from it (``data_pipelines.pipeline``, ``crop=``).

Each record is ONE frame; sequences are contiguous runs of records (``disable_shuffling``)
and the record layout is stored in ``info.metadata['index'][split]`` (sequence_id /
frame_index / annotated lists in record order), as in ``synthetic_hands``.

Features (H = image_size, W = 3H/4; camera frame OpenCV x right / y down / z forward,
metres; pixel centre of (row i, col j) at (x=j, y=i); hand axis: 0 right, 1 left; joints:
right 0..20 then left 21..41, each hand in handjax's "ih26m" (InterHand2.6M) order, wrists
20 and 41, as :mod:`handjax.eval.two_hand` expects):

================  ==================  ======================================================
image             (H, W, 3) uint8     PNG; shaded hands over a person silhouette + background
mask              (H, W, 1) uint8     PNG; 255 on either hand (sealed wrists), 0 elsewhere
part_seg          (H, W, 1) uint8     PNG; 0 background, 1..16 right / 17..32 left DIGIT
                                      parts of the VISIBLE hand at each pixel
joints2d          (42, 2) float32     pixels, = project_perspective(joints3d, K)
joints3d          (42, 3) float32     camera frame
joint_valid       (42,) bool          inside the image and the hand valid
vertices          (2, 778, 3) f32     camera frame
mano_pose         (2, 48) float32     axis-angle, flat hand mean (absolute), 0:3 = global
                                      orientation in the camera frame
betas             (2, 10) float32     shape (built-in model)
transl            (2, 3) float32      MANO translation: mano_forward(model_side, pose, betas,
                                      transl, "ih26m") reproduces vertices / joints3d
hand_valid        (2,) bool           the hand is in the frame (>= 11 of its joints inside)
hand_box          (2, 4) float32      (x0, y0, x1, y1) pixels: extent of the hand's projected
                                      joints and vertices clipped to [-0.5, W-0.5] x
                                      [-0.5, H-0.5]; zeros for an invalid hand
rel_root          (3,) float32        left wrist - right wrist (joints3d[41] - joints3d[20])
hand_distance     () float32          closest vertices of the two hands, metres
interacting       () bool             both hands valid and closer than 3 cm or with
                                      overlapping boxes
hand_type         ClassLabel          right / left / interacting (codes 0 / 1 / 2 as
                                      handjax.eval.two_hand.HAND_TYPES): which hands are
                                      valid (2 = both)
hand_type_valid   () bool             at least one hand valid
kind              () int64            sequence kind, index into metadata ``kinds``
K                 (3, 3) float32      pinhole intrinsics, fx = fy, fixed within a sequence
sequence_id       () int64            unique across splits (test ids follow the train ids)
frame_index       () int64            0..T-1 within the sequence
annotated         () bool             sparse-supervision flag (frames 0, k, 2k, ... and the
                                      last; labels are stored for every frame regardless)
================  ==================  ======================================================

Build: ``python -m data_pipelines.two_hands.build --config tiny|default [...]`` or
:func:`ensure_built`. The same config and seed give identical records.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import builtin
from data_pipelines.builtin import png_bytes

from . import scene as scene_lib

NAME = "two_hands"
VERSION = "1.0.0"
SPLITS = builtin.SPLITS
HAND_TYPES = ("right", "left", "interacting")  # = handjax.eval.two_hand.HAND_TYPES (ClassLabel order)


@dataclasses.dataclass
class TwoHandsConfig(builtin.SequencesConfig):
    """Size of the generated dataset; image_size is the person-crop height (width 3/4 of it)."""


BASE_CONFIGS = {
    "tiny": TwoHandsConfig(
        name="tiny", description="12 train + 6 test sequences x 4 frames at 64x48 (tests).",
        num_sequences=12, test_sequences=6, frames=4, image_size=64, annotate_every=2, render_batch=24),
    "default": TwoHandsConfig(
        name="default", description="300 train + 36 test sequences x 8 frames at 128x96.",
        num_sequences=300, test_sequences=36, frames=8, image_size=128, annotate_every=1, render_batch=64),
    # the scenes of `default` at twice the resolution: hands about 45 px long, enough detail for the hand crops of
    # the DIGIT and InterWild default configs (2x the build time of `default`)
    "hires": TwoHandsConfig(
        name="hires", description="300 train + 36 test sequences x 8 frames at 256x192.",
        num_sequences=300, test_sequences=36, frames=8, image_size=256, annotate_every=1, render_batch=32),
}
OVERRIDABLE = builtin.SEQUENCE_SIZES


def _check_sizes(changes: Dict[str, int]) -> None:
    if "image_size" in changes:
        scene_lib.person_width(changes["image_size"])  # a multiple of 4


def make_config(base: str = "default", **overrides) -> TwoHandsConfig:
    """A config from a base config name plus size overrides (None values are ignored).

    With overrides the config gets a derived name, e.g. ``default_n50_s64_seed3``, so each
    size lives in its own directory. Unknown config names or keys raise a ValueError.
    """
    return builtin.derive_config(NAME, BASE_CONFIGS, base, OVERRIDABLE, builtin.SEQUENCE_SHORT,
                                 builtin.SEQUENCE_MINIMUM, overrides, _check_sizes)


split_index = builtin.split_index  # record layout of a split (sequence_id / frame_index / annotated)


def features(height: int) -> tfds.features.FeaturesDict:
    """The features of a two-hand person crop of height ``height`` (the table above)."""
    width = scene_lib.person_width(height)
    f32, tensor = np.float32, tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(height, width, 3), encoding_format="png"),
        "mask": tfds.features.Image(shape=(height, width, 1), encoding_format="png"),
        "part_seg": tfds.features.Image(shape=(height, width, 1), encoding_format="png"),
        "joints2d": tensor(shape=(42, 2), dtype=f32),
        "joints3d": tensor(shape=(42, 3), dtype=f32),
        "joint_valid": tensor(shape=(42,), dtype=np.bool_),
        "vertices": tensor(shape=(2, 778, 3), dtype=f32),
        "mano_pose": tensor(shape=(2, 48), dtype=f32),
        "betas": tensor(shape=(2, 10), dtype=f32),
        "transl": tensor(shape=(2, 3), dtype=f32),
        "hand_valid": tensor(shape=(2,), dtype=np.bool_),
        "hand_box": tensor(shape=(2, 4), dtype=f32),
        "rel_root": tensor(shape=(3,), dtype=f32),
        "hand_distance": tensor(shape=(), dtype=f32),
        "interacting": tensor(shape=(), dtype=np.bool_),
        "hand_type": tfds.features.ClassLabel(names=list(HAND_TYPES)),
        "hand_type_valid": tensor(shape=(), dtype=np.bool_),
        "kind": tensor(shape=(), dtype=np.int64),
        "K": tensor(shape=(3, 3), dtype=f32),
        "sequence_id": tensor(shape=(), dtype=np.int64),
        "frame_index": tensor(shape=(), dtype=np.int64),
        "annotated": tensor(shape=(), dtype=np.bool_),
    })


_FLOAT_KEYS = ("joints2d", "joints3d", "vertices", "mano_pose", "betas", "transl", "hand_box", "rel_root", "K")


def encode(frame: Dict[str, np.ndarray]) -> Dict:
    """Rendered two-hand frame arrays -> tfds example (PNG bytes for the images)."""
    example = {k: np.asarray(frame[k], np.float32) for k in _FLOAT_KEYS}
    example["image"] = png_bytes(frame["image"])
    example["mask"] = builtin.mask_png(frame["mask"])
    example["part_seg"] = png_bytes(frame["part_seg"][..., None])
    example["joint_valid"] = np.asarray(frame["joint_valid"], bool)
    example["hand_valid"] = np.asarray(frame["hand_valid"], bool)
    example["hand_distance"] = np.float32(frame["hand_distance"])
    for key in ("interacting", "hand_type_valid", "annotated"):
        example[key] = bool(frame[key])
    for key in ("hand_type", "kind", "sequence_id", "frame_index"):
        example[key] = int(frame[key])
    return example


class Builder(builtin.RenderedBuilder):
    """Two-hand person-crop videos rendered with handjax's built-in MANO model and rasteriser."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = list(BASE_CONFIGS.values())
    OVERRIDABLE = OVERRIDABLE
    GENERATE = "data_pipelines.two_hands.generate"
    pkg_dir_path = epath.Path(__file__).parent

    def features(self, cfg) -> tfds.features.FeaturesDict:
        return features(cfg.image_size)

    def extra_metadata(self, cfg) -> Dict:
        return {"kinds": list(scene_lib.KINDS)}

    def encode(self, frame: Dict[str, np.ndarray]) -> Dict:
        return encode(frame)


def get_builder(config: str | TwoHandsConfig = "default", data_dir: Optional[str] = None, **overrides) -> Builder:
    """The builder of a config (name or object) plus optional size overrides."""
    return builtin.get_builder(Builder, make_config, config, data_dir, overrides)


def ensure_built(config_name: str = "default", data_dir: Optional[str] = None, **overrides) -> str:
    """Build ``config_name`` (+ overrides) under ``data_dir`` unless it exists; return the
    builder directory (``<data_dir>/two_hands/<config>/<VERSION>``)."""
    return builtin.ensure_built(get_builder(config_name, data_dir, **overrides))
