"""DexYCB builder: a fixture in the real toolkit layout, built (debug subset of s1) and read
back through grain; labels are MANO joints of the built-in model so the PCA parameters
(manopth, flat_hand_mean=False) must reproduce joint_3d."""
import io
import os
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
import yaml
from PIL import Image

from data_pipelines.dexycb import get_builder, make_config, mano_rotmats
from data_pipelines.dexycb import layout
from data_pipelines.manual import CorruptFileError, ManualDirError, prepare
from handjax.mano import from_pca, load_model, mano_forward

W, H = 10, 8
FRAMES = 3          # frame 1 of every camera has no hand
SEQS = 2            # sequences per subject in the fixture
CAM = layout.SERIALS[1]
K = np.array([[12.0, 0.0, 4.6], [0.0, 11.5, 3.8], [0.0, 0.0, 1.0]])


@jax.jit
def _mano_joints(model, pose_pca, betas, transl):
    return mano_forward(model, mano_rotmats(model, pose_pca), betas, transl, layout.mano_convention()).joints


@jax.jit
def _flat_mean_joints(model, pose_pca, betas, transl):  # the wrong reading: no mean hand
    rot = from_pca(model, pose_pca[:3], pose_pca[3:], flat_hand_mean=True)
    return mano_forward(model, rot, betas, transl, layout.mano_convention()).joints


def mano_joints(model, pose_pca, betas, transl, fn=_mano_joints):
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return np.asarray(fn(model, f32(pose_pca), f32(betas), f32(transl)), np.float64)


def write_dexycb(root, seed=0):
    """10 subjects x SEQS sequences, camera CAM only, FRAMES frames; subject 10 is left-handed."""
    rng = np.random.default_rng(seed)
    models = {"right": load_model(None, "right"), "left": load_model(None, "left")}
    os.makedirs(os.path.join(root, "calibration", "intrinsics"))
    with open(layout.intrinsics_path(root, CAM), "w") as fh:
        yaml.safe_dump({"color": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "ppx": float(K[0, 2]),
                                  "ppy": float(K[1, 2])}, "depth": {"fx": 1.0, "fy": 1.0, "ppx": 0.0, "ppy": 0.0}}, fh)
    truth = {}
    for si, subject in enumerate(layout.SUBJECTS):
        side = "left" if si == 9 else "right"
        betas = rng.normal(0, 1, 10)
        calib = layout.mano_calib_path(root, subject)
        os.makedirs(calib.parent)
        with open(calib, "w") as fh:
            yaml.safe_dump({"betas": betas.tolist()}, fh)
        for q in range(SEQS):
            name = f"2020{si:02d}{q:02d}_1200{q:02d}"
            seq_dir = os.path.join(root, subject, name)
            os.makedirs(os.path.join(seq_dir, CAM))
            ycb_ids = [int(x) for x in rng.choice(np.arange(1, 22), 2, replace=False)]
            with open(os.path.join(seq_dir, "meta.yml"), "w") as fh:
                yaml.safe_dump({"serials": list(layout.SERIALS), "num_frames": FRAMES, "ycb_ids": ycb_ids,
                                "ycb_grasp_ind": 1, "mano_sides": [side], "mano_calib": [subject],
                                "extrinsics": "20200702_151821"}, fh)
            for f in range(FRAMES):
                seg = np.zeros((H, W), np.uint8)
                seg[2:5, 3:7] = 255
                seg[0, 0] = ycb_ids[0]
                pose_m = np.zeros((1, 51), np.float32)
                joint_3d = -np.ones((1, 21, 3), np.float32)
                joint_2d = -np.ones((1, 21, 2), np.float32)
                if f != 1:
                    pose_m[0, :3] = rng.normal(0, 1.0, 3)
                    pose_m[0, 3:48] = rng.normal(0, 0.8, 45)
                    pose_m[0, 48:] = [rng.normal(0, 0.05), rng.normal(0, 0.05), 0.6]
                    joint_3d[0] = mano_joints(models[side], pose_m[0, :48], betas, pose_m[0, 48:])
                    uv = joint_3d[0] @ K.T
                    joint_2d[0] = uv[:, :2] / uv[:, 2:]
                pose_y = rng.normal(size=(2, 3, 4)).astype(np.float32)
                np.savez_compressed(layout.label_path(seq_dir, CAM, f), seg=seg, pose_y=pose_y, pose_m=pose_m,
                                    joint_3d=joint_3d, joint_2d=joint_2d)
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buf, format="JPEG")
                layout.color_path(seq_dir, CAM, f).write_bytes(buf.getvalue())
                truth[(subject, name, f)] = {"pose_m": pose_m[0], "joint_3d": joint_3d[0], "joint_2d": joint_2d[0],
                                             "betas": betas, "side": side, "seg": seg, "pose_y": pose_y,
                                             "ycb_ids": ycb_ids}
    return truth, models


