"""HIC builder: HIC.json in InterWild's schema + PLY meshes (ascii and binary), built and read back.

The joints are checked against a direct numpy use of the MANO pickle's J_regressor and
InterWild's fingertip vertices, written out by joint name (not through handjax's tables).
"""
import json
import os
import pickle
import shutil

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines.hic import build, get_builder, layout
from data_pipelines.manual import CorruptFileError, ManualDirError, prepare
from hand_dataset_fixtures import corrupt_file, jpeg_bytes, png_bytes, random_image
from test_interhand_data import write_mano_models

W, H = 16, 12
# (annotation id, image id, hand_type, right mesh?, left mesh?, image format, mesh PLY format)
PLAN = [(1, 10, "interacting", True, True, "png", "binary_little_endian"),
        (2, 11, "right", True, False, "png", "ascii"),
        (3, 12, "left", False, True, "jpeg", "binary_big_endian"),
        (4, 13, "interacting", True, True, "png", "ascii"),
        (5, 14, "right", True, False, "png", "binary_little_endian")]
# MANO tree joint ids (J_regressor rows) and InterWild's tip vertices, by name
TREE = {"wrist": 0, "index1": 1, "index2": 2, "index3": 3, "middle1": 4, "middle2": 5, "middle3": 6,
        "pinky1": 7, "pinky2": 8, "pinky3": 9, "ring1": 10, "ring2": 11, "ring3": 12,
        "thumb1": 13, "thumb2": 14, "thumb3": 15}
TIPS = {"thumb_tip": 745, "index_tip": 317, "middle_tip": 445, "ring_tip": 556, "pinky_tip": 673}
IH26M_NAMES = [f"{f}{k}" for f in ("thumb", "index", "middle", "ring", "pinky")
               for k in ("_tip", "3", "2", "1")] + ["wrist"]


def write_ply(path, verts, faces, fmt, face_first=False):
    """A PLY mesh as exporters write it: float x, y, z (+ an extra vertex property), and faces
    as 'list uchar int vertex_indices'."""
    n, f = len(verts), len(faces)
    order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
    vert_el = f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\nproperty uchar quality\n"
    face_el = f"element face {f}\nproperty list uchar int vertex_indices\n"
    header = (f"ply\nformat {fmt} 1.0\ncomment written by the handjax test\n"
              + (face_el + vert_el if face_first else vert_el + face_el) + "end_header\n").encode("ascii")
    if order is None:
        vbody = "".join(f"{x:.9g} {y:.9g} {z:.9g} 7\n" for x, y, z in verts)
        fbody = "".join(f"3 {a} {b} {c}\n" for a, b, c in faces)
        body = (fbody + vbody if face_first else vbody + fbody).encode("ascii")
    else:
        vdt = np.dtype([("x", order + "f4"), ("y", order + "f4"), ("z", order + "f4"), ("q", "u1")])
        vt = np.zeros(n, vdt)
        vt["x"], vt["y"], vt["z"], vt["q"] = verts[:, 0], verts[:, 1], verts[:, 2], 7
        fdt = np.dtype([("n", "u1"), ("i", order + "i4", (3,))])
        ft = np.zeros(f, fdt)
        ft["n"], ft["i"] = 3, faces
        body = ft.tobytes() + vt.tobytes() if face_first else vt.tobytes() + ft.tobytes()
    with open(path, "wb") as fh:
        fh.write(header + body)


def mano_arrays(mano_dir, hand):
    with open(os.path.join(mano_dir, f"MANO_{hand.upper()}.pkl"), "rb") as fh:
        return pickle.load(fh)


