"""The built-in hand-object dataset: build, label consistency, occlusion, motion, determinism,
reading through the pipeline."""
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.hand_object import OBJECT_NAMES, ensure_built, load_object_meshes, make_config, objects
from data_pipelines.hand_object import build as build_cli
from data_pipelines.hand_object.hand_object_dataset_builder import VERSION
from data_pipelines.pipeline import FrameSource, make_pipeline
from data_pipelines.synthetic_hands import renderer as hand_renderer
from handjax.mano import from_axis_angle, load_model, mano_forward
from handjax.render import MANO_WRIST_BOUNDARY_IDS, rasterize
from record_digests import check_digests

TINY = make_config("tiny")
S = TINY.image_size
# Palm centre in the stored 21-joint "freihand" order: wrist and the four finger MCPs.
PALM = [0, 5, 9, 13, 17]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hand_object_data"))


@pytest.fixture(scope="module")
def tiny_dir(data_dir):
    return ensure_built("tiny", data_dir)


@pytest.fixture(scope="module")
def train(tiny_dir):
    return FrameSource(tiny_dir, "train")


@pytest.fixture(scope="module")
def frames(train):
    return [train[r] for r in range(len(train))]


@pytest.fixture(scope="module")
def meshes(tiny_dir):
    return load_object_meshes(tiny_dir)


def test_layout_features_and_stored_meshes(tiny_dir, data_dir, train, meshes):
    assert tiny_dir == os.path.join(data_dir, "hand_object", "tiny", VERSION)
    info = tfds.builder_from_directory(tiny_dir).info
    assert info.splits["train"].num_examples == TINY.num_sequences * TINY.frames
    assert info.splits["test"].num_examples == TINY.test_sequences * TINY.frames
    assert info.file_format.value == "array_record" and info.disable_shuffling
    f = train[3]
    expect = {"image": ((S, S, 3), np.uint8), "mask": ((S, S), bool), "hand_mask": ((S, S), bool),
              "object_mask": ((S, S), bool), "part_seg": ((S, S), np.uint8), "joints2d": ((21, 2), np.float32),
              "joints3d": ((21, 3), np.float32), "vertices": ((778, 3), np.float32),
              "mano_pose": ((48,), np.float32), "betas": ((10,), np.float32), "transl": ((3,), np.float32),
              "K": ((3, 3), np.float32), "object_rot": ((3, 3), np.float32), "object_transl": ((3,), np.float32),
              "object_vertices": ((objects.NUM_VERTICES, 3), np.float32), "object_id": ((), np.int64)}
    for key, (shape, dtype) in expect.items():
        assert f[key].shape == shape and f[key].dtype == dtype, key
    assert bool(f["is_right"]) and int(f["frame_index"]) == 3
    # the stored canonical meshes are the generator's, exactly (float32 through JSON)
    ref = objects.canonical_meshes()
    assert list(meshes["names"]) == list(OBJECT_NAMES)
    np.testing.assert_array_equal(meshes["vertices"], ref["vertices"])
    np.testing.assert_array_equal(meshes["faces"], ref["faces"])
    assert meshes["vertices"].shape == (len(OBJECT_NAMES), objects.NUM_VERTICES, 3)
    assert meshes["faces"].shape == (objects.NUM_FACES, 3)


def test_canonical_meshes_are_closed_centred_and_mirror_symmetric():
    ref = objects.canonical_meshes()
    faces = ref["faces"]
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)  # closed, manifold
    for v in ref["vertices"].astype(np.float64):
        np.testing.assert_allclose((v.min(0) + v.max(0)) / 2, 0.0, atol=1e-7)  # bounding-box centred
        normal = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
        assert np.all(np.sum(normal * v[faces].mean(1), axis=1) > 0)  # outward winding (star-shaped)
        mirrored = v * np.array([-1.0, 1.0, 1.0])
        assert np.abs(mirrored[:, None] - v[None]).sum(-1).min(1).max() < 1e-7  # x -> -x symmetric
    # hand-computed sizes (metres): box 6 x 10 x 4 cm, sphere radius 3.5 cm, bottle 16 cm tall
    extent = np.ptp(ref["vertices"], axis=1)
    np.testing.assert_allclose(extent[0], [0.06, 0.10, 0.04], atol=1e-6)
    np.testing.assert_allclose(extent[2], [0.07, 0.07, 0.07], atol=2e-3)
    assert abs(extent[3][1] - 0.16) < 1e-6
    # sample_polyline keeps the corners and spreads the rest by arc length
    pts = objects.sample_polyline(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 3.0]]), 5)
    np.testing.assert_allclose(pts, [[0, 0], [1, 0], [1, 1], [1, 2], [1, 3]])


