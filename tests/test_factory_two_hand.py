"""data_pipelines.factory: the two-hand datasets of InterWild reachable by name (COCO-WholeBody,
HIC, on their builders' format-exact fixtures), their labels after the factory against the
records (crop affine applied to the records' joints and boxes, InterWild's person window),
the real-MANO rule for NeuralAnnot poses, evaluation that never flips, the InterWild
mixture (COCO-WholeBody 2-D + built-in two_hands 3-D, 50/50), and the per-hand extra keys
(issue 13): flipping twice is the identity for every key, one flip gives each hand the other
hand's mirrored world fit / RootNet depth (InterHand2.6M) and camera (COCO NeuralAnnot), and
extrinsics, RootNet boxes and per-hand intrinsics follow the crop (world joints through the
crop extrinsics and back-projected record pixels through the crop intrinsics land on the crop's
joints).

Expected values are computed here directly from the tfds records and from InterWild's
``sanitize_bbox`` / ``process_bbox`` written out in numpy, not through the pipeline's helpers.
"""
import pickle

import grain
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import factory, transforms
from data_pipelines.coco_wholebody import ensure_built as coco_ensure_built
from data_pipelines.synthetic_hands import ensure_built as synth_ensure_built
from data_pipelines.two_hands import ensure_built as two_hands_ensure_built

S = 16  # crop height; person crops are S x 3S/4


# ----------------------------------------------------------------------------- helpers
def records(builder_dir, split):
    src = tfds.builder_from_directory(builder_dir).as_data_source(split)
    ds = grain.MapDataset.source(src)
    return {int(r["annot_id"]): r for r in (ds[i] for i in range(len(ds)))}


def eval_frames(data, split, batch=4):
    out = []
    for b in data(split, "frame", batch, False):
        for i in np.flatnonzero(b["valid"]):
            out.append({k: v[i] for k, v in b.items()})
    return out


def batch_frames(b):
    return [{k: v[i] for k, v in b.items()} for i in range(len(b["image"]))]


def affine(points, A):
    A = np.asarray(A, np.float64)
    return np.asarray(points, np.float64) @ A[:2, :2].T + A[:2, 2]


def interwild_person_window(xyxy, width, height, extension=1.25, aspect=384 / 512):
    """InterWild sanitize_bbox + process_bbox (aspect w/h = 384/512, x1.25) -> (x1, y1, x2, y2)."""
    x, y = float(xyxy[0]), float(xyxy[1])
    w, h = float(xyxy[2]) - x, float(xyxy[3]) - y
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1.0)), min(height - 1.0, y1 + max(0.0, h - 1.0))
    assert w * h > 0 and x2 > x1 and y2 > y1
    w, h = x2 - x1, y2 - y1
    cx, cy = x1 + w / 2.0, y1 + h / 2.0
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    w, h = w * extension, h * extension
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def window_affine(window, out_h, out_w):
    """The pixel map sending the window (x1, y1, x2, y2) onto the crop's pixel area
    [-0.5, out_w - 0.5] x [-0.5, out_h - 0.5] (no rotation)."""
    x1, y1, x2, y2 = window
    sx, sy = out_w / (x2 - x1), out_h / (y2 - y1)
    return np.array([[sx, 0.0, -0.5 - sx * x1], [0.0, sy, -0.5 - sy * y1], [0.0, 0.0, 1.0]])


def expected_box(box, A, valid, out_h, out_w):
    """A record's box through A (corners' extent), clipped to the crop; zeros if invalid/empty."""
    if not valid or not (box[2] > box[0] and box[3] > box[1]):
        return np.zeros(4)
    c = affine([[box[0], box[1]], [box[2], box[3]]], A)
    lo = np.maximum(c.min(0), -0.5)
    hi = np.minimum(c.max(0), [out_w - 0.5, out_h - 0.5])
    return np.concatenate([lo, hi]) if np.all(hi > lo) else np.zeros(4)


def inside(points, out_h, out_w):
    return (points[:, 0] >= -0.5) & (points[:, 0] < out_w - 0.5) & (points[:, 1] >= -0.5) & (points[:, 1] < out_h - 0.5)


