"""grain input pipelines shared by every handjax system.

    it = make_pipeline(builder_dir, "train", mode="window", batch_size=32, image_size=128,
                       augment=TRAIN_AUGMENT, seed=0, k=2, window=3)
    batch = next(it); state = it.get_state(); ...; it.set_state(state)

Sources: a tfds builder directory (e.g. from
:func:`data_pipelines.synthetic_hands.ensure_built`), a :class:`FrameSource`, or any
object with ``__len__``, ``__getitem__(record) -> decoded frame dict`` (as
:class:`FrameSource` returns) and an ``index`` attribute (:class:`SequenceIndex`).

Modes (sampling units, :mod:`data_pipelines.samplers`):

* ``frame``: one frame per sample (``annotated_only`` keeps only annotated frames);
* ``window``: ``k`` frames of one sequence within ``|dt| <= window`` of the anchor (frame 0),
  plus ``num_negatives`` same-sequence frames outside the window (TempCLR);
* ``sparse_pair`` (alias ``pair``): [query frame, nearest annotated frame of its sequence]
  (handobjectconsist; ``unannotated_only`` restricts the queries, ``max_distance`` drops
  queries whose nearest annotated frame is farther than that many frame_index units);
* ``subject``: ``num_frames`` frames of one subject (identity-aware personalisation; needs a
  ``subject_id`` feature, see :attr:`FrameSource.subject_index`).

Augmentation (:mod:`data_pipelines.transforms`, ``augment`` dict or None): per-sample
parameters drawn from ``np.random.default_rng([seed, shard_index, epoch, position])`` (so
an epoch/position always gets the same augmentation, also after restoring the iterator);
in window / pair modes every frame of a sample shares them unless ``per_frame``.

Batch format (dict of numpy arrays; leading dims L = (B,) in frame mode, (B, F) in window
mode with F = k + num_negatives, (B, 2) in sparse_pair mode, (B, num_frames) in subject mode;
S = image_size):

==============  ================  ==========================================================
image           L + (S, S, 3) f32 crop, colour-jittered, ImageNet-normalised
mask            L + (S, S) bool   hand mask in the crop
part_seg        L + (S, S) int32  0 bg, 1..16 right / 17..32 left DIGIT parts (flip-swapped)
joints2d        L + (21, 2) f32   crop pixels (OpenCV centres) = project(joints3d, K)
joints3d        L + (21, 3) f32   camera frame (rotated with the crop / mirrored), metres
vertices        L + (778, 3) f32  idem
mano_pose       L + (48,) f32     axis-angle, flat mean, root in the (rotated) camera frame
betas           L + (10,) f32
transl          L + (3,) f32      MANO translation consistent with the above
K               L + (3, 3) f32    crop intrinsics
is_right        L bool            after flipping
sequence_id     L int64
frame_index     L int64
annotated       L bool
record          L int64           record id in the split
crop_affine     L + (3, 3) f32    source pixel -> crop pixel map
aug_scale       L f32             crop scale factor
aug_rotation    L f32             in-plane rotation, radians (clockwise on screen)
aug_shift       L + (2,) f32      crop-centre shift, fraction of the crop side
aug_flip        L bool            mirrored
aug_color       L + (4,) f32      brightness, contrast, saturation factors, hue (rad)
in_window       (B, F) bool       window mode only: True for anchor and positives
valid           (B,) bool         ``pad_shards`` only: False on a shard's padding samples
==============  ================  ==========================================================

Two-hand samples (sources whose frames have 42 joints: the built-in ``two_hands`` person
crops, InterHand2.6M; :mod:`data_pipelines.transforms` "two hands"). ``crop="hands"``
(default): a square S x S crop around the union of the valid hands' boxes (DIGIT; side =
``augment['bbox_pad']`` x its longer side x scale); ``crop="person"``: the whole frame as a
4:3 person crop of (S, 3S/4) (InterWild; S a multiple of 4). ``augment['flip']`` is 'none'
or 'random': a flip mirrors the frame and SWAPS the hands (right joints 0..20 <-> left
21..41, per-hand arrays, validity, boxes, part labels 1..16 <-> 17..32, hand_type 0 <-> 1).
(H', W') = (S, S) or (S, 3S/4); hand axis 0 right, 1 left:

===============  ====================  =====================================================
image            L + (H', W', 3) f32   crop, colour-jittered, ImageNet-normalised
mask             L + (H', W') bool     mask of both hands
part_seg         L + (H', W') int32    0 bg, 1..16 right / 17..32 left parts (visible hand)
joints2d         L + (42, 2) f32       crop pixels = project(joints3d, K); right 0..20, left
                                       21..41, each hand in "ih26m" order (wrists 20, 41)
joints3d         L + (42, 3) f32       camera frame (rotated with the crop / mirrored)
joint_valid      L + (42,) bool        stored validity & inside the crop
vertices         L + (2, 778, 3) f32   idem
mano_pose        L + (2, 48) f32       per hand: axis-angle, flat mean (right / left model)
betas            L + (2, 10) f32
transl           L + (2, 3) f32        MANO translations consistent with the above
hand_valid       L + (2,) bool         the hand is annotated / in the frame
hand_box         L + (2, 4) f32        x0, y0, x1, y1 crop pixels: extent of the projected
                                       joints (+ vertices) clipped to the crop; 0 if invalid
rel_root         L + (3,) f32          left wrist - right wrist (camera frame of the crop)
hand_type        L int64               0 right, 1 left, 2 both (handjax.eval.two_hand codes)
hand_type_valid  L bool
interacting      L bool                two_hands: closer than 3 cm or overlapping boxes
mano_valid       L + (2,) bool         the hand has a MANO fit (InterHand2.6M / COCO
                                       NeuralAnnot); else has_mano for both hands
K, sequence_id, frame_index, annotated, record, crop_affine (original -> crop pixels,
the mirror included), aug_*: as above; two_hands adds hand_distance (closest vertices of
the two hands, m) and kind (sequence kind, see two_hands' metadata ``kinds``).
Frames may carry ``person_box`` (x1, y1, x2, y2: the person crop's window, consumed),
``hand_box_annotated`` (True: ``hand_box`` holds annotated boxes that move with the crop
instead of being recomputed from the geometry; consumed) and a frame-level ``bbox``
(x1, y1, x2, y2, moved with the crop). COCO-WholeBody / HIC through the data factory:
see :mod:`data_pipelines.factory` (``CocoWholeBodyAdapter``, ``HICAdapter``).
Optional extra keys, each swapped (per hand) and mirrored on flips and moved by the crop
(:func:`~data_pipelines.transforms.mirror_two_hand_frame` / ``transform_two_hand_frame``):

=================  ====================  ================================================
mano_pose_world    L + (2, 48) f32       InterHand2.6M world-frame fits (absolute poses);
mano_transl_world  L + (2, 3) f32        flips mirror the world with the camera (x -> -x),
mano_root_j0       L + (2, 3) f32        crops leave the world frame as it is
cam_R, cam_t       L + (3, 3), (3,) f32  world -> CROP camera: joints3d = cam_R X_w + cam_t
rootnet_depth      L + (2,) f32          RootNet root depths (m), swapped on flips
rootnet_bbox       L + (4,) f32          RootNet box x1, y1, x2, y2, crop pixels (zeros
                                         without an entry; ``has_rootnet``)
hand_K             L + (2, 3, 3) f32     per-hand cameras (COCO NeuralAnnot) in crop
                                         pixels, for each hand's camera frame rotated
                                         with the crop; zeros without one (``has_hand_K``)
=================  ====================  ================================================
===============  ====================  =====================================================

The built-in ``hand_object`` dataset adds (cropped with the frame by :func:`transform_extra_labels`):
``hand_mask`` / ``object_mask`` L + (S, S) bool (``mask`` is their union), ``object_id`` L
int64, ``object_rot`` L + (3, 3) f32 and ``object_transl`` L + (3,) f32 (canonical object ->
crop camera), ``object_vertices`` L + (Vo, 3) f32 and ``object_mirrored`` L bool (a flip
mirrored the canonical mesh: x -> -x); ``identities`` adds ``subject_id`` L int64.

Real datasets (FreiHAND, HO3D, ...) add their own numeric features (e.g. ``eval_index``,
``bbox``) and ``has_*`` flags (``has_joints3d``, ``has_vertices``, ``has_mano``,
``has_transl``, ``has_mask``, ...: False where a label is absent and zero-filled), see
:class:`FrameSource`; the synthetic dataset has every label and no flags.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Dict, Mapping, Optional

import grain
import numpy as np
from PIL import Image

from data_pipelines import samplers
from data_pipelines.samplers import SequenceIndex
from data_pipelines.transforms import TRAIN_AUGMENT, AugmentConfig, AugmentParams, transform_frame
from data_pipelines.transforms import rotation_z, warp_labels
from data_pipelines.transforms import (
    TWO_HAND_CROPS,
    TWO_HAND_JOINTS,
    hand_type_code,
    person_crop_size,
    transform_two_hand_frame,
)

MODES = ("frame", "window", "sparse_pair", "pair", "subject")
MODE_ALIASES = {"pair": "sparse_pair"}  # the same sampling unit under its short name
__all__ = ["MODES", "TRAIN_AUGMENT", "FrameSource", "SequenceIndex", "batch_dataset", "make_dataset",
           "make_pipeline", "make_sample_dataset", "open_source"]


# ----------------------------------------------------------------------------- source
def decode_png(data: bytes, channels: int) -> np.ndarray:
    """PNG (or JPEG) bytes -> (H, W, 3) uint8 for channels=3, (H, W) uint8 for channels=1 (PIL)."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB" if channels == 3 else "L")
        return np.asarray(img)


