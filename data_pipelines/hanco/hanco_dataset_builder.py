"""tfds builder of HanCo (Zimmermann et al., "Contrastive Representation Learning for Hand
Shape Estimation", the FreiHAND authors' multi-view hand VIDEO dataset): the pretraining video
source of TempCLR's FreiHAND recipe.

No TensorFlow needed: build with ``python -m data_pipelines.hanco.build --manual_dir RAW
--data_dir OUT`` (or :func:`ensure_built`), read with ``tfds.builder_from_directory(dir)
.as_data_source('train')`` or the data factory (``data.name='hanco'``; frame / window modes:
the frames of one camera of one sequence form a video).

On-disk format of the download (lmb-freiburg/contra-hand ``show_dataset.py``), with ``SID`` the
sequence number (``%04d``), ``CID`` the camera 0..7 and ``FID`` the frame (``%08d``)::

  <manual_dir>/
    meta.json                      {"is_train", "subject_id", "is_valid", "object_id", "has_fit"}: each a
                                   list over the sequences of per-frame lists (the frame count of SID)
    rgb/SID/camCID/FID.jpg         224 x 224 RGB frames (green screen where is_train; rgb_merged/,
                                   rgb_homo/, rgb_color_auto/, rgb_color_sample/ hold composited
                                   backgrounds of those and are not read by config 'default')
    xyz/SID/FID.json               21 x 3 keypoints in WORLD coordinates (FreiHAND joint order, metres)
    calib/SID/FID.json             {"K": 8 x (3, 3) intrinsics, "M": 8 x (4, 4) world -> camera}
    shape/SID/FID.json             where has_fit: {"poses": (1, 48), "shapes": (1, 10), "global_t": (1, 3)},
                                   MANO (flat_hand_mean=False) in world coordinates

Records (``train`` split, ``disable_shuffling``): sequence-major, then camera, then frame
(the order of meta.json). Camera CID of sequence SID is the video ``sequence_id = 8 SID + CID``
(``frame_index`` = FID), so window sampling draws positives from the same view over time.

Conventions (converted in ONE place, :func:`frame_labels`): keypoints go to the camera frame
of CID (``p_cam = M[:3, :3] p + M[:3, 3]``, OpenCV axes as FreiHAND) and are projected with
K; the MANO global orientation becomes ``R_cam = M[:3, :3] R_world`` (axis-angle); the 45
finger values stay RELATIVE to MANO's hand mean (``mano_pose_relative`` True, as FreiHAND:
``data.mano_model`` makes them absolute); no translation is stored.

Features:

===================  =================  ===============================================
image                (H, W, 3) uint8    the original JPEG bytes
K                    (3, 3) float32     intrinsics of the camera
joints3d             (21, 3) float32    metres, camera frame, ``freihand`` order
joints2d             (21, 2) float32    pixels = project(joints3d, K)
mano_pose            (48,) float32      axis-angle: 0:3 global (camera frame), 3:48
                                        fingers relative to the MANO hand mean (zeros
                                        where has_mano is False)
mano_pose_relative   () bool            always True
betas                (10,) float32      MANO shape (``shapes``)
has_mano             () bool            meta ``has_fit`` (a MANO fit exists)
fit_valid            () bool            meta ``is_valid`` (the fit was validated)
green_screen         () bool            meta ``is_train`` (recorded in front of the green screen)
subject_id           () int64           meta ``subject_id``
object_id            () int64           meta ``object_id`` (-1: no object)
sequence             () int64           SID
camera               () int64           CID
sequence_id          () int64           8 SID + CID (one video per view)
frame_index          () int64           FID
is_right             () bool            always True
annotated            () bool            always True (3-D keypoints for every frame)
===================  =================  ===============================================
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import manual
from data_pipelines.manual import default_data_dir  # re-exported by the package
from handjax.distributed import check_preemption
from handjax.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

NAME = "hanco"
VERSION = "1.0.0"
NUM_CAMERAS = 8
META_KEYS = ("is_train", "subject_id", "is_valid", "object_id", "has_fit")
HOMEPAGE = "https://lmb.informatik.uni-freiburg.de/projects/contra-hand/"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
HanCo needs a manual download (academic licence): {HOMEPAGE}
(dataset page https://lmb.informatik.uni-freiburg.de/resources/datasets/HanCo.en.html; a small
tester sample is HanCo_tester.zip). Unzip the parts into ONE folder and pass it as --manual_dir:

  <manual_dir>/
    meta.json
    rgb/<SID %04d>/cam<0..7>/<FID %08d>.jpg
    xyz/<SID>/<FID>.json
    calib/<SID>/<FID>.json
    shape/<SID>/<FID>.json          (frames whose meta has_fit is true)

Then: python -m data_pipelines.hanco.build --manual_dir <manual_dir> --data_dir <tfds data dir>
"""


