"""InterHand2.6M builder: a fixture in the real v1.0 layout, built and read back through grain.

The fixture's 3-D joints are MANO joints (handjax, a shifted copy of the built-in model
written as MANO_{RIGHT,LEFT}.pkl, the left one with the official shapedirs bug) so the
camera-frame MANO parameters can be checked against the converted world joints.
"""
import io
import json
import os
import pickle

import grain
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from scipy.spatial.transform import Rotation

from data_pipelines.interhand import get_builder, layout
from data_pipelines.manual import CorruptFileError, ManualDirError, prepare
from handjax.mano import apply_left_shapedirs_fix, from_axis_angle, load_model, mano_forward
from handjax.mano.builtin import builtin_mano_arrays

W, H = 12, 16
CAMS = ("400262", "400263")
OFFSET = np.array([0.09, 0.006, 0.006])  # rest wrist of the real MANO is ~9 cm from the origin


# ----------------------------------------------------------------------------- fixture
def write_mano_models(folder):
    """MANO_RIGHT/LEFT.pkl (plain numpy dicts, protocol 4): the built-in hand moved by OFFSET; the
    left file carries the official bug (shapedirs x-component equal to the right one's)."""
    os.makedirs(folder, exist_ok=True)
    right = builtin_mano_arrays("right")
    left = builtin_mano_arrays("left")
    right["v_template"] = right["v_template"] + OFFSET
    left["v_template"] = left["v_template"] + OFFSET * np.array([-1, 1, 1])
    left["shapedirs"] = left["shapedirs"].copy()
    left["shapedirs"][:, 0, :] = right["shapedirs"][:, 0, :]
    for arrays, side in ((right, "RIGHT"), (left, "LEFT")):
        arrays["J"] = arrays["J_regressor"] @ arrays["v_template"]
        with open(os.path.join(folder, f"MANO_{side}.pkl"), "wb") as fh:
            pickle.dump(arrays, fh, protocol=4)
    return folder


def true_models(folder):
    return {"right": load_model(folder, "right"), "left": apply_left_shapedirs_fix(load_model(folder, "left"))}


def mano_joints_m(model, pose, betas, trans):
    rot = from_axis_angle(model, jnp.asarray(pose, jnp.float32), flat_hand_mean=False)
    out = mano_forward(model, rot, jnp.asarray(betas, jnp.float32), jnp.asarray(trans, jnp.float32), "ih26m")
    return np.asarray(out.joints, np.float64)


def jpeg(rng, w=W, h=H):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def camera_params(rng):
    rot = Rotation.random(random_state=rng.integers(1 << 30)).as_matrix()
    campos = -rot.T @ np.array([0.0, 0.0, 600.0]) + rng.normal(0, 5, 3)  # origin ~0.6 m ahead
    return {"campos": campos.tolist(), "camrot": rot.tolist(), "focal": [30.0 + rng.uniform(), 31.0],
            "princpt": [W / 2 + rng.uniform(), H / 2]}


# split -> list of (annotation id, frame, camera index, hand_type, mano presence {hand: bool})
OCCLUDING = 30  # its left hand is placed between the camera and the right hand
PLAN = {
    "train": [(10, 100, 0, "interacting", {"right": True, "left": True}),
              (11, 101, 1, "right", {"right": True, "left": False}),
              (12, 102, 0, "left", {"right": False, "left": True})],
    "val": [(20, 200, 0, "interacting", {"right": True, "left": False})],  # no left fit: DIGIT mask invalid
    "test": [(30, 300, 0, "interacting", {"right": True, "left": True}),
             (31, 301, 1, "right", {"right": True, "left": False})],
}


