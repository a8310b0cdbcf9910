"""tfds builder ``dexycb``: DexYCB hand pose frames from the manual download (no TensorFlow).

One record per (sequence, camera, frame) WITH a hand annotation, in the dex-ycb-toolkit
order; configs ``s0``..``s3`` are the toolkit's setups (seen / unseen subjects / unseen
views / unseen objects), splits train / val / test. Derived configs restrict the build
to the first N sequences of each subject and/or some cameras (:func:`make_config`).
Conventions: :mod:`data_pipelines.dexycb.layout` (camera frame, metres, manopth joint
order, PCA MANO pose with the mean hand, no left shapedirs fix).

Features:

================  ==================  ====================================================
image             (H, W, 3) uint8     the original JPEG bytes (480 x 640 in DexYCB)
seg               (H, W, 1) uint8     PNG; 0 background, 1..21 YCB object, 255 hand
K                 (3, 3) float32      colour intrinsics of the camera
joints3d          (21, 3) float32     camera frame, metres, manopth order (wrist first)
joints2d          (21, 2) float32     pixels (``joint_2d`` as stored)
mano_pose_pca     (48,) float32       global axis-angle (3) + 45 PCA coefficients,
                                      flat_hand_mean=False (metadata ``mano``)
mano_transl       (3,) float32        translation added to the MANO output, metres
betas             (10,) float32       subject's mano.yml betas
is_right          () bool             meta.yml mano_sides[0] == 'right'
object_poses      (O, 3, 4) float32   ``pose_y``: [R | t] per YCB object of the sequence
ycb_ids           (O,) int64          YCB class ids of the objects (meta.yml)
ycb_grasp_ind     () int64            index (into ycb_ids) of the grasped object
subject, sequence, serial  Text       ids of the sample
frame_index       () int64            frame within the sequence
sequence_id       () int64            (sequence, camera) id within the split
toolkit_index     () int64            index in the toolkit's DexYCBDataset(setup, split)
                                      (the image id of its HPE result files)
================  ==================  ====================================================
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

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
    encode_png,
    ensure_prepared,
    read_image,
    record_key,
)

from . import layout

NAME = "dexycb"
VERSION = "1.0.0"


@dataclasses.dataclass
class DexYCBConfig(tfds.core.BuilderConfig):
    """A toolkit setup, optionally restricted to the first ``sequences_per_subject`` sequences
    of every subject and to some camera ``serials`` (empty = the split's cameras)."""

    setup: str = "s0"
    sequences_per_subject: int = layout.SEQUENCES_PER_SUBJECT
    serials: Tuple[str, ...] = ()


BASE_CONFIGS = {
    s: DexYCBConfig(name=s, description=desc, setup=s)
    for s, desc in (("s0", "seen subjects, views and objects"), ("s1", "unseen subjects"),
                    ("s2", "unseen camera views"), ("s3", "unseen grasped objects"))
}


def make_config(setup: str = "s0", sequences_per_subject: Optional[int] = None,
                serials: Optional[Sequence[str]] = None) -> DexYCBConfig:
    """A base setup, or a derived debug subset named e.g. ``s1_seq2_cam836212060125``."""
    if setup not in BASE_CONFIGS:
        raise ValueError(f"unknown {NAME} setup {setup!r}; known: {sorted(BASE_CONFIGS)}")
    cfg = BASE_CONFIGS[setup]
    n = cfg.sequences_per_subject if sequences_per_subject is None else int(sequences_per_subject)
    if not 1 <= n <= layout.SEQUENCES_PER_SUBJECT:
        raise ValueError(f"sequences_per_subject must lie in [1, {layout.SEQUENCES_PER_SUBJECT}], got {n}")
    cams = tuple(sorted(serials or ()))
    unknown = sorted(set(cams) - set(layout.SERIALS))
    if unknown:
        raise ValueError(f"unknown DexYCB camera serial(s) {unknown}; known: {list(layout.SERIALS)}")
    if n == cfg.sequences_per_subject and not cams:
        return cfg
    name = setup + (f"_seq{n}" if n != cfg.sequences_per_subject else "") + "".join(f"_cam{c}" for c in cams)
    return dataclasses.replace(cfg, name=name, description=f"{setup} restricted to {n} sequences per subject"
                               f"{', cameras ' + ', '.join(cams) if cams else ''}",
                               sequences_per_subject=n, serials=cams)


def _features() -> tfds.features.FeaturesDict:
    f32, tensor = np.float32, tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "seg": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "K": tensor(shape=(3, 3), dtype=f32),
        "joints3d": tensor(shape=(21, 3), dtype=f32),
        "joints2d": tensor(shape=(21, 2), dtype=f32),
        "mano_pose_pca": tensor(shape=(48,), dtype=f32),
        "mano_transl": tensor(shape=(3,), dtype=f32),
        "betas": tensor(shape=(10,), dtype=f32),
        "is_right": tensor(shape=(), dtype=np.bool_),
        "object_poses": tensor(shape=(None, 3, 4), dtype=f32),
        "ycb_ids": tensor(shape=(None,), dtype=np.int64),
        "ycb_grasp_ind": tensor(shape=(), dtype=np.int64),
        "subject": tfds.features.Text(),
        "sequence": tfds.features.Text(),
        "serial": tfds.features.Text(),
        "frame_index": tensor(shape=(), dtype=np.int64),
        "sequence_id": tensor(shape=(), dtype=np.int64),
        "toolkit_index": tensor(shape=(), dtype=np.int64),
    })