def decode_label_image(key: str, data: bytes) -> np.ndarray:
    """An image feature other than image / mask / part_seg: a one-channel PNG -> (H, W), bool
    (> 127) when ``key`` ends in 'mask' else uint8; a colour one -> (H, W, 3) uint8."""
    with Image.open(io.BytesIO(data)) as img:
        gray = img.mode in ("L", "1", "I;16", "I")
    array = decode_png(data, 1 if gray else 3)
    return array > 127 if gray and key.endswith("mask") else array


# Labels a dataset may lack: zero defaults with the shapes of the batch format, and the
# has_* flag set to False in every frame when the dataset has no such feature.
LABEL_DEFAULTS = {
    "joints2d": ((21, 2), np.float32, "has_joints2d"),
    "joints3d": ((21, 3), np.float32, "has_joints3d"),
    "vertices": ((778, 3), np.float32, "has_vertices"),
    "mano_pose": ((48,), np.float32, "has_mano"),
    "betas": ((10,), np.float32, "has_mano"),
    "transl": ((3,), np.float32, "has_transl"),
}


# The same for two-hand frames (42 joints; see "Two-hand samples" in the module docstring).
TWO_HAND_LABEL_DEFAULTS = {
    "joints3d": ((42, 3), np.float32, "has_joints3d"),
    "vertices": ((2, 778, 3), np.float32, "has_vertices"),
    "mano_pose": ((2, 48), np.float32, "has_mano"),
    "betas": ((2, 10), np.float32, "has_mano"),
    "transl": ((2, 3), np.float32, "has_transl"),
}