def mirror_pose(pose):
    return (np.asarray(pose, np.float64).reshape(16, 3) * [1.0, -1.0, -1.0]).reshape(48)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mano_dir(tmp_path_factory):
    from test_interhand_data import write_mano_models

    return write_mano_models(str(tmp_path_factory.mktemp("mano2h") / "mano"))


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from test_coco_wholebody_data import write_coco

    tmp = tmp_path_factory.mktemp("coco_factory")
    raw = str(tmp / "raw")
    write_coco(raw)
    cfg = dict(name="coco_wholebody", data_dir=str(tmp / "data"), manual_dir=raw, image_size=S, crop="person",
               augment=dict(flip="random"), num_workers=0)
    path = coco_ensure_built("default", cfg["data_dir"], raw)
    return {"cfg": cfg, "path": path, "recs": {s: records(path, s) for s in ("train", "val")}}


@pytest.fixture(scope="module")
def hic(tmp_path_factory, mano_dir):
    from test_hic_data import write_hic

    tmp = tmp_path_factory.mktemp("hic_factory")
    raw = str(tmp / "raw")
    write_hic(raw, mano_dir)
    cfg = dict(name="hic", data_dir=str(tmp / "data"), manual_dir=raw, mano_model=mano_dir, image_size=S,
               augment=dict(flip="random"), num_workers=0)
    data = factory.make_data_factory(ml_collections.ConfigDict(cfg))
    return {"cfg": cfg, "data": data, "recs": records(data.builder_dir, "test")}


@pytest.fixture(scope="module")
def two_hands_dir(tmp_path_factory):
    # the same directory as tests/test_two_hands_data.py: built once per session
    data_dir = str(tmp_path_factory.getbasetemp() / "two_hands_data")
    two_hands_ensure_built("tiny", data_dir)
    return data_dir


