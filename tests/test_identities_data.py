"""The built-in identities dataset: subjects (fixed shape and skin), disjoint train / test
subjects, enough calibration images, label consistency, shape spread, determinism."""
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.identities import build as build_cli
from data_pipelines.identities import ensure_built, load_subjects, make_config, split_index
from data_pipelines.identities import generate, scene
from data_pipelines.identities.identities_dataset_builder import VERSION
from data_pipelines.pipeline import FrameSource
from handjax.mano import from_axis_angle, load_model, mano_forward
from record_digests import check_digests

TINY = make_config("tiny")
DEFAULT = make_config("default")
S = TINY.image_size


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("identities_data"))


@pytest.fixture(scope="module")
def tiny_dir(data_dir):
    return ensure_built("tiny", data_dir)


@pytest.fixture(scope="module")
def splits(tiny_dir):
    return {split: [src[r] for r in range(len(src))] for split in ("train", "test")
            for src in [FrameSource(tiny_dir, split)]}


def test_layout_and_subject_metadata(tiny_dir, data_dir, splits):
    assert tiny_dir == os.path.join(data_dir, "identities", "tiny", VERSION)
    info = tfds.builder_from_directory(tiny_dir).info
    n_train = TINY.train_subjects * TINY.sequences_per_subject * TINY.frames
    n_test = TINY.test_subjects * TINY.test_sequences_per_subject * TINY.frames
    assert (info.splits["train"].num_examples, info.splits["test"].num_examples) == (n_train, n_test)
    meta = json.load(open(os.path.join(tiny_dir, "metadata.json")))
    for split, frames in splits.items():
        layout = meta["index"][split]
        assert [int(f["subject_id"]) for f in frames] == layout["subject_id"]
        assert [int(f["sequence_id"]) for f in frames] == layout["sequence_id"]
        assert [bool(f["annotated"]) for f in frames] == layout["annotated"]
        f = frames[0]
        assert f["image"].shape == (S, S, 3) and f["mask"].shape == (S, S) and f["subject_id"].dtype == np.int64
        assert all(bool(f["is_right"]) for f in frames)
    subjects = load_subjects(tiny_dir)
    assert subjects["train"] == [0, 1, 2] and subjects["test"] == [3, 4]
    # every stored frame carries its subject's ground-truth betas
    for frames in splits.values():
        for f in frames:
            np.testing.assert_array_equal(f["betas"], subjects["betas"][int(f["subject_id"])])


def test_subjects_disjoint_and_betas_fixed_per_subject(splits):
    per_split = {split: {int(f["subject_id"]) for f in frames} for split, frames in splits.items()}
    assert per_split["train"].isdisjoint(per_split["test"])
    betas = {}
    for frames in splits.values():
        for f in frames:
            betas.setdefault(int(f["subject_id"]), set()).add(f["betas"].tobytes())
    assert all(len(b) == 1 for b in betas.values())  # constant within a subject
    distinct = [np.frombuffer(next(iter(b)), np.float32) for b in betas.values()]
    assert len({d.tobytes() for d in distinct}) == len(distinct)  # different across subjects
    # a subject spans several sequences, a sequence one subject
    seqs = {}
    for frames in splits.values():
        for f in frames:
            seqs.setdefault(int(f["subject_id"]), set()).add(int(f["sequence_id"]))
    assert all(len(s) == TINY.sequences_per_subject for k, s in seqs.items() if k < TINY.train_subjects)


def test_skin_fixed_per_subject_and_sequences_vary():
    """The generator gives every sequence of a subject the same albedo and betas, different
    subjects different ones, and varies motion / background between sequences."""
    a, b = generate.sample_split_sequence(TINY, "train", 0), generate.sample_split_sequence(TINY, "train", 1)
    c = generate.sample_split_sequence(TINY, "train", 2)
    assert int(a["subject_id"]) == int(b["subject_id"]) == 0 and int(c["subject_id"]) == 1
    np.testing.assert_array_equal(a["colors"], b["colors"])
    np.testing.assert_array_equal(a["betas"], b["betas"])
    assert not np.array_equal(a["colors"], c["colors"]) and not np.array_equal(a["betas"][0], c["betas"][0])
    assert not np.array_equal(a["pose"], b["pose"]) and not np.array_equal(a["background"], b["background"])


def test_enough_calibration_frames_per_test_subject():
    for cfg, minimum in ((DEFAULT, 50), (TINY, TINY.test_sequences_per_subject * TINY.frames)):
        ids = np.asarray(split_index(cfg, "test")["subject_id"])
        counts = np.unique(ids, return_counts=True)[1]
        assert len(counts) == cfg.test_subjects and counts.min() >= minimum
        assert set(ids).isdisjoint(split_index(cfg, "train")["subject_id"])


