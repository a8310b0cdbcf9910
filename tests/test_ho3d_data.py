"""HO-3D tfds builder (v2 / v3) on fixtures in the download's exact layout (Python-2 meta
pickles): official order, OpenGL -> OpenCV conversion, missing evaluation labels, errors,
and reading through the grain pipeline."""
import os
import pickle

import grain
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy.spatial.transform import Rotation

from data_pipelines import manual
from data_pipelines.ho3d import build as build_cli
from data_pipelines.ho3d import ensure_built, make_mano_fn, meta_to_labels
from data_pipelines.pipeline import FrameSource, make_pipeline
from hand_dataset_fixtures import corrupt_file, opengl_to_opencv_reference, py2_pickle_dump, write_ho3d
from handjax import mano

SIZE = (12, 16)  # H, W


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("ho3d_raw")
    return root, write_ho3d(root, "v2", size=SIZE)


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    root, _ = raw
    return ensure_built("v2", str(tmp_path_factory.mktemp("ho3d_data")), str(root), mano_model="builtin")


def records(builder_dir, split):
    return list(grain.MapDataset.source(tfds.builder_from_directory(builder_dir).as_data_source(split)))


def project(points, K):
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return p[:, :2] / p[:, 2:]


def name(rec):
    return f"{rec['sequence'].decode()}/{int(rec['frame_index']):04d}"


def test_records_follow_the_split_files(built, raw):
    _, gt = raw
    for split in ("train", "evaluation"):
        recs = records(built, split)
        assert [name(r) for r in recs] == gt[split]["lines"]  # evaluation.txt order, not sorted
        assert [int(r["eval_index"]) for r in recs] == list(range(len(recs)))
    info = tfds.builder_from_directory(built).info
    assert info.metadata["sequences"] == ["ABF10", "AP10", "MC1", "SM1"]
    ev = records(built, "evaluation")
    assert [info.metadata["sequences"][int(r["sequence_id"])] for r in ev] == [l.split("/")[0] for l in
                                                                               gt["evaluation"]["lines"]]


def test_train_labels_in_opencv(built, raw):
    _, gt = raw
    for rec in records(built, "train"):
        meta = gt["train"]["metas"][name(rec)]
        joints_cv = opengl_to_opencv_reference(meta["handJoints3D"])
        np.testing.assert_allclose(rec["joints3d"], joints_cv, atol=1e-6)
        assert np.all(rec["joints3d"][:, 2] > 0)  # in front of the camera (OpenCV z forward)
        np.testing.assert_allclose(rec["joints2d"], project(joints_cv, meta["camMat"]), atol=1e-3)
        np.testing.assert_allclose(rec["root3d"], joints_cv[0], atol=1e-6)
        np.testing.assert_allclose(rec["K"], meta["camMat"], atol=1e-6)
        # global orientation R -> F R with F = diag(1, -1, -1); finger poses unchanged
        F = np.diag([1.0, -1.0, -1.0])
        r_gl = Rotation.from_rotvec(meta["handPose"][:3]).as_matrix()
        np.testing.assert_allclose(Rotation.from_rotvec(rec["mano_pose"][:3]).as_matrix(), F @ r_gl, atol=1e-5)
        np.testing.assert_allclose(rec["mano_pose"][3:], meta["handPose"][3:], atol=1e-6)
        np.testing.assert_allclose(rec["betas"], meta["handBeta"], atol=1e-6)
        r_obj = Rotation.from_rotvec(meta["objRot"][:, 0]).as_matrix()
        np.testing.assert_allclose(Rotation.from_rotvec(rec["obj_rot"]).as_matrix(), F @ r_obj, atol=1e-5)
        np.testing.assert_allclose(rec["obj_trans"], opengl_to_opencv_reference(meta["objTrans"]), atol=1e-6)
        np.testing.assert_allclose(rec["obj_corners_rest"], meta["objCorners3DRest"], atol=1e-6)
        assert rec["obj_name"] == b"003_cracker_box" and not bool(rec["mano_pose_relative"])
        flags = {k: bool(rec[k]) for k in rec if k.startswith("has_")}
        assert flags == {"has_joints3d": True, "has_joints2d": True, "has_root3d": True, "has_vertices": True,
                         "has_mano": True, "has_transl": True, "has_bbox": False, "has_object": True}


