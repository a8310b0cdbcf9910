"""TempCLR on real data (issue 18): the MANO guard, FreiHAND betas without the hand mean, the
latest_checkpoint fallback, video-only pretraining, ImageNet init, ExPose's loss definitions,
the temporal term and the 80/20 train / val holdout. Every number is hand-computed or comes from
an independent numpy implementation."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines.factory import DATASETS, DatasetSource, holdout_records, make_data_factory
from data_pipelines.freihand import ensure_built as build_freihand
from data_pipelines.samplers import SequenceIndex
from hand_dataset_fixtures import write_freihand
from handjax.configs import tempclr as tempclr_config
from handjax.convert.tempclr import locate_checkpoint
from handjax.losses.terms import TERMS
from handjax.models.checkpoint import MODEL_META, save_model
from handjax.models.hand_output import HandOutput
from handjax.sharding import make_mesh
from handjax.train import runner
from handjax.train import tempclr as T
from handjax.train.system import StageContext

N_TRAIN, SIZE = 5, 16


# ----------------------------------------------------------------------------- helpers
def rot(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def aa(r: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis-angle (angle in (0, pi)), numpy."""
    theta = np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))
    if theta < 1e-12:
        return np.zeros(3)
    return np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * np.sin(theta)) * theta


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """src after its least-squares similarity onto dst (numpy; Umeyama 1991, proper rotation)."""
    ms, md = src.mean(0), dst.mean(0)
    xs, xd = src - ms, dst - md
    u, sv, vt = np.linalg.svd(xd.T @ xs)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    s = np.trace(np.diag(sv) @ d) / np.sum(xs ** 2)
    return s * xs @ r.T + md


def hand(joints, rotmats, betas, vertices=None, joints2d=None):
    b = joints.shape[0]
    return HandOutput(joints=jnp.asarray(joints, jnp.float32),
                      joints2d=jnp.asarray(joints2d if joints2d is not None else np.zeros((b, 21, 2)), jnp.float32),
                      camera=jnp.zeros((b, 3, 4)), rotmats=jnp.asarray(rotmats, jnp.float32),
                      betas=jnp.asarray(betas, jnp.float32),
                      vertices=None if vertices is None else jnp.asarray(vertices, jnp.float32),
                      is_right=jnp.ones(b, bool), convention="freihand")


# ----------------------------------------------------------------------------- ExPose's loss definitions
def test_geodesic_angle_of_known_rotations():
    from handjax.losses.terms import geodesic_angle

    for axis, theta in (("z", 0.3), ("x", 1.2), ("y", 2.5)):
        assert float(geodesic_angle(jnp.asarray(rot(axis, theta)), jnp.eye(3))) == pytest.approx(theta, abs=2e-6)
        # relative rotation of two rotations about one axis: the difference of the angles
        assert float(geodesic_angle(jnp.asarray(rot(axis, theta)), jnp.asarray(rot(axis, 0.1)))) == pytest.approx(
            theta - 0.1, abs=2e-6)


def test_expose_rotation_terms_sum_over_joints_and_average_over_labelled_samples():
    b = 3
    pred = np.tile(np.eye(3), (b, 16, 1, 1))
    pred[:, 0] = rot("x", 0.5)
    for j in range(1, 16):
        pred[:, j] = rot("y", 0.05 * j)
    pred[1, 0] = rot("x", 1.0)  # differs on sample 1, which carries no MANO label
    gt_pose = np.zeros((b, 48), np.float32)  # identity: every angle is the prediction's
    batch = {"mano_pose": jnp.asarray(gt_pose), "has_mano": jnp.array([True, False, True])}
    out = hand(np.zeros((b, 21, 3)), pred, np.zeros((b, 10)))
    assert float(TERMS["expose_wrist_pose"].fn(out, batch, 16)) == pytest.approx(0.5, abs=1e-5)
    assert float(TERMS["expose_hand_pose"].fn(out, batch, 16)) == pytest.approx(
        sum(0.05 * j for j in range(1, 16)), abs=1e-4)
    # the GT axis-angle is decoded: a GT equal to the prediction gives zero
    gt_pose[:, :3] = aa(rot("x", 0.5))
    batch["mano_pose"] = jnp.asarray(gt_pose)
    assert float(TERMS["expose_wrist_pose"].fn(out, batch, 16)) == pytest.approx(0.0, abs=2e-3)


