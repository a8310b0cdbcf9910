"""COCO-WholeBody v1.0 raw download: file layout, annotation parsing, THE keypoint-order conversion.

Everything that touches the raw files lives here; the tfds builder only arranges the
results into features.

Files (manual directory; the InterWild ``data/MSCOCO`` layout, or the usual COCO one)
-------------------------------------------------------------------------------------
* ``annotations/coco_wholebody_{train,val}_v1.0.json`` (https://github.com/jin-s13/COCO-WholeBody):
  COCO keypoint annotations plus, per person, ``lefthand_box`` / ``righthand_box``
  (x, y, w, h), ``lefthand_kpts`` / ``righthand_kpts`` (21 x (x, y, v), flat 63) and
  ``lefthand_valid`` / ``righthand_valid`` (bool).
* ``images/train2017/*.jpg``, ``images/val2017/*.jpg`` (or ``train2017/`` / ``val2017/`` at the top).
* optional ``annotations/MSCOCO_train_MANO_NeuralAnnot.json`` (NeuralAnnot pseudo-labels,
  linked from InterWild's README): ``{str(annotation id): {"right": H | null, "left": H | null}}``
  with ``H = {"mano_param": {"pose" (48,), "shape" (10,), "trans" (3,)},
  "cam_param": {"focal" (2,), "princpt" (2,)}}``: smplx MANO (``flat_hand_mean=False``,
  i.e. pose[3:] relative to the mean hand) in the camera frame, metres, with translation
  ``trans``; projected with that hand's own pinhole focal / principal point (pixels of the
  original image). Stored as the file gives them.

Samples (InterWild ``data/MSCOCO/MSCOCO.py``): one record per PERSON annotation, in the
json's annotation order, kept when it is not a crowd, has body keypoints
(``num_keypoints > 0``), at least one of ``lefthand_valid`` / ``righthand_valid`` is true,
and its person box survives InterWild's ``sanitize_bbox`` (positive area inside the image).
The dropped annotations are counted per reason (builder metadata ``filtered``).

Keypoint order: COCO-WholeBody's hands use the OpenPose order (wrist, then per finger
thumb, index ("forefinger"), middle, ring, pinky from the base to the tip: ``*1`` .. ``*4``).
Stored in handjax's ``"ih26m"`` order (per finger tip -> base, thumb first, wrist last)
through :data:`COCO_TO_IH26M`. Validity of a keypoint: ``v > 0`` (InterWild; v may be a float).
Boxes are stored as (x1, y1, x2, y2) = (x, y, x + w, y + h) of the raw (x, y, w, h).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from data_pipelines.manual import CorruptFileError, as_array, load_json

SPLITS = ("train", "val")
HANDS = ("right", "left")
NUM_HAND_KPTS = 21
DOWNLOAD_PAGE = "https://github.com/jin-s13/COCO-WholeBody"
NEURALANNOT_NAME = "MSCOCO_train_MANO_NeuralAnnot.json"
NEURALANNOT_SOURCE = ("InterWild README (https://github.com/facebookresearch/InterWild, 'MSCOCO_train_MANO_"
                      "NeuralAnnot.json can be downloaded from here')")

# COCO-WholeBody hand keypoint names (mmpose coco_wholebody_hand / OpenPose order).
COCO_HAND_NAMES = (
    "wrist", "thumb1", "thumb2", "thumb3", "thumb4", "forefinger1", "forefinger2", "forefinger3", "forefinger4",
    "middle_finger1", "middle_finger2", "middle_finger3", "middle_finger4", "ring_finger1", "ring_finger2",
    "ring_finger3", "ring_finger4", "pinky_finger1", "pinky_finger2", "pinky_finger3", "pinky_finger4",
)
# handjax "ih26m" order (InterHand2.6M skeleton.txt, per hand) in the same naming.
IH26M_HAND_NAMES = (
    "thumb4", "thumb3", "thumb2", "thumb1", "forefinger4", "forefinger3", "forefinger2", "forefinger1",
    "middle_finger4", "middle_finger3", "middle_finger2", "middle_finger1", "ring_finger4", "ring_finger3",
    "ring_finger2", "ring_finger1", "pinky_finger4", "pinky_finger3", "pinky_finger2", "pinky_finger1", "wrist",
)
# ih26m[k] = coco[COCO_TO_IH26M[k]]
COCO_TO_IH26M = tuple(COCO_HAND_NAMES.index(n) for n in IH26M_HAND_NAMES)


def coco_to_ih26m(kpts) -> np.ndarray:
    """(..., 21, C) keypoints in COCO-WholeBody (OpenPose) order -> handjax "ih26m" order."""
    return np.asarray(kpts)[..., list(COCO_TO_IH26M), :]


# ----------------------------------------------------------------------------- file layout
def annotation_rel(split: str) -> str:
    return f"annotations/coco_wholebody_{split}_v1.0.json"


def image_dir_candidates(split: str) -> Tuple[str, str]:
    """Where a split's images may be: InterWild's ``images/<split>2017/`` or COCO's ``<split>2017/``."""
    return f"images/{split}2017/", f"{split}2017/"


