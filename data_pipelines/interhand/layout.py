"""InterHand2.6M v1.0 raw download: file layout, annotation parsing and THE coordinate conversion.

Everything that touches the raw files or changes coordinates lives here; the tfds builder
only arranges the results into features.

Coordinate conventions (the one place they are handled)
--------------------------------------------------------
* Raw: world coordinates in millimetres. ``camera.json`` gives per camera ``camrot``
  R (3, 3) (world -> camera rotation), ``campos`` c (3,) (camera centre in world mm),
  ``focal`` (fx, fy) and ``princpt`` (cx, cy) in pixels. The camera frame is OpenCV's
  (x right, y down, z forward); InterHand2.6M's ``world2cam`` is ``R (X - c)``.
* Stored: camera frame in METRES, ``X_cam = R X_world / 1000 + t`` with
  ``t = -R c / 1000`` (:func:`world_to_camera`). Pixels: ``K X_cam`` with
  ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (:func:`intrinsics`), pixel centres at
  integer coordinates as in InterHand2.6M's ``cam2pixel``.
* Joints: 42 = right hand 0-20 then left hand 21-41, each hand in the handjax ``"ih26m"``
  order (per finger tip -> base, thumb first; wrist last: joints 20 and 41).
* MANO (NeuralAnnot): per hand ``pose`` (48,) axis-angle whose hand part (3:48) is
  relative to the MANO mean pose (smplx ``flat_hand_mean=False``), ``shape`` (10,),
  ``trans`` (3,) in world METRES, for the smplx layer ``V = R0 (V_rest - J0) + J0 + trans``
  where J0 = J0(betas) is the rest-pose wrist (MANO ``J_regressor[0]`` of the shaped
  template). In the camera frame (:func:`mano_world_to_camera`) the root rotation becomes
  ``R R0`` and, because the root rotation pivots about J0, the translation becomes
  ``R (J0 + trans) + t - J0`` (InterHand2.6M ``tool/MANO_world_to_camera/convert.py``
  does the same with a regressed posed wrist; the rest wrist J0 is exact). J0 depends on
  the MANO model: :class:`RootPivot`.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

from data_pipelines.manual import CorruptFileError, as_array, load_json

SPLITS = ("train", "val", "test")
SUBSETS = ("h", "m", "hm")
FPS = (5, 30)
HANDS = ("right", "left")
HAND_TYPES = ("right", "left", "interacting")
NUM_JOINTS = 42
ROOTS = {"right": 20, "left": 41}
DOWNLOAD_PAGE = "https://mks0601.github.io/InterHand2.6M/"
AID_LIST_SOURCE = "https://github.com/facebookresearch/InterWild (README: aid_human_annot_train.txt / _test.txt)"


# ----------------------------------------------------------------------------- file layout
def annotation_path(root, split: str, kind: str) -> Path:
    """``annotations/<split>/InterHand2.6M_<split>_<kind>.json`` (kind: data, camera, joint_3d,
    MANO_NeuralAnnot)."""
    return Path(root) / "annotations" / split / f"InterHand2.6M_{split}_{kind}.json"


ANNOTATION_KINDS = ("data", "camera", "joint_3d", "MANO_NeuralAnnot")


def aid_list_candidates(split: str) -> Tuple[str, str]:
    """Where the human-annotation id list of a split may be put (either place)."""
    name = f"aid_human_annot_{split}.txt"
    return f"annotations/{name}", f"annotations/{split}/{name}"


def rootnet_path(root, split: str, fps: int) -> Path:
    """RootNet output of a split: ``rootnet_output/rootnet_interhand2.6m_output_<split>[_30fps].json``."""
    suffix = "" if fps == 5 else f"_{fps}fps"
    return Path(root) / "rootnet_output" / f"rootnet_interhand2.6m_output_{split}{suffix}.json"


def image_path(root, split: str, file_name: str) -> Path:
    """``images/<split>/<file_name>`` (file_name from data.json, e.g. ``Capture0/<seq>/cam400262/image23199.jpg``)."""
    return Path(root) / "images" / split / file_name


def subset_splits(subset: str) -> Tuple[str, ...]:
    """Splits of a subset: v1.0's val split is machine-annotated only, so H has no val."""
    if subset not in SUBSETS:
        raise ValueError(f"InterHand2.6M subset must be one of {SUBSETS}, got {subset!r}")
    return ("train", "test") if subset == "h" else SPLITS


def required_entries(subset: str) -> List:
    """Entries of the manual dir a config needs (for :func:`data_pipelines.manual.check_manual_dir`)."""
    entries: List = []
    for split in subset_splits(subset):
        entries += [os.fspath(annotation_path("", split, kind)) for kind in ANNOTATION_KINDS]
        entries.append(f"images/{split}/")
        if subset != "hm" and split != "val":
            entries.append(aid_list_candidates(split))
    return entries


