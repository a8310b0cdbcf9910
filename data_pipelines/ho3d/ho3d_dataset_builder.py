"""tfds builder of HO-3D (configs ``v2`` and ``v3``): hand(-object) frames with MANO annotations.

No TensorFlow needed: build with ``python -m data_pipelines.ho3d.build --manual_dir RAW
--data_dir OUT --config v2|v3 [--mano_model MANO_RIGHT.pkl]`` (or :func:`ensure_built`); read
with ``tfds.builder_from_directory(dir).as_data_source(split)`` or
:func:`data_pipelines.pipeline.make_dataset` (frame / window modes: frames of one sequence
form a video).

Splits and record order (``disable_shuffling``): ``train`` and ``evaluation``, one record
per line of ``train.txt`` / ``evaluation.txt`` ("SEQ/FID") IN THE FILE'S ORDER. The line
number is stored as ``eval_index`` (for ``evaluation`` it is the official CodaLab order).

Coordinates: HO-3D's annotations are in the OpenGL camera frame (y up, the hand along -z),
metres. They are converted to handjax's OpenCV camera frame (x right, y down, z forward) in
ONE function, :func:`meta_to_labels`, through
:func:`handjax.geometry.frames.opengl_to_opencv` (F = diag(1, -1, -1)): points p -> F p,
rotations R -> F R (MANO global orientation, object rotation), MANO translation
t -> F (J0 + t) - J0 with J0 = root - t the rest-pose wrist (so MANO(pose', betas, t')
reproduces F * MANO(pose, betas, t)). Joints are in HO-3D order = handjax convention
``"ho3d"``. ``handPose`` is the absolute 48-D axis-angle pose (flat hand mean).

Features (H, W = image size, 480 x 640 in the real data):

===================  ===================  =================================================
image                (H, W, 3) uint8      the original bytes (PNG in v2, JPEG in v3)
K                    (3, 3) float32       ``camMat``
joints3d             (21, 3) float32      metres, OpenCV, ``ho3d`` order (zeros if absent)
joints2d             (21, 2) float32      pixels = project(joints3d, K)
root3d               (3,) float32         wrist, OpenCV (also in root-only releases)
vertices             (778, 3) float32     MANO mesh, OpenCV; only built with --mano_model
mano_pose            (48,) float32        axis-angle, flat mean, global orient. OpenCV
mano_pose_relative   () bool              always False (absolute poses)
betas                (10,) float32        ``handBeta``
transl               (3,) float32         MANO translation in the OpenCV frame (see above)
bbox                 (4,) float32         ``handBoundingBox`` x1, y1, x2, y2 pixels
obj_rot              (3,) float32         object axis-angle, OpenCV
obj_trans            (3,) float32         object translation, OpenCV
obj_corners_rest     (8, 3) float32       object box corners in the object frame
obj_name             text                 YCB name, e.g. 003_cracker_box
sequence             text                 e.g. ABF10
sequence_id          () int64             index of the sequence in ``metadata['sequences']``
frame_index          () int64             int(FID)
eval_index           () int64             line number in the split file (official order)
is_right             () bool              always True (HO-3D has right hands only)
annotated            () bool              = has_joints3d
has_joints3d, has_joints2d, has_root3d, has_vertices, has_mano, has_transl, has_bbox,
has_object           () bool              which labels exist (absent ones are zeros)
===================  ===================  =================================================

Evaluation splits of the original releases carry only the root joint
(``handJoints3D`` of shape (3,)), ``handBoundingBox`` and no MANO parameters; the newly
released evaluation ground truth has full (21, 3) joints and MANO parameters. Both load;
absent labels are zero-filled and flagged False, never faked. The record layout
(sequence_id / frame_index / annotated) is in ``info.metadata['index'][split]``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import manual
from data_pipelines.manual import default_data_dir  # re-exported by the package
from handjax.distributed import check_preemption
from data_pipelines.transforms import axis_angle_to_matrix, matrix_to_axis_angle
from handjax.geometry.frames import opengl_to_opencv, opengl_to_opencv_rotation

NAME = "ho3d"
VERSION = "1.0.0"
SPLITS = ("train", "evaluation")
SPLIT_FILES = {"train": "train.txt", "evaluation": "evaluation.txt"}
HOMEPAGE = "https://www.tugraz.at/index.php?id=40231"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
HO-3D needs a manual download (registration, academic licence):
project page {HOMEPAGE}
(the download links for HO3D_v2 and HO3D_v3 are given there and in the README of
https://github.com/shreyashampali/ho3d). Unzip one version and pass its root folder (the
one holding train/ and evaluation/) as --manual_dir; --config must name the version:

  <manual_dir>/                       (HO3D_v2/ or HO3D_v3/)
    train.txt                         "SEQ/FID" lines, e.g. ABF10/0000
    evaluation.txt                    "SEQ/FID" lines in the official evaluation order
    train/<SEQ>/rgb/<FID>.png|jpg     (v2: png, v3: jpg)
    train/<SEQ>/meta/<FID>.pkl
    evaluation/<SEQ>/rgb/<FID>.png|jpg
    evaluation/<SEQ>/meta/<FID>.pkl   (with the released evaluation ground truth, if you
                                       downloaded it, replacing the original meta files)

depth/, seg/, calibration/ and manual_annotations/ are not read. Vertices are stored only
when the build is given your MANO right-hand model (--mano_model MANO_RIGHT.pkl).
Then: python -m data_pipelines.ho3d.build --manual_dir <manual_dir> --data_dir <tfds data dir> --config v2
"""