def write_interhand(root, models, seed=0):
    """The v1.0 layout under root; returns the ground truth used (per split, per annotation)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for split, rows in PLAN.items():
        adir = os.path.join(root, "annotations", split)
        os.makedirs(adir, exist_ok=True)
        cams = {c: camera_params(rng) for c in CAMS}
        camera_json = {"0": {field: {c: cams[c][field] for c in CAMS} for field in
                             ("campos", "camrot", "focal", "princpt")}}
        data = {"images": [], "annotations": []}
        joints_json, mano_json, truth[split] = {"0": {}}, {"0": {}}, {}
        for n, (aid, frame, cam_i, hand_type, present) in enumerate(rows):
            cam = CAMS[cam_i]
            file_name = f"Capture0/0000_test_seq/cam{cam}/image{frame}.jpg"
            path = os.path.join(root, "images", split, file_name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(jpeg(rng))
            params, world = {}, {}
            for hand, sign in (("right", 1.0), ("left", -1.0)):
                pose = rng.normal(0, 0.3, 48)
                betas = rng.normal(0, 1.0, 10)
                trans = np.array([sign * 0.08, 0.0, 0.0]) + rng.normal(0, 0.02, 3) - OFFSET * [sign, 1, 1]
                params[hand] = {"pose": pose.tolist(), "shape": betas.tolist(), "trans": trans.tolist()}
                world[hand] = mano_joints_m(models[hand], pose, betas, trans) * 1000.0
            if aid == OCCLUDING:  # move the left hand 30 % of the way from the right hand towards the camera
                right_c, left_c = world["right"].mean(0), world["left"].mean(0)
                shift = right_c + 0.3 * (np.asarray(cams[cam]["campos"]) - right_c) - left_c  # mm
                params["left"]["trans"] = (np.asarray(params["left"]["trans"]) + shift / 1000.0).tolist()
                world["left"] = world["left"] + shift
            world = np.concatenate([world["right"], world["left"]])
            valid = np.ones(42)
            if hand_type == "right":
                valid[21:] = 0
            if hand_type == "left":
                valid[:21] = 0
            valid[3] = 0 if n == 0 else valid[3]
            data["images"].append({"id": 1000 + aid, "file_name": file_name, "width": W, "height": H,
                                   "capture": 0, "camera": cam, "frame_idx": frame, "seq_name": "0000_test_seq",
                                   "subject": 1})
            data["annotations"].append({"id": aid, "image_id": 1000 + aid, "bbox": [1.0, 2.0, 5.0, 6.0],
                                        "joint_valid": valid.reshape(42, 1).tolist(), "hand_type": hand_type,
                                        "hand_type_valid": int(n % 2 == 0)})
            joints_json["0"][str(frame)] = {"world_coord": world.tolist(), "joint_valid": valid.tolist(),
                                            "hand_type": hand_type, "hand_type_valid": True}
            mano_json["0"][str(frame)] = {h: (params[h] if present[h] else None) for h in ("right", "left")}
            truth[split][aid] = {"world": world, "cam": cams[cam], "params": params, "present": present,
                                 "valid": valid.astype(bool), "hand_type": hand_type, "hand_type_valid": n % 2 == 0}
        for kind, obj in (("data", data), ("camera", camera_json), ("joint_3d", joints_json),
                          ("MANO_NeuralAnnot", mano_json)):
            with open(os.path.join(adir, f"InterHand2.6M_{split}_{kind}.json"), "w") as fh:
                json.dump(obj, fh)
    os.makedirs(os.path.join(root, "rootnet_output"))
    with open(os.path.join(root, "rootnet_output", "rootnet_interhand2.6m_output_test.json"), "w") as fh:
        json.dump([{"annot_id": 30, "bbox": [0.5, 1.5, 8.0, 9.0], "abs_depth": [612.5, 598.0], "root_valid": 1}], fh)
    with open(os.path.join(root, "annotations", "aid_human_annot_train.txt"), "w") as fh:
        fh.write("10\n12\n")
    os.makedirs(os.path.join(root, "annotations", "test"), exist_ok=True)
    with open(os.path.join(root, "annotations", "test", "aid_human_annot_test.txt"), "w") as fh:
        fh.write("31\n")
    return truth


def read_split(builder_dir, split):
    source = tfds.builder_from_directory(builder_dir).as_data_source(split)
    ds = grain.MapDataset.source(source)
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ih")
    mano_dir = write_mano_models(str(tmp / "mano"))
    models = true_models(mano_dir)
    raw = str(tmp / "raw")
    truth = write_interhand(raw, models)
    builder = get_builder("5fps_hm", str(tmp / "out"), mano_dir=mano_dir)
    path = prepare(builder, raw)
    return {"raw": raw, "path": path, "truth": truth, "models": models, "mano_dir": mano_dir, "tmp": tmp}


# ----------------------------------------------------------------------------- tests
def test_records_round_trip_with_camera_conventions(built):
    info = tfds.builder_from_directory(built["path"]).info
    assert {k: v.num_examples for k, v in info.splits.items()} == {"train": 3, "val": 1, "test": 2}
    assert info.metadata["mano_pivot"]["left_shapedirs_fix_applied"] is True
    for split, truth in built["truth"].items():
        records = read_split(built["path"], split)
        assert [int(r["annot_id"]) for r in records] == [row[0] for row in PLAN[split]]
        for rec in records:
            t = truth[int(rec["annot_id"])]
            cam = t["cam"]
            rot, campos = np.array(cam["camrot"]), np.array(cam["campos"])
            expected = (t["world"] - campos) @ rot.T / 1000.0  # InterHand world2cam, mm -> m
            np.testing.assert_allclose(rec["joints3d"], expected, atol=2e-6)
            K = np.array([[cam["focal"][0], 0, cam["princpt"][0]], [0, cam["focal"][1], cam["princpt"][1]], [0, 0, 1]])
            np.testing.assert_allclose(rec["K"], K, rtol=1e-6)
            uv = expected[:, :2] / expected[:, 2:] * np.diag(K)[:2] + K[:2, 2]
            np.testing.assert_allclose(rec["joints2d"], uv, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(rec["cam_t"], -rot @ campos / 1000.0, atol=1e-6)
            np.testing.assert_array_equal(rec["joint_valid"], t["valid"])
            assert rec["hand_type"] == layout.HAND_TYPES.index(t["hand_type"])
            assert bool(rec["hand_type_valid"]) == t["hand_type_valid"]
            assert rec["image"].shape == (H, W, 3)
            np.testing.assert_array_equal(rec["image_size"], [H, W])
            path = os.path.join(built["raw"], "images", split, rec["file_name"].decode())
            np.testing.assert_array_equal(rec["image"], np.asarray(Image.open(path).convert("RGB")))


def test_camera_frame_mano_reproduces_converted_world_joints(built):
    """The J0-pivot conversion: MANO with the stored camera-frame params gives the camera joints;
    the naive translation R trans + t (no pivot) would be off by centimetres."""
    models = built["models"]
    checked = 0
    for split, truth in built["truth"].items():
        for rec in read_split(built["path"], split):
            t = truth[int(rec["annot_id"])]
            for hand, sl in (("right", slice(0, 21)), ("left", slice(21, 42))):
                m = rec["mano"][hand]
                assert bool(m["valid"]) == t["present"][hand]
                if not t["present"][hand]:
                    np.testing.assert_array_equal(m["pose"], 0)
                    continue
                joints = mano_joints_m(models[hand], m["pose"], m["betas"], m["transl"])
                np.testing.assert_allclose(joints, rec["joints3d"][sl], atol=2e-5)
                np.testing.assert_allclose(m["pose_world"], t["params"][hand]["pose"], rtol=1e-6)
                np.testing.assert_allclose(m["pose"][3:], m["pose_world"][3:])
                naive = rec["cam_R"] @ np.array(t["params"][hand]["trans"]) + rec["cam_t"]
                assert np.linalg.norm(naive - m["transl"]) > 0.01
                checked += 1
    assert checked == 8


def test_rootnet_and_ids(built):
    test = read_split(built["path"], "test")
    np.testing.assert_allclose(test[0]["rootnet"]["abs_depth"], [0.6125, 0.598], rtol=1e-6)
    np.testing.assert_allclose(test[0]["rootnet"]["bbox"], [0.5, 1.5, 8.0, 9.0])
    assert bool(test[0]["rootnet"]["valid"]) and not bool(test[1]["rootnet"]["valid"])
    train = read_split(built["path"], "train")
    assert not any(bool(r["rootnet"]["valid"]) for r in train)
    assert [r["camera"] for r in train] == [b"400262", b"400263", b"400262"]
    assert [int(r["sequence_id"]) for r in train] == [0, 1, 0]
    assert [int(r["frame_idx"]) for r in train] == [100, 101, 102]
    assert int(train[0]["image_id"]) == 1010 and int(train[0]["subject"]) == 1


def test_human_and_machine_subsets(built):
    out = str(built["tmp"] / "out_subsets")
    h = prepare(get_builder("5fps_h", out, mano_dir=built["mano_dir"]), built["raw"])
    info = tfds.builder_from_directory(h).info
    assert sorted(info.splits) == ["test", "train"]
    assert [int(r["annot_id"]) for r in read_split(h, "train")] == [10, 12]
    assert [int(r["annot_id"]) for r in read_split(h, "test")] == [31]
    m = prepare(get_builder("5fps_m", out, mano_dir=built["mano_dir"]), built["raw"])
    assert [int(r["annot_id"]) for r in read_split(m, "train")] == [11]
    assert [int(r["annot_id"]) for r in read_split(m, "val")] == [20]  # v1.0 val is machine-only
    assert [int(r["annot_id"]) for r in read_split(m, "test")] == [30]


def test_missing_files_are_all_listed(tmp_path):
    raw = tmp_path / "raw"
    (raw / "annotations" / "train").mkdir(parents=True)
    (raw / "annotations" / "train" / "InterHand2.6M_train_data.json").write_text("{}")
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("5fps_h", str(tmp_path / "out")), str(raw))
    missing = err.value.missing
    # train: 3 other json + images dir + id list; test: 4 json + images dir + id list
    assert len(missing) == 11
    assert "annotations/test/InterHand2.6M_test_MANO_NeuralAnnot.json" in missing
    assert "images/train/" in missing
    assert any("aid_human_annot_test.txt" in m for m in missing)
    assert "mks0601.github.io/InterHand2.6M" in str(err.value)


def test_missing_images_are_all_listed(built, tmp_path):
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    gone = ["images/train/Capture0/0000_test_seq/cam400263/image101.jpg",
            "images/test/Capture0/0000_test_seq/cam400262/image300.jpg"]
    for rel in gone:
        os.remove(raw / rel)
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("5fps_hm", str(tmp_path / "out"), mano_dir=built["mano_dir"]), str(raw))
    assert sorted(err.value.missing) == sorted(gone)


def test_corrupt_image_named_or_skipped(built, tmp_path):
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    bad = raw / "images/train/Capture0/0000_test_seq/cam400262/image100.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(CorruptFileError, match="image100.jpg"):
        prepare(get_builder("5fps_hm", str(tmp_path / "out"), mano_dir=built["mano_dir"]), str(raw))
    # a second corruption: an annotation entry with a malformed world_coord
    jpath = raw / "annotations/test/InterHand2.6M_test_joint_3d.json"
    joints = json.loads(jpath.read_text())
    joints["0"]["301"]["world_coord"] = joints["0"]["301"]["world_coord"][:40]
    jpath.write_text(json.dumps(joints))
    builder = get_builder("5fps_hm", str(tmp_path / "out2"), mano_dir=built["mano_dir"], skip_corrupt=True)
    path = prepare(builder, str(raw))
    info = tfds.builder_from_directory(path).info
    assert {k: v.num_examples for k, v in info.splits.items()} == {"train": 2, "val": 1, "test": 1}
    assert builder.policy.count == 2
    skipped = info.metadata["skipped"]
    assert "image100.jpg" in skipped["train"][0]["path"] and skipped["val"] == []
    assert skipped["train"][0]["sample_id"] == 10 and len(skipped["train"]) == 1
    assert "world_coord" in skipped["test"][0]["reason"] and skipped["test"][0]["sample_id"] == 31
    assert [int(r["annot_id"]) for r in read_split(path, "test")] == [30]


def test_corrupt_annotation_file_is_named(built, tmp_path):
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    (raw / "annotations/test/InterHand2.6M_test_camera.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="InterHand2.6M_test_camera.json"):
        prepare(get_builder("5fps_hm", str(tmp_path / "out"), mano_dir=built["mano_dir"]), str(raw))


def test_records_feed_the_two_hand_protocol(built):
    """Stored hand_type codes / joint layout are the ones handjax.eval.two_hand expects."""
    from handjax.eval.two_hand import HAND_TYPES, evaluate_interhand, relative_root

    assert HAND_TYPES == layout.HAND_TYPES
    recs = read_split(built["path"], "train") + read_split(built["path"], "test")
    gt = np.stack([r["joints3d"] for r in recs])
    valid = np.stack([r["joint_valid"] for r in recs])
    codes = np.array([int(r["hand_type"]) for r in recs])
    pred = gt.copy()
    pred[:, 0] += [0.002, 0.0, 0.0]  # right thumb tip 2 mm off in every frame
    res = evaluate_interhand(pred, gt, valid, codes, pred_rel_root=relative_root(gt))
    right_frames = np.sum(valid[:, 0] & valid[:, 20])
    assert res["joint_count_all"][0] == right_frames
    np.testing.assert_allclose(res["per_joint_all_mm"][0], 2.0, rtol=1e-4)
    assert res["mrrpe_mm"] == 0.0 and res["mrrpe_frames"] == 2


# ----------------------------------------------------------------------------- part segmentation
def camera_vertices(models, hand, params, cam):
    """World-frame fit -> camera-frame vertices (m), straight from the fixture's numbers."""
    rot = from_axis_angle(models[hand], jnp.asarray(params["pose"], jnp.float32), flat_hand_mean=False)
    out = mano_forward(models[hand], rot, jnp.asarray(params["shape"], jnp.float32),
                       jnp.asarray(params["trans"], jnp.float32), "ih26m")
    world_mm = np.asarray(out.vertices, np.float64) * 1000.0
    return (world_mm - np.array(cam["campos"])) @ np.array(cam["camrot"]).T / 1000.0