def is_two_hand(frame: Mapping[str, Any]) -> bool:
    """Whether a decoded frame is a two-hand sample (joints2d of 42 joints, right then left)."""
    joints = frame.get("joints2d")
    return joints is not None and np.ndim(joints) == 2 and np.shape(joints)[0] == TWO_HAND_JOINTS


def fill_two_hand_defaults(frame: Dict[str, np.ndarray]) -> None:
    """Defaults of a two-hand frame's labels the dataset lacks (in place): zeros with their
    ``has_*`` flag False for :data:`TWO_HAND_LABEL_DEFAULTS`; joint_valid all True;
    hand_valid = the hand has a valid joint; hand_type / hand_type_valid from hand_valid
    (:func:`data_pipelines.transforms.hand_type_code`); interacting = both hands valid;
    mano_valid (2,) = has_mano (True when absent) for both hands; hand_distance as float32."""
    for key, (shape, dtype, flag) in TWO_HAND_LABEL_DEFAULTS.items():
        if key not in frame:
            frame[key] = np.zeros(shape, dtype)
            frame[flag] = np.bool_(False)
    frame["joint_valid"] = np.asarray(frame.get("joint_valid", np.ones(TWO_HAND_JOINTS, bool)), bool)
    if "hand_valid" not in frame:
        frame["hand_valid"] = frame["joint_valid"].reshape(2, -1).any(axis=1)
    frame["hand_valid"] = np.asarray(frame["hand_valid"], bool)
    code, code_valid = hand_type_code(frame["hand_valid"])
    frame["hand_type"] = np.int64(frame.get("hand_type", code))
    frame["hand_type_valid"] = np.bool_(frame.get("hand_type_valid", code_valid))
    frame["interacting"] = np.bool_(frame.get("interacting", bool(frame["hand_valid"].all())))
    # per-hand MANO validity: datasets with fits per hand (InterHand2.6M, COCO-WholeBody) store it;
    # otherwise every hand has MANO exactly when the frame does
    frame["mano_valid"] = np.asarray(frame.get("mano_valid", np.full(2, bool(frame.get("has_mano", True)))), bool)
    if "hand_distance" in frame:
        frame["hand_distance"] = np.float32(frame["hand_distance"])


