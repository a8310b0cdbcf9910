"""tfds builder ``fphab``: First-Person Hand Action Benchmark frames (manual download, no TensorFlow).

One record per annotated colour frame, sequences contiguous and in split-file order.
Configs (``*_480``: the 480 x 270 copies with K scaled by 1/4, as handobjectconsist uses):

* ``actions`` / ``actions_480``: the official action-recognition split, every frame;
* ``hand_object`` / ``hand_object_480``: handobjectconsist's FPHAB subset: action split,
  only frames with a 6-D pose of one of juice_bottle / liquid_soap / milk / salt;
* ``hand_object_subjects`` / ``..._480``: the same subset with handobjectconsist's
  subject split (subjects 1, 3, 4 train; 2, 5, 6 test).

Conventions and constants: :mod:`data_pipelines.fphab.layout`.

Features (H x W = 1080 x 1920, or 270 x 480 for ``*_480``):

================  ==================  ====================================================
image             (H, W, 3) uint8     JPEG (original bytes; resized copy for *_480 when
                                      Video_files_480 is absent)
K                 (3, 3) float32      colour intrinsics (scaled for *_480)
joints3d          (21, 3) float32     colour camera frame, metres, OpenPose / handjax
                                      "manopth" joint ORDER (FPHAB joint definitions)
joints2d          (21, 2) float32     pixels, = K joints3d projected
is_right          () bool             always True (FPHAB is right-handed)
mano/pose         (48,) float32       handobjectconsist fit: axis-angle, FLAT hand mean
mano/betas        (10,) float32
mano/transl       (3,) float32        metres: vertices = MANO(pose, betas) + transl
mano/valid        () bool             a fit exists for this frame (zeros otherwise)
object/name       Text                object of the action ('' when none)
object/pose       (4, 4) float32      model metres -> camera metres (identity if invalid)
object/valid      () bool             a 6-D object pose exists for this frame
subject, action, sequence  Text
action_label      () int64            class index of the split file
frame_index       () int64            frame within the sequence (color_%04d)
sequence_id       () int64            sequence number within the split
================  ==================  ====================================================
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

from handjax.distributed import check_preemption
from data_pipelines.manual import (
    CorruptFileError,
    CorruptPolicy,
    ManualDirError,
    check_manual_dir,
    default_data_dir,
    ensure_prepared,
    get_named_builder,
    read_image,
    record_key,
)

from . import layout

NAME = "fphab"
VERSION = "1.0.0"
SPLITS = ("train", "test")


@dataclasses.dataclass
class FPHABConfig(tfds.core.BuilderConfig):
    """split_type 'actions' / 'subjects'; hand_object: keep only frames with an object pose of
    handobjectconsist's four objects; reduced: 480 x 270 images."""

    split_type: str = "actions"
    hand_object: bool = False
    reduced: bool = False


def _configs() -> List[FPHABConfig]:
    out = []
    for name, split_type, ho, desc in (
            ("actions", "actions", False, "official action split, all frames"),
            ("hand_object", "actions", True, "handobjectconsist subset (4 objects), action split"),
            ("hand_object_subjects", "subjects", True, "handobjectconsist subset (4 objects), subject split")):
        for reduced in (False, True):
            out.append(FPHABConfig(name=name + ("_480" if reduced else ""), split_type=split_type, hand_object=ho,
                                   reduced=reduced, description=desc + (", 480x270" if reduced else ", 1920x1080")))
    return out


BUILDER_CONFIGS = _configs()


def _features() -> tfds.features.FeaturesDict:
    f32, tensor = np.float32, tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "K": tensor(shape=(3, 3), dtype=f32),
        "joints3d": tensor(shape=(21, 3), dtype=f32),
        "joints2d": tensor(shape=(21, 2), dtype=f32),
        "is_right": tensor(shape=(), dtype=np.bool_),
        "mano": {"pose": tensor(shape=(48,), dtype=f32), "betas": tensor(shape=(10,), dtype=f32),
                 "transl": tensor(shape=(3,), dtype=f32), "valid": tensor(shape=(), dtype=np.bool_)},
        "object": {"name": tfds.features.Text(), "pose": tensor(shape=(4, 4), dtype=f32),
                   "valid": tensor(shape=(), dtype=np.bool_)},
        "subject": tfds.features.Text(),
        "action": tfds.features.Text(),
        "sequence": tfds.features.Text(),
        "action_label": tensor(shape=(), dtype=np.int64),
        "frame_index": tensor(shape=(), dtype=np.int64),
        "sequence_id": tensor(shape=(), dtype=np.int64),
    })


@dataclasses.dataclass
class _SequencePlan:
    ref: layout.SequenceRef
    sequence_id: int
    skeleton: np.ndarray                 # (T, 21, 3) world mm
    frames: List[int]
    object_poses: Dict[int, np.ndarray]  # frame -> (4, 4) world mm