def test_expose_keypoint_and_betas_terms():
    rng = np.random.default_rng(0)
    b, size = 4, 32
    gt3 = rng.normal(0, 0.05, (b, 21, 3))
    pred3 = gt3 + rng.normal(0, 0.01, (1, 1, 3))  # a translation: wrist-centred it is no error
    pred3[2, 5] += [0.01, -0.02, 0.0]
    valid = np.array([True, True, True, False])
    batch = {"joints3d": jnp.asarray(gt3), "has_joints3d": jnp.asarray(valid)}
    # sample 2: joint 5 off by |0.01| + |-0.02| (the wrist is unchanged); sample 3 has no label
    assert float(TERMS["expose_joints3d"].fn(hand(pred3, np.zeros((b, 16, 3, 3)), np.zeros((b, 10))), batch,
                                             size)) == pytest.approx(0.03 / 3, abs=1e-6)
    gt2 = rng.uniform(0, size, (b, 21, 2))
    pred2 = gt2.copy()
    pred2[0, 3] += [size / 2, 0]  # +1 in normalised coordinates (2 u / S - 1)
    pred2[3, 0] += [size, size]   # unlabelled: does not count
    batch = {"joints2d": jnp.asarray(gt2), "has_joints2d": jnp.asarray(valid)}
    out = hand(np.zeros((b, 21, 3)), np.zeros((b, 16, 3, 3)), np.zeros((b, 10)), joints2d=pred2)
    assert float(TERMS["expose_joints2d"].fn(out, batch, size)) == pytest.approx(1.0 / b, abs=1e-5)  # / batch
    betas, gt_b = rng.normal(size=(b, 10)), rng.normal(size=(b, 10))
    # FreiHAND without the hand mean: pose masked (has_mano False), betas supervised (has_betas)
    batch = {"betas": jnp.asarray(gt_b), "has_mano": jnp.zeros(b, bool), "has_betas": jnp.asarray(valid)}
    out = hand(np.zeros((b, 21, 3)), np.zeros((b, 16, 3, 3)), betas)
    expected = np.sum((betas - gt_b)[valid] ** 2) / 3
    assert float(TERMS["expose_betas"].fn(out, batch, size)) == pytest.approx(expected, rel=1e-5)
    assert float(TERMS["betas"].fn(out, batch, size)) == pytest.approx(np.mean((betas - gt_b)[valid] ** 2), rel=1e-5)
    del batch["has_betas"]  # without the flag: has_mano (all False) masks them
    assert float(TERMS["betas"].fn(out, batch, size)) == 0.0


def test_expose_vertices_after_similarity_alignment():
    rng = np.random.default_rng(1)
    b = 3
    gt = rng.normal(0, 0.04, (b, 778, 3))
    pred = np.stack([1.3 * gt[0] @ rot("z", 0.7).T + [0.1, -0.2, 0.3],  # a similarity of the GT: no error
                     gt[1] + rng.normal(0, 0.003, (778, 3)),
                     np.zeros((778, 3))])
    valid = np.array([True, True, False])
    gt[2] = 0.0  # unlabelled and zero-filled
    batch = {"vertices": jnp.asarray(gt), "has_vertices": jnp.asarray(valid)}
    out = hand(np.zeros((b, 21, 3)), np.zeros((b, 16, 3, 3)), np.zeros((b, 10)), vertices=pred)
    expected = (np.abs(umeyama(pred[0], gt[0]) - gt[0]).sum() + np.abs(umeyama(pred[1], gt[1]) - gt[1]).sum()) / 2
    assert float(TERMS["expose_vertices"].fn(out, batch, 16)) == pytest.approx(expected, rel=2e-3)
    assert np.abs(umeyama(pred[0], gt[0]) - gt[0]).sum() < 1e-8

    def loss(v):
        return TERMS["expose_vertices"].fn(out.replace(vertices=v), batch, 16)

    grad = jax.grad(loss)(jnp.asarray(pred + rng.normal(0, 0.01, pred.shape), jnp.float32))
    assert np.all(np.isfinite(np.asarray(grad))) and not np.any(np.asarray(grad)[2])


def test_temporal_consistency_hand_computed():
    b, f = 2, 3
    rotmats = np.tile(np.eye(3), (b, f, 16, 1, 1))
    rotmats[0, 1, 4] = rot("z", np.pi / 2)  # ||R - I||_F^2 = 4 (1 - cos) = 4
    rotmats[0, 2, 0] = rot("x", np.pi)      # frame 2 of sample 0 is a negative: ignored
    betas = np.zeros((b, f, 10))
    betas[0, 1, :2] = [1.0, 2.0]
    betas[1, 1, 0] = 3.0  # sample 1: frame 1 is outside its window
    in_window = np.array([[True, True, False], [True, False, False]])
    pose, shape = T.temporal_consistency(jnp.asarray(rotmats), jnp.asarray(betas), jnp.asarray(in_window))
    assert float(pose) == pytest.approx(4.0, abs=1e-5) and float(shape) == pytest.approx(5.0, abs=1e-5)