class FrameSource:
    """Random access to the decoded frames of one split of a tfds builder directory.

    ``source[r]`` -> dict: image (H, W, 3) uint8, mask (H, W) bool, part_seg (H, W) uint8,
    the float32 label arrays as stored, is_right / annotated np.bool_, sequence_id /
    frame_index / record np.int64, plus the dataset's other numeric features (e.g.
    ``has_*`` flags, ``eval_index``). Images (PNG or JPEG) are decoded here with PIL; text
    features are left out. The tfds data source is opened lazily, so the object pickles
    cheaply into grain worker processes.

    Datasets without some of the synthetic dataset's fields (real datasets) get them filled
    generically, so every transform and recipe sees one format: a missing ``mask`` /
    ``part_seg`` becomes all zeros with ``has_mask`` / ``has_part_seg`` False; missing labels
    of :data:`LABEL_DEFAULTS` become zeros with their ``has_*`` flag False; a missing
    ``is_right`` / ``annotated`` is True; a missing ``sequence_id`` / ``frame_index`` comes
    from ``index``. Frames whose ``mano_pose_relative`` is True (FreiHAND: fingers relative
    to MANO's mean pose) get ``hand_mean`` (45,) added to ``mano_pose[3:]`` (then
    ``mano_pose_relative`` becomes False) or, without ``hand_mean``, ``has_mano`` False;
    single-hand frames with a ``has_mano`` flag or a ``mano_pose_relative`` feature also carry
    ``has_betas`` (= ``has_mano`` before that masking: betas do not depend on the hand mean).
    Two-hand frames (42 joints, e.g. ``two_hands``) get :func:`fill_two_hand_defaults`
    instead of the single-hand label defaults, and no ``is_right``.
    ``index`` is read from the dataset metadata (``metadata['index'][split]``) when present,
    otherwise built by reading every record once.
    """

    def __init__(self, builder_dir: str | os.PathLike, split: str = "train", hand_mean: Optional[np.ndarray] = None):
        self.builder_dir = os.fspath(builder_dir)
        self.split = split
        if not os.path.isfile(os.path.join(self.builder_dir, "dataset_info.json")):
            raise FileNotFoundError(f"FrameSource: {self.builder_dir} is not a tfds builder directory "
                                    f"(no dataset_info.json); pass e.g. ensure_built(...)'s result")
        info = self._builder().info
        if split not in info.splits:
            raise ValueError(f"FrameSource: split {split!r} not in {self.builder_dir}; available: "
                             f"{sorted(info.splits)}")
        self._length = info.splits[split].num_examples
        self._source = None
        self._features = self._feature_kinds(info.features)
        self.hand_mean = None if hand_mean is None else np.asarray(hand_mean, np.float32).reshape(45)
        meta = info.metadata or {}
        layout = meta.get("index", {}).get(split) if hasattr(meta, "get") else None
        self.index = SequenceIndex.from_metadata(layout) if layout else self._scan_index()
        if len(self.index) != self._length:
            raise ValueError(f"FrameSource: metadata index of {split!r} has {len(self.index)} records, "
                             f"the split has {self._length}")

    @staticmethod
    def _feature_kinds(features) -> Dict[str, str]:
        """feature name -> 'image' | 'text' | 'tensor'."""
        import tensorflow_datasets as tfds
        kinds = {}
        for name, feature in features.items():
            if isinstance(feature, tfds.features.Image):
                kinds[name] = "image"
            elif isinstance(feature, tfds.features.Text):
                kinds[name] = "text"
            else:
                kinds[name] = "tensor"
        return kinds

    def _builder(self):
        import tensorflow_datasets as tfds
        return tfds.builder_from_directory(self.builder_dir)

    def _data_source(self):
        if self._source is None:
            import tensorflow_datasets as tfds
            skip = {k: tfds.decode.SkipDecoding() for k, kind in self._features.items() if kind == "image"}
            self._source = self._builder().as_data_source(split=self.split, decoders=skip)
        return self._source

    def _scan_index(self) -> SequenceIndex:
        keys = ("sequence_id", "frame_index", "annotated")
        rows = [self._data_source()[r] for r in range(self._length)]
        n = len(rows)
        columns = [[row[k] for row in rows] if k in self._features else None for k in keys]
        if columns[0] is None:  # no sequences: every record is its own one-frame sequence
            columns[0], columns[1] = list(range(n)), [0] * n
        return SequenceIndex.from_arrays(*columns)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, record: int) -> Dict[str, np.ndarray]:
        record = int(record)
        if not 0 <= record < self._length:
            raise IndexError(f"FrameSource: record {record} out of range [0, {self._length})")
        raw = self._data_source()[record]
        kinds = self._features
        frame = {k: np.asarray(v) for k, v in raw.items() if kinds.get(k, "tensor") == "tensor"}
        frame["image"] = decode_png(raw["image"], 3)
        self._fill_defaults(frame, raw, record)
        frame["mask"] = decode_png(raw["mask"], 1) > 127 if "mask" in raw else frame["mask"]
        frame["part_seg"] = decode_png(raw["part_seg"], 1) if "part_seg" in raw else frame["part_seg"]
        for key, kind in kinds.items():  # other label images, e.g. hand_object's hand_mask / object_mask
            if kind == "image" and key not in ("image", "mask", "part_seg") and key in raw:
                frame[key] = decode_label_image(key, raw[key])
        for key in ("is_right", "annotated"):
            if key in frame:  # two-hand frames have no is_right
                frame[key] = np.bool_(frame[key])
        for key in ("sequence_id", "frame_index"):
            frame[key] = np.int64(frame[key])
        frame["record"] = np.int64(record)
        return frame

    def _fill_defaults(self, frame: Dict[str, np.ndarray], raw, record: int) -> None:
        """Generic defaults for fields this dataset lacks (see class docstring)."""
        h, w = frame["image"].shape[:2]
        for key, flag in (("mask", "has_mask"), ("part_seg", "has_part_seg")):
            if key not in raw:
                frame[key] = np.zeros((h, w), bool if key == "mask" else np.uint8)
                frame.setdefault(flag, np.bool_(False))
        if is_two_hand(frame):
            fill_two_hand_defaults(frame)
        else:
            for key, (shape, dtype, flag) in LABEL_DEFAULTS.items():
                if key not in raw:
                    frame[key] = np.zeros(shape, dtype)
                    frame[flag] = np.bool_(False)
            frame.setdefault("is_right", np.bool_(True))
            if "has_mano" in frame or "mano_pose_relative" in frame:  # betas do not depend on the hand mean
                frame.setdefault("has_betas", np.bool_(frame.get("has_mano", True)))
        frame.setdefault("annotated", np.bool_(True))
        frame.setdefault("sequence_id", self.index.sequence_id[record])
        frame.setdefault("frame_index", self.index.frame_index[record])
        if bool(frame.get("mano_pose_relative", False)):
            if self.hand_mean is not None:
                pose = np.array(frame["mano_pose"], np.float32)
                pose[3:] += self.hand_mean
                frame["mano_pose"], frame["mano_pose_relative"] = pose, np.bool_(False)
            else:
                frame["has_mano"] = np.bool_(False)

    @property
    def subject_index(self) -> samplers.SubjectIndex:
        """Per-record subject ids (subject mode): ``metadata['index'][split]['subject_id']`` when
        the dataset stores it, else the ``subject_id`` feature of every record (read once)."""
        cached = self.__dict__.get("_subject_index")
        if cached is not None:
            return cached
        meta = self._builder().info.metadata or {}
        layout = meta.get("index", {}).get(self.split) if hasattr(meta, "get") else None
        if layout and "subject_id" in layout:
            ids = layout["subject_id"]
        elif "subject_id" in self._features:
            source = self._data_source()
            ids = [int(source[r]["subject_id"]) for r in range(self._length)]
        else:
            raise ValueError(f"FrameSource: subject mode needs a 'subject_id' feature; {self.builder_dir} has "
                             f"none (features: {sorted(self._features)})")
        self._subject_index = samplers.SubjectIndex.from_arrays(ids)
        if len(self._subject_index) != self._length:
            raise ValueError(f"FrameSource: {len(self._subject_index)} subject ids for {self._length} records "
                             f"of split {self.split!r}")
        return self._subject_index

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state


