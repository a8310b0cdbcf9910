"""Turn a config's ``data`` section into iterator factories for the training recipes.

    data = make_data_factory(cfg.data, seed=cfg.seed)
    it = data(split="train", mode="window", batch_size=32, train=True, k=3, window=4)

``data(split, mode, batch_size, train, seed=..., **sampling)``:

* ``train=True``: an infinite, shuffled, augmented, checkpointable grain iterator of
  process-local batches (per-process batch = global batch / process count);
* ``train=False``: one pass over the split in order, without augmentation and never
  flipped (:func:`eval_flip`: single-hand left hands are still mirrored into right ones
  when ``augment.flip`` is 'left_to_right'; two-hand samples, whose flip swaps the hands,
  never), the last batch padded by repeating its last sample and marked with ``valid`` (B,)
  bool.

Datasets: :data:`DATASETS` (name -> :class:`Dataset` descriptor), selected with ``data.name``.
Adding a dataset is ONE entry there::

    "my_data": Dataset(
        module="data_pipelines.my_data",   # package with ensure_built(config, data_dir[, manual_dir], **kw)
        default_config="default",          # data.builder_config when it is empty
        joint_convention="freihand",       # joint ORDER of its joints (handjax.mano.CONVENTIONS name)
        labels=("joints2d", "joints3d", "vertices", "mano", "transl", "mask"),  # label kinds it carries
        video=True,                        # sequences usable by window / pair modes
        hands=1,                           # 1: single-hand samples, 2: two-hand samples (42 joints)
        manual=False,                      # False: built-in (generated); True: built from data.manual_dir
        eval_crop=dict(crop_from="bbox", bbox_pad=2.0),   # evaluation crop (default: augment's crop)
        # optional: config_aliases, build_kwargs(data_cfg) -> dict, adapter(data_cfg) -> RecordAdapter,
        # relative_pose (finger poses relative to MANO's mean), subset_keys (features data.subset_file matches)
    ),

Label kinds (``labels``; the batch carries ``has_<kind>`` flags where a kind may be absent):
joints2d, joints3d, vertices, mano (mano_pose + betas), transl, mask, part_seg, bbox, object,
subject_id.

Two-hand datasets' other keys follow flips and crops too (a key that could not be kept
consistent would be dropped by its adapter, with the reason in its docstring): InterHand2.6M's
world-frame fits ``mano_pose_world`` / ``mano_transl_world`` / ``mano_root_j0`` (2, ...) and
extrinsics ``cam_R`` / ``cam_t`` (flips mirror the world with the camera; crops turn the
extrinsics into the crop camera's), RootNet's ``rootnet_depth`` (2,) and ``rootnet_bbox``
(moved like ``bbox``); COCO-WholeBody's per-hand NeuralAnnot cameras as ``hand_K`` (2, 3, 3)
crop intrinsics (its ``transl`` stays flagged absent: see :class:`CocoWholeBodyAdapter`). The
rules: :func:`data_pipelines.transforms.mirror_two_hand_frame` / ``transform_two_hand_frame``.

Config keys of ``data`` (besides name):

* ``builder_config``, ``data_dir`` (tfds data dir; ``$TFDS_DATA_DIR``), ``manual_dir`` (raw
  download of a real dataset, built into ``data_dir`` when not built yet), ``mano_model`` (MANO
  file or folder: FreiHAND's / InterHand2.6M's / COCO-WholeBody's (NeuralAnnot) relative finger
  poses become absolute with its ``hands_mean`` (without it their ``has_mano`` is False: the
  built-in hand never stands in for the real MANO mean), DexYCB's PCA poses need its
  ``hands_components``; HO3D / InterHand2.6M / HIC (joints from the meshes) use it at build time),
  ``image_size``, ``augment``, ``num_workers``, ``eval_crop`` (dict of
  ``crop_from`` / ``bbox_pad``, overrides the descriptor's), ``joint_convention`` (the joint
  order of the batches: the dataset's joints are re-ordered by joint name into it; empty = the
  dataset's own order), ``crop`` (two-hand datasets: 'hands' square crop around both hands,
  the default, or 'person' 4:3 person crop: COCO-WholeBody's is InterWild's person box, the
  others' the whole frame), ``skip_corrupt`` (COCO-WholeBody / HIC builds: skip and report
  corrupt or missing samples);
* ``sampling.<mode>``: per-mode defaults of the sampling parameters (below), overridden by the
  caller's keyword arguments; ``sampling.fraction`` / ``sampling.fraction_seed``: every mode's. The legacy keys ``window`` / ``extra_negatives`` are window mode's
  ``window`` / ``num_negatives`` defaults;
* ``train_fraction`` (default 1: off) / ``val_seed``: split the stored ``train`` split into
  ``train`` and a held-out ``val`` split by the descriptor's ``holdout`` rule
  (:func:`holdout_records`; TempCLR: 0.8 = FreiHAND's first 80 % of the samples, HO3D's seeded
  random 80 % of every sequence's frames);
* ``subset_file``: a text file of allowed record ids (integers matched against the descriptor's
  ``subset_keys`` integer feature, e.g. InterHand2.6M's ``annot_id`` for InterWild's
  ``aid_human_annot_{train,test}.txt``) or paths (matched against its text feature, e.g.
  ``file_name``), one per line; ``{split}`` in the path is replaced by the split name, or give a
  dict split -> file. Ids that are not in the split are an error listing them;
* ``mixture``: ``[(name, weight), ...]`` or ``[dict(name=..., weight=..., <data keys>), ...]``:
  training iterators mix these datasets by weight (:func:`mix_datasets`); each entry inherits
  the other ``data`` keys. ``data.name`` (optional with a mixture) names the evaluation dataset.

Sampling modes and their parameters (:data:`SAMPLING`; unknown ones are an error naming the
parameter and the mode):

* ``frame``: ``annotated_only``;
* ``window``: ``k`` (frames within the window, anchor included), ``window`` (max |dt|),
  ``num_negatives`` (same-sequence frames outside the window);
* ``pair`` (alias ``sparse_pair``): a query frame + the nearest annotated frame of its sequence;
  ``max_distance`` (queries farther from an annotated frame are not sampled; None = no limit),
  ``unannotated_only``;
* ``subject``: ``num_frames`` frames of one subject (needs the ``subject_id`` label);
* every mode: ``fraction`` (keep labels on that fraction of the annotated frames only: the
  others get ``annotated`` False and every label ``has_*`` flag False; chosen by
  :func:`data_pipelines.samplers.annotation_fraction_mask` from ``fraction_seed``, default the
  factory's seed, so every process and every stage of a run sees the same labelled frames).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import grain
import jax
import numpy as np

from data_pipelines import samplers
from data_pipelines.pipeline import (
    LABEL_DEFAULTS,
    MODE_ALIASES,
    FrameSource,
    batch_dataset,
    make_sample_dataset,
)
from data_pipelines.samplers import SequenceIndex

LABEL_KINDS = ("joints2d", "joints3d", "vertices", "mano", "transl", "mask", "part_seg", "bbox", "object",
               "subject_id")
# the has_* flag each batch key is covered by (zero-filled keys in mixtures, annotation fraction)
LABEL_FLAGS = {"joints2d": "has_joints2d", "joints3d": "has_joints3d", "vertices": "has_vertices",
               "mano_pose": "has_mano", "betas": "has_mano", "transl": "has_transl", "mask": "has_mask",
               "part_seg": "has_part_seg", "bbox": "has_bbox",
               # two-hand extra keys (InterHand2.6M, COCO-WholeBody): one flag per group
               "mano_pose_world": "has_mano_world", "mano_transl_world": "has_mano_world",
               "mano_root_j0": "has_mano_world", "rootnet_depth": "has_rootnet", "rootnet_bbox": "has_rootnet",
               "cam_R": "has_extrinsics", "cam_t": "has_extrinsics", "hand_K": "has_hand_K"}
# flags cleared on frames that lose their labels (annotation fraction)
FRACTION_FLAGS = ("has_joints2d", "has_joints3d", "has_vertices", "has_mano", "has_betas", "has_transl", "has_mask",
                  "has_part_seg")
# label flags only some datasets carry (InterHand2.6M's world fits): cleared where present, never added
OPTIONAL_FRACTION_FLAGS = ("has_mano_world",)


# ----------------------------------------------------------------------------- record adapters
def _text(value) -> str:
    value = np.asarray(value).item() if np.ndim(value) == 0 and not isinstance(value, (bytes, str)) else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def flatten_record(raw: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested feature dicts -> one level with ``a/b`` keys (tfds FeaturesDict of FeaturesDicts)."""
    out = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            out.update(flatten_record(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class RecordAdapter:
    """Maps a dataset's raw records (tfds features, images still encoded) onto the batch-format
    names :class:`~data_pipelines.pipeline.FrameSource` understands. Subclasses override
    :meth:`adapt` and :meth:`kinds` (feature name -> 'image' | 'text' | 'tensor' after adapting)."""

    def kinds(self, kinds: Dict[str, str]) -> Dict[str, str]:
        return kinds

    def adapt(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        return raw

    def __call__(self, raw: Mapping[str, Any]) -> Dict[str, Any]:
        return self.adapt(flatten_record(raw))


def _flat_kinds(features, prefix: str = "") -> Dict[str, str]:
    """feature name -> kind, nested FeaturesDicts by their flattened ``a/b`` leaf names."""
    import tensorflow_datasets as tfds

    kinds = {}
    for name, feature in features.items():
        if isinstance(feature, tfds.features.FeaturesDict):
            kinds.update(_flat_kinds(feature, f"{prefix}{name}/"))
        else:
            kinds.update({f"{prefix}{k}": v for k, v in FrameSource._feature_kinds({name: feature}).items()})
    return kinds


class _AdaptedRecords:
    """A tfds data source whose records go through an adapter."""

    def __init__(self, source, adapter: RecordAdapter):
        self.source, self.adapter = source, adapter

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, record: int):
        return self.adapter(self.source[record])


class DatasetSource(FrameSource):
    """:class:`FrameSource` of a registered dataset: raw records pass through the descriptor's
    :class:`RecordAdapter` (renamed / converted features) before decoding."""

    def __init__(self, builder_dir, split: str = "train", hand_mean=None, adapter: Optional[RecordAdapter] = None):
        self.adapter = adapter
        super().__init__(builder_dir, split, hand_mean)

    def _feature_kinds(self, features) -> Dict[str, str]:
        if self.adapter is None:
            return FrameSource._feature_kinds(features)
        return self.adapter.kinds(_flat_kinds(features))

    def _data_source(self):
        if self.adapter is None:
            return super()._data_source()
        if self._source is None:  # decoders name the STORED image features (top level)
            import tensorflow_datasets as tfds

            info = self._builder()
            skip = {k: tfds.decode.SkipDecoding() for k, kind in FrameSource._feature_kinds(info.info.features).items()
                    if kind == "image"}
            self._source = info.as_data_source(split=self.split, decoders=skip)
        return _AdaptedRecords(self._source, self.adapter)


def _mano_side(path: str, side: str):
    """(hands_components (45, 45), hands_mean (45,)) of ``path``'s ``side`` model, or None when the
    file does not hold that side."""
    from handjax import mano

    try:
        model = mano.load_model(path, side)
    except (ValueError, FileNotFoundError, OSError):
        return None
    return np.asarray(model.hands_components, np.float32), np.asarray(model.hands_mean, np.float32)


@dataclasses.dataclass
class DexYCBAdapter(RecordAdapter):
    """DexYCB records (:mod:`data_pipelines.dexycb`) -> batch format.

    ``seg`` (255 = hand) becomes ``mask``; the PCA pose (global axis-angle + 45 coefficients,
    flat_hand_mean=False) becomes the flat-mean axis-angle ``mano_pose`` with the MANO model's
    ``hands_components`` / ``hands_mean`` of the hand's side (``components[side]``; absent:
    ``has_mano`` / ``has_transl`` False); ``mano_transl`` -> ``transl``; the grasped object's
    pose -> ``grasp_object_pose`` (3, 4) and ``grasp_ycb_id`` (the variable-length per-object
    arrays are dropped; object poses are NOT transformed by the crop augmentation);
    ``subject`` -> ``subject_id`` (index in the toolkit's subject list).
    """

    components: Dict[str, Optional[Tuple[np.ndarray, np.ndarray]]] = dataclasses.field(default_factory=dict)

    def kinds(self, kinds):
        kinds = {k: v for k, v in kinds.items() if k not in ("seg", "object_poses", "ycb_ids", "mano_pose_pca",
                                                            "mano_transl")}
        kinds.update(mask="image", has_mask="tensor", mano_pose="tensor", transl="tensor", has_mano="tensor", has_transl="tensor",
                     grasp_object_pose="tensor", grasp_ycb_id="tensor", subject_id="tensor")
        return kinds

    def adapt(self, raw):
        from data_pipelines.dexycb import layout

        raw = dict(raw)
        raw["mask"], raw["has_mask"] = raw.pop("seg"), np.bool_(True)
        pca = np.asarray(raw.pop("mano_pose_pca"), np.float32)
        side = "right" if bool(raw["is_right"]) else "left"
        basis = self.components.get(side)
        pose = np.zeros(48, np.float32)
        if basis is not None:
            comps, mean = basis
            pose[:3] = pca[:3]
            pose[3:] = pca[3:] @ comps + mean
        raw["mano_pose"] = pose
        raw["has_mano"] = np.bool_(basis is not None)
        raw["transl"] = np.asarray(raw.pop("mano_transl"), np.float32)
        raw["has_transl"] = np.bool_(basis is not None)
        poses, ids = np.asarray(raw.pop("object_poses"), np.float32), np.asarray(raw.pop("ycb_ids"), np.int64)
        grasp = int(raw["ycb_grasp_ind"])
        ok = 0 <= grasp < len(ids)
        raw["grasp_object_pose"] = poses[grasp] if ok else np.zeros((3, 4), np.float32)
        raw["grasp_ycb_id"] = np.int64(ids[grasp] if ok else -1)
        subject = _text(raw["subject"])
        raw["subject_id"] = np.int64(layout.SUBJECTS.index(subject) if subject in layout.SUBJECTS else -1)
        return raw


def _dexycb_adapter(data_cfg) -> DexYCBAdapter:
    path = data_cfg.get("mano_model") or ""
    if not path:
        return DexYCBAdapter({})
    components = {side: _mano_side(path, side) for side in ("right", "left")}
    if components["right"] is None and components["left"] is None:
        raise ValueError(f"config key data.mano_model={path!r}: no MANO model could be read from it")
    for side, basis in components.items():
        if basis is None:
            print(f"[data] dexycb: data.mano_model={path!r} holds no {side} hand: {side} hands get has_mano=False "
                  f"(give the folder of MANO_RIGHT.pkl / MANO_LEFT.pkl)", file=sys.stderr)
    return DexYCBAdapter(components)


class FPHABAdapter(RecordAdapter):
    """FPHAB records (:mod:`data_pipelines.fphab`) -> batch format: ``mano/{pose,betas,transl}``
    (handobjectconsist fits, flat mean) -> ``mano_pose`` / ``betas`` / ``transl`` with
    ``has_mano`` = ``has_transl`` = ``mano/valid``; ``object/pose`` (4, 4) -> ``object_pose``
    with ``has_object`` (not transformed by the crop augmentation); ``subject`` ('Subject_3')
    -> ``subject_id`` (3). With ``objects`` (the object meshes, ``data.object_models``:
    :mod:`data_pipelines.object_models`) also the known-object labels that follow the crop
    (``object_id``, ``object_rot`` / ``object_transl`` / ``object_vertices``,
    ``object_vertex_valid``) and the frame's ``jitter_mask``."""

    def __init__(self, objects=None):
        self.objects = objects

    def kinds(self, kinds):
        kinds = {k: v for k, v in kinds.items() if not k.startswith(("mano/", "object/"))}
        kinds.update({k: "tensor" for k in ("mano_pose", "betas", "transl", "has_mano", "has_transl",
                                            "object_pose", "has_object", "subject_id")})
        if self.objects is not None:
            from data_pipelines.object_models import OBJECT_KINDS

            kinds.update({k: "tensor" for k in OBJECT_KINDS})
        return kinds

    def adapt(self, raw):
        raw = self._adapt(raw)
        if self.objects is not None:
            from data_pipelines import object_models as om

            pose, valid = raw["object_pose"], bool(raw["has_object"])
            where = f"FPHAB record {_text(raw['subject'])}/{_text(raw['action'])}/{_text(raw['sequence'])}: "
            oid = self.objects.index(raw["object_name"], where) if valid else 0
            raw.update(om.object_labels(self.objects, oid, pose[:3, :3], pose[:3, 3], valid))
            raw["jitter_mask"] = om.jitter_mask(raw["image"])
        raw.pop("object_name")
        return raw

    def _adapt(self, raw):
        raw = dict(raw)
        valid = np.bool_(bool(raw.pop("mano/valid")))
        raw["mano_pose"], raw["betas"], raw["transl"] = (np.asarray(raw.pop(f"mano/{k}"), np.float32)
                                                         for k in ("pose", "betas", "transl"))
        raw["has_mano"] = raw["has_transl"] = valid
        raw["object_pose"] = np.asarray(raw.pop("object/pose"), np.float32)
        raw["has_object"] = np.bool_(bool(raw.pop("object/valid")))
        raw["object_name"] = _text(raw.pop("object/name", b""))
        digits = re.findall(r"\d+", _text(raw["subject"]))
        raw["subject_id"] = np.int64(int(digits[-1]) if digits else -1)
        return raw


def _fphab_adapter(data_cfg) -> FPHABAdapter:
    from data_pipelines.object_models import configured_objects

    return FPHABAdapter(configured_objects("fphab", data_cfg))


class HO3DObjectAdapter(RecordAdapter):
    """HO3D records with the known-object labels of ``objects`` (``data.object_models``): ``obj_name`` ->
    ``object_id``, the model pose (``obj_rot`` axis-angle, ``obj_trans``, OpenCV) -> ``object_rot`` /
    ``object_transl`` / ``object_vertices`` / ``object_vertex_valid`` (:func:`data_pipelines.object_models.
    object_labels`), and the frame's ``jitter_mask``. Without object models HO3D records need no adapter."""

    def __init__(self, objects):
        self.objects = objects

    def kinds(self, kinds):
        from data_pipelines.object_models import OBJECT_KINDS

        return dict(kinds, **{k: "tensor" for k in OBJECT_KINDS})

    def adapt(self, raw):
        from data_pipelines import object_models as om
        from data_pipelines.transforms import axis_angle_to_matrix

        raw = dict(raw)
        valid = bool(raw["has_object"])
        name = _text(raw["obj_name"])
        oid = self.objects.index(name, f"HO3D record {_text(raw['sequence'])}/{int(raw['frame_index']):04d}: ") \
            if valid else 0
        rot = axis_angle_to_matrix(np.asarray(raw["obj_rot"], np.float64))
        raw.update(om.object_labels(self.objects, oid, rot, raw["obj_trans"], valid))
        raw["jitter_mask"] = om.jitter_mask(raw["image"])
        return raw


def _ho3d_adapter(data_cfg) -> Optional[HO3DObjectAdapter]:
    from data_pipelines.object_models import configured_objects

    objects = configured_objects("ho3d", data_cfg)
    return None if objects is None else HO3DObjectAdapter(objects)


@dataclasses.dataclass
class InterHandAdapter(RecordAdapter):
    """InterHand2.6M records (:mod:`data_pipelines.interhand`) -> the two-hand sample format
    (:mod:`data_pipelines.transforms`, "two hands": 42 joints right then left in "ih26m"
    order, per-hand arrays with the right hand first).

    joints2d / joints3d / joint_valid as stored; ``mano/<hand>/{pose,betas,transl}`` ->
    ``mano_pose`` (2, 48) made absolute (flat mean) with the MANO model's ``hands_mean`` of
    each side (``hands_mean[side]``; absent: ``has_mano`` / ``has_transl`` False), ``betas``
    (2, 10), ``transl`` (2, 3), ``mano_valid`` (2,) (a fit exists); ``hand_valid`` (2,): the
    hand has a valid joint; ``hand_box`` (2, 4) x0, y0, x1, y1: extent of the hand's valid 2-D
    joints (zeros for an invalid hand); ``hand_type`` code (0 right, 1 left, 2 interacting),
    ``interacting`` = code 2, ``rel_root`` = left wrist - right wrist; the annotation box (x, y,
    w, h) -> ``bbox`` (x1, y1, x2, y2) with ``has_bbox``; ``frame_idx`` -> ``frame_index``;
    ``subject`` -> ``subject_id``. No vertices are stored (``has_vertices`` False).

    World frame (per-hand arrays, right first, like every two-hand label, so flips swap them):
    ``mano/<hand>/pose_world`` -> ``mano_pose_world`` (2, 48), absolute like ``mano_pose``
    (``has_mano_world`` = the hands means are known), ``transl_world`` -> ``mano_transl_world``
    (2, 3) metres, ``root_j0`` -> ``mano_root_j0`` (2, 3); ``cam_R`` / ``cam_t`` as stored
    (X_cam = cam_R X_w + cam_t, X_w in metres; the stored map of millimetres divides by 1000).
    RootNet: ``rootnet/abs_depth`` -> ``rootnet_depth`` (2,) metres, ``rootnet/bbox`` (x, y, w,
    h) -> ``rootnet_bbox`` (x1, y1, x2, y2; zeros without an entry), ``rootnet/valid`` ->
    ``has_rootnet``. How flips and crops move them: :func:`~data_pipelines.transforms.mirror_two_hand_frame`,
    :func:`~data_pipelines.transforms.transform_two_hand_frame` (the world is mirrored with the
    camera; the extrinsics become the crop camera's).
    """

    hands_mean: Dict[str, Optional[np.ndarray]] = dataclasses.field(default_factory=dict)

    def kinds(self, kinds):
        kinds = {k: v for k, v in kinds.items() if not k.startswith(("mano/", "rootnet/")) and k != "frame_idx"}
        kinds.update({k: "tensor" for k in ("mano_pose", "betas", "transl", "mano_valid", "has_mano", "has_transl",
                                            "hand_valid", "hand_box", "interacting", "rel_root", "has_bbox",
                                            "frame_index", "subject_id", "vertices", "has_vertices",
                                            "mano_pose_world", "mano_transl_world", "mano_root_j0", "has_mano_world",
                                            "rootnet_depth", "rootnet_bbox", "has_rootnet")})
        return kinds

    def adapt(self, raw):
        from data_pipelines.interhand import layout

        raw = dict(raw)
        have_mean = all(self.hands_mean.get(h) is not None for h in layout.HANDS)
        poses, betas, transl, valid = [], [], [], []
        world = {"pose_world": [], "transl_world": [], "root_j0": []}
        for hand in layout.HANDS:
            pose = np.asarray(raw.pop(f"mano/{hand}/pose"), np.float32).copy()
            pose_world = np.asarray(raw.pop(f"mano/{hand}/pose_world"), np.float32).copy()
            if have_mean:
                pose[3:] += self.hands_mean[hand]
                pose_world[3:] += self.hands_mean[hand]
            poses.append(pose)
            world["pose_world"].append(pose_world)
            betas.append(np.asarray(raw.pop(f"mano/{hand}/betas"), np.float32))
            transl.append(np.asarray(raw.pop(f"mano/{hand}/transl"), np.float32))
            valid.append(bool(raw.pop(f"mano/{hand}/valid")))
            for extra in ("transl_world", "root_j0"):
                world[extra].append(np.asarray(raw.pop(f"mano/{hand}/{extra}"), np.float32))
        raw["mano_pose"], raw["betas"], raw["transl"] = np.stack(poses), np.stack(betas), np.stack(transl)
        raw["mano_valid"] = np.array(valid)
        raw["has_mano"] = raw["has_transl"] = np.bool_(have_mean)
        for extra, values in world.items():
            raw[f"mano_{extra}"] = np.stack(values)
        raw["has_mano_world"] = np.bool_(have_mean)
        rootnet_valid = bool(raw.pop("rootnet/valid"))
        raw["rootnet_depth"] = np.asarray(raw.pop("rootnet/abs_depth"), np.float32)
        rx, ry, rw, rh = (float(v) for v in np.asarray(raw.pop("rootnet/bbox"), np.float32))
        raw["rootnet_bbox"] = np.array([rx, ry, rx + rw, ry + rh] if rootnet_valid else [0.0] * 4, np.float32)
        raw["has_rootnet"] = np.bool_(rootnet_valid)
        joint_valid = np.asarray(raw["joint_valid"], bool).reshape(2, 21)
        joints2d = np.asarray(raw["joints2d"], np.float32).reshape(2, 21, 2)
        raw["hand_valid"] = joint_valid.any(axis=1)
        boxes = np.zeros((2, 4), np.float32)
        for h in range(2):
            if raw["hand_valid"][h]:
                pts = joints2d[h][joint_valid[h]]
                boxes[h] = np.concatenate([pts.min(axis=0), pts.max(axis=0)])
        raw["hand_box"] = boxes
        code = int(np.asarray(raw["hand_type"]))
        raw["hand_type"] = np.int64(code)
        raw["interacting"] = np.bool_(code == 2)
        joints3d = np.asarray(raw["joints3d"], np.float32)
        raw["rel_root"] = joints3d[layout.ROOTS["left"]] - joints3d[layout.ROOTS["right"]]
        x, y, w, h = (float(v) for v in np.asarray(raw["bbox"], np.float32))
        raw["bbox"] = np.array([x, y, x + w, y + h], np.float32)
        raw["has_bbox"] = np.bool_(True)
        raw["frame_index"] = np.int64(raw.pop("frame_idx"))
        raw["subject_id"] = np.int64(raw["subject"])
        raw["vertices"] = np.zeros((2, 778, 3), np.float32)
        raw["has_vertices"] = np.bool_(False)
        return raw


def _interhand_adapter(data_cfg) -> InterHandAdapter:
    path = data_cfg.get("mano_model") or ""
    if not path:
        return InterHandAdapter({})
    from handjax import mano

    return InterHandAdapter({side: np.asarray(mano.load_model(path, side).hands_mean, np.float32)
                             for side in ("right", "left")})


def nominal_intrinsics(height: int, width: int) -> np.ndarray:
    """(3, 3) K of a dataset without a camera (COCO-WholeBody): focal = the longer image side,
    principal point at the image centre. The crop's pixel map does not depend on it (the
    batch marks it with ``has_K`` False)."""
    f = float(max(height, width))
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]], np.float32)


