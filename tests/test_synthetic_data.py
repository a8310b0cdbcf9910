"""The synthetic hand-video tfds dataset: build, layout, label consistency, determinism."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.pipeline import FrameSource
from data_pipelines.synthetic_hands import build as build_cli
from data_pipelines.synthetic_hands import ensure_built, make_config, scene
from data_pipelines.synthetic_hands import renderer
from data_pipelines.synthetic_hands.synthetic_hands_dataset_builder import VERSION
from data_pipelines.transforms import axis_angle_to_matrix
from handjax.mano import from_axis_angle, load_model, mano_forward
from handjax.mano.builtin import builtin_mano_arrays
from handjax.render import MANO_WRIST_BOUNDARY_IDS, part_segmentation
from record_digests import check_digests

TINY = make_config("tiny")
S = TINY.image_size


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # Shared with tests/test_pipeline.py within one pytest session (ensure_built reuses it).
    return str(tmp_path_factory.getbasetemp() / "synthetic_hands_data")


@pytest.fixture(scope="module")
def tiny_dir(data_dir):
    return ensure_built("tiny", data_dir)


@pytest.fixture(scope="module")
def train(tiny_dir):
    return FrameSource(tiny_dir, "train")


@pytest.fixture(scope="module")
def raw_train(tiny_dir):
    return tfds.builder_from_directory(tiny_dir).as_data_source("train")


def test_builder_directory_layout(tiny_dir, data_dir):
    assert tiny_dir == os.path.join(data_dir, "synthetic_hands", "tiny", VERSION)
    info = tfds.builder_from_directory(tiny_dir).info
    assert info.splits["train"].num_examples == TINY.num_sequences * TINY.frames
    assert info.splits["test"].num_examples == TINY.test_sequences * TINY.frames
    assert info.file_format.value == "array_record"
    assert info.disable_shuffling
    # ensure_built returns the existing build without rebuilding
    mtime = os.path.getmtime(os.path.join(tiny_dir, "dataset_info.json"))
    assert ensure_built("tiny", data_dir) == tiny_dir
    assert os.path.getmtime(os.path.join(tiny_dir, "dataset_info.json")) == mtime


def test_raw_features_shapes_and_dtypes(raw_train):
    ex = raw_train[3]
    expect = {"image": ((S, S, 3), np.uint8), "mask": ((S, S, 1), np.uint8), "part_seg": ((S, S, 1), np.uint8),
              "joints2d": ((21, 2), np.float32), "joints3d": ((21, 3), np.float32),
              "vertices": ((778, 3), np.float32), "mano_pose": ((48,), np.float32), "betas": ((10,), np.float32),
              "transl": ((3,), np.float32), "K": ((3, 3), np.float32)}
    assert set(ex) == set(expect) | {"is_right", "sequence_id", "frame_index", "annotated"}
    for key, (shape, dtype) in expect.items():
        assert ex[key].shape == shape and ex[key].dtype == dtype, key
    assert isinstance(ex["is_right"], (bool, np.bool_)) and isinstance(ex["annotated"], (bool, np.bool_))
    assert int(ex["sequence_id"]) == 0 and int(ex["frame_index"]) == 3
    assert set(np.unique(ex["mask"])) <= {0, 255}


def test_decoded_frame_types(train):
    f = train[5]
    assert f["image"].shape == (S, S, 3) and f["image"].dtype == np.uint8
    assert f["mask"].shape == (S, S) and f["mask"].dtype == bool
    assert f["part_seg"].shape == (S, S) and f["part_seg"].dtype == np.uint8
    assert f["is_right"].dtype == np.bool_ and f["sequence_id"].dtype == np.int64 and f["record"] == 5


def test_record_order_matches_metadata_index(tiny_dir, train):
    meta = json.load(open(os.path.join(tiny_dir, "metadata.json")))
    for split, first_id in (("train", 0), ("test", TINY.num_sequences)):
        layout = meta["index"][split]
        src = train if split == "train" else FrameSource(tiny_dir, "test")
        n = TINY.frames * (TINY.num_sequences if split == "train" else TINY.test_sequences)
        assert len(layout["sequence_id"]) == n
        for r in range(n):
            f = src[r]
            assert (f["sequence_id"], f["frame_index"], f["annotated"]) == (
                layout["sequence_id"][r], layout["frame_index"][r], layout["annotated"][r])
            assert f["sequence_id"] == first_id + r // TINY.frames and f["frame_index"] == r % TINY.frames
    # sparse supervision: every 2nd frame and the last frame of each sequence
    assert meta["index"]["train"]["annotated"][:TINY.frames] == [True, False, True, True]


def test_sides_and_labels_per_sequence(train):
    sides = {}
    for r in range(len(train)):
        f = train[r]
        sides.setdefault(int(f["sequence_id"]), set()).add(bool(f["is_right"]))
        labels = np.unique(f["part_seg"][f["mask"]])
        lo, hi = (1, 16) if f["is_right"] else (17, 32)
        assert labels.min() >= lo and labels.max() <= hi
        np.testing.assert_array_equal(f["mask"], f["part_seg"] > 0)
        assert 0.02 < f["mask"].mean() < 0.9  # a hand fills a good part of the image
    assert all(len(s) == 1 for s in sides.values())  # one hand per sequence
    assert {True, False} == set().union(*sides.values())  # both sides occur


def test_labels_reproduce_mano_and_projection(train):
    models = {True: load_model(None, "right"), False: load_model(None, "left")}
    for r in (0, 5, 13, 22, 31):
        f = train[r]
        m = models[bool(f["is_right"])]
        out = mano_forward(m, from_axis_angle(m, jnp.asarray(f["mano_pose"])), jnp.asarray(f["betas"]),
                           jnp.asarray(f["transl"]), "freihand")
        np.testing.assert_allclose(np.asarray(out.vertices), f["vertices"], atol=1e-5)
        np.testing.assert_allclose(np.asarray(out.joints), f["joints3d"], atol=1e-5)
        # independent pinhole projection in numpy
        K, X = f["K"].astype(np.float64), f["joints3d"].astype(np.float64)
        uv = (X @ K.T)[:, :2] / X[:, 2:]
        np.testing.assert_allclose(f["joints2d"], uv, atol=1e-3)
        assert K[0, 0] == K[1, 1] and K[0, 1] == 0 and np.all(X[:, 2] > 0.2)
        assert 0.3 < float(np.median(X[:, 2])) < 0.9  # hands 0.3-0.8 m in front of the camera


def test_mask_and_parts_match_independent_rendering(train):
    """handjax.render.part_segmentation of the stored vertices (wrist sealed) reproduces the
    stored part segmentation and mask exactly, for right and left hands."""
    models = renderer.builtin_models()
    seen = set()
    for r in range(0, len(train), 3):
        f = train[r]
        v = jnp.asarray(f["vertices"])
        sealed = jnp.concatenate([v, v[np.array(MANO_WRIST_BOUNDARY_IDS)].mean(0, keepdims=True)])
        right = bool(f["is_right"])
        ref = part_segmentation(sealed, sealed, models.faces, models.face_labels, jnp.asarray(f["K"]), (S, S),
                                right_valid=right, left_valid=not right)
        np.testing.assert_array_equal(np.asarray(ref), f["part_seg"])
        seen.add(right)
        # projected visible geometry lies in the mask: joints of the hand project near mask pixels
        rows, cols = np.nonzero(f["mask"])
        inside = (f["joints2d"][:, 0] >= 0) & (f["joints2d"][:, 0] < S) & (f["joints2d"][:, 1] >= 0) & \
                 (f["joints2d"][:, 1] < S)
        d = np.min(np.hypot(f["joints2d"][inside, None, 0] - cols, f["joints2d"][inside, None, 1] - rows), axis=1)
        assert np.all(d < 2.0)  # joints lie inside the closed mesh: their projections hit the silhouette
    assert seen == {True, False}


def test_motion_is_smooth_and_hands_vary(train):
    steps, spans = [], []
    for seq in range(TINY.num_sequences):
        joints = np.stack([train[seq * TINY.frames + t]["joints3d"] for t in range(TINY.frames)])
        steps.append(np.linalg.norm(np.diff(joints, axis=0), axis=-1).mean(axis=-1).max())
        spans.append(np.linalg.norm(joints[:, 12] - joints[:, 0], axis=-1))  # wrist -> middle tip
    assert max(steps) < 0.06  # mean joint displacement between consecutive frames below 6 cm
    assert min(steps) > 1e-4  # and the hand does move
    spans = np.concatenate(spans)
    assert spans.min() > 0.05 and spans.max() < 0.25


def test_determinism_and_seed(train, data_dir):
    """Sequences depend only on (seed, split, number): a 1-sequence build equals the first
    sequence of the tiny build bit for bit; another seed differs."""
    same = FrameSource(build_cli.main(["--config", "tiny", "--num_sequences", "1", "--test_sequences", "1",
                                       "--data_dir", data_dir]), "train")
    other = FrameSource(ensure_built("tiny", data_dir, num_sequences=1, test_sequences=1, seed=1), "train")
    assert len(same) == TINY.frames
    for r in range(TINY.frames):
        a, b, c = train[r], same[r], other[r]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert not np.array_equal(a["image"], c["image"])
        assert not np.array_equal(a["mano_pose"], c["mano_pose"])


def test_make_config_overrides_and_errors():
    cfg = make_config("default", num_sequences=50, image_size=96, seed=3)
    assert cfg.name == "default_n50_s96_seed3" and cfg.frames == make_config("default").frames
    assert make_config("tiny", num_sequences=TINY.num_sequences) is make_config("tiny")
    with pytest.raises(ValueError, match="unknown override"):
        make_config("tiny", colour=1)
    with pytest.raises(ValueError, match="unknown synthetic_hands config"):
        make_config("huge")
    with pytest.raises(ValueError, match="frames must be >= 1"):
        make_config("tiny", frames=0)


def test_pose_space_flexion_curls_towards_palm():
    """Positive flexion about PoseSpace.flex bends each finger towards the palm side, for
    the right model and (mirrored pose) for the left model."""
    arrays = builtin_mano_arrays("right")
    rig = scene.HandRig.from_arrays(arrays, renderer.posed_centroid)
    space = rig.space
    for side in ("right", "left"):
        m = load_model(None, side)
        for chain, tip in ((scene.FINGER_CHAINS["index"], 8), (scene.FINGER_CHAINS["pinky"], 20),
                           (scene.THUMB_CHAIN, 4)):
            aa = np.zeros((16, 3))
            for j in chain:
                aa[j] = np.deg2rad(40.0) * space.flex[j]
            if side == "left":
                aa = aa * np.array([1.0, -1.0, -1.0])
            rest = mano_forward(m, from_axis_angle(m, jnp.zeros((48,))), None, None, "freihand").joints
            bent = mano_forward(m, from_axis_angle(m, jnp.asarray(aa.reshape(48), jnp.float32)), None, None,
                                "freihand").joints
            palm = space.palm * (np.array([-1.0, 1.0, 1.0]) if side == "left" else 1.0)
            assert float(np.dot(np.asarray(bent[tip] - rest[tip]), palm)) > 0.01, (side, tip)
    # the rest frame of the built-in right hand: fingers +x, palm +y, thumb side +z
    np.testing.assert_allclose(space.palm, [0, 1, 0], atol=0.05)
    np.testing.assert_allclose(space.radial, [0, 0, 1], atol=0.1)


def test_canonical_orientation_and_catmull_rom():
    arrays = builtin_mano_arrays("right")
    space = scene.HandRig.from_arrays(arrays, renderer.posed_centroid).space
    r = scene.canonical_orientation(space)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) > 0
    np.testing.assert_allclose(r @ space.forward, [0, -1, 0], atol=1e-12)  # fingers up
    np.testing.assert_allclose(r @ space.palm, [0, 0, -1], atol=1e-12)  # palm to the camera
    keys = np.array([[0.0, 1.0], [2.0, -1.0], [3.0, 5.0]])
    path = scene.catmull_rom(keys, 5)  # parameters 0, .5, 1, 1.5, 2 -> keys at 0, 2, 4
    np.testing.assert_allclose(path[[0, 2, 4]], keys, atol=1e-12)
    # midpoint of segment 0 (p0 = p1 = key 0): 0.5 * (2 p1 + (p2 - p0) / 2 + ...) hand-computed
    p0, p1, p2, p3 = keys[0], keys[0], keys[1], keys[2]
    u = 0.5
    expect = 0.5 * (2 * p1 + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                    + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)
    np.testing.assert_allclose(path[1], expect)
    aa = np.array([0.3, -0.2, 0.9])
    np.testing.assert_allclose(scene._axis_rotation(aa / np.linalg.norm(aa), np.linalg.norm(aa)),
                               axis_angle_to_matrix(aa), atol=1e-12)


def test_tiny_build_matches_recorded_digests(tiny_dir):
    # Every decoded feature of every record, metadata.json and features.json of the tiny build
    # equal the digests recorded (tests/builtin_record_digests.json) before the rendered
    # builders moved onto data_pipelines.builtin: same config and seed, same dataset.
    check_digests(tiny_dir, "synthetic_hands")