def neuralannot_path(root) -> Path:
    return Path(root) / "annotations" / NEURALANNOT_NAME


def required_entries() -> List:
    """Entries the manual dir needs (for :func:`data_pipelines.manual.check_manual_dir`)."""
    entries: List = []
    for split in SPLITS:
        entries.append(annotation_rel(split))
        entries.append(image_dir_candidates(split))
    return entries


def image_dir(root, split: str) -> Path:
    for rel in image_dir_candidates(split):
        if (Path(root) / rel).is_dir():
            return Path(root) / rel
    raise FileNotFoundError(f"none of {image_dir_candidates(split)} is a folder under {root}")


INSTRUCTIONS = f"""\
COCO-WholeBody v1.0 must be downloaded by hand: the COCO 2017 images (https://cocodataset.org,
train2017.zip and val2017.zip) and the whole-body annotations coco_wholebody_train_v1.0.json /
coco_wholebody_val_v1.0.json from {DOWNLOAD_PAGE} (licence: see that page).
Optional: InterWild's NeuralAnnot MANO pseudo-labels {NEURALANNOT_NAME} from
{NEURALANNOT_SOURCE}; without it the records carry no MANO labels (mano/<hand>/valid False).
The manual directory (--manual_dir) must look like this (InterWild's data/MSCOCO layout;
train2017/ and val2017/ may also sit directly in the manual directory):

  <manual_dir>/
    images/train2017/000000000009.jpg ...
    images/val2017/000000000139.jpg ...
    annotations/coco_wholebody_train_v1.0.json
                coco_wholebody_val_v1.0.json
                {NEURALANNOT_NAME}        (optional)"""


# ----------------------------------------------------------------------------- annotations
@dataclasses.dataclass
class SplitAnnotations:
    """One split's json: images by id, person annotations in file order, its path."""

    split: str
    images: Dict[int, dict]
    annotations: List[dict]
    path: Path


def load_split(root, split: str) -> SplitAnnotations:
    path = Path(root) / annotation_rel(split)
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise CorruptFileError(path, "expected a COCO object with 'images' and 'annotations' lists")
    images = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img:
            raise CorruptFileError(path, f"an entry of 'images' has no 'id': {str(img)[:200]}")
        images[int(img["id"])] = img
    return SplitAnnotations(split, images, data["annotations"], path)


def load_neuralannot(root) -> Optional[Tuple[dict, Path]]:
    """(the parsed NeuralAnnot json, its path), or None when the optional file is absent."""
    path = neuralannot_path(root)
    if not path.is_file():
        return None
    data = load_json(path)
    if not isinstance(data, dict):
        raise CorruptFileError(path, "expected an object keyed by annotation id")
    return data, path


def sanitized_box(box_xywh, width: int, height: int) -> Optional[np.ndarray]:
    """InterWild's ``sanitize_bbox``: the box clipped to the image as (x, y, w, h), or None
    when it has no area (w * h <= 0 or an empty clipped extent)."""
    x, y, w, h = (float(v) for v in box_xywh)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if w * h > 0 and x2 > x1 and y2 > y1:
        return np.array([x1, y1, x2 - x1, y2 - y1])
    return None


def xywh_to_xyxy(box) -> np.ndarray:
    x, y, w, h = (float(v) for v in box)
    return np.array([x, y, x + w, y + h], np.float32)


FILTER_REASONS = ("crowd", "no_body_keypoints", "no_valid_hand", "empty_person_box")


def image_of(ann_split: "SplitAnnotations", ann) -> dict:
    """The image entry of a person annotation (CorruptFileError naming the json otherwise)."""
    path = ann_split.path
    if not isinstance(ann, dict):
        raise CorruptFileError(path, f"an entry of 'annotations' is not an object: {str(ann)[:200]}")
    img = ann_split.images.get(int(ann.get("image_id", -1)))
    if img is None:
        raise CorruptFileError(path, f"annotation {ann.get('id')}: image_id {ann.get('image_id')} not among the "
                                     "images")
    for field in ("file_name", "width", "height"):
        if field not in img:
            raise CorruptFileError(path, f"image {img.get('id')}: missing field {field!r}")
    return img


