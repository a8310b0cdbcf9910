"""tfds builder of FreiHAND (v2 training set + evaluation set with its public annotations).

No TensorFlow needed: build with ``python -m data_pipelines.freihand.build --manual_dir RAW
--data_dir OUT`` (or :func:`ensure_built`), read with ``tfds.builder_from_directory(dir)
.as_data_source(split)`` or :func:`data_pipelines.pipeline.make_dataset` (frame mode).

Splits and record order (``disable_shuffling``: record r is the r-th sample generated):

* ``train``: the 32,560 annotated samples x image versions ``gs``, ``hom``, ``sample``,
  ``auto`` (config ``default``; config ``gs``: green-screen images only). Record order is
  image-id order: version-major, i.e. record = image id = idx + 32,560 * version_index
  (for the ``default`` config). Image ``training/rgb/%08d.jpg`` % image id; all versions of
  one idx share its annotations and ``training/mask/%08d.jpg`` % idx.
* ``evaluation``: the 3,960 evaluation images ``evaluation/rgb/%08d.jpg`` in index order
  (the order of ``evaluation_*.json``, which FreiHAND's scorer expects).

Conventions (converted in ONE place, :func:`sample_labels`): FreiHAND's annotations already
are in metres in the OpenCV camera frame (x right, y down, z forward); joints are in
FreiHAND order = handjax convention ``"freihand"``; vertices in MANO vertex order.
``mano_pose`` is stored exactly as FreiHAND gives it: the 45 finger values are RELATIVE to
MANO's ``hands_mean`` (MANO with ``flat_hand_mean=False``); ``mano_pose_relative`` says so
(always True here). Add ``hands_mean`` of your MANO_RIGHT model to get absolute rotations
(``data_pipelines.pipeline.FrameSource(hand_mean=...)`` does it).

Features (H, W = image size, 224 in the real data):

==================  =====================  ================================================
image               (H, W, 3) uint8        the original JPEG bytes (not re-encoded)
mask                (H, W, 1) uint8        PNG, 255 on the hand: FreiHAND's JPEG mask
                                           thresholded at grey level 128 (train); all zero
                                           in ``evaluation`` (no masks), see ``has_mask``
K                   (3, 3) float32         intrinsics (``*_K.json``)
joints3d            (21, 3) float32        metres, camera frame, ``freihand`` order
joints2d            (21, 2) float32        pixels = project(joints3d, K) (pixel centres)
vertices            (778, 3) float32       metres, camera frame (``*_verts.json``)
mano_pose           (48,) float32          axis-angle, 0:3 global (camera frame), 3:48
                                           fingers relative to the MANO hand mean
mano_pose_relative  () bool                True: add hands_mean to 3:48 for absolute poses
betas               (10,) float32          MANO shape (mano params 48:58)
uv_root             (2,) float32           root joint in pixels (mano params 58:60)
mano_scale          () float32             FreiHAND's fit scale (mano param 60)
scale               () float32             metric length of FreiHAND's reference bone
                                           (``*_scale.json``), metres
sample_index        () int64               idx into the ``*_*.json`` lists
image_id            () int64               number of the image file
version             () int64               0 gs, 1 hom, 2 sample, 3 auto (0 in evaluation)
eval_index          () int64               position in the official order (= sample_index)
is_right            () bool                always True
has_mask            () bool                a mask exists for this sample
==================  =====================  ================================================

Building parses the annotation json files whole (``training_verts.json`` is about 1 GB of
text): expect a few GB of memory while a split's files are read; the lists are then kept as
compact float32 arrays.

Labels are complete in both splits (the evaluation GT is public), so no ``has_joints3d``
etc. flags are needed. The record layout (``sequence_id`` = record, ``frame_index`` 0:
FreiHAND has no videos) is stored in ``info.metadata['index'][split]``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import manual
from data_pipelines.manual import default_data_dir  # re-exported by the package
from handjax.distributed import check_preemption

NAME = "freihand"
VERSION = "1.0.0"
SPLITS = ("train", "evaluation")
VERSIONS = ("gs", "hom", "sample", "auto")
NUM_TRAIN = 32560  # samples of the official download (ids of version v start at v * NUM_TRAIN)
NUM_EVAL = 3960
JSON_KINDS = ("K", "mano", "xyz", "verts", "scale")
HOMEPAGE = "https://lmb.informatik.uni-freiburg.de/resources/datasets/FreihandDataset.en.html"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
FreiHAND needs a manual download (registration-free, academic licence):
{HOMEPAGE}
Download FreiHAND_pub_v2.zip (training set) and FreiHAND_pub_v2_eval.zip (evaluation set
with its annotations) and unzip both into ONE folder; pass that folder as --manual_dir:

  <manual_dir>/
    training_K.json training_mano.json training_xyz.json training_verts.json training_scale.json
    training/rgb/00000000.jpg ... 00130239.jpg   (32,560 samples x 4 versions gs/hom/sample/auto)
    training/mask/00000000.jpg ... 00032559.jpg
    evaluation_K.json evaluation_mano.json evaluation_xyz.json evaluation_verts.json evaluation_scale.json
    evaluation/rgb/00000000.jpg ... 00003959.jpg

Then: python -m data_pipelines.freihand.build --manual_dir <manual_dir> --data_dir <tfds data dir>
"""


