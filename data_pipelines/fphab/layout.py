"""First-Person Hand Action Benchmark (FPHAB): raw layout, splits, parsing, THE conversions.

Layout of the manual dir (the extracted download; names as published)::

    Video_files/<Subject>/<action>/<seq>/color/color_%04d.jpeg           1920 x 1080
    Video_files_480/<Subject>/<action>/<seq>/color/color_%04d.jpeg       480 x 270 (optional:
        handobjectconsist's reduce_fphab.py output; reduced configs resize on the fly without it)
    Hand_pose_annotation_v1/<Subject>/<action>/<seq>/skeleton.txt        frame id + 21 x 3 world mm
    Subjects_info/Subject_<k>_info.txt                                    3 header lines, then
                                                                          "action seq length"
    data_split_action_recognition.txt                                    "Training N" header, lines
                                                                          "Subject_k/action/seq label",
                                                                          a "Test N" line, test lines
    Object_6D_pose_annotation_v1_1/<Subject>/<action>/<seq>/object_pose.txt   (hand-object configs)
    fhbhands_fits/<Subject>/<action>/<seq>/pkls.pkl                      (optional MANO fits,
        handobjectconsist's assets/fhbhands_fits.tgz)

Conventions (the one place they are handled)
--------------------------------------------
* Skeletons are in the depth/world camera frame in mm, FPHAB joint order :data:`FPHAB_JOINTS`
  (wrist, the five MCPs, then PIP, DIP, TIP per finger). The colour camera frame (OpenCV
  axes) is reached with the published extrinsics :data:`CAM_EXTR` (mm), then /1000:
  ``X_cam = (R_e X + t_e) / 1000`` (:func:`skeleton_to_camera`).
* Stored joints are in the handjax ``"manopth"`` joint ORDER (wrist, thumb MCP..tip,
  index, middle, ring, pinky = OpenPose order), gathered with :data:`FPHAB_TO_OPENPOSE`
  (handobjectconsist's ``reorder_idx``). FPHAB's joints are its own skeleton, not MANO
  joints (handobjectconsist fits a vertex regressor for them): the order is shared, the
  joint definitions are not. :data:`FPHAB_CONVENTION` names the raw order in handjax
  terms (usable with ``handjax.mano.joint_remap``).
* Colour intrinsics :data:`CAM_INTR` are for 1920 x 1080; for the 480 x 270 copies the
  first two rows are multiplied by 1/4 exactly as handobjectconsist does.
* Object poses: ``object_pose.txt`` rows hold 16 values, read as a 4 x 4 row-major
  matrix then transposed (handobjectconsist); it maps object-model mm to world mm.
  Stored ``object_pose`` maps model METRES to colour-camera METRES:
  ``[[R_e R_o, (R_e t_o + t_e) / 1000], [0, 1]]`` (:func:`object_to_camera`).
* MANO fits (handobjectconsist): per frame ``fullpose`` (48,) axis-angle with a FLAT hand
  mean, ``shape`` (10,), ``trans`` (3,) metres in the colour camera frame:
  ``vertices = MANO(fullpose, shape) + trans`` with no centring (manopth ``center_idx=None``).
* FPHAB has only right hands.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_pipelines.manual import CorruptFileError, RestrictedPickleError, as_array, load_pickle_restricted
from data_pipelines.manual import _NumpyOnlyUnpickler

DOWNLOAD_PAGE = "https://guiggh.github.io/publications/first-person-hands/"
SUBJECTS = tuple(f"Subject_{k}" for k in range(1, 7))
SUBJECT_SPLIT = {"train": ("Subject_1", "Subject_3", "Subject_4"), "test": ("Subject_2", "Subject_5", "Subject_6")}
HO_OBJECTS = ("juice_bottle", "liquid_soap", "milk", "salt")  # objects with meshes and poses
FULL_SIZE = (1080, 1920)    # (height, width)
REDUCED_SIZE = (270, 480)
REDUCE_FACTOR = 0.25

# Published colour-camera calibration (FPHAB download page / README, used verbatim by
# hassony2/handobjectconsist meshreg/datasets/fhbhands.py): extrinsics world(depth) mm ->
# colour camera mm, and colour intrinsics at 1920 x 1080.
CAM_EXTR = np.array([
    [0.999988496304, -0.00468848412856, 0.000982563360594, 25.7],
    [0.00469115935266, 0.999985218048, -0.00273845880292, 1.22],
    [-0.000969709653873, 0.00274303671904, 0.99999576807, 3.902],
    [0.0, 0.0, 0.0, 1.0],
])
CAM_INTR = np.array([[1395.749023, 0.0, 935.732544], [0.0, 1395.749268, 540.681030], [0.0, 0.0, 1.0]])

# FPHAB skeleton order (its README) and its mapping onto handjax joint names.
FPHAB_JOINTS = ("Wrist", "TMCP", "IMCP", "MMCP", "RMCP", "PMCP", "TPIP", "TDIP", "TTIP", "IPIP", "IDIP", "ITIP",
                "MPIP", "MDIP", "MTIP", "RPIP", "RDIP", "RTIP", "PPIP", "PDIP", "PTIP")
FPHAB_TO_HANDJAX_NAMES = {
    "Wrist": "wrist", "TMCP": "thumb1", "TPIP": "thumb2", "TDIP": "thumb3", "TTIP": "thumb_tip",
    "IMCP": "index1", "IPIP": "index2", "IDIP": "index3", "ITIP": "index_tip",
    "MMCP": "middle1", "MPIP": "middle2", "MDIP": "middle3", "MTIP": "middle_tip",
    "RMCP": "ring1", "RPIP": "ring2", "RDIP": "ring3", "RTIP": "ring_tip",
    "PMCP": "pinky1", "PPIP": "pinky2", "PDIP": "pinky3", "PTIP": "pinky_tip",
}
# raw FPHAB index of each joint in OpenPose / handjax "manopth" order
FPHAB_TO_OPENPOSE = (0, 1, 6, 7, 8, 2, 9, 10, 11, 3, 12, 13, 14, 4, 15, 16, 17, 5, 18, 19, 20)


def fphab_convention():
    """The raw FPHAB order as a handjax Convention (gather indices into handjax's mano21
    layout, metres, no centring), e.g. for ``joint_remap(fphab_convention(), "manopth")``."""
    from handjax.mano import MANO21_NAMES, get_convention

    order = tuple(MANO21_NAMES.index(FPHAB_TO_HANDJAX_NAMES[j]) for j in FPHAB_JOINTS)
    return get_convention("manopth").replace(name="fphab", joint_order=order, units="m", center_idx=None,
                                             source="FPHAB README joint order")


INSTRUCTIONS = f"""\
FPHAB must be requested and downloaded by hand from {DOWNLOAD_PAGE} (research licence).
Extract it so that the manual directory (--manual_dir) holds:

  <manual_dir>/
    Video_files/Subject_<k>/<action>/<seq>/color/color_%04d.jpeg
    Hand_pose_annotation_v1/Subject_<k>/<action>/<seq>/skeleton.txt
    Subjects_info/Subject_<k>_info.txt                  (k = 1..6)
    data_split_action_recognition.txt
    Object_6D_pose_annotation_v1_1/Subject_<k>/<action>/<seq>/object_pose.txt   (hand_object configs)
    Video_files_480/...       optional: 480x270 copies (handobjectconsist reduce_fphab.py); the *_480
                              configs resize Video_files on the fly (PIL bilinear) without them
    fhbhands_fits/Subject_<k>/<action>/<seq>/pkls.pkl   optional: MANO fits (extract
                              assets/fhbhands_fits.tgz of https://github.com/hassony2/handobjectconsist)"""


# ----------------------------------------------------------------------------- THE conversions
def skeleton_to_camera(skeleton_mm) -> np.ndarray:
    """Raw skeleton (..., 21, 3) world mm, FPHAB order -> colour camera metres, OpenPose order."""
    skel = np.asarray(skeleton_mm, np.float64)[..., FPHAB_TO_OPENPOSE, :]
    return (skel @ CAM_EXTR[:3, :3].T + CAM_EXTR[:3, 3]) / 1000.0


def object_to_camera(pose_world_mm) -> np.ndarray:
    """(4, 4) object pose (model mm -> world mm) -> (4, 4) model metres -> camera metres."""
    full = CAM_EXTR @ np.asarray(pose_world_mm, np.float64)
    out = np.eye(4)
    out[:3, :3] = full[:3, :3]
    out[:3, 3] = full[:3, 3] / 1000.0
    return out


def intrinsics(reduced: bool) -> np.ndarray:
    """Colour K at full resolution, or for the 480 x 270 copies (rows 0-1 scaled by 1/4)."""
    K = CAM_INTR.copy()
    if reduced:
        K[:2] *= REDUCE_FACTOR
    return K


def project(points, K) -> np.ndarray:
    p = np.asarray(points, np.float64) @ np.asarray(K).T
    return p[..., :2] / p[..., 2:]


# ----------------------------------------------------------------------------- layout
def image_path(root, subject: str, action: str, seq: str, frame: int, reduced: bool) -> Path:
    folder = "Video_files_480" if reduced else "Video_files"
    return Path(root) / folder / subject / action / seq / "color" / f"color_{frame:04d}.jpeg"


def skeleton_path(root, subject: str, action: str, seq: str) -> Path:
    return Path(root) / "Hand_pose_annotation_v1" / subject / action / seq / "skeleton.txt"


def object_pose_path(root, subject: str, action: str, seq: str) -> Path:
    return Path(root) / "Object_6D_pose_annotation_v1_1" / subject / action / seq / "object_pose.txt"


def fits_path(root, subject: str, action: str, seq: str) -> Path:
    return Path(root) / "fhbhands_fits" / subject / action / seq / "pkls.pkl"


def required_entries(hand_object: bool, reduced: bool) -> List:
    entries: List = ["data_split_action_recognition.txt", "Hand_pose_annotation_v1/"]
    entries += [f"Subjects_info/{s}_info.txt" for s in SUBJECTS]
    entries.append(("Video_files_480/", "Video_files/") if reduced else "Video_files/")
    if hand_object:
        entries.append("Object_6D_pose_annotation_v1_1/")
    return entries


# ----------------------------------------------------------------------------- parsing
def read_subject_info(path) -> Dict[Tuple[str, str], int]:
    """(action, seq) -> number of frames, from a Subject_<k>_info.txt."""
    lengths = {}
    lines = Path(path).read_text().splitlines()
    for n, line in enumerate(lines[3:], 4):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[2].isdigit():
            raise CorruptFileError(path, f"line {n}: expected 'action seq length', got {line.strip()!r}")
        lengths[(parts[0], parts[1])] = int(parts[2])
    return lengths


@dataclasses.dataclass(frozen=True)
class SequenceRef:
    subject: str
    action: str
    seq: str
    label: int   # action class index of the split file


def read_action_split(path) -> Dict[str, List[SequenceRef]]:
    """{'train': [...], 'test': [...]} from data_split_action_recognition.txt (file order)."""
    out: Dict[str, List[SequenceRef]] = {"train": [], "test": []}
    current = None
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        head = text.split()[0]
        if head in ("Training", "Test"):
            current = "train" if head == "Training" else "test"
            continue
        parts = text.split()
        names = parts[0].split("/")
        if current is None or len(parts) != 2 or len(names) != 3 or not parts[1].lstrip("-").isdigit():
            raise CorruptFileError(path, f"line {n}: expected 'Subject_k/action/seq label' after a "
                                         f"'Training'/'Test' header, got {text!r}")
        out[current].append(SequenceRef(names[0], names[1], names[2], int(parts[1])))
    return out


def split_sequences(split_file, split_type: str) -> Dict[str, List[SequenceRef]]:
    """Sequences of train / test: the official action split, or handobjectconsist's subject
    split (subjects 1, 3, 4 train; 2, 5, 6 test; every sequence of the split file)."""
    action = read_action_split(split_file)
    if split_type == "actions":
        return action
    if split_type != "subjects":
        raise ValueError(f"FPHAB split_type must be 'actions' or 'subjects', got {split_type!r}")
    every = action["train"] + action["test"]
    return {split: [r for r in every if r.subject in SUBJECT_SPLIT[split]] for split in ("train", "test")}


def read_skeleton(path, num_frames: int) -> np.ndarray:
    """(num_frames, 21, 3) world mm; rows must be frames 0..num_frames-1 in order."""
    try:
        values = np.loadtxt(path, ndmin=2)
    except ValueError as err:
        raise CorruptFileError(path, f"not a numeric table ({err})") from None
    if values.shape != (num_frames, 64):
        raise CorruptFileError(path, f"expected {num_frames} rows of frame id + 63 values (Subjects_info), "
                                     f"got shape {values.shape}")
    if not np.array_equal(values[:, 0], np.arange(num_frames)):
        raise CorruptFileError(path, "the first column must count the frames 0, 1, 2, ...")
    return as_array(values[:, 1:].reshape(num_frames, 21, 3), (num_frames, 21, 3), path=path, key="skeleton",
                    dtype=np.float64)


def object_name(action: str) -> str:
    """Object of an action ('open_juice_bottle' -> 'juice_bottle'), as handobjectconsist derives it."""
    return "_".join(action.split("_")[1:])


def read_object_poses(path) -> Dict[int, np.ndarray]:
    """frame -> (4, 4) model mm -> world mm (16 values per row, row-major then transposed)."""
    poses = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 17:
            raise CorruptFileError(path, f"line {n}: expected a frame id and 16 values, got {len(parts)} fields")
        try:
            poses[int(parts[0])] = np.array(parts[1:], np.float64).reshape(4, 4).T
        except ValueError as err:
            raise CorruptFileError(path, f"line {n}: {err}") from None
    return poses


def read_fits(path) -> Dict[int, Dict[str, np.ndarray]]:
    """frame -> {'pose' (48,), 'betas' (10,), 'transl' (3,)} from a restricted-unpickled pkls.pkl."""
    raw = load_pickle_restricted(path)
    if not isinstance(raw, dict):
        raise CorruptFileError(path, f"expected a dict keyed '%06d.pkl', got {type(raw).__name__}")
    fits = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if not name.endswith(".pkl") or not name[:-4].isdigit() or not isinstance(value, dict):
            raise CorruptFileError(path, f"entry {name!r}: expected '%06d.pkl' -> dict of fullpose/shape/trans")
        get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in value.items()}
        fits[int(name[:-4])] = {
            "pose": as_array(get.get("fullpose"), (48,), path=path, key=f"{name}/fullpose").reshape(48),
            "betas": as_array(get.get("shape"), (10,), path=path, key=f"{name}/shape"),
            "transl": as_array(get.get("trans"), (3,), path=path, key=f"{name}/trans"),
        }
    return fits