def test_hand_labels_reproduce_mano_and_projection(frames):
    model = load_model(None, "right")
    fs = frames[::5]
    stack = lambda key: jnp.asarray(np.stack([f[key] for f in fs]))  # noqa: E731
    out = jax.jit(lambda pose, betas, transl: mano_forward(model, from_axis_angle(model, pose), betas, transl,
                                                           "freihand"))(stack("mano_pose"), stack("betas"),
                                                                        stack("transl"))
    np.testing.assert_allclose(np.asarray(out.vertices), np.stack([f["vertices"] for f in fs]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.joints), np.stack([f["joints3d"] for f in fs]), atol=1e-5)
    for f in fs:  # independent pinhole projection in numpy
        K, X = f["K"].astype(np.float64), f["joints3d"].astype(np.float64)
        np.testing.assert_allclose(f["joints2d"], (X @ K.T)[:, :2] / X[:, 2:], atol=1e-3)


def test_object_pose_reproduces_object_vertices(frames, meshes):
    ids = set()
    for f in frames:
        R, t = f["object_rot"].astype(np.float64), f["object_transl"].astype(np.float64)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
        assert np.linalg.det(R) > 0.999
        canon = meshes["vertices"][int(f["object_id"])].astype(np.float64)
        np.testing.assert_allclose(canon @ R.T + t, f["object_vertices"], atol=2e-6)
        ids.add(int(f["object_id"]))
    assert len(ids) >= 2  # several object kinds in the tiny set
    for seq in range(TINY.num_sequences):
        assert len({int(f["object_id"]) for f in frames[seq * TINY.frames:(seq + 1) * TINY.frames]}) == 1


def _depth(verts, faces, K, size=S):
    frags = rasterize(jnp.asarray(verts), jnp.asarray(faces), jnp.asarray(K), (size, size))
    return np.asarray(frags.mask), np.asarray(frags.depth)


def test_occlusion_agrees_with_separate_depth_maps(frames, meshes):
    """Hand and object rendered SEPARATELY: a pixel is the object's where only the object
    covers it or the object is nearer, and the hand's otherwise; the stored masks match."""
    hand_faces = np.asarray(hand_renderer.builtin_models().faces)
    loop = np.array(MANO_WRIST_BOUNDARY_IDS)
    both_cover, object_in_front, hand_in_front = 0, 0, 0
    for f in frames[::2]:
        v = f["vertices"]
        sealed = np.concatenate([v, v[loop].mean(0, keepdims=True)])
        hand_cov, hand_z = _depth(sealed, hand_faces, f["K"])
        obj_cov, obj_z = _depth(f["object_vertices"], meshes["faces"], f["K"])
        obj_wins = obj_cov & (~hand_cov | (obj_z < hand_z))
        ambiguous = hand_cov & obj_cov & (np.abs(obj_z - hand_z) < 1e-5)
        np.testing.assert_array_equal(f["object_mask"][~ambiguous], obj_wins[~ambiguous])
        np.testing.assert_array_equal(f["hand_mask"][~ambiguous], (hand_cov & ~obj_wins)[~ambiguous])
        np.testing.assert_array_equal(f["mask"], f["hand_mask"] | f["object_mask"])
        np.testing.assert_array_equal(f["part_seg"] > 0, f["hand_mask"])
        assert f["part_seg"].max() <= 16
        both = hand_cov & obj_cov
        both_cover += both.sum()
        object_in_front += (both & obj_wins).sum()
        hand_in_front += (both & ~obj_wins).sum()
    assert object_in_front > 20 and hand_in_front > 20  # mutual occlusion really happens


def test_object_moves_smoothly_near_the_palm_and_is_textured(frames):
    for seq in range(TINY.num_sequences):
        fs = frames[seq * TINY.frames:(seq + 1) * TINY.frames]
        t = np.stack([f["object_transl"] for f in fs]).astype(np.float64)
        R = np.stack([f["object_rot"] for f in fs]).astype(np.float64)
        assert np.linalg.norm(np.diff(t, axis=0), axis=1).max() < 0.03  # < 3 cm per frame
        rel = np.einsum("tij,tkj->tik", R[1:], R[:-1])  # R_t R_{t-1}^T
        angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        assert angle.max() < 25.0 and np.linalg.norm(np.diff(t, axis=0), axis=1).max() > 1e-4
        for f in fs:
            palm = f["joints3d"][PALM].mean(0)
            assert np.linalg.norm(f["object_transl"] - palm) < 0.10
            gap = np.linalg.norm(f["object_vertices"][:, None] - f["vertices"][None], axis=-1).min()
            assert gap < 0.02  # the object touches (or nearly touches) the hand
    # texture: object pixels vary (photometric warping has signal), more than a flat colour would
    stds = [f["image"][f["object_mask"]].astype(np.float64).std(0).mean() for f in frames
            if f["object_mask"].sum() > 30]
    assert len(stds) > len(frames) // 2 and np.median(stds) > 12.0