@dataclasses.dataclass
class Ho3dConfig(tfds.core.BuilderConfig):
    """image_ext: extension of the rgb files of this release (the other one is accepted too)."""

    image_ext: str = "png"


BASE_CONFIGS = {
    "v2": Ho3dConfig(name="v2", description="HO3D_v2 (PNG images; CodaLab competition 4318).", image_ext="png"),
    "v3": Ho3dConfig(name="v3", description="HO3D_v3 (JPEG images, more accurate poses; CodaLab 4393).",
                     image_ext="jpg"),
}


# ----------------------------------------------------------------------------- layout
def read_split_file(path: Path) -> List[Tuple[str, str]]:
    """(SEQ, FID) per non-empty line of train.txt / evaluation.txt, in file order."""
    entries = []
    with open(path, "rb") as fh:
        text = fh.read()
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise manual.CorruptFileError(path, f"not a text file ({err})") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        if len(parts) != 2 or not all(parts):
            raise manual.CorruptFileError(path, f"line {number}: expected 'SEQ/FID', got {line!r}")
        entries.append((parts[0], parts[1]))
    return entries


def image_alternatives(split: str, seq: str, fid: str, first_ext: str) -> Tuple[str, str]:
    other = "jpg" if first_ext == "png" else "png"
    return tuple(f"{split}/{seq}/rgb/{fid}.{ext}" for ext in (first_ext, other))


def meta_path(split: str, seq: str, fid: str) -> str:
    return f"{split}/{seq}/meta/{fid}.pkl"


