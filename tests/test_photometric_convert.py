"""handobjectconsist converter: a PyTorch reference MeshRegNet (tests/torch_reference/meshregnet_torch.py, written
from the notes) with random weights, saved in the release's libyana format (pickled StepLR scheduler included),
converted through the real CLI (``python -m handjax.convert handobjectconsist``), then MANO parameters, hand joints
and vertices and the placed object compared with handjax's MeshRegNet + decode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from handjax import mano
from handjax.convert.__main__ import main as convert_main
from handjax.convert.handobjectconsist import build_model
from handjax.mano.builtin import builtin_mano_arrays
from handjax.models import meshregnet as mr
from handjax.models.checkpoint import load_model, read_meta
from tests.torch_reference.meshregnet_torch import MeshRegNetRef, save_release

H, W = 48, 64
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _reference(seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    adaptor = rng.uniform(0.0, 2.0 / 778, (21, 778)).astype(np.float32)
    ref = MeshRegNetRef(builtin_mano_arrays("right"), adaptor=adaptor, fhb_shape=rng.normal(size=10))
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, torch.nn.Linear) and m.weight.requires_grad:
                m.weight.mul_(0.5)
    return ref.eval()


def test_converted_release_matches_the_reference(tmp_path, capsys):
    ref = _reference()
    ckpt = tmp_path / "checkpoint_200.pth"
    save_release(ref, ckpt)
    out = tmp_path / "out"
    assert convert_main(["handobjectconsist", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    # every tensor accounted for: MANO buffers and the unused ones ignored with reasons, the pickled scheduler inert
    for key in ("mano_branch.mano_layer_right.th_shapedirs", "mano_branch.mano_layer_left.th_hands_mean",
                "fhb_shape", "base_net.fc.weight", "adaptor.J_regressor", "base_net.bn1.num_batches_tracked"):
        assert f"ignored  {key}:" in report
    assert "used     adaptor.adaptor.weight -> adaptor" in report and "'scheduler'" in report
    assert "StepLR" in report
    meta = read_meta(str(out))
    assert meta["fhb_adaptor"] and meta["use_shape"] and meta["ncomps"] == 15 and meta["epoch"] == 200

    model = build_model(meta, abstract=True)
    load_model(model, str(out))
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, (2, H, W, 3)).astype(np.float32)
    K = np.array([[[60.0, 0, 30.0], [0, 60.0, 26.0], [0, 0, 1]], [[70.0, 0, 33.0], [0, 70.0, 22.0], [0, 0, 1]]],
                 np.float32)
    canon = rng.normal(0, 0.04, (2, 30, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.as_tensor(x).permute(0, 3, 1, 2), torch.as_tensor(K), torch.as_tensor(canon))
    want = {k: v.numpy() for k, v in want.items()}

    hand = mano.load_model(None, "right")
    conv = mr.model_convention("manopth")

    @jax.jit
    def run(images, k, c):
        raw = model(images)  # ImageNet-normalised input -> upstream's to_tensor - 0.5 inside
        return raw, mr.decode(raw, k, (H, W), hand, object_canonical=c, convention=conv, adaptor=model.adaptor[...],
                              **mr.UPSTREAM_PLACEMENT)

    model.eval()
    imagenet = ((x + 0.5) - IMAGENET_MEAN) / IMAGENET_STD
    raw, got = run(jnp.asarray(imagenet), jnp.asarray(K), jnp.asarray(canon))
    np.testing.assert_allclose(np.asarray(raw["pose"]), want["pose"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(raw["betas"]), want["shape"], rtol=1e-4, atol=1e-5)
    for name, ours, theirs in (("joints", got.hand.joints, want["joints"]), ("vertices", got.hand.vertices,
                                                                             want["verts"]),
                               ("object", got.object.vertices, want["obj_verts"])):
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


def test_not_a_meshregnet_checkpoint_is_an_error_naming_the_key(tmp_path, capsys):
    torch.save({"epoch": 1, "state_dict": {"base_net.conv1.weight": torch.zeros(64, 3, 7, 7)}}, tmp_path / "bad.pth")
    assert convert_main(["handobjectconsist", "--checkpoint", str(tmp_path / "bad.pth"), "--out",
                         str(tmp_path / "o")]) == 1
    assert "layer" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["mano_branch.pose_reg.bias"])
def test_missing_weight_is_reported(tmp_path, capsys, missing):
    ref = _reference(2)
    sd = {k: v for k, v in ref.state_dict().items() if k != missing}
    torch.save({"epoch": 3, "network": "correspnet", "state_dict": sd}, tmp_path / "c.pth")
    assert convert_main(["handobjectconsist", "--checkpoint", str(tmp_path / "c.pth"), "--out",
                         str(tmp_path / "o")]) == 1
    assert "heads.pose_reg.bias" in capsys.readouterr().err