def keep_reason(ann_split: "SplitAnnotations", ann: dict) -> Optional[str]:
    """None when InterWild keeps the person annotation, else the reason it is dropped
    (one of :data:`FILTER_REASONS`)."""
    img = image_of(ann_split, ann)
    if ann.get("iscrowd"):
        return "crowd"
    if int(ann.get("num_keypoints", 0)) == 0:
        return "no_body_keypoints"
    if not ann.get("lefthand_valid") and not ann.get("righthand_valid"):
        return "no_valid_hand"
    box = as_array(ann.get("bbox"), (4,), path=ann_split.path, key=f"annotations[id={ann.get('id')}].bbox")
    if sanitized_box(box, int(img["width"]), int(img["height"])) is None:
        return "empty_person_box"
    return None


def _flag(value, path, key) -> bool:
    if isinstance(value, (bool, np.bool_)) or value in (0, 1):
        return bool(value)
    raise CorruptFileError(path, f"key {key!r}: expected a boolean, got {value!r}")


def parse_person(ann_split: SplitAnnotations, ann: dict) -> Dict[str, object]:
    """Hand labels of one kept person annotation (checked; CorruptFileError naming the json,
    the annotation id and the key otherwise). Arrays are (right, left)."""
    path = ann_split.path
    img = image_of(ann_split, ann)
    aid = ann.get("id")
    joints, conf, valid, boxes, box_valid = [], [], [], [], []
    for hand in HANDS:
        key = f"annotations[id={aid}].{hand}hand"
        for field in ("_kpts", "_box", "_valid"):
            if f"{hand}hand{field}" not in ann:
                raise CorruptFileError(path, f"annotation {aid}: missing key {hand}hand{field!r}")
        kpts = as_array(ann[f"{hand}hand_kpts"], (NUM_HAND_KPTS * 3,), path=path, key=key + "_kpts")
        kpts = coco_to_ih26m(kpts.reshape(NUM_HAND_KPTS, 3))
        joints.append(kpts[:, :2])
        conf.append(kpts[:, 2])
        hand_valid = _flag(ann[f"{hand}hand_valid"], path, key + "_valid")
        box = as_array(ann[f"{hand}hand_box"], (4,), path=path, key=key + "_box")
        valid.append(hand_valid)
        boxes.append(xywh_to_xyxy(box))
        box_valid.append(hand_valid and sanitized_box(box, int(img["width"]), int(img["height"])) is not None)
    conf_all = np.concatenate(conf).astype(np.float32)
    return {
        "annot_id": int(aid),
        "image": img,
        "joints2d": np.concatenate(joints).astype(np.float32),
        "joint_conf": conf_all,
        "joint_valid": conf_all > 0,
        "hand_valid": np.array(valid, bool),
        "hand_bbox": np.stack(boxes).astype(np.float32),
        "hand_bbox_valid": np.array(box_valid, bool),
        "person_bbox": xywh_to_xyxy(as_array(ann.get("bbox"), (4,), path=path, key=f"annotations[id={aid}].bbox")),
    }


def neuralannot_hand(entry, path, aid: int, hand: str) -> Optional[Dict[str, np.ndarray]]:
    """One hand's NeuralAnnot fit (pose 48, betas 10, transl 3, focal 2, princpt 2), or None
    when the file has no fit for it (``null``). CorruptFileError on a malformed entry."""
    if not isinstance(entry, dict):
        raise CorruptFileError(path, f"entry {aid}: expected an object with 'right' / 'left', got {str(entry)[:100]}")
    fit = entry.get(hand)
    if fit is None:
        return None
    key = f"{aid}/{hand}"
    if not isinstance(fit, dict) or not isinstance(fit.get("mano_param"), dict) \
            or not isinstance(fit.get("cam_param"), dict):
        raise CorruptFileError(path, f"entry {key}: expected {{'mano_param': {{...}}, 'cam_param': {{...}}}}")
    mp, cp = fit["mano_param"], fit["cam_param"]
    return {
        "pose": as_array(mp.get("pose"), (48,), path=path, key=key + "/mano_param/pose"),
        "betas": as_array(mp.get("shape"), (10,), path=path, key=key + "/mano_param/shape"),
        "transl": as_array(mp.get("trans"), (3,), path=path, key=key + "/mano_param/trans"),
        "focal": as_array(cp.get("focal"), (2,), path=path, key=key + "/cam_param/focal"),
        "princpt": as_array(cp.get("princpt"), (2,), path=path, key=key + "/cam_param/princpt"),
    }


def missing_images(root, split: str, file_names) -> List[str]:
    """Paths (relative to root) of the images that are not files."""
    folder = image_dir(root, split)
    rel = os.path.relpath(folder, root)
    return [os.path.join(rel, f) for f in file_names if not (folder / f).is_file()]