# ----------------------------------------------------------------------------- conventions
def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection (N, 3) OpenCV camera frame -> (N, 2) pixels."""
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return (p[:, :2] / p[:, 2:3]).astype(np.float32)


def _optional(meta: Dict, key: str, shapes, path) -> Optional[np.ndarray]:
    """meta[key] as float64 of one of ``shapes`` (singleton axes such as objRot's (3, 1) are
    squeezed); None when the key is absent or None; CorruptFileError naming file and key else."""
    value = meta.get(key)
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise manual.CorruptFileError(path, f"key {key!r}: not a numeric array ({err})") from None
    for shape in shapes:
        if arr.shape == shape or np.squeeze(arr).shape == shape:
            return manual.as_array(arr.reshape(shape), shape, path=path, key=key, dtype=np.float64)
    raise manual.CorruptFileError(path, f"key {key!r} has shape {arr.shape}, expected one of {list(shapes)}")


def meta_to_labels(meta: Dict, path, mano_fn: Optional[Callable] = None) -> Dict:
    """One HO-3D meta dict (OpenGL, as in the pkl) -> handjax labels (OpenCV) with has_* flags.

    THE coordinate conversion of this dataset (see module docstring). ``mano_fn(pose, betas,
    transl)`` (OpenGL parameters -> (778, 3) OpenGL vertices) adds vertices when given.
    """
    if not isinstance(meta, dict):
        raise manual.CorruptFileError(path, f"expected a dict, got {type(meta).__name__}")
    K = _optional(meta, "camMat", [(3, 3)], path)
    if K is None:
        raise manual.CorruptFileError(path, "key 'camMat' is missing")
    joints_gl = _optional(meta, "handJoints3D", [(21, 3), (3,)], path)
    pose = _optional(meta, "handPose", [(48,)], path)
    trans = _optional(meta, "handTrans", [(3,)], path)
    beta = _optional(meta, "handBeta", [(10,)], path)
    bbox = _optional(meta, "handBoundingBox", [(4,)], path)
    obj_rot = _optional(meta, "objRot", [(3,)], path)
    obj_trans = _optional(meta, "objTrans", [(3,)], path)
    corners = _optional(meta, "objCorners3DRest", [(8, 3)], path)

    full = joints_gl is not None and joints_gl.shape == (21, 3)
    root_gl = None if joints_gl is None else (joints_gl[0] if full else joints_gl)
    has_mano = pose is not None and beta is not None
    has_transl = has_mano and trans is not None and root_gl is not None
    has_object = obj_rot is not None and obj_trans is not None
    out = {
        "K": K.astype(np.float32),
        "joints3d": opengl_to_opencv(joints_gl).astype(np.float32) if full else np.zeros((21, 3), np.float32),
        "root3d": opengl_to_opencv(root_gl).astype(np.float32) if root_gl is not None else np.zeros(3, np.float32),
        "mano_pose": np.zeros(48, np.float32),
        "mano_pose_relative": False,
        "betas": beta.astype(np.float32) if has_mano else np.zeros(10, np.float32),
        "transl": np.zeros(3, np.float32),
        "vertices": np.zeros((778, 3), np.float32),
        "bbox": bbox.astype(np.float32) if bbox is not None else np.zeros(4, np.float32),
        "obj_rot": np.zeros(3, np.float32),
        "obj_trans": opengl_to_opencv(obj_trans).astype(np.float32) if has_object else np.zeros(3, np.float32),
        "obj_corners_rest": corners.astype(np.float32) if corners is not None else np.zeros((8, 3), np.float32),
        "obj_name": str(meta.get("objName") or ""),
        "has_joints3d": full, "has_joints2d": full, "has_root3d": root_gl is not None, "has_mano": has_mano,
        "has_transl": has_transl, "has_bbox": bbox is not None, "has_object": has_object, "has_vertices": False,
    }
    out["joints2d"] = project(out["joints3d"], K) if full else np.zeros((21, 2), np.float32)
    if has_mano:
        pose_cv = pose.reshape(16, 3).copy()
        pose_cv[0] = matrix_to_axis_angle(opengl_to_opencv_rotation(axis_angle_to_matrix(pose[:3])))
        out["mano_pose"] = pose_cv.reshape(48).astype(np.float32)
    if has_transl:
        rest_wrist = root_gl - trans  # J0(betas): the rest-pose wrist the global rotation pivots about
        out["transl"] = (opengl_to_opencv(rest_wrist + trans) - rest_wrist).astype(np.float32)
    if has_object:
        rot = opengl_to_opencv_rotation(axis_angle_to_matrix(obj_rot))
        out["obj_rot"] = matrix_to_axis_angle(rot).astype(np.float32)
    if mano_fn is not None and has_mano and trans is not None:
        out["vertices"] = opengl_to_opencv(np.asarray(mano_fn(pose, beta, trans), np.float64)).astype(np.float32)
        out["has_vertices"] = True
    return out


def make_mano_fn(model_path: str) -> Callable:
    """(pose (48,), betas (10,), transl (3,)) -> (778, 3) vertices with the MANO right hand at
    ``model_path`` ('builtin' = handjax's licence-free model), flat hand mean, as HO-3D."""
    import jax
    import jax.numpy as jnp

    from handjax import mano

    model = mano.load_model(None if model_path == "builtin" else model_path, "right")

    @jax.jit
    def forward(pose, betas, transl):
        rotmats = mano.from_axis_angle(model, pose, flat_hand_mean=True)
        return mano.mano_forward(model, rotmats, betas, transl, "ho3d").vertices

    return lambda pose, betas, transl: np.asarray(forward(jnp.asarray(pose, jnp.float32),
                                                          jnp.asarray(betas, jnp.float32),
                                                          jnp.asarray(transl, jnp.float32)))


# ----------------------------------------------------------------------------- builder
def _features() -> tfds.features.FeaturesDict:
    f32, tensor = np.float32, tfds.features.Tensor
    flags = ("has_joints3d", "has_joints2d", "has_root3d", "has_vertices", "has_mano", "has_transl", "has_bbox",
             "has_object")
    spec = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "K": tensor(shape=(3, 3), dtype=f32),
        "joints3d": tensor(shape=(21, 3), dtype=f32),
        "joints2d": tensor(shape=(21, 2), dtype=f32),
        "root3d": tensor(shape=(3,), dtype=f32),
        "vertices": tensor(shape=(778, 3), dtype=f32),
        "mano_pose": tensor(shape=(48,), dtype=f32),
        "mano_pose_relative": tensor(shape=(), dtype=np.bool_),
        "betas": tensor(shape=(10,), dtype=f32),
        "transl": tensor(shape=(3,), dtype=f32),
        "bbox": tensor(shape=(4,), dtype=f32),
        "obj_rot": tensor(shape=(3,), dtype=f32),
        "obj_trans": tensor(shape=(3,), dtype=f32),
        "obj_corners_rest": tensor(shape=(8, 3), dtype=f32),
        "obj_name": tfds.features.Text(),
        "sequence": tfds.features.Text(),
        "sequence_id": tensor(shape=(), dtype=np.int64),
        "frame_index": tensor(shape=(), dtype=np.int64),
        "eval_index": tensor(shape=(), dtype=np.int64),
        "is_right": tensor(shape=(), dtype=np.bool_),
        "annotated": tensor(shape=(), dtype=np.bool_),
    }
    spec.update({flag: tensor(shape=(), dtype=np.bool_) for flag in flags})
    return tfds.features.FeaturesDict(spec)