@dataclasses.dataclass
class FreihandConfig(tfds.core.BuilderConfig):
    """Which training image versions to include (indices into VERSIONS)."""

    versions: Tuple[int, ...] = (0, 1, 2, 3)


BASE_CONFIGS = {
    "default": FreihandConfig(name="default", description="All four training image versions (130,240 records).",
                              versions=(0, 1, 2, 3)),
    "gs": FreihandConfig(name="gs", description="Green-screen training images only (32,560 records).",
                         versions=(0,)),
}


# ----------------------------------------------------------------------------- layout
def json_name(split: str, kind: str) -> str:
    """``training_xyz.json`` etc. for split 'train' / 'evaluation'."""
    return f"{'training' if split == 'train' else 'evaluation'}_{kind}.json"


def image_path(split: str, image_id: int) -> str:
    return f"{'training' if split == 'train' else 'evaluation'}/rgb/{image_id:08d}.jpg"


def mask_path(idx: int) -> str:
    return f"training/mask/{idx:08d}.jpg"


def image_id(idx: int, version: int, num_train: int = NUM_TRAIN) -> int:
    """FreiHAND's image number of sample ``idx`` in version ``version``."""
    return idx + num_train * version


def _count(root: Path, split: str, default: int) -> int:
    """Number of samples of a split from its (small) K json, or the official count."""
    path = root / json_name(split, "K")
    if not path.is_file():
        return default
    return len(manual.load_json(path))


def required_files(root: Path, versions: Sequence[int]) -> List[str]:
    """Every file/folder the build reads (annotation counts from the K json files when present)."""
    req = [json_name(s, k) for s in SPLITS for k in JSON_KINDS]
    req += ["training/rgb/", "training/mask/", "evaluation/rgb/"]
    n_train, n_eval = _count(root, "train", NUM_TRAIN), _count(root, "evaluation", NUM_EVAL)
    req += [image_path("train", image_id(i, v, n_train)) for v in versions for i in range(n_train)]
    req += [mask_path(i) for i in range(n_train)]
    req += [image_path("evaluation", i) for i in range(n_eval)]
    return req