def reduce_image(path) -> bytes:
    """A full-resolution frame resized to 480 x 270 like reduce_fphab.py (PIL bilinear, JPEG
    with PIL's default quality)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").resize((REDUCED_SIZE[1], REDUCED_SIZE[0]), Image.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="JPEG")
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class Sample:
    ref: SequenceRef
    frame: int
    sequence_id: int


def missing_frames(root, ref: SequenceRef, frames: Sequence[int], from_reduced: bool) -> List[Tuple[int, str]]:
    """(frame, relative path) of the colour frames of a sequence that are not files."""
    out = []
    for frame in frames:
        path = image_path(root, ref.subject, ref.action, ref.seq, frame, from_reduced)
        if not path.is_file():
            out.append((frame, os.fspath(path.relative_to(root))))
    return out


def optional_fits(root, ref: SequenceRef) -> Optional[Path]:
    path = fits_path(root, ref.subject, ref.action, ref.seq)
    return path if path.is_file() else None


# ----------------------------------------------------------------------------- skeleton adaptor
ADAPTOR_SHAPE = (21, 778)


class _InertNamespace:
    """Stand-in for ``argparse.Namespace`` in upstream's adaptor pickle (its fitting options): holds the pickled
    attributes as ``vars``, runs no code."""

    def __init__(self, *args, **kwargs):
        self.vars = dict(kwargs)

    def __setstate__(self, state):
        self.vars = dict(state) if isinstance(state, dict) else {"state": state}

    def __repr__(self) -> str:
        return f"Namespace({self.vars!r})"


class _AdaptorUnpickler(_NumpyOnlyUnpickler):
    """Numpy arrays and plain data (the dataset allow-list) plus argparse.Namespace as an inert stand-in."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("argparse", "Namespace"):
            return _InertNamespace
        return super().find_class(module, name)