# ----------------------------------------------------------------------------- helpers, by hand
def test_person_window_and_box_transform_hand_computed():
    # a 6 x 4 box is too wide for 3:4 -> its height grows to 8, then x1.25 -> 7.5 x 10
    np.testing.assert_allclose(transforms.person_window([2.0, 3.0, 8.0, 7.0], 1.25), [1.25, 0.0, 8.75, 10.0])
    # a 3 x 8 box is too tall -> width 6; extension 1
    np.testing.assert_allclose(transforms.person_window([0.0, 0.0, 3.0, 8.0]), [-1.5, 0.0, 4.5, 8.0])
    A = np.array([[2.0, 0.0, 1.0], [0.0, 2.0, -1.0], [0.0, 0.0, 1.0]])
    boxes = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [5.0, 5.0, 9.0, 9.0], [0.0, 0.0, 1.0, 1.0]])
    got = transforms.transform_boxes(boxes, A, [True, True, True, False], 8, 6)
    np.testing.assert_allclose(got, [[1.0, 1.0, 5.0, 5.0],     # corners (1, 1), (5, 5)
                                     [0.0, 0.0, 0.0, 0.0],     # no area
                                     [0.0, 0.0, 0.0, 0.0],     # (11, 9)..(19, 17): outside 6 x 8
                                     [0.0, 0.0, 0.0, 0.0]])    # invalid
    mirror = np.array([[-1.0, 0.0, 9.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # x -> 9 - x: corners swap
    np.testing.assert_allclose(transforms.transform_boxes(boxes[:1], mirror, [True], 20, 20), [[7.0, 1.0, 9.0, 3.0]])


def test_descriptors_of_the_new_names():
    coco, hic = factory.get_dataset("coco_wholebody"), factory.get_dataset("hic")
    assert coco.hands == hic.hands == 2 and coco.joint_convention == hic.joint_convention == "ih26m"
    assert coco.has("joints2d") and not coco.has("joints3d") and coco.has("mano")
    assert hic.has("joints3d") and hic.has("vertices") and not hic.has("mano")
    assert hic.eval_crop == {"crop_from": "image", "bbox_pad": 1.0}
    assert factory.get_dataset("interhand").has("part_seg")


# ----------------------------------------------------------------------------- COCO-WholeBody
def test_coco_by_name_person_crop_labels_equal_the_records(coco, capsys):
    data = factory.make_data_factory(ml_collections.ConfigDict(coco["cfg"]))
    assert "coco_wholebody: no data.mano_model" in capsys.readouterr().err  # the one-line note
    assert data.dataset.hands == 2 and data.joint_convention == "ih26m" and data.builder_dir == coco["path"]
    out_h, out_w = S, S * 3 // 4
    n = 0
    for split in ("train", "val"):
        frames = eval_frames(data, split)
        assert sorted(int(f["annot_id"]) for f in frames) == sorted(coco["recs"][split])
        for f in frames:
            rec = coco["recs"][split][int(f["annot_id"])]
            h, w = (int(v) for v in rec["image_size"])
            assert f["image"].shape == (out_h, out_w, 3) and not f["aug_flip"]  # augment.flip random: not in eval
            A = window_affine(interwild_person_window(rec["person_bbox"], w, h), out_h, out_w)
            np.testing.assert_allclose(f["crop_affine"], A, rtol=1e-5, atol=1e-4)
            joints = affine(rec["joints2d"], A)
            np.testing.assert_allclose(f["joints2d"], joints, rtol=1e-5, atol=1e-4)
            np.testing.assert_array_equal(f["joint_valid"], rec["joint_valid"] & inside(joints, out_h, out_w))
            np.testing.assert_array_equal(f["hand_valid"], rec["hand_valid"])
            for hand in range(2):
                np.testing.assert_allclose(f["hand_box"][hand], expected_box(
                    rec["hand_bbox"][hand], A, rec["hand_bbox_valid"][hand], out_h, out_w), atol=1e-4)
            np.testing.assert_array_equal(f["mano_valid"], [rec["mano"][s]["valid"] for s in ("right", "left")])
            assert not (f["has_mano"] or f["has_transl"] or f["has_joints3d"] or f["has_vertices"] or f["has_K"])
            assert not (f["has_mask"] or f["has_part_seg"]) and not np.any(f["joints3d"]) and not np.any(f["vertices"])
            assert int(f["hand_type"]) == (2 if rec["hand_valid"].all() else 0 if rec["hand_valid"][0] else 1)
            assert "person_box" not in f and "hand_box_annotated" not in f and "joint_conf" not in f
            n += 1
    assert n == 6


def test_coco_training_flips_swap_hands_and_neuralannot_poses_use_the_real_mano_mean(coco, mano_dir):
    means = {}
    for side in ("right", "left"):
        with open(f"{mano_dir}/MANO_{side.upper()}.pkl", "rb") as fh:
            means[side] = np.asarray(pickle.load(fh)["hands_mean"], np.float64)
    assert np.abs(means["right"]).max() > 0.05  # a non-trivial mean pose
    data = factory.make_data_factory(ml_collections.ConfigDict(dict(coco["cfg"], mano_model=mano_dir)))
    out_h, out_w = S, S * 3 // 4
    frames = batch_frames(next(data("train", "frame", 12, True)))
    flips = {bool(f["aug_flip"]) for f in frames}
    assert flips == {True, False}
    for f in frames:
        rec = coco["recs"]["train"][int(f["annot_id"])]
        h, w = (int(v) for v in rec["image_size"])
        flip = bool(f["aug_flip"])
        window = interwild_person_window(rec["person_bbox"], w, h)
        if flip:  # InterWild flips the window's centre about the image: x -> w - 1 - x
            window = np.array([w - 1 - window[2], window[1], w - 1 - window[0], window[3]])
        A = window_affine(window, out_h, out_w)
        if flip:
            A = A @ np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        np.testing.assert_allclose(f["crop_affine"], A, rtol=1e-5, atol=1e-4)
        src = [1, 0] if flip else [0, 1]  # output hand i comes from record hand src[i]
        joints = affine(rec["joints2d"], A).reshape(2, 21, 2)[src].reshape(42, 2)
        np.testing.assert_allclose(f["joints2d"], joints, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(f["hand_valid"], rec["hand_valid"][src])
        for i, j in enumerate(src):
            np.testing.assert_allclose(f["hand_box"][i], expected_box(
                rec["hand_bbox"][j], A, rec["hand_bbox_valid"][j], out_h, out_w), atol=1e-4)
        has_fit = [bool(rec["mano"][s]["valid"]) for s in ("right", "left")]
        np.testing.assert_array_equal(f["mano_valid"], np.array(has_fit)[src])
        assert bool(f["has_mano"]) == any(has_fit) and not f["has_transl"]
        for i, j in enumerate(src):
            side = ("right", "left")[j]
            absolute = np.asarray(rec["mano"][side]["pose"], np.float64).copy()
            absolute[3:] += means[side]
            want = mirror_pose(absolute) if flip else absolute  # the mirrored hand is the other side's
            np.testing.assert_allclose(f["mano_pose"][i], want, atol=1e-5)
            np.testing.assert_allclose(f["betas"][i], rec["mano"][side]["betas"], atol=1e-6)


def test_coco_mano_model_errors_name_the_key(coco, tmp_path):
    with pytest.raises(ValueError, match=r"data.mano_model=.*coco_wholebody needs the (right|left) MANO model"):
        factory.make_data_factory(ml_collections.ConfigDict(dict(coco["cfg"], mano_model=str(tmp_path / "nope"))))


# ----------------------------------------------------------------------------- HIC
def test_hic_by_name_evaluates_the_whole_image(hic):
    data = hic["data"]
    assert data.dataset.hands == 2
    frames = eval_frames(data, "test")
    assert sorted(int(f["annot_id"]) for f in frames) == sorted(hic["recs"])
    for f in frames:
        rec = hic["recs"][int(f["annot_id"])]
        h, w = (int(v) for v in rec["image_size"])
        assert not f["aug_flip"]
        # crop='hands' with the descriptor's evaluation crop: a square around the whole image
        side = max(h, w)
        A = window_affine([(w - 1) / 2 - side / 2, (h - 1) / 2 - side / 2, (w - 1) / 2 + side / 2,
                           (h - 1) / 2 + side / 2], S, S)
        np.testing.assert_allclose(f["crop_affine"], A, atol=1e-5)
        joints = affine(rec["joints2d"], A)
        np.testing.assert_allclose(f["joints2d"], joints, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(f["joint_valid"], rec["joint_valid"] & inside(joints, S, S))
        np.testing.assert_allclose(f["joints3d"], rec["joints3d"], atol=1e-6)  # no rotation
        np.testing.assert_allclose(f["vertices"], rec["vertices"], atol=1e-6)
        np.testing.assert_allclose(f["K"], A @ rec["K"], rtol=1e-5, atol=1e-4)
        for hand in range(2):
            np.testing.assert_allclose(f["hand_box"][hand], expected_box(rec["hand_bbox"][hand], A,
                                                                         rec["hand_valid"][hand], S, S), atol=1e-4)
        assert int(f["hand_type"]) == int(rec["hand_type"]) and bool(f["interacting"]) == (int(rec["hand_type"]) == 2)
        assert f["has_joints3d"] and f["has_joints2d"] and "has_vertices" not in f
        assert not f["has_mano"] and not f["has_transl"] and not np.any(f["mano_pose"])
        np.testing.assert_array_equal(f["mano_valid"], [False, False])
    # crop='person': the whole frame (InterWild's HIC body box is the image)
    person = factory.make_data_factory(ml_collections.ConfigDict(dict(hic["cfg"], crop="person")))
    for f in eval_frames(person, "test"):
        rec = hic["recs"][int(f["annot_id"])]
        h, w = (int(v) for v in rec["image_size"])
        ww = max(w, h * 3 / 4)  # the image's pixel area grown to 3:4 about its centre
        cx, cy = (w - 1) / 2, (h - 1) / 2
        window = [cx - ww / 2, cy - ww * 2 / 3, cx + ww / 2, cy + ww * 2 / 3]
        np.testing.assert_allclose(f["crop_affine"], window_affine(window, S, S * 3 // 4), atol=1e-5)
        np.testing.assert_allclose(f["joints2d"], affine(rec["joints2d"], f["crop_affine"]), rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------- evaluation never flips
def test_evaluation_never_flips(two_hands_dir, tmp_path_factory):
    cfg = dict(name="two_hands", builder_config="tiny", data_dir=two_hands_dir, image_size=S, num_workers=0,
               augment=dict(flip="random"))
    data = factory.make_data_factory(ml_collections.ConfigDict(cfg))
    train = next(data("train", "frame", 16, True))
    assert train["aug_flip"].any()  # training does flip
    evals = list(data("test", "frame", 16, False))
    assert not any(b["aug_flip"].any() for b in evals)
    assert factory.eval_flip("random", 1) == "none" and factory.eval_flip("left_to_right", 2) == "none"
    # single-hand: a random flip is dropped, left_to_right (a model input convention) stays
    synth_dir = str(tmp_path_factory.getbasetemp() / "synthetic_hands_data")
    synth_ensure_built("tiny", synth_dir)
    seen = {}
    for flip in ("random", "left_to_right"):
        synth = factory.make_data_factory(ml_collections.ConfigDict(dict(
            name="synthetic_hands", builder_config="tiny", data_dir=synth_dir, image_size=S, num_workers=0,
            augment=dict(flip=flip))))
        batches = list(synth("test", "frame", 8, False))
        seen[flip] = tuple(np.concatenate([b[k] for b in batches]) for k in ("aug_flip", "is_right"))
    flipped, right = seen["random"]
    assert not flipped.any()
    mirrored, right_after = seen["left_to_right"]
    assert right_after.all() and np.array_equal(mirrored, ~right) and mirrored.any()  # the left hands, only


# ----------------------------------------------------------------------------- the InterWild mixture
def test_mixture_coco_2d_and_two_hands_3d_as_interwild(coco, two_hands_dir):
    cfg = dict(coco["cfg"], name="", mixture=[dict(name="coco_wholebody", weight=1.0),
                                              dict(name="two_hands", builder_config="tiny", data_dir=two_hands_dir,
                                                   manual_dir="", weight=1.0)])
    data = factory.make_data_factory(ml_collections.ConfigDict(cfg))
    it = data("train", "frame", 16, True)
    batches = [next(it) for _ in range(4)]
    b = {k: np.concatenate([x[k] for x in batches]) for k in batches[0]}
    coco_rows, th = b["dataset"] == 0, b["dataset"] == 1
    assert abs(coco_rows.mean() - 0.5) < 0.2 and th.any()
    assert b["image"].shape == (64, S, S * 3 // 4, 3) and b["joints2d"].shape == (64, 42, 2)
    assert b["mano_pose"].shape == (64, 2, 48) and b["vertices"].shape == (64, 2, 778, 3)
    for flag in ("has_joints3d", "has_vertices", "has_mano", "has_transl", "has_K", "has_mask", "has_part_seg"):
        np.testing.assert_array_equal(b[flag], th, err_msg=flag)  # 3-D / MANO (no mano_model) only in two_hands
    assert "has_joints2d" not in b  # both carry 2-D joints
    assert not np.any(b["joints3d"][coco_rows]) and not np.any(b["vertices"][coco_rows])
    assert not np.any(b["part_seg"][coco_rows]) and np.any(b["part_seg"][th])
    np.testing.assert_array_equal(b["has_hand_distance"], th)  # two_hands' own keys: zero-filled for COCO
    assert np.all(b["mano_valid"][th])
    for i in np.flatnonzero(coco_rows):
        rec = coco["recs"]["train"][int(b["annot_id"][i])]
        src = [1, 0] if b["aug_flip"][i] else [0, 1]
        np.testing.assert_array_equal(b["hand_valid"][i], rec["hand_valid"][src])
    assert np.all(b["has_annot_id"] == coco_rows)


# ----------------------------------------------------------------------------- per-hand extra keys (issue 13)
# Every key of a decoded two-hand frame of InterHand2.6M / COCO-WholeBody (through the factory's
# adapters). A new key fails these tests until its flip / crop rule is decided and checked below.
IH_KEYS = {
    # images and per-hand / per-joint geometry (swapped + mirrored: the checks of test_two_hands_data)
    "image", "mask", "part_seg", "joints2d", "joints3d", "joint_valid", "vertices", "mano_pose", "betas", "transl",
    "hand_valid", "hand_box", "mano_valid", "K", "rel_root", "hand_type", "bbox",
    # the extra keys of issue 13, checked here
    "mano_pose_world", "mano_transl_world", "mano_root_j0", "cam_R", "cam_t", "rootnet_depth", "rootnet_bbox",
    # frame-level and flip-invariant
    "has_rootnet", "has_mano_world", "hand_type_valid", "interacting", "image_size", "has_mano", "has_transl",
    "has_bbox", "has_vertices", "has_mask", "has_part_seg", "annot_id", "image_id", "capture", "frame_index",
    "subject", "subject_id", "sequence_id", "annotated", "record"}
COCO_KEYS = {
    "image", "mask", "part_seg", "joints2d", "joints3d", "joint_valid", "vertices", "mano_pose", "betas", "transl",
    "hand_valid", "hand_box", "mano_valid", "K", "hand_type", "person_box", "hand_K",
    "has_hand_K", "hand_box_annotated", "hand_type_valid", "interacting", "image_size", "has_K", "has_mano",
    "has_transl", "has_joints3d", "has_vertices", "has_mask", "has_part_seg", "annot_id", "image_id", "sequence_id",
    "frame_index", "annotated", "record"}
SIDES = ("right", "left")
MIRROR = np.diag([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def interhand(tmp_path_factory, mano_dir):
    from test_interhand_data import true_models, write_interhand

    from data_pipelines.interhand import get_builder
    from data_pipelines.manual import prepare

    tmp = tmp_path_factory.mktemp("ih_flip")
    raw, data_dir = str(tmp / "raw"), str(tmp / "data")
    models = true_models(mano_dir)
    truth = write_interhand(raw, models)
    # built here without DIGIT's part masks (not under test; the factory then reuses the build)
    prepare(get_builder("5fps_hm", data_dir, mano_dir=mano_dir, render_part_seg=False), raw)
    cfg = dict(name="interhand", data_dir=data_dir, manual_dir=raw, mano_model=mano_dir, image_size=S,
               augment=dict(flip="random", rotation=30.0, scale=0.2, shift=0.1), num_workers=0)
    data = factory.make_data_factory(ml_collections.ConfigDict(cfg))
    means = {}
    for side in SIDES:
        with open(f"{mano_dir}/MANO_{side.upper()}.pkl", "rb") as fh:
            means[side] = np.asarray(pickle.load(fh)["hands_mean"], np.float64)
    return {"cfg": cfg, "data": data, "truth": truth, "models": models, "means": means,
            "recs": {s: records(data.builder_dir, s) for s in ("train", "test")}}


def source_frames(cfg, split):
    """The decoded frames of a split as the pipeline reads them (adapter applied, before any crop)."""
    member = factory._Member.create(cfg, 0, None)
    src = member.source(split, factory.sampling_params(cfg, "frame", {}))
    return [src[r] for r in range(len(src))]


def rot_z(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def project(points, K):
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return p[..., :2] / p[..., 2:]


def corners(xywh):
    x, y, w, h = (float(v) for v in xywh)
    return np.array([x, y, x + w, y + h])


def mano_joints(model, pose_abs, betas, transl):
    """(21, 3) ih26m joints, metres, of an ABSOLUTE (flat-mean) pose."""
    import jax.numpy as jnp

    from handjax.mano import from_axis_angle, mano_forward

    rot = from_axis_angle(model, jnp.asarray(pose_abs, jnp.float32), flat_hand_mean=True)
    out = mano_forward(model, rot, jnp.asarray(betas, jnp.float32), jnp.asarray(transl, jnp.float32), "ih26m")
    return np.asarray(out.joints, np.float64)


def rotated_box(box, A, valid, out_h, out_w):
    """A box (x1, y1, x2, y2) through A (a rotation included): the extent of its FOUR mapped
    corners, clipped to the crop; zeros if invalid / empty."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not valid or not (x2 > x1 and y2 > y1):
        return np.zeros(4)
    c = affine([[x1, y1], [x2, y1], [x1, y2], [x2, y2]], A)
    lo, hi = np.maximum(c.min(0), -0.5), np.minimum(c.max(0), [out_w - 0.5, out_h - 0.5])
    return np.concatenate([lo, hi]) if np.all(hi > lo) else np.zeros(4)


ONE_LEVEL = 1.0 / 255.0 / 0.224  # one uint8 step of the warped image after ImageNet normalisation


def assert_same_frame(got, want, atol=1e-5):
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for key, value in want.items():
        value, other = np.asarray(value), np.asarray(got[key])
        assert other.shape == value.shape and other.dtype == value.dtype, key
        if key == "image":  # PIL's uint8 bilinear warp may round a pixel the other way (maps equal to ~1e-7)
            diff = np.abs(other - value)
            assert diff.max() <= ONE_LEVEL * 1.001 and np.mean(diff > atol) < 0.01, key
        elif value.dtype.kind in "biu":
            np.testing.assert_array_equal(other, value, err_msg=key)
        else:
            np.testing.assert_allclose(other, value, atol=atol, err_msg=key)


def test_flip_twice_is_identity_for_every_key(interhand, coco):
    cfg = transforms.AugmentConfig(flip="random", rotation=30.0, scale=0.2, shift=0.1)
    params = transforms.AugmentParams(scale=1.1, rotation=0.4, shift=np.array([0.05, -0.03]), coin=True,
                                      color=np.array([1.0, 1.0, 1.0, 0.0]))
    unflipped = transforms.AugmentParams(**dict(vars(params), coin=False))
    cases = [(f, IH_KEYS, "hands") for s in ("train", "test") for f in source_frames(interhand["cfg"], s)]
    coco_cfg = dict(coco["cfg"], data_dir=str(coco["path"]).split("/coco_wholebody/")[0])
    cases += [(f, COCO_KEYS, "person") for f in source_frames(coco_cfg, "train")]
    assert len(cases) == 5 + 3
    for f, keys, crop in cases:
        assert set(f) == keys, sorted(set(f) ^ keys)
        mirrored = transforms.mirror_two_hand_frame(f)
        assert_same_frame(transforms.mirror_two_hand_frame(mirrored), f)
        # the batch: cropping the mirrored frame WITH a flip = cropping the frame without one (every
        # key; crop_affine differs by the mirror of the source pixels it starts from)
        a = transforms.transform_two_hand_frame(mirrored, params, cfg, S, crop)
        b = transforms.transform_two_hand_frame(f, unflipped, cfg, S, crop)
        assert a["aug_flip"] and not b["aug_flip"]
        w = f["image"].shape[1]
        np.testing.assert_allclose(a.pop("crop_affine"), b.pop("crop_affine") @ np.array(
            [[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-4)
        a.pop("aug_flip"), b.pop("aug_flip")
        assert_same_frame(a, b, atol=2e-4)


def test_interhand_one_flip_gives_each_hand_the_other_hands_mirrored_labels(interhand):
    means, models = interhand["means"], interhand["models"]
    n = 0
    for split in ("train", "test"):
        for f in source_frames(interhand["cfg"], split):
            rec = interhand["recs"][split][int(f["annot_id"])]
            world = interhand["truth"][split][int(f["annot_id"])]["world"].reshape(2, 21, 3) / 1000.0  # metres
            width = int(rec["image_size"][1])
            m = transforms.mirror_two_hand_frame(f)
            # extrinsics of the mirrored world (x -> -x): X_cam' = M X_cam = (M R M)(M X_w) + M t
            np.testing.assert_allclose(m["cam_R"], MIRROR @ rec["cam_R"] @ MIRROR, atol=1e-7)
            np.testing.assert_allclose(m["cam_t"], rec["cam_t"] * [-1, 1, 1], atol=1e-7)
            rn = rec["rootnet"]
            assert bool(f["has_rootnet"]) == bool(m["has_rootnet"]) == bool(rn["valid"])
            np.testing.assert_allclose(m["rootnet_depth"], rn["abs_depth"][::-1], atol=1e-7)
            if rn["valid"]:  # (x, y, w, h) -> corners, mirrored: x -> W - 1 - x
                x1, y1, x2, y2 = corners(rn["bbox"])
                np.testing.assert_allclose(m["rootnet_bbox"], [width - 1 - x2, y1, width - 1 - x1, y2], atol=1e-5)
                n += 1
            else:
                np.testing.assert_array_equal(m["rootnet_bbox"], np.zeros(4))
            for i, j in ((0, 1), (1, 0)):  # output hand i is the mirrored record hand j
                fit = rec["mano"][SIDES[j]]
                absolute = np.asarray(fit["pose_world"], np.float64) + np.concatenate([np.zeros(3), means[SIDES[j]]])
                np.testing.assert_allclose(f["mano_pose_world"][j], absolute, atol=1e-6)
                np.testing.assert_allclose(m["mano_pose_world"][i], mirror_pose(absolute), atol=1e-6)
                np.testing.assert_allclose(m["mano_transl_world"][i], fit["transl_world"] * [-1, 1, 1], atol=1e-7)
                np.testing.assert_allclose(m["mano_root_j0"][i], fit["root_j0"] * [-1, 1, 1], atol=1e-7)
                assert bool(m["mano_valid"][i]) == bool(fit["valid"])
                # geometry: the extrinsics take the mirrored world joints to the mirrored camera joints
                np.testing.assert_allclose((world[j] @ MIRROR) @ m["cam_R"].T + m["cam_t"],
                                           m["joints3d"][21 * i:21 * i + 21], atol=2e-5)
                if fit["valid"]:  # the mirrored world fit is a fit of hand i's side in the mirrored world
                    np.testing.assert_allclose(mano_joints(models[SIDES[j]], f["mano_pose_world"][j], f["betas"][j],
                                                           f["mano_transl_world"][j]), world[j], atol=2e-5)
                    np.testing.assert_allclose(mano_joints(models[SIDES[i]], m["mano_pose_world"][i], m["betas"][i],
                                                           m["mano_transl_world"][i]), world[j] @ MIRROR, atol=2e-5)
            assert bool(m["has_mano_world"]) and bool(f["has_mano_world"])
    assert n == 1  # annotation 30 has a RootNet entry


def test_interhand_boxes_and_extrinsics_follow_the_crop(interhand):
    models, data = interhand["models"], interhand["data"]
    flips = set()
    for split in ("train", "test"):
        for f in batch_frames(next(data(split, "frame", 8, True))):
            aid = int(f["annot_id"])
            rec, world = interhand["recs"][split][aid], interhand["truth"][split][aid]["world"] / 1000.0
            flip = bool(f["aug_flip"])
            flips.add(flip)
            src = [1, 0] if flip else [0, 1]  # output hand i comes from record hand src[i]
            mirror = MIRROR if flip else np.eye(3)
            r3 = rot_z(float(f["aug_rotation"])) @ mirror
            A = f["crop_affine"]  # original pixels -> crop pixels (mirror included)
            # extrinsics: the crop camera (rotated, mirrored) sees the (mirrored) world
            np.testing.assert_allclose(f["cam_R"], r3 @ rec["cam_R"] @ mirror, atol=1e-6)
            np.testing.assert_allclose(f["cam_R"] @ f["cam_R"].T, np.eye(3), atol=1e-6)
            assert np.linalg.det(f["cam_R"]) > 0.999
            np.testing.assert_allclose(f["cam_t"], r3 @ rec["cam_t"], atol=1e-6)
            world = world.reshape(2, 21, 3)[src].reshape(42, 3) @ mirror
            cam = world @ f["cam_R"].T + f["cam_t"]
            np.testing.assert_allclose(cam, f["joints3d"], atol=2e-5)
            np.testing.assert_allclose(project(cam, f["K"]), f["joints2d"], atol=2e-3)  # crop intrinsics -> crop joints
            np.testing.assert_allclose(f["joints2d"], affine(rec["joints2d"], A).reshape(2, 21, 2)[src].reshape(42, 2),
                                       atol=2e-3)
            # RootNet: per-hand depths (invariant under the crop's rotation about the optical axis), box moved
            np.testing.assert_allclose(f["rootnet_depth"], rec["rootnet"]["abs_depth"][src], atol=1e-7)
            assert bool(f["has_rootnet"]) == bool(rec["rootnet"]["valid"])
            np.testing.assert_allclose(f["rootnet_bbox"], rotated_box(corners(rec["rootnet"]["bbox"]), A,
                                                                      rec["rootnet"]["valid"], S, S), atol=1e-4)
            np.testing.assert_allclose(f["bbox"], rotated_box(corners(rec["bbox"]), A, True, S, S), atol=1e-4)
            for i, j in enumerate(src):  # the world fits, through the crop's extrinsics, give the crop joints
                fit = rec["mano"][SIDES[j]]
                assert bool(f["mano_valid"][i]) == bool(fit["valid"])
                np.testing.assert_allclose(f["mano_root_j0"][i], mirror @ fit["root_j0"], atol=1e-7)
                if fit["valid"]:
                    joints = mano_joints(models[SIDES[i]], f["mano_pose_world"][i], f["betas"][i],
                                         f["mano_transl_world"][i])
                    np.testing.assert_allclose(joints @ f["cam_R"].T + f["cam_t"], f["joints3d"][21 * i:21 * i + 21],
                                               atol=3e-5)
    assert flips == {True, False}


def test_coco_per_hand_cameras_are_crop_intrinsics_swapped_on_flips(coco):
    """NeuralAnnot's per-hand cameras reach batches as ``hand_K`` (2, 3, 3): points of hand i's own
    camera frame, rotated (and mirrored) with the crop, project with hand_K[i] onto the crop joints."""
    cfg = dict(coco["cfg"], augment=dict(flip="random", rotation=30.0, scale=0.2, shift=0.1))
    data = factory.make_data_factory(ml_collections.ConfigDict(cfg))
    frames = batch_frames(next(data("train", "frame", 12, True))) + eval_frames(data, "train")
    flips, fitted = set(), 0
    for f in frames:
        rec = coco["recs"]["train"][int(f["annot_id"])]
        flip = bool(f["aug_flip"])
        flips.add(flip)
        src = [1, 0] if flip else [0, 1]
        r3 = rot_z(float(f["aug_rotation"])) @ (MIRROR if flip else np.eye(3))
        assert bool(f["has_hand_K"]) == any(bool(rec["mano"][s]["valid"]) for s in SIDES)
        for i, j in enumerate(src):
            fit = rec["mano"][SIDES[j]]
            if not fit["valid"]:
                np.testing.assert_array_equal(f["hand_K"][i], np.zeros((3, 3)))
                continue
            (fx, fy), (cx, cy) = fit["focal"], fit["princpt"]
            uv = np.asarray(rec["joints2d"], np.float64)[21 * j:21 * j + 21]
            depth = np.linspace(0.3, 0.9, 21)[:, None]  # any depth: the rays of the record's pixels
            points = np.stack([(uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy, np.ones(21)], -1) * depth
            np.testing.assert_allclose(project(points @ r3.T, f["hand_K"][i]), f["joints2d"][21 * i:21 * i + 21],
                                       atol=2e-3)
            np.testing.assert_allclose(f["hand_K"][i][2], [0.0, 0.0, 1.0], atol=1e-7)
            fitted += 1
    assert flips == {True, False} and fitted > 0
