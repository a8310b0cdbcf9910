"""TempCLR model, losses and the generic training loop on tiny hand-made batches."""
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from handjax import mano
from handjax.geometry import matrix_to_rot6d
from handjax.losses import nt_xent, window_pairs
from handjax.models.tempclr import TempCLRModel, decode, default_mean_param, weak_perspective
from handjax.train import Task, make_mesh, train
from handjax.train import runner
from handjax.train import tempclr as recipe

S = 32  # image size
B = 8


def _np_nt_xent(z, pos, tau, anchor):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T / tau
    np.fill_diagonal(sim, -np.inf)
    losses = []
    for i in range(len(z)):
        if anchor[i]:
            losses.append(-(sim[i, pos[i]] - np.log(np.sum(np.exp(sim[i][np.isfinite(sim[i])])))))
    return np.mean(losses)


def test_nt_xent_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 16)).astype(np.float32)
    pos, anchor = window_pairs(4, 3)
    assert list(np.asarray(pos[:6])) == [1, 0, 2, 4, 3, 5] and list(np.asarray(anchor[:3])) == [True, True, False]
    for tau in (0.1, 0.5):
        ours = float(nt_xent(jnp.asarray(z), pos, tau, anchor))
        np.testing.assert_allclose(ours, _np_nt_xent(z, np.asarray(pos), tau, np.asarray(anchor)), rtol=1e-5)


def test_nt_xent_global_batch_on_mesh_equals_single_device():
    mesh = make_mesh()
    z = jnp.asarray(np.random.default_rng(1).normal(size=(16, 8)), jnp.float32)
    pos, anchor = window_pairs(8, 2)
    sharded = jax.device_put(z, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    f = jax.jit(lambda z: nt_xent(z, pos, 0.5, anchor))
    np.testing.assert_allclose(f(sharded), nt_xent(z, pos, 0.5, anchor), rtol=1e-6)


@pytest.fixture(scope="module")
def hand():
    return mano.load_model(None)


def test_decode_mean_param_is_rest_pose(hand):
    out = decode(default_mean_param()[None], hand, S)
    np.testing.assert_allclose(out.vertices[0], hand.v_template, atol=1e-6)
    np.testing.assert_allclose(weak_perspective(default_mean_param()[None])[0], 0.9, rtol=1e-6)
    np.testing.assert_allclose(out.camera[0, 0, 0], 0.9 * S / 2, rtol=1e-6)  # crop pixels per metre
    # the contract's joints2d are crop pixels: normalised coordinates x_n = s (X + t) -> (x_n + 1) S / 2
    np.testing.assert_allclose(out.normalized_joints2d(S)[0], 0.9 * out.joints[0, :, :2], atol=1e-6)
    np.testing.assert_allclose(out.joints2d[0], (0.9 * out.joints[0, :, :2] + 1) * S / 2, atol=1e-5)
    # interleaved 6D layout: a rotation's first two columns, row-major
    R = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0] * [1, 1, -1] if False else
                    jnp.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))
    x = default_mean_param().at[:6].set(matrix_to_rot6d(R, "interleaved"))
    np.testing.assert_allclose(decode(x[None], hand, S).rotmats[0, 0], R, atol=1e-6)


def _cfg(**kw):
    c = ml_collections.ConfigDict(dict(num_steps=6, log_every=2, checkpoint_every=3, keep_checkpoints=2,
                                       optim=dict(name="adam", lr=1e-3, schedule="constant", warmup_steps=0)))
    c.update(kw)
    return c


def _batch(hand, seed=0, n=B):
    """A labelled batch made directly with MANO (random pose/shape, noise images)."""
    rng = np.random.default_rng(seed)
    aa = rng.normal(0, 0.3, (n, 48)).astype(np.float32)
    betas = rng.normal(0, 1, (n, 10)).astype(np.float32)
    out = mano.mano_forward(hand, mano.from_axis_angle(hand, jnp.asarray(aa)), jnp.asarray(betas), convention="freihand")
    joints = np.asarray(out.joints)
    return {
        "image": rng.normal(size=(n, S, S, 3)).astype(np.float32),
        "joints2d": ((joints[:, :, :2] * 2 + 1) * S / 2).astype(np.float32),
        "joints3d": joints, "vertices": np.asarray(out.vertices), "mano_pose": aa, "betas": betas,
    }


