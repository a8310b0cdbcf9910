"""DexYCB raw download: layout, the dex-ycb-toolkit split rules, label parsing, conventions.

Layout (``$DEX_YCB_DIR`` of the toolkit = the manual dir)::

    <root>/<subject>/<sequence>/meta.yml                       per sequence
    <root>/<subject>/<sequence>/<serial>/color_%06d.jpg        per camera and frame
    <root>/<subject>/<sequence>/<serial>/labels_%06d.npz
    <root>/calibration/intrinsics/<serial>_640x480.yml         color: fx, fy, ppx, ppy
    <root>/calibration/mano_<mano_calib>/mano.yml              betas (10,)

Split rules (dex-ycb-toolkit ``dex_ycb_toolkit/dex_ycb.py``): a setup/split selects
subjects, camera serials and sequence indices into each subject's SORTED list of 100
sequence folders; samples are enumerated sequence by sequence, within a sequence camera
by camera, within a camera frame by frame (``toolkit_index`` is the position in that
enumeration, the image id of the toolkit's HPE result files).

Conventions (nothing is converted: DexYCB labels are already in the camera frame):

* camera frame OpenCV (x right, y down, z forward), METRES (``joint_3d``, ``pose_m``
  translation); pixels with ``K = [[fx, 0, ppx], [0, fy, ppy], [0, 0, 1]]``;
* joints (21, 3) in the manopth order (wrist, then per finger thumb..little MCP, PIP,
  DIP, tip) = handjax ``"manopth"`` joint order, in metres (:data:`MANO_CONVENTION`);
* MANO: ``pose_m[0, :48]`` = global axis-angle (3) + 45 PCA coefficients for manopth with
  ``use_pca=True, ncomps=45, flat_hand_mean=False`` (the hand pose is
  ``coeffs @ hands_components + hands_mean``), ``pose_m[0, 48:51]`` = translation added to
  the MANO output (no centring); betas from the subject's ``mano.yml``, shared by both
  hands, used WITHOUT the left-hand shapedirs fix (DexYCB's fits were made without it);
* frames whose ``joint_3d`` is all -1 have no hand annotation (skipped by the builder, as
  by the toolkit's HPE evaluation).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_pipelines.manual import CorruptFileError, as_array, load_yaml

SUBJECTS = (
    "20200709-subject-01", "20200813-subject-02", "20200820-subject-03", "20200903-subject-04",
    "20200908-subject-05", "20200918-subject-06", "20200928-subject-07", "20201002-subject-08",
    "20201015-subject-09", "20201022-subject-10",
)
SERIALS = ("836212060125", "839512060362", "840412060917", "841412060263",
           "932122060857", "932122060861", "932122061900", "932122062010")
SETUPS = ("s0", "s1", "s2", "s3")
SPLITS = ("train", "val", "test")
SEQUENCES_PER_SUBJECT = 100
IMAGE_SIZE = (480, 640)  # (height, width) of the toolkit
DOWNLOAD_PAGE = "https://dex-ycb.github.io"
MANO_FLAGS = {"pose": "global axis-angle (3) + 45 PCA coefficients", "use_pca": True, "ncomps": 45,
              "flat_hand_mean": False, "left_shapedirs_fix": False, "units": "m",
              "joint_order": "manopth (handjax 'manopth' order)"}


def mano_convention():
    """handjax convention reproducing DexYCB's ``joint_3d`` from MANO: manopth tips and
    order, metres, no centring (the translation is always added)."""
    from handjax.mano import get_convention

    return get_convention("manopth").replace(name="dexycb", units="m", center_idx=None)


INSTRUCTIONS = f"""\
DexYCB must be downloaded by hand from {DOWNLOAD_PAGE} (registration, CC BY-NC 4.0). Extract the
archives of the ten subjects and calibration.tar.gz into one folder (the toolkit's $DEX_YCB_DIR)
and pass it as --manual_dir:

  <manual_dir>/
    20200709-subject-01/ ... 20201022-subject-10/    each with 100 sequence folders:
        <sequence>/meta.yml
        <sequence>/<serial>/color_%06d.jpg, labels_%06d.npz   (8 camera serials)
    calibration/intrinsics/<serial>_640x480.yml
    calibration/mano_<calib>/mano.yml

models/ (YCB meshes) and the depth images are not needed."""


# ----------------------------------------------------------------------------- split rules
def split_indices(setup: str, split: str, n_sequences: int = SEQUENCES_PER_SUBJECT
                  ) -> Tuple[List[int], List[int], List[int]]:
    """(subject, serial, sequence) index lists of a setup/split, as dex-ycb-toolkit selects them.

    ``n_sequences`` < 100 restricts the sequence indices to the first ``n_sequences``
    (a debug subset; the rules are those of the full dataset).
    """
    if setup not in SETUPS or split not in SPLITS:
        raise ValueError(f"DexYCB setup must be one of {SETUPS} and split one of {SPLITS}, got {setup!r}/{split!r}")
    every, all_serials, all_seq = list(range(10)), list(range(8)), list(range(SEQUENCES_PER_SUBJECT))
    if setup == "s0":  # seen subjects, views and objects: every 5th sequence held out
        held = [i for i in all_seq if i % 5 == 4]
        rule = {"train": (every, [i for i in all_seq if i % 5 != 4]), "val": ([0, 1], held),
                "test": ([2, 3, 4, 5, 6, 7, 8, 9], held)}[split]
        subjects, serials, sequences = rule[0], all_serials, rule[1]
    elif setup == "s1":  # unseen subjects
        subjects = {"train": [0, 1, 2, 3, 4, 5, 9], "val": [6], "test": [7, 8]}[split]
        serials, sequences = all_serials, all_seq
    elif setup == "s2":  # unseen camera views
        subjects, sequences = every, all_seq
        serials = {"train": [0, 1, 2, 3, 4, 5], "val": [6], "test": [7]}[split]
    else:  # s3: unseen grasped objects (5 sequences per object)
        groups = {"train": None, "val": (3, 19), "test": (7, 11, 15)}[split]
        if groups is None:
            sequences = [i for i in all_seq if i // 5 not in (3, 7, 11, 15, 19)]
        else:
            sequences = [i for i in all_seq if i // 5 in groups]
        subjects, serials = every, all_serials
    return subjects, serials, [i for i in sequences if i < n_sequences]


# ----------------------------------------------------------------------------- file layout
def intrinsics_path(root, serial: str) -> Path:
    return Path(root) / "calibration" / "intrinsics" / f"{serial}_{IMAGE_SIZE[1]}x{IMAGE_SIZE[0]}.yml"


def mano_calib_path(root, calib: str) -> Path:
    return Path(root) / "calibration" / f"mano_{calib}" / "mano.yml"


def color_path(seq_dir, serial: str, frame: int) -> Path:
    return Path(seq_dir) / serial / f"color_{frame:06d}.jpg"


def label_path(seq_dir, serial: str, frame: int) -> Path:
    return Path(seq_dir) / serial / f"labels_{frame:06d}.npz"


def top_level_entries(subject_ids: Sequence[int], serial_ids: Sequence[int]) -> List[str]:
    """Entries to check before anything is read: subject folders and camera intrinsics."""
    entries = [f"{SUBJECTS[i]}/" for i in subject_ids]
    return entries + [os.fspath(intrinsics_path("", SERIALS[i])) for i in serial_ids]


# ----------------------------------------------------------------------------- parsing
def read_intrinsics(root, serial: str) -> np.ndarray:
    """(3, 3) K of a camera's colour stream."""
    path = intrinsics_path(root, serial)
    color = load_yaml(path)
    color = color.get("color") if isinstance(color, dict) else None
    if not isinstance(color, dict) or any(k not in color for k in ("fx", "fy", "ppx", "ppy")):
        raise CorruptFileError(path, "expected a 'color' mapping with fx, fy, ppx, ppy")
    fx, fy, cx, cy = (float(color[k]) for k in ("fx", "fy", "ppx", "ppy"))
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclasses.dataclass(frozen=True)
class SequenceMeta:
    """What the builder needs from a sequence's meta.yml (+ the subject's mano.yml)."""

    subject: str
    name: str
    num_frames: int
    is_right: bool
    betas: np.ndarray
    ycb_ids: Tuple[int, ...]
    ycb_grasp_ind: int
    mano_calib: str


def read_sequence_meta(root, subject: str, name: str) -> SequenceMeta:
    path = Path(root) / subject / name / "meta.yml"
    meta = load_yaml(path)
    need = ("num_frames", "mano_sides", "mano_calib", "ycb_ids", "ycb_grasp_ind")
    if not isinstance(meta, dict) or any(k not in meta for k in need):
        raise CorruptFileError(path, f"expected the keys {list(need)}")
    side = meta["mano_sides"][0]
    if side not in ("right", "left"):
        raise CorruptFileError(path, f"mano_sides[0] must be 'right' or 'left', got {side!r}")
    calib = str(meta["mano_calib"][0])
    calib_path = mano_calib_path(root, calib)
    betas = as_array((load_yaml(calib_path) or {}).get("betas"), (10,), path=calib_path, key="betas")
    return SequenceMeta(subject, name, int(meta["num_frames"]), side == "right", betas,
                        tuple(int(i) for i in meta["ycb_ids"]), int(meta["ycb_grasp_ind"]), calib)


def list_sequences(root, subject: str) -> List[str]:
    """Sorted sequence folder names of a subject (the toolkit sorts ``os.listdir``)."""
    folder = Path(root) / subject
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def read_labels(path) -> Dict[str, np.ndarray]:
    """A labels_%06d.npz: seg (H, W) uint8, pose_y (O, 3, 4), pose_m (51,), joint_3d (21, 3),
    joint_2d (21, 2); CorruptFileError naming the file otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as err:
        raise CorruptFileError(path, f"cannot read npz ({err})") from None
    missing = [k for k in ("seg", "pose_y", "pose_m", "joint_3d", "joint_2d") if k not in raw]
    if missing:
        raise CorruptFileError(path, f"missing arrays {missing}")
    seg = as_array(raw["seg"], (-1, -1), path=path, key="seg", dtype=np.uint8)
    return {
        "seg": seg,
        "pose_y": as_array(raw["pose_y"], (-1, 3, 4), path=path, key="pose_y"),
        "pose_m": as_array(raw["pose_m"], (1, 51), path=path, key="pose_m")[0],
        "joint_3d": as_array(raw["joint_3d"], (1, 21, 3), path=path, key="joint_3d")[0],
        "joint_2d": as_array(raw["joint_2d"], (1, 21, 2), path=path, key="joint_2d")[0],
    }


def has_hand(labels: Dict[str, np.ndarray]) -> bool:
    """False when the frame has no hand annotation (joint_3d all -1)."""
    return not bool(np.all(labels["joint_3d"] == -1))


@dataclasses.dataclass(frozen=True)
class Sample:
    """One planned sample (toolkit order)."""

    toolkit_index: int
    meta: SequenceMeta
    serial: str
    frame: int
    sequence_id: int


def plan_split(root, setup: str, split: str, n_sequences: int = SEQUENCES_PER_SUBJECT,
               serials: Optional[Sequence[str]] = None) -> Tuple[List[Sample], List[str]]:
    """The toolkit's sample enumeration of a split, and every missing entry it needs.

    ``serials`` restricts the cameras (a subset of the split's). Returns (samples,
    missing); ``missing`` lists sequence folders short of ``n_sequences``, meta.yml /
    mano.yml, camera folders and per-frame colour / label files that do not exist.
    """
    subject_ids, serial_ids, seq_ids = split_indices(setup, split, n_sequences)
    cams = [SERIALS[i] for i in serial_ids]
    samples, missing, index, seq_count = [], [], 0, 0
    for sid in subject_ids:
        subject = SUBJECTS[sid]
        names = list_sequences(root, subject)
        if len(names) < n_sequences:
            missing.append(f"{subject}/: {len(names)} sequence folder(s), expected {n_sequences}")
            continue
        for q in seq_ids:
            name = names[q]
            seq_dir = Path(root) / subject / name
            if not (seq_dir / "meta.yml").is_file():
                missing.append(f"{subject}/{name}/meta.yml")
                continue
            meta = read_sequence_meta_checked(root, subject, name, missing)
            if meta is None:
                continue
            for serial in cams:
                if serials is not None and serial not in serials:  # not built, still counted
                    index += meta.num_frames
                    continue
                if not (seq_dir / serial).is_dir():
                    missing.append(f"{subject}/{name}/{serial}/")
                    index += meta.num_frames
                    continue
                for frame in range(meta.num_frames):
                    for path in (color_path(seq_dir, serial, frame), label_path(seq_dir, serial, frame)):
                        if not path.is_file():
                            missing.append(os.fspath(path.relative_to(root)))
                    samples.append(Sample(index, meta, serial, frame, seq_count))
                    index += 1
                seq_count += 1
    return samples, missing


def read_sequence_meta_checked(root, subject: str, name: str, missing: List[str]) -> Optional[SequenceMeta]:
    """meta.yml of a sequence, recording a missing mano.yml in ``missing`` instead of raising."""
    path = Path(root) / subject / name / "meta.yml"
    meta = load_yaml(path)
    if isinstance(meta, dict) and meta.get("mano_calib"):
        calib = mano_calib_path(root, str(meta["mano_calib"][0]))
        if not calib.is_file():
            rel = os.fspath(calib.relative_to(root))
            if rel not in missing:
                missing.append(rel)
            return None
    return read_sequence_meta(root, subject, name)