def instructions(subset: str = "hm") -> str:
    return f"""\
InterHand2.6M v1.0 must be downloaded by hand from {DOWNLOAD_PAGE} (licence CC-BY-NC 4.0).
Extract the image archives and the annotation archive of ONE frame rate (5 fps or 30 fps) so that
the manual directory (--manual_dir) looks like this:

  <manual_dir>/
    images/{{train,val,test}}/Capture*/<seq_name>/cam<camera>/image<frame>.jpg
    annotations/{{train,val,test}}/InterHand2.6M_<split>_data.json
                                  InterHand2.6M_<split>_camera.json
                                  InterHand2.6M_<split>_joint_3d.json
                                  InterHand2.6M_<split>_MANO_NeuralAnnot.json
    rootnet_output/rootnet_interhand2.6m_output_{{val,test}}.json          (optional, 5 fps)
    rootnet_output/rootnet_interhand2.6m_output_{{val,test}}_30fps.json    (optional, 30 fps)

The RootNet outputs (absolute root depths for evaluation) are linked from the "RootNet output"
section of https://github.com/facebookresearch/InterHand2.6M .
Subsets: "hm" (H+M) uses every annotation. "h" (human annotations: train and test only; v1.0's val
is machine-annotated) and "m" (machine = the rest) also need the human-annotation id lists
aid_human_annot_train.txt and aid_human_annot_test.txt (one annotation id per line, from
{AID_LIST_SOURCE}) placed in annotations/ or annotations/<split>/.
This config ({subset!r}) needs the entries listed above for its splits {list(subset_splits(subset))}."""


# ----------------------------------------------------------------------------- THE conversions
def intrinsics(focal, princpt) -> np.ndarray:
    """(3, 3) pinhole K from focal (fx, fy) and principal point (cx, cy)."""
    (fx, fy), (cx, cy) = np.asarray(focal, np.float64), np.asarray(princpt, np.float64)
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def camera_extrinsics(camrot, campos_mm) -> Tuple[np.ndarray, np.ndarray]:
    """World(mm) -> camera(m) rigid map as (R (3, 3), t (3,) metres): X_cam = R X_world/1000 + t."""
    rot = np.asarray(camrot, np.float64)
    return rot, -rot @ np.asarray(campos_mm, np.float64) / 1000.0


def world_to_camera(points_mm, camrot, campos_mm) -> np.ndarray:
    """World points in mm (..., 3) -> camera frame in metres (..., 3)."""
    rot, t = camera_extrinsics(camrot, campos_mm)
    return Camera(np.eye(3), rot, t).from_world(points_mm)


def project(points_cam, K) -> np.ndarray:
    """Pinhole projection (..., 3) -> (..., 2) pixels (z clamped away from 0 like cam2pixel's eps)."""
    p = np.asarray(points_cam, np.float64) @ np.asarray(K, np.float64).T
    z = np.where(np.abs(p[..., 2:]) < 1e-8, 1e-8, p[..., 2:])
    return p[..., :2] / z


def mano_world_to_camera(pose_world, trans_world, rot, t, j0) -> Tuple[np.ndarray, np.ndarray]:
    """World-frame MANO (pose (48,), trans (3,) m) -> camera frame (pose (48,), transl (3,) m).

    rot, t: world -> camera map of :func:`camera_extrinsics` (metres). j0 (3,): rest-pose
    wrist J0(betas) of the model used (:class:`RootPivot`). Only the root rotation and the
    translation change; the hand pose (relative to the mean pose or not) is untouched.
    """
    pose = np.array(pose_world, np.float64).reshape(16, 3)
    r0 = Rotation.from_rotvec(pose[0]).as_matrix()
    pose[0] = Rotation.from_matrix(rot @ r0).as_rotvec()
    j0 = np.asarray(j0, np.float64)
    transl = rot @ (j0 + np.asarray(trans_world, np.float64)) + t - j0
    return pose.reshape(48), transl


@dataclasses.dataclass(frozen=True)
class RootPivot:
    """J0(betas) = j0_template + j0_dirs @ betas per hand: the rest wrist MANO rotates about.

    ``source`` names the model; ``left_fix_applied`` tells whether InterHand2.6M's left
    shapedirs fix was applied (it changes the left J0).
    """

    j0_template: Dict[str, np.ndarray]
    j0_dirs: Dict[str, np.ndarray]
    source: str
    left_fix_applied: bool

    def __call__(self, hand: str, betas) -> np.ndarray:
        return self.j0_template[hand] + self.j0_dirs[hand] @ np.asarray(betas, np.float64)

    @staticmethod
    def from_models(right, left, source: str, left_fix_applied: bool) -> "RootPivot":
        tmpl, dirs = {}, {}
        for hand, model in (("right", right), ("left", left)):
            reg0 = np.asarray(model.J_regressor, np.float64)[0]
            tmpl[hand] = reg0 @ np.asarray(model.v_template, np.float64)
            dirs[hand] = np.einsum("v,vdk->dk", reg0, np.asarray(model.shapedirs, np.float64))
        return RootPivot(tmpl, dirs, source, left_fix_applied)