@dataclasses.dataclass
class HancoConfig(tfds.core.BuilderConfig):
    """cameras: the camera views stored (one video each)."""

    cameras: Tuple[int, ...] = tuple(range(NUM_CAMERAS))


BASE_CONFIGS = {
    "default": HancoConfig(name="default", description="Every sequence, all 8 views, rgb/ frames."),
}


# ----------------------------------------------------------------------------- layout
def image_path(sid: int, cid: int, fid: int) -> str:
    return f"rgb/{sid:04d}/cam{cid}/{fid:08d}.jpg"


def xyz_path(sid: int, fid: int) -> str:
    return f"xyz/{sid:04d}/{fid:08d}.json"


def calib_path(sid: int, fid: int) -> str:
    return f"calib/{sid:04d}/{fid:08d}.json"


def shape_path(sid: int, fid: int) -> str:
    return f"shape/{sid:04d}/{fid:08d}.json"


def video_id(sid: int, cid: int) -> int:
    """The ``sequence_id`` of camera ``cid`` of sequence ``sid`` (one video per view)."""
    return NUM_CAMERAS * int(sid) + int(cid)


def read_meta(root: Path) -> Dict[str, list]:
    """meta.json, checked: the five keys, each a list over sequences of per-frame lists of one length."""
    path = root / "meta.json"
    meta = manual.load_json(path)
    if not isinstance(meta, dict) or not set(META_KEYS) <= set(meta):
        raise manual.CorruptFileError(path, f"expected a dict with keys {list(META_KEYS)}, got "
                                            f"{sorted(meta) if isinstance(meta, dict) else type(meta).__name__}")
    num = len(meta["is_train"]) if isinstance(meta["is_train"], list) else -1
    for key in META_KEYS:
        value = meta[key]
        if not isinstance(value, list) or len(value) != num or not all(isinstance(v, list) for v in value):
            raise manual.CorruptFileError(path, f"key {key!r} must be a list of {num} per-sequence lists")
        lengths = [len(v) for v in value]
        if lengths != [len(v) for v in meta["is_train"]]:
            raise manual.CorruptFileError(path, f"key {key!r}: per-sequence frame counts differ from 'is_train'")
    return meta


def frames(meta: Dict[str, list]) -> List[Tuple[int, int]]:
    """(SID, FID) of every frame, in meta.json order."""
    return [(sid, fid) for sid, seq in enumerate(meta["is_train"]) for fid in range(len(seq))]


def required_files(root: Path, cameras: Sequence[int]) -> List[str]:
    """Every file the build reads (the per-frame lists from meta.json when it is readable)."""
    req = ["meta.json", "rgb/", "xyz/", "calib/"]
    try:
        meta = read_meta(root)
    except (manual.CorruptFileError, OSError):
        return req  # reported when the build reads it
    for sid, fid in frames(meta):
        req += [image_path(sid, cid, fid) for cid in cameras]
        req += [xyz_path(sid, fid), calib_path(sid, fid)]
        if meta["has_fit"][sid][fid]:
            req.append(shape_path(sid, fid))
    return req


