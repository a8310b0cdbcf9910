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
PLAN = {
    "train": [(10, 100, 0, "interacting", {"right": True, "left": True}),
              (11, 101, 1, "right", {"right": True, "left": False}),
              (12, 102, 0, "left", {"right": False, "left": True})],
    "val": [(20, 200, 0, "interacting", {"right": True, "left": True})],
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
            params, world = {}, []
            for hand, sign in (("right", 1.0), ("left", -1.0)):
                pose = rng.normal(0, 0.3, 48)
                betas = rng.normal(0, 1.0, 10)
                trans = np.array([sign * 0.08, 0.0, 0.0]) + rng.normal(0, 0.02, 3) - OFFSET * [sign, 1, 1]
                params[hand] = {"pose": pose.tolist(), "shape": betas.tolist(), "trans": trans.tolist()}
                world.append(mano_joints_m(models[hand], pose, betas, trans) * 1000.0)
            world = np.concatenate(world)
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
    assert checked == 9


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
    assert "world_coord" in skipped["test"][0]["reason"]
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