def needs_left_shapedirs_fix(right_shapedirs, left_shapedirs) -> bool:
    """InterHand2.6M's test for the official MANO_LEFT bug (smplx#48): the x-components of the
    left and right shapedirs (nearly) coincide (sum of absolute differences < 1)."""
    diff = np.asarray(left_shapedirs, np.float64)[:, 0, :] - np.asarray(right_shapedirs, np.float64)[:, 0, :]
    return bool(np.sum(np.abs(diff)) < 1.0)


def load_root_pivot(mano_dir: Optional[str] = None, fix_left_shapedirs: bool = True) -> RootPivot:
    """The J0 pivots of ``mano_dir``'s MANO_{RIGHT,LEFT}.pkl (None: handjax's built-in model).

    ``fix_left_shapedirs``: apply InterHand2.6M's left shapedirs fix when the left model has
    the official bug (the built-in model is mirrored correctly, so it never needs it).
    """
    from handjax.mano import apply_left_shapedirs_fix, load_model

    right, left = load_model(mano_dir, "right"), load_model(mano_dir, "left")
    applied = fix_left_shapedirs and needs_left_shapedirs_fix(right.shapedirs, left.shapedirs)
    if applied:
        left = apply_left_shapedirs_fix(left)
    source = os.fspath(mano_dir) if mano_dir else "built-in"
    return RootPivot.from_models(right, left, source, applied)


# ----------------------------------------------------------------------------- annotations
@dataclasses.dataclass
class SplitAnnotations:
    """The parsed json files of one split (``data`` indexed by image id)."""

    split: str
    annotations: List[dict]
    images: Dict[int, dict]
    cameras: dict
    joints: dict
    mano: dict
    rootnet: Optional[Dict[int, dict]]
    paths: Dict[str, Path]


def load_split(root, split: str, fps: int) -> SplitAnnotations:
    """Read the json files of a split (CorruptFileError names a broken file)."""
    paths = {kind: annotation_path(root, split, kind) for kind in ANNOTATION_KINDS}
    data = load_json(paths["data"])
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise CorruptFileError(paths["data"], "expected a COCO-style object with 'images' and 'annotations' lists")
    images = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img:
            raise CorruptFileError(paths["data"], f"an entry of 'images' has no 'id': {str(img)[:200]}")
        images[int(img["id"])] = img
    rootnet = None
    rn_path = rootnet_path(root, split, fps)
    if rn_path.is_file():
        paths["rootnet"] = rn_path
        entries = load_json(rn_path)
        if not isinstance(entries, list):
            raise CorruptFileError(rn_path, "expected a list of {annot_id, bbox, abs_depth, ...} entries")
        rootnet = {int(e["annot_id"]): e for e in entries if isinstance(e, dict) and "annot_id" in e}
    return SplitAnnotations(split, data["annotations"], images, load_json(paths["camera"]),
                            load_json(paths["joint_3d"]), load_json(paths["MANO_NeuralAnnot"]), rootnet, paths)


def read_aid_list(root, split: str) -> set:
    """Annotation ids of the human-annotated subset of a split (one integer per line)."""
    for rel in aid_list_candidates(split):
        path = Path(root) / rel
        if path.is_file():
            ids = set()
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        ids.add(int(line.strip()))
                    except ValueError:
                        raise CorruptFileError(path, f"line {n}: expected an annotation id, got {line.strip()!r}") \
                            from None
            return ids
    raise FileNotFoundError(f"none of {aid_list_candidates(split)} exists under {root}")


def select_annotations(ann: SplitAnnotations, subset: str, root) -> List[dict]:
    """The annotations of ``subset`` in data.json order (h: in the id list, m: not in it)."""
    if subset == "hm" or (subset == "m" and ann.split == "val"):
        return list(ann.annotations)
    human = read_aid_list(root, ann.split)
    keep_human = subset == "h"
    return [a for a in ann.annotations if (int(a["id"]) in human) == keep_human]


def _flat(value, n: int, path, key: str, dtype=np.float32) -> np.ndarray:
    """A length-n vector given flat (n,) or as (n, 1) nested lists."""
    arr = as_array(value, (-1,) if np.ndim(value) == 1 else (-1, 1), path=path, key=key, dtype=dtype).reshape(-1)
    if arr.shape != (n,):
        raise CorruptFileError(path, f"key {key!r} has {arr.size} values, expected {n}")
    return arr


