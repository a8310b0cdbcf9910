"""The built-in two-hand dataset (tfds ``two_hands``) and two-hand samples in the pipeline:
label self-consistency, mutual occlusion, flips, crops, determinism, errors (tiny config)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import transforms
from data_pipelines.pipeline import FrameSource, make_pipeline
from data_pipelines.samplers import SequenceIndex
from data_pipelines.synthetic_hands import renderer
from data_pipelines.two_hands import build as build_cli
from data_pipelines.two_hands import ensure_built, make_config, scene
from data_pipelines.two_hands.two_hands_dataset_builder import VERSION
from handjax.eval.two_hand import HAND_TYPES, ROOTS, relative_root
from handjax.mano import from_axis_angle, load_model, mano_forward
from handjax.render import MANO_WRIST_BOUNDARY_IDS, part_segmentation, rasterize_batch
from record_digests import check_digests

TINY = make_config("tiny")
H, W = TINY.image_size, TINY.image_size * 3 // 4
AUG = dict(scale=0.2, rotation=30.0, shift=0.1, flip="random", brightness=0.2, contrast=0.2, saturation=0.2,
           hue=0.05, bbox_pad=1.3)
LOOP = np.array(MANO_WRIST_BOUNDARY_IDS)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp() / "two_hands_data")


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
def models():
    return load_model(None, "right"), load_model(None, "left")


def project(points, K):
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return p[..., :2] / p[..., 2:]


def sealed(v):
    v = jnp.asarray(v)
    return jnp.concatenate([v, v[LOOP].mean(0, keepdims=True)])


@jax.jit
def _mano(model, pose, betas, transl):
    out = mano_forward(model, from_axis_angle(model, pose), betas, transl, "ih26m")
    return out.vertices, out.joints


def check_mano(models, mano_pose, betas, transl, vertices, joints3d, atol):
    """MANO (built-in model of each side, "ih26m" joints) reproduces both hands."""
    for h, model in enumerate(models):
        verts, joints = _mano(model, jnp.asarray(mano_pose[h]), jnp.asarray(betas[h]), jnp.asarray(transl[h]))
        np.testing.assert_allclose(np.asarray(verts), vertices[h], atol=atol)
        np.testing.assert_allclose(np.asarray(joints), joints3d[21 * h:21 * h + 21], atol=atol)


_parts = jax.jit(part_segmentation, static_argnames=("image_size",))
_raster = jax.jit(rasterize_batch, static_argnames=("image_size",))


# ----------------------------------------------------------------------------- layout
def test_builder_layout_features_and_kinds(tiny_dir, data_dir, frames):
    assert tiny_dir == os.path.join(data_dir, "two_hands", "tiny", VERSION)
    builder = tfds.builder_from_directory(tiny_dir)
    info = builder.info
    assert info.splits["train"].num_examples == TINY.num_sequences * TINY.frames
    assert info.splits["test"].num_examples == TINY.test_sequences * TINY.frames
    assert info.file_format.value == "array_record" and info.disable_shuffling
    assert list(info.metadata["kinds"]) == list(scene.KINDS)
    assert info.features["hand_type"].names == list(HAND_TYPES)
    raw = builder.as_data_source("train")[1]
    expect = {"image": (H, W, 3), "mask": (H, W, 1), "part_seg": (H, W, 1), "joints2d": (42, 2),
              "joints3d": (42, 3), "joint_valid": (42,), "vertices": (2, 778, 3), "mano_pose": (2, 48),
              "betas": (2, 10), "transl": (2, 3), "hand_valid": (2,), "hand_box": (2, 4), "rel_root": (3,),
              "K": (3, 3)}
    for key, shape in expect.items():
        assert np.shape(raw[key]) == shape, key
    f = frames[5]
    assert "is_right" not in f and f["hand_distance"].dtype == np.float32 and f["hand_type"].dtype == np.int64
    assert f["image"].shape == (H, W, 3) and f["mask"].shape == (H, W) and f["part_seg"].dtype == np.uint8
    # sequence n has kind n % 6: every kind in the train split, contiguous 4-frame sequences
    for r, f in enumerate(frames):
        assert (f["sequence_id"], f["frame_index"]) == (r // TINY.frames, r % TINY.frames)
        assert scene.KINDS[int(f["kind"])] == scene.kind_of(r // TINY.frames)
    assert ensure_built("tiny", data_dir) == tiny_dir  # reused, not rebuilt


# ----------------------------------------------------------------------------- labels
def test_projection_mano_and_relative_root(frames, models):
    for f in frames[::3]:
        np.testing.assert_allclose(project(f["joints3d"], f["K"]), f["joints2d"], atol=2e-3)
        check_mano(models, f["mano_pose"], f["betas"], f["transl"], f["vertices"], f["joints3d"], 1e-5)
        np.testing.assert_allclose(f["rel_root"], f["joints3d"][41] - f["joints3d"][20], atol=1e-7)
        np.testing.assert_allclose(f["rel_root"], relative_root(f["joints3d"]), atol=1e-7)
        K = f["K"]
        assert K[0, 0] == K[1, 1] and K[0, 1] == 0
        # wrists are the MANO roots: joints3d[20] / [41] = J0 + transl (rotation about J0)
        assert ROOTS == {"right": 20, "left": 41}


def test_validity_boxes_types_and_interaction(frames):
    seen_types = set()
    for f in frames:
        uv = f["joints2d"].astype(np.float64)
        inside = (uv[:, 0] >= -0.5) & (uv[:, 0] < W - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < H - 0.5)
        valid = inside.reshape(2, 21).sum(1) >= 11
        np.testing.assert_array_equal(f["hand_valid"], valid)
        np.testing.assert_array_equal(f["joint_valid"], inside & np.repeat(valid, 21))
        for h in range(2):
            box = f["hand_box"][h]
            if not valid[h]:
                assert np.all(box == 0)
                continue
            pts = uv[21 * h:21 * h + 21][f["joint_valid"][21 * h:21 * h + 21]]
            assert np.all(pts >= box[:2] - 1e-4) and np.all(pts <= box[2:] + 1e-4)
            assert box[0] >= -0.5 and box[1] >= -0.5 and box[2] <= W - 0.5 and box[3] <= H - 0.5
            # the box is the projected mesh's extent: its rendered pixels lie inside it
            rows, cols = np.nonzero((f["part_seg"] >= 1 + 16 * h) & (f["part_seg"] <= 16 + 16 * h))
            assert np.all((cols >= box[0] - 0.5) & (cols <= box[2] + 0.5) & (rows >= box[1] - 0.5)
                          & (rows <= box[3] + 0.5))
        expect_type = 2 if valid.all() else (0 if valid[0] else 1)
        assert int(f["hand_type"]) == expect_type and bool(f["hand_type_valid"]) == bool(valid.any())
        seen_types.add(expect_type)
        a, b = f["vertices"].astype(np.float64)
        distance = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1).min())
        np.testing.assert_allclose(f["hand_distance"], distance, atol=1e-4)
        overlap = transforms.boxes_overlap(f["hand_box"])
        assert bool(f["interacting"]) == bool(valid.all() and (distance < 0.03 or overlap))
    assert seen_types == {0, 1, 2}
    kinds = np.array([int(f["kind"]) for f in frames])
    dist = np.array([float(f["hand_distance"]) for f in frames])
    touching = dist[kinds == scene.KINDS.index("touching")].reshape(-1, TINY.frames).min(1)
    assert np.all((touching > 5e-4) & (touching < 6e-3))  # brought into contact (5 mm on every 2nd vertex)
    assert dist[kinds != scene.KINDS.index("touching")].min() > 4e-3  # the others are kept apart
    assert any(bool(f["interacting"]) for f in frames) and not all(bool(f["interacting"]) for f in frames)
    hand_pixels = np.mean([f["mask"].mean() for f in frames])
    assert 0.005 < hand_pixels < 0.2  # hands cover a minority of the person crop


def test_part_labels_rerender_and_mutual_occlusion(frames):
    """handjax.render.part_segmentation of the stored vertices reproduces part_seg; per-hand
    depths show that a pixel where one hand is in front carries that hand's label."""
    models = renderer.builtin_models()
    occluded = {"right": 0, "left": 0}
    for f in frames:
        v = f["vertices"]
        K = jnp.asarray(f["K"])
        ref = _parts(sealed(v[0]), sealed(v[1]), models.faces, models.face_labels, K, image_size=(H, W))
        np.testing.assert_array_equal(np.asarray(ref), f["part_seg"])
        np.testing.assert_array_equal(f["mask"], f["part_seg"] > 0)
        if not f["hand_valid"].all():
            continue
        frags = _raster(jnp.stack([sealed(v[0]), sealed(v[1])]), models.faces, K, image_size=(H, W))
        depth, cover = np.asarray(frags.depth), np.asarray(frags.mask)
        both = cover[0] & cover[1]
        left_front = both & (depth[1] < depth[0] - 1e-4)
        right_front = both & (depth[0] < depth[1] - 1e-4)
        assert np.all(f["part_seg"][left_front] >= 17) and np.all(f["part_seg"][right_front] <= 16)
        assert np.all(f["part_seg"][right_front] >= 1)
        occluded["right"] += int(left_front.sum())
        occluded["left"] += int(right_front.sum())
    assert occluded["right"] > 0 and occluded["left"] > 0  # each hand occludes the other somewhere


