"""data_pipelines.factory: the dataset descriptor table, sampling parameters per mode, subject
mode, the deterministic annotation fraction, mixtures (proportions, union format, resume) and
the real datasets reachable by name (DexYCB / FPHAB / InterHand2.6M on their test fixtures)."""
import os

import ml_collections
import numpy as np
import pytest

from data_pipelines import factory, samplers
from data_pipelines.pipeline import FrameSource, make_sample_dataset
from data_pipelines.synthetic_hands import ensure_built

CROP = 16


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    # Same directory as tests/test_pipeline.py / test_synthetic_data.py: built once per session.
    data_dir = str(tmp_path_factory.getbasetemp() / "synthetic_hands_data")
    ensure_built("tiny", data_dir)
    return data_dir


def synth_cfg(data_dir, **kw):
    base = dict(name="synthetic_hands", builder_config="tiny", data_dir=data_dir, image_size=CROP,
                joint_convention="", num_workers=0, augment=dict(rotation=10.0))
    base.update(kw)
    return ml_collections.ConfigDict(base)


# ----------------------------------------------------------------------------- descriptors
def test_every_descriptor_is_consistent():
    from handjax import mano

    assert {"synthetic_hands", "freihand", "ho3d", "dexycb", "fphab", "interhand"} <= set(factory.DATASETS)
    for name, desc in factory.DATASETS.items():
        mano.get_convention(desc.joint_convention)  # a known convention
        assert set(desc.labels) <= set(factory.LABEL_KINDS), name
        assert desc.hands in (1, 2)
        assert set(desc.eval_crop) <= {"crop_from", "bbox_pad"}, name
        module = __import__(desc.module, fromlist=["ensure_built"])
        assert callable(module.ensure_built), name


def test_unknown_name_names_the_key_and_lists_known(synth_dir):
    with pytest.raises(ValueError) as err:
        factory.make_data_factory(synth_cfg(synth_dir, name="synthetic_handz"))
    msg = str(err.value)
    assert "data.name='synthetic_handz'" in msg
    for name in factory.DATASETS:
        assert name in msg


# ----------------------------------------------------------------------------- sampling parameters
def test_sampling_params_are_forwarded(synth_dir):
    data = factory.make_data_factory(synth_cfg(synth_dir, sampling=dict(window=dict(k=3, window=1))))
    b = next(data("train", "window", 4, True))  # config defaults: k=3, no negatives
    assert b["image"].shape == (4, 3, CROP, CROP, 3) and b["in_window"].all()
    b = next(data("train", "window", 4, True, k=2, num_negatives=2))  # caller overrides
    assert b["image"].shape == (4, 4, CROP, CROP, 3)
    np.testing.assert_array_equal(b["in_window"][0], [True, True, False, False])
    dt = np.abs(b["frame_index"] - b["frame_index"][:, :1])
    assert np.all(dt[:, 1] <= 1) and np.all(dt[:, 2:] > 1) and np.all(b["sequence_id"] == b["sequence_id"][:, :1])
    # legacy keys (TempCLR configs) still give window mode's defaults
    legacy = factory.make_data_factory(synth_cfg(synth_dir, window=0, extra_negatives=1))
    b = next(legacy("train", "window", 4, True))
    assert b["image"].shape[1] == 3 and np.all(b["frame_index"][:, 1] == b["frame_index"][:, 0])


def test_pair_mode_options_and_alias(synth_dir):
    data = factory.make_data_factory(synth_cfg(synth_dir))
    for mode in ("pair", "sparse_pair"):
        b = next(data("train", mode, 8, True, unannotated_only=True, max_distance=1))
        assert b["image"].shape[:2] == (8, 2)
        assert not b["annotated"][:, 0].any() and b["annotated"][:, 1].all()
        assert np.all(np.abs(b["frame_index"][:, 1] - b["frame_index"][:, 0]) <= 1)
    # tiny: every 2nd frame annotated, so a limit of 0 leaves no unannotated query
    with pytest.raises(ValueError, match="0 anchor frame"):
        data("train", "pair", 8, True, unannotated_only=True, max_distance=0)