def open_source(source: Any, split: str = "train", hand_mean: Optional[np.ndarray] = None):
    """A path (builder directory) -> :class:`FrameSource` (with ``hand_mean``, see there);
    sources with ``index`` pass through."""
    if isinstance(source, (str, os.PathLike)):
        return FrameSource(source, split, hand_mean)
    if not (hasattr(source, "__getitem__") and hasattr(source, "__len__") and hasattr(source, "index")):
        raise TypeError(f"source must be a builder directory or have __len__, __getitem__ and index, "
                        f"got {type(source).__name__}")
    return source


# ----------------------------------------------------------------------------- samples
@dataclasses.dataclass
class SampleMaker:
    """grain ``map_with_index`` function: (stream position, anchor record) -> sample dict."""

    source: Any
    mode: str
    augment: AugmentConfig
    image_size: int
    seed: int
    shard_index: int
    epoch_length: int
    k: int = 2
    window: int = 3
    num_negatives: int = 0
    num_frames: int = 2
    crop: Optional[str] = None  # two-hand samples: "hands" (default) or "person"

    def rng(self, position: int) -> np.random.Generator:
        epoch, pos = divmod(int(position), self.epoch_length)
        return np.random.default_rng([self.seed, self.shard_index, epoch, pos])

    def records(self, anchor: int, rng: np.random.Generator):
        """(record ids, in_window or None) of one sample."""
        index = self.source.index
        if self.mode == "frame":
            return np.array([anchor]), None
        if self.mode == "window":
            return samplers.sample_window(index, anchor, rng, self.k, self.window, self.num_negatives)
        if self.mode == "subject":
            return samplers.sample_subject(self.source.subject_index, anchor, rng, self.num_frames), None
        return np.array([anchor, index.nearest_annotated[anchor]]), None

    def __call__(self, position: int, anchor: int) -> Dict[str, np.ndarray]:
        rng = self.rng(position)
        records, in_window = self.records(int(anchor), rng)
        shared = AugmentParams.sample(rng, self.augment)
        frames = []
        for r in records:
            params = AugmentParams.sample(rng, self.augment) if self.augment.per_frame else shared
            frame = self.source[r]
            if is_two_hand(frame):
                out = transform_two_hand_frame(frame, params, self.augment, self.image_size, self.crop or "hands")
            elif self.crop is not None:
                raise ValueError(f"crop={self.crop!r} needs two-hand samples (42 joints); record {r} is a "
                                 f"single-hand frame")
            else:
                out = transform_frame(frame, params, self.augment, self.image_size)
            frames.append(transform_extra_labels(frame, out, out["image"].shape[:2]))
        if self.mode == "frame":
            return frames[0]
        sample = {key: np.stack([f[key] for f in frames]) for key in frames[0]}
        if in_window is not None:
            sample["in_window"] = in_window
        return sample


