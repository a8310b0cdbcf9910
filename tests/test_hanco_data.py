"""HanCo builder on a format-exact fixture (lmb-freiburg/contra-hand ``show_dataset.py``: meta.json,
rgb/SID/camCID/FID.jpg, xyz/SID/FID.json, calib/SID/FID.json {K: 8 x 3x3, M: 8 x 4x4}, shape/SID/FID.json
{poses (1, 48), shapes (1, 10), global_t (1, 3)}), read through the data factory as video."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_pipelines import hanco, manual
from data_pipelines.factory import make_data_factory

FRAMES = (3, 2)  # frames per sequence
SIZE = 24  # HanCo frames are 224 x 224; a small fixture of the same layout
HAS_FIT = ([True, False, True], [True, True])


def rodrigues(aa):
    """Axis-angle -> rotation matrix (numpy, independent of handjax)."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa)
    if theta < 1e-12:
        return np.eye(3)
    k = aa / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def log_rotation(r):
    """Rotation matrix -> axis-angle (numpy; angles in (0, pi))."""
    theta = np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return w / (2 * np.sin(theta)) * theta


def write_fixture(root, rng):
    """A HanCo download in its on-disk format; returns the ground truth written."""
    meta = {"is_train": [[True] * n if s == 0 else [False] * n for s, n in enumerate(FRAMES)],
            "subject_id": [[7] * n if s == 0 else [3] * n for s, n in enumerate(FRAMES)],
            "is_valid": [list(HAS_FIT[0][:1]) + [False] * (FRAMES[0] - 1), [True] * FRAMES[1]],
            "object_id": [[None] * FRAMES[0], [12] * FRAMES[1]],
            "has_fit": [list(f) for f in HAS_FIT]}
    (root / "meta.json").write_text(json.dumps(meta))
    truth = {}
    for sid, n in enumerate(FRAMES):
        for fid in range(n):
            xyz = rng.normal(0, 0.03, (21, 3)) + [0.0, 0.0, 0.1]
            K = [[[200.0 + c, 0, 12.0], [0, 210.0, 11.5], [0, 0, 1]] for c in range(8)]
            M = []
            for c in range(8):
                m = np.eye(4)
                m[:3, :3] = rodrigues(rng.normal(0, 0.4, 3))
                m[:3, 3] = [0.01 * c, -0.02, 0.5 + 0.05 * c]
                M.append(m.tolist())
            for d in ("xyz", "calib", "shape"):
                (root / d / f"{sid:04d}").mkdir(parents=True, exist_ok=True)
            (root / hanco.hanco_dataset_builder.xyz_path(sid, fid)).write_text(json.dumps(xyz.tolist()))
            (root / hanco.hanco_dataset_builder.calib_path(sid, fid)).write_text(json.dumps({"K": K, "M": M}))
            shape = None
            if HAS_FIT[sid][fid]:
                shape = {"poses": [rng.normal(0, 0.5, 48).tolist()], "shapes": [rng.normal(0, 1, 10).tolist()],
                         "global_t": [[0.0, 0.0, 0.1]]}
                (root / hanco.hanco_dataset_builder.shape_path(sid, fid)).write_text(json.dumps(shape))
            for c in range(8):
                path = root / hanco.hanco_dataset_builder.image_path(sid, c, fid)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((SIZE, SIZE, 3), 10 * c + fid, np.uint8)).save(path, "JPEG")
            truth[(sid, fid)] = (xyz, np.asarray(K), np.asarray(M), shape)
    return meta, truth


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    raw = tmp_path_factory.mktemp("hanco_raw")
    meta, truth = write_fixture(raw, np.random.default_rng(0))
    out = tmp_path_factory.mktemp("hanco_tfds")
    return raw, out, meta, truth, hanco.ensure_built("default", str(out), str(raw))


