"""DIGIT's math pieces against hand-computed cases and direct numpy definitions: soft-argmax
(2D with depth, 1D root bins), align-corners bilinear upsampling, 2x2 max pooling, the 2.5D
target encoding, the five loss reductions, the decode into camera space, the micro-batch loss,
the head's parameter counts (digit.md 1.6) and config checks."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from handjax.configs.digit import get_config
from handjax.losses import digit as L
from handjax.models import digit as M
from handjax.train import digit as D


# ----------------------------------------------------------------------------- soft-argmax
def test_soft_argmax_2d_delta_flat_and_depth():
    hm = np.zeros((1, 64, 64, 2), np.float32)
    hm[0, 10, 40, 0] = 1e4  # a delta at row 10, column 40 (DIGIT's verified case)
    depth = np.zeros((1, 64, 64, 2), np.float32)
    depth[0, 10, 40, 0] = 7.0
    depth[..., 1] = 3.0  # constant depth map for the flat heatmap
    xy, z = M.soft_argmax_2d(jnp.asarray(hm), jnp.asarray(depth))
    np.testing.assert_allclose(np.asarray(xy[0, 0]), [40.5, 10.5], atol=1e-4)
    np.testing.assert_allclose(np.asarray(xy[0, 1]), [32.0, 32.0], atol=1e-4)  # flat map: the grid centre
    np.testing.assert_allclose(np.asarray(z[0]), [7.0, 3.0], atol=1e-4)


def test_soft_argmax_2d_matches_numpy_definition():
    rng = np.random.default_rng(0)
    hm = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    dep = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    xy, z = M.soft_argmax_2d(jnp.asarray(hm), jnp.asarray(dep))
    for b in range(2):
        for j in range(3):
            p = np.exp(hm[b, :, :, j] - hm[b, :, :, j].max())
            p /= p.sum()
            rows, cols = np.meshgrid(np.arange(4) + 0.5, np.arange(5) + 0.5, indexing="ij")
            np.testing.assert_allclose(np.asarray(xy[b, j]), [(p * cols).sum(), (p * rows).sum()], rtol=1e-5)
            np.testing.assert_allclose(float(z[b, j]), (p * dep[b, :, :, j]).sum(), rtol=1e-5, atol=1e-6)


def test_soft_argmax_1d_bins_start_at_zero():
    flat = jnp.zeros((1, 64))
    delta = jnp.zeros((1, 64)).at[0, 7].set(1e4)
    np.testing.assert_allclose(np.asarray(M.soft_argmax_1d(flat)), [31.5], atol=1e-5)
    np.testing.assert_allclose(np.asarray(M.soft_argmax_1d(delta)), [7.0], atol=1e-4)


# ----------------------------------------------------------------------------- resampling
def test_bilinear_align_corners_hand_case_and_numpy():
    x = jnp.asarray([[0.0, 1.0]])[None, :, :, None]  # (1, 1, 2, 1)
    y = M.upsample_bilinear_align_corners(x)
    np.testing.assert_allclose(np.asarray(y[0, 0, :, 0]), [0, 1 / 3, 2 / 3, 1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(y[0, 1, :, 0]), [0, 1 / 3, 2 / 3, 1], atol=1e-6)  # 1 row -> copies
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 3, 4, 2)).astype(np.float32)
    out = np.asarray(M.upsample_bilinear_align_corners(jnp.asarray(a)))
    ref = np.zeros((2, 6, 8, 2))
    for i in range(6):
        for j in range(8):
            sy, sx = i * 2 / 5, j * 3 / 7  # align_corners: i (H - 1) / (2H - 1)
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, 2), min(x0 + 1, 3)
            wy, wx = sy - y0, sx - x0
            ref[:, i, j] = ((1 - wy) * ((1 - wx) * a[:, y0, x0] + wx * a[:, y0, x1])
                            + wy * ((1 - wx) * a[:, y1, x0] + wx * a[:, y1, x1]))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_max_pool_2x2():
    a = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)[:, :, :, ::-1] % 7
    out = np.asarray(M.max_pool_2x2(jnp.asarray(a)))
    ref = np.max(np.stack([a[:, 0::2, 0::2], a[:, 0::2, 1::2], a[:, 1::2, 0::2], a[:, 1::2, 1::2]]), axis=0)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="even"):
        M.max_pool_2x2(jnp.zeros((1, 3, 4, 1)))


# ----------------------------------------------------------------------------- targets
def _one_sample(S=32):
    j2d = np.full((1, 42, 2), 10.0, np.float32)
    j3d = np.zeros((1, 42, 3), np.float32)
    j3d[0, :21, 2] = 0.5  # right hand at 0.5 m
    j3d[0, 21:, 2] = 0.45  # left hand 5 cm closer
    j2d[0, 0] = (16.0, 8.0)
    j3d[0, 0, 2] = 0.6  # 100 mm behind the right wrist
    j3d[0, 1, 2] = 0.75  # 250 mm: outside the 400 mm range
    j2d[0, 2] = (32.0, 5.0)  # x = S: outside the crop
    jv = np.ones((1, 42), bool)
    jv[0, 3] = False
    part = np.arange(S * S, dtype=np.int32).reshape(1, S, S) % 33
    return dict(joints2d=j2d, joints3d=j3d, joint_valid=jv, hand_type=np.array([2]), part_seg=part)


def test_encode_targets_hand_computed():
    b = _one_sample()
    t = L.encode_targets({k: jnp.asarray(v) for k, v in b.items()}, image_size=32, hm_size=8)
    j = np.asarray(t["joints25d"])
    np.testing.assert_allclose(j[0, 0], [4.0, 2.0, 48.0], atol=1e-4)  # (16, 8) / 4; (100/200 + 1) / 2 * 64
    np.testing.assert_allclose(j[0, 20], [2.5, 2.5, 32.0], atol=1e-4)  # wrist: z = 32
    np.testing.assert_allclose(j[0, 1, 2], 72.0, atol=1e-4)
    v = np.asarray(t["joint_valid"])[0]
    assert v[0] == 1 and v[1] == 0 and v[2] == 0 and v[3] == 0 and v[4:].all()
    np.testing.assert_allclose(float(t["rel_root"][0]), 24.0, atol=1e-4)  # (-50 / 200 + 1) / 2 * 64
    assert float(t["root_valid"][0]) == 1.0
    np.testing.assert_array_equal(np.asarray(t["hand_type"]), [[1.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(t["segm"]), b["part_seg"][:, ::2, ::2])
    # single-hand frames: no root supervision; a left frame is [0, 1]
    b["hand_type"] = np.array([1])
    t = L.encode_targets({k: jnp.asarray(v) for k, v in b.items()}, image_size=32, hm_size=8)
    assert float(t["root_valid"][0]) == 0.0
    np.testing.assert_array_equal(np.asarray(t["hand_type"]), [[0.0, 1.0]])
    # an invalid wrist invalidates its whole hand
    b["joint_valid"][0, 41] = False
    t = L.encode_targets({k: jnp.asarray(v) for k, v in b.items()}, image_size=32, hm_size=8)
    assert not np.asarray(t["joint_valid"])[0, 21:].any()


def test_depth_encoding_round_trip():
    z = np.array([-200.0, -50.0, 0.0, 100.0, 199.0])
    np.testing.assert_allclose(np.asarray(L.encode_depth(z)), [0, 24, 32, 48, 63.84], atol=1e-4)
    np.testing.assert_allclose(np.asarray(L.decode_depth(L.encode_depth(z))), z, atol=1e-3)


# ----------------------------------------------------------------------------- losses vs numpy
def _np_losses(pred25, gt25, valid, rel_p, rel_g, rv, logits, ht, htv, seg_logits, seg, sv):
    joints = np.sum(np.abs(pred25 - gt25) * valid[..., None]) / pred25.size
    root = np.sum(np.abs(rel_p - rel_g) * rv) / len(rel_p)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(ht * np.log(p) + (1 - ht) * np.log(1 - p))
    hand = np.sum(bce.mean(-1) * htv) / len(htv)
    lse = np.log(np.sum(np.exp(seg_logits.astype(np.float64)), axis=-1))
    picked = np.take_along_axis(seg_logits, seg[..., None], -1)[..., 0]
    segm = np.sum((lse - picked) * sv[:, None, None]) / seg.size
    bone = 0.0
    for off in (0, 21):
        sq, n = 0.0, 0
        for b in range(len(pred25)):
            for c in range(20):
                par = 20 if c % 4 == 3 else c + 1
                d = (pred25[b, off + c] - pred25[b, off + par]) - (gt25[b, off + c] - gt25[b, off + par])
                sq += np.sum(d ** 2) * valid[b, off + c] * valid[b, off + par]
                n += 3
        bone += sq / n
    return joints, root, hand, segm, bone


def test_loss_reductions_match_numpy():
    rng = np.random.default_rng(2)
    B = 3
    pred25, gt25 = rng.normal(size=(2, B, 42, 3)) * 5
    valid = (rng.uniform(size=(B, 42)) > 0.3).astype(np.float64)
    rel_p, rel_g = rng.normal(size=(2, B)) * 4
    rv = np.array([1.0, 0.0, 1.0])
    logits = rng.normal(size=(B, 2))
    ht = np.array([[1, 0], [0, 1], [1, 1]], np.float64)
    htv = np.array([1.0, 1.0, 0.0])
    seg_logits = rng.normal(size=(B, 4, 4, 33))
    seg = rng.integers(0, 33, (B, 4, 4))
    sv = np.array([1.0, 0.0, 1.0])
    ref = _np_losses(pred25, gt25, valid, rel_p, rel_g, rv, logits, ht, htv, seg_logits, seg, sv)
    got = (L.joints_l1(pred25, gt25, valid), L.root_depth_l1(rel_p, rel_g, rv), L.hand_type_bce(logits, ht, htv),
           L.segm_cross_entropy(jnp.asarray(seg_logits), jnp.asarray(seg), sv), L.bone_l2(pred25, gt25, valid))
    for name, g, r in zip(("joints", "root", "hand", "segm", "bone"), got, ref):
        np.testing.assert_allclose(float(g), r, rtol=1e-5, err_msg=name)


def test_parents_follow_ih26m_order():
    pairs = {tuple(p) for p in L.parents42()}
    assert (0, 1) in pairs and (3, 20) in pairs and (19, 20) in pairs and (24, 41) in pairs and len(pairs) == 40


# ----------------------------------------------------------------------------- decode
def test_decode_hand_computed():
    h, S = 8, 32
    j25 = np.zeros((1, 42, 3), np.float32)
    j25[..., :2] = 15.5 / 4  # the principal point
    j25[..., 2] = 32.0  # root depth
    j25[0, 0] = [25.5 / 4, 15.5 / 4, 48.0]  # 10 px right of c, 100 mm behind the right wrist
    j25[0, 41, 0] = 35.5 / 4  # left wrist 20 px right of c
    out = M.DigitOutput(segm_logits=jnp.zeros((1, 16, 16, 33)), heatmaps=jnp.zeros((1, h, h, 42)),
                        depth_maps=jnp.zeros((1, h, h, 42)), joints25d=jnp.asarray(j25),
                        root_logits=jnp.zeros((1, 64)), rel_root=jnp.asarray([24.0]),  # -50 mm
                        hand_logits=jnp.zeros((1, 2)), hm_size=h)
    K = jnp.asarray([[[100.0, 0, 15.5], [0, 100.0, 15.5], [0, 0, 1]]])
    hands, rel = D.decode(out, K, jnp.asarray([[0.5, 0.4]]), S)
    r, l = np.asarray(hands["right"].joints[0]), np.asarray(hands["left"].joints[0])
    np.testing.assert_allclose(r[0], [10 * 0.6 / 100, 0.0, 0.6], atol=1e-6)
    np.testing.assert_allclose(r[20], [0.0, 0.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(l[20], [20 * 0.4 / 100, 0.0, 0.4], atol=1e-6)  # each hand at its own root depth
    # MRRPE anchor: left root at right depth + predicted relative depth (0.45 m)
    np.testing.assert_allclose(np.asarray(rel[0]), [20 * 0.45 / 100, 0.0, -0.05], atol=1e-6)
    np.testing.assert_allclose(np.asarray(hands["right"].joints2d[0, 0]), [25.5, 15.5], atol=1e-4)
    assert bool(hands["right"].is_right[0]) and not bool(hands["left"].is_right[0])


# ----------------------------------------------------------------------------- micro-batches
class _Stub(nnx.Module):
    """images -> DigitOutput through a BatchNorm-like batch mean, so the micro-batches matter."""

    def __init__(self):
        self.w = nnx.Param(jnp.ones((3,)))

    def __call__(self, images):
        b = images.shape[0]
        f = jnp.mean(images, axis=(1, 2)) * self.w[...]
        f = f - jnp.mean(f, axis=0)  # batch statistic
        j = jnp.broadcast_to(f[:, :1, None], (b, 42, 3)) + 10.0
        return M.DigitOutput(segm_logits=jnp.broadcast_to(f[:, None, None, :1], (b, 16, 16, 33)),
                             heatmaps=jnp.zeros((b, 8, 8, 42)), depth_maps=jnp.zeros((b, 8, 8, 42)), joints25d=j,
                             root_logits=jnp.zeros((b, 64)), rel_root=f[:, 1] + 20.0, hand_logits=f[:, :2], hm_size=8)


def test_micro_batches_average_the_parts():
    b = _one_sample()
    rng = np.random.default_rng(3)
    batch = {k: np.concatenate([v] * 4) for k, v in b.items()}
    batch["hand_type"] = np.array([2, 0, 1, 2])
    batch["image"] = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    w = dict(L.DEFAULT_WEIGHTS)
    model = _Stub()
    full, _ = D.loss_fn(model, batch, None, weights=w, image_size=32, micro_batches=2)
    halves = [D.loss_fn(model, {k: v[i:i + 2] for k, v in batch.items()}, None, weights=w, image_size=32)[0]
              for i in (0, 2)]
    one, _ = D.loss_fn(model, batch, None, weights=w, image_size=32, micro_batches=1)
    np.testing.assert_allclose(float(full), 0.5 * (float(halves[0]) + float(halves[1])), rtol=1e-6)
    assert abs(float(full) - float(one)) > 1e-4  # the batch statistic differs per part
    with pytest.raises(ValueError, match="micro_batches"):
        D.loss_fn(model, batch, None, weights=w, image_size=32, micro_batches=3)


# ----------------------------------------------------------------------------- sizes and config
def test_head_parameter_counts_match_digit():
    """digit.md 1.6 per part (backbone width 32; its depth does not change the head)."""
    m = nnx.eval_shape(lambda: M.DigitModel(rngs=nnx.Rngs(0), backbone_kw=dict(
        layer1_blocks=1, stages=((1, 1), (1, 1), (1, 1)))))

    def count(*names):
        return sum(int(np.prod(x.shape)) for n in names for x in jax.tree.leaves(nnx.state(getattr(m, n), nnx.Param)))

    assert count("segm_up", "segm_conv1", "segm_bn", "segm_conv2") == 43_005
    assert count("segm_feat1", "segm_feat2") == 314_496
    assert count("merge") == 4_631_264
    assert count("conv_hm") == count("conv_depth") == 22_890
    assert count("head") == 6_582_208
    assert count("root_fc1", "root_fc2") == 295_488
    assert count("hand_fc1", "hand_fc2") == 263_682


def test_config_checks_name_the_key():
    cfg = get_config("size=tiny")
    D._check(cfg)
    bad = ml_collections.ConfigDict(cfg.to_dict())
    bad.eval.root_depth = "oracle"
    with pytest.raises(ValueError, match="eval.root_depth"):
        D._check(bad)
    bad = ml_collections.ConfigDict(cfg.to_dict())
    bad.train.micro_batches = 3
    with pytest.raises(ValueError, match="train.micro_batches"):
        D._check(bad)
    bad = ml_collections.ConfigDict(cfg.to_dict())
    bad.data.image_size = 48
    with pytest.raises(ValueError, match="data.image_size"):
        D._check(bad)
    with pytest.raises(ValueError, match="recipe"):
        get_config("recipe=nope")
    paper = get_config("recipe=paper")
    assert paper.model.backbone == "hrnet_w32" and paper.data.image_size == 256 and paper.train.micro_batches == 2
    assert paper.train.optim.decay_steps == (int(0.8 * paper.train.num_steps),)
    assert paper.train.loss_weights.to_dict() == dict(digit_joints=1.0, digit_root_depth=1.0, digit_hand_type=1.0,
                                                      digit_segm=10.0, digit_bone=0.1)