# ----------------------------------------------------------------------------- flips
def test_mirror_swaps_hands_and_labels(frames, models):
    f = next(f for f in frames if f["hand_valid"].all() and f["mask"].any())
    m = transforms.mirror_two_hand_frame(f)
    np.testing.assert_array_equal(m["image"], f["image"][:, ::-1])
    flipped = f["part_seg"][:, ::-1].astype(int)
    expect = np.where(flipped == 0, 0, np.where(flipped <= 16, flipped + 16, flipped - 16))
    np.testing.assert_array_equal(m["part_seg"], expect)
    # joints: new right = mirrored old left; pixels x -> W - 1 - x
    np.testing.assert_allclose(m["joints2d"][:21, 0], W - 1 - f["joints2d"][21:, 0], atol=1e-4)
    np.testing.assert_allclose(m["joints3d"][:21], f["joints3d"][21:] * [-1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(m["vertices"][1], f["vertices"][0] * [-1, 1, 1], atol=1e-7)
    np.testing.assert_array_equal(m["betas"], f["betas"][::-1])
    np.testing.assert_array_equal(m["hand_valid"], f["hand_valid"][::-1])
    np.testing.assert_array_equal(m["joint_valid"], np.concatenate([f["joint_valid"][21:], f["joint_valid"][:21]]))
    box = f["hand_box"][0]
    np.testing.assert_allclose(m["hand_box"][1], [W - 1 - box[2], box[1], W - 1 - box[0], box[3]], atol=1e-5)
    np.testing.assert_allclose(m["rel_root"], m["joints3d"][41] - m["joints3d"][20], atol=1e-7)
    np.testing.assert_allclose(project(m["joints3d"], m["K"]), m["joints2d"], atol=2e-3)
    check_mano(models, m["mano_pose"], m["betas"], m["transl"], m["vertices"], m["joints3d"], 2e-5)
    # the mirrored geometry re-renders into the mirrored labels (up to pixel-centre ties)
    hm = renderer.builtin_models()
    ref = _parts(sealed(m["vertices"][0]), sealed(m["vertices"][1]), hm.faces, hm.face_labels,
                 jnp.asarray(m["K"]), image_size=(H, W))
    assert np.mean(np.asarray(ref) == m["part_seg"]) > 0.995
    # twice = identity
    back = transforms.mirror_two_hand_frame(m)
    for key in ("image", "mask", "part_seg", "hand_valid", "joint_valid", "betas", "hand_type"):
        np.testing.assert_array_equal(back[key], f[key], err_msg=key)
    for key in ("joints2d", "joints3d", "vertices", "mano_pose", "transl", "hand_box", "rel_root", "K"):
        np.testing.assert_allclose(back[key], f[key], atol=1e-5, err_msg=key)
    one = next(f for f in frames if f["hand_valid"].sum() == 1)
    assert int(transforms.mirror_two_hand_frame(one)["hand_type"]) == 1 - int(one["hand_type"])


# ----------------------------------------------------------------------------- pipeline crops
@pytest.mark.parametrize("crop,shape", [("hands", (32, 32)), ("person", (32, 24))])
def test_pipeline_crops_format_and_invariants(train, models, crop, shape):
    b = next(make_pipeline(train, batch_size=8, image_size=32, augment=AUG, seed=3, shard_index=0, shard_count=1,
                           crop=crop))
    expect = {"image": shape + (3,), "mask": shape, "part_seg": shape, "joints2d": (42, 2), "joints3d": (42, 3),
              "joint_valid": (42,), "vertices": (2, 778, 3), "mano_pose": (2, 48), "betas": (2, 10),
              "transl": (2, 3), "hand_valid": (2,), "hand_box": (2, 4), "rel_root": (3,), "hand_type": (),
              "hand_type_valid": (), "interacting": (), "K": (3, 3), "crop_affine": (3, 3), "aug_flip": ()}
    for key, s in expect.items():
        assert b[key].shape == (8,) + s, (key, b[key].shape)
    assert b["image"].dtype == np.float32 and b["part_seg"].dtype == np.int32 and b["hand_type"].dtype == np.int64
    assert b["aug_flip"].any() and (~b["aug_flip"]).any()
    for i in range(8):
        orig = train[int(b["record"][i])]
        flip = bool(b["aug_flip"][i])
        np.testing.assert_allclose(project(b["joints3d"][i], b["K"][i]), b["joints2d"][i], atol=2e-3)
        check_mano(models, b["mano_pose"][i], b["betas"][i], b["transl"][i], b["vertices"][i], b["joints3d"][i],
                   3e-5)
        moved = transforms.apply_affine(orig["joints2d"].astype(np.float64), b["crop_affine"][i].astype(np.float64))
        swap = (lambda x: np.concatenate([x[21:], x[:21]])) if flip else (lambda x: x)
        np.testing.assert_allclose(swap(moved), b["joints2d"][i], atol=2e-3)
        np.testing.assert_array_equal(b["hand_valid"][i], orig["hand_valid"][::-1] if flip else orig["hand_valid"])
        code = int(orig["hand_type"])
        assert int(b["hand_type"][i]) == ({0: 1, 1: 0}.get(code, code) if flip else code)
        np.testing.assert_allclose(b["rel_root"][i], b["joints3d"][i][41] - b["joints3d"][i][20], atol=1e-6)
        uv = b["joints2d"][i].astype(np.float64)
        inside = (uv[:, 0] >= -0.5) & (uv[:, 0] < shape[1] - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < shape[0] - 0.5)
        np.testing.assert_array_equal(b["joint_valid"][i], swap(orig["joint_valid"]) & inside)
        for h in range(2):
            box, jv = b["hand_box"][i, h], b["joint_valid"][i, 21 * h:21 * h + 21]
            pts = uv[21 * h:21 * h + 21][jv]
            assert np.all(pts >= box[:2] - 1e-3) and np.all(pts <= box[2:] + 1e-3)
        parts = b["part_seg"][i]
        if flip:  # labels follow the hands: right labels only where the (new) right hand is
            src_parts = set(np.unique(orig["part_seg"]).tolist()) - {0}
            assert set(np.unique(parts).tolist()) - {0} <= {p + 16 if p <= 16 else p - 16 for p in src_parts}


def test_person_crop_without_augmentation_is_the_frame(train):
    """crop='person' at the stored size with no augmentation is the identity map."""
    b = next(make_pipeline(train, batch_size=2, image_size=H, augment=None, seed=0, shard_index=0, shard_count=1,
                           crop="person", shuffle=False))
    for i in range(2):
        orig = train[int(b["record"][i])]
        np.testing.assert_allclose(b["crop_affine"][i], np.eye(3), atol=1e-5)
        np.testing.assert_allclose(b["joints2d"][i], orig["joints2d"], atol=1e-3)
        np.testing.assert_array_equal(b["part_seg"][i], orig["part_seg"])
        np.testing.assert_allclose(b["hand_box"][i], orig["hand_box"], atol=1e-3)
        image = (b["image"][i] * transforms.IMAGENET_STD + transforms.IMAGENET_MEAN) * 255.0
        np.testing.assert_allclose(image, orig["image"], atol=0.6)


def test_hands_crop_frames_both_hands(train):
    """crop='hands' without augmentation: a square around both hands' boxes with margin, so
    every valid joint stays valid, and the hands fill much more of it than of the frame."""
    b = next(make_pipeline(train, batch_size=8, image_size=32, augment=dict(bbox_pad=1.25), seed=0, shard_index=0,
                           shard_count=1, crop="hands", shuffle=False))
    for i in range(8):
        orig = train[int(b["record"][i])]
        np.testing.assert_array_equal(b["joint_valid"][i], orig["joint_valid"])
        assert b["mask"][i].mean() > 2 * orig["mask"].mean()


# ----------------------------------------------------------------------------- determinism, errors
def test_same_seed_same_bytes(tiny_dir, data_dir):
    """Records depend only on (seed, split, sequence number): a 1-sequence build equals the
    first sequence of the tiny build byte for byte (PNG bytes included); another seed differs."""
    skip = {k: tfds.decode.SkipDecoding() for k in ("image", "mask", "part_seg")}
    a = tfds.builder_from_directory(tiny_dir).as_data_source("train", decoders=skip)
    same = build_cli.main(["--config", "tiny", "--num_sequences", "1", "--test_sequences", "1", "--data_dir", data_dir])
    b = tfds.builder_from_directory(same).as_data_source("train", decoders=skip)
    c = tfds.builder_from_directory(ensure_built("tiny", data_dir, num_sequences=1, test_sequences=1, seed=1)
                                    ).as_data_source("train", decoders=skip)
    assert len(b) == TINY.frames
    for r in range(TINY.frames):
        for key in a[r]:
            assert np.array_equal(np.asarray(a[r][key]), np.asarray(b[r][key])), key
        assert a[r]["image"] != c[r]["image"] and not np.array_equal(a[r]["mano_pose"], c[r]["mano_pose"])


class _SingleHandSource:
    """A minimal single-hand source (21 joints)."""

    index = SequenceIndex.from_arrays([0, 0], [0, 1])

    def __len__(self):
        return 2

    def __getitem__(self, r):
        return {"image": np.zeros((8, 8, 3), np.uint8), "mask": np.zeros((8, 8), bool),
                "part_seg": np.zeros((8, 8), np.uint8), "joints2d": np.full((21, 2), 4.0, np.float32),
                "joints3d": np.ones((21, 3), np.float32), "vertices": np.ones((778, 3), np.float32),
                "mano_pose": np.zeros(48, np.float32), "transl": np.zeros(3, np.float32),
                "K": np.eye(3, dtype=np.float32), "is_right": np.bool_(True)}


def test_errors_name_the_problem(train, data_dir):
    with pytest.raises(ValueError, match="unknown two_hands config 'huge'"):
        make_config("huge")
    with pytest.raises(ValueError, match="unknown override"):
        make_config("tiny", colour=1)
    with pytest.raises(ValueError, match="multiple of 4"):
        make_config("tiny", image_size=62)
    with pytest.raises(SystemExit):
        build_cli.main(["--config", "huge", "--data_dir", data_dir])
    with pytest.raises(ValueError, match="crop must be None .* got 'square'"):
        make_pipeline(train, batch_size=2, image_size=32, crop="square", shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="crop='person': image_size .* multiple of 4"):
        make_pipeline(train, batch_size=2, image_size=30, crop="person", shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="needs two-hand samples"):
        make_pipeline(_SingleHandSource(), batch_size=2, image_size=8, crop="person", shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="left_to_right.*two-hand samples"):
        make_pipeline(train, batch_size=2, image_size=32, augment=dict(flip="left_to_right"), shard_index=0,
                      shard_count=1)


def test_reachable_from_the_data_factory(tiny_dir, data_dir):
    """data.name='two_hands' (factory descriptor): two-hand batches, square crops by default."""
    import ml_collections

    from data_pipelines import factory

    assert factory.DATASETS["two_hands"].hands == 2 and factory.DATASETS["two_hands"].joint_convention == "ih26m"
    cfg = ml_collections.ConfigDict(dict(name="two_hands", builder_config="tiny", data_dir=data_dir, image_size=32,
                                         joint_convention="", num_workers=0, augment=dict(flip="random")))
    data = factory.make_data_factory(cfg)
    assert data.builder_dir == tiny_dir
    b = next(data("train", "frame", 4, True))
    assert b["image"].shape == (4, 32, 32, 3) and b["joints2d"].shape == (4, 42, 2)
    assert b["vertices"].shape == (4, 2, 778, 3) and b["hand_valid"].shape == (4, 2)
    w = next(data("train", "window", 2, True, k=2, window=1))
    assert w["joints3d"].shape == (2, 2, 42, 3) and np.all(w["sequence_id"] == w["sequence_id"][:, :1])


def test_tiny_build_matches_recorded_digests(tiny_dir):
    # Every decoded feature of every record, metadata.json and features.json of the tiny build
    # equal the digests recorded (tests/builtin_record_digests.json) before the rendered
    # builders moved onto data_pipelines.builtin: same config and seed, same dataset.
    check_digests(tiny_dir, "two_hands")