def read_skeleton_adaptor(path) -> Dict[str, object]:
    """handobjectconsist's FPHAB skeleton adaptor (``assets/mano/fhb_skel_centeridx9.pkl``): a dict with
    ``adaptor`` (21, 778) float32 (MANO vertices -> the 21 FPHAB joints in OpenPose order, the order the records
    store), ``shape`` (10,) (fitted betas; upstream never uses them in the forward) and ``opts`` (the fit's
    options; argparse namespaces stay inert :class:`_InertNamespace` objects).

    Read with a restricted unpickler: any other global is refused (RestrictedPickleError naming the file and the
    global); a garbled file, a missing key or a wrong shape is a CorruptFileError naming the file and key."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = _AdaptorUnpickler(fh, path).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"FPHAB skeleton adaptor {path} not found (handobjectconsist's "
                                f"assets/mano/fhb_skel_centeridx9.pkl)") from None
    except (CorruptFileError, RestrictedPickleError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"cannot unpickle ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict):
        raise CorruptFileError(path, f"expected a dict with keys 'adaptor', 'shape', 'opts', got {type(raw).__name__}")
    get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    if "adaptor" not in get:
        raise CorruptFileError(path, f"key 'adaptor' missing (keys: {sorted(map(str, get))})")
    adaptor = as_array(get["adaptor"], ADAPTOR_SHAPE, path=path, key="adaptor", dtype=np.float32)
    shape = as_array(get.get("shape", np.zeros(10)), (10,), path=path, key="shape", dtype=np.float32)
    return {"adaptor": adaptor, "shape": shape, "opts": get.get("opts")}