def numpy_zbuffer(hands, K, size):
    """Independent reference renderer: per pixel centre the nearest covering face of all hands
    (closed triangles, perspective-correct depth, lowest face index on ties).
    hands: list of (verts (V, 3), faces (F, 3), face classes (F,)). -> (H, W) classes, (H, W) depth."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    px = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    best = np.full(h * w, np.inf)
    cls = np.zeros(h * w, np.int64)
    for verts, faces, classes in hands:
        uv = verts @ K.T
        uv = uv[:, :2] / uv[:, 2:]
        a, b, c = (uv[faces[:, k]] for k in range(3))
        za, zb, zc = (verts[faces[:, k], 2] for k in range(3))
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        for f in np.flatnonzero(np.abs(area) > 1e-12):
            e = lambda p, q: (q[0] - p[0]) * (px[:, 1] - p[1]) - (q[1] - p[1]) * (px[:, 0] - p[0])  # noqa: E731
            w0, w1, w2 = e(b[f], c[f]) / area[f], e(c[f], a[f]) / area[f], e(a[f], b[f]) / area[f]
            inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
            z = 1.0 / (w0 / za[f] + w1 / zb[f] + w2 / zc[f])
            take = inside & (z < best)
            best[take], cls[take] = z[take], classes[f]
    return cls.reshape(h, w), np.where(np.isfinite(best), best, 0).reshape(h, w)


def reference_masks(models, truth_entry, cam):
    """(classes, right-only depth, left-only depth) of a frame with the independent renderer."""
    from handjax.mano.builtin import face_part_labels

    right = models["right"]
    labels = face_part_labels(np.asarray(right.faces), np.asarray(right.lbs_weights))
    faces = np.asarray(right.faces, np.int64)
    loop = np.array([108, 79, 78, 121, 214, 215, 279, 239, 234, 92, 38, 122, 118, 117, 119, 120])
    # DIGIT's seal: the boundary loop in winding order around a new centre vertex, palm label 8
    edges = {(int(x), int(y)) for f in faces for x, y in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
    nxt = {x: y for x, y in edges if x in set(loop) and y in set(loop) and (y, x) not in edges}
    order = [int(loop[0])]
    while len(order) < len(loop):
        order.append(nxt[order[-1]])
    fan = np.array([[nxt[v], v, 778] for v in order])
    sealed = np.concatenate([faces, fan])
    sealed_labels = np.concatenate([labels, np.full(len(fan), 8)])
    K = np.array([[cam["focal"][0], 0, cam["princpt"][0]], [0, cam["focal"][1], cam["princpt"][1]], [0, 0, 1]])
    hands, depth = [], {}
    for hand, offset, tri in (("right", 1, sealed), ("left", 17, sealed[:, [1, 0, 2]])):
        if not truth_entry["present"][hand]:
            continue
        v = camera_vertices(models, hand, truth_entry["params"][hand], cam)
        v = np.concatenate([v, v[loop].mean(0, keepdims=True)])
        hands.append((v, tri, sealed_labels + offset))
        depth[hand] = numpy_zbuffer([(v, tri, sealed_labels + offset)], K, (H, W))[1]
    return numpy_zbuffer(hands, K, (H, W))[0], depth


def test_part_segmentation_matches_independent_render(built):
    info = tfds.builder_from_directory(built["path"]).info
    assert info.metadata["part_seg"]["rendered"] is True
    assert info.metadata["part_seg"]["seconds_per_frame"] > 0
    n_pixels = 0
    for split, truth in built["truth"].items():
        for rec in read_split(built["path"], split):
            t = truth[int(rec["annot_id"])]
            expected, _ = reference_masks(built["models"], t, t["cam"])
            got = rec["part_seg"][..., 0]
            assert got.shape == (H, W)
            np.testing.assert_array_equal(got, expected)
            n_pixels += int((got > 0).sum())
            # DIGIT's mano_valid: interacting needs both fits, single hands their own fit only
            assert bool(rec["has_part_seg"]) == (int(rec["annot_id"]) != 20)
            if not t["present"]["left"]:
                assert not np.any(got >= 17)
            if not t["present"]["right"]:
                assert not np.any((got >= 1) & (got <= 16))
    assert n_pixels > 100  # the hands do cover pixels


def test_part_segmentation_mutual_occlusion(built):
    """Where both hands cover a pixel, the nearer one's label is stored: the occluding left hand
    shows left labels (17..32) in front of the right hand."""
    rec = next(r for r in read_split(built["path"], "test") if int(r["annot_id"]) == OCCLUDING)
    t = built["truth"]["test"][OCCLUDING]
    _, depth = reference_masks(built["models"], t, t["cam"])
    both = (depth["right"] > 0) & (depth["left"] > 0)
    left_front = both & (depth["left"] < depth["right"])
    got = rec["part_seg"][..., 0]
    assert left_front.sum() >= 5, "fixture: the left hand should overlap the right one"
    assert np.all(got[left_front] >= 17)
    assert np.all((got[both & ~left_front] >= 1) & (got[both & ~left_front] <= 16))


def test_part_segmentation_needs_real_mano(built, tmp_path, capsys):
    """No MANO dir: nothing is rendered with the built-in hand; flags False, said in the report."""
    path = prepare(get_builder("5fps_h", str(tmp_path / "out")), built["raw"])
    info = tfds.builder_from_directory(path).info
    assert info.metadata["part_seg"]["rendered"] is False and "MANO" in info.metadata["part_seg"]["reason"]
    recs = read_split(path, "train")
    assert not any(bool(r["has_part_seg"]) for r in recs)
    assert all(r["part_seg"].shape == (H, W, 1) and not r["part_seg"].any() for r in recs)
    assert "part segmentation NOT rendered" in capsys.readouterr().err
    off = prepare(get_builder("5fps_h", str(tmp_path / "out2"), mano_dir=built["mano_dir"], render_part_seg=False),
                  built["raw"])
    assert "no_part_seg" in tfds.builder_from_directory(off).info.metadata["part_seg"]["reason"]