class Builder(tfds.core.GeneratorBasedBuilder):
    """DexYCB (manual download) as ArrayRecord. ``skip_corrupt``: skip and report samples
    whose image or label file is corrupt instead of stopping."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = list(BASE_CONFIGS.values())
    DEFAULT_CONFIG_NAME = "s0"
    MANUAL_DOWNLOAD_INSTRUCTIONS = layout.INSTRUCTIONS
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, file_format=None, skip_corrupt: bool = False, **kwargs):
        self.policy = CorruptPolicy(skip_corrupt, NAME)
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        metadata = tfds.core.MetadataDict(
            config={"setup": cfg.setup, "sequences_per_subject": cfg.sequences_per_subject,
                    "serials": list(cfg.serials)},
            mano=dict(layout.MANO_FLAGS))
        return self.dataset_info_from_configs(description=__doc__, features=_features(), disable_shuffling=True,
                                              metadata=metadata, homepage=layout.DOWNLOAD_PAGE)

    def _serial_filter(self) -> Optional[Tuple[str, ...]]:
        return tuple(self.builder_config.serials) or None

    def check_manual_dir(self, manual_dir) -> Path:
        """Subject folders and camera intrinsics of every split (all missing ones in one error)."""
        cfg = self.builder_config
        subjects, serials = set(), set()
        for split in layout.SPLITS:
            subj, ser, _ = layout.split_indices(cfg.setup, split, cfg.sequences_per_subject)
            subjects.update(subj)
            serials.update(i for i in ser if not cfg.serials or layout.SERIALS[i] in cfg.serials)
        return check_manual_dir(manual_dir, layout.top_level_entries(sorted(subjects), sorted(serials)),
                                dataset=f"{NAME}/{cfg.name}", instructions=layout.INSTRUCTIONS)

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(dl_manager.manual_dir)
        cfg = self.builder_config
        plans, missing = {}, []
        for split in layout.SPLITS:
            samples, lost = layout.plan_split(root, cfg.setup, split, cfg.sequences_per_subject, self._serial_filter())
            missing += lost
            if samples:
                plans[split] = samples
        if missing:
            listed = "\n".join(f"  {m}" for m in missing[:200])
            more = f"\n  ... and {len(missing) - 200} more" if len(missing) > 200 else ""
            raise ManualDirError(f"{NAME}/{cfg.name}: {len(missing)} required file(s)/folder(s) missing under "
                                 f"{root}:\n{listed}{more}\n\n{layout.INSTRUCTIONS}", missing)
        self.info.metadata["skipped"], self.info.metadata["no_hand"] = {}, {}
        intrinsics = {s: layout.read_intrinsics(root, s) for s in {x.serial for v in plans.values() for x in v}}
        return {split: self._generate_examples(root, split, samples, intrinsics) for split, samples in plans.items()}

    def _generate_examples(self, root, split: str, samples: List[layout.Sample], intrinsics: Dict[str, np.ndarray]
                           ) -> Iterator[Tuple[int, Dict]]:
        no_hand = 0
        for position, sample in enumerate(samples):
            check_preemption(f"building {NAME}/{self.builder_config.name}")
            try:
                example = self._example(root, sample, intrinsics[sample.serial])
            except CorruptFileError as err:
                self.policy.handle(err, split=split, sample_id=f"{sample.meta.subject}/{sample.meta.name}/"
                                                              f"{sample.serial}/{sample.frame}")
                continue
            if example is None:
                no_hand += 1
                continue
            yield record_key(position, len(samples)), example
        self.info.metadata["no_hand"][split] = no_hand
        self.info.metadata["skipped"][split] = self.policy.split_records(split)
        if self.info.metadata["skipped"][split]:
            print(self.policy.split_report(split), file=sys.stderr)

    @staticmethod
    def _example(root, sample: layout.Sample, K: np.ndarray) -> Optional[Dict]:
        meta = sample.meta
        seq_dir = os.path.join(os.fspath(root), meta.subject, meta.name)
        labels = layout.read_labels(layout.label_path(seq_dir, sample.serial, sample.frame))
        if not layout.has_hand(labels):
            return None
        image_path = layout.color_path(seq_dir, sample.serial, sample.frame)
        image = read_image(image_path)
        if image.format != "jpeg" or image.shape[:2] != labels["seg"].shape:
            raise CorruptFileError(image_path, f"expected a JPEG of the label's size {labels['seg'].shape}, got "
                                               f"a {image.format} of {image.shape[:2]}")
        if labels["pose_y"].shape[0] != len(meta.ycb_ids):
            raise CorruptFileError(layout.label_path(seq_dir, sample.serial, sample.frame),
                                   f"pose_y has {labels['pose_y'].shape[0]} objects, meta.yml lists "
                                   f"{len(meta.ycb_ids)} ycb_ids")
        return {
            "image": image.data,
            "seg": encode_png(labels["seg"]),
            "K": K.astype(np.float32),
            "joints3d": labels["joint_3d"],
            "joints2d": labels["joint_2d"],
            "mano_pose_pca": labels["pose_m"][:48],
            "mano_transl": labels["pose_m"][48:51],
            "betas": meta.betas,
            "is_right": meta.is_right,
            "object_poses": labels["pose_y"],
            "ycb_ids": np.asarray(meta.ycb_ids, np.int64),
            "ycb_grasp_ind": meta.ycb_grasp_ind,
            "subject": meta.subject,
            "sequence": meta.name,
            "serial": sample.serial,
            "frame_index": sample.frame,
            "sequence_id": sample.sequence_id,
            "toolkit_index": sample.toolkit_index,
        }


def get_builder(setup: str = "s0", data_dir: Optional[str] = None, *, sequences_per_subject: Optional[int] = None,
                serials: Optional[Sequence[str]] = None, skip_corrupt: bool = False) -> Builder:
    """The builder of a setup (plus optional debug restrictions, see :func:`make_config`)."""
    config = make_config(setup, sequences_per_subject, serials)
    return Builder(config=config, data_dir=data_dir or default_data_dir(), skip_corrupt=skip_corrupt)


def mano_rotmats(model, mano_pose_pca):
    """Local rotations (..., 16, 3, 3) of a stored ``mano_pose_pca`` with ``model``'s PCA basis
    and mean hand (manopth ``use_pca=True, ncomps=45, flat_hand_mean=False``)."""
    from handjax.mano import from_pca

    return from_pca(model, mano_pose_pca[..., :3], mano_pose_pca[..., 3:], flat_hand_mean=False)


def ensure_built(config: str = "s0", data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 **kwargs) -> str:
    """The builder directory ``<data_dir>/dexycb/<config>/1.0.0``, built from ``manual_dir`` if
    missing (FileNotFoundError with the download instructions when neither exists);
    kwargs: sequences_per_subject, serials, skip_corrupt."""
    return ensure_prepared(get_builder(config, data_dir, **kwargs), manual_dir, layout.INSTRUCTIONS)
