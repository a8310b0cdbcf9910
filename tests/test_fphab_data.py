"""FPHAB builder: a fixture in the real download layout, built in three configs and read back
through grain; coordinates checked against an independent transcription of the conventions."""
import io
import os
import pickle
import shutil

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines.fphab import get_builder
from data_pipelines.fphab import layout
from data_pipelines.manual import CorruptFileError, ManualDirError, RestrictedPickleError, prepare
from handjax.mano import joint_remap

FRAMES = 3
# FPHAB README order, typed independently of the module
FPHAB_ORDER = ["W", "TMCP", "IMCP", "MMCP", "RMCP", "PMCP", "TPIP", "TDIP", "TTIP", "IPIP", "IDIP", "ITIP",
               "MPIP", "MDIP", "MTIP", "RPIP", "RDIP", "RTIP", "PPIP", "PDIP", "PTIP"]
OPENPOSE_ORDER = ["W"] + [f"{f}{j}" for f in "TIMRP" for j in ("MCP", "PIP", "DIP", "TIP")]
R_EXTR = np.array([[0.999988496304, -0.00468848412856, 0.000982563360594],
                   [0.00469115935266, 0.999985218048, -0.00273845880292],
                   [-0.000969709653873, 0.00274303671904, 0.99999576807]])
T_EXTR = np.array([25.7, 1.22, 3.902])
SEQUENCES = {  # split-file lines: (subject, action, seq, label, split)
    "train": [("Subject_1", "open_juice_bottle", "1", 3), ("Subject_1", "charge_cell_phone", "1", 0),
              ("Subject_3", "pour_milk", "2", 5), ("Subject_4", "open_liquid_soap", "1", 9)],
    "test": [("Subject_2", "put_salt", "1", 7), ("Subject_5", "use_flash", "6", 11)],
}
DISCARDED = ("Subject_5", "use_flash", "6")  # listed in the split file, length 0 in Subjects_info


