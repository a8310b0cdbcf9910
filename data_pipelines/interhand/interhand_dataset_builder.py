"""tfds builder ``interhand``: InterHand2.6M v1.0 from its manual download (no TensorFlow).

One record per annotation of ``InterHand2.6M_<split>_data.json`` (one image, both hands),
in data.json order. Configs ``{5fps,30fps}_{h,m,hm}``: frame rate of the download and
annotation subset (H human, M machine, H+M all; see :mod:`.layout`). Splits: train, val,
test (H: train, test). Coordinates: camera frame (OpenCV), metres; conversions and
conventions in :mod:`data_pipelines.interhand.layout`.

Features (H, W = image height, width):

===================  =================  =====================================================
image                (H, W, 3) uint8    the original JPEG bytes
image_size           (2,) int32         (height, width) from data.json (checked on decode)
K                    (3, 3) float32     intrinsics from focal / princpt
cam_R, cam_t         (3, 3), (3,) f32   world(mm) -> camera(m): X_cam = R X / 1000 + t
joints3d             (42, 3) float32    camera frame, metres; right 0-20, left 21-41, each
                                        hand in handjax "ih26m" order (wrist 20 / 41)
joints2d             (42, 2) float32    pixels, = K joints3d projected
joint_valid          (42,) bool         the annotation's joint_valid (not root-masked)
hand_type            ClassLabel         right / left / interacting (codes 0 / 1 / 2)
hand_type_valid      () bool
bbox                 (4,) float32       annotation box (x, y, w, h), pixels
mano/<hand>/...      hand = right/left  NeuralAnnot fit in the camera frame:
  pose               (48,) float32      axis-angle, 3:48 relative to the MANO mean pose
                                        (flat_hand_mean=False), 0:3 camera-frame root
  betas              (10,) float32
  transl             (3,) float32       smplx translation in the camera frame, exact for the
                                        MANO model of metadata mano_pivot (its J0 pivot)
  pose_world         (48,) float32      as stored (world root)
  transl_world       (3,) float32       as stored, world metres
  root_j0            (3,) float32       rest wrist J0(betas) used for the conversion
  valid              () bool            a fit exists (zeros otherwise)
rootnet/abs_depth    (2,) float32       RootNet root depth (right, left), metres
rootnet/bbox         (4,) float32       RootNet box (x, y, w, h)
rootnet/valid        () bool            an entry exists for this annotation
part_seg             (H, W, 1) uint8    PNG; DIGIT's 33 classes rendered from the fits (0
                                        background, 1..16 right, 17..32 left parts, mutual
                                        occlusion by z-buffer); zeros when not rendered
has_part_seg         () bool            rendered and DIGIT's mano_valid (interacting: both
                                        fits; single hand: its fit and not the other's)
annot_id, image_id   () int64
capture, frame_idx   () int64
subject              () int64           -1 when absent
sequence_id          () int64           (capture, seq_name, camera) id within the split
camera, seq_name     Text
file_name            Text               relative to images/<split>/
===================  =================  =====================================================

Metadata: ``config`` (fps, subset), ``mano_pivot`` (model source, left fix applied),
``rootnet`` (splits with RootNet outputs), ``skipped`` (per split: annotation id, file and
reason of each corrupt/missing sample skipped), ``part_seg`` (rendered or why not, MANO
source, measured seconds per frame).

Part segmentation (DIGIT) is rendered at BUILD time from the NeuralAnnot fits with
``handjax.render`` (conventions and cost in :mod:`data_pipelines.interhand.part_seg`:
~0.5-1.3 s per 512x334 frame on 2 CPU cores; the mean measured in each build is printed
and stored in the metadata), and only with a real MANO model (``mano_dir``): without one,
or with ``render_part_seg=False``, the masks are empty, ``has_part_seg`` is False and the
build says so.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.manual import (
    CorruptFileError,
    CorruptPolicy,
    ManualDirError,
    as_array,
    check_manual_dir,
    default_data_dir,
    encode_png,
    ensure_prepared,
    get_named_builder,
    read_image,
    record_key,
)

from . import layout

NAME = "interhand"
VERSION = "1.1.0"


@dataclasses.dataclass
class InterHandConfig(tfds.core.BuilderConfig):
    """Frame rate of the download (5 / 30) and annotation subset ('h', 'm', 'hm')."""

    fps: int = 5
    subset: str = "hm"


BUILDER_CONFIGS = [
    InterHandConfig(name=f"{fps}fps_{subset}", description=f"InterHand2.6M v1.0, {fps} fps, subset "
                    f"{ {'h': 'H (human)', 'm': 'M (machine)', 'hm': 'H+M (all)'}[subset]}", fps=fps, subset=subset)
    for fps in layout.FPS for subset in layout.SUBSETS
]


def _features() -> tfds.features.FeaturesDict:
    f32, tensor = np.float32, tfds.features.Tensor
    hand = {
        "pose": tensor(shape=(48,), dtype=f32), "betas": tensor(shape=(10,), dtype=f32),
        "transl": tensor(shape=(3,), dtype=f32), "pose_world": tensor(shape=(48,), dtype=f32),
        "transl_world": tensor(shape=(3,), dtype=f32), "root_j0": tensor(shape=(3,), dtype=f32),
        "valid": tensor(shape=(), dtype=np.bool_),
    }
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "image_size": tensor(shape=(2,), dtype=np.int32),
        "K": tensor(shape=(3, 3), dtype=f32),
        "cam_R": tensor(shape=(3, 3), dtype=f32),
        "cam_t": tensor(shape=(3,), dtype=f32),
        "joints3d": tensor(shape=(42, 3), dtype=f32),
        "joints2d": tensor(shape=(42, 2), dtype=f32),
        "joint_valid": tensor(shape=(42,), dtype=np.bool_),
        "hand_type": tfds.features.ClassLabel(names=list(layout.HAND_TYPES)),
        "hand_type_valid": tensor(shape=(), dtype=np.bool_),
        "bbox": tensor(shape=(4,), dtype=f32),
        "mano": {"right": dict(hand), "left": dict(hand)},
        "rootnet": {"abs_depth": tensor(shape=(2,), dtype=f32), "bbox": tensor(shape=(4,), dtype=f32),
                    "valid": tensor(shape=(), dtype=np.bool_)},
        "part_seg": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "has_part_seg": tensor(shape=(), dtype=np.bool_),
        "annot_id": tensor(shape=(), dtype=np.int64),
        "image_id": tensor(shape=(), dtype=np.int64),
        "capture": tensor(shape=(), dtype=np.int64),
        "frame_idx": tensor(shape=(), dtype=np.int64),
        "subject": tensor(shape=(), dtype=np.int64),
        "sequence_id": tensor(shape=(), dtype=np.int64),
        "camera": tfds.features.Text(),
        "seq_name": tfds.features.Text(),
        "file_name": tfds.features.Text(),
    })


@functools.lru_cache(maxsize=8)
def _empty_png(size: Tuple[int, int]) -> bytes:
    """PNG of an all-background (H, W) class map (records without rendered parts)."""
    return encode_png(np.zeros(size, np.uint8))


def _empty_hand() -> Dict[str, np.ndarray]:
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    return {"pose": z(48), "betas": z(10), "transl": z(3), "pose_world": z(48), "transl_world": z(3),
            "root_j0": z(3), "valid": False}


class Builder(tfds.core.GeneratorBasedBuilder):
    """InterHand2.6M v1.0 (manual download) as ArrayRecord.

    Extra constructor arguments: ``skip_corrupt`` (count, skip and report corrupt or missing
    per-sample files instead of stopping), ``mano_dir`` (folder with the official
    MANO_{RIGHT,LEFT}.pkl for the J0 pivot of the camera-frame MANO translation; None = the
    built-in model, exact only for data generated with it; also the model the part
    segmentation is rendered with, which needs it), ``fix_left_shapedirs`` (InterHand2.6M's
    left-model fix, applied when the left model has the official bug), ``render_part_seg``
    (render DIGIT's part masks when ``mano_dir`` is given; default True).
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "DIGIT part segmentation rendered from the MANO fits (part_seg, has_part_seg); "
                               "skipped samples recorded per split with their annotation id."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_CONFIG_NAME = "5fps_hm"
    MANUAL_DOWNLOAD_INSTRUCTIONS = layout.instructions()
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, file_format=None, skip_corrupt: bool = False, mano_dir: Optional[str] = None,
                 fix_left_shapedirs: bool = True, render_part_seg: bool = True, **kwargs):
        self.policy = CorruptPolicy(skip_corrupt, NAME)
        self.mano_dir = mano_dir
        self.fix_left_shapedirs = fix_left_shapedirs
        self.render_part_seg = render_part_seg
        self._pivot: Optional[layout.RootPivot] = None
        self._renderer = None
        self._render_seconds: List[float] = []
        super().__init__(file_format=file_format or "array_record", **kwargs)

    # ------------------------------------------------------------------ tfds hooks
    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        metadata = tfds.core.MetadataDict(config={"fps": cfg.fps, "subset": cfg.subset})
        return self.dataset_info_from_configs(description=__doc__, features=_features(), disable_shuffling=True,
                                              metadata=metadata, homepage=layout.DOWNLOAD_PAGE)

    def check_manual_dir(self, manual_dir) -> Path:
        cfg = self.builder_config
        return check_manual_dir(manual_dir, layout.required_entries(cfg.subset), dataset=f"{NAME}/{cfg.name}",
                                instructions=layout.instructions(cfg.subset))

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(dl_manager.manual_dir)
        cfg = self.builder_config
        self._pivot = layout.load_root_pivot(self.mano_dir, self.fix_left_shapedirs)
        if self.mano_dir is None:
            print(f"{NAME}: no --mano_dir given: the camera-frame MANO translations (mano/<hand>/transl) use the "
                  "rest wrist of handjax's built-in hand model, NOT of the official MANO model the NeuralAnnot "
                  "fits were made with; pass the folder of MANO_RIGHT.pkl / MANO_LEFT.pkl for real data "
                  "(pose_world / transl_world are stored exactly either way)", file=sys.stderr)
        self.info.metadata["mano_pivot"] = {"source": self._pivot.source,
                                            "left_shapedirs_fix_applied": self._pivot.left_fix_applied}
        self.info.metadata["rootnet"], self.info.metadata["skipped"] = [], {}
        self._setup_part_seg()
        plans = {split: self._plan(root, split) for split in layout.subset_splits(cfg.subset)}
        self._check_images(root, plans)
        return {split: self._generate_examples(root, split, *plans[split]) for split in plans}

    def _generate_examples(self, root, split: str, ann: layout.SplitAnnotations, rows: List[dict]
                           ) -> Iterator[Tuple[int, Dict]]:
        seq_ids = layout.sequence_keys(r["image"] for r in rows)
        for position, row in enumerate(rows):
            try:
                example = self._example(root, split, ann, row, seq_ids)
            except CorruptFileError as err:
                self.policy.handle(err, split=split, sample_id=row["annot_id"])
                continue
            yield record_key(position, len(rows)), example
        self._finish_split(split)

    # ------------------------------------------------------------------ planning
    def _plan(self, root, split: str) -> Tuple[layout.SplitAnnotations, List[dict]]:
        ann = layout.load_split(root, split, self.builder_config.fps)
        if ann.rootnet is not None:
            self.info.metadata["rootnet"].append(split)
        rows = []
        for a in layout.select_annotations(ann, self.builder_config.subset, root):
            try:
                rows.append(layout.parse_annotation(ann, a))
            except CorruptFileError as err:
                self.policy.handle(err, split=split, sample_id=a.get("id") if isinstance(a, dict) else None)
        if not rows:
            raise ValueError(f"{NAME}: split {split!r} has no usable annotation under {root}")
        return ann, rows

    def _check_images(self, root, plans) -> None:
        """Every missing image of every split in ONE error (or skipped with skip_corrupt)."""
        missing = []
        for split, (_, rows) in plans.items():
            lost = set(layout.missing_images(root, split, [r["image"]["file_name"] for r in rows]))
            if lost and self.policy.skip:
                kept = []
                for r in rows:
                    rel = os.path.join("images", split, r["image"]["file_name"])
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
            raise ManualDirError(f"{NAME}: {len(missing)} image file(s) named in data.json are missing under "
                                 f"{root}:\n{listed}{more}\n\n{layout.instructions(self.builder_config.subset)}",
                                 missing)

    def _finish_split(self, split: str) -> None:
        self.info.metadata["skipped"][split] = self.policy.split_records(split)
        if self.policy.split_records(split):
            print(self.policy.split_report(split), file=sys.stderr)
        if self._renderer is not None and self._render_seconds:
            # the first frame of a size includes jit compilation: report the others when there are any
            times = self._render_seconds[1:] or self._render_seconds
            self.info.metadata["part_seg"]["seconds_per_frame"] = float(np.mean(times))
            print(f"{NAME}: split {split}: part segmentation rendered, {np.mean(times):.3f} s per frame "
                  f"(mean of {len(times)}, after compilation)", file=sys.stderr)

    def _setup_part_seg(self) -> None:
        """Load the renderer (real MANO only) or record why the masks stay empty."""
        if not self.render_part_seg:
            reason = "render_part_seg=False (--no_part_seg)"
        elif self.mano_dir is None:
            reason = ("no MANO model given (--mano_dir): DIGIT's masks are rendered only with the official "
                      "MANO_{RIGHT,LEFT}.pkl, never silently with the built-in hand")
        else:
            from .part_seg import load_renderer

            self._renderer = load_renderer(self.mano_dir, self.fix_left_shapedirs)
            self.info.metadata["part_seg"] = {"rendered": True, "mano": self._renderer.source,
                                              "when": "build time", "seconds_per_frame": None}
            return
        self.info.metadata["part_seg"] = {"rendered": False, "reason": reason}
        print(f"{NAME}: part segmentation NOT rendered ({reason}); every record has has_part_seg False",
              file=sys.stderr)

    # ------------------------------------------------------------------ one record
    def _example(self, root, split: str, ann: layout.SplitAnnotations, row: dict, seq_ids) -> Dict:
        img = row["image"]
        capture, cam, frame = img["capture"], img["camera"], img["frame_idx"]
        camera = layout.camera_of(ann, capture, cam)
        joints3d = camera.from_world(layout.world_joints_of(ann, capture, frame))
        path = layout.image_path(root, split, img["file_name"])
        encoded = read_image(path)
        size = (int(img["height"]), int(img["width"]))
        if encoded.shape[:2] != size or encoded.format != "jpeg":
            raise CorruptFileError(path, f"expected a {size[0]}x{size[1]} JPEG (data.json), got a "
                                         f"{encoded.shape[0]}x{encoded.shape[1]} {encoded.format}")
        return {
            "image": encoded.data,
            "image_size": np.array(size, np.int32),
            "K": camera.K.astype(np.float32),
            "cam_R": camera.R.astype(np.float32),
            "cam_t": camera.t.astype(np.float32),
            "joints3d": joints3d.astype(np.float32),
            "joints2d": layout.project(joints3d, camera.K).astype(np.float32),
            "joint_valid": row["joint_valid"],
            "hand_type": row["hand_type"],
            "hand_type_valid": row["hand_type_valid"],
            "bbox": row["bbox"],
            "mano": {hand: self._mano(ann, capture, frame, hand, camera) for hand in layout.HANDS},
            "rootnet": self._rootnet(ann, row["annot_id"]),
            **self._part_seg(ann, capture, frame, camera, row["hand_type"], size),
            "annot_id": row["annot_id"],
            "image_id": int(img["id"]),
            "capture": int(capture),
            "frame_idx": int(frame),
            "subject": int(img.get("subject", -1)),
            "sequence_id": seq_ids[(str(capture), str(img.get("seq_name", "")), str(cam))],
            "camera": str(cam),
            "seq_name": str(img.get("seq_name", "")),
            "file_name": str(img["file_name"]),
        }

    def _mano(self, ann, capture, frame, hand: str, camera: layout.Camera) -> Dict:
        param = layout.mano_of(ann, capture, frame, hand)
        if param is None:
            return _empty_hand()
        j0 = self._pivot(hand, param["shape"])
        pose, transl = layout.mano_world_to_camera(param["pose"], param["trans"], camera.R, camera.t, j0)
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        return {"pose": f32(pose), "betas": f32(param["shape"]), "transl": f32(transl),
                "pose_world": f32(param["pose"]), "transl_world": f32(param["trans"]), "root_j0": f32(j0),
                "valid": True}

    def _part_seg(self, ann, capture, frame, camera: layout.Camera, hand_type: str, size) -> Dict:
        """part_seg (H, W, 1) uint8 and has_part_seg of one frame (see :mod:`.part_seg`)."""
        from .part_seg import digit_mask_valid

        if self._renderer is None:
            return {"part_seg": _empty_png(size), "has_part_seg": False}
        fits = {hand: layout.mano_of(ann, capture, frame, hand) for hand in layout.HANDS}
        start = time.perf_counter()
        verts = {hand: None if fit is None else self._renderer.camera_vertices(
            hand, fit["pose"], fit["shape"], fit["trans"], camera) for hand, fit in fits.items()}
        classes = self._renderer.render(verts, camera.K, size)
        self._render_seconds.append(time.perf_counter() - start)
        valid = digit_mask_valid(hand_type, {hand: fit is not None for hand, fit in fits.items()})
        return {"part_seg": encode_png(classes), "has_part_seg": valid}

    @staticmethod
    def _rootnet(ann: layout.SplitAnnotations, annot_id: int) -> Dict:
        entry = None if ann.rootnet is None else ann.rootnet.get(annot_id)
        if entry is None:
            return {"abs_depth": np.zeros(2, np.float32), "bbox": np.zeros(4, np.float32), "valid": False}
        path = ann.paths["rootnet"]
        depth = as_array(entry.get("abs_depth"), (2,), path=path, key=f"annot_id {annot_id}: abs_depth")
        bbox = as_array(entry.get("bbox"), (4,), path=path, key=f"annot_id {annot_id}: bbox")
        return {"abs_depth": depth / 1000.0, "bbox": bbox, "valid": True}


# ----------------------------------------------------------------------------- helpers
def get_builder(config: str = "5fps_hm", data_dir: Optional[str] = None, **kwargs) -> Builder:
    """The builder of a config name (kwargs: skip_corrupt, mano_dir, fix_left_shapedirs, render_part_seg)."""
    return get_named_builder(Builder, config, data_dir, **kwargs)


def ensure_built(config: str = "5fps_hm", data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 **kwargs) -> str:
    """The builder directory ``<data_dir>/interhand/<config>/1.1.0``, built from ``manual_dir`` if
    missing (FileNotFoundError with the download instructions when neither exists); kwargs: skip_corrupt, mano_dir, fix_left_shapedirs, render_part_seg."""
    return ensure_prepared(get_builder(config, data_dir, **kwargs), manual_dir, layout.instructions())
