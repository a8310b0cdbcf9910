"""tfds builder of ``identities``: videos of the right hands of distinct subjects (fixed shape
and skin per subject), with disjoint train and test subjects (no TensorFlow).

DexYCB's ``s1`` "unseen subjects" protocol, as identity-aware hand mesh personalisation
uses it: subjects ``0 .. train_subjects - 1`` appear only in ``train``, the following
``test_subjects`` only in ``test``, each test subject with ``test_sequences_per_subject x
frames`` images for shape calibration from N images.

Each record is ONE frame; sequences are contiguous runs of records, a subject's sequences are
contiguous too. ``info.metadata['index'][split]`` holds sequence_id / frame_index / annotated /
subject_id in record order; ``info.metadata['subjects']`` = {'train': ids, 'test': ids,
'betas': {id: betas (10,)}} (the ground-truth shape of every subject).

Features: those of ``synthetic_hands`` (image, mask, part_seg, joints2d, joints3d, vertices,
mano_pose, betas, transl, K, is_right (always True), sequence_id, frame_index, annotated; see
``data_pipelines.synthetic_hands.synthetic_hands_dataset_builder``) plus

=============  ==================  =========================================================
subject_id     () int64            the subject; betas and skin albedo are fixed per subject
=============  ==================  =========================================================

Build: ``python -m data_pipelines.identities.build --config tiny|default [...]`` or
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

from data_pipelines import builtin
from data_pipelines.builtin import annotated_flags

NAME = "identities"
VERSION = "1.0.0"
SPLITS = builtin.SPLITS


@dataclasses.dataclass
class IdentitiesConfig(tfds.core.BuilderConfig):
    """Subjects and sizes. ``crop_size`` is the hand-crop side (pixels) at which subject shapes
    are spread apart (see ``identities.scene``)."""

    train_subjects: int = 3
    test_subjects: int = 2
    sequences_per_subject: int = 2
    test_sequences_per_subject: int = 2
    frames: int = 4
    image_size: int = 64
    crop_size: int = 64
    seed: int = 0
    annotate_every: int = 2
    render_batch: int = 64  # frames rendered per jitted call


BASE_CONFIGS = {
    "tiny": IdentitiesConfig(
        name="tiny", description="3 train + 2 test subjects x 2 sequences x 4 frames at 64x64 (tests).",
        train_subjects=3, test_subjects=2, sequences_per_subject=2, test_sequences_per_subject=2, frames=4,
        image_size=64, crop_size=64, annotate_every=2, render_batch=16),
    "default": IdentitiesConfig(
        name="default", description="16 train subjects x 20 sequences + 4 test subjects x 8 sequences, "
                                    "8 frames each at 64x64 (64 images per test subject).",
        train_subjects=16, test_subjects=4, sequences_per_subject=20, test_sequences_per_subject=8, frames=8,
        image_size=64, crop_size=64, annotate_every=4, render_batch=64),
}
OVERRIDABLE = ("train_subjects", "test_subjects", "sequences_per_subject", "test_sequences_per_subject", "frames",
               "image_size", "crop_size", "seed", "annotate_every")
_SHORT = {"train_subjects": "ns", "test_subjects": "nts", "sequences_per_subject": "q",
          "test_sequences_per_subject": "qt", "frames": "t", "image_size": "s", "crop_size": "c", "seed": "seed",
          "annotate_every": "k"}
_MINIMUM = {"seed": 0, "test_subjects": 0}


def make_config(base: str = "default", **overrides) -> IdentitiesConfig:
    """``BASE_CONFIGS[base]`` with size overrides (derived name, e.g. ``default_ns8_t16``)."""
    return builtin.derive_config(NAME, BASE_CONFIGS, base, OVERRIDABLE, _SHORT, _MINIMUM, overrides)


def split_sequences(cfg: IdentitiesConfig, split: str) -> Tuple[int, int]:
    """(number of sequences, first sequence_id) of a split."""
    n_train = cfg.train_subjects * cfg.sequences_per_subject
    if split == "train":
        return n_train, 0
    if split == "test":
        return cfg.test_subjects * cfg.test_sequences_per_subject, n_train
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def sequence_subject(cfg: IdentitiesConfig, split: str, number: int) -> int:
    """Subject id of sequence ``number`` (0-based within the split)."""
    if split == "train":
        return number // cfg.sequences_per_subject
    if split == "test":
        return cfg.train_subjects + number // cfg.test_sequences_per_subject
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def split_subjects(cfg: IdentitiesConfig, split: str) -> List[int]:
    """Subject ids of a split (train: 0..train_subjects-1, test: the following ones)."""
    n, _ = split_sequences(cfg, split)
    return sorted({sequence_subject(cfg, split, i) for i in range(n)})


def split_index(cfg: IdentitiesConfig, split: str) -> Dict[str, List]:
    """Record layout of a split: sequence_id / frame_index / annotated / subject_id lists."""
    n, first = split_sequences(cfg, split)
    index = builtin.sequence_index(n, first, cfg.frames, annotated_flags(cfg.frames, cfg.annotate_every))
    index["subject_id"] = np.repeat([sequence_subject(cfg, split, i) for i in range(n)], cfg.frames).tolist()
    return index


def load_subjects(builder_dir: str | os.PathLike) -> Dict[str, object]:
    """The subjects of a built identities dataset: {'train': [ids], 'test': [ids], 'betas':
    {subject_id: (10,) float32}} (ground-truth shapes, e.g. to score a shape calibration)."""
    path = os.path.join(os.fspath(builder_dir), "metadata.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_subjects: {path} not found; pass a built identities directory "
                                f"(ensure_built(...)'s result)")
    with open(path) as f:
        meta = json.load(f)
    subjects = meta.get("subjects")
    missing = ["subjects"] if subjects is None else [k for k in ("train", "test", "betas") if k not in subjects]
    if missing:
        raise KeyError(f"load_subjects: {path} lacks {missing} (not an identities dataset?)")
    betas = {int(k): np.asarray(v, np.float32) for k, v in subjects["betas"].items()}
    absent = sorted((set(subjects["train"]) | set(subjects["test"])) - set(betas))
    if absent:
        raise KeyError(f"load_subjects: {path}: no betas for subject(s) {absent}")
    return {"train": list(subjects["train"]), "test": list(subjects["test"]), "betas": betas}


def features(size: int) -> tfds.features.FeaturesDict:
    """The single-hand features plus ``subject_id``."""
    return tfds.features.FeaturesDict({**builtin.hand_features(size),
                                       "subject_id": tfds.features.Tensor(shape=(), dtype=np.int64)})


class Builder(builtin.RenderedBuilder):
    """Subjects' right hands (fixed shape and skin), rendered with handjax."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = list(BASE_CONFIGS.values())
    OVERRIDABLE = OVERRIDABLE
    GENERATE = "data_pipelines.identities.generate"
    pkg_dir_path = epath.Path(__file__).parent

    def features(self, cfg) -> tfds.features.FeaturesDict:
        return features(cfg.image_size)

    def split_index(self, cfg, split: str) -> Dict[str, List]:
        return split_index(cfg, split)

    def extra_metadata(self, cfg) -> Dict:
        return {"subjects": {split: split_subjects(cfg, split) for split in SPLITS}}

    def render_frames(self, split: str) -> Iterator[Tuple[int, Dict]]:
        from .generate import subject_betas  # imports jax lazily: reading needs no jax

        cfg = self.builder_config
        betas = subject_betas(cfg.seed, cfg.train_subjects + cfg.test_subjects, cfg.crop_size)
        self.info.metadata["subjects"]["betas"] = {str(i): b.astype(np.float64).tolist() for i, b in enumerate(betas)}
        yield from super().render_frames(split)

    def encode(self, frame: Dict[str, np.ndarray]) -> Dict:
        example = builtin.encode_hand(frame)
        example["subject_id"] = int(frame["subject_id"])
        return example


def get_builder(config: str | IdentitiesConfig = "default", data_dir: Optional[str] = None, **overrides) -> Builder:
    """The builder of a config (name or object) plus optional size overrides."""
    return builtin.get_builder(Builder, make_config, config, data_dir, overrides)


def ensure_built(config_name: str = "default", data_dir: Optional[str] = None, **overrides) -> str:
    """Build ``config_name`` (+ overrides) under ``data_dir`` unless it exists; return the
    builder directory ``<data_dir>/identities/<config>/<VERSION>``."""
    return builtin.ensure_built(get_builder(config_name, data_dir, **overrides))