class _ListIter:
    """A restorable iterator over fixed batches (state: bytes, as grain's DataLoader)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __iter__(self):
        return self

    def __next__(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def get_state(self):
        return json.dumps({"i": self.i}).encode()

    def set_state(self, s):
        self.i = json.loads(s)["i"]

    def start_prefetch(self):  # called by grain's checkpoint handler after a restore
        pass


def _model(seed=0):
    return TempCLRModel(backbone="resnet18", rngs=nnx.Rngs(seed), hidden=(64, 64))


def _loss(hand):
    return functools.partial(recipe.finetune_loss, mano_model=hand, remap=mano.joint_remap("tempclr", "freihand"),
                             weights={"joints2d": 1.0, "joints3d": 10.0, "vertices": 10.0, "wrist_pose": 1.0,
                                      "hand_pose": 1.0, "betas": 0.1},
                             image_size=S)


def test_overfitting_one_batch_reduces_loss(hand, tmp_path):
    model = _model()
    batch = _batch(hand)
    loss_fn = _loss(hand)
    cfg = _cfg(num_steps=30, log_every=1, checkpoint_every=100)
    losses = []
    orig = loss_fn

    def recording(m, b, r):
        return orig(m, b, r)

    first = float(orig(model, jax.tree.map(jnp.asarray, batch), None)[0])
    metrics = train(Task(model, recording), _ListIter([batch]), cfg, str(tmp_path), name="overfit")
    assert metrics["loss"] < 0.5 * first, (first, metrics)


def _final_params(model):
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


def test_eight_devices_equal_one_device(hand, tmp_path):
    batch = _batch(hand, seed=1)
    results = []
    for n_dev in (8, 1):
        model = _model()
        # SGD: the update is linear in the gradient, so only summation order differs between meshes
        cfg = _cfg(num_steps=1, checkpoint_every=100, optim=dict(name="sgd", lr=0.1, momentum=0.0, schedule="constant"))
        train(Task(model, _loss(hand)), _ListIter([batch]), cfg,
              str(tmp_path / f"d{n_dev}"), mesh=make_mesh(jax.devices()[:n_dev]))
        results.append(_final_params(model))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), *results)


def test_resume_equals_uninterrupted(hand, tmp_path):
    batches = [_batch(hand, seed=s) for s in range(3)]
    full = _model()
    m_full = train(Task(full, _loss(hand)), _ListIter(batches), _cfg(num_steps=6), str(tmp_path / "full"))
    part = _model()
    train(Task(part, _loss(hand)), _ListIter(batches), _cfg(num_steps=3), str(tmp_path / "part"))
    resumed = _model(seed=5)  # different init: everything must come from the checkpoint
    m_res = train(Task(resumed, _loss(hand)), _ListIter(batches), _cfg(num_steps=6), str(tmp_path / "part"))
    np.testing.assert_allclose(m_res["loss"], m_full["loss"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), _final_params(resumed), _final_params(full))


def test_nonfinite_loss_stops_with_clear_message(hand, tmp_path):
    from handjax.train import NonFiniteLossError
    batch = _batch(hand)
    bad = dict(batch, joints3d=np.full_like(batch["joints3d"], np.nan))
    model = _model()
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is step 3"):
        train(Task(model, _loss(hand)), _ListIter([batch] * 3 + [bad] * 3), _cfg(num_steps=6), str(tmp_path))
    assert np.all(np.isfinite(jax.tree.leaves(_final_params(model))[0]))


def test_model_only_checkpoint_roundtrip(tmp_path):
    from handjax.models.checkpoint import save_model
    from handjax.train.loop import restore_model
    src, dst = _model(seed=1), _model(seed=2)
    save_model(src, str(tmp_path / "m"), {"system": "tempclr", "depth": 18})
    assert restore_model(dst, str(tmp_path / "m")) == -1
    jax.tree.map(np.testing.assert_array_equal, _final_params(dst), _final_params(src))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(dst, nnx.BatchStat), nnx.state(src, nnx.BatchStat))


def test_pipeline_labels_are_reachable_by_the_regressor(hand, tmp_path_factory):
    """The fine-tune targets of an augmented pipeline batch (rotated, flipped crops) are exactly what the
    model's parameters can express: GT MANO pose/shape encoded as the 109-d vector, with the least-squares
    weak-perspective camera, give (near) zero loss; the mean parameters do not."""
    from data_pipelines.pipeline import FrameSource, make_pipeline
    from data_pipelines.synthetic_hands import ensure_built
    from handjax.geometry import axis_angle_to_matrix, inverse_softplus

    # same directory as tests/test_synthetic_data.py: built once per pytest session
    source = FrameSource(ensure_built("tiny", str(tmp_path_factory.getbasetemp() / "synthetic_hands_data")), "train")
    aug = dict(scale=0.2, rotation=45.0, shift=0.1, flip="left_to_right")  # the recipe's: right-hand model
    batch = next(make_pipeline(source, batch_size=8, image_size=S, augment=aug, seed=3, shard_index=0,
                               shard_count=1))
    assert batch["aug_flip"].any() and (np.abs(batch["aug_rotation"]) > 0.1).any()
    rot = np.asarray(axis_angle_to_matrix(jnp.asarray(batch["mano_pose"]).reshape(-1, 16, 3)))
    six = np.asarray(matrix_to_rot6d(jnp.asarray(rot), "interleaved")).reshape(-1, 96)
    joints = np.asarray(mano.mano_forward(hand, jnp.asarray(rot), jnp.asarray(batch["betas"]),
                                          convention="tempclr").joints)[:, mano.joint_remap("tempclr", "freihand")]
    target = 2.0 * batch["joints2d"] / S - 1.0
    cams = []
    for xy, t in zip(joints[..., :2], target):  # t = s * xy + c, solved for (s, c), then c = s * translation
        a = np.zeros((42, 3))
        a[:, 0], a[0::2, 1], a[1::2, 2] = xy.reshape(-1), 1.0, 1.0
        (s, cx, cy), *_ = np.linalg.lstsq(a, t.reshape(-1), rcond=None)
        cams.append([float(inverse_softplus(jnp.float32(s))), cx / s, cy / s])
    ideal = np.concatenate([six, batch["betas"], np.asarray(cams)], 1).astype(np.float32)

    class Fixed(nnx.Module):  # a "model" that predicts the given parameters for every image
        def __init__(self, params):
            self.params = params

        def __call__(self, images):
            return [jnp.asarray(self.params)]

    loss = functools.partial(recipe.finetune_loss, mano_model=hand, remap=mano.joint_remap("tempclr", "freihand"),
                             weights={"joints2d": 1.0, "joints3d": 1.0, "vertices": 1.0, "wrist_pose": 1.0,
                                      "hand_pose": 1.0, "betas": 1.0}, image_size=S)
    _, good = loss(Fixed(ideal), batch, None)
    paper = {t for t in recipe.FINETUNE_TERMS if t.startswith(("expose_", "temporal_"))}  # the recipes' terms
    assert set(good) | paper == set(recipe.FINETUNE_TERMS)  # the config check's list is the loss's terms
    _, mean = loss(Fixed(np.tile(np.asarray(default_mean_param(8.0)), (8, 1))), batch, None)
    # TempCLR's fingertip vertices differ from FreiHAND's (the labels'): a few mm on 5 of 21 joints
    assert float(good["joints3d"]) < 1.5e-3 and float(good["vertices"]) < 1.5e-3, good
    assert float(good["joints2d"]) < 0.02 < float(mean["joints2d"]), (good, mean)  # 2 % of the crop half-width
    for key in ("wrist_pose", "hand_pose", "betas"):
        assert float(good[key]) < 1e-8 < float(mean[key]), key


def test_unknown_loss_weight_is_an_error(hand):
    batch = _batch(hand, n=2)
    loss = functools.partial(recipe.finetune_loss, mano_model=hand, remap=mano.joint_remap("tempclr", "freihand"),
                             weights={"joints2d": 1.0, "pose": 1.0}, image_size=S)  # 'pose': the old single term
    with pytest.raises(ValueError, match=r"loss_weights\.pose: no such loss term.*wrist_pose"):
        loss(_model(), batch, None)


def test_unknown_loss_weight_in_config_fails_before_training(tmp_path):
    from configs.tempclr import get_config

    cfg = get_config("size=tiny")
    cfg.finetune.loss_weights = dict(cfg.finetune.loss_weights, pose=1.0)

    def data(**kw):  # never reached: the config is rejected first
        raise AssertionError("data requested before the config was validated")

    with pytest.raises(ValueError, match=r"finetune\.loss_weights\.pose: no such loss term"):
        runner.run(recipe.SYSTEM, cfg, str(tmp_path), data)


def test_conv_impl_from_config():
    """model.conv_impl reaches the backbone ('xla' and the CPU default 'auto' agree); a bad value names the key."""
    from configs.tempclr import get_config

    cfg = get_config("size=tiny")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, S, S, 3)), jnp.float32)
    outs = {}
    for impl in ("xla", "auto"):
        cfg.model.conv_impl = impl
        model = recipe.build_model(cfg, with_projection=False)
        assert model.backbone.layer1[0].conv2.conv_impl == impl
        model.eval()
        outs[impl] = np.asarray(model(x)[-1])
    np.testing.assert_allclose(outs["auto"], outs["xla"], rtol=1e-4, atol=1e-4)
    cfg.model.conv_impl = "fft"
    with pytest.raises(ValueError, match=r"model\.conv_impl must be one of"):
        recipe.build_model(cfg, with_projection=False)


def _pre_layer_finetune_loss(model, batch, hand, weights):
    """The fine-tune loss exactly as written before the system layer (dict decode, terms inline): the reference."""
    from handjax.geometry import axis_angle_to_matrix, rot6d_to_matrix, torch_softplus

    x = model(jnp.asarray(batch["image"]))[-1]
    rot = jnp.concatenate([rot6d_to_matrix(x[:, None, 0:6], "interleaved"),
                           rot6d_to_matrix(x[:, 6:96].reshape(-1, 15, 6), "interleaved")], axis=1)
    betas, s, t = x[:, 96:106], torch_softplus(x[:, 106]), x[:, 107:109]
    out = mano.mano_forward(hand, rot, betas, None, convention="tempclr")
    idx = jnp.array(mano.joint_remap("tempclr", "freihand"))
    joints = out.joints[:, idx]
    proj = s[:, None, None] * (joints[..., :2] + t[:, None])
    l1 = lambda a, b: jnp.mean(jnp.abs(a - b))
    gt_rot = axis_angle_to_matrix(jnp.asarray(batch["mano_pose"]).reshape(-1, 16, 3))
    terms = {
        "joints2d": l1(proj, 2.0 * batch["joints2d"] / S - 1.0),
        "joints3d": l1(joints - joints[:, :1], batch["joints3d"] - batch["joints3d"][:, :1]),
        "vertices": l1(out.vertices - joints[:, :1], batch["vertices"] - batch["joints3d"][:, :1]),
        "wrist_pose": jnp.mean(jnp.square(rot[:, :1] - gt_rot[:, :1])),
        "hand_pose": jnp.mean(jnp.square(rot[:, 1:] - gt_rot[:, 1:])),
        "betas": jnp.mean(jnp.square(betas - batch["betas"])),
    }
    return sum(weights[k] * v for k, v in terms.items()), terms


def test_finetune_loss_equals_the_pre_layer_definition(hand):
    """TempCLR on the shared loss terms computes the same loss as before the system layer (float32 rounding)."""
    model = _model(3)
    model.eval()
    batch = _batch(hand, seed=5)
    weights = {"joints2d": 1.0, "joints3d": 10.0, "vertices": 10.0, "wrist_pose": 1.0, "hand_pose": 1.0, "betas": 0.1}
    total, terms = _loss(hand)(model, batch, None)
    ref_total, ref_terms = _pre_layer_finetune_loss(model, batch, hand, weights)
    assert set(terms) == set(ref_terms)
    for k in terms:
        np.testing.assert_allclose(float(terms[k]), float(ref_terms[k]), rtol=2e-6, err_msg=k)
    np.testing.assert_allclose(float(total), float(ref_total), rtol=2e-6)