# ----------------------------------------------------------------------------- labels
def split_mano(theta: np.ndarray) -> Dict[str, np.ndarray]:
    """FreiHAND's 61 MANO values -> pose (48), betas (10), uv_root (2), mano_scale ()
    (the official toolbox's ``split_theta``)."""
    theta = np.asarray(theta, np.float32).reshape(61)
    return {"mano_pose": theta[:48], "betas": theta[48:58], "uv_root": theta[58:60], "mano_scale": theta[60]}


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection (N, 3) camera frame -> (N, 2) pixels, float64 internally."""
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return (p[:, :2] / p[:, 2:3]).astype(np.float32)


class Annotations:
    """The ``<split>_*.json`` lists of one split, checked per sample on access.

    Each list is kept as one float32 array when it is regular (the normal case: the list
    objects of ``training_verts.json`` alone would take several GB), else as the parsed list
    so that the irregular entries can be named per sample.
    """

    SHAPES = {"K": (3, 3), "xyz": (21, 3), "verts": (778, 3), "scale": ()}

    def __init__(self, root: Path, split: str):
        self.root, self.split = root, split
        self.lists = {kind: self._compact(kind, manual.load_json(root / json_name(split, kind))) for kind in JSON_KINDS}
        lengths = {kind: len(v) if isinstance(v, (list, np.ndarray)) else -1 for kind, v in self.lists.items()}
        if len(set(lengths.values())) != 1 or -1 in lengths.values():
            raise manual.CorruptFileError(root / json_name(split, "K"),
                                          f"the {split} annotation lists must be lists of equal length, got "
                                          f"{ {json_name(split, k): n for k, n in lengths.items()} }")
        self.size = lengths["K"]

    def _compact(self, kind: str, value):
        if not isinstance(value, list) or kind not in self.SHAPES:
            return value
        try:
            arr = np.asarray(value, np.float32)
        except (TypeError, ValueError):
            return value
        return arr if arr.shape[1:] == self.SHAPES[kind] else value

    def __len__(self) -> int:
        return self.size

    def get(self, kind: str, idx: int, shape: Sequence[int]) -> np.ndarray:
        path = self.root / json_name(self.split, kind)
        return manual.as_array(self.lists[kind][idx], shape, path=path, key=f"[{idx}]")

    def get_mano(self, idx: int) -> np.ndarray:
        """The 61 MANO values of a sample, stored as (61,) or (1, 61)."""
        raw = self.lists["mano"][idx]
        nested = isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], list)
        return self.get("mano", idx, (1, 61) if nested else (61,)).reshape(61)


def sample_labels(ann: Annotations, idx: int) -> Dict[str, np.ndarray]:
    """All labels of sample ``idx`` in handjax conventions (the ONE conversion place:
    FreiHAND is already metric / OpenCV / ``freihand`` joint order, so values are only
    checked, split and projected)."""
    K = ann.get("K", idx, (3, 3))
    joints3d = ann.get("xyz", idx, (21, 3))
    labels = {
        "K": K,
        "joints3d": joints3d,
        "joints2d": project(joints3d, K),
        "vertices": ann.get("verts", idx, (778, 3)),
        "scale": ann.get("scale", idx, ()),
        "mano_pose_relative": True,
    }
    labels.update(split_mano(ann.get_mano(idx)))
    return labels


# ----------------------------------------------------------------------------- images
def read_mask(path: Path) -> bytes:
    """FreiHAND's JPEG mask -> binary PNG (255 on the hand, grey level >= 128)."""
    image = manual.read_image(path)
    grey = manual.decode_image(image.data, "L")
    return manual.encode_png(np.where(grey >= 128, 255, 0).astype(np.uint8))


def _features() -> tfds.features.FeaturesDict:
    f32, tensor = np.float32, tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "K": tensor(shape=(3, 3), dtype=f32),
        "joints3d": tensor(shape=(21, 3), dtype=f32),
        "joints2d": tensor(shape=(21, 2), dtype=f32),
        "vertices": tensor(shape=(778, 3), dtype=f32),
        "mano_pose": tensor(shape=(48,), dtype=f32),
        "mano_pose_relative": tensor(shape=(), dtype=np.bool_),
        "betas": tensor(shape=(10,), dtype=f32),
        "uv_root": tensor(shape=(2,), dtype=f32),
        "mano_scale": tensor(shape=(), dtype=f32),
        "scale": tensor(shape=(), dtype=f32),
        "sample_index": tensor(shape=(), dtype=np.int64),
        "image_id": tensor(shape=(), dtype=np.int64),
        "version": tensor(shape=(), dtype=np.int64),
        "eval_index": tensor(shape=(), dtype=np.int64),
        "is_right": tensor(shape=(), dtype=np.bool_),
        "has_mask": tensor(shape=(), dtype=np.bool_),
    })