def transform_extra_labels(frame: Mapping[str, np.ndarray], out: Dict[str, np.ndarray], out_size
                           ) -> Dict[str, np.ndarray]:
    """Crop the labels :func:`transform_frame` copies through unchanged (``out`` = its result
    for ``frame``; returned updated): other ``*_mask`` label images (H, W) are resampled like
    the mask, and a rigid object (hand_object: ``object_rot`` (3, 3), ``object_transl`` (3,),
    ``object_vertices`` (Vo, 3)) moves with the crop's camera transform ``R3 = Rz M``.

    With a flip (M = diag(-1, 1, 1)) the rotation stays proper: ``object_rot' = R3 R M`` maps
    the MIRRORED canonical mesh (x -> -x) to the camera, and ``object_mirrored`` (bool, False
    when not flipped) says so: ``object_vertices' = (canonical * [-1, 1, 1] if object_mirrored
    else canonical) @ object_rot'.T + object_transl'``.
    """
    affine = np.asarray(out["crop_affine"], np.float64)
    for key, value in frame.items():
        if key.endswith("_mask") and np.ndim(value) == 2:
            out[key] = warp_labels(np.asarray(value), affine, out_size)
    if "object_rot" in frame:
        flip = bool(out["aug_flip"])
        mirror = np.diag([-1.0, 1.0, 1.0]) if flip else np.eye(3)
        r3 = rotation_z(float(out["aug_rotation"])) @ mirror
        rot = np.asarray(frame["object_rot"], np.float64)
        out["object_rot"] = (r3 @ rot @ mirror).astype(np.float32)
        out["object_transl"] = (r3 @ np.asarray(frame["object_transl"], np.float64)).astype(np.float32)
        out["object_vertices"] = (np.asarray(frame["object_vertices"], np.float64) @ r3.T).astype(np.float32)
        out["object_mirrored"] = np.bool_(bool(frame.get("object_mirrored", False)) != flip)
    return out


