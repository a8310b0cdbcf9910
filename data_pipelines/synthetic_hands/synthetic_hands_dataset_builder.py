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
from typing import Dict, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import builtin
from data_pipelines.builtin import default_data_dir, png_bytes  # noqa: F401  (re-exported)

NAME = "synthetic_hands"
VERSION = "1.1.0"
SPLITS = builtin.SPLITS


@dataclasses.dataclass
class SyntheticHandsConfig(builtin.SequencesConfig):
    """Size of the generated dataset. ``test_sequences`` sequences form the test split."""


BASE_CONFIGS = {
    "tiny": SyntheticHandsConfig(
        name="tiny", description="8 train + 4 test sequences x 4 frames at 64x64 (tests).",
        num_sequences=8, test_sequences=4, frames=4, image_size=64, annotate_every=2, render_batch=16),
    "default": SyntheticHandsConfig(
        name="default", description="500 train + 50 test sequences x 8 frames at 128x128.",
        num_sequences=500, test_sequences=50, frames=8, image_size=128, annotate_every=4, render_batch=64),
}
OVERRIDABLE = builtin.SEQUENCE_SIZES


def make_config(base: str = "default", **overrides) -> SyntheticHandsConfig:
    """A config from a base config name plus size overrides (None values are ignored).

    With overrides the config gets a derived name, e.g. ``default_n50_t16_s96_seed3``, so
    each size lives in its own directory. Unknown keys raise a ValueError.
    """
    return builtin.derive_config(NAME, BASE_CONFIGS, base, OVERRIDABLE, builtin.SEQUENCE_SHORT,
                                 builtin.SEQUENCE_MINIMUM, overrides)


split_sequences = builtin.split_sequences  # (number of sequences, first sequence_id) of a split
split_index = builtin.split_index  # record layout of a split (sequence_id / frame_index / annotated)


class Builder(builtin.RenderedBuilder):
    """Synthetic hand videos rendered with handjax's built-in MANO model and rasteriser."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Global orientations of third-person raised-hand views (palm to side) "
                              "instead of nearly uniform ones."}
    BUILDER_CONFIGS = list(BASE_CONFIGS.values())
    OVERRIDABLE = OVERRIDABLE
    GENERATE = "data_pipelines.synthetic_hands.generate"
    pkg_dir_path = epath.Path(__file__).parent

    def features(self, cfg) -> tfds.features.FeaturesDict:
        return builtin.hand_features(cfg.image_size)

    def encode(self, frame: Dict[str, np.ndarray]) -> Dict:
        return builtin.encode_hand(frame)


def get_builder(config: str | SyntheticHandsConfig = "default", data_dir: Optional[str] = None,
                **overrides) -> Builder:
    """The builder of a config (name or object) plus optional size overrides."""
    return builtin.get_builder(Builder, make_config, config, data_dir, overrides)


def ensure_built(config_name: str = "default", data_dir: Optional[str] = None, **overrides) -> str:
    """Build ``config_name`` (+ overrides) under ``data_dir`` unless it exists; return the
    builder directory (``<data_dir>/synthetic_hands/<config>/<VERSION>``) for
    ``tfds.builder_from_directory`` / :func:`data_pipelines.pipeline.make_pipeline`."""
    return builtin.ensure_built(get_builder(config_name, data_dir, **overrides))
