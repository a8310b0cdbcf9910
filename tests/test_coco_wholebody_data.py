"""COCO-WholeBody builder: a fixture in the real v1.0 schema (tiny JPEGs), built and read back.

The json entries carry every field of a real COCO-WholeBody person annotation (body
keypoints, face/foot/hand boxes and keypoints, validity flags), so the builder sees the
real schema; NeuralAnnot entries follow InterWild's MSCOCO_train_MANO_NeuralAnnot.json.
"""
import json
import os
import shutil

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines.coco_wholebody import build, get_builder, layout
from data_pipelines.manual import CorruptFileError, ManualDirError, prepare
from hand_dataset_fixtures import corrupt_file, jpeg_bytes, random_image

W, H = 16, 12

# split -> (annotation id, image id, kind); kind: 'both' hands valid, 'right' / 'left' only,
# 'flatbox' (both valid, the right box has no area: InterWild drops that box only),
# or a reason InterWild drops the person ('crowd', 'nokp', 'nohand', 'emptybox').
PLAN = {
    "train": [(101, 1, "both"), (102, 1, "crowd"), (103, 2, "right"), (104, 2, "nohand"), (105, 3, "left"),
              (106, 3, "nokp"), (107, 3, "emptybox")],
    "val": [(201, 11, "both"), (202, 12, "left"), (203, 12, "flatbox")],
}
KEPT = ("both", "right", "left", "flatbox")
NEURAL_IDS = {101: ("right", "left"), 103: ("right",)}  # 105 has no entry at all


def coco_hand(rng, valid):
    """(63,) flat x, y, v in COCO-WholeBody order; v in {0, 1, 2} (0 for some when valid)."""
    xy = rng.uniform(0, [W, H], (21, 2))
    v = rng.choice([0.0, 1.0, 2.0], 21, p=[0.2, 0.3, 0.5]) if valid else np.zeros(21)
    xy[v == 0] = 0.0
    return np.concatenate([xy, v[:, None]], 1).reshape(-1)


def person(rng, aid, image_id, kind):
    right_ok = kind in ("both", "right", "crowd", "nokp", "emptybox", "flatbox")
    left_ok = kind in ("both", "left", "flatbox")
    box = [1.0, 0.5, 12.0, 10.0] if kind != "emptybox" else [3.0, 2.0, 0.0, 5.0]
    return {
        "id": aid, "image_id": image_id, "category_id": 1, "iscrowd": int(kind == "crowd"),
        "segmentation": [[1.0, 1.0, 10.0, 1.0, 10.0, 10.0]], "area": 90.0, "bbox": box,
        "num_keypoints": 0 if kind == "nokp" else 9,
        "keypoints": rng.uniform(0, W, 51).round(1).tolist(),
        "face_box": [2.0, 1.0, 3.0, 3.0], "face_kpts": rng.uniform(0, W, 68 * 3).tolist(), "face_valid": True,
        "foot_kpts": rng.uniform(0, W, 18).tolist(), "foot_valid": False,
        "righthand_box": [2.0 + rng.uniform(), 3.0, 5.0, 4.0 * (kind != "flatbox")] if right_ok else [0.0] * 4,
        "righthand_kpts": coco_hand(rng, right_ok).tolist(), "righthand_valid": right_ok,
        "lefthand_box": [8.0, 4.0 + rng.uniform(), 6.0, 5.0] if left_ok else [0.0, 0.0, 0.0, 0.0],
        "lefthand_kpts": coco_hand(rng, left_ok).tolist(), "lefthand_valid": left_ok,
    }


def neural_hand(rng):
    return {"mano_param": {"pose": rng.normal(0, 0.3, 48).tolist(), "shape": rng.normal(0, 1, 10).tolist(),
                           "trans": (rng.normal(0, 0.05, 3) + [0, 0, 0.8]).tolist()},
            "cam_param": {"focal": [1500.0 + rng.uniform(), 1500.0], "princpt": [W / 2, H / 2 + rng.uniform()]}}