def write_hic(root, mano_dir, seed=0):
    """InterWild's HIC layout under root; returns {annotation id: (verts per hand or None)}."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    faces = np.asarray(mano_arrays(mano_dir, "right")["f"], np.int64)
    data = {"images": [], "annotations": []}
    truth = {}
    for aid, image_id, hand_type, has_r, has_l, img_fmt, ply_fmt in PLAN:
        seq = f"{aid:02d}"
        name = f"{seq}/rgb/{image_id:04d}.{'png' if img_fmt == 'png' else 'jpg'}"
        os.makedirs(os.path.join(root, seq, "rgb"), exist_ok=True)
        os.makedirs(os.path.join(root, seq, "mano"), exist_ok=True)
        pixels = random_image(rng, (H, W))
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(png_bytes(pixels) if img_fmt == "png" else jpeg_bytes(pixels))
        truth[aid] = {}
        paths = {}
        for hand, has, sign in (("right", has_r, 1.0), ("left", has_l, -1.0)):
            if not has:
                truth[aid][hand], paths[hand] = None, None
                continue
            v = np.asarray(mano_arrays(mano_dir, hand)["v_template"]) + [sign * 0.05, 0.0, 0.5]
            v = (v + rng.normal(0, 0.003, v.shape)).astype(np.float32).astype(np.float64)
            rel = f"{seq}/mano/{image_id:04d}_{hand}.ply"
            write_ply(os.path.join(root, rel), v, faces, ply_fmt)
            truth[aid][hand], paths[hand] = v, rel
        image = {"id": image_id, "file_name": name, "width": W, "height": H}
        if aid != 2:
            image["seq_name"] = seq
        data["images"].append(image)
        data["annotations"].append({"id": aid, "image_id": image_id, "hand_type": hand_type,
                                    "right_mano_path": paths["right"], "left_mano_path": paths["left"]})
    with open(os.path.join(root, "HIC.json"), "w") as fh:
        json.dump(data, fh)
    return truth


def read_test(path):
    ds = grain.MapDataset.source(tfds.builder_from_directory(path).as_data_source("test"))
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hic")
    mano_dir = write_mano_models(str(tmp / "mano"))
    raw = str(tmp / "raw")
    truth = write_hic(raw, mano_dir)
    path = prepare(get_builder("default", str(tmp / "out"), mano_dir=mano_dir), raw)
    return {"raw": raw, "path": path, "truth": truth, "mano_dir": mano_dir, "tmp": tmp}


K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])


def reference_joints(mano_dir, hand, verts):
    reg = np.asarray(mano_arrays(mano_dir, hand)["J_regressor"], np.float64)
    out = []
    for name in IH26M_NAMES:
        out.append(verts[TIPS[name]] if name in TIPS else reg[TREE[name]] @ verts)
    return np.stack(out)


# ----------------------------------------------------------------------------- tests
def test_records_round_trip(built):
    info = tfds.builder_from_directory(built["path"]).info
    assert {k: v.num_examples for k, v in info.splits.items()} == {"test": 5}
    assert info.metadata["joint_regressor"]["tip_vertices"] == [745, 317, 445, 556, 673]
    assert info.metadata["skipped"] == {"test": []}
    recs = read_test(built["path"])
    assert [int(r["annot_id"]) for r in recs] == [p[0] for p in PLAN]
    for rec, (aid, image_id, hand_type, has_r, has_l, img_fmt, _) in zip(recs, PLAN):
        np.testing.assert_allclose(rec["K"], K)
        assert rec["hand_type"] == ("right", "left", "interacting").index(hand_type)
        np.testing.assert_array_equal(rec["hand_valid"], [has_r, has_l])
        for h, hand in enumerate(("right", "left")):
            v = built["truth"][aid][hand]
            if v is None:
                np.testing.assert_array_equal(rec["vertices"][h], 0)
                np.testing.assert_array_equal(rec["hand_bbox"][h], 0)
                assert not rec["joint_valid"][21 * h: 21 * h + 21].any()
                continue
            np.testing.assert_array_equal(rec["vertices"][h], v.astype(np.float32))
            uv = v[:, :2] / v[:, 2:] * 525.0 + [319.5, 239.5]
            lo, hi = uv.min(0), uv.max(0)
            c, half = (lo + hi) / 2, (hi - lo) / 2 * 1.2
            np.testing.assert_allclose(rec["hand_bbox"][h], [*(c - half), *(c + half)], rtol=1e-5)
            sl = slice(21 * h, 21 * h + 21)
            ref = reference_joints(built["mano_dir"], hand, v)
            np.testing.assert_allclose(rec["joints3d"][sl], ref, atol=1e-6)
            np.testing.assert_allclose(rec["joints2d"][sl], ref[:, :2] / ref[:, 2:] * 525.0 + [319.5, 239.5],
                                       rtol=1e-5)
            assert rec["joint_valid"][sl].all()
        file_name = rec["file_name"].decode()
        raw_path = os.path.join(built["raw"], file_name)
        np.testing.assert_array_equal(rec["image"], np.asarray(Image.open(raw_path).convert("RGB")))
        np.testing.assert_array_equal(rec["image_size"], [H, W])
        assert int(rec["image_id"]) == image_id
        assert rec["seq_name"].decode() == ("" if aid == 2 else f"{aid:02d}")


def test_stored_image_bytes(built):
    """PNG frames are stored byte for byte; the JPEG frame is re-encoded as PNG (pixels equal)."""
    source = tfds.builder_from_directory(built["path"]).as_data_source(
        "test", decoders={"image": tfds.decode.SkipDecoding()})
    assert source[0]["image"] == open(os.path.join(built["raw"], "01/rgb/0010.png"), "rb").read()
    assert source[2]["image"].startswith(b"\x89PNG")


def test_without_mano_no_joints(built, tmp_path, capsys):
    path = prepare(get_builder("default", str(tmp_path / "out")), built["raw"])
    assert tfds.builder_from_directory(path).info.metadata["joint_regressor"] is None
    recs = read_test(path)
    assert not any(r["joint_valid"].any() for r in recs)
    np.testing.assert_array_equal(recs[0]["joints3d"], 0)
    assert recs[0]["hand_valid"].all()  # meshes and boxes are stored either way
    assert "no --mano_dir" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("face_first", [False, True])
def test_ply_reader(tmp_path, fmt, face_first):
    rng = np.random.default_rng(1)
    v = rng.normal(0, 1, (5, 3)).astype(np.float32).astype(np.float64)
    f = np.array([[0, 1, 2], [2, 3, 4]])
    path = tmp_path / "m.ply"
    write_ply(path, v, f, fmt, face_first=face_first)
    np.testing.assert_allclose(layout.read_ply_vertices(path), v, rtol=1e-6 if fmt == "ascii" else 0)
    corrupt_file(path)
    with pytest.raises(CorruptFileError, match="m.ply"):
        layout.read_ply_vertices(path)


def test_missing_files_are_all_listed(built, tmp_path):
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("default", str(tmp_path / "out0")), str(tmp_path))
    assert err.value.missing == ["HIC.json"]
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    gone = ["02/rgb/0011.png", "03/mano/0012_left.ply", "04/mano/0013_right.ply"]
    for rel in gone:
        os.remove(raw / rel)
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("default", str(tmp_path / "out")), str(raw))
    assert sorted(err.value.missing) == sorted(gone)
    assert "HIC.json" in str(err.value)


def test_corrupt_files_named_or_skipped(built, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    corrupt_file(raw / "01/mano/0010_left.ply")
    with pytest.raises(CorruptFileError, match="0010_left.ply"):
        prepare(get_builder("default", str(tmp_path / "out")), str(raw))
    # a mesh with the wrong vertex count, a corrupt image and a missing mesh
    v = layout.read_ply_vertices(raw / "02/mano/0011_right.ply")[:700]
    write_ply(raw / "02/mano/0011_right.ply", v, np.zeros((0, 3), int), "ascii")
    corrupt_file(raw / "03/rgb/0012.jpg")
    os.remove(raw / "04/mano/0013_left.ply")
    path = build.main(["--manual_dir", str(raw), "--data_dir", str(tmp_path / "out2"), "--skip_corrupt",
                       "--mano_dir", built["mano_dir"]])
    info = tfds.builder_from_directory(path).info
    assert [int(r["annot_id"]) for r in read_test(path)] == [5]
    skipped = {r["sample_id"]: r for r in info.metadata["skipped"]["test"]}
    assert sorted(skipped) == [1, 2, 3, 4]
    assert skipped[1]["path"].endswith("0010_left.ply")
    assert skipped[2]["path"].endswith("0011_right.ply") and "778" in skipped[2]["reason"]
    assert skipped[3]["path"].endswith("0012.jpg") and "decode" in skipped[3]["reason"]
    assert skipped[4]["path"].endswith("0013_left.ply") and "missing" in skipped[4]["reason"]
    assert "split test: skipped 4 sample(s)" in capsys.readouterr().err


def test_bad_annotation_entry_is_named(built, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    data = json.loads((raw / "HIC.json").read_text())
    data["annotations"][1]["hand_type"] = "both"
    data["annotations"][2]["left_mano_path"] = "../../etc/passwd"
    (raw / "HIC.json").write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match=r"HIC.json: annotation 2: hand_type 'both'"):
        prepare(get_builder("default", str(tmp_path / "out")), str(raw))
    builder = get_builder("default", str(tmp_path / "out2"), skip_corrupt=True)
    path = prepare(builder, str(raw))
    assert [int(r["annot_id"]) for r in read_test(path)] == [1, 4, 5]
    reasons = {r["sample_id"]: r["reason"] for r in builder.policy.split_records("test")}
    assert "hand_type" in reasons[2] and "relative path" in reasons[3]
