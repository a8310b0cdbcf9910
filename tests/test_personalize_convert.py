"""IdHandMesh checkpoints: the PyTorch reference (tests/torch_reference/idhandmesh_torch.py, random weights) saved
in the release's format, converted through the CLI (``python -m handjax.convert idhandmesh``), and the converted
handjax model's pose stages, betas, confidence, joints and vertices against the reference's (1e-4 relative).
ResNet-18 backbones at 64x64 keep it fast (the release uses ResNet-50: the same mapping, depth detected)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from handjax import mano
from handjax.convert.__main__ import main as convert_main
from handjax.convert.idhandmesh import build_model
from handjax.mano.builtin import builtin_mano_arrays
from handjax.models import idhandmesh as idm
from handjax.models.checkpoint import load_model, read_meta
from tests.torch_reference.idhandmesh_torch import IdHandMeshRef, save_release


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _reference(kind: str, seed: int) -> IdHandMeshRef:
    torch.manual_seed(seed)
    ref = IdHandMeshRef(kind, builtin_mano_arrays("right"), depth=18)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        for mlp in ref.pose_6d_extractor:  # pose updates of a realistic size (not rotations of a huge 6D)
            mlp[-1].weight.mul_(0.1)
    return ref.eval()


@pytest.mark.parametrize("kind", ["confidence", "identity"])
def test_converted_checkpoint_matches_the_reference(kind, tmp_path, capsys):
    ref = _reference(kind, seed=3 if kind == "identity" else 4)
    ckpt = tmp_path / "checkpoint_last.pt"
    save_release(ref, ckpt)
    assert convert_main(["idhandmesh", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                         "--kind", kind]) == 0
    report = capsys.readouterr().out
    n_keys = len(ref.state_dict())
    assert report.count("    used     ") + report.count("    ignored  ") == n_keys  # every tensor accounted for
    for buffer in ("mano_layer.th_shapedirs", "th_selected_comps", "th_hands_mean", "j_regressor"):
        assert f"ignored  {buffer}:" in report
    meta = read_meta(str(tmp_path / "out"))
    assert meta["kind"] == kind and meta["depth"] == 18 and meta["feature_dim"] == 1000
    model = build_model(meta)
    load_model(model, str(tmp_path / "out"))
    model.eval()

    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (2, 64, 64, 3)).astype(np.float32)
    betas_in = rng.normal(0, 1, (2, 10)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
        betas_ref = want["betas"] if kind != "identity" else torch.from_numpy(betas_in)
        verts_ref, joints_ref = ref.mesh(want["pose6d"][0], betas_ref)
    got = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(images))
    assert len(got["pose6d"]) == 3
    for k in range(3):
        assert _rel(got["pose6d"][k], want["pose6d"][k].numpy()) < 1e-4, k
    betas = got["betas"] if kind != "identity" else jnp.asarray(betas_in)
    if kind != "identity":
        assert _rel(got["betas"], want["betas"].numpy()) < 1e-4
        assert _rel(got["conf"], want["conf"].numpy()) < 1e-4
    else:
        assert "betas" not in got and "conf" not in got
    _, out = jax.jit(idm.mano_mesh)(mano.load_model(None, "right"), got["pose6d"][0], betas)
    assert _rel(np.asarray(out.vertices) / idm.UNIT, verts_ref.numpy()) < 1e-4
    assert _rel(np.asarray(out.joints) / idm.UNIT, joints_ref.numpy()) < 1e-4


def test_kind_mismatch_and_bad_files_are_errors(tmp_path, capsys):
    ref = _reference("baseline", seed=5)
    ckpt = tmp_path / "checkpoint_last.pt"
    save_release(ref, ckpt)
    assert convert_main(["idhandmesh", "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"),
                         "--kind", "identity"]) == 1
    assert "describe the baseline model" in capsys.readouterr().err
    sd = ref.state_dict()
    del sd["shape_extractor.9.bias"]
    torch.save({"epoch": 1, "model_state_dict": sd}, tmp_path / "broken.pt")
    assert convert_main(["idhandmesh", "--checkpoint", str(tmp_path / "broken.pt"), "--out",
                         str(tmp_path / "b")]) == 1
    assert "shape.layers.3.bias" in capsys.readouterr().err