@dataclasses.dataclass
class CocoWholeBodyAdapter(RecordAdapter):
    """COCO-WholeBody records (:mod:`data_pipelines.coco_wholebody`) -> the two-hand sample
    format (2-D labels only; hand axis 0 right, 1 left; 42 joints in "ih26m" order).

    ``joints2d`` / ``joint_valid`` / ``hand_valid`` as stored (``joint_conf`` dropped:
    validity is conf > 0); ``hand_bbox`` -> ``hand_box`` (zeros where ``hand_bbox_valid`` is
    False) with ``hand_box_annotated`` (the boxes move with the crop); ``person_bbox`` ->
    ``person_box`` = InterWild's person window (``sanitize_bbox``, 3:4 by enlarging, x1.25:
    :func:`data_pipelines.transforms.person_window`), the window of ``data.crop='person'``;
    no camera: ``K`` = :func:`nominal_intrinsics` with ``has_K`` False; no 3-D labels
    (``joints3d`` / ``vertices`` zero-filled by the pipeline with ``has_joints3d`` /
    ``has_vertices`` False; ``rel_root`` is then meaningless).
    NeuralAnnot MANO ``mano/{right,left}/{pose,betas,transl}`` -> ``mano_pose`` (2, 48) made
    absolute with the REAL MANO hands_mean of each side (``hands_mean[side]``, from
    ``data.mano_model``), ``betas`` (2, 10), ``transl`` (2, 3), ``mano_valid`` (2,) = a fit
    exists; ``has_mano`` = the hands means are known and a hand has a fit.
    Each fit's own NeuralAnnot camera (``focal`` / ``princpt``, original pixels) -> ``hand_K``
    (2, 3, 3) pinhole (zeros for a hand without a fit) with ``has_hand_K`` = a hand has one:
    the crop carries it into crop pixels for hand i's camera frame rotated with the crop
    (``project(hand_K[i], X) = crop pixels``; swapped with the hands on flips, see
    :func:`~data_pipelines.transforms.transform_two_hand_frame`); ``mano_pose``'s root rotation
    lives in that (rotated) camera frame. ``has_transl`` stays False: a fit's translation is in
    its own camera, and moving it with the crop's rotation needs the fit's rest wrist J0(betas)
    (the MANO pivot), which the 2-D records do not carry (the pipeline would take it from
    ``joints3d``, zeros here), so ``transl`` is not consistent with the crop.
    """

    hands_mean: Dict[str, Optional[np.ndarray]] = dataclasses.field(default_factory=dict)

    _DROPPED = ("joint_conf", "hand_bbox", "hand_bbox_valid", "person_bbox")

    def kinds(self, kinds):
        kinds = {k: v for k, v in kinds.items() if not k.startswith("mano/") and k not in self._DROPPED}
        kinds.update({k: "tensor" for k in ("mano_pose", "betas", "transl", "mano_valid", "has_mano", "has_transl",
                                            "hand_box", "hand_box_annotated", "person_box", "K", "has_K", "hand_K",
                                            "has_hand_K")})
        return kinds

    def adapt(self, raw):
        from data_pipelines.coco_wholebody import layout
        from data_pipelines.transforms import PERSON_BOX_EXTENSION, person_window

        raw = dict(raw)
        have_mean = all(self.hands_mean.get(h) is not None for h in layout.HANDS)
        poses, betas, transl, valid = [], [], [], []
        hand_k = np.zeros((2, 3, 3), np.float32)
        for h, hand in enumerate(layout.HANDS):
            pose = np.asarray(raw.pop(f"mano/{hand}/pose"), np.float32).copy()
            if have_mean:
                pose[3:] += self.hands_mean[hand]
            poses.append(pose)
            betas.append(np.asarray(raw.pop(f"mano/{hand}/betas"), np.float32))
            transl.append(np.asarray(raw.pop(f"mano/{hand}/transl"), np.float32))
            valid.append(bool(raw.pop(f"mano/{hand}/valid")))
            (fx, fy), (cx, cy) = raw.pop(f"mano/{hand}/focal"), raw.pop(f"mano/{hand}/princpt")
            if valid[-1]:
                hand_k[h] = [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
        raw["mano_pose"], raw["betas"], raw["transl"] = np.stack(poses), np.stack(betas), np.stack(transl)
        raw["mano_valid"] = np.array(valid)
        raw["hand_K"], raw["has_hand_K"] = hand_k, np.bool_(any(valid))
        raw["has_mano"] = np.bool_(have_mean and any(valid))
        raw["has_transl"] = np.bool_(False)
        raw.pop("joint_conf")
        boxes = np.asarray(raw.pop("hand_bbox"), np.float32)
        box_valid = np.asarray(raw.pop("hand_bbox_valid"), bool)
        raw["hand_box"] = np.where(box_valid[:, None], boxes, 0.0).astype(np.float32)
        raw["hand_box_annotated"] = np.bool_(True)
        height, width = (int(v) for v in np.asarray(raw["image_size"]))
        x1, y1, x2, y2 = (float(v) for v in np.asarray(raw.pop("person_bbox"), np.float64))
        box = layout.sanitized_box((x1, y1, x2 - x1, y2 - y1), width, height)
        if box is None:  # the builder keeps only persons whose box survives sanitize_bbox
            raise ValueError(f"coco_wholebody annotation {int(raw['annot_id'])}: person box {[x1, y1, x2, y2]} "
                             f"is empty inside the {width}x{height} image (rebuild the dataset)")
        bx, by, bw, bh = box
        raw["person_box"] = person_window((bx, by, bx + bw, by + bh), PERSON_BOX_EXTENSION).astype(np.float32)
        raw["K"], raw["has_K"] = nominal_intrinsics(height, width), np.bool_(False)
        return raw


def _mano_hands_means(data_cfg, dataset: str, why: str) -> Dict[str, Optional[np.ndarray]]:
    """hands_mean (45,) per side of ``data.mano_model`` (both sides required), or {} with a
    one-line note when it is not given."""
    path = data_cfg.get("mano_model") or ""
    if not path:
        print(f"[data] {dataset}: no data.mano_model: {why}; has_mano=False (give the folder of the official "
              "MANO_RIGHT.pkl / MANO_LEFT.pkl)", file=sys.stderr)
        return {}
    from handjax import mano

    means = {}
    for side in ("right", "left"):
        try:
            means[side] = np.asarray(mano.load_model(path, side).hands_mean, np.float32)
        except (ValueError, FileNotFoundError, OSError) as err:
            raise ValueError(f"config key data.mano_model={path!r}: {dataset} needs the {side} MANO model "
                             f"(give the folder of MANO_RIGHT.pkl and MANO_LEFT.pkl): {err}") from err
    return means


def _coco_adapter(data_cfg) -> CocoWholeBodyAdapter:
    return CocoWholeBodyAdapter(_mano_hands_means(
        data_cfg, "coco_wholebody", "its NeuralAnnot poses are relative to the REAL MANO hand mean, which the "
        "built-in hand does not replace"))


class HICAdapter(RecordAdapter):
    """HIC records (:mod:`data_pipelines.hic`) -> the two-hand sample format: ``K``,
    ``vertices``, ``joints3d`` / ``joints2d`` / ``joint_valid``, ``hand_valid`` and
    ``hand_type`` (0 right, 1 left, 2 interacting) as stored; ``hand_bbox`` (InterWild's GT
    boxes from the meshes) -> ``hand_box`` with ``hand_box_annotated`` (moved with the crop);
    ``has_joints2d`` = ``has_joints3d`` = the record has joints (built with a MANO dir);
    ``interacting`` = hand_type 2. No MANO parameters (``has_mano`` / ``has_transl`` False,
    zero-filled by the pipeline)."""

    def kinds(self, kinds):
        kinds = {k: v for k, v in kinds.items() if k != "hand_bbox"}
        kinds.update({k: "tensor" for k in ("hand_box", "hand_box_annotated", "has_joints2d", "has_joints3d",
                                            "interacting")})
        return kinds

    def adapt(self, raw):
        raw = dict(raw)
        valid = np.asarray(raw["hand_valid"], bool)
        raw["hand_box"] = np.where(valid[:, None], np.asarray(raw.pop("hand_bbox"), np.float32), 0.0).astype(
            np.float32)
        raw["hand_box_annotated"] = np.bool_(True)
        raw["has_joints2d"] = raw["has_joints3d"] = np.bool_(np.asarray(raw["joint_valid"], bool).any())
        raw["hand_type"] = np.int64(np.asarray(raw["hand_type"]))
        raw["interacting"] = np.bool_(int(raw["hand_type"]) == 2)
        return raw


def _skip_corrupt_kwargs(data_cfg) -> dict:
    """``data.skip_corrupt``: skip (and report) corrupt / missing samples while building."""
    return {"skip_corrupt": bool(data_cfg.get("skip_corrupt") or False)}


def _hic_build_kwargs(data_cfg) -> dict:
    path = data_cfg.get("mano_model") or ""
    if path and not os.path.isdir(path):
        raise ValueError(f"config key data.mano_model={path!r}: HIC needs the FOLDER holding MANO_RIGHT.pkl and "
                         "MANO_LEFT.pkl (their J_regressor derives the joints from the meshes)")
    return dict(_skip_corrupt_kwargs(data_cfg), mano_dir=path or None)


# ----------------------------------------------------------------------------- descriptors
def _ho3d_build_kwargs(data_cfg) -> dict:
    return {"mano_model": data_cfg.get("mano_model") or None}


def _dexycb_build_kwargs(data_cfg) -> dict:
    """Debug subsets: ``data.sequences_per_subject`` (first N sequences of every subject) and
    ``data.serials`` (camera serials) when set."""
    kwargs = {}
    if data_cfg.get("sequences_per_subject"):
        kwargs["sequences_per_subject"] = int(data_cfg["sequences_per_subject"])
    if data_cfg.get("serials"):
        kwargs["serials"] = [str(s) for s in data_cfg["serials"]]
    return kwargs


def _interhand_build_kwargs(data_cfg) -> dict:
    path = data_cfg.get("mano_model") or ""
    if path and not os.path.isdir(path):
        raise ValueError(f"config key data.mano_model={path!r}: InterHand2.6M needs the FOLDER holding "
                         "MANO_RIGHT.pkl and MANO_LEFT.pkl (the fits' rest wrist pivots)")
    return {"mano_dir": path or None}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset of :data:`DATASETS` (see the module docstring for an example entry).

    module: package with ``ensure_built(config, data_dir, manual_dir, **build_kwargs)`` (real,
        ``manual=True``) or ``ensure_built(config, data_dir)`` (built-in); default_config:
        ``data.builder_config`` when empty (or 'default' for a real dataset whose configs have
        other names: ``config_aliases`` maps names); joint_convention: handjax convention name
        of the stored joint ORDER; labels: label kinds (:data:`LABEL_KINDS`) the dataset carries
        (per record they may still be flagged absent); video: sequences usable by window / pair
        modes; hands: 1 or 2 hands per sample; eval_crop: ``crop_from`` / ``bbox_pad`` of
        evaluation; build_kwargs: data config -> extra ``ensure_built`` arguments; adapter:
        data config -> :class:`RecordAdapter` (None: records already use the batch names);
        relative_pose: finger poses stored relative to MANO's mean (``mano_pose_relative``),
        made absolute with ``data.mano_model``'s hands_mean; subset_keys: (integer feature, text
        feature) that ``data.subset_file`` lines match; holdout: how ``data.train_fraction`` < 1
        splits the stored ``train`` split into ``train`` / ``val`` (:func:`holdout_records`:
        'first' = the first fraction of the samples, all image versions of a sample on one side,
        as TempCLR's FreiHAND; 'random_frames' = a seeded random fraction of every sequence's
        frames, as TempCLR's HO3D; '' = not supported).
    """

    module: str
    default_config: str
    joint_convention: str
    labels: Tuple[str, ...]
    video: bool
    hands: int = 1
    manual: bool = True
    eval_crop: Tuple[Tuple[str, Any], ...] | Mapping[str, Any] = ()
    config_aliases: Tuple[Tuple[str, str], ...] | Mapping[str, str] = ()
    build_kwargs: Optional[Callable[[Any], dict]] = None
    adapter: Optional[Callable[[Any], RecordAdapter]] = None
    relative_pose: bool = False
    subset_keys: Tuple[Optional[str], Optional[str]] = (None, None)
    holdout: str = ""

    def __post_init__(self):
        unknown = sorted(set(self.labels) - set(LABEL_KINDS))
        if unknown:
            raise ValueError(f"Dataset({self.module}): unknown label kind(s) {unknown}; known: {LABEL_KINDS}")
        if self.hands not in (1, 2):
            raise ValueError(f"Dataset({self.module}): hands must be 1 or 2, got {self.hands}")
        object.__setattr__(self, "eval_crop", dict(self.eval_crop))
        object.__setattr__(self, "config_aliases", dict(self.config_aliases))

    def has(self, label: str) -> bool:
        return label in self.labels

    def resolve_config(self, name: Optional[str]) -> str:
        name = name or self.default_config
        return self.config_aliases.get(name, name)


_HAND_LABELS = ("joints2d", "joints3d", "vertices", "mano", "transl")
DATASETS: Dict[str, Dataset] = {
    # built-in (generated, licence-free)
    "synthetic_hands": Dataset("data_pipelines.synthetic_hands", "default", "freihand",
                               _HAND_LABELS + ("mask", "part_seg"), video=True, manual=False),
    "hand_object": Dataset("data_pipelines.hand_object", "default", "freihand",
                           _HAND_LABELS + ("mask", "part_seg", "object"), video=True, manual=False),
    "identities": Dataset("data_pipelines.identities", "default", "freihand",
                          _HAND_LABELS + ("mask", "part_seg", "subject_id"), video=True, manual=False),
    "two_hands": Dataset("data_pipelines.two_hands", "default", "ih26m", _HAND_LABELS + ("mask", "part_seg"),
                         video=True, hands=2, manual=False, eval_crop=dict(bbox_pad=1.25)),
    # real (manual download)
    "freihand": Dataset("data_pipelines.freihand", "default", "freihand",
                        ("joints2d", "joints3d", "vertices", "mano", "mask"), video=False,
                        eval_crop=dict(crop_from="image", bbox_pad=1.0), relative_pose=True,
                        subset_keys=("image_id", None), holdout="first"),
    "ho3d": Dataset("data_pipelines.ho3d", "v2", "ho3d", _HAND_LABELS + ("bbox", "object"), video=True,
                    eval_crop=dict(crop_from="bbox", bbox_pad=2.0), config_aliases=dict(default="v2"),
                    build_kwargs=_ho3d_build_kwargs, adapter=_ho3d_adapter, subset_keys=("eval_index", "sequence"),
                    holdout="random_frames"),
    # HanCo (the FreiHAND authors' multi-view videos; each camera of a sequence is a video): pretraining video
    "hanco": Dataset("data_pipelines.hanco", "default", "freihand", ("joints2d", "joints3d", "mano"), video=True,
                     eval_crop=dict(crop_from="image", bbox_pad=1.0), relative_pose=True),
    "dexycb": Dataset("data_pipelines.dexycb", "s0", "manopth",
                      ("joints2d", "joints3d", "mano", "transl", "mask", "object", "subject_id"), video=True,
                      config_aliases=dict(default="s0"), build_kwargs=_dexycb_build_kwargs, adapter=_dexycb_adapter,
                      subset_keys=("toolkit_index", None)),
    "fphab": Dataset("data_pipelines.fphab", "hand_object_480", "manopth",
                     ("joints2d", "joints3d", "mano", "transl", "object", "subject_id"), video=True,
                     config_aliases=dict(default="hand_object_480"), adapter=_fphab_adapter,
                     subset_keys=(None, "sequence")),
    "interhand": Dataset("data_pipelines.interhand", "5fps_hm", "ih26m",
                         ("joints2d", "joints3d", "mano", "transl", "bbox", "part_seg", "subject_id"), video=True,
                         hands=2, config_aliases=dict(default="5fps_hm"), build_kwargs=_interhand_build_kwargs,
                         adapter=_interhand_adapter, subset_keys=("annot_id", "file_name")),
    # InterWild's 2-D in-the-wild data (person crop: data.crop='person' uses InterWild's person box)
    "coco_wholebody": Dataset("data_pipelines.coco_wholebody", "default", "ih26m", ("joints2d", "mano", "bbox"),
                              video=False, hands=2, eval_crop=dict(bbox_pad=1.25), build_kwargs=_skip_corrupt_kwargs,
                              adapter=_coco_adapter, subset_keys=("annot_id", "file_name")),
    # InterWild's test set: evaluated on the whole image (crop='hands': a square around it)
    "hic": Dataset("data_pipelines.hic", "default", "ih26m", ("joints2d", "joints3d", "vertices", "bbox"),
                   video=False, hands=2, eval_crop=dict(crop_from="image", bbox_pad=1.0),
                   build_kwargs=_hic_build_kwargs, adapter=lambda cfg: HICAdapter(),
                   subset_keys=("annot_id", "file_name")),
}


def get_dataset(name: str) -> Dataset:
    """The descriptor of ``data.name`` (ValueError naming the key and listing the known names)."""
    if name not in DATASETS:
        raise ValueError(f"config key data.name={name!r}: no such dataset; known: {sorted(DATASETS)}")
    return DATASETS[name]


# ----------------------------------------------------------------------------- sampling parameters
SAMPLING: Dict[str, Dict[str, Any]] = {
    "frame": {"annotated_only": False},
    "window": {"k": 2, "window": 3, "num_negatives": 0},
    "pair": {"max_distance": None, "unannotated_only": False},
    "subject": {"num_frames": 2},
}
COMMON_SAMPLING = {"fraction": 1.0, "fraction_seed": None}
# make_sample_dataset's argument of each parameter (the rest are handled here)
_SAMPLE_ARGS = {"annotated_only": "annotated_only", "k": "k", "window": "window", "num_negatives": "num_negatives",
                "max_distance": "max_distance", "unannotated_only": "unannotated_only", "num_frames": "num_frames"}


def canonical_mode(mode: str) -> str:
    mode = {v: k for k, v in MODE_ALIASES.items()}.get(mode, mode)  # sparse_pair -> pair
    if mode not in SAMPLING:
        raise ValueError(f"sampling mode {mode!r} unknown; known: {sorted(SAMPLING)} (sparse_pair = pair)")
    return mode


def _check_params(params: Mapping[str, Any], mode: str, where: str) -> None:
    allowed = set(SAMPLING[mode]) | set(COMMON_SAMPLING)
    for key in params:
        if key not in allowed:
            raise ValueError(f"{where}: sampling parameter {key!r} is not one of {mode} mode's "
                             f"({', '.join(sorted(allowed))})")


def sampling_params(data_cfg: Mapping[str, Any], mode: str, overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The sampling parameters of ``mode``: built-in defaults < legacy ``data.window`` /
    ``data.extra_negatives`` (window mode) < ``data.sampling.<mode>`` < ``overrides``."""
    mode = canonical_mode(mode)
    params = dict(SAMPLING[mode], **COMMON_SAMPLING)
    if mode == "window":
        if data_cfg.get("window") is not None:
            params["window"] = data_cfg["window"]
        if data_cfg.get("extra_negatives") is not None:
            params["num_negatives"] = data_cfg["extra_negatives"]
    sampling = dict(data_cfg.get("sampling") or {})
    for key in list(sampling):
        if key in COMMON_SAMPLING:  # data.sampling.fraction: every mode's default
            params[key] = sampling.pop(key)
        else:
            canonical_mode(key)  # an unknown mode under data.sampling is an error
    for key, value in sampling.items():
        if canonical_mode(key) == mode:
            value = dict(value or {})
            _check_params(value, mode, f"config key data.sampling.{key}")
            params.update(value)
    _check_params(overrides, mode, f"data(mode={mode!r})")
    params.update(overrides)
    if not 0.0 <= float(params["fraction"]) <= 1.0:
        raise ValueError(f"sampling parameter 'fraction' must lie in [0, 1], got {params['fraction']}")
    return params


# ----------------------------------------------------------------------------- train / val holdout
def _freihand_sample_index(source) -> Tuple[np.ndarray, int]:
    """((N,) FreiHAND sample index of each ``train`` record, number of samples n): image ids are
    sample + n * version (``data_pipelines.freihand``), n from the build's metadata (records +
    skipped records = n x versions)."""
    meta = source._builder().info.metadata or {}
    versions = len(meta.get("versions") or [None])
    skipped = len((meta.get("skipped") or {}).get("train") or [])
    ids = np.asarray(source.index.sequence_id, np.int64)
    n, rest = divmod(len(ids) + skipped, versions)
    if rest or n <= 0 or (len(ids) and int(ids.max()) >= n * versions):
        raise ValueError(f"{source.builder_dir}: cannot recover FreiHAND sample indices ({len(ids)} records, "
                         f"{skipped} skipped, {versions} image versions)")
    return ids % n, n


def holdout_records(desc: "Dataset", source, train_fraction: float, seed: int, name: str):
    """(train record ids, val record ids) of ``source`` (the stored train split), both sorted, by
    the descriptor's ``holdout`` rule.

    'first': samples with index < int(train_fraction * number of samples) train (FreiHAND: the
    same samples in every image version); 'random_frames': in every sequence,
    int(train_fraction * its frames) frames drawn without replacement by
    ``np.random.default_rng([seed, sequence_id])`` train and the rest validate.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"config key data.train_fraction={train_fraction}: must lie in (0, 1] (1 = no holdout)")
    if desc.holdout not in ("first", "random_frames"):
        raise ValueError(f"config key data.train_fraction={train_fraction}: dataset {name!r} has no train / val "
                         f"holdout rule (datasets with one: {sorted(n for n, d in DATASETS.items() if d.holdout)})")
    in_train = np.zeros(len(source), bool)
    if desc.holdout == "first":
        sample, num = _freihand_sample_index(source)
        in_train = sample < int(train_fraction * num)
    else:
        seq = np.asarray(source.index.sequence_id, np.int64)
        frame = np.asarray(source.index.frame_index, np.int64)
        for s in np.unique(seq):
            members = np.flatnonzero(seq == s)
            members = members[np.argsort(frame[members], kind="stable")]
            chosen = np.random.default_rng([int(seed), int(s)]).choice(
                len(members), int(train_fraction * len(members)), replace=False)
            in_train[members[chosen]] = True
    return np.flatnonzero(in_train), np.flatnonzero(~in_train)


# ----------------------------------------------------------------------------- source wrappers
class SubsetSource:
    """The records ``records`` (ids into ``source``) of a source, as a source of their own."""

    def __init__(self, source, records: np.ndarray):
        self.source, self.records = source, np.asarray(records, np.int64)
        idx = source.index
        self.index = SequenceIndex.from_arrays(idx.sequence_id[self.records], idx.frame_index[self.records],
                                               idx.annotated[self.records])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, record: int):
        return self.source[self.records[int(record)]]

    @property
    def subject_index(self) -> samplers.SubjectIndex:
        return samplers.SubjectIndex.from_arrays(self.source.subject_index.subject_id[self.records])


class LabelFractionSource:
    """A source whose frames outside ``keep`` (N,) bool lose their labels: ``annotated`` False
    and the label flags of :data:`FRACTION_FLAGS` False (the label values stay: crops are still
    built from them; losses must use the flags). Every frame carries every flag, so batches
    have one key set; the :data:`OPTIONAL_FRACTION_FLAGS` a dataset has are cleared too (inputs
    such as RootNet depths or cameras are not labels and stay)."""

    def __init__(self, source, keep: np.ndarray):
        self.source, self.keep = source, np.asarray(keep, bool)
        idx = source.index
        if self.keep.shape != (len(idx),):
            raise ValueError(f"LabelFractionSource: keep mask of shape {self.keep.shape} for {len(idx)} records")
        self.index = SequenceIndex.from_arrays(idx.sequence_id, idx.frame_index, idx.annotated & self.keep)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, record: int):
        frame = dict(self.source[record])
        kept = bool(self.keep[int(record)])
        for flag in FRACTION_FLAGS:
            frame[flag] = np.bool_(kept and bool(frame.get(flag, True)))
        for flag in OPTIONAL_FRACTION_FLAGS:
            if flag in frame:
                frame[flag] = np.logical_and(kept, frame[flag])
        frame["annotated"] = np.bool_(kept and bool(frame.get("annotated", True)))
        return frame

    @property
    def subject_index(self) -> samplers.SubjectIndex:
        return self.source.subject_index


def read_subset_file(path: str) -> Tuple[List[int], List[str]]:
    """(integer ids, text ids) listed in ``path``, one per line (blank lines ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config key data.subset_file: {path} does not exist")
    ints, texts = [], []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if re.fullmatch(r"[+-]?\d+", line):
                ints.append(int(line))
            else:
                texts.append(line)
    return ints, texts


def subset_records(source: DatasetSource, path: str, keys: Tuple[Optional[str], Optional[str]],
                   dataset: str) -> np.ndarray:
    """Record ids (sorted) of ``source`` listed in the subset file ``path``; ids absent from the
    split are an error naming them."""
    ints, texts = read_subset_file(path)
    int_key, text_key = keys
    for wanted, key, kind in ((ints, int_key, "integer ids"), (texts, text_key, "paths")):
        if wanted and key is None:
            raise ValueError(f"config key data.subset_file={path}: {dataset} records cannot be selected by "
                             f"{kind} (lines like {wanted[0]!r}); it matches {[k for k in keys if k]}")
    raw = source._data_source()
    n = len(source)
    chosen = np.zeros(n, bool)
    for wanted, key, conv in ((ints, int_key, lambda v: int(np.asarray(v))), (texts, text_key, _text)):
        if not wanted:
            continue
        values = [conv(raw[r][key]) for r in range(n)]
        position = {}
        for r, v in enumerate(values):
            position.setdefault(v, []).append(r)
        missing = [w for w in wanted if w not in position]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
            raise ValueError(f"config key data.subset_file={path}: {len(missing)} id(s) not in split "
                             f"{source.split!r} of {dataset} (feature {key!r}): {shown}")
        for w in wanted:
            chosen[position[w]] = True
    return np.flatnonzero(chosen)


def _subset_path(subset_file, split: str) -> Optional[str]:
    if not subset_file:
        return None
    if isinstance(subset_file, Mapping) or hasattr(subset_file, "to_dict"):
        return dict(subset_file).get(split) or None
    return str(subset_file).replace("{split}", split)


# ----------------------------------------------------------------------------- joint order
@dataclasses.dataclass(frozen=True)
class _Reorder:
    """Sample map: joints (and ``joint_valid``) from the dataset's order into the requested one."""

    order: Tuple[int, ...]

    def __call__(self, sample):
        idx = np.asarray(self.order)
        out = dict(sample)
        for key in ("joints2d", "joints3d", "joint_valid"):
            if key in out:
                arr = np.asarray(out[key])
                axis = arr.ndim - (2 if key != "joint_valid" else 1)
                out[key] = np.take(arr, idx, axis=axis)
        return out


def joint_order(src: str, dst: str, hands: int) -> Optional[Tuple[int, ...]]:
    """Gather indices from ``src``'s joint order into ``dst``'s (per hand for two-hand samples),
    or None when they are the same."""
    from handjax import mano

    one = mano.joint_remap(src, dst)
    if one == tuple(range(21)):
        return None
    return tuple(j + 21 * h for h in range(hands) for j in one)


# ----------------------------------------------------------------------------- one dataset
def _as_dict(cfg) -> Dict[str, Any]:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return dict(cfg)


def _builder_dir(name: str, desc: Dataset, data_cfg: Mapping[str, Any]) -> str:
    from handjax.distributed import build_once

    module = importlib.import_module(desc.module)
    config = desc.resolve_config(data_cfg.get("builder_config"))
    data_dir = data_cfg.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or None
    kwargs = desc.build_kwargs(data_cfg) if desc.build_kwargs else {}
    if desc.manual:
        manual_dir = data_cfg.get("manual_dir") or None
        build = lambda: module.ensure_built(config, data_dir, manual_dir, **kwargs)  # noqa: E731
    else:
        build = lambda: module.ensure_built(config, data_dir, **kwargs)  # noqa: E731
    # multi-process: process 0 builds first, the others wait (no two writers of one directory)
    return build_once(build, f"handjax-build-{name}")


def _hand_mean(desc: Dataset, data_cfg: Mapping[str, Any]):
    """hands_mean (45,) of ``data.mano_model`` for datasets storing relative finger poses."""
    path = data_cfg.get("mano_model") or ""
    if not desc.relative_pose or not path:
        return None
    from handjax import mano

    return np.asarray(mano.load_model(path, "right").hands_mean)


def eval_flip(flip: str, hands: int) -> str:
    """The flip of evaluation: never a random one, and none for two-hand samples (a flip swaps
    the hands and their labels); single-hand 'left_to_right' (left hands mirrored into right
    ones, a model input convention) stays."""
    return "left_to_right" if flip == "left_to_right" and hands == 1 else "none"


@dataclasses.dataclass
class _Member:
    """One configured dataset: descriptor, builder directory and how to read / sample it."""

    name: str
    desc: Dataset
    cfg: Dict[str, Any]
    builder_dir: str
    hand_mean: Optional[np.ndarray]
    adapter: Optional[RecordAdapter]
    reorder: Optional[Tuple[int, ...]]
    seed: int

    @staticmethod
    def create(data_cfg: Dict[str, Any], seed: int, target_convention: Optional[str]) -> "_Member":
        name = data_cfg.get("name") or ""
        desc = get_dataset(name)
        if data_cfg.get("crop") and desc.hands != 2:
            raise ValueError(f"config key data.crop={data_cfg['crop']!r} is for two-hand datasets; {name!r} has "
                             "single-hand samples")
        target = target_convention or desc.joint_convention
        return _Member(name, desc, data_cfg, _builder_dir(name, desc, data_cfg), _hand_mean(desc, data_cfg),
                       desc.adapter(data_cfg) if desc.adapter else None,
                       joint_order(desc.joint_convention, target, desc.hands), seed)

    def source(self, split: str, params: Mapping[str, Any]):
        src = self._split_source(split)
        path = _subset_path(self.cfg.get("subset_file"), split)
        if path:
            src = SubsetSource(src, subset_records(src, path, self.desc.subset_keys, self.name))
        fraction = float(params["fraction"])
        if fraction < 1.0:
            fseed = params["fraction_seed"]
            keep = samplers.annotation_fraction_mask(src.index.annotated, fraction,
                                                     self.seed if fseed is None else int(fseed))
            src = LabelFractionSource(src, keep)
        return src

    def _split_source(self, split: str):
        """The stored split, or with ``data.train_fraction`` < 1 its ``train`` / ``val`` part."""
        fraction = float(self.cfg.get("train_fraction", 1.0) or 1.0)
        if fraction >= 1.0 or split not in ("train", "val"):
            return DatasetSource(self.builder_dir, split, self.hand_mean, self.adapter)
        src = DatasetSource(self.builder_dir, "train", self.hand_mean, self.adapter)
        train, val = holdout_records(self.desc, src, fraction, int(self.cfg.get("val_seed", 0) or 0), self.name)
        return SubsetSource(src, train if split == "train" else val)

    def samples(self, split: str, mode: str, params: Mapping[str, Any], *, train: bool, seed: int,
                prefetch: int) -> grain.IterDataset:
        mode = canonical_mode(mode)
        if mode == "window" and not self.desc.video:  # positives would be the anchor itself: nothing to learn
            video = sorted(n for n, d in DATASETS.items() if d.video)
            raise ValueError(f"window mode (contrastive pretraining) needs video; dataset {self.name!r} has single "
                             f"frames only, so every positive would be the anchor itself. Use a video dataset "
                             f"({', '.join(video)}), e.g. hanco to pretrain for FreiHAND")
        if mode == "pair" and not self.desc.video:
            print(f"[data] {self.name} has no video sequences: {mode} mode pairs every frame with itself",
                  file=sys.stderr)
        if mode == "subject" and not self.desc.has("subject_id"):
            raise ValueError(f"subject mode needs the subject_id label; dataset {self.name!r} has none "
                             f"(datasets with it: {sorted(n for n, d in DATASETS.items() if d.has('subject_id'))})")
        args = {_SAMPLE_ARGS[k]: v for k, v in params.items() if k in _SAMPLE_ARGS and k in SAMPLING[mode]}
        for key in ("k", "window", "num_negatives", "num_frames"):
            if key in args:
                args[key] = int(args[key])
        if args.get("max_distance") is not None:
            args["max_distance"] = int(args["max_distance"])
        if self.cfg.get("crop"):  # two-hand samples: "hands" (square around both, DIGIT) or "person" (InterWild)
            args["crop"] = str(self.cfg["crop"])
        source = self.source(split, params)
        image_size = int(self.cfg["image_size"])
        augment = dict(self.cfg.get("augment") or {})
        if train:
            ds = make_sample_dataset(source, split, mode=mode, image_size=image_size, augment=augment, seed=seed,
                                     prefetch=prefetch, **args)
        else:
            crop = dict(self.desc.eval_crop, **dict(self.cfg.get("eval_crop") or {}))
            eval_aug = {"flip": eval_flip(augment.get("flip", "none"), self.desc.hands), **crop}
            ds = make_sample_dataset(source, split, mode=mode, image_size=image_size, augment=eval_aug, seed=0,
                                     shuffle=False, num_epochs=1, pad_shards=True, prefetch=prefetch, **args)
        if self.reorder is not None:
            ds = ds.map(_Reorder(self.reorder))
        return ds


# ----------------------------------------------------------------------------- mixtures
def _mixture_entries(data_cfg: Dict[str, Any]) -> List[Tuple[Dict[str, Any], float]]:
    """``data.mixture`` -> [(member data config, weight)], each inheriting the parent's keys."""
    base = {k: v for k, v in data_cfg.items() if k != "mixture"}
    entries = []
    for i, entry in enumerate(data_cfg["mixture"]):
        if isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str):
            sub, weight = {"name": entry[0]}, entry[1]
        elif isinstance(entry, Mapping) or hasattr(entry, "to_dict"):
            sub = _as_dict(entry)
            if "weight" not in sub or "name" not in sub:
                raise ValueError(f"config key data.mixture[{i}]: a dataset entry needs 'name' and 'weight', "
                                 f"got keys {sorted(sub)}")
            weight = sub.pop("weight")
        else:
            raise ValueError(f"config key data.mixture[{i}]: expected (name, weight) or a dict with name and "
                             f"weight, got {entry!r}")
        weight = float(weight)
        if not weight > 0:
            raise ValueError(f"config key data.mixture[{i}]: weight must be > 0, got {weight}")
        get_dataset(sub["name"])
        entries.append((dict(base, **sub), weight))
    if not entries:
        raise ValueError("config key data.mixture: empty; give [(name, weight), ...]")
    return entries


@dataclasses.dataclass(frozen=True)
class _CommonFormat:
    """Sample map of one mixture member onto the union format: a missing key is zero-filled and
    its ``has_*`` flag (:data:`LABEL_FLAGS`, else ``has_<key>``) is False; a flag the member does
    not carry is True when the member has every key it covers; plus ``dataset`` (int32 index of
    the member in the mixture)."""

    index: int
    spec: Tuple[Tuple[str, Tuple[int, ...], str], ...]  # (key, shape, dtype) of the union format
    flags: Tuple[Tuple[str, Tuple[str, ...]], ...]      # (has_* flag, keys it covers)

    def __call__(self, sample):
        out = {key: sample[key] if key in sample else np.zeros(shape, dtype)
               for key, shape, dtype in self.spec if not key.startswith("has_") or key in sample}
        lead = np.asarray(sample["image"]).shape[:-3]  # () frame mode, (F,) multi-frame modes
        for flag, covered in self.flags:
            have = all(k in sample for k in covered)
            given = np.broadcast_to(np.asarray(sample[flag], bool), lead) if flag in sample else np.ones(lead, bool)
            out[flag] = given & have
        out["dataset"] = np.full(lead, self.index, np.int32)
        return out


def _union_spec(names: Sequence[str], samples: Sequence[Mapping[str, np.ndarray]]):
    """(spec, flags) of the union of the members' sample formats; a key with different shapes in
    two members is an error naming both."""
    spec: Dict[str, Tuple[Tuple[int, ...], str, str]] = {}
    for name, sample in zip(names, samples):
        for key, value in sample.items():
            value = np.asarray(value)
            if value.dtype.kind not in "biuf":
                raise ValueError(f"data.mixture: {name} sample key {key!r} is not numeric ({value.dtype})")
            if key in spec and spec[key][0] != value.shape:
                raise ValueError(f"data.mixture: sample key {key!r} has shape {spec[key][0]} in {spec[key][2]} but "
                                 f"{value.shape} in {name}; mixed datasets must share the sample format "
                                 f"(hands per sample, image_size, mode)")
            spec.setdefault(key, (value.shape, value.dtype.str, name))
    flags = {key for key in spec if key.startswith("has_")}
    keysets = [set(s) for s in samples]
    for key in spec:
        if not key.startswith("has_") and not all(key in ks for ks in keysets):
            flags.add(LABEL_FLAGS.get(key, f"has_{key}"))
    for flag in flags:
        spec.setdefault(flag, (spec["image"][0][:-3], np.dtype(bool).str, ""))
    covers = {flag: tuple(sorted(k for k in spec if not k.startswith("has_")
                                 and LABEL_FLAGS.get(k, f"has_{k}") == flag)) for flag in flags}
    ordered = tuple((k, shape, dtype) for k, (shape, dtype, _) in sorted(spec.items()))
    return ordered, tuple(sorted(covers.items()))


def mix_datasets(datasets: Sequence[grain.IterDataset], weights: Sequence[float], names: Sequence[str],
                 first_samples: Sequence[Mapping[str, np.ndarray]]) -> grain.IterDataset:
    """grain's weighted ``IterDataset.mix`` of per-sample datasets after mapping each onto the
    union format (:class:`_CommonFormat`). The mixing state (and every member's) is part of the
    iterator's ``get_state()``, so checkpoints resume the same sample order."""
    spec, flags = _union_spec(names, first_samples)
    mapped = [ds.map(_CommonFormat(i, spec, flags)) for i, ds in enumerate(datasets)]
    total = float(sum(weights))
    return grain.IterDataset.mix(mapped, [w / total for w in weights])


# ----------------------------------------------------------------------------- batching
def _per_process(batch_size: int) -> int:
    n = jax.process_count()
    if batch_size % n:
        raise ValueError(f"global batch size {batch_size} is not divisible by the {n} processes")
    return batch_size // n


def _padded_batches(ds, batch_size: int) -> Iterator[dict]:
    """Re-batch a batch-1 dataset into fixed-size batches, padding the last one."""
    buf = []
    for item in ds:
        buf.append(item)
        if len(buf) == batch_size:
            yield _stack(buf, batch_size)
            buf = []
    if buf:
        yield _stack(buf, batch_size)


def _stack(items, batch_size):
    n = len(items)
    items = items + [items[-1]] * (batch_size - n)
    out = {k: np.concatenate([it[k] for it in items]) for k in items[0]}
    out["valid"] = (np.arange(batch_size) < n) & out.get("valid", True)  # batch padding and shard padding
    return out


# ----------------------------------------------------------------------------- factory
def make_data_factory(data_cfg, seed: int = 0):
    """``data(split, mode, batch_size, train, seed=seed, **sampling)`` for the config's ``data``
    section (see the module docstring); ``data.builder_dir`` / ``data.builder_dirs``,
    ``data.dataset`` (descriptor of the evaluation dataset) and ``data.joint_convention`` describe it."""
    cfg = _as_dict(data_cfg)
    workers = int(cfg.get("num_workers", 0) or 0)
    target = cfg.get("joint_convention") or None
    entries = _mixture_entries(cfg) if cfg.get("mixture") else []
    if entries and not target:  # one joint order for the whole mixture: the first member's
        target = get_dataset(entries[0][0]["name"]).joint_convention
    members = [_Member.create(sub, seed, target) for sub, _ in entries]
    weights = [w for _, w in entries]
    main = None
    if cfg.get("name") or not entries:
        main = _Member.create(cfg, seed, target)
    lead = main or members[0]

    def data(split: str, mode: str, batch_size: int, train: bool, seed: int = seed, **sampling):
        local = _per_process(batch_size)
        prefetch = max(local, 1) * 2
        if train and members:
            dss, firsts = [], []
            for m in members:
                params = sampling_params(m.cfg, mode, sampling)
                dss.append(m.samples(split, mode, params, train=True, seed=seed, prefetch=prefetch))
                firsts.append(next(iter(m.samples(split, mode, params, train=True, seed=seed, prefetch=1))))
            ds = mix_datasets(dss, weights, [m.name for m in members], firsts)
            return iter(batch_dataset(ds, local, num_workers=workers))
        if main is None:
            raise ValueError("config key data.name is empty: with data.mixture, evaluation (train=False) needs "
                             "data.name to name the evaluation dataset")
        params = sampling_params(main.cfg, mode, sampling)
        if train:
            ds = main.samples(split, mode, params, train=True, seed=seed, prefetch=prefetch)
            return iter(batch_dataset(ds, local, num_workers=workers))
        ds = main.samples(split, mode, params, train=False, seed=0, prefetch=2)
        return _padded_batches(batch_dataset(ds, 1), local)

    data.builder_dir = lead.builder_dir
    data.builder_dirs = {m.name: m.builder_dir for m in ([main] if main else []) + members}
    data.dataset = lead.desc
    data.joint_convention = target or lead.desc.joint_convention
    return data