def test_records_labels_and_video_layout(built):
    import tensorflow_datasets as tfds

    _, _, meta, truth, path = built
    src = tfds.builder_from_directory(path).as_data_source("train")
    expected_order = [(s, c, f) for s, n in enumerate(FRAMES) for c in range(8) for f in range(n)]
    assert len(src) == len(expected_order) == 8 * sum(FRAMES)
    for r, (sid, cid, fid) in enumerate(expected_order):
        rec = src[r]
        xyz, K, M, shape = truth[(sid, fid)]
        assert (int(rec["sequence"]), int(rec["camera"]), int(rec["frame_index"])) == (sid, cid, fid)
        assert int(rec["sequence_id"]) == 8 * sid + cid  # one video per camera view
        cam = xyz @ M[cid][:3, :3].T + M[cid][:3, 3]
        np.testing.assert_allclose(rec["joints3d"], cam, atol=1e-6)
        uv = (cam @ K[cid].T)[:, :2] / (cam @ K[cid].T)[:, 2:]  # show_dataset.py's projection
        np.testing.assert_allclose(rec["joints2d"], uv, atol=1e-4)
        np.testing.assert_allclose(rec["K"], K[cid], atol=1e-6)
        assert bool(rec["has_mano"]) == HAS_FIT[sid][fid] and bool(rec["mano_pose_relative"])
        assert bool(rec["green_screen"]) == (sid == 0) and int(rec["subject_id"]) == (7 if sid == 0 else 3)
        assert int(rec["object_id"]) == (-1 if sid == 0 else 12)
        if shape is None:
            assert not np.any(rec["mano_pose"]) and not np.any(rec["betas"])
            continue
        pose = np.asarray(shape["poses"][0])
        np.testing.assert_allclose(rec["mano_pose"][3:], pose[3:], atol=1e-6)  # fingers stay relative
        np.testing.assert_allclose(rec["betas"], shape["shapes"][0], atol=1e-6)
        r_cam = M[cid][:3, :3] @ rodrigues(pose[:3])  # global orientation moved into camera cid
        np.testing.assert_allclose(rodrigues(rec["mano_pose"][:3]), r_cam, atol=1e-5)
        np.testing.assert_allclose(rec["mano_pose"][:3], log_rotation(r_cam), atol=1e-4)
    img = np.asarray(src[8 * FRAMES[0] + 1]["image"])  # sequence 1, camera 0, frame 1
    assert img.shape == (SIZE, SIZE, 3) and abs(int(img.mean()) - 1) <= 2


def test_factory_window_mode_and_betas_without_hand_mean(built):
    _, out, _, _, _ = built
    data = make_data_factory(dict(name="hanco", data_dir=str(out), image_size=16, num_workers=0,
                                  augment=dict(crop_from="image", bbox_pad=1.0)), seed=0)
    b = next(data(split="train", mode="window", batch_size=4, train=True, k=2, window=1))
    assert b["image"].shape == (4, 2, 16, 16, 3)
    assert np.all(b["sequence_id"][:, 0] == b["sequence_id"][:, 1])  # positives from the same view's video
    assert np.all(np.abs(b["frame_index"][:, 0] - b["frame_index"][:, 1]) <= 1)
    frames = next(data(split="train", mode="frame", batch_size=len(hanco_records := range(8 * sum(FRAMES))),
                       train=False))
    fit = np.array([HAS_FIT[s][f] for s, n in enumerate(FRAMES) for _ in range(8) for f in range(n)])
    assert len(hanco_records) == len(fit)
    # no data.mano_model: the relative finger poses are masked, the betas are not
    assert not frames["has_mano"].any() and np.array_equal(frames["has_betas"], fit)


def test_missing_and_corrupt_files_are_named(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_fixture(raw, np.random.default_rng(1))
    (raw / hanco.hanco_dataset_builder.shape_path(1, 0)).unlink()  # has_fit is true there
    (raw / hanco.hanco_dataset_builder.image_path(0, 5, 2)).unlink()
    with pytest.raises(manual.ManualDirError) as err:
        hanco.ensure_built("default", str(tmp_path / "out"), str(raw))
    assert "2 required file(s)" in str(err.value)
    assert "shape/0001/00000000.json" in str(err.value) and "rgb/0000/cam5/00000002.jpg" in str(err.value)
    (raw / "meta.json").write_text(json.dumps({"is_train": [[True]], "subject_id": [[1, 2]], "is_valid": [[True]],
                                               "object_id": [[None]], "has_fit": [[False]]}))
    with pytest.raises(manual.CorruptFileError, match="subject_id.*frame counts differ"):
        hanco.read_meta(raw)
