"""HIC (Tzionas et al., IJCV 2016) as distributed for InterWild's test: layout, parsing, PLY meshes, joints.

Files (manual directory = InterWild's ``data/HIC/data`` folder)
---------------------------------------------------------------
* ``HIC.json``: COCO-style ``images`` (``id``, ``file_name``, ``width``, ``height``, optionally
  ``seq_name``) and ``annotations`` (``id``, ``image_id``, ``hand_type`` in right / left /
  interacting, ``right_mano_path`` / ``left_mano_path``: a mesh file relative to the manual
  directory or ``null`` when that hand has no fit). InterWild's annotation archive
  (README "[annotations]" link) provides it together with the mesh files.
* the images named by ``file_name`` (the HIC sequences 01-14 hand-hand and 15-21 hand-object
  of https://files.is.tue.mpg.de/dtzionas/Hand-Object-Capture/), and
* the MANO-fit meshes named by ``*_mano_path``: PLY files (ascii or binary) whose ``vertex``
  element has ``x``, ``y``, ``z``: 778 MANO vertices in the camera frame, METRES (InterWild
  multiplies them by 1000 for millimetre metrics and projects them with the fixed intrinsics).

Camera: InterWild's fixed HIC intrinsics, focal (525, 525), principal point (319.5, 239.5),
OpenCV axes; pixels = K X (pixel centres at integer coordinates).

Boxes: InterWild's ground-truth hand box (``HIC.get_bbox_from_mesh``): the min/max of the
projected mesh vertices, scaled by 1.2 about its centre; stored as (x1, y1, x2, y2).

Joints (optional): 21 per hand in handjax "ih26m" order from the mesh with InterWild's
``sh_joint_regressor``: MANO's ``J_regressor`` (16 tree joints, from the MANO file of that
side) plus one-hot fingertip vertices :data:`TIP_VERTICES`. They need the official
``MANO_{RIGHT,LEFT}.pkl``: the built-in hand model's regressor belongs to a different mesh
(same counts, not the same vertex positions), so without MANO files no joints are stored.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from data_pipelines.manual import CorruptFileError, load_json

HANDS = ("right", "left")
HAND_TYPES = ("right", "left", "interacting")
NUM_VERTS = 778
FOCAL = (525.0, 525.0)
PRINCPT = (319.5, 239.5)
BOX_EXTENSION = 1.2
# InterWild common/utils/mano.py sh_joint_regressor fingertips (thumb, index, middle, ring, pinky), both hands.
TIP_VERTICES = (745, 317, 445, 556, 673)
ANNOTATION_FILE = "HIC.json"
DOWNLOAD_PAGE = "https://files.is.tue.mpg.de/dtzionas/Hand-Object-Capture/"
INTERWILD = "https://github.com/facebookresearch/InterWild"

INSTRUCTIONS = f"""\
HIC must be downloaded by hand: the sequences (hand-hand 01-14 and hand-object 15-21 zips) and the
MANO-compatible fits from {DOWNLOAD_PAGE}, and InterWild's HIC annotations (HIC.json with the
MANO-fit meshes; the "[annotations]" link of the HIC line in {INTERWILD} README; InterWild's
data/HIC/download.py lists the sequence archives). Extract them so that the manual directory
(--manual_dir, InterWild's data/HIC/data folder) holds HIC.json and every image and mesh file
it names, at the relative paths it gives:

  <manual_dir>/
    HIC.json
    <file_name of each image>            e.g. the sequences' RGB frames
    <right_mano_path / left_mano_path>   PLY meshes (778 vertices, camera frame, metres)"""


def intrinsics() -> np.ndarray:
    """(3, 3) K of InterWild's fixed HIC camera."""
    (fx, fy), (cx, cy) = FOCAL, PRINCPT
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def project(points, K) -> np.ndarray:
    """(..., 3) camera points -> (..., 2) pixels."""
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return p[..., :2] / p[..., 2:]


def mesh_box(verts, K, extension: float = BOX_EXTENSION) -> np.ndarray:
    """InterWild's GT hand box: projected vertices' extent scaled about its centre -> (x1, y1, x2, y2)."""
    uv = project(verts, K)
    lo, hi = uv.min(0), uv.max(0)
    centre, half = (lo + hi) / 2.0, (hi - lo) / 2.0 * extension
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


# ----------------------------------------------------------------------------- PLY
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclasses.dataclass
class _Element:
    name: str
    count: int
    props: List[Tuple[str, str, Optional[str]]]  # (name, value type, list count type or None)


def _parse_ply_header(path, data: bytes) -> Tuple[str, List[_Element], int]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise CorruptFileError(path, "not a PLY file (no 'ply' magic / 'end_header')")
    body = data.index(b"\n", end) + 1
    fmt, elements = None, []
    for line in data[:end].decode("ascii", "replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3:
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if words[1] == "list" and len(words) == 5 and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES:
                elements[-1].props.append((words[4], _PLY_TYPES[words[3]], _PLY_TYPES[words[2]]))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].props.append((words[2], _PLY_TYPES[words[1]], None))
            else:
                raise CorruptFileError(path, f"PLY header: cannot read {line.strip()!r}")
        else:
            raise CorruptFileError(path, f"PLY header: unexpected line {line.strip()!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise CorruptFileError(path, f"PLY format {fmt!r} not supported (ascii / binary_little_endian / "
                                     "binary_big_endian)")
    return fmt, elements, body


def read_ply_vertices(path) -> np.ndarray:
    """(N, 3) float64 x, y, z of the ``vertex`` element of a PLY file (ascii or binary).

    CorruptFileError naming the file for a malformed header, a missing vertex element or
    x/y/z property, or a truncated body.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return _read_ply_vertices(path, data)
    except CorruptFileError:
        raise
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"cannot parse PLY ({type(err).__name__}: {err})") from None


def _read_ply_vertices(path: str, data: bytes) -> np.ndarray:
    fmt, elements, offset = _parse_ply_header(path, data)
    if not any(e.name == "vertex" for e in elements):
        raise CorruptFileError(path, "PLY file has no 'vertex' element")
    if fmt == "ascii":
        tokens = data[offset:].split()
        pos = 0
        for el in elements:
            rows = []
            for _ in range(el.count):
                row = []
                for _, _, count_type in el.props:
                    if pos >= len(tokens):
                        raise CorruptFileError(path, f"PLY body ends inside element {el.name!r}")
                    if count_type is None:
                        row.append(float(tokens[pos]))
                        pos += 1
                    else:
                        pos += 1 + int(tokens[pos])
                rows.append(row)
            if el.name == "vertex":
                return _xyz(path, el, np.asarray(rows, np.float64).reshape(el.count, -1))
    order = "<" if fmt == "binary_little_endian" else ">"
    for el in elements:
        if all(count is None for _, _, count in el.props):
            dtype = np.dtype([(name, order + t) for name, t, _ in el.props])
            size = dtype.itemsize * el.count
            if offset + size > len(data):
                raise CorruptFileError(path, f"PLY body ends inside element {el.name!r}")
            table = np.frombuffer(data, dtype, el.count, offset)
            offset += size
            if el.name == "vertex":
                values = np.stack([table[name].astype(np.float64) for name, _, _ in el.props], axis=1) \
                    if el.props else np.zeros((el.count, 0))
                return _xyz(path, el, values)
        else:  # list properties (faces): walk row by row
            for _ in range(el.count):
                for _, t, count_type in el.props:
                    if count_type is None:
                        offset += np.dtype(t).itemsize
                        continue
                    ct = np.dtype(order + count_type)
                    if offset + ct.itemsize > len(data):
                        raise CorruptFileError(path, f"PLY body ends inside element {el.name!r}")
                    n = int(np.frombuffer(data, ct, 1, offset)[0])
                    offset += ct.itemsize + n * np.dtype(t).itemsize
            if offset > len(data):
                raise CorruptFileError(path, f"PLY body ends inside element {el.name!r}")
    raise CorruptFileError(path, "PLY file has no 'vertex' element")  # unreachable: checked above


def _xyz(path, el: _Element, values: np.ndarray) -> np.ndarray:
    names = [name for name, _, _ in el.props]
    missing = [a for a in ("x", "y", "z") if a not in names]
    if missing:
        raise CorruptFileError(path, f"PLY vertex element lacks the propert(ies) {missing}")
    xyz = values[:, [names.index(a) for a in ("x", "y", "z")]]
    if not np.all(np.isfinite(xyz)):
        raise CorruptFileError(path, "PLY vertices contain non-finite values")
    return xyz


def read_mesh(path) -> np.ndarray:
    """(778, 3) float64 MANO-fit vertices of a mesh file (CorruptFileError otherwise)."""
    verts = read_ply_vertices(path)
    if verts.shape != (NUM_VERTS, 3):
        raise CorruptFileError(path, f"expected {NUM_VERTS} MANO vertices, got {verts.shape[0]}")
    return verts


# ----------------------------------------------------------------------------- annotations
@dataclasses.dataclass
class Annotations:
    images: Dict[int, dict]
    annotations: List[dict]
    path: Path


def load_annotations(root) -> Annotations:
    path = Path(root) / ANNOTATION_FILE
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise CorruptFileError(path, "expected a COCO-style object with 'images' and 'annotations' lists")
    images = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img:
            raise CorruptFileError(path, f"an entry of 'images' has no 'id': {str(img)[:200]}")
        images[int(img["id"])] = img
    return Annotations(images, data["annotations"], path)


_SAFE = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$)).+$")


def _relative(path, value, key: str, aid) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not _SAFE.match(value):
        raise CorruptFileError(path, f"annotation {aid}: {key} must be a relative path inside the manual directory "
                                     f"or null, got {value!r}")
    return value


def parse_annotation(ann: Annotations, a) -> Dict[str, object]:
    """One annotation's fields (checked; CorruptFileError naming HIC.json, the id and key otherwise)."""
    path = ann.path
    if not isinstance(a, dict) or "id" not in a:
        raise CorruptFileError(path, f"an entry of 'annotations' has no 'id': {str(a)[:200]}")
    aid = a["id"]
    img = ann.images.get(int(a.get("image_id", -1)))
    if img is None:
        raise CorruptFileError(path, f"annotation {aid}: image_id {a.get('image_id')} not among the images")
    for field in ("file_name", "width", "height"):
        if field not in img:
            raise CorruptFileError(path, f"image {img.get('id')}: missing field {field!r}")
    _relative(path, img["file_name"], "file_name", aid)
    if a.get("hand_type") not in HAND_TYPES:
        raise CorruptFileError(path, f"annotation {aid}: hand_type {a.get('hand_type')!r} not in {HAND_TYPES}")
    for hand in HANDS:
        if f"{hand}_mano_path" not in a:
            raise CorruptFileError(path, f"annotation {aid}: missing key '{hand}_mano_path'")
    return {
        "annot_id": int(aid),
        "image": img,
        "hand_type": a["hand_type"],
        "mesh_paths": {hand: _relative(path, a[f"{hand}_mano_path"], f"{hand}_mano_path", aid) for hand in HANDS},
    }


def referenced_files(rows: List[dict]) -> List[str]:
    """Every image and mesh file the annotations name (relative), in order, without repeats."""
    seen: Dict[str, None] = {}
    for r in rows:
        seen.setdefault(r["image"]["file_name"])
        for hand in HANDS:
            if r["mesh_paths"][hand] is not None:
                seen.setdefault(r["mesh_paths"][hand])
    return list(seen)


# ----------------------------------------------------------------------------- joints
@dataclasses.dataclass(frozen=True)
class JointRegressor:
    """Per side (16, 778) MANO ``J_regressor`` + :data:`TIP_VERTICES`; ``source`` names the files."""

    j_regressor: Dict[str, np.ndarray]
    source: str

    def __call__(self, hand: str, verts) -> np.ndarray:
        """(778, 3) vertices -> (21, 3) joints in handjax "ih26m" order."""
        from handjax.mano.conventions import IH26M_ORDER

        verts = np.asarray(verts, np.float64)
        mano21 = np.concatenate([self.j_regressor[hand] @ verts, verts[list(TIP_VERTICES)]])
        return mano21[list(IH26M_ORDER)]


def load_joint_regressor(mano_dir: Optional[str]) -> Optional[JointRegressor]:
    """The regressor of the official MANO_{RIGHT,LEFT}.pkl in ``mano_dir`` (None: no joints)."""
    if not mano_dir:
        return None
    from handjax.mano import load_model

    regs = {hand: np.asarray(load_model(mano_dir, hand).J_regressor, np.float64) for hand in HANDS}
    for hand, reg in regs.items():
        if reg.shape != (16, NUM_VERTS):
            raise ValueError(f"{mano_dir}: MANO {hand} J_regressor has shape {reg.shape}, expected (16, {NUM_VERTS})")
    return JointRegressor(regs, os.fspath(mano_dir))