@dataclasses.dataclass(frozen=True)
class _MarkValid:
    """Sample ``valid`` flag of a padded shard: its first ``real`` positions are real samples."""

    real: int

    def __call__(self, position: int, sample: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return dict(sample, valid=np.bool_(position < self.real))


def anchors_for(index: SequenceIndex, mode: str, *, window: int, num_negatives: int, annotated_only: bool,
                unannotated_only: bool, max_distance: Optional[int] = None, source: Any = None) -> np.ndarray:
    mode = MODE_ALIASES.get(mode, mode)
    if mode == "frame":
        return samplers.frame_anchors(index, annotated_only)
    if mode == "window":
        return samplers.window_anchors(index, window, num_negatives)
    if mode == "subject":
        return samplers.subject_anchors(source.subject_index)
    return samplers.pair_anchors_within(index, max_distance, unannotated_only)


def _default_shard() -> tuple[int, int]:
    opts = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    return opts.shard_index, opts.shard_count


# ----------------------------------------------------------------------------- pipeline
def make_dataset(source: Any, split: str = "train", *, mode: str = "frame", batch_size: int,
                 image_size: int = 128, augment: Optional[Mapping] = None, seed: int = 0,
                 shard_index: Optional[int] = None, shard_count: Optional[int] = None, num_workers: int = 0,
                 window: int = 3, k: int = 2, num_negatives: int = 0, annotated_only: bool = False,
                 unannotated_only: bool = False, shuffle: bool = True, num_epochs: Optional[int] = None,
                 read_threads: int = 0, worker_buffer_size: int = 2, pad_shards: bool = False,
                 max_distance: Optional[int] = None, num_frames: int = 2, crop: Optional[str] = None
                 ) -> grain.IterDataset:
    """The batched grain dataset (see module docstring for modes and the batch format).

    batch_size is per process (drop remainder). shard_index / shard_count default to
    ``jax.process_index()`` / ``jax.process_count()``; the anchors are split into equal
    disjoint shards (remainder dropped) before shuffling. num_epochs None repeats forever;
    each epoch is reshuffled (seed + epoch). num_workers > 0 uses grain worker processes
    (call it under ``absl.app.run`` or after parsing absl flags). read_threads > 0 reads
    samples in threads within each process.

    pad_shards (evaluation: one unshuffled epoch): nothing is dropped; every shard gets
    ceil(N / shard_count) samples, the short ones padded with a repeat of their last sample,
    and each sample carries ``valid`` (False on the padding) so that every process yields the
    same number of batches and every sample is evaluated exactly once.

    crop (two-hand sources only): "hands" (default; square S x S around both hands, DIGIT)
    or "person" (the whole 4:3 person crop, S x 3S/4, InterWild); see "Two-hand samples".
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ds = make_sample_dataset(source, split, mode=mode, image_size=image_size, augment=augment, seed=seed,
                             shard_index=shard_index, shard_count=shard_count, window=window, k=k,
                             num_negatives=num_negatives, annotated_only=annotated_only,
                             unannotated_only=unannotated_only, shuffle=shuffle, num_epochs=num_epochs,
                             read_threads=read_threads, prefetch=max(batch_size, 1) * 2, pad_shards=pad_shards,
                             max_distance=max_distance, num_frames=num_frames, crop=crop)
    return batch_dataset(ds, batch_size, num_workers=num_workers, worker_buffer_size=worker_buffer_size)


def batch_dataset(ds: grain.IterDataset, batch_size: int, *, num_workers: int = 0,
                  worker_buffer_size: int = 2) -> grain.IterDataset:
    """Batch a per-sample dataset (drop remainder), optionally in grain worker processes."""
    ds = ds.batch(batch_size, drop_remainder=True)
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=worker_buffer_size))
    return ds


def make_sample_dataset(source: Any, split: str = "train", *, mode: str = "frame", image_size: int = 128,
                        augment: Optional[Mapping] = None, seed: int = 0, shard_index: Optional[int] = None,
                        shard_count: Optional[int] = None, window: int = 3, k: int = 2, num_negatives: int = 0,
                        annotated_only: bool = False, unannotated_only: bool = False, shuffle: bool = True,
                        num_epochs: Optional[int] = None, read_threads: int = 0, prefetch: int = 2,
                        pad_shards: bool = False, max_distance: Optional[int] = None,
                        num_frames: int = 2, crop: Optional[str] = None) -> grain.IterDataset:
    """The UNBATCHED grain dataset of samples (arguments as :func:`make_dataset`; ``prefetch``:
    grain's read-ahead buffer in samples). Datasets of several sources are mixed from these
    (:func:`data_pipelines.factory.mix_datasets`) before batching."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    mode = MODE_ALIASES.get(mode, mode)
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if mode == "window" and (k < 1 or window < 0 or num_negatives < 0):
        raise ValueError(f"window mode needs k >= 1, window >= 0, num_negatives >= 0; got {k}, {window}, "
                         f"{num_negatives}")
    if mode == "subject" and num_frames < 1:
        raise ValueError(f"subject mode needs num_frames >= 1, got {num_frames}")
    if crop is not None and crop not in TWO_HAND_CROPS:
        raise ValueError(f"crop must be None (the sample's default) or one of {TWO_HAND_CROPS}, got {crop!r}")
    if crop == "person":
        person_crop_size(image_size)  # image_size is the person crop's height: a multiple of 4
    if (shard_index is None) != (shard_count is None):
        raise ValueError("give both shard_index and shard_count, or neither")
    if shard_index is None:
        shard_index, shard_count = _default_shard()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must lie in [0, {shard_count}), got {shard_index}")
    src = open_source(source, split)
    anchors = anchors_for(src.index, mode, window=window, num_negatives=num_negatives,
                          annotated_only=annotated_only, unannotated_only=unannotated_only,
                          max_distance=max_distance, source=src)
    if pad_shards and (shuffle or num_epochs != 1):
        raise ValueError("pad_shards is for evaluation: it needs shuffle=False and num_epochs=1")
    per_shard = -(-len(anchors) // shard_count) if pad_shards else len(anchors) // shard_count
    if per_shard == 0 or (pad_shards and len(anchors) < shard_count):
        raise ValueError(f"{mode} mode: {len(anchors)} anchor frame(s) in split {split!r} cannot fill "
                         f"{shard_count} shard(s)")
    if pad_shards:
        anchors = anchors[shard_index::shard_count]
        real = len(anchors)
        anchors = np.concatenate([anchors, np.repeat(anchors[-1:], per_shard - real, axis=0)])
    else:
        anchors = anchors[:per_shard * shard_count][shard_index::shard_count]
    ds = grain.MapDataset.source(anchors.tolist())
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    augment_cfg = AugmentConfig.from_dict(augment)
    if crop is not None or augment_cfg.flip == "left_to_right":  # fail here, not inside the grain pipeline
        first = src[int(anchors[0])]
        if crop is not None and not is_two_hand(first):
            raise ValueError(f"crop={crop!r} needs two-hand samples (42 joints, e.g. the two_hands dataset); "
                             f"split {split!r} of this source has single-hand frames")
        if is_two_hand(first) and augment_cfg.flip == "left_to_right":
            raise ValueError("augment['flip']='left_to_right' mirrors single left hands into right ones; "
                             "two-hand samples take 'none' or 'random' (a flip swaps the hands)")
    maker = SampleMaker(src, mode, augment_cfg, image_size, seed, shard_index,
                        per_shard, k=k, window=window, num_negatives=num_negatives, num_frames=num_frames,
                        crop=crop)
    ds = ds.map_with_index(maker)
    if pad_shards:
        ds = ds.map_with_index(_MarkValid(real))
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))


def make_pipeline(source: Any, split: str = "train", **kwargs) -> grain.DatasetIterator:
    """``iter(make_dataset(...))``: a checkpointable iterator (``get_state`` / ``set_state``)."""
    return iter(make_dataset(source, split, **kwargs))