# ----------------------------------------------------------------------------- guard and checks
def released(tmp_path):
    """A converted release's model-only checkpoint folder (meta as convert_tempclr writes it)."""
    folder = tmp_path / "ckpt_tempclr_freihand"
    folder.mkdir()
    (folder / MODEL_META).write_text(json.dumps(
        {"system": "tempclr", "depth": 50, "source": "/rel/checkpoints/tempclr_freihand", "pointer": None,
         "hidden": [1024, 1024], "num_stages": 3, "projection": None, "iteration": 5,
         "converter": "handjax.convert.tempclr.convert_tempclr"}))
    return str(folder)


def check(cfg, tmp_path):
    runner.check_job(T.SYSTEM, cfg, runner.parse_stages(T.SYSTEM, cfg.stages), str(tmp_path / "work"), make_mesh())


def test_guard_converted_checkpoint_and_real_data(tmp_path):
    cfg = tempclr_config.get_config("size=tiny,pretrain=false")
    cfg.stages, cfg.eval.checkpoint = "eval", released(tmp_path)
    with pytest.raises(ValueError, match=r"eval.checkpoint=.*converted TempCLR release.*mano.model_path.*"
                                         r"mano.is.tue.mpg.de.*mano.allow_builtin=True"):
        check(cfg, tmp_path)
    cfg.mano.allow_builtin = True  # the explicit opt-in
    check(cfg, tmp_path)
    cfg.mano.allow_builtin, cfg.mano.model_path = False, "/models/MANO_RIGHT.pkl"
    check(cfg, tmp_path)
    assert cfg.data.mano_model == "/models/MANO_RIGHT.pkl"  # data.mano_model follows mano.model_path
    # real datasets (alone or in a mixture) with the built-in hand
    for data in (dict(name="freihand"), dict(name="synthetic_hands", mixture=[("synthetic_hands", 1.0), ("ho3d", 1.0)])):
        cfg = tempclr_config.get_config("size=tiny,pretrain=false")
        cfg.data.update(data)
        with pytest.raises(ValueError, match=r"real dataset '(freihand|ho3d)'.*mano.model_path.*allow_builtin"):
            check(cfg, tmp_path)
        cfg.mano.allow_builtin = True
        check(cfg, tmp_path)
    # the built-in data and a checkpoint trained here: no error
    check(tempclr_config.get_config("size=tiny"), tmp_path)


def test_single_frame_pretraining_is_refused(tmp_path):
    cfg = tempclr_config.get_config("recipe=freihand")
    cfg.mano.model_path = "/models/MANO_RIGHT.pkl"
    cfg.pretrain.batch_size = cfg.finetune.batch_size = cfg.eval.batch_size = 8
    check(cfg, tmp_path)  # pretrains on HanCo
    cfg.pretrain.data.name = ""  # inherit data.name: FreiHAND, single frames
    with pytest.raises(ValueError, match=r"data.name='freihand': a single-frame dataset.*contrastive.*hanco"):
        check(cfg, tmp_path)
    cfg.stages = "finetune,eval"
    check(cfg, tmp_path)
    cfg.finetune.loss_weights.temporal_pose = 1.0  # the temporal terms need video too
    with pytest.raises(ValueError, match="temporal terms"):
        check(cfg, tmp_path)


def test_recipes_match_upstream_and_default_is_unchanged():
    default = tempclr_config.get_config()
    assert dict(default.finetune.loss_weights) == dict(joints2d=1.0, joints3d=10.0, vertices=10.0, wrist_pose=1.0,
                                                       hand_pose=1.0, betas=0.1)
    assert default.data.train_fraction == 1.0 and "crop_from" not in default.data.augment
    for recipe, crop in (("freihand", dict(crop_from="image", bbox_pad=1.0)),
                         ("ho3d", dict(crop_from="bbox", bbox_pad=2.0))):
        c = tempclr_config.get_config(f"recipe={recipe}")
        assert {k: c.data.augment[k] for k in crop} == crop == dict(c.data.eval_crop)  # train crop = eval crop
        assert set(DATASETS[recipe].eval_crop.items()) == set(crop.items())
        assert c.data.train_fraction == 0.8 and c.finetune.eval_every > 0 and c.finetune.eval_split == "val"
        assert all(k.startswith(("expose_", "temporal_")) for k in c.finetune.loss_weights)
    assert tempclr_config.get_config("recipe=freihand").pretrain.data.name == "hanco"