def test_an_opengl_point_comes_back_in_opencv_and_projects():
    """A point 0.5 m in front of an OpenGL camera (z = -0.5), slightly up (y > 0) and right."""
    K = np.array([[400.0, 0, 320], [0, 400.0, 240], [0, 0, 1]])
    gl = np.array([0.05, 0.02, -0.5])
    joints = np.tile(gl, (21, 1))
    labels = meta_to_labels({"camMat": K, "handJoints3D": joints, "handPose": None}, "x.pkl")
    np.testing.assert_allclose(labels["joints3d"][0], [0.05, -0.02, 0.5], atol=1e-7)
    # up in the world (y > 0 in OpenGL) is above the principal point in the image (v < cy)
    np.testing.assert_allclose(labels["joints2d"][0], [320 + 400 * 0.1, 240 - 400 * 0.04], atol=1e-3)


def test_converted_mano_parameters_reproduce_the_flipped_mesh():
    """MANO(pose', betas, transl') in OpenCV == F * MANO(pose, betas, transl) in OpenGL, with the
    rest-pose wrist taken from the annotation's root joint (the builder's translation rule)."""
    model = mano.load_model(None, "right")
    rng = np.random.default_rng(3)
    pose, betas, trans = rng.normal(0, 0.4, 48), rng.normal(0, 1, 10), np.array([0.02, -0.01, -0.45])
    out_gl = mano.mano_forward(model, mano.from_axis_angle(model, jnp.asarray(pose, jnp.float32)),
                               jnp.asarray(betas, jnp.float32), jnp.asarray(trans, jnp.float32), "ho3d")
    meta = {"camMat": np.eye(3), "handPose": pose, "handBeta": betas, "handTrans": trans,
            "handJoints3D": np.asarray(out_gl.joints, np.float64)}
    labels = meta_to_labels(meta, "m.pkl", make_mano_fn("builtin"))
    flip = np.array([1.0, -1.0, -1.0])
    np.testing.assert_allclose(labels["vertices"], np.asarray(out_gl.vertices) * flip, atol=1e-5)
    out_cv = mano.mano_forward(model, mano.from_axis_angle(model, jnp.asarray(labels["mano_pose"])),
                               jnp.asarray(labels["betas"]), jnp.asarray(labels["transl"]), "ho3d")
    np.testing.assert_allclose(np.asarray(out_cv.vertices), labels["vertices"], atol=2e-5)
    np.testing.assert_allclose(np.asarray(out_cv.joints), labels["joints3d"], atol=2e-5)


def test_vertices_in_the_built_dataset(built, raw):
    _, gt = raw
    model = mano.load_model(None, "right")
    rec = records(built, "train")[1]
    meta = gt["train"]["metas"][name(rec)]
    ref = mano.mano_forward(model, mano.from_axis_angle(model, jnp.asarray(meta["handPose"], jnp.float32)),
                            jnp.asarray(meta["handBeta"], jnp.float32), jnp.asarray(meta["handTrans"], jnp.float32),
                            "ho3d").vertices
    np.testing.assert_allclose(rec["vertices"], opengl_to_opencv_reference(np.asarray(ref)), atol=1e-5)
    assert tfds.builder_from_directory(built).info.metadata["vertices_from"] == "builtin"


def test_evaluation_without_ground_truth_is_masked(built, raw):
    _, gt = raw
    for rec in records(built, "evaluation"):
        meta = gt["evaluation"]["metas"][name(rec)]
        assert not bool(rec["has_joints3d"]) and not bool(rec["has_mano"]) and not bool(rec["has_vertices"])
        assert not bool(rec["annotated"]) and not rec["joints3d"].any() and not rec["vertices"].any()
        assert bool(rec["has_root3d"]) and bool(rec["has_bbox"])
        np.testing.assert_allclose(rec["root3d"], opengl_to_opencv_reference(meta["handJoints3D"]), atol=1e-6)
        np.testing.assert_allclose(rec["bbox"], meta["handBoundingBox"], atol=1e-5)


def test_released_evaluation_ground_truth_and_v3_jpegs(tmp_path):
    root = tmp_path / "raw"
    gt = write_ho3d(root, "v3", size=SIZE, eval_full_gt=True, seed=1)
    assert (root / "train" / "ABF10" / "rgb" / "0000.jpg").is_file()
    path = build_cli.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "out"), "--config", "v3"])
    assert path.endswith(os.path.join("ho3d", "v3", "1.0.0"))
    src = tfds.builder_from_directory(path).as_data_source("evaluation", decoders={"image": tfds.decode.SkipDecoding()})
    for r in range(len(src)):
        rec = src[r]
        meta = gt["evaluation"]["metas"][name(rec)]
        assert rec["image"] == meta["_image"]  # original JPEG bytes
        assert bool(rec["has_joints3d"]) and bool(rec["has_mano"]) and not bool(rec["has_vertices"])
        np.testing.assert_allclose(rec["joints3d"], opengl_to_opencv_reference(meta["handJoints3D"]), atol=1e-6)


