"""InterWild parity with the PyTorch reference (tests/torch_reference/interwild_torch.py, random weights, perturbed
BN statistics): a checkpoint in the released format (``{'epoch', 'network' with module. prefixes, 'optimizer'}``
plus a legacy ``joint_regressor``) converted through ``python -m handjax.convert interwild``; then boxes, box
confidences, 2.5D joints, MANO parameters (as rotation matrices), root cameras and the relative translation agree
within 1e-4 (relative, float32), and the gradients of the iw_rel_trans term w.r.t. TransNet's weights agree."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import nnx  # noqa: E402

from handjax.convert import __main__ as convert_cli  # noqa: E402
from handjax.convert.interwild import build_model, model_config  # noqa: E402
from handjax.geometry import axis_angle_to_matrix  # noqa: E402
from handjax.models import interwild as iw  # noqa: E402
from handjax.models.checkpoint import load_model, read_meta  # noqa: E402
from torch_reference.interwild_torch import InterWildTorch  # noqa: E402

GEOM = iw.Geometry(image_hw=(96, 64), body_downsample=2, hand_size=64, depth_bins=8, trans_hm=16, sigma=2.5)
SIZES = dict(deconv_channels=16, rot_channels=16)


def _reference(seed=0):
    torch.manual_seed(seed)
    net = InterWildTorch(image_hw=GEOM.image_hw, body_depth=18, hand_depth=18, hand_size=GEOM.hand_size,
                         depth_bins=GEOM.depth_bins, trans_hm=GEOM.trans_hm, sigma=GEOM.sigma, **SIZES)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
        # the box size heads: boxes of a few heatmap cells so that the crops see the image
        for head in (net.body_box_net.rhand_size, net.body_box_net.lhand_size):
            head[2].bias.copy_(torch.tensor([3.0, 3.0]))
    return net.eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("interwild")
    net = _reference()
    network = {f"module.{k}": v for k, v in net.state_dict().items()}
    network["module.joint_regressor.weight"] = torch.zeros(63, 2334)
    network["module.joint_regressor.bias"] = torch.zeros(63)
    opt = torch.optim.Adam(net.parameters())
    torch.save({"epoch": 6, "network": network, "optimizer": opt.state_dict()}, d / "snapshot_6.pth")
    code = convert_cli.main(["interwild", "--checkpoint", str(d / "snapshot_6.pth"), "--out", str(d / "out"),
                             "--brief"])
    assert code == 0
    return dict(net=net, out=d / "out", n_tensors=len(network))


def _model(out):
    meta = read_meta(str(out))
    model = build_model(meta, GEOM)
    load_model(model, str(out))
    model.eval()
    return model, meta


def test_every_tensor_accounted_for_and_sizes_read(converted):
    report = (converted["out"] / "conversion_report.txt").read_text()
    assert "joint_regressor.weight" in report and "paper-era" in report
    used = [line for line in report.splitlines() if line.startswith("    used ")]
    ignored = [line for line in report.splitlines() if line.startswith("    ignored  ")]
    assert len(used) + len(ignored) == converted["n_tensors"]
    assert f"{len(used)} tensors assigned, {len(ignored)} ignored, 0 target leaves kept" in report
    _, meta = _model(converted["out"])
    assert (meta["body_depth"], meta["hand_depth"], meta["trans_depth"]) == (18, 18, 18)
    assert meta["deconv_channels"] == 16 and meta["depth_bins"] == 8 and meta["trans_hm"] == 16
    assert meta["converter"] == "handjax.convert.interwild.convert_interwild" and meta["epoch"] == 6


def test_model_config_errors_name_the_key():
    with pytest.raises(ValueError, match="hand_position_net.conv.0.weight"):
        model_config({"x": np.zeros(1)}, "snap.pth")


def _image(seed=3):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(2, GEOM.image_hw[0], GEOM.image_hw[1], 3)).astype(np.float32)


def _close(a, b, name, rtol=1e-4, atol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max()) / scale
    assert err < max(rtol, atol), f"{name}: max relative difference {err:.2e}"


def test_forward_parity_with_the_torch_reference(converted):
    model, _ = _model(converted["out"])
    img = _image()
    with torch.no_grad():
        ref = converted["net"](torch.tensor(img).permute(0, 3, 1, 2))
    out = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(img))
    for key in ("rhand_center", "lhand_center", "rhand_size", "lhand_size", "rhand_conf", "lhand_conf",
                "rhand_bbox", "lhand_bbox", "joint_img", "shape", "root_trans", "rel_trans"):
        _close(out[key], ref[key].numpy(), key)
    for key, n in (("root_pose", 1), ("hand_pose", 15)):
        R = axis_angle_to_matrix(out[key].reshape(-1, n, 3))
        R_ref = axis_angle_to_matrix(jnp.asarray(ref[key].numpy()).reshape(-1, n, 3))
        _close(R, R_ref, key)
    # the boxes are not degenerate and the crops see the image
    assert np.all(np.abs(np.asarray(out["rhand_bbox"][:, 2] - out["rhand_bbox"][:, 0])) > 1)


def test_rel_trans_loss_gradients_match(converted):
    model, _ = _model(converted["out"])
    net = converted["net"]
    img = _image(4)
    gt = np.array([[0.1, -0.05, 0.02], [0.0, 0.2, -0.1]], np.float32)

    def loss(m):
        return jnp.mean(jnp.abs(m(jnp.asarray(img))["rel_trans"] - gt))

    grads = nnx.jit(nnx.grad(loss))(model)
    net.zero_grad()
    out = net(torch.tensor(img).permute(0, 3, 1, 2))
    (out["rel_trans"] - torch.tensor(gt)).abs().mean().backward()
    _close(grads.hand_trans_net.fc.kernel[...], net.hand_trans_net.fc[0].weight.grad.numpy().T, "fc grad")
    _close(grads.hand_trans_net.conv.kernel[...], net.hand_trans_net.conv[0].weight.grad.numpy().transpose(2, 3, 1, 0),
           "conv grad")
    # gradients stop at the detached joints: nothing reaches the hand branch from this term
    assert float(jnp.abs(grads.hand_position_net.conv.kernel[...]).max()) == 0.0
