"""tfds builder ``coco_wholebody``: COCO-WholeBody v1.0 hands (InterWild's 2D in-the-wild data), no TensorFlow.

One record per PERSON annotation kept by InterWild's rule (not a crowd, body keypoints,
at least one valid hand, a non-empty person box; see :mod:`.layout`), in the json's
annotation order. Config ``default``; splits train, val. Hand arrays are (right, left);
joints right 0-20 then left 21-41, each hand in handjax "ih26m" order (wrist 20 / 41).

Features (H, W = image height, width):

================  ================  =======================================================
image             (H, W, 3) uint8   the original COCO JPEG bytes
image_size        (2,) int32        (height, width) from the json (checked on decode)
joints2d          (42, 2) float32   hand keypoints, pixels (COCO-WholeBody order converted)
joint_conf        (42,) float32     the keypoints' v values as stored
joint_valid       (42,) bool        v > 0
hand_valid        (2,) bool         righthand_valid, lefthand_valid
hand_bbox         (2, 4) float32    hand boxes (x1, y1, x2, y2) = raw (x, y, x + w, y + h)
hand_bbox_valid   (2,) bool         hand valid and its box survives InterWild's sanitize_bbox
person_bbox       (4,) float32      the person box (x1, y1, x2, y2)
mano/<hand>/...   hand = right/left NeuralAnnot pseudo-label as the file gives it (train only):
  pose            (48,) float32     axis-angle, 3:48 relative to the MANO mean pose
  betas           (10,) float32
  transl          (3,) float32      smplx translation, camera frame, metres
  focal, princpt  (2,) float32      that hand's pinhole camera (pixels)
  valid           () bool           has_mano: a fit exists (zeros otherwise)
annot_id          () int64          COCO annotation (person) id
image_id          () int64
file_name         Text              relative to images/<split>2017/
================  ================  =======================================================

Metadata: ``neuralannot`` (whether the file was present), ``filtered`` (per split, the
dropped person annotations per reason), ``skipped`` (per split: sample id, file, reason
of each corrupt/missing sample skipped with ``skip_corrupt``).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.manual import (
    CorruptFileError,
    CorruptPolicy,
    ManualDirError,
    check_manual_dir,
    default_data_dir,
    ensure_prepared,
    get_named_builder,
    read_image,
    record_key,
)

from . import layout

NAME = "coco_wholebody"
VERSION = "1.0.0"


@dataclasses.dataclass
class CocoWholeBodyConfig(tfds.core.BuilderConfig):
    """COCO-WholeBody v1.0 person annotations with hands (InterWild's selection)."""


BUILDER_CONFIGS = [CocoWholeBodyConfig(name="default", description="COCO-WholeBody v1.0, persons with a valid "
                                       "hand (InterWild's MSCOCO selection), NeuralAnnot MANO when present")]


def _features() -> tfds.features.FeaturesDict:
    f32, tensor = np.float32, tfds.features.Tensor
    hand = {"pose": tensor(shape=(48,), dtype=f32), "betas": tensor(shape=(10,), dtype=f32),
            "transl": tensor(shape=(3,), dtype=f32), "focal": tensor(shape=(2,), dtype=f32),
            "princpt": tensor(shape=(2,), dtype=f32), "valid": tensor(shape=(), dtype=np.bool_)}
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "image_size": tensor(shape=(2,), dtype=np.int32),
        "joints2d": tensor(shape=(42, 2), dtype=f32),
        "joint_conf": tensor(shape=(42,), dtype=f32),
        "joint_valid": tensor(shape=(42,), dtype=np.bool_),
        "hand_valid": tensor(shape=(2,), dtype=np.bool_),
        "hand_bbox": tensor(shape=(2, 4), dtype=f32),
        "hand_bbox_valid": tensor(shape=(2,), dtype=np.bool_),
        "person_bbox": tensor(shape=(4,), dtype=f32),
        "mano": {"right": dict(hand), "left": dict(hand)},
        "annot_id": tensor(shape=(), dtype=np.int64),
        "image_id": tensor(shape=(), dtype=np.int64),
        "file_name": tfds.features.Text(),
    })


def _empty_hand() -> Dict[str, np.ndarray]:
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    return {"pose": z(48), "betas": z(10), "transl": z(3), "focal": z(2), "princpt": z(2), "valid": False}