def test_annotation_flags_every_kth_frame(tiny_dir, frames):
    meta = json.load(open(os.path.join(tiny_dir, "metadata.json")))
    expect = [t % TINY.annotate_every == 0 or t == TINY.frames - 1 for t in range(TINY.frames)]
    assert expect == [True, False, False, True, False, True]
    assert meta["index"]["train"]["annotated"] == expect * TINY.num_sequences
    assert [bool(f["annotated"]) for f in frames] == expect * TINY.num_sequences
    assert [int(f["sequence_id"]) for f in frames] == list(np.repeat(np.arange(TINY.num_sequences), TINY.frames))


def test_same_seed_same_bytes_other_seed_differs(tiny_dir, tmp_path, train):
    again = build_cli.main(["--config", "tiny", "--data_dir", str(tmp_path)])
    files = sorted(glob.glob(os.path.join(tiny_dir, "*.array_record*")))
    assert files
    for path in files:
        with open(path, "rb") as a, open(os.path.join(again, os.path.basename(path)), "rb") as b:
            assert a.read() == b.read(), os.path.basename(path)
    other = FrameSource(ensure_built("tiny", str(tmp_path), num_sequences=1, test_sequences=1, seed=1), "train")
    assert not np.array_equal(other[0]["image"], train[0]["image"])
    assert not np.array_equal(other[0]["object_transl"], train[0]["object_transl"])


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown hand_object config 'huge'"):
        make_config("huge")
    with pytest.raises(ValueError, match="unknown override"):
        make_config("tiny", colour=1)
    with pytest.raises(ValueError, match="frames must be >= 1"):
        make_config("tiny", frames=0)
    assert make_config("default", num_sequences=10).name == "default_n10"
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        load_object_meshes(tmp_path)


def test_pipeline_crops_keep_object_labels_consistent(tiny_dir, meshes):
    """Through the grain pipeline (pair mode, rotation + random flips): object masks are cropped
    like the image, and object_rot / object_transl / object_mirrored still reproduce
    object_vertices, which project onto the cropped object mask."""
    it = make_pipeline(tiny_dir, "train", mode="sparse_pair", batch_size=4, image_size=48, seed=3,
                       augment=dict(scale=0.2, rotation=40.0, shift=0.05, flip="random", crop_from="mask"),
                       shard_index=0, shard_count=1)
    flipped = 0
    for _ in range(3):
        batch = next(it)
        assert batch["object_mask"].shape == (4, 2, 48, 48) and batch["object_mask"].dtype == bool
        assert batch["hand_mask"].shape == (4, 2, 48, 48)
        for b in range(4):
            for k in range(2):
                canon = meshes["vertices"][int(batch["object_id"][b, k])].astype(np.float64)
                mirrored = bool(batch["object_mirrored"][b, k])
                assert mirrored == bool(batch["aug_flip"][b, k])
                flipped += mirrored
                canon = canon * np.array([-1.0, 1.0, 1.0]) if mirrored else canon
                R = batch["object_rot"][b, k].astype(np.float64)
                assert np.linalg.det(R) > 0.999
                verts = batch["object_vertices"][b, k].astype(np.float64)
                np.testing.assert_allclose(canon @ R.T + batch["object_transl"][b, k], verts, atol=1e-5)
                sil, _ = _depth(verts, meshes["faces"], batch["K"][b, k], 48)
                mask = batch["object_mask"][b, k]
                if mask.sum() > 10:  # visible object pixels lie on the re-projected object (1 px slack)
                    grown = sil | np.roll(sil, 1, 0) | np.roll(sil, -1, 0) | np.roll(sil, 1, 1) | np.roll(sil, -1, 1)
                    assert (mask & grown).sum() >= 0.95 * mask.sum()
    assert flipped > 0


def test_reachable_through_the_data_factory(data_dir, tiny_dir):
    import ml_collections

    from data_pipelines import factory

    cfg = ml_collections.ConfigDict(dict(name="hand_object", builder_config="tiny", data_dir=data_dir, image_size=16,
                                         joint_convention="", num_workers=0, augment=dict(rotation=10.0)))
    data = factory.make_data_factory(cfg)
    assert data.builder_dir == tiny_dir
    b = next(data("train", "pair", 4, True, unannotated_only=True))
    assert b["image"].shape == (4, 2, 16, 16, 3) and b["object_mask"].shape == (4, 2, 16, 16)
    assert b["object_vertices"].shape == (4, 2, objects.NUM_VERTICES, 3) and not b["annotated"][:, 0].any()
    assert np.all(b["sequence_id"][:, 0] == b["sequence_id"][:, 1]) and b["annotated"][:, 1].all()


def test_tiny_build_matches_recorded_digests(tiny_dir):
    # Every decoded feature of every record, metadata.json and features.json of the tiny build
    # equal the digests recorded (tests/builtin_record_digests.json) before the rendered
    # builders moved onto data_pipelines.builtin: same config and seed, same dataset.
    check_digests(tiny_dir, "hand_object")