def test_unknown_sampling_parameters_are_errors(synth_dir):
    data = factory.make_data_factory(synth_cfg(synth_dir))
    with pytest.raises(ValueError, match=r"'window_size'.*window mode"):
        data("train", "window", 4, True, window_size=3)
    with pytest.raises(ValueError, match=r"'k'.*frame mode"):
        data("train", "frame", 4, True, k=3)
    with pytest.raises(ValueError, match=r"data.sampling.pair.*'num_frames'.*pair mode"):
        factory.make_data_factory(synth_cfg(synth_dir, sampling=dict(pair=dict(num_frames=2))))(
            "train", "pair", 4, True)
    with pytest.raises(ValueError, match="sampling mode 'video' unknown"):
        data("train", "video", 4, True)
    with pytest.raises(ValueError, match="subject mode needs the subject_id label"):
        data("train", "subject", 4, True)


# ----------------------------------------------------------------------------- subject mode
class SubjectSource:
    """Small in-memory source: 3 subjects with 5, 3 and 1 records (interleaved)."""

    def __init__(self):
        self.subjects = np.array([0, 1, 0, 2, 1, 0, 0, 1, 0])
        n = len(self.subjects)
        self.index = samplers.SequenceIndex.from_arrays(np.arange(n), np.zeros(n))
        self.subject_index = samplers.SubjectIndex.from_arrays(self.subjects)
        rng = np.random.default_rng(0)
        self.frames = []
        for r in range(n):
            j3 = rng.normal(0, 0.03, (21, 3)) + [0, 0, 0.5]
            K = np.array([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
            uv = j3 @ K.T
            self.frames.append(dict(
                image=np.full((32, 32, 3), 10 * r, np.uint8), mask=np.zeros((32, 32), bool),
                part_seg=np.zeros((32, 32), np.uint8), joints3d=j3.astype(np.float32),
                joints2d=(uv[:, :2] / uv[:, 2:]).astype(np.float32), vertices=np.zeros((778, 3), np.float32),
                mano_pose=np.zeros(48, np.float32), betas=np.zeros(10, np.float32), transl=np.zeros(3, np.float32),
                K=K.astype(np.float32), is_right=np.bool_(True), annotated=np.bool_(True),
                sequence_id=np.int64(r), frame_index=np.int64(0), record=np.int64(r),
                subject_id=np.int64(self.subjects[r])))

    def __len__(self):
        return len(self.subjects)

    def __getitem__(self, r):
        return dict(self.frames[int(r)])


def test_subject_index_against_brute_force():
    subj = np.random.default_rng(1).integers(0, 4, 40)
    index = samplers.SubjectIndex.from_arrays(subj)
    for r in range(len(subj)):
        np.testing.assert_array_equal(index.subject_records(r), np.flatnonzero(subj == subj[r]))
    rng = np.random.default_rng(0)
    for r in range(len(subj)):
        recs = samplers.sample_subject(index, r, rng, 3)
        assert recs[0] == r and len(set(recs[1:])) == 2 and r not in recs[1:] and np.all(subj[recs] == subj[r])
    np.testing.assert_array_equal(samplers.subject_anchors(samplers.SubjectIndex.from_arrays([0, 1, 1]), 2), [1, 2])


def test_subject_mode_returns_frames_of_one_subject():
    src = SubjectSource()
    ds = make_sample_dataset(src, mode="subject", num_frames=4, image_size=16, shard_index=0, shard_count=1,
                             num_epochs=1, seed=3)
    samples = list(ds)
    assert len(samples) == len(src)
    for s in samples:
        assert s["image"].shape == (4, 16, 16, 3)
        assert len(set(s["subject_id"].tolist())) == 1
        subject = int(s["subject_id"][0])
        others = s["record"][1:]
        n_subject = int(np.sum(src.subjects == subject))
        if n_subject > 4:  # enough records: distinct frames other than the anchor
            assert len(set(others.tolist())) == 3 and s["record"][0] not in others
        if n_subject == 1:
            assert np.all(s["record"] == s["record"][0])


# ----------------------------------------------------------------------------- annotation fraction
class _TwoHandFrames:
    """Three frames of one sequence with per-hand world-fit flags and a RootNet input."""

    def __init__(self):
        self.index = samplers.SequenceIndex.from_arrays(np.zeros(3, int), np.arange(3), np.ones(3, bool))

    def __len__(self):
        return 3

    def __getitem__(self, record):
        return {"joints3d": np.full((42, 3), record, np.float32), "has_joints3d": np.bool_(True),
                "has_mano_world": np.array([True, False]), "has_rootnet": np.bool_(True)}


def test_label_fraction_clears_labels_and_optional_flags_only():
    src = factory.LabelFractionSource(_TwoHandFrames(), np.array([True, False, True]))
    kept, dropped = src[0], src[1]
    assert kept["has_joints3d"] and kept["annotated"] and kept["has_mano_world"].tolist() == [True, False]
    assert not dropped["has_joints3d"] and not dropped["annotated"] and not dropped["has_mano"]
    assert dropped["has_mano_world"].tolist() == [False, False]  # per-hand world fits are labels: cleared
    assert dropped["has_rootnet"]  # an input, not a label: stays
    np.testing.assert_array_equal(dropped["joints3d"], 1.0)  # values stay (crops are built from them)
    class _OneHandFrames(_TwoHandFrames):
        def __getitem__(self, record):
            return {"joints3d": np.zeros((21, 3), np.float32)}

    assert "has_mano_world" not in factory.LabelFractionSource(_OneHandFrames(), np.ones(3, bool))[0]
    assert src.index.annotated.tolist() == [True, False, True]


def test_fraction_mask_deterministic_with_expected_count():
    ann = np.arange(50) % 3 != 0  # 33 annotated
    a = samplers.annotation_fraction_mask(ann, 0.25, seed=7)
    b = samplers.annotation_fraction_mask(ann, 0.25, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == round(0.25 * 33) and not np.any(a & ~ann)
    assert not np.array_equal(a, samplers.annotation_fraction_mask(ann, 0.25, seed=8))
    assert samplers.annotation_fraction_mask(ann, 1.0, 0).sum() == 33
    assert samplers.annotation_fraction_mask(ann, 0.0, 0).sum() == 0
    with pytest.raises(ValueError, match="fraction"):
        samplers.annotation_fraction_mask(ann, 1.5, 0)


def _labelled_records(batches):
    out = {}
    for b in batches:
        for r, ann, j3, valid in zip(b["record"], b["annotated"], b["has_joints3d"], b["valid"]):
            if valid:
                assert bool(ann) == bool(j3)
                out[int(r)] = bool(ann)
    return out


def test_fraction_is_deterministic_and_the_same_on_every_process(synth_dir):
    cfg = synth_cfg(synth_dir, sampling=dict(fraction=0.5))  # every mode's default
    first = _labelled_records(factory.make_data_factory(cfg, seed=4)("train", "frame", 8, False))
    again = _labelled_records(factory.make_data_factory(cfg, seed=4)("train", "frame", 8, False))
    annotated = FrameSource(factory.make_data_factory(cfg).builder_dir, "train").index.annotated
    assert first == again and len(first) == len(annotated) == 32
    assert sum(first.values()) == round(0.5 * annotated.sum())
    assert all(annotated[r] for r, kept in first.items() if kept)
    other = _labelled_records(factory.make_data_factory(cfg, seed=5)("train", "frame", 8, False))
    assert sum(other.values()) == sum(first.values()) and other != first
    # simulated processes: each builds its own source and reads its own shard
    member = factory._Member.create(factory._as_dict(cfg), 4, None)
    params = factory.sampling_params(member.cfg, "frame", {})
    seen = {}
    for shard in range(2):
        ds = make_sample_dataset(member.source("train", params), mode="frame", image_size=CROP, shard_index=shard,
                                 shard_count=2, shuffle=False, num_epochs=1)
        for s in ds:
            seen[int(s["record"])] = bool(s["annotated"])
    assert seen == first
    # pair mode references are the frames that kept their labels
    b = next(factory.make_data_factory(cfg, seed=4)("train", "pair", 8, True))
    assert all(first[int(r)] for r in b["record"][:, 1])


# ----------------------------------------------------------------------------- mixtures
def mixture_cfg(synth_dir, weights=(3.0, 1.0)):
    return synth_cfg(synth_dir, name="", mixture=[("synthetic_hands", weights[0]),
                                                  dict(name="synthetic_hands", weight=weights[1],
                                                       augment=dict(rotation=0.0))])


def test_mixture_proportions(synth_dir):
    data = factory.make_data_factory(mixture_cfg(synth_dir))
    it = data("train", "frame", 8, True)
    ids = np.concatenate([next(it)["dataset"] for _ in range(8)])
    assert abs(np.mean(ids == 0) - 0.75) < 0.05
    assert abs(np.mean(ids == 1) - 0.25) < 0.05
    with pytest.raises(ValueError, match="data.name is empty"):
        data("test", "frame", 8, False)


def test_mixture_resume_continues_the_same_order(synth_dir):
    data = factory.make_data_factory(mixture_cfg(synth_dir, (1.0, 1.0)))
    it = data("train", "frame", 4, True)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    fresh = data("train", "frame", 4, True)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_mixture_bad_entries(synth_dir):
    with pytest.raises(ValueError, match=r"data.mixture\[0\].*weight must be > 0"):
        factory.make_data_factory(synth_cfg(synth_dir, mixture=[("synthetic_hands", 0.0)]))
    with pytest.raises(ValueError, match="data.name='nope'"):
        factory.make_data_factory(synth_cfg(synth_dir, mixture=[("nope", 1.0)]))


# ----------------------------------------------------------------------------- real datasets by name
def _write_builtin_mano_folder(folder):
    """MANO_RIGHT/LEFT.pkl holding the built-in hands (the DexYCB fixture's model)."""
    import pickle

    from handjax.mano.builtin import builtin_mano_arrays

    os.makedirs(folder, exist_ok=True)
    for side in ("right", "left"):
        with open(os.path.join(folder, f"MANO_{side.upper()}.pkl"), "wb") as fh:
            pickle.dump(builtin_mano_arrays(side), fh, protocol=4)
    return str(folder)


def _eval_frames(data, split):
    out = []
    for b in data(split, "frame", 4, False):
        for i in np.flatnonzero(b["valid"]):
            out.append({k: v[i] for k, v in b.items()})
    return out


def test_dexycb_by_name(tmp_path, synth_dir):
    import jax.numpy as jnp

    from data_pipelines.dexycb import layout
    from handjax.mano import from_axis_angle, load_model, mano_forward
    from test_dexycb_data import CAM, SEQS, write_dexycb

    raw = str(tmp_path / "raw")
    write_dexycb(raw)
    base = dict(name="dexycb", builder_config="s1", sequences_per_subject=SEQS, serials=[CAM],
                data_dir=str(tmp_path / "data"), manual_dir=raw, image_size=8, augment={}, num_workers=0)
    plain = factory.make_data_factory(ml_collections.ConfigDict(base))
    assert plain.builder_dir.endswith(os.path.join("dexycb", f"s1_seq{SEQS}_cam{CAM}", "1.0.0"))
    assert plain.joint_convention == "manopth"
    frames = _eval_frames(plain, "train")
    assert frames and not any(f["has_mano"] or f["has_transl"] or f["has_vertices"] for f in frames)
    assert all(f["has_mask"] for f in frames)
    assert "object_poses" not in frames[0] and frames[0]["grasp_object_pose"].shape == (3, 4)
    # the mask is the seg's hand label (255), read through the adapter
    src = factory.DatasetSource(plain.builder_dir, "train", None, factory.DexYCBAdapter({}))
    f0 = src[0]
    expected = np.zeros((8, 10), bool)
    expected[2:5, 3:7] = True
    np.testing.assert_array_equal(f0["mask"], expected)
    subjects = {int(f["subject_id"]) for f in frames}
    assert subjects and all(0 <= s < len(layout.SUBJECTS) for s in subjects)

    # with the MANO model the PCA poses become flat-mean axis-angle that reproduce joint_3d
    with_mano = factory.make_data_factory(ml_collections.ConfigDict(
        dict(base, mano_model=_write_builtin_mano_folder(tmp_path / "mano"))))
    frames = _eval_frames(with_mano, "train")
    assert all(f["has_mano"] and f["has_transl"] for f in frames)
    models = {True: load_model(None, "right"), False: load_model(None, "left")}
    for f in frames:
        model = models[bool(f["is_right"])]
        rot = from_axis_angle(model, jnp.asarray(f["mano_pose"]), flat_hand_mean=True)
        joints = mano_forward(model, rot, jnp.asarray(f["betas"]), jnp.asarray(f["transl"]),
                              layout.mano_convention()).joints
        np.testing.assert_allclose(np.asarray(joints), f["joints3d"], atol=2e-5)

    # subject mode (DexYCB carries subject ids)
    b = next(with_mano("train", "subject", 4, True, num_frames=3))
    assert b["image"].shape == (4, 3, 8, 8, 3) and np.all(b["subject_id"] == b["subject_id"][:, :1])

    # a mixture with the synthetic data: one batch format, absent labels zero-filled and flagged False
    mixed = factory.make_data_factory(ml_collections.ConfigDict(dict(base, name="", mixture=[
        dict(name="synthetic_hands", builder_config="tiny", data_dir=synth_dir, weight=1.0), ("dexycb", 1.0)])))
    b = next(mixed("train", "frame", 16, True))
    synth, dex = b["dataset"] == 0, b["dataset"] == 1
    assert synth.any() and dex.any()
    assert np.all(b["has_vertices"] == synth) and np.all(b["has_part_seg"] == synth)
    assert not np.any(b["vertices"][dex]) and not np.any(b["part_seg"][dex])
    assert np.all(b["has_grasp_object_pose"] == dex) and not np.any(b["grasp_object_pose"][synth])
    assert np.all(b["has_mask"]) and "has_joints3d" not in b  # both carry joints: no flag needed
    assert np.all(b["has_mano"][synth]) and not np.any(b["has_mano"][dex])  # no MANO model given


def test_fphab_by_name(tmp_path):
    from test_fphab_data import write_fphab

    root = str(tmp_path / "raw")
    write_fphab(root)
    cfg = dict(name="fphab", data_dir=str(tmp_path / "data"), manual_dir=root, image_size=8, augment={},
               num_workers=0)
    data = factory.make_data_factory(ml_collections.ConfigDict(cfg))
    assert data.builder_dir.endswith(os.path.join("fphab", "hand_object_480", "1.0.0"))
    frames = _eval_frames(data, "train")
    assert frames
    for f in frames:
        p = f["joints3d"].astype(np.float64) @ f["K"].astype(np.float64).T
        np.testing.assert_allclose(p[:, :2] / p[:, 2:], f["joints2d"], atol=1e-3)
        assert f["subject_id"] in (1, 3, 4) and f["object_pose"].shape == (4, 4)
    fitted = [f for f in frames if f["has_mano"]]
    assert fitted and all(f["subject_id"] == 1 for f in fitted)  # only Subject_1's sequence has fits
    assert not all(f["has_mano"] for f in frames)


@pytest.fixture(scope="module")
def interhand(tmp_path_factory):
    from test_interhand_data import true_models, write_interhand, write_mano_models

    tmp = tmp_path_factory.mktemp("ih_factory")
    mano_dir = write_mano_models(str(tmp / "mano"))
    raw = str(tmp / "raw")
    truth = write_interhand(raw, true_models(mano_dir))
    cfg = dict(name="interhand", data_dir=str(tmp / "data"), manual_dir=raw, mano_model=mano_dir, image_size=8,
               augment={}, num_workers=0)
    return {"cfg": cfg, "truth": truth, "models": true_models(mano_dir), "tmp": tmp}


def _member_frames(cfg, split, **params):
    member = factory._Member.create(cfg, 0, None)
    src = member.source(split, factory.sampling_params(cfg, "frame", params))
    return [src[r] for r in range(len(src))]


def test_interhand_by_name_gives_two_hand_samples(interhand):
    import jax.numpy as jnp

    from handjax.mano import from_axis_angle, mano_forward

    data = factory.make_data_factory(ml_collections.ConfigDict(interhand["cfg"]))
    assert data.dataset.hands == 2 and data.joint_convention == "ih26m"
    frames = _member_frames(interhand["cfg"], "train")
    truth = interhand["truth"]["train"]
    assert [int(f["annot_id"]) for f in frames] == sorted(truth)
    for f in frames:
        t = truth[int(f["annot_id"])]
        assert f["joints3d"].shape == (42, 3) and f["mano_pose"].shape == (2, 48) and f["hand_box"].shape == (2, 4)
        np.testing.assert_array_equal(f["hand_valid"], [t["valid"][:21].any(), t["valid"][21:].any()])
        np.testing.assert_array_equal(f["mano_valid"], [t["present"]["right"], t["present"]["left"]])
        assert int(f["hand_type"]) == ("right", "left", "interacting").index(t["hand_type"])
        np.testing.assert_allclose(f["rel_root"], f["joints3d"][41] - f["joints3d"][20], atol=1e-6)
        np.testing.assert_allclose(f["bbox"], [1.0, 2.0, 6.0, 8.0])  # (x, y, w, h) -> corners
        assert f["has_mano"] and not f["has_vertices"]
        for h, hand in enumerate(("right", "left")):
            if not t["present"][hand]:
                continue
            model = interhand["models"][hand]
            rot = from_axis_angle(model, jnp.asarray(f["mano_pose"][h]), flat_hand_mean=True)  # absolute pose
            joints = mano_forward(model, rot, jnp.asarray(f["betas"][h]), jnp.asarray(f["transl"][h]), "ih26m").joints
            np.testing.assert_allclose(np.asarray(joints), f["joints3d"][21 * h:21 * h + 21], atol=2e-5)
            valid = t["valid"][21 * h:21 * h + 21]
            pts = f["joints2d"][21 * h:21 * h + 21][valid]
            np.testing.assert_allclose(f["hand_box"][h], np.concatenate([pts.min(0), pts.max(0)]), atol=1e-5)


def test_interhand_subset_file(interhand, tmp_path):
    listing = tmp_path / "aid_human_annot_train.txt"
    listing.write_text("12\n10\n")
    cfg = dict(interhand["cfg"], subset_file=str(tmp_path / "aid_human_annot_{split}.txt"))
    assert [int(f["annot_id"]) for f in _member_frames(cfg, "train")] == [10, 12]
    by_split = dict(interhand["cfg"], subset_file={"train": str(listing)})
    assert len(_member_frames(by_split, "train")) == 2  # no file for the test split: all of it
    assert len(_member_frames(by_split, "test")) == len(interhand["truth"]["test"])
    listing.write_text("10\n99\n98\n")
    with pytest.raises(ValueError, match=r"2 id\(s\) not in split 'train' of interhand.*99, 98"):
        _member_frames(cfg, "train")
    with pytest.raises(FileNotFoundError, match="aid_human_annot_test.txt"):
        _member_frames(cfg, "test")


def test_interhand_batches_through_the_factory(interhand, synth_dir):
    data = factory.make_data_factory(ml_collections.ConfigDict(dict(interhand["cfg"], crop="person")))
    b = next(data("train", "window", 2, True, k=2, window=5))
    assert b["image"].shape == (2, 2, 8, 6, 3) and b["joints2d"].shape == (2, 2, 42, 2)
    assert b["mano_pose"].shape == (2, 2, 2, 48) and b["hand_valid"].shape == (2, 2, 2)
    assert np.all(b["sequence_id"] == b["sequence_id"][:, :1])
    evals = list(factory.make_data_factory(ml_collections.ConfigDict(interhand["cfg"]))("test", "frame", 4, False))
    assert sum(int(e["valid"].sum()) for e in evals) == len(interhand["truth"]["test"])
    with pytest.raises(ValueError, match="data.crop='person' is for two-hand datasets"):
        factory.make_data_factory(synth_cfg(synth_dir, crop="person"))


def test_interhand_part_seg_is_cropped_and_swapped_on_flips(interhand):
    """DIGIT's part labels (rendered at build time) reach batches as a label image: the record's
    map resampled (nearest) through the crop affine, classes 1..16 <-> 17..32 on a flip."""
    import grain
    import tensorflow_datasets as tfds

    cfg = dict(interhand["cfg"], augment=dict(flip="random", rotation=25.0, scale=0.2))
    data = factory.make_data_factory(ml_collections.ConfigDict(cfg))
    ds = grain.MapDataset.source(tfds.builder_from_directory(data.builder_dir).as_data_source("train"))
    recs = {int(r["annot_id"]): r for r in (ds[i] for i in range(len(ds)))}
    b = next(data("train", "frame", 12, True))
    assert b["part_seg"].shape == (12, 8, 8) and b["part_seg"].dtype == np.int32
    checked = {True: 0, False: 0}
    for i in range(12):
        rec = recs[int(b["annot_id"][i])]
        src = rec["part_seg"][..., 0].astype(np.int64)
        assert bool(b["has_part_seg"][i]) == bool(rec["has_part_seg"])
        flip = bool(b["aug_flip"][i])
        inv = np.linalg.inv(b["crop_affine"][i].astype(np.float64))
        jj, ii = np.meshgrid(np.arange(8), np.arange(8))
        pts = np.stack([jj, ii, np.ones_like(jj)], -1).reshape(-1, 3) @ inv.T
        col, row = np.floor(pts[:, 0] + 0.5).astype(int), np.floor(pts[:, 1] + 0.5).astype(int)
        ok = (row >= 0) & (row < src.shape[0]) & (col >= 0) & (col < src.shape[1])
        want = np.where(ok, src[np.clip(row, 0, src.shape[0] - 1), np.clip(col, 0, src.shape[1] - 1)], 0)
        if flip:  # right parts 1..16 <-> left parts 17..32
            want = np.where((want >= 1) & (want <= 16), want + 16, np.where(want > 16, want - 16, want))
        frac = np.abs((pts[:, :2] + 0.5) % 1.0 - 0.5)  # away from the nearest-neighbour ties
        clear = np.all(frac < 0.499, axis=1)
        np.testing.assert_array_equal(b["part_seg"][i].reshape(-1)[clear], want[clear])
        if want.any():
            checked[flip] += 1
    assert checked[True] and checked[False]