# ----------------------------------------------------------------------------- labels
def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection (N, 3) camera frame -> (N, 2) pixels, float64 internally."""
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return (p[:, :2] / p[:, 2:3]).astype(np.float32)


def frame_labels(xyz_world: np.ndarray, K: np.ndarray, M: np.ndarray, shape: Optional[dict]) -> Dict[str, np.ndarray]:
    """One camera's labels of a frame (the ONE conversion place, see the module docstring).

    xyz_world (21, 3); K (3, 3); M (4, 4) world -> camera; shape: the shape/ json dict
    (``poses`` (1, 48), ``shapes`` (1, 10)) or None.
    """
    R, t = np.asarray(M, np.float64)[:3, :3], np.asarray(M, np.float64)[:3, 3]
    joints3d = (np.asarray(xyz_world, np.float64) @ R.T + t).astype(np.float32)
    pose = np.zeros(48, np.float32)
    betas = np.zeros(10, np.float32)
    if shape is not None:
        pose = np.asarray(shape["poses"], np.float32).reshape(48).copy()
        betas = np.asarray(shape["shapes"], np.float32).reshape(10)
        r_cam = R @ np.asarray(axis_angle_to_matrix(pose[:3].astype(np.float64)), np.float64)
        pose[:3] = np.asarray(matrix_to_axis_angle(r_cam), np.float32)
    return {"K": np.asarray(K, np.float32), "joints3d": joints3d, "joints2d": project(joints3d, K),
            "mano_pose": pose, "betas": betas, "mano_pose_relative": True, "has_mano": shape is not None}


def _read_calib(root: Path, sid: int, fid: int) -> Tuple[np.ndarray, np.ndarray]:
    path = root / calib_path(sid, fid)
    calib = manual.load_json(path)
    if not isinstance(calib, dict) or not {"K", "M"} <= set(calib):
        raise manual.CorruptFileError(path, "expected a dict with keys 'K' and 'M'")
    K = manual.as_array(calib["K"], (NUM_CAMERAS, 3, 3), path=path, key="K")
    M = manual.as_array(calib["M"], (NUM_CAMERAS, 4, 4), path=path, key="M")
    return K, M


def _read_shape(root: Path, sid: int, fid: int) -> dict:
    path = root / shape_path(sid, fid)
    shape = manual.load_json(path)
    if not isinstance(shape, dict) or not {"poses", "shapes"} <= set(shape):
        raise manual.CorruptFileError(path, "expected a dict with keys 'poses', 'shapes' (and 'global_t')")
    return {"poses": manual.as_array(shape["poses"], (1, 48), path=path, key="poses"),
            "shapes": manual.as_array(shape["shapes"], (1, 10), path=path, key="shapes")}


def _features() -> tfds.features.FeaturesDict:
    f32, i64, tensor = np.float32, np.int64, tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "K": tensor(shape=(3, 3), dtype=f32),
        "joints3d": tensor(shape=(21, 3), dtype=f32),
        "joints2d": tensor(shape=(21, 2), dtype=f32),
        "mano_pose": tensor(shape=(48,), dtype=f32),
        "mano_pose_relative": tensor(shape=(), dtype=np.bool_),
        "betas": tensor(shape=(10,), dtype=f32),
        "has_mano": tensor(shape=(), dtype=np.bool_),
        "fit_valid": tensor(shape=(), dtype=np.bool_),
        "green_screen": tensor(shape=(), dtype=np.bool_),
        "subject_id": tensor(shape=(), dtype=i64),
        "object_id": tensor(shape=(), dtype=i64),
        "sequence": tensor(shape=(), dtype=i64),
        "camera": tensor(shape=(), dtype=i64),
        "sequence_id": tensor(shape=(), dtype=i64),
        "frame_index": tensor(shape=(), dtype=i64),
        "is_right": tensor(shape=(), dtype=np.bool_),
        "annotated": tensor(shape=(), dtype=np.bool_),
    })


class Builder(tfds.core.GeneratorBasedBuilder):
    """HanCo from the manual download; see the module docstring."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "rgb/ frames of every view as videos; keypoints / MANO in each camera frame."}
    BUILDER_CONFIGS = list(BASE_CONFIGS.values())
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, file_format=None, skip_corrupt: bool = False, **kwargs):
        self.policy = manual.CorruptPolicy(skip_corrupt, NAME)
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        metadata = tfds.core.MetadataDict(cameras=list(self.builder_config.cameras), index={}, skipped={})
        return self.dataset_info_from_configs(description=__doc__, features=_features(), homepage=HOMEPAGE,
                                              disable_shuffling=True, metadata=metadata)

    def check_manual_dir(self, manual_dir) -> Path:
        root = Path(manual_dir).expanduser() if manual_dir else None
        required = required_files(root, self.builder_config.cameras) if root and root.is_dir() else []
        return manual.check_manual_dir(manual_dir, required, dataset=NAME, instructions=MANUAL_DOWNLOAD_INSTRUCTIONS)

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(dl_manager.manual_dir)
        return {"train": self._generate_examples(root, read_meta(root))}

    def _generate_examples(self, root: Path, meta: Dict[str, list]) -> Iterator[Tuple[int, Dict]]:
        cameras = self.builder_config.cameras
        order = [(sid, cid, fid) for sid, seq in enumerate(meta["is_train"]) for cid in cameras
                 for fid in range(len(seq))]
        index = {"sequence_id": [], "frame_index": [], "annotated": []}
        cache: Dict[Tuple[int, int], tuple] = {}  # (sid, fid) -> (xyz, K, M, shape): read once for the 8 views
        for position, (sid, cid, fid) in enumerate(order):
            check_preemption(f"building {NAME}/{self.builder_config.name}")
            try:
                example = self._example(root, meta, sid, cid, fid, cache)
            except manual.CorruptFileError as err:
                self.policy.handle(err, split="train", sample_id=f"{sid:04d}/cam{cid}/{fid:08d}")
                continue
            index["sequence_id"].append(int(example["sequence_id"]))
            index["frame_index"].append(fid)
            index["annotated"].append(True)
            yield manual.record_key(position, len(order)), example
        self.info.metadata["index"]["train"] = index
        self.info.metadata["skipped"]["train"] = self.policy.split_records("train")

    def _frame(self, root: Path, meta, sid: int, fid: int, cache) -> tuple:
        if (sid, fid) not in cache:
            if len(cache) > 4 * NUM_CAMERAS:
                cache.clear()
            path = root / xyz_path(sid, fid)
            xyz = manual.as_array(manual.load_json(path), (21, 3), path=path, key="<root>")
            K, M = _read_calib(root, sid, fid)
            shape = _read_shape(root, sid, fid) if meta["has_fit"][sid][fid] else None
            cache[(sid, fid)] = (xyz, K, M, shape)
        return cache[(sid, fid)]

    def _example(self, root: Path, meta, sid: int, cid: int, fid: int, cache) -> Dict:
        xyz, K, M, shape = self._frame(root, meta, sid, fid, cache)
        labels = frame_labels(xyz, K[cid], M[cid], shape)
        image = manual.read_image(root / image_path(sid, cid, fid))
        if image.shape[2] != 3:
            raise manual.CorruptFileError(root / image_path(sid, cid, fid),
                                          f"expected an RGB image, got {image.shape[2]} channel(s)")
        object_id = meta["object_id"][sid][fid]
        return dict(labels, image=image.data, fit_valid=bool(meta["is_valid"][sid][fid]),
                    green_screen=bool(meta["is_train"][sid][fid]), subject_id=int(meta["subject_id"][sid][fid]),
                    object_id=-1 if object_id is None else int(object_id), sequence=sid, camera=cid,
                    sequence_id=video_id(sid, cid), frame_index=fid, is_right=True, annotated=True)


# ----------------------------------------------------------------------------- entry points
def get_builder(config: str = "default", data_dir: Optional[str] = None, skip_corrupt: bool = False) -> Builder:
    """The builder of a config name under ``data_dir`` (default :func:`default_data_dir`)."""
    return manual.get_named_builder(Builder, config, data_dir, skip_corrupt=skip_corrupt)


def ensure_built(config: str = "default", data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 skip_corrupt: bool = False) -> str:
    """The builder directory ``<data_dir>/hanco/<config>/1.0.0``, built from ``manual_dir`` if
    missing (FileNotFoundError with the download instructions when neither exists)."""
    return manual.ensure_prepared(get_builder(config, data_dir, skip_corrupt), manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
