"""FreiHAND tfds builder on a fixture in the download's exact layout: build, read back through
grain, conventions (projection, MANO split, relative poses), errors, pipeline frame mode."""
import io
import json
import os

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines import manual
from data_pipelines.freihand import build as build_cli
from data_pipelines.freihand import ensure_built, get_builder
from data_pipelines.pipeline import FrameSource, make_pipeline
from hand_dataset_fixtures import corrupt_file, write_freihand

N_TRAIN, N_EVAL, SIZE = 3, 2, 16


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("freihand_raw")
    return root, write_freihand(root, N_TRAIN, N_EVAL, SIZE)


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    root, _ = raw
    return ensure_built("default", str(tmp_path_factory.mktemp("freihand_data")), str(root))


def records(builder_dir, split):
    return list(grain.MapDataset.source(tfds.builder_from_directory(builder_dir).as_data_source(split)))


def project(points, K):
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return p[:, :2] / p[:, 2:]


def test_layout_counts_and_order(built, raw):
    _, gt = raw
    builder = tfds.builder_from_directory(built)
    assert built.endswith(os.path.join("freihand", "default", "1.0.0"))
    assert builder.info.splits["train"].num_examples == 4 * N_TRAIN
    assert builder.info.splits["evaluation"].num_examples == N_EVAL
    assert builder.info.file_format.value == "array_record" and builder.info.disable_shuffling
    train = records(built, "train")
    # record r is image id r = idx + N * version (version-major), as the official numbering
    assert [int(r["image_id"]) for r in train] == list(range(4 * N_TRAIN))
    assert [int(r["sample_index"]) for r in train] == [i for _ in range(4) for i in range(N_TRAIN)]
    assert [int(r["version"]) for r in train] == [v for v in range(4) for _ in range(N_TRAIN)]
    assert builder.info.metadata["versions"] == ["gs", "hom", "sample", "auto"]
    assert builder.info.metadata["index"]["train"]["sequence_id"] == list(range(4 * N_TRAIN))


def test_values_round_trip(built, raw):
    _, gt = raw
    for split in ("train", "evaluation"):
        g = gt[split]
        for rec in records(built, split):
            i = int(rec["sample_index"])
            np.testing.assert_allclose(rec["K"], g["K"][i], rtol=1e-6)
            np.testing.assert_allclose(rec["joints3d"], g["xyz"][i], atol=1e-7)
            np.testing.assert_allclose(rec["vertices"], g["verts"][i], atol=1e-7)
            # 61 MANO values = 48 pose + 10 shape + 2 uv_root + 1 scale (official split_theta)
            np.testing.assert_allclose(rec["mano_pose"], g["mano"][i][:48], atol=1e-6)
            np.testing.assert_allclose(rec["betas"], g["mano"][i][48:58], atol=1e-6)
            np.testing.assert_allclose(rec["uv_root"], g["mano"][i][58:60], atol=1e-6)
            np.testing.assert_allclose(rec["mano_scale"], g["mano"][i][60], atol=1e-6)
            np.testing.assert_allclose(rec["scale"], g["scale"][i], rtol=1e-6)
            assert bool(rec["mano_pose_relative"]) and bool(rec["is_right"])
            assert int(rec["eval_index"]) == i


def test_joints2d_are_the_projection_of_joints3d(built):
    rec = records(built, "train")[4]
    uv = project(rec["joints3d"], rec["K"])  # independent float64 pinhole projection
    np.testing.assert_allclose(rec["joints2d"], uv, atol=1e-4)
    # the fixture's hand lies in front of the camera inside the image
    assert np.all(rec["joints2d"] > 0) and np.all(rec["joints2d"] < SIZE)


def test_images_are_the_original_jpeg_bytes_and_masks_binary(built, raw):
    root, gt = raw
    src = tfds.builder_from_directory(built).as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()})
    for r in (0, 5, 11):
        rec = src[r]
        assert rec["image"] == gt["train"]["images"][int(rec["image_id"])]  # not re-encoded
        mask = np.asarray(Image.open(io.BytesIO(rec["mask"])))
        assert set(np.unique(mask)) <= {0, 255} and bool(rec["has_mask"])
        np.testing.assert_array_equal(mask > 0, gt["train"]["masks"][int(rec["sample_index"])][..., 0] > 127)
    ev = records(built, "evaluation")[0]
    assert not bool(ev["has_mask"]) and not ev["mask"].any()


def test_pipeline_frame_mode_whole_image_crop(built, raw):
    _, gt = raw
    it = make_pipeline(built, "evaluation", mode="frame", batch_size=2, image_size=24, shuffle=False,
                       augment=dict(crop_from="image", bbox_pad=1.0), shard_index=0, shard_count=1, num_epochs=1)
    b = next(it)
    assert b["image"].shape == (2, 24, 24, 3) and b["image"].dtype == np.float32
    s = 24 / SIZE
    # whole image -> output: pixel centre x maps to s (x + 0.5) - 0.5 (cv2.resize's convention)
    expect_affine = np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1]])
    np.testing.assert_allclose(b["crop_affine"][0], expect_affine, atol=1e-5)
    i = int(b["eval_index"][0])
    np.testing.assert_allclose(b["joints2d"][0], project(gt["evaluation"]["xyz"][i], gt["evaluation"]["K"][i]) * s
                               + 0.5 * s - 0.5, atol=1e-3)
    np.testing.assert_allclose(project(b["joints3d"][0], b["K"][0]), b["joints2d"][0], atol=1e-3)
    # real-dataset defaults: no part segmentation, no MANO translation; relative poses masked
    assert not b["has_part_seg"].any() and not b["has_transl"].any() and not b["has_mano"].any()
    assert b["mano_pose_relative"].all()


