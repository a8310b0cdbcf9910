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