def read_split(path, split):
    ds = grain.MapDataset.source(tfds.builder_from_directory(path).as_data_source(split))
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dexycb")
    raw = str(tmp / "raw")
    truth, models = write_dexycb(raw)
    builder = get_builder("s1", str(tmp / "out"), sequences_per_subject=SEQS, serials=[CAM])
    return {"raw": raw, "truth": truth, "models": models, "path": prepare(builder, raw), "tmp": tmp}


def test_split_rules_follow_the_toolkit():
    subj, ser, seq = layout.split_indices("s0", "val")
    assert subj == [0, 1] and ser == list(range(8)) and seq == list(range(4, 100, 5))
    subj, _, seq = layout.split_indices("s0", "train")
    assert subj == list(range(10)) and len(seq) == 80 and 4 not in seq and 3 in seq
    assert layout.split_indices("s1", "test")[0] == [7, 8]
    assert layout.split_indices("s1", "train")[0] == [0, 1, 2, 3, 4, 5, 9]
    assert layout.split_indices("s2", "val")[1] == [6] and layout.split_indices("s2", "test")[1] == [7]
    _, _, seq = layout.split_indices("s3", "test")
    assert seq == [35, 36, 37, 38, 39, 55, 56, 57, 58, 59, 75, 76, 77, 78, 79]
    assert len(layout.split_indices("s3", "train")[2]) == 75
    assert layout.split_indices("s0", "val", n_sequences=5)[2] == [4]
    assert make_config("s1", 2, [CAM]).name == f"s1_seq2_cam{CAM}"
    with pytest.raises(ValueError, match="serial"):
        make_config("s1", serials=["123"])


def test_records_round_trip(built):
    info = tfds.builder_from_directory(built["path"]).info
    hand_frames = FRAMES - 1
    assert {k: v.num_examples for k, v in info.splits.items()} == {
        "train": 7 * SEQS * hand_frames, "val": SEQS * hand_frames, "test": 2 * SEQS * hand_frames}
    assert info.metadata["no_hand"] == {"train": 7 * SEQS, "val": SEQS, "test": 2 * SEQS}
    assert info.metadata["mano"]["flat_hand_mean"] is False and info.metadata["mano"]["ncomps"] == 45
    for split, subjects in (("train", [0, 1, 2, 3, 4, 5, 9]), ("val", [6]), ("test", [7, 8])):
        records = read_split(built["path"], split)
        # toolkit order: subject, sequence, camera (8 of them, ours is the 2nd), frame
        expected_index = [(k * 8 + 1) * FRAMES + f for k in range(len(subjects) * SEQS) for f in (0, 2)]
        assert [int(r["toolkit_index"]) for r in records] == expected_index
        assert [r["subject"].decode() for r in records][::2 * SEQS] == [layout.SUBJECTS[i] for i in subjects]
        for rec in records:
            t = built["truth"][(rec["subject"].decode(), rec["sequence"].decode(), int(rec["frame_index"]))]
            np.testing.assert_array_equal(rec["joints3d"], t["joint_3d"])
            np.testing.assert_array_equal(rec["joints2d"], t["joint_2d"])
            np.testing.assert_array_equal(rec["mano_pose_pca"], t["pose_m"][:48])
            np.testing.assert_array_equal(rec["mano_transl"], t["pose_m"][48:])
            np.testing.assert_allclose(rec["betas"], t["betas"], rtol=1e-6)
            np.testing.assert_allclose(rec["K"], K, rtol=1e-6)
            assert bool(rec["is_right"]) == (t["side"] == "right")
            np.testing.assert_array_equal(rec["seg"][..., 0], t["seg"])
            np.testing.assert_array_equal(rec["object_poses"], t["pose_y"])
            np.testing.assert_array_equal(rec["ycb_ids"], t["ycb_ids"])
            assert rec["serial"].decode() == CAM and int(rec["ycb_grasp_ind"]) == 1
            img_path = layout.color_path(os.path.join(built["raw"], rec["subject"].decode(), rec["sequence"].decode()),
                                         CAM, int(rec["frame_index"]))
            np.testing.assert_array_equal(rec["image"], np.asarray(Image.open(img_path).convert("RGB")))


