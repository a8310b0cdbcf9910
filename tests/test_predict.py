"""``python -m handjax.predict`` on built-in frames with a tiny TempCLR (a RUN/finetune folder and a model-only one).

One command run (in-process, through the CLI's flag parsing) over PNG / JPEG frames with a boxes file
covers the outputs; the camera and crop maths are checked on hand-built cases against direct numpy.
"""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from handjax import inference, mano
from handjax.configs.tempclr import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 32  # the tiny config's crop


# ----------------------------------------------------------------------------- helpers
def parse_obj(path):
    """Minimal independent OBJ reader: (vertices (V, 3), faces (F, 3) 0-based)."""
    verts, faces = [], []
    for line in open(path):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "f":
            faces.append([int(x.split("/")[0]) - 1 for x in parts[1:]])
        else:
            raise AssertionError(f"unexpected OBJ line {line!r}")
    return np.array(verts), np.array(faces)


def np_project(points, K):
    p = np.asarray(points) @ np.asarray(K).T
    return p[:, :2] / p[:, 2:]


def joint_box(joints2d):
    lo, hi = joints2d.min(0), joints2d.max(0)
    return [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # Same directory as tests/test_synthetic_data.py: built once per pytest session.
    from data_pipelines.synthetic_hands import ensure_built

    return ensure_built("tiny", str(tmp_path_factory.getbasetemp() / "synthetic_hands_data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, RUN/finetune, model-only folder) of a tiny TempCLR with non-trivial outputs.

    The stage folder is written exactly as the training loop writes one (``init_state`` with an
    optimizer, ``Checkpointer.save`` at step 2); training steps themselves are skipped because
    compiling a backward pass costs minutes on a loaded CPU. The regressor's output layer is
    scaled so that the predicted poses are far from the mean (a stronger test of the
    mirroring and the exported parameters than an untrained model's near-mean outputs).
    """
    import optax
    from flax import nnx

    from handjax.models.checkpoint import save_model
    from handjax.train.checkpoint import Checkpointer
    from handjax.train.loop import init_state
    from handjax.train.tempclr import build_model

    cfg = get_config("size=tiny")
    model = build_model(cfg, with_projection=False, seed=3)
    out_layer = model.regressor.output_layer
    out_layer.kernel.value = out_layer.kernel.value.at[:, :96].multiply(20.0)  # the 6D rotations (not betas, camera)
    work = tmp_path_factory.mktemp("predict_run")
    _, state = init_state(model, nnx.Param, optax.adam(1e-4))
    ckpt = Checkpointer(str(work / "finetune" / "checkpoints"), async_save=False)
    ckpt.save(2, state)
    ckpt.close()
    save_model(model, str(work / "converted"), {"system": "tempclr"})
    return cfg, str(work / "finetune"), str(work / "converted")


@pytest.fixture(scope="module")
def frames(data_dir):
    from data_pipelines.pipeline import FrameSource

    src = FrameSource(data_dir, "test")
    return [src[0], src[5]]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, trained, frames):
    """The command over: a right hand (PNG), the same frame mirrored with a left box, a JPEG without a
    box entry (whole image), a wide image with two hands, an image with no hands, a truncated JPEG."""
    from absl import flags

    from handjax import predict

    _, ckpt, _ = trained
    d = tmp_path_factory.mktemp("predict_io")
    imgs = d / "images"
    imgs.mkdir()
    a, b = frames[0]["image"], frames[1]["image"]
    Image.fromarray(a).save(imgs / "hand.png")
    Image.fromarray(np.ascontiguousarray(a[:, ::-1])).save(imgs / "hand_mirrored.png")
    Image.fromarray(b).save(imgs / "whole.jpg", quality=95)
    Image.fromarray(np.concatenate([a, b], axis=1)).save(imgs / "wide.png")
    Image.fromarray(b).save(imgs / "empty.png")
    Image.fromarray(b).save(d / "full.jpg", quality=95)
    data = (d / "full.jpg").read_bytes()
    (imgs / "broken.jpg").write_bytes(data[: len(data) // 2])
    w = a.shape[1]
    box = joint_box(frames[0]["joints2d"])
    mirrored = [w - 1 - box[2], box[1], w - 1 - box[0], box[3]]
    box_b = joint_box(frames[1]["joints2d"])
    boxes = {"hand.png": [{"box": box, "side": "right"}],
             "hand_mirrored.png": [{"box": mirrored, "side": "left"}],
             "wide.png": [{"box": box, "side": "right"},
                          {"box": [box_b[0] + w, box_b[1], box_b[2] + w, box_b[3]], "side": "left"}],
             "empty.png": []}
    (d / "boxes.json").write_text(json.dumps(boxes))
    out = d / "out"
    argv = ["predict", "--config", os.path.join(ROOT, "configs/tempclr.py") + ":size=tiny", "--checkpoint", ckpt,
            "--images", str(imgs), "--out", str(out), "--boxes", str(d / "boxes.json"), "--batch_size", "4",
            "--progress=false"]
    flags.FLAGS.unparse_flags()
    rest = predict.parse_flags(argv)
    code = predict.predict_main(rest)
    return dict(code=code, out=out, boxes=boxes, images=imgs, box=box, mirrored_box=mirrored)


# ----------------------------------------------------------------------------- the command
def test_summary_counts_and_names_the_truncated_jpeg(predicted, capsys):
    assert predicted["code"] == 2  # some images failed; the others have their outputs
    summary = json.loads((predicted["out"] / "summary.json").read_text())
    assert summary["images"] == 5 and summary["hands"] == 5
    assert list(summary["failed"]) == ["broken.jpg"] and "truncated" in summary["failed"]["broken.jpg"]
    html = (predicted["out"] / "index.html").read_text()
    assert "broken.jpg" in html and "hand_overlay.png" in html and "wide_overlay.png" in html
    for name in ("hand", "hand_mirrored", "whole", "wide", "empty"):
        assert (predicted["out"] / f"{name}.json").is_file()
    assert not (predicted["out"] / "broken.json").exists()


def test_obj_parses_and_json_roundtrips(predicted):
    out = predicted["out"]
    text = (out / "wide.json").read_text()
    record = json.loads(text)
    assert json.loads(json.dumps(record)) == record
    assert record["image_size"] == {"height": 64, "width": 128}
    assert record["system"] == "tempclr" and record["checkpoint"].endswith("finetune")
    assert record["checkpoint_step"] == 2 and record["model"]["backbone"] == "resnet18"
    assert [h["side"] for h in record["hands"]] == ["right", "left"]
    for hand in record["hands"]:
        assert hand["is_right"] == (hand["side"] == "right")
        assert len(hand["mano"]["pose"]) == 48 and len(hand["mano"]["betas"]) == 10
        assert np.array(hand["joints3d"]).shape == (21, 3) and np.array(hand["joints2d"]).shape == (21, 2)
        assert hand["joint_convention"] == "tempclr" and hand["joint_names"][0] == "wrist"
        v, f = parse_obj(out / hand["mesh"])
        assert v.shape == (778, 3) and f.shape == (1538, 3) and f.min() == 0 and f.max() == 777
        assert np.all(v[:, 2] > 0)  # in front of the camera
    assert record["hands"][0]["mesh"] == "wide_right.obj" and record["hands"][1]["mesh"] == "wide_left.obj"


def test_projected_3d_joints_are_the_2d_joints(predicted):
    for name in ("hand", "hand_mirrored", "whole", "wide"):
        record = json.loads((predicted["out"] / f"{name}.json").read_text())
        for hand in record["hands"]:
            K = np.array(hand["camera"]["K"])
            err = np.abs(np_project(hand["joints3d"], K) - np.array(hand["joints2d"])).max()
            assert err < 0.5, (name, err)
            # default focal length: max(H, W); principal point: the image centre
            h, w = record["image_size"]["height"], record["image_size"]["width"]
            np.testing.assert_allclose(K, [[max(h, w), 0, (w - 1) / 2], [0, max(h, w), (h - 1) / 2], [0, 0, 1]])
            # the mesh is in the same frame: its projection surrounds the 2-D joints
            v, _ = parse_obj(predicted["out"] / hand["mesh"])
            uv = np_project(v, K)
            j = np.array(hand["joints2d"])
            assert np.all(j >= uv.min(0) - 1) and np.all(j <= uv.max(0) + 1)


def test_json_mano_parameters_reproduce_the_meshes(predicted):
    """MANO(pose, betas, transl) of the JSON (flat hand mean, smplx-style translation) gives the OBJ:
    right hands with the right model, left hands with its mirror (handjax.mano.mirror_model)."""
    right = mano.load_model(None, "right")
    models = {"right": right, "left": mano.mirror_model(right)}
    record = json.loads((predicted["out"] / "wide.json").read_text())
    for hand in record["hands"]:
        model = models[hand["side"]]
        out = mano.mano_forward(model, mano.from_axis_angle(model, np.array(hand["mano"]["pose"], np.float32)),
                                np.array(hand["mano"]["betas"], np.float32),
                                np.array(hand["mano"]["transl"], np.float32), convention="tempclr")
        v, f = parse_obj(predicted["out"] / hand["mesh"])
        np.testing.assert_allclose(np.asarray(out.vertices), v, atol=2e-5)
        np.testing.assert_array_equal(f, np.asarray(model.faces))  # left: flipped winding, normals outwards
        if hand["side"] == "right":
            np.testing.assert_allclose(np.asarray(out.joints), hand["joints3d"], atol=2e-5)
        np.testing.assert_allclose(hand["mano"]["global_orient"] + hand["mano"]["hand_pose"], hand["mano"]["pose"])


def test_left_box_on_mirrored_image_is_the_mirrored_right_hand(predicted):
    out = predicted["out"]
    r = json.loads((out / "hand.json").read_text())["hands"][0]
    m = json.loads((out / "hand_mirrored.json").read_text())["hands"][0]
    assert (r["side"], m["side"]) == ("right", "left") and m["crop"]["mirrored"] and not r["crop"]["mirrored"]
    flip = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.array(m["joints3d"]), np.array(r["joints3d"]) * flip, atol=1e-4)
    np.testing.assert_allclose(np.array(m["mano"]["pose"]), np.asarray(mano.mirror_axis_angle(
        np.array(r["mano"]["pose"]))), atol=1e-4)
    np.testing.assert_allclose(m["mano"]["betas"], r["mano"]["betas"], atol=1e-5)
    w = 64
    j_r, j_m = np.array(r["joints2d"]), np.array(m["joints2d"])
    np.testing.assert_allclose(j_m[:, 0], w - 1 - j_r[:, 0], atol=1e-2)
    np.testing.assert_allclose(j_m[:, 1], j_r[:, 1], atol=1e-2)
    v_r, f_r = parse_obj(out / r["mesh"])
    v_m, f_m = parse_obj(out / m["mesh"])
    np.testing.assert_allclose(v_m, v_r * flip, atol=1e-4)
    np.testing.assert_array_equal(f_m, f_r[:, ::-1])


def test_boxes_are_honoured(predicted):
    out, box = predicted["out"], predicted["box"]
    hand = json.loads((out / "hand.json").read_text())["hands"][0]
    np.testing.assert_allclose(hand["box"], box)
    centre = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
    np.testing.assert_allclose(hand["crop"]["centre"], centre, atol=1e-3)
    np.testing.assert_allclose(hand["crop"]["side"], 1.5 * max(box[2] - box[0], box[3] - box[1]), atol=1e-3)
    affine = np.array(hand["crop"]["affine"])
    np.testing.assert_allclose(affine[:, :2] @ centre + affine[:, 2], [(S - 1) / 2] * 2, atol=1e-4)
    np.testing.assert_allclose(affine[0, 0], S / hand["crop"]["side"], rtol=1e-5)
    whole = json.loads((out / "whole.json").read_text())["hands"]
    assert len(whole) == 1 and whole[0]["box"] is None and whole[0]["side"] == "right"
    np.testing.assert_allclose(whole[0]["crop"]["centre"], [31.5, 31.5])
    assert whole[0]["crop"]["side"] == 64
    empty = json.loads((out / "empty.json").read_text())
    assert empty["hands"] == []
    assert not [p for p in os.listdir(out) if p.startswith("empty_") and p.endswith(".obj")]


def test_overlay_has_the_original_size_and_shows_the_hand(predicted):
    out, imgs = predicted["out"], predicted["images"]
    for name, ext in (("hand", "png"), ("wide", "png"), ("whole", "jpg"), ("empty", "png")):
        original = np.asarray(Image.open(imgs / f"{name}.{ext}").convert("RGB"))
        overlay = np.asarray(Image.open(out / f"{name}_overlay.png"))
        assert overlay.shape == original.shape, name
        changed = np.any(overlay != original, axis=-1)
        if name == "empty":
            assert not changed.any()
            continue
        record = json.loads((out / f"{name}.json").read_text())
        for hand in record["hands"]:  # mesh / skeleton pixels drawn where the hand projects
            x0, y0 = np.floor(np.array(hand["joints2d"]).min(0)).astype(int).clip(0)
            x1, y1 = np.ceil(np.array(hand["joints2d"]).max(0)).astype(int) + 1
            assert changed[y0:y1, x0:x1].mean() > 0.2, name


# ----------------------------------------------------------------------------- errors
def test_checkpoint_of_another_depth_names_the_differing_keys(trained):
    from handjax.predict import load_predictor

    cfg, ckpt, converted = trained
    other = get_config("size=tiny")
    other.model.backbone = "resnet34"
    for path in (ckpt, converted):
        with pytest.raises(ValueError, match=r"(?s)--checkpoint .*differing keys.*missing from the checkpoint: "
                                             r"params/backbone/layer1/2/"):
            load_predictor(other, path)


def test_stage_folder_and_model_only_checkpoint_load_the_same_weights(trained):
    import jax
    from flax import nnx

    from handjax.predict import load_predictor

    cfg, ckpt, converted = trained
    (p1, step1), (p2, step2) = load_predictor(cfg, ckpt), load_predictor(cfg, converted)
    assert (step1, step2) == (2, -1)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(p1.model), nnx.state(p2.model))
    with pytest.raises(ValueError, match="--checkpoint .*nowhere"):
        load_predictor(cfg, os.path.join(ckpt, "nowhere"))


@pytest.mark.parametrize("content,needle", [
    ('{"a.jpg": [{"box": [1, 2, 3], "side": "right"}]}', r"key 'a.jpg'\[0\]\['box'\]: expected \[x0, y0, x1, y1\]"),
    ('{"a.jpg": [{"box": [5, 2, 3, 9], "side": "right"}]}', r"key 'a.jpg'\[0\]\['box'\]"),
    ('{"a.jpg": [{"box": [1, 2, 3, 4], "side": "up"}]}', r"key 'a.jpg'\[0\]\['side'\]: expected 'right' or 'left'"),
    ('{"a.jpg": [{"box": [1, 2, 3, 4]}]}', r"key 'a.jpg'\[0\]: missing key 'side'"),
    ('{"a.jpg": [{"box": [1, 2, 3, 4], "side": "left", "score": 1}]}', r"unknown key\(s\) \['score'\]"),
    ('{"a.jpg": {"box": [1, 2, 3, 4], "side": "left"}}', r"key 'a.jpg': expected a list of hands"),
    ('[1, 2]', r"expected an object mapping image names"),
    ('{"a.jpg": [', r"not valid JSON"),
])
def test_malformed_boxes_file_names_file_and_key(tmp_path, content, needle):
    path = tmp_path / "boxes.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + needle):
        inference.load_boxes(str(path))


def test_inputs_folder_glob_and_name_collisions(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in ("a/x.png", "a/y.JPG", "a/notes.txt", "b/x.jpg"):
        (tmp_path / p).write_bytes(b"")
    assert [os.path.basename(p) for p in inference.list_images([str(tmp_path / "a")])] == ["x.png", "y.JPG"]
    assert len(inference.list_images([str(tmp_path / "a" / "*.png"), str(tmp_path / "a" / "x.png")])) == 1
    with pytest.raises(ValueError, match=r"b/x.jpg would write the same outputs \(x\.\*\)"):
        inference.list_images([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(ValueError, match="no such file or folder"):
        inference.list_images([str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="matches no files"):
        inference.list_images([str(tmp_path / "*.gif")])


# ----------------------------------------------------------------------------- camera and crop maths
def _crop(centre, side, mirror):
    """Direct construction of the crop affine: u_c = sigma (m (u - c)) + (S - 1) / 2 with m = diag(+-1, 1)."""
    sigma = S / side
    m = np.diag([-1.0 if mirror else 1.0, 1.0])
    A = np.eye(3)
    A[:2, :2] = sigma * m
    A[:2, 2] = (S - 1) / 2.0 - sigma * m @ np.asarray(centre)
    return A


@pytest.mark.parametrize("mirror", [False, True])
def test_crop_affine_matches_direct_construction(mirror):
    centre, side = np.array([40.25, 21.5]), 37.0
    np.testing.assert_allclose(inference.crop_affine(centre, side, S, mirror), _crop(centre, side, mirror), atol=1e-12)
    c, s = inference.crop_window([10, 20, 30, 60], (64, 96), 1.5)
    np.testing.assert_allclose(c, [20, 40])
    np.testing.assert_allclose(s, 60.0)
    c, s = inference.crop_window(None, (64, 96), 1.5)
    np.testing.assert_allclose(c, [47.5, 31.5])
    np.testing.assert_allclose(s, 96.0)


@pytest.mark.parametrize("mirror", [False, True])
def test_weak_perspective_camera_in_original_pixels(mirror):
    """A weak-perspective crop camera x_c = a X[:2] + b through the inverse crop affine: the exported
    pinhole camera reproduces the network's 2-D points exactly at the hand origin's depth, and
    perspective-shrinks others by tz / (tz + dz)."""
    rng = np.random.default_rng(0)
    a, b = 120.0, np.array([17.0, 14.5])
    P = np.array([[a, 0, 0, b[0]], [0, a, 0, b[1]], [0, 0, 0, 1.0]])
    A = _crop([50.0, 30.0], 40.0, mirror)
    X = rng.normal(0, 0.05, (21, 3))  # the model's hand
    crop_uv = X[:, :2] * a + b
    orig_uv = (np.linalg.inv(A) @ np.c_[crop_uv, np.ones(21)].T).T[:, :2]  # the network's points in the image
    f, c = 640.0, np.array([319.5, 239.5])
    K, t = inference.camera_space(inference.image_camera(P, A, mirror), f, c)
    np.testing.assert_allclose(K, [[f, 0, c[0]], [0, f, c[1]], [0, 0, 1]], atol=1e-6)
    sigma = S / 40.0
    np.testing.assert_allclose(t[2], f / (a / sigma), rtol=1e-6)  # depth: focal / (pixels per metre)
    out = X * ([-1.0, 1, 1] if mirror else 1.0)  # the exported hand (mirrored back for a left hand)
    flat = out.copy()
    flat[:, 2] = 0.0
    np.testing.assert_allclose(np_project(flat + t, K), orig_uv, atol=1e-3)
    # off the origin's depth: x - c shrinks by tz / (tz + dz) relative to the weak-perspective point
    proj = np_project(out + t, K)
    expected = c + (np_project(flat + t, K) - c) * (t[2] / (t[2] + out[:, 2:3]))
    np.testing.assert_allclose(proj, expected, atol=1e-3)


def test_pinhole_crop_camera_in_original_pixels():
    """A pinhole crop camera K_c [I | 0] (crop pixels) becomes A^-1 K_c (M) in original pixels."""
    Kc = np.array([[300.0, 0, 15.5], [0, 300.0, 15.5], [0, 0, 1]])
    P = np.c_[Kc, np.zeros(3)]
    X = np.random.default_rng(1).normal([0, 0, 0.6], 0.05, (21, 3))
    for mirror in (False, True):
        A = _crop([50.0, 30.0], 40.0, mirror)
        K, t = inference.camera_space(inference.image_camera(P, A, mirror), 0.0, (0.0, 0.0))
        np.testing.assert_allclose(t, 0.0, atol=1e-9)
        orig = (np.linalg.inv(A) @ np.c_[np_project(X, Kc), np.ones(21)].T).T[:, :2]
        Xo = X * ([-1.0, 1, 1] if mirror else 1.0)
        np.testing.assert_allclose(np_project(Xo, K), orig, atol=1e-9)
        assert K[0, 0] > 0 and K[1, 1] > 0


def test_obj_writer_roundtrip(tmp_path):
    v = np.random.default_rng(2).normal(size=(5, 3))
    f = np.array([[0, 1, 2], [2, 3, 4]])
    inference.write_obj(str(tmp_path / "m.obj"), v, f, comment="two\nlines")
    v2, f2 = parse_obj(tmp_path / "m.obj")
    np.testing.assert_allclose(v2, v, atol=1e-6)
    np.testing.assert_array_equal(f2, f)


def test_system_that_finds_hands_gets_the_whole_image_and_both_sides(tmp_path):
    """A two-hand predictor (``finds_boxes=True``, sides right and left): one whole-image crop per image,
    every returned hand exported with its own faces, nothing mirrored; boxes are ignored."""
    import jax.numpy as jnp
    from flax import nnx

    from handjax.geometry import weak_perspective_matrix
    from handjax.models.hand_output import make_hand_output
    from handjax.train.system import Predictor

    right = mano.load_model(None, "right")
    left = mano.mirror_model(right)

    class Fake(nnx.Module):
        def __init__(self):
            self.shift = nnx.Param(jnp.array([0.3, -0.2]))

        def __call__(self, images):
            return images.mean(axis=(1, 2, 3))

    def hand(model, images, hand_model, x):
        b = images.shape[0]
        rot = jnp.tile(jnp.eye(3), (b, 16, 1, 1))
        out = mano.mano_forward(hand_model, rot, jnp.zeros((b, 10)), convention="tempclr")
        cam = weak_perspective_matrix(jnp.full((b,), 8.0), jnp.tile(model.shift[...] * x, (b, 1)), S)
        return make_hand_output(out.joints, cam, rot, jnp.zeros((b, 10)), out.vertices,
                                jnp.full((b,), hand_model.side == "right"), convention="tempclr")

    def predict(model, images):
        model(images)
        return {"right": hand(model, images, right, 1.0), "left": hand(model, images, left, -1.0)}

    predictor = Predictor(model=Fake(), image_size=S, predict=predict,
                          faces={"right": np.asarray(right.faces), "left": np.asarray(left.faces)},
                          sides=("right", "left"), finds_boxes=True, meta={"joint_convention": "tempclr"})
    img = np.random.default_rng(0).integers(0, 255, (48, 80, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "pair.png")
    summary = inference.run(predictor, [str(tmp_path / "pair.png")], str(tmp_path / "out"), batch_size=2,
                            boxes={"pair.png": [{"box": [0, 0, 5, 5], "side": "left"}]}, progress=False)
    assert (summary.images, summary.hands, summary.failed) == (1, 2, {})
    record = json.loads((tmp_path / "out" / "pair.json").read_text())
    assert [h["side"] for h in record["hands"]] == ["right", "left"]
    for h, model in zip(record["hands"], (right, left)):
        assert h["box"] is None and not h["crop"]["mirrored"] and h["crop"]["side"] == 80
        v, f = parse_obj(tmp_path / "out" / h["mesh"])
        np.testing.assert_array_equal(f, np.asarray(model.faces))
        # rest pose (identity rotations, mean shape), the crop camera x_c = S/2 (s (X[:2] + t) + 1) with s = 8
        # through the whole-image crop (centre (39.5, 23.5), 80 px -> S px): original pixels of a point at the
        # origin's depth are a (X[:2] + t) + centre + 0.5 * 80 / S with a = s S / 2 * 80 / S
        a = 8.0 * S / 2 * 80 / S
        t_img = np.array([0.3, -0.2]) * (1.0 if model.side == "right" else -1.0)
        rest = np.asarray(mano.mano_forward(model, np.tile(np.eye(3), (16, 1, 1)), None, convention="tempclr").vertices)
        expected = (rest[:, :2] + t_img) * a + np.array([39.5, 23.5]) + 0.5 * 80 / S
        t = np.array(h["camera"]["translation"])
        np.testing.assert_allclose(v, rest + t, atol=2e-5)
        np.testing.assert_allclose(t[2], 80 / a, rtol=1e-5)  # focal max(H, W) = 80 over pixels per metre
        flat = np.c_[v[:, :2], np.full(len(v), t[2])]
        np.testing.assert_allclose(np_project(flat, h["camera"]["K"]), expected, atol=1e-3)


def test_overlay_rendered_at_reduced_size_matches_full_size():
    """A mesh larger than max_render_side is rendered smaller and upsampled: same silhouette (IoU > 0.85)."""
    right = mano.load_model(None, "right")
    rest = mano.mano_forward(right, np.tile(np.eye(3), (16, 1, 1)), None, convention="tempclr")
    v = np.asarray(rest.vertices, np.float64)
    shift = np.array([0.0, 0.0, 0.5]) - v.mean(0)
    K = np.array([[400.0, 0, 99.5], [0, 400.0, 79.5], [0, 0, 1]])
    joints = np.asarray(rest.joints, np.float64) + shift
    z = np.zeros(3)
    hand = inference.HandResult(
        side="right", box=None, crop_centre=z[:2], crop_side=1.0, crop_affine=np.eye(3), mirrored=False,
        model_camera=np.zeros((3, 4)), image_camera=np.zeros((3, 4)), K=K, transl=shift, vertices=v + shift,
        faces=np.asarray(right.faces), joints3d=joints, joints2d=inference.project(joints, K), pose=np.zeros(48),
        betas=np.zeros(10), convention="not_a_convention")  # no skeleton: compare the meshes only
    black = np.zeros((160, 200, 3), np.uint8)
    full = np.any(inference.render_overlay(black, [hand]) > 0, -1)
    small = np.any(inference.render_overlay(black, [hand], max_render_side=48) > 0, -1)
    uv = inference.project(v + shift, K)
    assert np.ptp(uv[:, 0]) > 100 and full.sum() > 3000  # the hand spans well over 48 pixels
    assert (full & small).sum() / (full | small).sum() > 0.85


def test_converted_release_without_real_mano_is_an_error(trained, tmp_path):
    """A model-only checkpoint converted from an upstream release needs mano.model_path (or allow_builtin)."""
    import shutil

    from handjax.models.checkpoint import MODEL_META
    from handjax.predict import load_predictor

    cfg, _, converted = trained
    release = tmp_path / "release"
    shutil.copytree(converted, release)
    (release / MODEL_META).write_text(json.dumps({"system": "tempclr",
                                                  "converter": "handjax.convert.tempclr.convert_tempclr"}))
    with pytest.raises(ValueError, match=r"--checkpoint .*release.*converted.*mano\.model_path is empty"):
        load_predictor(cfg, str(release))
    allowed = get_config("size=tiny")
    allowed.mano.allow_builtin = True
    assert load_predictor(allowed, str(release))[1] == -1


def test_subject_shape_flag_is_refused_by_a_system_without_one(tmp_path):
    """--subject_shape sets predict.subject_shape (personalize; tested end to end in test_personalize_main);
    TempCLR has no such key: a one-line error naming the flag, before any checkpoint or image is read."""
    from absl import flags

    from handjax import predict

    argv = ["predict", "--config", os.path.join(ROOT, "configs/tempclr.py") + ":size=tiny", "--checkpoint",
            str(tmp_path / "none"), "--images", str(tmp_path / "none.png"), "--out", str(tmp_path / "out"),
            "--subject_shape", str(tmp_path / "shape.json")]
    flags.FLAGS.unparse_flags()
    rest = predict.parse_flags(argv)
    with pytest.raises(ValueError, match="--subject_shape: system 'tempclr' takes no subject shape"):
        predict.predict_main(rest)
    flags.FLAGS.unparse_flags()
