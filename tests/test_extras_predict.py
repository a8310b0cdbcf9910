"""Per-image extra outputs of ``python -m handjax.predict`` (``Predictor.extra_images``): the shared hook, the
z-composited meshes, DIGIT's part maps on the original pixel grid and InterWild's demo renders with images of
two, one and no hands decided by the box confidence.

The two commands run in-process through the CLI's flag parsing on model-only checkpoints of the tiny configs
(random weights; no training steps, which cost minutes to compile on a loaded CPU).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from handjax import inference, mano

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _predict_cli(argv):
    from absl import flags

    from handjax import predict

    flags.FLAGS.unparse_flags()
    return predict.predict_main(predict.parse_flags(["predict", *argv, "--progress=false"]))


# ----------------------------------------------------------------------------- DIGIT part maps
def test_labels_to_original_hand_computed():
    from handjax.train.digit import labels_to_original

    labels = np.arange(1, 5, dtype=np.uint8).reshape(2, 2)
    # a 4x4 image in a 2-pixel crop: x -> (x - 1.5) / 2 + 0.5, i.e. pixels 0, 1 -> crop 0 and 2, 3 -> crop 1
    a = inference.crop_affine(*inference.crop_window(None, (4, 4), 1.5), 2, False)
    np.testing.assert_array_equal(labels_to_original(labels, a, (4, 4)), labels.repeat(2, 0).repeat(2, 1))
    mirrored = inference.crop_affine(*inference.crop_window(None, (4, 4), 1.5), 2, True)
    np.testing.assert_array_equal(labels_to_original(labels, mirrored, (4, 4)),
                                  labels[:, ::-1].repeat(2, 0).repeat(2, 1))
    # a crop that covers only part of the image: u = x - 2, v = y; outside the crop is background
    shift = np.array([[1.0, 0, -2], [0, 1, 0], [0, 0, 1]])
    lab = np.arange(1, 17, dtype=np.uint8).reshape(4, 4)
    expected = np.zeros((4, 6), np.uint8)
    expected[:, 2:] = lab
    np.testing.assert_array_equal(labels_to_original(lab, shift, (4, 6)), expected)


def test_blend_parts_keeps_background_and_colours_parts():
    from handjax.train.digit import PALETTE, blend_parts

    img = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [17, 32]], np.uint8)
    out = blend_parts(img, labels, alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    for y, x in ((0, 1), (1, 0), (1, 1)):
        np.testing.assert_allclose(out[y, x], 50 + 0.5 * PALETTE[labels[y, x]].astype(float), atol=1)


@pytest.fixture(scope="module")
def digit_run(tmp_path_factory):
    from handjax.configs.digit import get_config
    from handjax.models.checkpoint import save_model
    from handjax.train.digit import build_model

    d = tmp_path_factory.mktemp("digit_extras")
    save_model(build_model(get_config("size=tiny"), seed=1), str(d / "ckpt"), {"system": "digit"})
    (d / "images").mkdir()
    img = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(img).save(d / "images" / "pair.png")
    code = _predict_cli(["--config", os.path.join(ROOT, "configs/digit.py") + ":size=tiny", "--checkpoint",
                         str(d / "ckpt"), "--images", str(d / "images"), "--out", str(d / "out"),
                         "--overlay_zoom", "2"])
    return dict(code=code, out=d / "out", image=img, ckpt=str(d / "ckpt"))


def test_digit_predict_writes_the_part_map_on_the_original_grid(digit_run):
    from handjax.train.digit import blend_parts

    out = digit_run["out"]
    assert digit_run["code"] == 0
    record = json.loads((out / "pair.json").read_text())
    assert [h["side"] for h in record["hands"]] == ["right", "left"]
    files = record["files"]
    assert files["parts"] == "pair_parts.png" and files["parts_overlay"] == "pair_parts_overlay.png"
    assert files["overlay"] == "pair_overlay.png" and files["json"] == "pair.json"
    assert len(record["part_classes"]) == 33 and record["part_classes"][0] == "background"
    assert record["part_classes"][1].startswith("right") and record["part_classes"][17].startswith("left")
    with Image.open(out / "pair_parts.png") as im:
        assert im.mode == "L"  # 8-bit class ids, lossless
        labels = np.asarray(im)
    assert labels.shape == (40, 56) and labels.max() < 33 and len(np.unique(labels)) > 1
    # the model's own part map of the whole-image crop, mapped by the window's similarity written out here:
    # the 56 px square centred at ((56-1)/2, (40-1)/2) onto S px, crop u = S/56 (x - 27.5) + (S-1)/2, nearest
    from handjax.configs.digit import get_config
    from handjax.predict import load_predictor

    predictor, _ = load_predictor(get_config("size=tiny"), digit_run["ckpt"])
    S = predictor.image_size
    crop = inference.make_crop(digit_run["image"], inference.crop_affine(np.array([27.5, 19.5]), 56.0, S, False), S)
    part_map = inference.BatchedForward(predictor, 1)(crop[None])[0]["extras"]["part_map"]  # eval-mode BatchNorm
    expected = np.zeros((40, 56), np.uint8)
    for y in range(40):
        for x in range(56):
            u, v = S / 56 * (x - 27.5) + (S - 1) / 2, S / 56 * (y - 19.5) + (S - 1) / 2
            expected[y, x] = part_map[int(np.floor(v + 0.5)), int(np.floor(u + 0.5))]
    np.testing.assert_array_equal(labels, expected)
    vis = np.asarray(Image.open(out / "pair_parts_overlay.png"))
    base = digit_run["image"].repeat(2, 0).repeat(2, 1)  # --overlay_zoom 2
    np.testing.assert_array_equal(vis, blend_parts(base, labels.repeat(2, 0).repeat(2, 1)))
    index = (out / "index.html").read_text()
    assert 'src="pair_parts.png"' in index and 'src="pair_parts_overlay.png"' in index


# ----------------------------------------------------------------------------- InterWild
def _interwild_checkpoint(path):
    """The tiny InterWild with BoxNet set so that its box confidences follow the image's amplitude.

    With BatchNorm at its initial statistics (mean 0, var 1, no bias) and bias-free convolutions, the body
    branch and BoxNet's deconvolutions are positively homogeneous: image a*u gives features a*f(u) >= 0 (after
    ReLU), and a black image gives exactly zero. The centre heatmaps are c * sum of the features (1x1
    convolution with every weight c; right c = 100, left c = 1), so a bright image gives both hands a peaked
    heatmap (high confidence), a dim one (a = 0.04) only the right hand, and a black one a flat heatmap whose
    confidence is exactly 1 / (h w) for both.
    """
    import jax.numpy as jnp

    from handjax.configs.interwild import get_config
    from handjax.models.checkpoint import save_model
    from handjax.train.interwild import build_model

    model = build_model(get_config("size=tiny"), seed=0)
    box = model.body_box_net
    rng = np.random.default_rng(1)
    for kernel in box.deconv:
        kernel[...] = jnp.asarray(rng.normal(0.0, 1.0, kernel[...].shape), jnp.float32)
    k = np.zeros(box.bbox_center.kernel[...].shape, np.float32)
    k[..., 0], k[..., 1] = 100.0, 1.0
    box.bbox_center.kernel[...] = jnp.asarray(k)
    box.bbox_center.bias[...] = jnp.zeros(2, jnp.float32)
    save_model(model, str(path), {"system": "interwild"})


@pytest.fixture(scope="module")
def interwild_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("interwild_extras")
    _interwild_checkpoint(d / "ckpt")
    (d / "images").mkdir()
    pattern = np.random.default_rng(2).integers(0, 256, (40, 30, 3)).astype(np.float64)
    for name, scale in (("two", 1.0), ("one", 0.04), ("none", 0.0)):
        Image.fromarray((pattern * scale).astype(np.uint8)).save(d / "images" / f"{name}.png")
    # a subprocess: config overrides (--config.<key>) are registered by absl's app.run only
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "handjax.predict", "--config", "configs/interwild.py:size=tiny",
                        "--checkpoint", str(d / "ckpt"), "--images", str(d / "images"), "--out", str(d / "out"),
                        "--config.predict.box_conf_threshold=0.5", "--overlay_zoom", "4", "--progress=false"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return dict(code=r.returncode, out=d / "out", log=r.stdout[-3000:] + r.stderr[-3000:])


@pytest.mark.parametrize("name,expected", [("two", ["right", "left"]), ("one", ["right"]), ("none", [])])
def test_interwild_exports_only_the_confident_hands(interwild_run, name, expected):
    out = interwild_run["out"]
    assert interwild_run["code"] == 0, interwild_run["log"]  # no image crashed
    assert "3 images, 3 hands, 0 failed" in interwild_run["log"]
    record = json.loads((out / f"{name}.json").read_text())
    info = record["interwild"]
    conf = {s: info["hands"][s]["box_conf"] for s in ("right", "left")}
    # the constructed confidences (see _interwild_checkpoint): the case is decided by them, not by the image
    if name == "none":
        assert conf == {"right": 1 / 64, "left": 1 / 64}  # a flat 8x8 centre heatmap
    else:
        assert conf["right"] > 0.9 and (conf["left"] > 0.9 if name == "two" else conf["left"] < 0.3)
    assert [h["side"] for h in record["hands"]] == expected
    assert info["missing"] == [s for s in ("right", "left") if s not in expected]
    assert {s for s in ("right", "left") if info["hands"][s]["found"]} == set(expected)
    meshes = sorted(f.name for f in out.glob(f"{name}_*.obj"))
    assert meshes == sorted(f"{name}_{s}.obj" for s in expected)  # a missing hand writes no mesh
    if len(expected) == 2:
        assert info["placement"] == ("relative" if info["box_iou"] > 0 else "separate")
    else:
        assert info["placement"] == "single" and "no relative placement" in info["two_hand_decision"]
    files = record["files"]
    assert files["meshes"] == [f"{name}_{s}.obj" for s in expected]
    for label in ("boxes", "skeleton", "mesh"):
        assert files[label] == f"{name}_{label}.png"
        with Image.open(out / files[label]) as im:
            assert im.size == (30 * 4, 40 * 4) and im.mode == "RGB"
    image = np.asarray(Image.open(out.parent / "images" / f"{name}.png")).repeat(4, 0).repeat(4, 1)
    rendered = {label: np.asarray(Image.open(out / files[label])) for label in ("boxes", "skeleton", "mesh")}
    assert np.any(rendered["boxes"] != image)  # both boxes are drawn, a missing hand's in grey
    visible = False  # does any exported vertex project into the image? (untrained weights may place hands off it)
    for h in record["hands"]:
        v = np.array([[float(x) for x in line.split()[1:]] for line in open(out / h["mesh"]) if line.startswith("v ")])
        uv = v @ np.array(h["camera"]["K"]).T
        uv = uv[:, :2] / uv[:, 2:]
        visible |= bool(np.any((uv[:, 0] > 0) & (uv[:, 0] < 29) & (uv[:, 1] > 0) & (uv[:, 1] < 39)))
    assert np.any(rendered["mesh"] != image) == visible
    if not expected:  # nothing exported: the skeleton render is the image itself
        np.testing.assert_array_equal(rendered["skeleton"], image)
    assert f'src="{name}_boxes.png"' in (out / "index.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hands"] == 3 and summary["failed"] == {}


# ----------------------------------------------------------------------------- the shared layer
def _hand(side, z, K, shift_x):
    model = mano.load_model(None, "right")
    rest = mano.mano_forward(model, np.tile(np.eye(3), (16, 1, 1)), None, convention="tempclr")
    v = np.asarray(rest.vertices, np.float64)
    offset = np.array([shift_x, 0.0, z]) - v.mean(0)
    joints = np.asarray(rest.joints, np.float64) + offset
    return inference.HandResult(
        side=side, box=None, crop_centre=np.zeros(2), crop_side=1.0, crop_affine=np.eye(3), mirrored=False,
        model_camera=np.zeros((3, 4)), image_camera=np.zeros((3, 4)), K=K, transl=offset, vertices=v + offset,
        faces=np.asarray(model.faces), joints3d=joints, joints2d=inference.project(joints, K), pose=np.zeros(48),
        betas=np.zeros(10), convention="tempclr")


def test_meshes_are_composited_per_pixel_by_depth():
    """Two overlapping hands: where both cover a pixel the nearer one's colour shows; a depth offset that puts
    the other hand in front swaps them there, and pixels covered by one hand only keep its colour."""
    K = np.array([[300.0, 0, 47.5], [0, 300.0, 47.5], [0, 0, 1]])
    right, left = _hand("right", 0.50, K, 0.0), _hand("left", 0.60, K, 0.015)  # 10 cm apart: no depth overlap
    black = np.zeros((96, 96, 3), np.uint8)
    canvas = inference.Canvas(black)
    near_right = canvas.meshes([right, left]).astype(float)
    near_left = canvas.meshes([right, left], depth_offsets=[0.0, -0.2]).astype(float)
    alone_r = canvas.meshes([right]).astype(float)
    alone_l = canvas.meshes([left]).astype(float)
    both = (alone_r.sum(-1) > 0) & (alone_l.sum(-1) > 0)
    assert both.sum() > 200  # a large overlap

    def hue(img):  # right hands are blue-ish (b > g), left hands green-ish (g > b)
        return np.sign(img[..., 2] - img[..., 1])

    assert np.mean(hue(near_right)[both] > 0) > 0.95 and np.mean(hue(near_left)[both] < 0) > 0.95
    only_l = (alone_l.sum(-1) > 0) & ~both
    np.testing.assert_array_equal(near_right[only_l], alone_l[only_l])
    with pytest.raises(ValueError, match="depth_offsets"):
        canvas.meshes([right, left], depth_offsets=[0.0])


def test_extra_images_are_checked_and_listed(tmp_path):
    """A predictor's extra images: written as PNGs, listed in the JSON and index.html; a bad label or image is
    an error naming the system and the label."""
    import dataclasses

    import jax.numpy as jnp
    from flax import nnx

    from handjax.models.hand_output import make_hand_output
    from handjax.train.system import Predictor

    class Fake(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(()))

    def predict(model, images):
        b = images.shape[0]
        cam = jnp.tile(jnp.array([[[4.0, 0, 0, 16.0], [0, 4.0, 0, 16.0], [0, 0, 0, 1.0]]]), (b, 1, 1))
        hand = make_hand_output(jnp.zeros((b, 21, 3)), cam, jnp.tile(jnp.eye(3), (b, 16, 1, 1)), jnp.zeros((b, 10)),
                                None, jnp.ones((b,), bool), convention="tempclr")
        return {"right": hand, "extras": {"brightness": images.mean(axis=(1, 2, 3)) * model.w[...]}}

    seen = []

    def extra_images(view):
        seen.append(view)
        h, w = view.image.shape[:2]
        return {"grey": np.full((h, w), 7, np.uint8), "colour": view.canvas.base()}

    p = Predictor(model=Fake(), image_size=32, predict=predict, faces={}, finds_boxes=True,
                  meta={"system": "fake"}, extra_images=extra_images)
    img = np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    inference.run(p, [str(tmp_path / "x.png")], str(tmp_path / "out"), batch_size=2, overlay_zoom=3,
                  progress=False)
    record = json.loads((tmp_path / "out" / "x.json").read_text())
    assert record["files"]["grey"] == "x_grey.png" and record["files"]["colour"] == "x_colour.png"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x_grey.png")), np.full((20, 24), 7))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x_colour.png")),
                                  img.repeat(3, 0).repeat(3, 1))
    view = seen[0]
    assert [h.side for h in view.hands] == ["right"] and view.record == {} and view.canvas.zoom == 3
    assert view.extras["brightness"].shape == () and view.affine.shape == (3, 3)
    html = (tmp_path / "out" / "index.html").read_text()
    assert 'src="x_grey.png"' in html and 'src="x_colour.png"' in html

    for bad, needle in (({"Bad label": np.zeros((2, 2), np.uint8)}, "fake extra_images: label 'Bad label'"),
                        ({"overlay": np.zeros((2, 2), np.uint8)}, "fake extra_images: label 'overlay'"),
                        ({"f": np.zeros((2, 2), np.float32)}, r"fake extra_images\['f'\]: expected a uint8")):
        q = dataclasses.replace(p, extra_images=lambda view, bad=bad: bad)
        with pytest.raises(ValueError, match=needle):
            inference.run(q, [str(tmp_path / "x.png")], str(tmp_path / "bad"), progress=False)


def _record(placement, right_z=5.0, left_z=6.0, right_found=True, left_found=True):
    hands = {"right": {"found": right_found, "box": [10, 20, 60, 70], "box_conf": 0.5, "root_cam": [0.0, 0.0, right_z]},
             "left": {"found": left_found, "box": [70, 20, 90, 40], "box_conf": 0.1, "root_cam": [0.1, 0.0, left_z]}}
    return {"interwild": {"hands": hands, "placement": placement}}


def test_interwild_depth_offsets_follow_the_two_hand_decision():
    from types import SimpleNamespace

    from handjax.train.interwild import depth_offsets

    hands = [SimpleNamespace(side="right"), SimpleNamespace(side="left")]
    extras = {"rel_trans": np.array([0.05, 0.0, -0.2])}
    # relative: the left wrist goes to 5.0 - 0.2 = 4.8 from its own 6.0 -> -1.2; the right one stays
    np.testing.assert_allclose(depth_offsets(hands, _record("relative"), extras), [0.0, -1.2])
    assert depth_offsets(hands, _record("separate"), extras) == [0.0, 0.0]
    assert depth_offsets(hands[:1], _record("single"), extras) == [0.0]


def test_interwild_box_render_colours_confidence_bar_and_missing_hand():
    from handjax.train.interwild import BOX_COLORS, MISSING_COLOR, draw_boxes

    img = draw_boxes(np.zeros((100, 100, 3), np.uint8), _record("single", left_found=False), lambda uv: np.asarray(uv))
    assert tuple(img[45, 60]) == BOX_COLORS["right"]  # the right box's right edge (x = 60), below its text
    assert tuple(img[25, 90]) == MISSING_COLOR  # the missing left hand's box is grey
    # the confidence bar: 3 px above the top edge, 0.5 x the 50 px width
    assert tuple(img[18, 20]) == BOX_COLORS["right"] and tuple(img[18, 33]) == BOX_COLORS["right"]
    assert not img[18, 40].any() and not img[18, 55].any()