# ----------------------------------------------------------------------------- latest_checkpoint fallback
def test_pointer_falls_back_beside_the_pointer_for_both_layouts(tmp_path, monkeypatch):
    release = tmp_path / "TempCLR_release"
    layouts = {"FreiHAND_model": ("tempclr_freihand", "/home/author/exp/FreiHAND_model/checkpoints/tempclr_freihand"),
               "HO3D_model": ("tempclr_ho3d", "TempCLR_release/HO3D_model/checkpoints/tempclr_ho3d")}
    for model, (name, pointer) in layouts.items():
        folder = release / model / "checkpoints"
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"weights")
        (folder / "latest_checkpoint").write_text(pointer + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (elsewhere, tmp_path, release):
        monkeypatch.chdir(cwd)
        for model, (name, pointer) in layouts.items():
            folder = release / model / "checkpoints"
            for given in (folder, folder / "latest_checkpoint", os.path.relpath(folder, cwd)):
                path, ptr, note = locate_checkpoint(given)
                assert (path, ptr) == (str(folder / name), str(folder / "latest_checkpoint"))
                # the written path never exists relative to the pointer: the same file, with a note, from any cwd
                assert f"points to {pointer!r}" in note and f"beside the pointer, {folder / name}" in note
    (release / "HO3D_model" / "checkpoints" / "tempclr_ho3d").unlink()
    with pytest.raises(FileNotFoundError, match=r"tempclr_ho3d.*which is not a file \(tried"):
        locate_checkpoint(release / "HO3D_model" / "checkpoints")


# ----------------------------------------------------------------------------- ImageNet init of pretraining
def test_pretrain_init_from_converted_torchvision_resnet(tmp_path):
    from handjax.models.resnet import ResNet

    cfg = tempclr_config.get_config("size=tiny")
    resnet = ResNet(18, rngs=nnx.Rngs(7))
    save_model(resnet, str(tmp_path / "resnet18"), {"system": "torchvision-resnet", "depth": 18,
                                                    "converter": "handjax.convert.tempclr.convert_torchvision_resnet"})
    model = T.build_model(cfg, with_projection=True, seed=0)
    head = np.asarray(model.projection_head.layers[0].kernel[...]) if hasattr(model.projection_head, "layers") else None
    ctx = StageContext(cfg=cfg, name="pretrain", stage_cfg=cfg.pretrain, seed=0, mesh=None, workdir=str(tmp_path),
                       stage_dir=str(tmp_path / "pretrain"), data=None)
    message = T.init_pretrain(ctx, model, str(tmp_path / "resnet18"))
    assert "ImageNet resnet18" in message
    np.testing.assert_array_equal(np.asarray(model.backbone.conv1.kernel[...]), np.asarray(resnet.conv1.kernel[...]))
    np.testing.assert_array_equal(np.asarray(model.backbone.layer4[1].bn2.mean[...]),
                                  np.asarray(resnet.layer4[1].bn2.mean[...]))
    if head is not None:  # the projection head keeps its fresh initialisation
        np.testing.assert_array_equal(np.asarray(model.projection_head.layers[0].kernel[...]), head)
    cfg.model.backbone = "resnet50"
    with pytest.raises(ValueError, match=r"pretrain.init_from=.*ResNet-18, but model.backbone='resnet50'"):
        T.init_pretrain(ctx, model, str(tmp_path / "resnet18"))


# ----------------------------------------------------------------------------- holdout splits and data guards
@pytest.fixture(scope="module")
def freihand_dir(tmp_path_factory):
    raw = tmp_path_factory.mktemp("fh_raw")
    write_freihand(raw, n_train=N_TRAIN, n_eval=2, size=SIZE)
    return build_freihand("default", str(tmp_path_factory.mktemp("fh_tfds")), str(raw))


def test_freihand_holdout_first_80_percent_of_samples(freihand_dir):
    src = DatasetSource(freihand_dir, "train")
    train, val = holdout_records(DATASETS["freihand"], src, 0.8, 0, "freihand")
    # image id = sample + N * version: samples 0..3 train in all 4 versions, sample 4 validates
    assert list(train) == [i + N_TRAIN * v for v in range(4) for i in range(4)]
    assert list(val) == [4 + N_TRAIN * v for v in range(4)]
    data = make_data_factory(dict(name="freihand", data_dir=os.path.dirname(os.path.dirname(os.path.dirname(
        freihand_dir))), image_size=SIZE, num_workers=0, train_fraction=0.8), seed=0)
    frames = next(data(split="val", mode="frame", batch_size=8, train=False))
    assert frames["valid"].sum() == 4 and set(frames["record"][frames["valid"]]) == {4, 9, 14, 19}
    # no data.mano_model: FreiHAND's relative finger poses are masked, its betas are not
    assert not frames["has_mano"].any() and frames["has_betas"].all()
    with pytest.raises(ValueError, match="window mode .* needs video; dataset 'freihand' has single frames"):
        next(data(split="train", mode="window", batch_size=8, train=True))


def test_ho3d_holdout_seeded_random_80_percent_of_frames():
    lengths = {0: 10, 1: 7, 2: 1}
    seq = np.concatenate([[s] * n for s, n in lengths.items()])
    frame = np.concatenate([np.arange(n)[::-1] for n in lengths.values()])  # stored out of time order

    class Source:
        index = SequenceIndex.from_arrays(seq, frame)

        def __len__(self):
            return len(seq)

    train, val = holdout_records(DATASETS["ho3d"], Source(), 0.8, 3, "ho3d")
    assert not set(train) & set(val) and sorted(np.concatenate([train, val])) == list(range(len(seq)))
    assert [int(np.sum(seq[train] == s)) for s in lengths] == [int(0.8 * n) for n in lengths.values()]  # 8, 5, 0
    again, _ = holdout_records(DATASETS["ho3d"], Source(), 0.8, 3, "ho3d")
    other, _ = holdout_records(DATASETS["ho3d"], Source(), 0.8, 4, "ho3d")
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(ValueError, match="dataset 'hanco' has no train / val holdout rule"):
        holdout_records(DATASETS["hanco"], Source(), 0.8, 0, "hanco")


def test_finetune_on_video_windows_adds_the_temporal_terms():
    from handjax import mano
    from handjax.models.tempclr import default_mean_param

    b, f, s = 2, 2, 8
    params = np.tile(np.asarray(default_mean_param(8.0)), (b * f, 1))
    params[:, 96:106] = np.arange(b * f)[:, None] * 0.1  # betas of frame (i, j): 0.1 * (i * f + j) everywhere

    class Fixed(nnx.Module):
        def __call__(self, images):
            assert images.shape == (b * f, s, s, 3)  # the window's frames, flattened
            return [jnp.asarray(params, jnp.float32)]

    batch = {"image": jnp.zeros((b, f, s, s, 3)), "betas": jnp.zeros((b, f, 10)), "mano_pose": jnp.zeros((b, f, 48)),
             "in_window": jnp.ones((b, f), bool)}
    weights = {"expose_betas": 1.0, "temporal_shape": 2.0, "temporal_pose": 0.0}
    total, used = T.finetune_loss(Fixed(), batch, None, mano_model=mano.load_model(None, "right"),
                                  remap=tuple(range(21)), weights=weights, image_size=s)
    betas = np.arange(b * f) * 0.1
    assert float(used["expose_betas"]) == pytest.approx(np.mean(10 * betas ** 2), rel=1e-5)
    assert float(used["temporal_shape"]) == pytest.approx(10 * 0.1 ** 2, rel=1e-5)  # consecutive frames: 0.1 apart
    assert "temporal_pose" not in used and float(total) == pytest.approx(
        float(used["expose_betas"]) + 2.0 * float(used["temporal_shape"]), rel=1e-6)
    cfg = tempclr_config.get_config("recipe=ho3d")
    ctx = StageContext(cfg=cfg, name="finetune", stage_cfg=cfg.finetune, seed=0, mesh=None, workdir="", stage_dir="",
                       data=None)
    assert T._finetune_data(ctx) == {"mode": "frame"}
    cfg.finetune.loss_weights.temporal_pose = 0.5
    assert T._finetune_data(ctx) == {"mode": "window", "k": 2, "window": 1}


def test_main_stops_before_building_data_when_the_guard_fires(tmp_path):
    """The README's convert -> evaluate command without mano.model_path: one line naming the key, no data built."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "handjax.main", "--config", "configs/eval_freihand.py:size=tiny",
                        "--workdir", str(tmp_path / "work"), f"--config.eval.checkpoint={released(tmp_path)}",
                        f"--config.data.data_dir={tmp_path / 'data'}", f"--config.data.manual_dir={tmp_path / 'raw'}"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "converted TempCLR release" in r.stderr and "mano.model_path" in r.stderr, r.stderr
    assert not (tmp_path / "data").exists()  # stopped before the dataset build