class Builder(tfds.core.GeneratorBasedBuilder):
    """FreiHAND from the manual download; see the module docstring."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "Training (4 versions) + evaluation with public ground truth."}
    BUILDER_CONFIGS = list(BASE_CONFIGS.values())
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, file_format=None, skip_corrupt: bool = False, **kwargs):
        self.policy = manual.CorruptPolicy(skip_corrupt, NAME)
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        metadata = tfds.core.MetadataDict(versions=[VERSIONS[v] for v in self.builder_config.versions], index={},
                                          skipped={})
        return self.dataset_info_from_configs(description=__doc__, features=_features(), homepage=HOMEPAGE,
                                              disable_shuffling=True, metadata=metadata)

    def check_manual_dir(self, manual_dir) -> Path:
        root = Path(manual_dir).expanduser() if manual_dir else None
        required = required_files(root, self.builder_config.versions) if root and root.is_dir() else []
        return manual.check_manual_dir(manual_dir, required, dataset=NAME, instructions=MANUAL_DOWNLOAD_INSTRUCTIONS)

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(dl_manager.manual_dir)
        return {split: self._generate_examples(root, split) for split in SPLITS}

    def _candidates(self, split: str, n: int) -> List[Tuple[int, int]]:
        """(idx, version) of every sample of a split in record order."""
        if split == "evaluation":
            return [(i, 0) for i in range(n)]
        return [(i, v) for v in self.builder_config.versions for i in range(n)]

    def _generate_examples(self, root: Path, split: str) -> Iterator[Tuple[int, Dict]]:
        ann = Annotations(root, split)
        n_train = len(ann)  # image ids of the training versions are idx + n_train * version
        candidates = self._candidates(split, len(ann))
        records: List[int] = []
        masks: Dict[int, bytes] = {}
        for position, (idx, version) in enumerate(candidates):
            check_preemption(f"building {NAME}/{self.builder_config.name}")
            try:
                example = self._example(root, split, ann, idx, version, n_train, masks)
            except manual.CorruptFileError as err:
                img_id = image_id(idx, version, n_train) if split == "train" else idx
                sample = f"{idx} (version {VERSIONS[version]}, image {img_id:08d})" if split == "train" else idx
                self.policy.handle(err, split=split, sample_id=sample)
                continue
            records.append(int(example["image_id"]))
            yield manual.record_key(position, len(candidates)), example
        self.info.metadata["index"][split] = {"sequence_id": records, "frame_index": [0] * len(records),
                                              "annotated": [True] * len(records)}
        self.info.metadata["skipped"][split] = self.policy.split_records(split)  # this split's skips only

    def _example(self, root: Path, split: str, ann: Annotations, idx: int, version: int, n_train: int,
                 masks: Dict[int, bytes]) -> Dict:
        labels = sample_labels(ann, idx)
        img_id = image_id(idx, version, n_train) if split == "train" else idx
        image = manual.read_image(root / image_path(split, img_id))
        if image.shape[2] != 3:
            raise manual.CorruptFileError(root / image_path(split, img_id),
                                          f"expected an RGB image, got {image.shape[2]} channel(s)")
        if split == "train":
            if idx not in masks:
                masks.clear()  # versions are generated version-major: keep one mask at a time
                masks[idx] = read_mask(root / mask_path(idx))
            mask, has_mask = masks[idx], True
        else:
            mask, has_mask = manual.encode_png(np.zeros(image.shape[:2], np.uint8)), False
        return dict(labels, image=image.data, mask=mask, sample_index=idx, image_id=img_id, version=version,
                    eval_index=idx, is_right=True, has_mask=has_mask)


# ----------------------------------------------------------------------------- entry points
def get_builder(config: str = "default", data_dir: Optional[str] = None, skip_corrupt: bool = False) -> Builder:
    """The builder of a config name under ``data_dir`` (default :func:`default_data_dir`)."""
    return manual.get_named_builder(Builder, config, data_dir, skip_corrupt=skip_corrupt)


def ensure_built(config: str = "default", data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 skip_corrupt: bool = False) -> str:
    """The builder directory ``<data_dir>/freihand/<config>/1.0.0``, built from ``manual_dir`` if
    missing (FileNotFoundError with the download instructions when neither exists)."""
    return manual.ensure_prepared(get_builder(config, data_dir, skip_corrupt), manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