def test_pca_mano_params_reproduce_joint_3d(built):
    """Stored params + handjax MANO (PCA, mean hand, no left fix) give the stored joints (metres);
    dropping the mean hand (flat_hand_mean=True) does not."""
    sides = set()
    for split in ("train", "test"):
        for rec in read_split(built["path"], split):
            side = "right" if rec["is_right"] else "left"
            sides.add(side)
            model = built["models"][side]
            joints = mano_joints(model, rec["mano_pose_pca"], rec["betas"], rec["mano_transl"])
            np.testing.assert_allclose(joints, rec["joints3d"], atol=1e-5)
            wrong = mano_joints(model, rec["mano_pose_pca"], rec["betas"], rec["mano_transl"], _flat_mean_joints)
            assert np.abs(wrong - rec["joints3d"]).max() > 1e-3
    assert sides == {"right", "left"}


def test_missing_top_level_entries_listed(tmp_path):
    (tmp_path / "raw" / layout.SUBJECTS[0]).mkdir(parents=True)
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("s1", str(tmp_path / "out")), str(tmp_path / "raw"))
    missing = err.value.missing
    assert len(missing) == 9 + 8  # the other subjects and every camera's intrinsics
    assert f"{layout.SUBJECTS[9]}/" in missing and "calibration/intrinsics/932122062010_640x480.yml" in missing
    assert "dex-ycb.github.io" in str(err.value)


def test_missing_sequence_files_listed(built, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    subj0 = raw / layout.SUBJECTS[0]
    seq0, seq1 = sorted(os.listdir(subj0))
    os.remove(subj0 / seq0 / CAM / "labels_000002.npz")
    os.remove(raw / layout.SUBJECTS[7] / sorted(os.listdir(raw / layout.SUBJECTS[7]))[1] / CAM / "color_000000.jpg")
    os.remove(layout.mano_calib_path(raw, layout.SUBJECTS[6]))
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("s1", str(tmp_path / "out"), sequences_per_subject=SEQS, serials=[CAM]), str(raw))
    missing = err.value.missing
    assert f"{layout.SUBJECTS[0]}/{seq0}/{CAM}/labels_000002.npz" in missing
    assert any(m.endswith(f"{CAM}/color_000000.jpg") and layout.SUBJECTS[7] in m for m in missing)
    assert f"calibration/mano_{layout.SUBJECTS[6]}/mano.yml" in missing
    assert len(missing) == 3


def test_corrupt_label_named_or_skipped(built, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    subj = raw / layout.SUBJECTS[1]
    bad = subj / sorted(os.listdir(subj))[0] / CAM / "labels_000000.npz"
    bad.write_bytes(b"not an npz file")
    with pytest.raises(CorruptFileError, match="labels_000000.npz"):
        prepare(get_builder("s1", str(tmp_path / "out"), sequences_per_subject=SEQS, serials=[CAM]), str(raw))
    builder = get_builder("s1", str(tmp_path / "out2"), sequences_per_subject=SEQS, serials=[CAM], skip_corrupt=True)
    path = prepare(builder, str(raw))
    info = tfds.builder_from_directory(path).info
    assert info.splits["train"].num_examples == 7 * SEQS * (FRAMES - 1) - 1
    assert builder.policy.count == 1 and "labels_000000.npz" in info.metadata["skipped"]["train"][0]["path"]


def test_ensure_built_reuses_or_explains(built):
    from data_pipelines.dexycb import ensure_built

    out = str(built["tmp"] / "out")
    assert ensure_built("s1", out, sequences_per_subject=SEQS, serials=[CAM]) == built["path"]
    with pytest.raises(FileNotFoundError, match="dex-ycb.github.io"):
        ensure_built("s3", out)