def full_jpeg(rng):
    img = np.zeros((1080, 1920, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, 1920).astype(np.uint8)[None]
    img[..., 1] = np.linspace(0, 255, 1080).astype(np.uint8)[:, None]
    img[..., 2] = rng.integers(0, 255)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_fphab(root, seed=0):
    rng = np.random.default_rng(seed)
    truth = {}
    lengths = {s: [] for s in layout.SUBJECTS}
    lines = []
    for split, refs in SEQUENCES.items():
        lines.append(f"{'Training' if split == 'train' else 'Test'} {len(refs)}")
        for subject, action, seq, label in refs:
            lines.append(f"{subject}/{action}/{seq} {label}")
            if (subject, action, seq) == DISCARDED:
                lengths[subject].append(f"{action}  {seq}  0")
                continue
            lengths[subject].append(f"{action}\t{seq}   {FRAMES}")
            skel = rng.normal(0, 40, (FRAMES, 21, 3)) + np.array([0, 0, 450])
            sdir = os.path.join(root, "Hand_pose_annotation_v1", subject, action, seq)
            os.makedirs(sdir)
            rows = np.concatenate([np.arange(FRAMES)[:, None], skel.reshape(FRAMES, 63)], axis=1)
            np.savetxt(os.path.join(sdir, "skeleton.txt"), rows, fmt="%.4f")
            cdir = os.path.join(root, "Video_files", subject, action, seq, "color")
            os.makedirs(cdir)
            for f in range(FRAMES):
                with open(os.path.join(cdir, f"color_{f:04d}.jpeg"), "wb") as fh:
                    fh.write(full_jpeg(rng))
            poses = {}
            if action.split("_", 1)[1] in layout.HO_OBJECTS:
                odir = os.path.join(root, "Object_6D_pose_annotation_v1_1", subject, action, seq)
                os.makedirs(odir)
                with open(os.path.join(odir, "object_pose.txt"), "w") as fh:
                    for f in (0, 2):  # frame 1 has no object pose
                        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
                        mat = np.eye(4)
                        mat[:3, :3], mat[:3, 3] = rot, rng.normal(0, 50, 3) + [0, 0, 400]
                        poses[f] = mat
                        fh.write(f"{f} " + " ".join(f"{v:.8f}" for v in mat.T.reshape(-1)) + "\n")
            truth[(subject, action, seq)] = {"skel": skel, "label": label, "poses": poses}
    with open(os.path.join(root, "data_split_action_recognition.txt"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.makedirs(os.path.join(root, "Subjects_info"))
    for subject in layout.SUBJECTS:
        with open(os.path.join(root, "Subjects_info", f"{subject}_info.txt"), "w") as fh:
            fh.write(f"{subject}\nheader line 2\naction sequence length\n" + "\n".join(lengths[subject]) + "\n")
    fits = {f"{f:06d}.pkl": {"fullpose": rng.normal(0, 0.3, 48).astype(np.float32),
                             "trans": rng.normal(0, 0.1, 3).astype(np.float32),
                             "shape": rng.normal(0, 1, 10).astype(np.float32)} for f in (0, 2)}
    fdir = os.path.join(root, "fhbhands_fits", "Subject_1", "open_juice_bottle", "1")
    os.makedirs(fdir)
    with open(os.path.join(fdir, "pkls.pkl"), "wb") as fh:
        pickle.dump(fits, fh)
    truth[("Subject_1", "open_juice_bottle", "1")]["fits"] = fits
    return truth


def expected_joints(skel_mm):
    """Independent: reorder by joint names, extrinsics in mm, then metres."""
    order = [FPHAB_ORDER.index(n) for n in OPENPOSE_ORDER]
    return (skel_mm[order] @ R_EXTR.T + T_EXTR) / 1000.0


def read_split(path, split):
    ds = grain.MapDataset.source(tfds.builder_from_directory(path).as_data_source(split))
    return [ds[i] for i in range(len(ds))]


def key(rec):
    return rec["subject"].decode(), rec["action"].decode(), rec["sequence"].decode()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fphab")
    root = str(tmp / "raw")
    return {"root": root, "truth": write_fphab(root), "tmp": tmp}


def test_joint_order_table_matches_names():
    assert list(layout.FPHAB_TO_OPENPOSE) == [FPHAB_ORDER.index(n) for n in OPENPOSE_ORDER]
    assert joint_remap(layout.fphab_convention(), "manopth") == layout.FPHAB_TO_OPENPOSE


def test_actions_full_resolution(raw):
    path = prepare(get_builder("actions", str(raw["tmp"] / "out")), raw["root"])
    info = tfds.builder_from_directory(path).info
    assert {k: v.num_examples for k, v in info.splits.items()} == {"train": 4 * FRAMES, "test": FRAMES}
    assert info.metadata["discarded_sequences"] == ["/".join(DISCARDED)]
    K = np.array([[1395.749023, 0, 935.732544], [0, 1395.749268, 540.681030], [0, 0, 1]])
    records = read_split(path, "train")
    assert [key(r)[1] for r in records[::FRAMES]] == [r[1] for r in SEQUENCES["train"]]
    assert [int(r["sequence_id"]) for r in records] == [i // FRAMES for i in range(4 * FRAMES)]
    for rec in records + read_split(path, "test"):
        t = raw["truth"][key(rec)]
        f = int(rec["frame_index"])
        joints = expected_joints(t["skel"][f])
        np.testing.assert_allclose(rec["joints3d"], joints, atol=1e-6)
        np.testing.assert_allclose(rec["K"], K, rtol=1e-7)
        uv = joints[:, :2] / joints[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
        np.testing.assert_allclose(rec["joints2d"], uv, rtol=1e-5)
        assert int(rec["action_label"]) == t["label"] and bool(rec["is_right"])
        assert rec["image"].shape == (1080, 1920, 3)
        img_path = os.path.join(raw["root"], "Video_files", *key(rec), "color", f"color_{f:04d}.jpeg")
        np.testing.assert_array_equal(rec["image"], np.asarray(Image.open(img_path).convert("RGB")))
        assert bool(rec["object"]["valid"]) == (f in t["poses"])


def test_hand_object_reduced_resized_on_the_fly(raw):
    path = prepare(get_builder("hand_object_480", str(raw["tmp"] / "out")), raw["root"])
    info = tfds.builder_from_directory(path).info
    assert {k: v.num_examples for k, v in info.splits.items()} == {"train": 3 * 2, "test": 2}
    K = np.array([[1395.749023 / 4, 0, 935.732544 / 4], [0, 1395.749268 / 4, 540.681030 / 4], [0, 0, 1]])
    for rec in read_split(path, "train") + read_split(path, "test"):
        t = raw["truth"][key(rec)]
        f = int(rec["frame_index"])
        assert f in (0, 2) and key(rec)[1] != "charge_cell_phone"
        np.testing.assert_allclose(rec["K"], K, rtol=1e-6)
        joints = expected_joints(t["skel"][f])
        uv = joints[:, :2] / joints[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
        np.testing.assert_allclose(rec["joints2d"], uv, rtol=1e-5)
        full = Image.open(os.path.join(raw["root"], "Video_files", *key(rec), "color", f"color_{f:04d}.jpeg"))
        small = np.asarray(full.convert("RGB").resize((480, 270), Image.BILINEAR), np.float64)
        assert rec["image"].shape == (270, 480, 3)
        assert np.mean(np.abs(rec["image"] - small)) < 3.0  # one JPEG re-encode away
        # object pose: model metres -> camera metres
        pose = t["poses"][f]
        obj = rec["object"]
        assert bool(obj["valid"]) and obj["name"].decode() == key(rec)[1].split("_", 1)[1]
        point = np.array([0.01, -0.02, 0.03])
        world_mm = pose[:3, :3] @ (point * 1000) + pose[:3, 3]
        cam_m = (R_EXTR @ world_mm + T_EXTR) / 1000
        np.testing.assert_allclose(obj["pose"][:3, :3] @ point + obj["pose"][:3, 3], cam_m, atol=1e-6)
        fits = t.get("fits")
        assert bool(rec["mano"]["valid"]) == (fits is not None)
        if fits is not None:
            fit = fits[f"{f:06d}.pkl"]
            np.testing.assert_array_equal(rec["mano"]["pose"], fit["fullpose"])
            np.testing.assert_array_equal(rec["mano"]["transl"], fit["trans"])
            np.testing.assert_array_equal(rec["mano"]["betas"], fit["shape"])
    assert info.metadata["mano_fits_sequences"] == {"train": 1, "test": 0}


def test_reduced_copies_and_subject_split(raw, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(raw["root"], root)
    for dirpath, _, files in os.walk(root / "Video_files"):
        for name in files:
            src = os.path.join(dirpath, name)
            dst = src.replace("Video_files", "Video_files_480")
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            Image.open(src).resize((480, 270), Image.BILINEAR).save(dst)
    shutil.rmtree(root / "Video_files")
    path = prepare(get_builder("hand_object_subjects_480", str(tmp_path / "out")), str(root))
    train, test = read_split(path, "train"), read_split(path, "test")
    assert sorted({key(r)[0] for r in train}) == ["Subject_1", "Subject_3", "Subject_4"]
    assert {key(r)[0] for r in test} == {"Subject_2"}
    rec = train[0]
    copy = os.path.join(root, "Video_files_480", *key(rec), "color", f"color_{int(rec['frame_index']):04d}.jpeg")
    np.testing.assert_array_equal(rec["image"], np.asarray(Image.open(copy).convert("RGB")))


def test_missing_files_all_listed(raw, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("hand_object", str(tmp_path / "o1")), str(tmp_path / "empty"))
    assert len(err.value.missing) == 2 + 6 + 1 + 1  # split file, skeleton dir, 6 infos, videos, objects
    assert "Object_6D_pose_annotation_v1_1/" in err.value.missing and "guiggh.github.io" in str(err.value)
    root = tmp_path / "raw"
    shutil.copytree(raw["root"], root)
    os.remove(root / "Hand_pose_annotation_v1/Subject_3/pour_milk/2/skeleton.txt")
    os.remove(root / "Video_files/Subject_1/charge_cell_phone/1/color/color_0001.jpeg")
    os.remove(root / "Video_files/Subject_2/put_salt/1/color/color_0002.jpeg")
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("actions", str(tmp_path / "o2")), str(root))
    assert sorted(err.value.missing) == sorted([
        "Hand_pose_annotation_v1/Subject_3/pour_milk/2/skeleton.txt",
        "Video_files/Subject_1/charge_cell_phone/1/color/color_0001.jpeg",
        "Video_files/Subject_2/put_salt/1/color/color_0002.jpeg"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def test_corrupt_files_named_or_skipped(raw, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(raw["root"], root)
    bad = root / "Video_files/Subject_4/open_liquid_soap/1/color/color_0002.jpeg"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(CorruptFileError, match="color_0002.jpeg"):
        prepare(get_builder("hand_object", str(tmp_path / "o1")), str(root))
    fits = root / "fhbhands_fits/Subject_1/open_juice_bottle/1/pkls.pkl"
    with open(fits, "wb") as fh:
        pickle.dump({"000000.pkl": _Evil()}, fh)
    with pytest.raises(RestrictedPickleError, match=r"(posix|os|nt)\.system.*|pkls.pkl"):
        prepare(get_builder("hand_object", str(tmp_path / "o2")), str(root))
    builder = get_builder("hand_object", str(tmp_path / "o3"), skip_corrupt=True)
    path = prepare(builder, str(root))
    info = tfds.builder_from_directory(path).info
    assert info.splits["train"].num_examples == 3 * 2 - 1
    assert builder.policy.count == 2
    reasons = " ".join(s["reason"] for s in info.metadata["skipped"]["train"])
    assert "system" in reasons and "decode" in reasons
    assert not any(bool(r["mano"]["valid"]) for r in read_split(path, "train"))