def test_hand_mean_makes_poses_absolute(built, raw):
    _, gt = raw
    mean = np.linspace(-0.2, 0.2, 45).astype(np.float32)
    plain, absolute = FrameSource(built, "train"), FrameSource(built, "train", hand_mean=mean)
    f0, f1 = plain[7], absolute[7]
    np.testing.assert_allclose(f1["mano_pose"][:3], f0["mano_pose"][:3])
    np.testing.assert_allclose(f1["mano_pose"][3:], f0["mano_pose"][3:] + mean, atol=1e-6)
    assert not f1["mano_pose_relative"] and "has_mano" not in f1 and not f0["has_mano"]


def test_missing_files_are_all_listed(tmp_path):
    root = tmp_path / "raw"
    write_freihand(root, N_TRAIN, N_EVAL, SIZE)
    os.remove(root / "training_verts.json")
    os.remove(root / "training" / "rgb" / f"{1 + N_TRAIN * 2:08d}.jpg")
    os.remove(root / "training" / "mask" / "00000002.jpg")
    os.remove(root / "evaluation" / "rgb" / "00000001.jpg")
    with pytest.raises(manual.ManualDirError) as err:
        build_cli.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "out")])
    assert sorted(err.value.missing) == sorted([
        "training_verts.json", f"training/rgb/{1 + N_TRAIN * 2:08d}.jpg", "training/mask/00000002.jpg",
        "evaluation/rgb/00000001.jpg"])
    assert "FreihandDataset" in str(err.value)  # the download instructions come with the error
    assert not get_builder("default", str(tmp_path / "out")).is_prepared()


def test_corrupt_image_stops_the_build_naming_it(tmp_path):
    root = tmp_path / "raw"
    write_freihand(root, N_TRAIN, N_EVAL, SIZE)
    bad = root / "training" / "rgb" / f"{N_TRAIN + 1:08d}.jpg"
    corrupt_file(bad)
    with pytest.raises(manual.CorruptFileError, match=str(bad)):
        build_cli.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "out")])


def test_corrupt_files_skipped_and_reported(tmp_path, capsys):
    root = tmp_path / "raw"
    gt = write_freihand(root, N_TRAIN, N_EVAL, SIZE)
    corrupt_file(root / "training" / "rgb" / f"{N_TRAIN + 1:08d}.jpg")  # one image of version 'hom'
    xyz = json.loads((root / "evaluation_xyz.json").read_text())
    xyz[0] = xyz[0][:20]  # a 20-joint annotation
    (root / "evaluation_xyz.json").write_text(json.dumps(xyz))
    path = build_cli.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "out"), "--skip_corrupt"])
    err = capsys.readouterr().err
    assert "skipped 2" in err and f"{N_TRAIN + 1:08d}.jpg" in err and "evaluation_xyz.json" in err
    report = json.loads(open(os.path.join(path, "skipped_files.json")).read())
    assert len(report["skipped"]) == 2
    train = records(path, "train")
    assert [int(r["image_id"]) for r in train] == [i for i in range(4 * N_TRAIN) if i != N_TRAIN + 1]
    ev = records(path, "evaluation")
    assert [int(r["eval_index"]) for r in ev] == [1]
    np.testing.assert_allclose(ev[0]["joints3d"], gt["evaluation"]["xyz"][1], atol=1e-7)
    # the metadata index matches the records actually written
    meta = tfds.builder_from_directory(path).info.metadata
    assert meta["index"]["train"]["sequence_id"] == [int(r["image_id"]) for r in train]
    assert len(FrameSource(path, "train")) == len(train)


def test_green_screen_config(raw, tmp_path):
    root, _ = raw
    path = ensure_built("gs", str(tmp_path), str(root))
    assert [int(r["version"]) for r in records(path, "train")] == [0] * N_TRAIN


def test_data_factory_builds_and_trains_on_freihand(raw, tmp_path):
    """config data section -> factory: builds from manual_dir; training batches mask MANO
    losses unless data.mano_model supplies the hand mean; evaluation uses the whole image."""
    import ml_collections

    from data_pipelines.factory import make_data_factory
    from handjax import mano

    root, gt = raw
    mano.save_npz(mano.load_model(None, "right"), str(tmp_path / "hand.npz"))
    base = dict(name="freihand", builder_config="gs", data_dir=str(tmp_path / "data"), manual_dir=str(root),
                image_size=16, augment=dict(rotation=10.0), window=1, extra_negatives=0, mano_model="")
    data = make_data_factory(ml_collections.ConfigDict(base))
    assert data.builder_dir.endswith(os.path.join("freihand", "gs", "1.0.0"))
    b = next(data(split="train", mode="frame", batch_size=8, train=True))
    assert b["image"].shape == (8, 16, 16, 3) and not b["has_mano"].any() and b["mano_pose_relative"].all()
    with_mean = make_data_factory(ml_collections.ConfigDict(dict(base, mano_model=str(tmp_path / "hand.npz"))))
    b = next(with_mean(split="train", mode="frame", batch_size=8, train=True))
    assert not b["mano_pose_relative"].any() and "has_mano" not in b
    ev = list(data(split="evaluation", mode="frame", batch_size=8, train=False))
    assert len(ev) == 1 and ev[0]["valid"].sum() == N_EVAL
    np.testing.assert_allclose(ev[0]["crop_affine"][0, 0, 0], 16 / SIZE, rtol=1e-6)  # whole image -> 16 px
    with pytest.raises(ValueError, match="freihand"):
        make_data_factory(ml_collections.ConfigDict(dict(base, name="freihandd")))
