"""InterWild's math pieces against torch and hand-computed / numpy references (handjax.models.interwild,
handjax.losses.interwild, the evaluator's box IoU). Full-model runs live in test_interwild_system.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import jax.numpy as jnp

from handjax import mano
from handjax.geometry import axis_angle_to_matrix
from handjax.losses import interwild as L
from handjax.models import interwild as iw
from handjax.train import interwild as T


def test_conv_transpose_matches_torch_k4_s2_p1():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)  # NCHW
    w = rng.normal(size=(3, 6, 4, 4)).astype(np.float32)  # (in, out, kH, kW)
    ref = F.conv_transpose2d(torch.tensor(x), torch.tensor(w), stride=2, padding=1).numpy()
    out = iw.conv_transpose_torch(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(w.transpose(2, 3, 0, 1)))
    assert out.shape == (2, 10, 8, 6)
    np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,s,p", [(4, 2, 1), (6, 2, 2), (3, 1, 1), (5, 3, 1), (3, 2, 1), (4, 2, 0)])
def test_conv_transpose_other_shapes_and_gradients_match_torch(k, s, p):
    """The sub-pixel form (k - 2p = s: (4, 2, 1) upstream's, (6, 2, 2), (3, 1, 1), (5, 3, 1)) and the dilated
    fallback (the rest) against torch, values and both gradients of a weighted sum."""
    import jax

    rng = np.random.default_rng(k * 100 + s * 10 + p)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    w = rng.normal(size=(3, 2, k, k)).astype(np.float32)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ref = F.conv_transpose2d(xt, wt, stride=s, padding=p)
    g = torch.tensor(rng.normal(size=ref.shape).astype(np.float32))
    (ref * g).sum().backward()

    def f(xj, wj):
        return iw.conv_transpose_torch(xj, wj, stride=s, padding=p)

    xj, wj = jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(w.transpose(2, 3, 0, 1))
    out = f(xj, wj)
    np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    gj = jnp.asarray(g.numpy().transpose(0, 2, 3, 1))
    dx, dw = jax.grad(lambda a, b: jnp.sum(f(a, b) * gj), argnums=(0, 1))(xj, wj)
    np.testing.assert_allclose(np.asarray(dx).transpose(0, 3, 1, 2), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dw).transpose(2, 3, 0, 1), wt.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_conv_transpose_hand_built_single_pixel():
    # one input pixel of value 1 at (0, 0): output = kernel rows/cols 1..2 (padding 1 crops the first row/col)
    x = np.zeros((1, 1, 1, 1), np.float32)
    x[0, 0, 0, 0] = 1.0
    k = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = np.asarray(iw.conv_transpose_torch(jnp.asarray(x), jnp.asarray(k[:, :, None, None])))[0, :, :, 0]
    np.testing.assert_array_equal(out, k[1:3, 1:3])


def test_downsample_is_torch_bilinear_half_without_antialias():
    x = np.random.default_rng(1).uniform(size=(2, 3, 8, 6)).astype(np.float32)
    ref = F.interpolate(torch.tensor(x), size=(4, 3), mode="bilinear", align_corners=False).numpy()
    out = np.asarray(iw.downsample2x(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_soft_argmax_2d_and_3d_against_numpy():
    rng = np.random.default_rng(2)
    hm = rng.normal(size=(2, 5, 4, 3)).astype(np.float32) * 3  # (B, H, W, K)
    p = np.exp(hm - hm.max((1, 2), keepdims=True))
    p /= p.sum((1, 2), keepdims=True)
    ref = np.stack([(p * np.arange(4)[None, None, :, None]).sum((1, 2)), (p * np.arange(5)[None, :, None, None]).sum(
        (1, 2))], -1)
    np.testing.assert_allclose(np.asarray(iw.soft_argmax_2d(jnp.asarray(hm))), ref, rtol=1e-5, atol=1e-5)
    # a one-hot (very peaked) 3D heatmap at (z, y, x) = (2, 1, 3) gives exactly that position
    h3 = np.full((1, 1, 4, 3, 5), -1e4, np.float32)
    h3[0, 0, 2, 1, 3] = 0.0
    np.testing.assert_allclose(np.asarray(iw.soft_argmax_3d(jnp.asarray(h3)))[0, 0], [3, 1, 2], atol=1e-5)


def test_cell_centres_positions_and_feature_sampling_hand_built():
    """Geometry.cell_centres (the CPU default; upstream False): PositionNet's soft-argmax gives cell centres
    (index + 0.5 on x, y and depth), so a 2x2 grid (64 px crops) reaches the crop's middle where the hands are;
    RotationNet samples its joint features at the matching cell index."""
    from flax import nnx

    kw = dict(image_hw=(32, 24), hand_size=64, depth_bins=4, trans_hm=16, sigma=1.0)
    feat = jnp.asarray(np.random.default_rng(5).normal(size=(1, 2, 2, 6)), jnp.float32)  # hand grid 2x2
    pos = {cc: iw.PositionNet(6, 4, offset=iw.Geometry(**kw, cell_centres=cc).cell_offset, rngs=nnx.Rngs(1))
           for cc in (False, True)}
    up, cc = (np.asarray(pos[c](feat)) for c in (False, True))
    np.testing.assert_allclose(cc, up + 0.5, atol=1e-6)
    # a uniform heatmap: the expected cell of a 2x2x4 grid is the crop's centre (1, 1, 2) only with cell centres
    for net in pos.values():
        net.conv.kernel[...] = jnp.zeros_like(net.conv.kernel[...])
        net.conv.bias[...] = jnp.zeros_like(net.conv.bias[...])
    np.testing.assert_allclose(np.asarray(pos[True](feat))[0, 0], [1.0, 1.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(pos[False](feat))[0, 0], [0.5, 0.5, 1.5], atol=1e-6)
    # RotationNet: joint j at the centre of cell (row 0, column 1) = grid (1.5, 0.5) samples that cell's feature
    g = iw.Geometry(**kw, cell_centres=True)
    net = iw.RotationNet(6, g, channels=3, rngs=nnx.Rngs(2))
    net.eval()
    ji = np.tile(np.array([[1.5, 0.5, 2.0]], np.float32), (iw.NUM_JOINTS, 1))[None]
    ji[0, 3] = [0.5, 1.5, 1.0]  # joint 3 at cell (row 1, column 0)
    x = np.asarray(nnx.relu(net.bn(net.conv(feat))))[0]  # (2, 2, 3)
    sampled = np.repeat(x[0, 1][None], iw.NUM_JOINTS, 0)
    sampled[3] = x[1, 0]
    flat = np.concatenate([sampled, ji[0]], -1).reshape(1, -1)
    ref = iw.rot6d_to_axis_angle(net.root_pose_out(jnp.asarray(flat)))
    out = net(feat, jnp.asarray(ji))[0]
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)
    # the config: the CPU default uses cell centres, recipe=paper keeps upstream's indices (its released weights)
    from handjax.configs.interwild import get_config

    assert T.geometry(get_config()).cell_centres and not T.geometry(get_config("recipe=paper")).cell_centres


def test_sample_features_is_grid_sample_align_corners_true():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)  # NCHW
    xy = rng.uniform(-0.5, 6.5, size=(2, 7, 2)).astype(np.float32)
    grid = np.stack([xy[..., 0] / 4 * 2 - 1, xy[..., 1] / 5 * 2 - 1], -1)[:, :, None]
    ref = F.grid_sample(torch.tensor(f), torch.tensor(grid), align_corners=True)[..., 0].permute(0, 2, 1).numpy()
    out = iw.sample_features(jnp.asarray(f.transpose(0, 2, 3, 1)), jnp.asarray(xy))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_restore_bbox_hand_computed():
    # centre (10, 8), size (4, 2) in a 48x64 (w x h) heatmap, body 192x256: x4 -> box (32, 28, 48, 36)
    c, s = jnp.array([[10.0, 8.0]]), jnp.array([[4.0, 2.0]])
    np.testing.assert_allclose(np.asarray(iw.restore_bbox(c, s, (64, 48), (256, 192))), [[32, 28, 48, 36]])
    # squared (h enlarged to w = 16) and x2: side 32 about (40, 32)
    np.testing.assert_allclose(np.asarray(iw.restore_bbox(c, s, (64, 48), (256, 192), 1.0, 2.0)), [[24, 16, 56, 48]])


def test_box_affine_and_crop_hand_built():
    # box (2, 2, 6, 6) -> 8x8 crop: x' = 2 (x - 4) + 4; crop pixel (4, 4) samples image pixel (4, 4)
    A = np.asarray(iw.box_affine(jnp.array([[2.0, 2.0, 6.0, 6.0]]), (8, 8)))[0]
    np.testing.assert_allclose(A, [[2, 0, -4], [0, 2, -4], [0, 0, 1]], atol=1e-6)
    img = np.random.default_rng(4).uniform(size=(1, 10, 9, 2)).astype(np.float32)
    crop = np.asarray(iw.crop_images(jnp.asarray(img), jnp.asarray(A[None]), 8))[0]
    # output (u, v) samples the input at ((u + 4) / 2, (v + 4) / 2): bilinear by hand
    for u, v in [(0, 0), (3, 5), (7, 2), (4, 4)]:
        x, y = (u + 4) / 2, (v + 4) / 2
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        tx, ty = x - x0, y - y0
        ref = ((1 - tx) * (1 - ty) * img[0, y0, x0] + tx * (1 - ty) * img[0, y0, x0 + 1]
               + (1 - tx) * ty * img[0, y0 + 1, x0] + tx * ty * img[0, y0 + 1, x0 + 1])
        np.testing.assert_allclose(crop[v, u], ref, rtol=1e-5, atol=1e-6)
    # zero padding outside the image
    far_affine = iw.box_affine(jnp.array([[40.0, 40, 44, 44]]), (8, 8))
    far = np.asarray(iw.crop_images(jnp.asarray(img), far_affine, 8))
    assert np.all(far == 0)
    np.testing.assert_allclose(np.asarray(iw.invert_affine(jnp.asarray(A[None])))[0], np.linalg.inv(A)[:2], atol=1e-6)


def test_unmirroring_hand_built():
    # upstream: x -> (255 - 32 x) / 32 for 256 px crops with an 8x8 grid
    j = jnp.array([[[0.0, 1.0, 2.0], [7.96875, 3.0, 4.0]]])
    np.testing.assert_allclose(np.asarray(iw.unmirror_joint_img(j, 256, 8)), [[[7.96875, 1, 2], [0.0, 3, 4]]])
    # axis-angle (x, -y, -z) is the mirrored rotation M R M, M = diag(-1, 1, 1)
    aa = jnp.array([[0.3, -1.2, 0.7, 2.0, 0.1, -0.4]])
    un = iw.unmirror_axis_angle(aa)
    np.testing.assert_allclose(np.asarray(un), [[0.3, 1.2, -0.7, 2.0, -0.1, 0.4]])
    M = np.diag([-1.0, 1, 1])
    R = np.asarray(axis_angle_to_matrix(aa.reshape(2, 3)))
    np.testing.assert_allclose(np.asarray(axis_angle_to_matrix(un.reshape(2, 3))), M @ R @ M, atol=1e-6)


def test_gaussian_heatmaps_channel_order_and_values():
    c = jnp.array([[[1.0, 2.0, 0.5], [3.0, 0.0, 3.0]]])  # (B=1, J=2, xyz)
    hm = np.asarray(iw.gaussian_heatmaps(c, 4, 1.5))  # (1, Y, X, J * Z)
    for j in range(2):
        for z in range(4):
            for y in range(4):
                for x in range(4):
                    d2 = (x - c[0, j, 0]) ** 2 + (y - c[0, j, 1]) ** 2 + (z - c[0, j, 2]) ** 2
                    assert abs(hm[0, y, x, j * 4 + z] - 255 * np.exp(-float(d2) / (2 * 1.5 ** 2))) < 1e-3


def test_restore_square_and_root_translation_constant():
    box = jnp.array([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 2.0, 5.0]])
    np.testing.assert_allclose(np.asarray(iw.restore_square(box)), [[0, -1, 4, 3], [-0.5, 1, 3.5, 5]])
    g = iw.Geometry()
    assert g.focal == 5000 and g.princpt == 128 and g.hand_grid == 8 and g.body_hm_hw == (64, 48)
    assert g.trans_grid == 8
    from flax import nnx
    net = iw.RotationNet(16, g, channels=4, rngs=nnx.Rngs(0))
    t = np.asarray(net.root_trans(jnp.array([[0.1, -0.2, 0.0]])))
    np.testing.assert_allclose(t, [[0.1, -0.2, 11.71875 / 2]], rtol=1e-6)


def test_rot6d_rows_convention():
    # pytorch3d rows: a = (0, 1, 0), b = (1, 0, 0) -> R rows (0,1,0), (1,0,0), (0,0,-1): 180 deg about x+y
    aa = np.asarray(iw.rot6d_to_axis_angle(jnp.array([[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]])))[0]
    R = np.asarray(axis_angle_to_matrix(jnp.asarray(aa)))
    np.testing.assert_allclose(R, [[0, 1, 0], [1, 0, 0], [0, 0, -1]], atol=1e-5)


def test_sh_joints_and_left_shapedirs_fix():
    right, left = mano.load_model(None, "right"), iw.left_mano("")
    verts = jnp.asarray(np.random.default_rng(5).normal(size=(1, 778, 3)).astype(np.float32))
    j = np.asarray(iw.sh_joints(right, verts))[0]
    np.testing.assert_allclose(j[0], np.asarray(right.J_regressor)[0] @ np.asarray(verts[0]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(j[4], np.asarray(verts[0, 745]))  # thumb tip
    np.testing.assert_allclose(j[12], np.asarray(verts[0, 445]))  # middle tip
    raw_left = mano.load_model(None, "left")
    fixed = np.abs(np.asarray(raw_left.shapedirs[:, 0]) - np.asarray(right.shapedirs[:, 0])).sum() < 1
    expected = -np.asarray(raw_left.shapedirs[:, 0]) if fixed else np.asarray(raw_left.shapedirs[:, 0])
    np.testing.assert_array_equal(np.asarray(left.shapedirs[:, 0]), expected)


# ----------------------------------------------------------------------------- losses
def _pred(b=2, hand_size=64):
    g = iw.Geometry(image_hw=(32, 24), hand_size=hand_size, trans_hm=16)
    right, left = mano.load_model(None, "right"), iw.left_mano("")
    rng = np.random.default_rng(6)
    box = jnp.asarray(np.tile([[4.0, 4.0, 20.0, 20.0]], (2 * b, 1)), jnp.float32)
    o2h = iw.box_affine(box, (hand_size, hand_size))
    raw = dict(rhand_center=jnp.asarray(rng.normal(size=(b, 2)), jnp.float32),
               lhand_center=jnp.asarray(rng.normal(size=(b, 2)), jnp.float32),
               rhand_size=jnp.ones((b, 2)), lhand_size=jnp.ones((b, 2)),
               rel_trans=jnp.asarray(rng.normal(size=(b, 3)), jnp.float32), root_pose=jnp.zeros((2 * b, 3)),
               hand_pose=jnp.zeros((2 * b, 45)), shape=jnp.zeros((2 * b, 10)),
               root_trans=jnp.tile(jnp.array([[0.0, 0.0, 5.0]]), (2 * b, 1)), orig2hand=o2h,
               hand2orig=iw.invert_affine(o2h), joint_img=jnp.zeros((2 * b, 21, 3)))
    return L.prediction(raw, g, right, left), raw, g


def test_rel_trans_and_bbox_terms_are_full_tensor_means():
    pred, raw, g = _pred()
    jv = np.ones((2, 42), bool)
    jv[1, 41] = False  # sample 1's left wrist invalid: its rel_trans is masked, but stays in the denominator
    batch = dict(image=jnp.zeros((2, 32, 24, 3)), joint_valid=jnp.asarray(jv), rel_root=jnp.zeros((2, 3)),
                 hand_valid=jnp.asarray([[True, True], [True, False]]),
                 hand_box=jnp.asarray(np.tile([[[0.0, 0.0, 12.0, 16.0]]], (2, 2, 1)), jnp.float32))
    expected = np.abs(np.asarray(raw["rel_trans"][0])).sum() / 6
    np.testing.assert_allclose(float(L.rel_trans(pred, batch, 32)), expected, rtol=1e-6)
    # GT centre (6, 8) px in a 32x24 crop -> heatmap (hm_h, hm_w) units
    hm_h, hm_w = g.body_hm_hw
    gt = np.array([6.0 * hm_w / 24, 8.0 * hm_h / 32])
    r = np.abs(np.asarray(raw["rhand_center"]) - gt).sum() / 4  # both samples valid, mean over (2, 2)
    l_ = np.abs(np.asarray(raw["lhand_center"])[0] - gt).sum() / 4  # sample 1's left hand masked
    np.testing.assert_allclose(float(L.bbox_center(pred, batch, 32)), r + l_, rtol=1e-5)


def test_mano_pose_term_compares_relative_rotations():
    pred, raw, g = _pred()
    right, left = pred["mano"]
    mean_r = np.concatenate([np.zeros(3), np.asarray(right.hands_mean)])
    mean_l = np.concatenate([np.zeros(3), np.asarray(left.hands_mean)])
    # GT absolute pose = the mean hand: relative pose 0 = the prediction -> loss 0
    pose = np.stack([np.stack([mean_r, mean_l])] * 2).astype(np.float32)
    batch = dict(image=jnp.zeros((2, 32, 24, 3)), mano_pose=jnp.asarray(pose), mano_valid=jnp.ones((2, 2), bool))
    assert float(L.mano_pose(pred, batch, 32)) < 1e-6
    # a 90-degree root rotation on one hand of one sample: |R - I| summed / (2 * 32 * 9)
    pose2 = pose.copy()
    pose2[0, 0, :3] = [0, 0, np.pi / 2]
    batch["mano_pose"] = jnp.asarray(pose2)
    R = np.asarray(axis_angle_to_matrix(jnp.array([0.0, 0.0, np.pi / 2])))
    np.testing.assert_allclose(float(L.mano_pose(pred, batch, 32)), np.abs(R - np.eye(3)).sum() / (2 * 32 * 9),
                               rtol=1e-5)


def test_joint_targets_enter_the_crop_through_orig2hand():
    pred, raw, g = _pred(b=1)
    # person pixel (12, 12) is the centre of box (4, 4, 20, 20): crop pixel 32 -> grid 32 / 32 = 1.0
    xy = jnp.full((1, 42, 2), 12.0)
    coords, inside = L.to_hand_grid(pred, xy, jnp.zeros((1, 42)))
    np.testing.assert_allclose(np.asarray(coords)[0, 0], [1.0, 1.0, 4.0], rtol=1e-6)
    assert bool(np.all(np.asarray(inside)))
    coords, inside = L.to_hand_grid(pred, jnp.full((1, 42, 2), 30.0), jnp.full((1, 42), 0.2))
    assert not np.any(np.asarray(inside))


# ----------------------------------------------------------------------------- evaluation
def test_box_iou_and_evaluator_iou_hand_computed():
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0]])
    np.testing.assert_allclose(T.box_iou(a, b), [1 / 7])
    np.testing.assert_allclose(T.box_iou(a, a), [1.0])
    np.testing.assert_allclose(T.box_iou(a, a + 5), [0.0])
    ev = T.InterWildEvaluator(wrist_regressor=None)
    j = np.zeros((1, 42, 3))
    labels = dict(joints3d=j, joint_valid=np.ones((1, 42), bool), hand_type=np.array([2]),
                  hand_box=np.stack([a, a], 1), hand_valid=np.array([[True, False]]), valid=np.array([True]))
    ev.add(dict(joints=j, rel_root=np.zeros((1, 3)), boxes=np.stack([b, a], 1)), labels)
    res = ev.result()
    assert res["box_count"] == 1
    np.testing.assert_allclose(res["box_iou"], 100 / 7)
    assert res["mrrpe_mm"] == 0.0


# ----------------------------------------------------------------------------- predictor extras
def _extras(conf, rbox, lbox):
    return {"boxes": np.array([rbox, lbox], np.float64), "box_conf": np.array(conf),
            "root_pose": np.zeros((2, 3)), "hand_pose": np.zeros((2, 45)), "shape": np.zeros((2, 10)),
            "root_trans": np.array([[0.0, 0, 6], [0.1, 0, 6]]), "rel_trans": np.array([0.05, 0.0, 0.01])}


def test_predict_postprocess_threshold_decision_and_params():
    # crop affine: original -> input pixels, scale 2 and shift (-4, 0): input box (0, 0, 8, 8) -> (2, 0, 6, 4)
    A = np.array([[2.0, 0, -4], [0, 2, 0], [0, 0, 1]])
    np.testing.assert_allclose(T.boxes_to_original(np.array([[0.0, 0, 8, 8]]), A), [[2, 0, 6, 4]])
    outputs = {"right": {}, "left": {}}
    kept, rec = T.postprocess_fn(0.3)(outputs, _extras([0.5, 0.1], [0, 0, 8, 8], [4, 4, 12, 12]), A)
    assert kept == ["right"]
    iw_rec = rec["interwild"]
    assert iw_rec["hands"]["left"]["found"] is False and iw_rec["hands"]["right"]["found"] is True
    assert iw_rec["hands"]["right"]["root_trans"] == [0.0, 0.0, 0.0]
    assert iw_rec["hands"]["left"]["root_trans"] == [0.05, 0.0, 0.01]
    assert "one hand" in iw_rec["two_hand_decision"]
    kept, rec = T.postprocess_fn(0.0)(outputs, _extras([0.5, 0.1], [0, 0, 8, 8], [4, 4, 12, 12]), A)
    assert kept == ["right", "left"] and rec["interwild"]["two_hand_decision"].startswith("relative")
    np.testing.assert_allclose(rec["interwild"]["box_iou"], 4 / 28)  # (2x2) / (16 + 16 - 4) in original pixels
    kept, rec = T.postprocess_fn(0.0)(outputs, _extras([0.5, 0.5], [0, 0, 2, 2], [10, 10, 12, 12]), A)
    assert rec["interwild"]["two_hand_decision"].startswith("separate")


def test_crops_at_given_boxes_where_valid_predicted_elsewhere():
    """``crop_boxes`` (the config's train.crop_boxes=ground_truth): each valid hand is cut around its given box,
    squared and doubled like the predicted ones (hand-computed), the others at the predicted box; the box
    outputs stay the predicted ones."""
    from handjax.configs.interwild import get_config

    cfg = get_config("size=tiny")
    model = T.build_model(cfg)
    model.eval()
    h, w = T.geometry(cfg).image_hw
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, h, w, 3)), jnp.float32)
    free = model(images)
    # right box 4 wide x 2 high about (10, 9) -> square side 4, doubled: (6, 5, 14, 13); left box invalid in frame 0
    boxes = jnp.asarray([[[8.0, 8.0, 12.0, 10.0], [0.0, 0.0, 6.0, 6.0]]] * 2, jnp.float32)
    valid = jnp.asarray([[True, False], [True, True]])
    out = model(images, crop_boxes=boxes, crop_valid=valid)
    np.testing.assert_allclose(np.asarray(out["rhand_crop_box"]), [[6, 5, 14, 13]] * 2, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["lhand_crop_box"][1]), [-3, -3, 9, 9], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["lhand_crop_box"][0]), np.asarray(free["lhand_crop_box"][0]), atol=1e-6)
    for key in ("rhand_bbox", "lhand_bbox"):
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(free[key]), atol=1e-6)
    # the crops really come from the given boxes: the hand-to-original transform maps the crop onto the box
    hs = T.geometry(cfg).hand_size
    corner = np.asarray(out["hand2orig"][0]) @ np.array([hs, hs, 1.0])
    np.testing.assert_allclose(corner[:2], [14, 13], atol=1e-3)


def test_unknown_crop_boxes_mode_is_a_config_error():
    import pytest

    from handjax.configs.interwild import get_config

    cfg = get_config("size=tiny")
    cfg.train.crop_boxes = "gt"
    with pytest.raises(ValueError, match=r"config key train.crop_boxes must be one of .*'gt'"):
        T.SYSTEM.check(cfg)


def test_hands_stage_cuts_at_labelled_boxes_and_trains_the_hand_branch_only():
    """The ``hands`` warm-up stage: labelled boxes squared and doubled (the whole person crop's square where a hand
    has no label; hand-computed), ``InterWildModel.hands`` equal to the whole model's hand outputs at those crops,
    and its loss reaching the hand branch only (no gradient into the body branch or TransNet)."""
    import jax
    from flax import nnx

    from handjax.configs.interwild import get_config
    from handjax.losses.interwild import HAND_TERMS

    cfg = get_config("size=tiny")
    g = T.geometry(cfg)
    h, w = g.image_hw
    model = T.build_model(cfg)
    model.eval()
    rng = np.random.default_rng(1)
    boxes = jnp.asarray([[[8.0, 8.0, 12.0, 10.0], [2.0, 3.0, 8.0, 6.0]]] * 2, jnp.float32)
    valid = jnp.asarray([[True, False], [True, True]])
    crop = iw.labelled_crop_boxes(boxes, valid, (h, w))
    side = max(h, w)
    whole = [(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2]
    np.testing.assert_allclose(np.asarray(crop), [[[6, 5, 14, 13], whole], [[6, 5, 14, 13], [-1, -1.5, 11, 10.5]]],
                               atol=1e-5)
    images = jnp.asarray(rng.uniform(size=(2, h, w, 3)), jnp.float32)
    alone = nnx.jit(lambda m, x, c: m.hands(x, c[:, 0], c[:, 1]))(model, images, crop)
    full = nnx.jit(lambda m, x, bx: m(x, crop_boxes=bx, crop_valid=jnp.ones((2, 2), bool)))(model, images, boxes)
    for key in ("joint_img", "root_pose", "hand_pose", "shape", "root_trans", "hand2orig"):
        # row 2 (frame 0's left hand) left out: cut at the whole-crop square alone, at the unlabelled box in full
        a, f = np.delete(np.asarray(alone[key]), 2, axis=0), np.delete(np.asarray(full[key]), 2, axis=0)
        np.testing.assert_allclose(a, f, rtol=1e-5, atol=1e-5, err_msg=key)

    model.train()
    labels = dict(image=jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32), hand_box=boxes, hand_valid=valid)
    weights = {k: 1.0 for k in HAND_TERMS}
    ahead = np.array([0.0, 0.0, 0.5])  # camera-frame points half a metre in front
    batch = dict(labels, joint_valid=jnp.ones((2, 42)), joints2d=jnp.asarray(rng.uniform(4, 20, size=(2, 42, 2))),
                 joints3d=jnp.asarray(rng.normal(size=(2, 42, 3)) * 0.05 + ahead), has_joints3d=jnp.ones(2),
                 mano_valid=jnp.ones((2, 2)), mano_pose=jnp.asarray(rng.normal(size=(2, 2, 48)) * 0.2),
                 betas=jnp.asarray(rng.normal(size=(2, 2, 10))), has_vertices=jnp.ones(2),
                 vertices=jnp.asarray(rng.normal(size=(2, 2, 778, 3)) * 0.05 + ahead),
                 K=jnp.asarray([[[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]]] * 2))
    pair = T.mano_models(cfg)
    grads = nnx.jit(nnx.grad(lambda m, b: T.hands_loss_fn(m, b, None, geometry=g, mano_pair=pair,
                                                          weights=weights)[0]))(model, batch)
    norms = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param)):
        top = str(getattr(path[0], "key", path[0]))
        norms[top] = norms.get(top, 0.0) + float(jnp.sum(jnp.asarray(leaf) ** 2))
    for top in ("body_backbone", "body_box_net", "hand_trans_net"):
        assert norms[top] == 0.0, top
    for top in ("hand_backbone", "hand_position_net", "hand_rotation_net"):
        assert norms[top] > 0.0, top