def test_missing_files_are_all_listed(tmp_path):
    root = tmp_path / "raw"
    write_ho3d(root, "v2", size=SIZE)
    os.remove(root / "train" / "MC1" / "meta" / "0001.pkl")
    os.remove(root / "train" / "ABF10" / "rgb" / "0002.png")
    os.remove(root / "evaluation" / "SM1" / "rgb" / "0000.png")
    with pytest.raises(manual.ManualDirError) as err:
        build_cli.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "out")])
    assert sorted(err.value.missing) == sorted([
        "train/MC1/meta/0001.pkl", "train/ABF10/rgb/0002.png | train/ABF10/rgb/0002.jpg",
        "evaluation/SM1/rgb/0000.png | evaluation/SM1/rgb/0000.jpg"])
    os.remove(root / "evaluation.txt")
    with pytest.raises(manual.ManualDirError) as err:
        build_cli.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "out")])
    assert "evaluation.txt" in err.value.missing and "train/MC1/meta/0001.pkl" in err.value.missing


def test_corrupt_and_forbidden_pickles(tmp_path, capsys):
    root = tmp_path / "raw"
    gt = write_ho3d(root, "v2", size=SIZE)
    bad = root / "train" / "ABF10" / "meta" / "0001.pkl"
    corrupt_file(bad)
    with pytest.raises(manual.CorruptFileError, match=str(bad)):
        build_cli.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "a")])
    evil = root / "evaluation" / "AP10" / "meta" / "0000.pkl"
    with open(evil, "wb") as fh:
        pickle.dump({"handJoints3D": os.getcwd, "camMat": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, fh, protocol=2)
    wrong = root / "train" / "MC1" / "meta" / "0000.pkl"
    meta = dict(gt["train"]["metas"]["MC1/0000"])
    meta["handPose"] = np.zeros(45)
    py2_pickle_dump({k: v for k, v in meta.items() if not k.startswith("_")}, wrong)
    path = build_cli.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "b"), "--skip_corrupt"])
    err = capsys.readouterr().err
    assert "skipped 3" in err and str(bad) in err and str(wrong) in err and "handPose" in err
    assert "getcwd" in err and str(evil) in err  # the refused global and its file
    assert [name(r) for r in records(path, "train")] == ["ABF10/0000", "ABF10/0002", "MC1/0001"]
    ev = records(path, "evaluation")
    assert "AP10/0000" not in [name(r) for r in ev]
    # eval_index keeps the position in evaluation.txt, so the official order survives skipping
    assert [int(r["eval_index"]) for r in ev] == [gt["evaluation"]["lines"].index(name(r)) for r in ev]


def test_pipeline_bbox_crop_and_windows(built, raw):
    _, gt = raw
    it = make_pipeline(built, "evaluation", mode="frame", batch_size=2, image_size=20, shuffle=False, num_epochs=1,
                       augment=dict(crop_from="bbox", bbox_pad=2.0), shard_index=0, shard_count=1)
    b = next(it)
    for i in range(2):
        x1, y1, x2, y2 = gt["evaluation"]["metas"][gt["evaluation"]["lines"][int(b["eval_index"][i])]]["handBoundingBox"]
        side = 2.0 * max(x2 - x1, y2 - y1)
        a = b["crop_affine"][i].astype(np.float64)
        np.testing.assert_allclose(a[:2, :2], np.eye(2) * 20 / side, rtol=1e-5)  # square of 2 x the longer side
        np.testing.assert_allclose(a[:2, :2] @ [(x1 + x2) / 2, (y1 + y2) / 2] + a[:2, 2], [9.5, 9.5], atol=1e-4)
    assert not b["has_joints3d"].any() and b["has_bbox"].all()
    assert set(b) >= {"image", "joints3d", "vertices", "mask", "part_seg", "transl", "eval_index", "valid"} - {"valid"}
    src = FrameSource(built, "train")
    w = next(make_pipeline(src, "train", mode="window", batch_size=2, image_size=16, k=2, window=1, seed=0,
                           shard_index=0, shard_count=1))
    assert (w["sequence_id"][:, 0] == w["sequence_id"][:, 1]).all()
    assert (np.abs(w["frame_index"][:, 0] - w["frame_index"][:, 1]) <= 1).all()
    assert w["has_joints3d"].all() and w["has_transl"].all()
