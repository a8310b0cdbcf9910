"""tfds builder ``hic``: HIC as InterWild tests on it (``HIC.json`` + MANO-fit meshes), test split only.

One record per annotation of ``HIC.json`` (one image, both hands), in file order. Config
``default``; split ``test``. Conventions: :mod:`data_pipelines.hic.layout` (camera frame,
metres, InterWild's fixed intrinsics, boxes from the projected meshes). Hand arrays are
(right, left); joints right 0-20 then left 21-41, each in handjax "ih26m" order.

Features (H, W = image height, width):

==============  ==================  =====================================================
image           (H, W, 3) uint8     PNG (PNG files byte-exact; other formats decoded and
                                    re-encoded losslessly)
image_size      (2,) int32          (height, width) from HIC.json (checked on decode)
K               (3, 3) float32      focal (525, 525), principal point (319.5, 239.5)
vertices        (2, 778, 3) f32     MANO-fit meshes, camera frame, metres (zeros if absent)
hand_valid      (2,) bool           the hand has a mesh (``*_mano_path`` not null)
hand_bbox       (2, 4) float32      InterWild's GT box from the projected mesh (x1, y1,
                                    x2, y2), zeros if absent
joints3d        (42, 3) float32     from the meshes with the MANO J_regressor of
                                    ``mano_dir`` + InterWild's tips (zeros without MANO)
joints2d        (42, 2) float32     = K joints3d projected
joint_valid     (42,) bool          hand_valid and joints derived (a MANO dir was given)
hand_type       ClassLabel          right / left / interacting (codes 0 / 1 / 2)
annot_id        () int64
image_id        () int64
file_name       Text                relative to the manual directory
seq_name        Text                '' when HIC.json has none
==============  ==================  =====================================================

Metadata: ``joint_regressor`` (source of the J_regressor and the tip vertices, or None when
no joints were derived), ``skipped`` (per split: sample id, file, reason).
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
    image_bytes,
    read_image,
    record_key,
)

from . import layout

NAME = "hic"
VERSION = "1.0.0"
SPLIT = "test"


@dataclasses.dataclass
class HICConfig(tfds.core.BuilderConfig):
    """HIC as distributed for InterWild (HIC.json + MANO-fit meshes)."""


BUILDER_CONFIGS = [HICConfig(name="default", description="HIC test set of InterWild (HIC.json, MANO-fit meshes)")]


def _features() -> tfds.features.FeaturesDict:
    f32, tensor = np.float32, tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "image_size": tensor(shape=(2,), dtype=np.int32),
        "K": tensor(shape=(3, 3), dtype=f32),
        "vertices": tensor(shape=(2, layout.NUM_VERTS, 3), dtype=f32),
        "hand_valid": tensor(shape=(2,), dtype=np.bool_),
        "hand_bbox": tensor(shape=(2, 4), dtype=f32),
        "joints3d": tensor(shape=(42, 3), dtype=f32),
        "joints2d": tensor(shape=(42, 2), dtype=f32),
        "joint_valid": tensor(shape=(42,), dtype=np.bool_),
        "hand_type": tfds.features.ClassLabel(names=list(layout.HAND_TYPES)),
        "annot_id": tensor(shape=(), dtype=np.int64),
        "image_id": tensor(shape=(), dtype=np.int64),
        "file_name": tfds.features.Text(),
        "seq_name": tfds.features.Text(),
    })


class Builder(tfds.core.GeneratorBasedBuilder):
    """HIC (manual download) as ArrayRecord.

    Extra constructor arguments: ``skip_corrupt`` (skip and report, per split with the sample
    id, samples whose image or mesh is corrupt or missing), ``mano_dir`` (folder with the
    official MANO_{RIGHT,LEFT}.pkl whose J_regressor derives the joints; None: no joints).
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = layout.INSTRUCTIONS
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, file_format=None, skip_corrupt: bool = False, mano_dir: Optional[str] = None, **kwargs):
        self.policy = CorruptPolicy(skip_corrupt, NAME)
        self.mano_dir = mano_dir
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(description=__doc__, features=_features(), disable_shuffling=True,
                                              metadata=tfds.core.MetadataDict(), homepage=layout.DOWNLOAD_PAGE)

    def check_manual_dir(self, manual_dir) -> Path:
        return check_manual_dir(manual_dir, [layout.ANNOTATION_FILE], dataset=f"{NAME}/{self.builder_config.name}",
                                instructions=layout.INSTRUCTIONS)

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(dl_manager.manual_dir)
        regressor = layout.load_joint_regressor(self.mano_dir)
        if regressor is None:
            print(f"{NAME}: no --mano_dir given: joints are not derived from the meshes (joint_valid False "
                  "everywhere); pass the folder of the official MANO_RIGHT.pkl / MANO_LEFT.pkl for joints "
                  "(the built-in hand's regressor does not fit MANO meshes)", file=sys.stderr)
        self.info.metadata["joint_regressor"] = None if regressor is None else {
            "source": regressor.source, "tip_vertices": list(layout.TIP_VERTICES)}
        self.info.metadata["skipped"] = {}
        rows = self._plan(root)
        return {SPLIT: self._generate_examples(root, rows, regressor)}

    def _plan(self, root) -> List[dict]:
        ann = layout.load_annotations(root)
        rows = []
        for a in ann.annotations:
            try:
                rows.append(layout.parse_annotation(ann, a))
            except CorruptFileError as err:
                self.policy.handle(err, split=SPLIT, sample_id=a.get("id") if isinstance(a, dict) else None)
        missing = [rel for rel in layout.referenced_files(rows) if not (Path(root) / rel).is_file()]
        if missing and not self.policy.skip:
            listed = "\n".join(f"  {m}" for m in missing[:200])
            more = f"\n  ... and {len(missing) - 200} more" if len(missing) > 200 else ""
            raise ManualDirError(f"{NAME}: {len(missing)} image/mesh file(s) named in HIC.json are missing under "
                                 f"{root}:\n{listed}{more}\n\n{layout.INSTRUCTIONS}", missing)
        if missing:
            lost, kept = set(missing), []
            for r in rows:
                gone = [f for f in [r["image"]["file_name"], *r["mesh_paths"].values()] if f in lost]
                if gone:
                    self.policy.handle(CorruptFileError(os.path.join(os.fspath(root), gone[0]), "file missing"),
                                       split=SPLIT, sample_id=r["annot_id"])
                else:
                    kept.append(r)
            rows = kept
        return rows

    def _generate_examples(self, root, rows: List[dict], regressor: Optional[layout.JointRegressor]
                           ) -> Iterator[Tuple[int, Dict]]:
        K = layout.intrinsics()
        for position, row in enumerate(rows):
            try:
                example = self._example(Path(root), row, K, regressor)
            except CorruptFileError as err:
                self.policy.handle(err, split=SPLIT, sample_id=row["annot_id"])
                continue
            yield record_key(position, len(rows)), example
        self.info.metadata["skipped"][SPLIT] = self.policy.split_records(SPLIT)
        if self.policy.split_records(SPLIT):
            print(self.policy.split_report(SPLIT), file=sys.stderr)

    @staticmethod
    def _example(root: Path, row: dict, K: np.ndarray, regressor: Optional[layout.JointRegressor]) -> Dict:
        img = row["image"]
        path = root / img["file_name"]
        encoded = read_image(path)
        size = (int(img["height"]), int(img["width"]))
        if encoded.shape[:2] != size:
            raise CorruptFileError(path, f"expected a {size[0]}x{size[1]} image (HIC.json), got "
                                         f"{encoded.shape[0]}x{encoded.shape[1]}")
        verts = np.zeros((2, layout.NUM_VERTS, 3))
        valid = np.zeros(2, bool)
        boxes = np.zeros((2, 4), np.float32)
        joints = np.zeros((42, 3))
        joint_valid = np.zeros(42, bool)
        for h, hand in enumerate(layout.HANDS):
            rel = row["mesh_paths"][hand]
            if rel is None:
                continue
            mesh_path = root / rel
            verts[h] = layout.read_mesh(mesh_path)
            if np.any(verts[h][:, 2] <= 0):
                raise CorruptFileError(mesh_path, "mesh vertices must lie in front of the camera (z > 0, metres)")
            valid[h] = True
            boxes[h] = layout.mesh_box(verts[h], K)
            if regressor is not None:
                joints[21 * h: 21 * h + 21] = regressor(hand, verts[h])
                joint_valid[21 * h: 21 * h + 21] = True
        joints2d = np.where(joint_valid[:, None], layout.project(np.where(joint_valid[:, None], joints, 1.0), K), 0.0)
        return {
            "image": encoded.data if encoded.format == "png" else image_bytes(path, "png"),
            "image_size": np.array(size, np.int32),
            "K": K.astype(np.float32),
            "vertices": verts.astype(np.float32),
            "hand_valid": valid,
            "hand_bbox": boxes,
            "joints3d": joints.astype(np.float32),
            "joints2d": joints2d.astype(np.float32),
            "joint_valid": joint_valid,
            "hand_type": row["hand_type"],
            "annot_id": row["annot_id"],
            "image_id": int(img["id"]),
            "file_name": str(img["file_name"]),
            "seq_name": str(img.get("seq_name", "")),
        }


# ----------------------------------------------------------------------------- helpers
def get_builder(config: str = "default", data_dir: Optional[str] = None, **kwargs) -> Builder:
    """The builder of a config name (kwargs: skip_corrupt, mano_dir)."""
    return get_named_builder(Builder, config, data_dir, **kwargs)


def ensure_built(config: str = "default", data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 **kwargs) -> str:
    """The builder directory ``<data_dir>/hic/<config>/1.0.0``, built from ``manual_dir`` if
    missing (FileNotFoundError with the download instructions when neither exists); kwargs: skip_corrupt, mano_dir."""
    return ensure_prepared(get_builder(config, data_dir, **kwargs), manual_dir, layout.INSTRUCTIONS)