def test_labels_reproduce_mano_and_projection(splits):
    model = load_model(None, "right")
    fs = splits["train"][::7] + splits["test"][::7]
    stack = lambda key: jnp.asarray(np.stack([f[key] for f in fs]))  # noqa: E731
    out = jax.jit(lambda pose, betas, transl: mano_forward(model, from_axis_angle(model, pose), betas, transl,
                                                           "freihand"))(stack("mano_pose"), stack("betas"),
                                                                        stack("transl"))
    np.testing.assert_allclose(np.asarray(out.vertices), np.stack([f["vertices"] for f in fs]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.joints), np.stack([f["joints3d"] for f in fs]), atol=1e-5)
    for f in fs:  # independent pinhole projection in numpy
        K, X = f["K"].astype(np.float64), f["joints3d"].astype(np.float64)
        np.testing.assert_allclose(f["joints2d"], (X @ K.T)[:, :2] / X[:, 2:], atol=1e-3)
        assert 0.02 < f["mask"].mean() < 0.9


def test_shapes_differ_visibly_at_the_crop_size():
    """Rest-pose bone lengths (scale removed, in pixels of a crop_size crop with 1.5x padding)
    differ by > 1 px in some bone between every two subjects of the default config."""
    n = DEFAULT.train_subjects + DEFAULT.test_subjects
    betas = generate.subject_betas(DEFAULT.seed, n, DEFAULT.crop_size)
    model = load_model(None, "right")
    forward = jax.jit(lambda b: mano_forward(model, from_axis_angle(model, jnp.zeros((n, 48))), b, None,
                                             "freihand").joints)
    joints = np.asarray(forward(jnp.asarray(betas)), np.float64)
    # independent bone lengths: freihand order, each finger's 4 joints chained from the wrist
    bones = []
    for finger in range(5):
        chain = [0] + [1 + 4 * finger + i for i in range(4)]
        bones += [np.linalg.norm(joints[:, chain[i + 1]] - joints[:, chain[i]], axis=-1) for i in range(4)]
    bones = np.stack(bones, axis=1)
    px = bones / np.linalg.norm(joints[:, 12] - joints[:, 0], axis=-1)[:, None] * (DEFAULT.crop_size / 1.5)
    np.testing.assert_allclose(scene.bone_lengths_px(joints, DEFAULT.crop_size), px, rtol=1e-12)
    gap = np.abs(px[:, None] - px[None]).max(-1)[np.triu_indices(n, 1)]
    assert gap.min() > 1.0 and np.median(gap) > 2.0
    assert np.abs(betas).max() <= scene.BETA_RANGE


def test_same_seed_same_bytes_other_seed_differs(tiny_dir, tmp_path, splits):
    again = build_cli.main(["--config", "tiny", "--data_dir", str(tmp_path)])
    files = sorted(glob.glob(os.path.join(tiny_dir, "*.array_record*")))
    assert files
    for path in files:
        with open(path, "rb") as a, open(os.path.join(again, os.path.basename(path)), "rb") as b:
            assert a.read() == b.read(), os.path.basename(path)
    assert load_subjects(again)["betas"][0].tobytes() == load_subjects(tiny_dir)["betas"][0].tobytes()
    other = make_config("tiny", seed=1)
    assert not np.array_equal(generate.subject_betas(other.seed, 5, other.crop_size),
                              generate.subject_betas(TINY.seed, 5, TINY.crop_size))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown identities config 'huge'"):
        make_config("huge")
    with pytest.raises(ValueError, match="unknown override"):
        make_config("tiny", subjects=3)
    with pytest.raises(ValueError, match="train_subjects must be >= 1"):
        make_config("tiny", train_subjects=0)
    assert make_config("default", train_subjects=8).name == "default_ns8"
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        load_subjects(tmp_path)


def test_reachable_through_the_data_factory(data_dir, tiny_dir):
    import ml_collections

    from data_pipelines import factory

    cfg = ml_collections.ConfigDict(dict(name="identities", builder_config="tiny", data_dir=data_dir, image_size=16,
                                         joint_convention="", num_workers=0, augment=dict(rotation=10.0)))
    data = factory.make_data_factory(cfg)
    assert data.builder_dir == tiny_dir
    b = next(data("test", "subject", 2, True, num_frames=5))  # N images of one test subject
    assert b["image"].shape == (2, 5, 16, 16, 3)
    assert np.all(b["subject_id"] == b["subject_id"][:, :1]) and set(b["subject_id"].ravel()) <= {3, 4}
    assert np.all(b["betas"] == b["betas"][:, :1])


def test_tiny_build_matches_recorded_digests(tiny_dir):
    # Every decoded feature of every record, metadata.json and features.json of the tiny build
    # equal the digests recorded (tests/builtin_record_digests.json) before the rendered
    # builders moved onto data_pipelines.builtin: same config and seed, same dataset.
    check_digests(tiny_dir, "identities")