def write_coco(root, seed=0, neural=True, images_top_level=False):
    """COCO-WholeBody v1.0 layout under root; returns (json per split, neuralannot dict)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    out = {}
    for split, rows in PLAN.items():
        folder = os.path.join(root, f"{split}2017" if images_top_level else f"images/{split}2017")
        os.makedirs(folder, exist_ok=True)
        images = {}
        for _, image_id, _ in rows:
            if image_id not in images:
                name = f"{image_id:012d}.jpg"
                pixels = random_image(rng, (H, W))
                with open(os.path.join(folder, name), "wb") as fh:  # image 3: a grayscale JPEG, as some of COCO's
                    fh.write(jpeg_bytes(pixels[..., 0] if image_id == 3 else pixels))
                images[image_id] = {"id": image_id, "file_name": name, "width": W, "height": H, "license": 1,
                                    "coco_url": "", "date_captured": "", "flickr_url": ""}
        data = {"info": {"description": "COCO-WholeBody"}, "licenses": [], "categories": [{"id": 1, "name": "person"}],
                "images": list(images.values()), "annotations": [person(rng, *row) for row in rows]}
        with open(os.path.join(root, layout.annotation_rel(split)), "w") as fh:
            json.dump(data, fh)
        out[split] = data
    fits = {str(aid): {"right": neural_hand(rng) if "right" in hands else None,
                       "left": neural_hand(rng) if "left" in hands else None} for aid, hands in NEURAL_IDS.items()}
    if neural:
        with open(os.path.join(root, "annotations", layout.NEURALANNOT_NAME), "w") as fh:
            json.dump(fits, fh)
    return out, fits


def read_split(path, split):
    ds = grain.MapDataset.source(tfds.builder_from_directory(path).as_data_source(split))
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cocowb")
    raw = str(tmp / "raw")
    data, fits = write_coco(raw)
    path = prepare(get_builder("default", str(tmp / "out")), raw)
    return {"raw": raw, "path": path, "data": data, "fits": fits, "tmp": tmp}


# ----------------------------------------------------------------------------- tests
def test_keypoint_order_conversion_hand_made():
    """COCO-WholeBody (OpenPose order) -> ih26m, checked joint by joint on a labelled case."""
    coco = np.arange(21 * 2, dtype=np.float32).reshape(21, 2)  # joint k holds (2k, 2k + 1)
    ih = layout.coco_to_ih26m(coco)
    expect = {0: 4, 1: 3, 2: 2, 3: 1,        # thumb tip, 3, 2, 1 (coco thumb1..4 = 1..4)
              4: 8, 7: 5,                    # index tip / base (coco forefinger4 = 8, forefinger1 = 5)
              8: 12, 11: 9, 12: 16, 15: 13,  # middle, ring
              16: 20, 19: 17,                # pinky tip / base
              20: 0}                         # wrist last
    for k, c in expect.items():
        np.testing.assert_array_equal(ih[k], coco[c])
    assert sorted(layout.COCO_TO_IH26M) == list(range(21))
    # the same permutation as handjax's named conventions (OpenPose order -> ih26m)
    from handjax.mano.conventions import joint_remap
    assert layout.COCO_TO_IH26M == joint_remap("freihand", "ih26m")


def test_records_round_trip(built):
    info = tfds.builder_from_directory(built["path"]).info
    assert {k: v.num_examples for k, v in info.splits.items()} == {"train": 3, "val": 3}
    assert info.metadata["filtered"]["train"] == {"crowd": 1, "no_body_keypoints": 1, "no_valid_hand": 1,
                                                  "empty_person_box": 1}
    assert info.metadata["neuralannot"] is True
    assert info.metadata["skipped"] == {"train": [], "val": []}
    for split in ("train", "val"):
        anns = {a["id"]: a for a in built["data"][split]["annotations"]}
        recs = read_split(built["path"], split)
        assert [int(r["annot_id"]) for r in recs] == [a for a, _, k in PLAN[split] if k in KEPT]
        for rec in recs:
            a = anns[int(rec["annot_id"])]
            for h, hand in enumerate(("right", "left")):
                raw = np.array(a[f"{hand}hand_kpts"], np.float32).reshape(21, 3)
                sl = slice(21 * h, 21 * h + 21)
                # independent reference: by name, not through COCO_TO_IH26M
                for k, name in enumerate(layout.IH26M_HAND_NAMES):
                    c = layout.COCO_HAND_NAMES.index(name)
                    np.testing.assert_array_equal(rec["joints2d"][sl][k], raw[c, :2])
                    assert rec["joint_valid"][sl][k] == (raw[c, 2] > 0)
                    assert rec["joint_conf"][sl][k] == raw[c, 2]
                assert bool(rec["hand_valid"][h]) == a[f"{hand}hand_valid"]
                x, y, w, hh = a[f"{hand}hand_box"]
                np.testing.assert_allclose(rec["hand_bbox"][h], [x, y, x + w, y + hh], rtol=1e-6)
                flat = a["id"] == 203 and hand == "right"
                assert bool(rec["hand_bbox_valid"][h]) == (a[f"{hand}hand_valid"] and not flat)
            x, y, w, hh = a["bbox"]
            np.testing.assert_allclose(rec["person_bbox"], [x, y, x + w, y + hh])
            file_name = rec["file_name"].decode()
            img = np.asarray(Image.open(os.path.join(built["raw"], "images", f"{split}2017", file_name)).convert("RGB"))
            np.testing.assert_array_equal(rec["image"], img)
            np.testing.assert_array_equal(rec["image_size"], [H, W])
            assert int(rec["image_id"]) == a["image_id"]


def test_neuralannot_present(built):
    checked = 0
    for split in ("train", "val"):
        for rec in read_split(built["path"], split):
            aid = int(rec["annot_id"])
            for hand in ("right", "left"):
                m = rec["mano"][hand]
                has = split == "train" and hand in NEURAL_IDS.get(aid, ())
                assert bool(m["valid"]) == has
                if not has:
                    for key in ("pose", "betas", "transl", "focal", "princpt"):
                        np.testing.assert_array_equal(m[key], 0)
                    continue
                fit = built["fits"][str(aid)][hand]
                np.testing.assert_allclose(m["pose"], fit["mano_param"]["pose"], rtol=1e-6)
                np.testing.assert_allclose(m["betas"], fit["mano_param"]["shape"], rtol=1e-6)
                np.testing.assert_allclose(m["transl"], fit["mano_param"]["trans"], rtol=1e-6)
                np.testing.assert_allclose(m["focal"], fit["cam_param"]["focal"], rtol=1e-6)
                np.testing.assert_allclose(m["princpt"], fit["cam_param"]["princpt"], rtol=1e-6)
                checked += 1
    assert checked == 3


def test_neuralannot_absent_and_coco_image_layout(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    write_coco(raw, neural=False, images_top_level=True)
    path = prepare(get_builder("default", str(tmp_path / "out")), raw)
    assert tfds.builder_from_directory(path).info.metadata["neuralannot"] is False
    recs = read_split(path, "train")
    assert len(recs) == 3 and not any(bool(r["mano"][h]["valid"]) for r in recs for h in ("right", "left"))
    assert layout.NEURALANNOT_NAME in capsys.readouterr().err


def test_missing_files_are_all_listed(tmp_path):
    raw = tmp_path / "raw"
    (raw / "annotations").mkdir(parents=True)
    (raw / "annotations" / "coco_wholebody_train_v1.0.json").write_text("{}")
    (raw / "images" / "train2017").mkdir(parents=True)
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("default", str(tmp_path / "out")), str(raw))
    assert err.value.missing == ["annotations/coco_wholebody_val_v1.0.json", "images/val2017/ | val2017/"]
    assert "COCO-WholeBody" in str(err.value) and "val2017" in str(err.value)


def test_missing_images_are_all_listed(built, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    gone = ["images/train2017/000000000002.jpg", "images/val2017/000000000012.jpg"]
    for rel in gone:
        os.remove(raw / rel)
    with pytest.raises(ManualDirError) as err:
        prepare(get_builder("default", str(tmp_path / "out")), str(raw))
    assert sorted(err.value.missing) == sorted(gone)


def test_corrupt_files_named_or_skipped_per_split(built, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(built["raw"], raw)
    corrupt_file(raw / "images/val2017/000000000011.jpg")
    with pytest.raises(CorruptFileError, match="000000000011.jpg"):
        prepare(get_builder("default", str(tmp_path / "out")), str(raw))
    # a second problem in train: a malformed NeuralAnnot entry of annotation 103
    npath = raw / "annotations" / layout.NEURALANNOT_NAME
    fits = json.loads(npath.read_text())
    fits["103"]["right"]["mano_param"]["pose"] = fits["103"]["right"]["mano_param"]["pose"][:40]
    npath.write_text(json.dumps(fits))
    # ... and a missing image in train
    os.remove(raw / "images/train2017/000000000003.jpg")
    out = str(tmp_path / "out2")
    path = build.main(["--manual_dir", str(raw), "--data_dir", out, "--skip_corrupt"])
    info = tfds.builder_from_directory(path).info
    assert {k: v.num_examples for k, v in info.splits.items()} == {"train": 1, "val": 2}
    skipped = info.metadata["skipped"]
    assert sorted(r["sample_id"] for r in skipped["train"]) == [103, 105]
    by_id = {r["sample_id"]: r for r in skipped["train"]}
    assert by_id[105]["path"].endswith("000000000003.jpg") and "missing" in by_id[105]["reason"]
    assert by_id[103]["path"].endswith(layout.NEURALANNOT_NAME) and "103/right/mano_param/pose" in by_id[103]["reason"]
    assert [(r["sample_id"], os.path.basename(r["path"])) for r in skipped["val"]] == [(201, "000000000011.jpg")]
    report = json.loads(open(os.path.join(path, "skipped_files.json")).read())
    assert len(report["records"]) == 3
    err = capsys.readouterr().err
    assert "split val: skipped 1 sample(s)" in err and "sample 201" in err
    assert [int(r["annot_id"]) for r in read_split(path, "val")] == [202, 203]
