"""TempCLR checkpoint converter and ``python -m handjax.convert`` against a reference PyTorch TempCLR.

The reference (written here from tempclr.md sections 1-2) has TempCLR's module
tree and state-dict layout: top-level ``*_idxs`` / ``*_mean`` / ``param_mean``
buffers, MANO buffers under ``model.*``, the 6D decoders' ``mean``, a
torchvision-named ``backbone`` and ``regressor.module.layer_000.0`` /
``layer_001.0`` / ``output_layer`` with ``regressor.mean_param``. Its forward:
ResNet -> 3 shared-MLP stages from mean_param -> interleaved 6D -> MANO LBS
(built-in hand arrays) + tips 318, 443, 671, 554, 720 picked through faces and
one-hot barycentrics (TempCLR's selector) -> weak perspective with softplus.
The MANO buffers saved in the checkpoint are random stand-ins (they must never
reach the converted checkpoint). Depth 18, 64x64 images, batch 2.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from handjax import mano  # noqa: E402
from handjax.convert import MANO_REASON, ConversionError  # noqa: E402
from handjax.convert.__main__ import main as cli_main  # noqa: E402
from handjax.convert.tempclr import (  # noqa: E402
    build_tempclr_model,
    detect_tempclr_depth,
    resolve_checkpoint,
    tempclr_model_from_state_dict,
    tempclr_rules,
)
from handjax.mano.builtin import builtin_mano_arrays  # noqa: E402
from handjax.models.resnet import ResNet  # noqa: E402
from handjax.models.tempclr import decode, weak_perspective  # noqa: E402
from handjax.models.checkpoint import load_model  # noqa: E402
from torch_reference.resnet_torch import ResNet as TorchResNet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIPS = (318, 443, 671, 554, 720)  # TempCLR's yaml order: index, middle, pinky, ring, thumb
PARTS = (("wrist_pose", 6), ("hand_pose", 90), ("betas", 10), ("camera", 3))
MANO_SHAPES = {(778, 3), (778, 3, 10), (135, 2334), (16, 778), (778, 16), (778, 3, 135), (1538, 3)}


# --------------------------------------------------------------------------- reference PyTorch TempCLR


def rot6d_interleaved(x: torch.Tensor) -> torch.Tensor:
    """ExPose/TempCLR ContinuousRotReprDecoder: (N, 6) -> (N, 3, 3), columns a=(r0,r2,r4), b=(r1,r3,r5)."""
    r = x.reshape(-1, 3, 2)
    b1 = F.normalize(r[:, :, 0], dim=1)
    b = r[:, :, 1]
    b2 = F.normalize(b - (b1 * b).sum(1, keepdim=True) * b1, dim=1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=1)], dim=-1)


class ExtraJointSelector(nn.Module):
    """Tips as barycentric combinations of the vertices of one face each (one-hot weights)."""

    def __init__(self, faces: np.ndarray, tip_vertices):
        super().__init__()
        face_ids, bcs = [], []
        for v in tip_vertices:
            fid = int(np.nonzero((faces == v).any(1))[0][0])
            face_ids.append(fid)
            bcs.append((faces[fid] == v).astype(np.float32))
        self.register_buffer("bcs", torch.tensor(np.stack(bcs)))
        self.register_buffer("face_ids", torch.tensor(face_ids, dtype=torch.int64))

    def forward(self, vertices, faces):
        corners = vertices[:, faces[self.face_ids]]  # (B, 5, 3 corners, 3)
        return (corners * self.bcs[None, :, :, None]).sum(2)


class TorchMANO(nn.Module):
    """TempCLR's MANO buffers (smplx naming) and a smplx-style LBS with rotation matrices."""

    def __init__(self, arrays: dict):
        super().__init__()
        f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
        faces = np.asarray(arrays["f"]).astype(np.int64)
        self.register_buffer("faces_tensor", torch.tensor(faces))
        self.register_buffer("v_template", f32(arrays["v_template"]))
        self.register_buffer("shapedirs", f32(arrays["shapedirs"][:, :, :10]))
        self.register_buffer("J_regressor", f32(arrays["J_regressor"]))
        self.register_buffer("posedirs", f32(np.reshape(arrays["posedirs"], (-1, 135)).T))
        parents = np.asarray(arrays["kintree_table"][0]).astype(np.int64)
        parents[0] = -1
        self.register_buffer("parents", torch.tensor(parents))
        self.register_buffer("lbs_weights", f32(arrays["weights"]))
        self.extra_joint_selector = ExtraJointSelector(faces, TIPS)

    def forward(self, rotmats: torch.Tensor, betas: torch.Tensor):
        b = betas.shape[0]
        v_shaped = self.v_template + torch.einsum("bl,mkl->bmk", betas, self.shapedirs)
        joints = torch.einsum("bik,ji->bjk", v_shaped, self.J_regressor)
        pose_feature = (rotmats[:, 1:] - torch.eye(3)).reshape(b, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(b, -1, 3)
        parents = self.parents.tolist()
        rel = joints.clone()
        rel[:, 1:] -= joints[:, parents[1:]]
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(b, 16, 1, 4)
        local = torch.cat([torch.cat([rotmats, rel[..., None]], -1), bottom], -2)
        chain = [local[:, 0]]
        for i in range(1, 16):
            chain.append(chain[parents[i]] @ local[:, i])
        world = torch.stack(chain, 1)
        skin = world.clone()
        skin[..., :3, 3] -= (world[..., :3, :3] @ joints[..., None])[..., 0]
        per_vertex = torch.einsum("vj,bjxy->bvxy", self.lbs_weights, skin)
        homo = torch.cat([v_posed, torch.ones_like(v_posed[..., :1])], -1)
        vertices = (per_vertex @ homo[..., None])[..., :3, 0]
        tips = self.extra_joint_selector(vertices, self.faces_tensor)
        return vertices, torch.cat([world[:, :, :3, 3], tips], 1)


class DecoderMean(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).repeat(n // 6))


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden=(1024, 1024), out_dim: int = 109):
        super().__init__()
        for i, h in enumerate(hidden):
            self.add_module(f"layer_{i:03d}", nn.Sequential(nn.Linear(in_dim, h), nn.ReLU()))
            in_dim = h
        self.output_layer = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        for name, child in self.named_children():
            x = child(x)
        return x


class IterativeRegression(nn.Module):
    def __init__(self, feat_dim: int, mean_param: torch.Tensor, num_stages: int = 3):
        super().__init__()
        self.module = MLP(feat_dim + 109)
        self.register_buffer("mean_param", mean_param.reshape(1, -1))
        self.num_stages = num_stages

    def forward(self, feat):
        x = self.mean_param.expand(feat.shape[0], -1)
        stages = []
        for _ in range(self.num_stages):
            x = x + self.module(torch.cat([feat, x], 1))
            stages.append(x)
        return stages


class TorchTempCLR(nn.Module):
    """TempCLR's MANORegressor at inference, with its state-dict layout."""

    def __init__(self, depth: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        mean = torch.randn(109, generator=g) * 0.5
        mean[:96] += torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).repeat(16)
        offset = 0
        for name, n in PARTS:
            self.register_buffer(f"{name}_idxs", torch.arange(offset, offset + n))
            self.register_buffer(f"{name}_mean", torch.randn(n, generator=g))
            offset += n
        self.register_buffer("param_mean", torch.randn(1, 109, generator=g))  # deliberately not x0
        self.model = TorchMANO(builtin_mano_arrays("right"))
        self.wrist_pose_decoder = DecoderMean(6)
        self.hand_pose_decoder = DecoderMean(90)
        torch.manual_seed(seed)
        self.backbone = TorchResNet(depth)
        del self.backbone.fc
        self.regressor = IterativeRegression(self.backbone.num_features, mean)
        randomise_bn(self.backbone, seed)

    def forward(self, images: torch.Tensor) -> dict:
        stages = self.regressor(self.backbone.forward_features(images))
        x = stages[-1]
        rotmats = rot6d_interleaved(x[:, :96].reshape(-1, 6)).reshape(-1, 16, 3, 3)
        vertices, joints = self.model(rotmats, x[:, 96:106])
        scale = F.softplus(x[:, 106])
        trans = x[:, 107:109]
        return {"stages": stages, "rotmats": rotmats, "vertices": vertices, "joints": joints, "scale": scale,
                "translation": trans, "proj_joints": scale[:, None, None] * (joints[..., :2] + trans[:, None])}


def randomise_bn(model: nn.Module, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.num_batches_tracked.fill_(123)


def released_state_dict(model: TorchTempCLR) -> dict:
    """The model's state dict with the MANO buffers replaced by random stand-ins (as a release would carry)."""
    g = torch.Generator().manual_seed(7)
    sd = model.state_dict()
    for key, value in sd.items():
        if key.startswith("model."):
            sd[key] = (torch.randint(0, 700, value.shape, generator=g) if value.dtype == torch.int64
                       else torch.rand(value.shape, generator=g) + 5.0)
    return sd


def numpy_sd(sd: dict) -> dict:
    return {k: v.detach().numpy().copy() for k, v in sd.items()}


class Evil:
    """Pickles to os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def save_release(sd: dict, folder: Path, name: str, zip_format: bool, pointer: str | None, extra=None) -> Path:
    """torch.save TempCLR's checkpoint dict into folder/name (+ latest_checkpoint with ``pointer``)."""
    folder.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.Adam([torch.zeros(3, requires_grad=True)])
    ckpt = {"model": sd, "optimizer": opt.state_dict(), "iteration": 5, **(extra or {})}
    torch.save(ckpt, folder / name, _use_new_zipfile_serialization=zip_format)
    if pointer is not None:
        (folder / "latest_checkpoint").write_text(pointer + "\n")
    return folder / name


# --------------------------------------------------------------------------- fixtures

BLOCKED_SCRIPT = r"""
import contextlib, io, json, runpy, sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
try:
    import torch
    raise SystemExit("torch import was not blocked")
except ImportError:
    pass
from handjax.convert.tempclr import convert_tempclr
out = {}
for name, job in json.loads(sys.argv[1]).items():
    if job["mode"] == "api":
        report = convert_tempclr(job["src"], job["dst"])
        out[name] = {"checkpoint": report.checkpoint, "pointer": report.pointer, "depth": report.depth,
                     "format": report.load.format, "placeholders": report.load.placeholders,
                     "assigned": report.mapping.assigned, "ignored": report.mapping.ignored,
                     "summary": report.summary()}
    else:  # `python -m handjax.convert <argv>`, in this torch-blocked process
        sys.argv = ["python -m handjax.convert", *job["argv"]]
        stdout, stderr, code = io.StringIO(), io.StringIO(), None
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_module("handjax.convert", run_name="__main__", alter_sys=True)
            except SystemExit as e:
                code = e.code
        out[name] = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
assert "torch" not in sys.modules, "torch was imported"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Reference model, its checkpoint in four layouts and a torchvision ResNet-18 file, all converted in one
    subprocess where torch cannot be imported (through the API and through ``python -m handjax.convert``)."""
    root = tmp_path_factory.mktemp("tempclr")
    model = TorchTempCLR(18).eval()
    sd = released_state_dict(model)
    marker = root / "pwned"
    files = {
        # folder whose latest_checkpoint holds a path relative to that folder (zip format)
        "zip_rel": save_release(sd, root / "zip" / "checkpoints", "tempclr_ho3d", True, "tempclr_ho3d"),
        # latest_checkpoint holding an absolute path (legacy format)
        "legacy_abs": save_release(sd, root / "legacy" / "checkpoints", "tempclr_ho3d", False, None),
        # latest_checkpoint holding a path relative to the CWD (how the original resolves it)
        "cwd_rel": save_release(sd, root / "store", "tempclr_ho3d", False, None),
        # a malicious object next to the weights
        "evil": save_release(sd, root / "evil", "tempclr_ho3d", True, None,
                             extra={"scheduler": Evil(f"touch {marker}")}),
    }
    (root / "legacy" / "checkpoints" / "latest_checkpoint").write_text(str(files["legacy_abs"]))
    (root / "cwd" / "checkpoints").mkdir(parents=True)
    (root / "cwd" / "checkpoints" / "latest_checkpoint").write_text("store/tempclr_ho3d")
    torch.manual_seed(1)
    resnet = TorchResNet(18).eval()
    randomise_bn(resnet, seed=3)
    torch.save(resnet.state_dict(), root / "resnet18-test.pth")
    outs = {name: root / f"out_{name}" for name in files}
    outs["cli_resnet"] = root / "out_cli_resnet"
    jobs = {
        "zip_rel": {"mode": "api", "src": str(root / "zip" / "checkpoints"), "dst": str(outs["zip_rel"])},
        "legacy_abs": {"mode": "cli", "argv": ["tempclr", "--checkpoint",
                                               str(root / "legacy" / "checkpoints" / "latest_checkpoint"),
                                               "--out", str(outs["legacy_abs"])]},
        "cwd_rel": {"mode": "api", "src": str(root / "cwd" / "checkpoints"), "dst": str(outs["cwd_rel"])},
        "evil": {"mode": "api", "src": str(files["evil"]), "dst": str(outs["evil"])},
        "cli_resnet": {"mode": "cli", "argv": ["torchvision-resnet", "--checkpoint", str(root / "resnet18-test.pth"),
                                               "--out", str(outs["cli_resnet"]), "--brief"]},
    }
    script = root / "blocked.py"
    script.write_text(BLOCKED_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(script), json.dumps(jobs)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"root": root, "model": model, "sd": sd, "marker": marker, "outs": outs, "files": files,
            "resnet": resnet, "reports": json.loads(proc.stdout.strip().splitlines()[-1])}


def jax_leaves(tree) -> list:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def restored(out_dir: Path):
    """TempCLRModel(18, hidden 1024-1024) built abstractly (no init compute) with the converted checkpoint loaded."""
    model = build_tempclr_model(18, abstract=True)
    meta = load_model(model, str(out_dir))
    model.eval()
    return model, meta


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def reference_run(release):
    """Random 64x64 images (batch 2) and the reference model's outputs on them."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = release["model"](images)
    return jnp.asarray(images.numpy().transpose(0, 2, 3, 1)), ref


def close(got, expected: torch.Tensor, what: str):
    """Within 1e-4 relative (to the largest magnitude of the reference), fp32."""
    expected = expected.detach().numpy()
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(),
                               err_msg=what)


def test_converted_model_matches_torch_forward(release, reference_run):
    model, meta = restored(release["outs"]["zip_rel"])
    assert meta["system"] == "tempclr" and meta["depth"] == 18 and meta["hidden"] == [1024, 1024]
    images, ref = reference_run
    mano_model = mano.load_model(None, "right")

    @nnx.jit
    def forward(model, images):
        stages = model(images)
        return stages, decode(stages[-1], mano_model, 224, convention="tempclr"), weak_perspective(stages[-1])

    stages, out, (scale, trans) = forward(model, images)
    assert len(stages) == 3
    for k in range(3):
        close(stages[k], ref["stages"][k], f"stage {k}")
    close(out.rotmats, ref["rotmats"], "rotmats")
    close(out.vertices, ref["vertices"], "vertices")
    close(out.joints, ref["joints"], "joints")
    close(scale, ref["scale"], "camera scale")
    close(trans, ref["translation"], "camera translation")
    close(out.normalized_joints2d(224), ref["proj_joints"], "projected joints")
    # the stages really move away from x0 and the rotations are far from identity
    assert float(jnp.abs(stages[0] - model.regressor.mean_param[...]).max()) > 0.1
    assert float(np.abs(ref["rotmats"].numpy() - np.eye(3)).max()) > 0.5


def test_all_layouts_give_identical_weights(release):
    """zip / legacy formats and the three ways of pointing at the file convert to the same model."""
    ref_model, _ = restored(release["outs"]["zip_rel"])
    ref_state = nnx.to_pure_dict(nnx.state(ref_model))
    for name in ("legacy_abs", "cwd_rel", "evil"):
        model, meta = restored(release["outs"][name])
        assert meta["source"] == str(release["files"][name]), name
        leaves = zip(*(jax_leaves(nnx.to_pure_dict(nnx.state(m))) for m in (ref_model, model)))
        for a, b in leaves:
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert len(jax_leaves(ref_state)) == 100 + 7  # 100 backbone leaves + 3 linear layers x 2 + mean_param
    reports = release["reports"]
    assert reports["zip_rel"]["format"] == "zip" and ": legacy format, 147 tensors" in reports["legacy_abs"]["stdout"]
    assert reports["zip_rel"]["pointer"] == str(release["root"] / "zip" / "checkpoints" / "latest_checkpoint")
    assert reports["cwd_rel"]["checkpoint"] == str(release["files"]["cwd_rel"])
    assert reports["evil"]["pointer"] is None


def test_config_restore_and_eval_prediction_path(release, reference_run):
    """configs/tempclr.py (tiny, hidden overridden to 1024-1024) -> build_model -> restore_model(eval.checkpoint)
    -> the eval stage's predict_fn: FreiHAND-ordered joints equal the reference's, remapped with tempclr.md 1.10."""
    import importlib.util

    from handjax.train.loop import restore_model
    from handjax.train.tempclr import build_model, predict_fn

    spec = importlib.util.spec_from_file_location("tempclr_config", REPO / "configs" / "tempclr.py")
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    cfg = config.get_config("size=tiny,pretrain=false")
    cfg.model.hidden, cfg.model.backbone = (1024, 1024), "resnet18"
    cfg.eval.checkpoint = str(release["outs"]["zip_rel"])
    model = nnx.eval_shape(lambda: build_model(cfg, with_projection=False))
    assert restore_model(model, cfg.eval.checkpoint) == -1
    model.eval()
    assert cfg.data.joint_convention == "freihand"
    remap = mano.joint_remap("tempclr", cfg.data.joint_convention)
    images, ref = reference_run
    out = nnx.jit(predict_fn(mano.load_model(None, "right"), remap, int(cfg.data.image_size)))(model, images)
    joints, vertices = out["joints"], out["vertices"]
    freihand_from_tempclr = [0, 13, 14, 15, 20, 1, 2, 3, 16, 4, 5, 6, 17, 10, 11, 12, 19, 7, 8, 9, 18]
    close(joints, ref["joints"][:, freihand_from_tempclr], "FreiHAND-ordered joints")
    close(vertices, ref["vertices"], "vertices")


def test_weights_are_the_torch_tensors(release):
    """Spot checks of individual leaves against the torch tensors (layout transforms)."""
    model, _ = restored(release["outs"]["legacy_abs"])
    sd = release["sd"]
    r = model.regressor
    np.testing.assert_array_equal(np.asarray(r.layers[0].kernel[...]), sd["regressor.module.layer_000.0.weight"].T)
    np.testing.assert_array_equal(np.asarray(r.layers[1].bias[...]), sd["regressor.module.layer_001.0.bias"])
    np.testing.assert_array_equal(np.asarray(r.output_layer.kernel[...]), sd["regressor.module.output_layer.weight"].T)
    np.testing.assert_array_equal(np.asarray(r.mean_param[...]), sd["regressor.mean_param"][0])
    assert not np.allclose(np.asarray(r.mean_param[...]), sd["param_mean"][0])
    np.testing.assert_array_equal(np.asarray(model.backbone.layer3[0].downsample[1].var[...]),
                                  sd["backbone.layer3.0.downsample.1.running_var"])
    np.testing.assert_array_equal(np.asarray(model.backbone.conv1.kernel[...]),
                                  sd["backbone.conv1.weight"].numpy().transpose(2, 3, 1, 0))


# --------------------------------------------------------------------------- accounting, safety, licence


def test_report_accounts_for_every_tensor(release):
    rep = release["reports"]["zip_rel"]
    sd = release["sd"]
    used = {src for src, _, _ in rep["assigned"]}
    ignored = dict(rep["ignored"])
    assert used.isdisjoint(ignored) and used | set(ignored) == set(sd)
    assert len(used) == 107 and len(ignored) == len(sd) - 107
    for key in ("model.v_template", "model.shapedirs", "model.posedirs", "model.J_regressor", "model.lbs_weights",
                "model.faces_tensor"):
        assert ignored[key] == MANO_REASON, key
    for key in ("model.parents", "model.extra_joint_selector.bcs", "model.extra_joint_selector.face_ids"):
        assert ignored[key].startswith(MANO_REASON), key
    for key in ("param_mean", "camera_mean", "hand_pose_idxs", "hand_pose_decoder.mean",
                "backbone.layer1.0.bn1.num_batches_tracked"):
        assert ignored[key], key
    assert "regressor.mean_param -> regressor.mean_param" in rep["summary"]
    assert "ignored  model.v_template: MANO buffer" in rep["summary"]


def test_malicious_pickle_is_neutralised(release):
    assert not release["marker"].exists()
    assert release["reports"]["evil"]["placeholders"] == {"posix.system": 1}
    # Control: the payload is live -- torch's unrestricted loader does run it.
    torch.load(release["files"]["evil"], weights_only=False)
    assert release["marker"].exists()
    release["marker"].unlink()


def test_converted_checkpoint_holds_no_mano_arrays(release):
    import orbax.checkpoint as ocp

    out = release["outs"]["zip_rel"]
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(str(out / "model"))
    shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(tree)]
    assert (1024, 1024) in shapes and (512 + 109, 1024) in shapes and (109,) in shapes  # the scan sees arrays
    assert not MANO_SHAPES & set(shapes)
    # the random MANO stand-ins (floats in [5, 6)) reach no stored array; real weights stay well below 5
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(tree) if np.size(x)) < 5.0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["conversion_report.txt", "handjax_model.json", "model"]
    meta = json.loads((out / "handjax_model.json").read_text())
    assert meta["system"] == "tempclr" and meta["depth"] == 18 and meta["iteration"] == 5


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def np_state(release):
    return numpy_sd(release["sd"])


def test_missing_keys_are_named(np_state):
    sd = dict(np_state)
    del sd["regressor.module.layer_001.0.bias"], sd["backbone.layer2.0.bn1.running_var"]
    with pytest.raises(ConversionError) as e:
        tempclr_model_from_state_dict(sd, source_name="ckpt.pth")
    assert e.value.missing_targets == ["backbone.layer2.0.bn1.var (128,) float32",
                                       "regressor.layers.1.bias (1024,) float32"]
    assert "ckpt.pth" in str(e.value) and "regressor.layers.1.bias" in str(e.value)


def test_extra_keys_are_named(np_state):
    sd = dict(np_state)
    sd["regressor.module.layer_000.1.weight"] = np.ones(3, np.float32)
    sd["temporal_backbone.gru.weight_ih_l0"] = np.ones((4, 2), np.float32)
    with pytest.raises(ConversionError) as e:
        tempclr_model_from_state_dict(sd)
    assert sorted(e.value.unused_sources) == ["regressor.module.layer_000.1.weight (3,)",
                                              "temporal_backbone.gru.weight_ih_l0 (4, 2)"]
    assert not e.value.missing_targets


def test_wrong_shapes_are_named(np_state):
    sd = dict(np_state)
    sd["regressor.module.output_layer.weight"] = np.zeros((108, 1024), np.float32)
    sd["regressor.module.layer_000.0.weight"] = np.zeros((1024, 2157), np.float32)  # a ResNet-50 head
    sd["regressor.mean_param"] = np.zeros((109,), np.float32)
    with pytest.raises(ConversionError) as e:
        tempclr_model_from_state_dict(sd)
    assert e.value.shape_mismatches == [
        "regressor.module.output_layer.weight (108, 1024) -> regressor.output_layer.kernel: after 'linear' "
        "(1024, 108), target expects (1024, 109)"]
    errors = "\n".join(e.value.transform_errors)
    assert "regressor.module.layer_000.0.weight -> regressor.layers.0.kernel" in errors and "ResNet-18" in errors
    assert "regressor.mean_param -> regressor.mean_param" in errors and "[1, P]" in errors


def test_unknown_backbone_layout_is_named(np_state):
    sd = {k: v for k, v in np_state.items() if not k.startswith("backbone.layer4.1.")}
    with pytest.raises(ValueError, match=r"ckpt\.pth: 'backbone\.layer\*' keys describe basic blocks \(2, 2, 2, 1\)"):
        detect_tempclr_depth(sd, "ckpt.pth")


def test_depth50_keys_and_shapes_map_onto_the_model():
    """ResNet-50 (FreiHAND model): depth detection and full strict mapping, without a forward."""
    tv = TorchResNet(50)
    del tv.fc
    sd = {f"backbone.{k}": v.numpy() for k, v in tv.state_dict().items()}
    g = np.random.default_rng(0)
    head = {"regressor.module.layer_000.0.weight": (1024, 2157), "regressor.module.layer_000.0.bias": (1024,),
            "regressor.module.layer_001.0.weight": (1024, 1024), "regressor.module.layer_001.0.bias": (1024,),
            "regressor.module.output_layer.weight": (109, 1024), "regressor.module.output_layer.bias": (109,)}
    sd |= {k: g.standard_normal(s).astype(np.float32) for k, s in head.items()}
    assert sum(np.prod(s) for s in head.values()) == 3_371_117  # tempclr.md 2.2 (mean_param is a buffer)
    sd["regressor.mean_param"] = g.standard_normal((1, 109)).astype(np.float32)
    sd["param_mean"] = np.zeros((1, 109), np.float32)
    assert detect_tempclr_depth(sd) == 50
    model, depth, report = tempclr_model_from_state_dict(sd)
    assert depth == 50 and len(report.assigned) == 318 - 53 + 7
    np.testing.assert_array_equal(np.asarray(model.regressor.layers[0].kernel[...]),
                                  sd["regressor.module.layer_000.0.weight"].T)
    np.testing.assert_array_equal(np.asarray(model.backbone.layer1[0].downsample[0].kernel[...]),
                                  sd["backbone.layer1.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="depth 18 was asked for.*ResNet-50"):
        tempclr_model_from_state_dict(sd, depth=18)


def test_head_parameter_count_resnet18(np_state):
    """tempclr.md 2.2: 1,798,253 learnable head parameters in the ResNet-18 model."""
    head = [k for k in np_state if k.startswith("regressor.module.")]
    assert sum(np_state[k].size for k in head) == 1_798_253
    assert np_state["regressor.module.layer_000.0.weight"].shape == (1024, 621)
    with pytest.raises(ValueError, match="depth must be one of"):
        tempclr_rules(101)


def test_pointer_resolution_errors(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="no 'latest_checkpoint' file"):
        resolve_checkpoint(folder)
    (folder / "latest_checkpoint").write_text("")
    with pytest.raises(ValueError, match="latest_checkpoint: empty"):
        resolve_checkpoint(folder)
    (folder / "latest_checkpoint").write_text("/nowhere/out/checkpoints/tempclr_freihand\n")
    with pytest.raises(FileNotFoundError, match=r"points to '/nowhere/.*tried .*pass the checkpoint file"):
        resolve_checkpoint(folder)
    (folder / "tempclr_freihand").write_bytes(b"x")  # a foreign absolute path: the file beside the pointer
    assert resolve_checkpoint(folder) == (str(folder / "tempclr_freihand"), str(folder / "latest_checkpoint"))
    # relative: the pointer's folder wins over the CWD
    (folder / "latest_checkpoint").write_text("tempclr_freihand")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tempclr_freihand").write_bytes(b"y")
    assert resolve_checkpoint(folder / "latest_checkpoint") == (str(folder / "tempclr_freihand"),
                                                               str(folder / "latest_checkpoint"))
    (folder / "tempclr_freihand").unlink()
    assert resolve_checkpoint(folder)[0] == str(tmp_path / "tempclr_freihand")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "missing")


# --------------------------------------------------------------------------- CLI


def test_cli_tempclr_smoke(release):
    """``python -m handjax.convert tempclr`` (torch blocked) prints every tensor and writes a loadable checkpoint."""
    r = release["reports"]["legacy_abs"]
    assert r["code"] == 0, r["stderr"]
    out = release["outs"]["legacy_abs"]
    lines = r["stdout"].splitlines()
    assert "    used     regressor.module.layer_000.0.weight -> regressor.layers.0.kernel [first_layer_linear]" in lines
    assert "    ignored  model.posedirs: " + MANO_REASON in lines
    assert f"written: {out} (handjax model-only checkpoint)" in lines
    assert len([line for line in lines if line.startswith(("    used     ", "    ignored  "))]) == 147
    assert (out / "conversion_report.txt").read_text().strip() == r["stdout"].strip()


def test_cli_torchvision_resnet_smoke(release):
    """``python -m handjax.convert torchvision-resnet`` (depth detected, torch blocked) matches torch features."""
    r = release["reports"]["cli_resnet"]
    assert r["code"] == 0, r["stderr"]
    assert "100 tensors assigned, 22 ignored" in r["stdout"] and "    used     " not in r["stdout"]
    model = nnx.eval_shape(lambda: ResNet(18, rngs=nnx.Rngs(5)))
    assert load_model(model, str(release["outs"]["cli_resnet"]))["depth"] == 18
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = release["resnet"].forward_features(x).numpy()
    got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_cli_errors_name_the_problem(tmp_path, capsys, release):
    """Errors: exit status 1 and one line naming the file / key (in-process ``main``); usage errors exit 2."""
    assert cli_main(["tempclr", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert f"checkpoint not found: {tmp_path / 'nope'}" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("precious")
    assert cli_main(["tempclr", "--checkpoint", str(release["files"]["evil"]), "--out", str(tmp_path / "busy")]) == 1
    assert "refusing to write into it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["tempclr", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    resnet_file = release["root"] / "resnet18-test.pth"
    assert cli_main(["torchvision-resnet", "--checkpoint", str(resnet_file), "--depth", "50",
                     "--out", str(tmp_path / "x")]) == 1
    assert "--depth 50 was given, but the keys describe a ResNet-18" in capsys.readouterr().err
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    assert cli_main(["tempclr", "--checkpoint", str(tmp_path / "garbage.pth"), "--out", str(tmp_path / "y")]) == 1
    assert f"error: {tmp_path / 'garbage.pth'}" in capsys.readouterr().err