def _lookup(table: dict, path, *keys):
    node = table
    for k in keys:
        if not isinstance(node, dict) or str(k) not in node:
            raise CorruptFileError(path, f"no entry {'/'.join(str(x) for x in keys)} (missing key {str(k)!r})")
        node = node[str(k)]
    return node


@dataclasses.dataclass(frozen=True)
class Camera:
    """One camera: K (3, 3); R (3, 3), t (3,) metres of :func:`camera_extrinsics`."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray

    def from_world(self, points_mm) -> np.ndarray:
        """World mm (..., 3) -> camera metres (..., 3) (same map as :func:`world_to_camera`)."""
        return np.asarray(points_mm, np.float64) / 1000.0 @ self.R.T + self.t


def camera_of(ann: SplitAnnotations, capture, cam) -> Camera:
    path = ann.paths["camera"]
    entry = _lookup(ann.cameras, path, capture)
    get = lambda field, shape: as_array(_lookup(entry, path, field, cam), shape, path=path,  # noqa: E731
                                        key=f"{capture}/{field}/{cam}", dtype=np.float64)
    rot, t = camera_extrinsics(get("camrot", (3, 3)), get("campos", (3,)))
    return Camera(intrinsics(get("focal", (2,)), get("princpt", (2,))), rot, t)


def world_joints_of(ann: SplitAnnotations, capture, frame) -> np.ndarray:
    """(42, 3) world mm of joint_3d.json."""
    path = ann.paths["joint_3d"]
    entry = _lookup(ann.joints, path, capture, frame)
    return as_array(_lookup(entry, path, "world_coord"), (NUM_JOINTS, 3), path=path,
                    key=f"{capture}/{frame}/world_coord", dtype=np.float64)


def mano_of(ann: SplitAnnotations, capture, frame, hand: str) -> Optional[Dict[str, np.ndarray]]:
    """World-frame NeuralAnnot params of one hand, or None when absent/null."""
    path = ann.paths["MANO_NeuralAnnot"]
    entry = ann.mano.get(str(capture), {}).get(str(frame)) if isinstance(ann.mano, dict) else None
    param = entry.get(hand) if isinstance(entry, dict) else None
    if param is None:
        return None
    key = f"{capture}/{frame}/{hand}"
    return {
        "pose": as_array(param.get("pose"), (48,), path=path, key=key + "/pose", dtype=np.float64),
        "shape": as_array(param.get("shape"), (10,), path=path, key=key + "/shape", dtype=np.float64),
        "trans": as_array(param.get("trans"), (3,), path=path, key=key + "/trans", dtype=np.float64),
    }


def parse_annotation(ann: SplitAnnotations, a: dict) -> Dict[str, object]:
    """Per-annotation labels from data.json (raw fields checked, CorruptFileError otherwise)."""
    path = ann.paths["data"]
    aid = a.get("id")
    img = ann.images.get(int(a.get("image_id", -1)))
    if img is None:
        raise CorruptFileError(path, f"annotation {aid}: image_id {a.get('image_id')} not among the images")
    for field in ("file_name", "width", "height", "capture", "camera", "frame_idx"):
        if field not in img:
            raise CorruptFileError(path, f"image {img.get('id')}: missing field {field!r}")
    hand_type = a.get("hand_type")
    if hand_type not in HAND_TYPES:
        raise CorruptFileError(path, f"annotation {aid}: hand_type {hand_type!r} not in {HAND_TYPES}")
    return {
        "annot_id": int(aid),
        "image": img,
        "bbox": as_array(a.get("bbox"), (4,), path=path, key=f"annotations[{aid}].bbox"),
        "joint_valid": _flat(a.get("joint_valid"), NUM_JOINTS, path, f"annotations[{aid}].joint_valid") > 0,
        "hand_type": hand_type,
        "hand_type_valid": bool(np.asarray(a.get("hand_type_valid", 0)).reshape(-1)[0] > 0),
    }


def sequence_keys(rows: Iterable[dict]) -> Dict[Tuple, int]:
    """Ids 0.. of the (capture, seq_name, camera) sequences in first-seen order."""
    ids: Dict[Tuple, int] = {}
    for img in rows:
        ids.setdefault((str(img["capture"]), str(img.get("seq_name", "")), str(img["camera"])), len(ids))
    return ids


def missing_images(root, split: str, file_names: Sequence[str]) -> List[str]:
    """Relative paths of the images that are not files."""
    return [os.fspath(Path("images") / split / f) for f in file_names if not image_path(root, split, f).is_file()]