class Builder(tfds.core.GeneratorBasedBuilder):
    """COCO-WholeBody (manual download) as ArrayRecord. ``skip_corrupt``: skip and report
    (per split: sample id, file, reason) samples whose image or annotation is corrupt or missing."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = layout.INSTRUCTIONS
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, file_format=None, skip_corrupt: bool = False, **kwargs):
        self.policy = CorruptPolicy(skip_corrupt, NAME)
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(description=__doc__, features=_features(), disable_shuffling=True,
                                              metadata=tfds.core.MetadataDict(), homepage=layout.DOWNLOAD_PAGE)

    def check_manual_dir(self, manual_dir) -> Path:
        return check_manual_dir(manual_dir, layout.required_entries(), dataset=f"{NAME}/{self.builder_config.name}",
                                instructions=layout.INSTRUCTIONS)

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(dl_manager.manual_dir)
        neural = layout.load_neuralannot(root)
        if neural is None:
            print(f"{NAME}: {layout.NEURALANNOT_NAME} not found under {root / 'annotations'}: no MANO pseudo-labels "
                  "(mano/<hand>/valid is False in every record)", file=sys.stderr)
        self.info.metadata["neuralannot"] = neural is not None
        self.info.metadata["filtered"], self.info.metadata["skipped"] = {}, {}
        plans = {split: self._plan(root, split) for split in layout.SPLITS}
        self._check_images(root, plans)
        return {split: self._generate_examples(root, split, rows, neural if split == "train" else None)
                for split, rows in plans.items()}

    # ------------------------------------------------------------------ planning
    def _plan(self, root, split: str) -> List[dict]:
        ann = layout.load_split(root, split)
        filtered = {reason: 0 for reason in layout.FILTER_REASONS}
        rows = []
        for a in ann.annotations:
            try:
                reason = layout.keep_reason(ann, a)
                if reason is not None:
                    filtered[reason] += 1
                    continue
                rows.append(layout.parse_person(ann, a))
            except CorruptFileError as err:
                self.policy.handle(err, split=split, sample_id=a.get("id") if isinstance(a, dict) else None)
        self.info.metadata["filtered"][split] = filtered
        return rows

    def _check_images(self, root, plans: Dict[str, List[dict]]) -> None:
        """Every missing image of every split in ONE error (or skipped with skip_corrupt)."""
        missing = []
        for split, rows in plans.items():
            folder = os.path.relpath(layout.image_dir(root, split), root)
            lost = set(layout.missing_images(root, split, [r["image"]["file_name"] for r in rows]))
            if lost and self.policy.skip:
                kept = []
                for r in rows:
                    rel = os.path.join(folder, r["image"]["file_name"])
                    if rel in lost:
                        self.policy.handle(CorruptFileError(os.path.join(os.fspath(root), rel), "image file missing"),
                                           split=split, sample_id=r["annot_id"])
                    else:
                        kept.append(r)
                rows[:] = kept
            missing += sorted(lost)
        if missing and not self.policy.skip:
            listed = "\n".join(f"  {m}" for m in missing[:200])
            more = f"\n  ... and {len(missing) - 200} more" if len(missing) > 200 else ""
            raise ManualDirError(f"{NAME}: {len(missing)} image file(s) named in the annotation json are missing "
                                 f"under {root}:\n{listed}{more}\n\n{layout.INSTRUCTIONS}", missing)

    # ------------------------------------------------------------------ records
    def _generate_examples(self, root, split: str, rows: List[dict], neural: Optional[Tuple[dict, Path]]
                           ) -> Iterator[Tuple[int, Dict]]:
        folder = layout.image_dir(root, split)
        for position, row in enumerate(rows):
            try:
                example = self._example(folder, row, neural)
            except CorruptFileError as err:
                self.policy.handle(err, split=split, sample_id=row["annot_id"])
                continue
            yield record_key(position, len(rows)), example
        self.info.metadata["skipped"][split] = self.policy.split_records(split)
        if self.policy.split_records(split):
            print(self.policy.split_report(split), file=sys.stderr)

    @staticmethod
    def _example(folder: Path, row: dict, neural: Optional[Tuple[dict, Path]]) -> Dict:
        img = row["image"]
        path = folder / img["file_name"]
        encoded = read_image(path)
        size = (int(img["height"]), int(img["width"]))
        if encoded.shape[:2] != size or encoded.format != "jpeg":
            raise CorruptFileError(path, f"expected a {size[0]}x{size[1]} JPEG (annotation json), got a "
                                         f"{encoded.shape[0]}x{encoded.shape[1]} {encoded.format}")
        mano = {hand: _empty_hand() for hand in layout.HANDS}
        if neural is not None and str(row["annot_id"]) in neural[0]:
            entry = neural[0][str(row["annot_id"])]
            for hand in layout.HANDS:
                fit = layout.neuralannot_hand(entry, neural[1], row["annot_id"], hand)
                if fit is not None:
                    mano[hand] = {**fit, "valid": True}
        return {
            "image": encoded.data,
            "image_size": np.array(size, np.int32),
            "joints2d": row["joints2d"],
            "joint_conf": row["joint_conf"],
            "joint_valid": row["joint_valid"],
            "hand_valid": row["hand_valid"],
            "hand_bbox": row["hand_bbox"],
            "hand_bbox_valid": row["hand_bbox_valid"],
            "person_bbox": row["person_bbox"],
            "mano": mano,
            "annot_id": row["annot_id"],
            "image_id": int(img["id"]),
            "file_name": str(img["file_name"]),
        }


# ----------------------------------------------------------------------------- helpers
def get_builder(config: str = "default", data_dir: Optional[str] = None, **kwargs) -> Builder:
    """The builder of a config name (kwargs: skip_corrupt)."""
    return get_named_builder(Builder, config, data_dir, **kwargs)


def ensure_built(config: str = "default", data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 **kwargs) -> str:
    """The builder directory ``<data_dir>/coco_wholebody/<config>/1.0.0``, built from ``manual_dir`` if
    missing (FileNotFoundError with the download instructions when neither exists); kwargs: skip_corrupt."""
    return ensure_prepared(get_builder(config, data_dir, **kwargs), manual_dir, layout.INSTRUCTIONS)