def _sample_id(ref, frame: int) -> str:
    """subject/action/sequence/frame of one FPHAB sample (how skips name it)."""
    return f"{ref.subject}/{ref.action}/{ref.seq}/{frame}"

class Builder(tfds.core.GeneratorBasedBuilder):
    """FPHAB (manual download) as ArrayRecord. ``skip_corrupt``: skip and report corrupt
    frames / annotation files instead of stopping."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_CONFIG_NAME = "hand_object_480"
    MANUAL_DOWNLOAD_INSTRUCTIONS = layout.INSTRUCTIONS
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, file_format=None, skip_corrupt: bool = False, **kwargs):
        self.policy = CorruptPolicy(skip_corrupt, NAME)
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        size = layout.REDUCED_SIZE if cfg.reduced else layout.FULL_SIZE
        metadata = tfds.core.MetadataDict(
            config={"split_type": cfg.split_type, "hand_object": cfg.hand_object, "reduced": cfg.reduced},
            image_size=list(size), cam_extr=layout.CAM_EXTR.tolist(), cam_intr_full=layout.CAM_INTR.tolist(),
            joint_order="OpenPose / handjax 'manopth' order (wrist, thumb MCP..TIP, index, middle, ring, pinky)")
        return self.dataset_info_from_configs(description=__doc__, features=_features(), disable_shuffling=True,
                                              metadata=metadata, homepage=layout.DOWNLOAD_PAGE)

    def check_manual_dir(self, manual_dir) -> Path:
        cfg = self.builder_config
        return check_manual_dir(manual_dir, layout.required_entries(cfg.hand_object, cfg.reduced),
                                dataset=f"{NAME}/{cfg.name}", instructions=layout.INSTRUCTIONS)

    # ------------------------------------------------------------------ planning
    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(dl_manager.manual_dir)
        cfg = self.builder_config
        self._from_reduced = cfg.reduced and (root / "Video_files_480").is_dir()
        infos = {s: layout.read_subject_info(root / "Subjects_info" / f"{s}_info.txt") for s in layout.SUBJECTS}
        sequences = layout.split_sequences(root / "data_split_action_recognition.txt", cfg.split_type)
        self.info.metadata.update(discarded_sequences=[], without_object_pose=[], skipped={},
                                  mano_fits_sequences={})
        missing: List[str] = []
        plans = {split: self._plan(root, split, refs, infos, missing) for split, refs in sequences.items()}
        self._check_images(root, plans, missing)
        return {split: self._generate_examples(root, split, plans[split]) for split in SPLITS if plans[split]}

    def _plan(self, root, split: str, refs: List[layout.SequenceRef], infos, missing: List[str]
              ) -> List[_SequencePlan]:
        """Sequences of a split with their frames; missing skeleton files go to ``missing``."""
        cfg = self.builder_config
        plans = []
        for ref in refs:
            length = infos.get(ref.subject, {}).get((ref.action, ref.seq), 0)
            obj = layout.object_name(ref.action)
            if cfg.hand_object and obj not in layout.HO_OBJECTS:
                continue
            if length == 0:  # e.g. Subject_5/use_flash/6, discarded by handobjectconsist too
                self.info.metadata["discarded_sequences"].append(f"{ref.subject}/{ref.action}/{ref.seq}")
                continue
            skel_path = layout.skeleton_path(root, ref.subject, ref.action, ref.seq)
            if not skel_path.is_file():
                missing.append(os.fspath(skel_path.relative_to(root)))
                continue
            try:
                skeleton = layout.read_skeleton(skel_path, length)
                poses = self._object_poses(root, ref)
            except CorruptFileError as err:  # the whole sequence
                self.policy.handle(err, split=split, sample_id=f"{ref.subject}/{ref.action}/{ref.seq}")
                continue
            if cfg.hand_object and not poses:
                self.info.metadata["without_object_pose"].append(f"{ref.subject}/{ref.action}/{ref.seq}")
            frames = sorted(f for f in poses if f < length) if cfg.hand_object else list(range(length))
            if frames:
                plans.append(_SequencePlan(ref, len(plans), skeleton, frames, poses))
        return plans

    def _object_poses(self, root, ref: layout.SequenceRef) -> Dict[int, np.ndarray]:
        path = layout.object_pose_path(root, ref.subject, ref.action, ref.seq)
        if layout.object_name(ref.action) not in layout.HO_OBJECTS or not path.is_file():
            return {}
        return layout.read_object_poses(path)

    def _check_images(self, root, plans: Dict[str, List[_SequencePlan]], missing: List[str]) -> None:
        """Every missing skeleton file and colour frame in ONE error (with skip_corrupt the
        missing frames are skipped and reported instead)."""
        for split, split_plans in plans.items():
            for plan in split_plans:
                lost = layout.missing_frames(root, plan.ref, plan.frames, self._from_reduced)
                if lost and self.policy.skip:
                    for frame, rel in lost:
                        self.policy.handle(CorruptFileError(os.path.join(os.fspath(root), rel), "image file missing"),
                                           split=split, sample_id=_sample_id(plan.ref, frame))
                    gone = {frame for frame, _ in lost}
                    plan.frames = [f for f in plan.frames if f not in gone]
                missing += [rel for _, rel in lost]
            split_plans[:] = [p for p in split_plans if p.frames]
        if missing and not (self.policy.skip and all(m.startswith("Video_files") for m in missing)):
            listed = "\n".join(f"  {m}" for m in missing[:200])
            more = f"\n  ... and {len(missing) - 200} more" if len(missing) > 200 else ""
            raise ManualDirError(f"{NAME}: {len(missing)} annotation / colour frame file(s) missing under {root}:\n"
                                 f"{listed}{more}\n\n"
                                 f"{layout.INSTRUCTIONS}", missing)

    # ------------------------------------------------------------------ generation
    def _generate_examples(self, root, split: str, plans: List[_SequencePlan]) -> Iterator[Tuple[int, Dict]]:
        total = sum(len(p.frames) for p in plans)
        position, with_fits = 0, 0
        K = layout.intrinsics(self.builder_config.reduced)
        for plan in plans:
            fits = self._fits(root, split, plan.ref)
            with_fits += bool(fits)
            for frame in plan.frames:
                check_preemption(f"building {NAME}/{self.builder_config.name}")
                try:
                    example = self._example(root, plan, frame, K, fits)
                except CorruptFileError as err:
                    self.policy.handle(err, split=split, sample_id=_sample_id(plan.ref, frame))
                    position += 1
                    continue
                yield record_key(position, total), example
                position += 1
        self.info.metadata["mano_fits_sequences"][split] = with_fits
        self.info.metadata["skipped"][split] = self.policy.split_records(split)  # incl. planning-time skips
        if self.info.metadata["skipped"][split]:
            print(self.policy.split_report(split), file=sys.stderr)

    def _fits(self, root, split: str, ref: layout.SequenceRef) -> Dict[int, Dict[str, np.ndarray]]:
        path = layout.optional_fits(root, ref)
        if path is None:
            return {}
        try:
            return layout.read_fits(path)
        except CorruptFileError as err:  # the sequence's MANO fits (its frames are kept, without fits)
            self.policy.handle(err, split=split, sample_id=f"{ref.subject}/{ref.action}/{ref.seq} (MANO fits)")
            return {}

    def _image(self, root, ref: layout.SequenceRef, frame: int) -> bytes:
        cfg = self.builder_config
        path = layout.image_path(root, ref.subject, ref.action, ref.seq, frame, cfg.reduced and self._from_reduced)
        image = read_image(path)
        source_size = layout.REDUCED_SIZE if self._from_reduced else layout.FULL_SIZE
        if image.format != "jpeg" or image.shape[:2] != source_size:
            raise CorruptFileError(path, f"expected a {source_size[1]}x{source_size[0]} JPEG, got a "
                                         f"{image.shape[1]}x{image.shape[0]} {image.format}")
        if cfg.reduced and not self._from_reduced:
            return layout.reduce_image(path)
        return image.data

    def _example(self, root, plan: _SequencePlan, frame: int, K: np.ndarray, fits) -> Dict:
        ref = plan.ref
        joints3d = layout.skeleton_to_camera(plan.skeleton[frame])
        fit = fits.get(frame)
        pose = plan.object_poses.get(frame)
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        return {
            "image": self._image(root, ref, frame),
            "K": f32(K),
            "joints3d": f32(joints3d),
            "joints2d": f32(layout.project(joints3d, K)),
            "is_right": True,
            "mano": ({"pose": fit["pose"], "betas": fit["betas"], "transl": fit["transl"], "valid": True} if fit else
                     {"pose": np.zeros(48, np.float32), "betas": np.zeros(10, np.float32),
                      "transl": np.zeros(3, np.float32), "valid": False}),
            "object": {"name": layout.object_name(ref.action) if pose is not None else "",
                       "pose": f32(layout.object_to_camera(pose) if pose is not None else np.eye(4)),
                       "valid": pose is not None},
            "subject": ref.subject,
            "action": ref.action,
            "sequence": ref.seq,
            "action_label": ref.label,
            "frame_index": frame,
            "sequence_id": plan.sequence_id,
        }


def get_builder(config: str = "hand_object_480", data_dir: Optional[str] = None, **kwargs) -> Builder:
    """The builder of a config name (kwargs: skip_corrupt)."""
    return get_named_builder(Builder, config, data_dir, **kwargs)


def ensure_built(config: str = "hand_object_480", data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 **kwargs) -> str:
    """The builder directory ``<data_dir>/fphab/<config>/1.0.0``, built from ``manual_dir`` if
    missing (FileNotFoundError with the download instructions when neither exists); kwargs: skip_corrupt."""
    return ensure_prepared(get_builder(config, data_dir, **kwargs), manual_dir, layout.INSTRUCTIONS)