class Builder(tfds.core.GeneratorBasedBuilder):
    """HO-3D from the manual download; see the module docstring."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "train + evaluation, OpenCV frame, official evaluation order."}
    BUILDER_CONFIGS = list(BASE_CONFIGS.values())
    DEFAULT_CONFIG_NAME = "v2"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, file_format=None, skip_corrupt: bool = False, mano_model: Optional[str] = None,
                 **kwargs):
        self.policy = manual.CorruptPolicy(skip_corrupt, NAME)
        self.mano_model = mano_model or None
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        metadata = tfds.core.MetadataDict(index={}, sequences=[], skipped={}, vertices_from=self.mano_model)
        return self.dataset_info_from_configs(description=__doc__, features=_features(), homepage=HOMEPAGE,
                                              disable_shuffling=True, metadata=metadata)

    def _entries(self, root: Path) -> Dict[str, List[Tuple[str, str]]]:
        return {split: read_split_file(root / SPLIT_FILES[split]) for split in SPLITS}

    def check_manual_dir(self, manual_dir) -> Path:
        """All missing files (split files, folders, every listed rgb/meta file) in one error."""
        root = Path(manual_dir).expanduser() if manual_dir else None
        required: List = [SPLIT_FILES[s] for s in SPLITS] + [f"{s}/" for s in SPLITS]
        if root is not None and root.is_dir():
            for split in SPLITS:
                if (root / SPLIT_FILES[split]).is_file():
                    for seq, fid in read_split_file(root / SPLIT_FILES[split]):
                        required.append(image_alternatives(split, seq, fid, self.builder_config.image_ext))
                        required.append(meta_path(split, seq, fid))
        return manual.check_manual_dir(manual_dir, required, dataset=NAME, instructions=MANUAL_DOWNLOAD_INSTRUCTIONS)

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(dl_manager.manual_dir)
        entries = self._entries(root)
        sequences = sorted({seq for split in SPLITS for seq, _ in entries[split]})
        self.info.metadata["sequences"] = sequences
        seq_ids = {seq: i for i, seq in enumerate(sequences)}
        mano_fn = make_mano_fn(self.mano_model) if self.mano_model else None
        return {split: self._generate_examples(root, split, entries[split], seq_ids, mano_fn) for split in SPLITS}

    def _generate_examples(self, root: Path, split: str, entries: List[Tuple[str, str]], seq_ids: Dict[str, int],
                           mano_fn) -> Iterator[Tuple[int, Dict]]:
        index = {"sequence_id": [], "frame_index": [], "annotated": []}
        for position, (seq, fid) in enumerate(entries):
            check_preemption(f"building {NAME}/{self.builder_config.name}")
            try:
                example = self._example(root, split, seq, fid, position, seq_ids[seq], mano_fn)
            except manual.CorruptFileError as err:
                self.policy.handle(err, split=split, sample_id=f"{seq}/{fid}")
                continue
            for key in index:
                index[key].append(example[key] if key != "annotated" else bool(example[key]))
            yield manual.record_key(position, len(entries)), example
        self.info.metadata["index"][split] = index
        self.info.metadata["skipped"][split] = self.policy.split_records(split)  # this split's skips only

    def _example(self, root: Path, split: str, seq: str, fid: str, position: int, seq_id: int, mano_fn) -> Dict:
        path = root / meta_path(split, seq, fid)
        labels = meta_to_labels(manual.load_pickle_restricted(path), path, mano_fn)
        image_file = manual.resolve_any(root, image_alternatives(split, seq, fid, self.builder_config.image_ext))
        image = manual.read_image(image_file)
        if image.shape[2] != 3:
            raise manual.CorruptFileError(image_file, f"expected an RGB image, got {image.shape[2]} channel(s)")
        try:
            frame_index = int(fid)
        except ValueError:
            raise manual.CorruptFileError(root / SPLIT_FILES[split], f"frame id {fid!r} of {seq} is not a number") \
                from None
        return dict(labels, image=image.data, sequence=seq, sequence_id=seq_id, frame_index=frame_index,
                    eval_index=position, is_right=True, annotated=labels["has_joints3d"])


# ----------------------------------------------------------------------------- entry points
def get_builder(config: str = "v2", data_dir: Optional[str] = None, skip_corrupt: bool = False,
                mano_model: Optional[str] = None) -> Builder:
    """The builder of a config name under ``data_dir`` (default :func:`default_data_dir`)."""
    return manual.get_named_builder(Builder, config, data_dir, skip_corrupt=skip_corrupt, mano_model=mano_model)


def ensure_built(config: str = "v2", data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 skip_corrupt: bool = False, mano_model: Optional[str] = None) -> str:
    """The builder directory ``<data_dir>/ho3d/<config>/1.0.0``, built from ``manual_dir`` if
    missing (FileNotFoundError with the download instructions when neither exists)."""
    return manual.ensure_prepared(get_builder(config, data_dir, skip_corrupt, mano_model), manual_dir,
                                  MANUAL_DOWNLOAD_INSTRUCTIONS)
