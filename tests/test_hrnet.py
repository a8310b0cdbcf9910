"""Parity of handjax.models.HRNet with a PyTorch pose-HRNet written from the architecture facts.

The reference (tests/torch_reference/hrnet_torch.py) reproduces pose_hrnet's module tree; its W32
state_dict is checked against DIGIT's released key list (digit_state_dict_keys.tsv, backbone
part). Weights are copied with ``torch_key_to_nnx_path`` under a bijection check (every nnx
variable filled exactly once, shapes equal), so a naming or layout mismatch fails the copy.

BN statistics for eval-mode tests are calibrated (one train-mode pass over another batch with a
cumulative average, i.e. running stats = that batch's statistics) and then perturbed, so that
eval-mode activations stay O(1) through ~80 layers while the running statistics still differ
from the batch's own.
"""
import ast
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from handjax.models import TorchConv, registry  # noqa: E402
from handjax.models.hrnet import (  # noqa: E402
    HRNET_SPECS,
    HRNet,
    HRNetSpec,
    torch_key_to_nnx_path,
    upsample_nearest,
)
from torch_reference.hrnet_torch import PoseHRNet, pose_hrnet  # noqa: E402

DIGIT_KEYS = "/work/shared/reference/digit_state_dict_keys.tsv"
BACKBONE = "pose_reg.backbone."
# stage 4 with two modules: module 0 has the full 4x4 fusion (incl. the 3-step downsampling
# chain), module 1 fuses into branch 0 only, as in W32
TINY = HRNetSpec(width=4, layer1_planes=8, layer1_blocks=1, stages=((1, 1), (1, 1), (2, 1)))
MAPS = ("stem", "layer1", "stage2", "stage3", "stage4", "hr", "pooled")


# ----------------------------------------------------------------------------- helpers
def torch_tiny(**kw) -> PoseHRNet:
    return PoseHRNet(TINY.width, TINY.layer1_blocks, TINY.stages, layer1_planes=TINY.layer1_planes, **kw)


def nnx_from_torch(spec: HRNetSpec, state_dict: dict, **kw) -> HRNet:
    """Abstract nnx HRNet filled from a torch state_dict; asserts a key <-> variable bijection."""
    abstract = nnx.eval_shape(lambda: HRNet(spec, rngs=nnx.Rngs(0), **kw))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    filled = {}
    for key, tensor in state_dict.items():
        mapped = torch_key_to_nnx_path(key)
        if mapped is None:
            assert key.endswith("num_batches_tracked"), key
            continue
        path, transform = mapped
        arr = tensor.detach().numpy().copy()  # torch updates BN buffers in place
        if transform == "conv":
            arr = arr.transpose(2, 3, 1, 0)
        assert path in flat, f"torch key {key} -> {path} has no nnx variable"
        assert path not in filled, f"two torch keys map to {path}"
        var = flat[path]
        assert var.shape == arr.shape, (key, var.shape, arr.shape)
        filled[path] = var.replace(jnp.asarray(arr, var.dtype))
    missing = set(flat) - set(filled)
    assert not missing, f"nnx variables without a torch key: {sorted(missing)}"
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def images(shape_nhwc, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape_nhwc).astype(np.float32)
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def randomise_torch(model: torch.nn.Module, seed: int, calib_hw: int) -> None:
    """Kaiming-normal kernels, random BN affine params, calibrated-then-perturbed running stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_out) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.momentum = None  # cumulative average: after one batch, running = batch stats
                m.reset_running_stats()
        model.train()
        model(torch.randn(2, 3, calib_hw, calib_hw, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.mul_(1 + 0.2 * torch.randn(c, generator=g)).add_(0.1 * torch.randn(c, generator=g))
                m.running_var.mul_(0.7 + 0.6 * torch.rand(c, generator=g))
                m.momentum = 0.1
                m.num_batches_tracked.zero_()


def make_pair(kind, seed=0, calib_hw=64, multi_scale_output=False, **kw):
    torch.manual_seed(seed)
    if kind == "tiny":
        tm, spec = torch_tiny(multi_scale_output=multi_scale_output), TINY
    else:
        tm, spec = pose_hrnet(kind, multi_scale_output=multi_scale_output), HRNET_SPECS[kind]
    randomise_torch(tm, seed, calib_hw)
    return tm, nnx_from_torch(spec, tm.state_dict(), multi_scale_output=multi_scale_output, **kw)


def nhwc(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).numpy()


def assert_close_rel(actual, expected, rel, what=""):
    """|a - e| <= rel * max|e| elementwise (relative to the tensor's scale)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = float(np.abs(expected).max())
    assert scale > 0, what
    err = float(np.abs(actual - expected).max())
    assert err <= rel * scale, f"{what}: max abs err {err:.3g} > {rel} * {scale:.3g}"


def compare_maps(out: dict, ref: dict, rel: float, what: str) -> None:
    for name in MAPS:
        if name.startswith("stage"):
            assert len(out[name]) == len(ref[name]), (what, name)
            for b, (a, e) in enumerate(zip(out[name], ref[name])):
                assert_close_rel(a, nhwc(e), rel, f"{what} {name}[{b}]")
        else:
            assert_close_rel(out[name], nhwc(ref[name]), rel, f"{what} {name}")


def torch_bn_stats(tm) -> dict:
    out = {}
    for key, t in tm.state_dict().items():
        mapped = torch_key_to_nnx_path(key)
        if mapped and mapped[1] in ("bn_mean", "bn_var"):
            out[mapped[0]] = t.detach().numpy().copy()
    return out


def nnx_bn_stats(jm) -> dict:
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(jm, nnx.BatchStat))}


def digit_backbone_keys() -> dict:
    """DIGIT's released backbone keys (prefix stripped) -> shape, from digit_state_dict_keys.tsv."""
    if not os.path.exists(DIGIT_KEYS):
        pytest.skip(f"{DIGIT_KEYS} (DIGIT's key list) is not on this machine")
    keys = {}
    with open(DIGIT_KEYS) as f:
        for line in f:
            if line.startswith(BACKBONE):
                key, shape, _ = line.rstrip("\n").split("\t")
                keys[key[len(BACKBONE):]] = ast.literal_eval(shape)
    return keys


# ----------------------------------------------------------------------------- structure
def test_w32_keys_shapes_and_parameter_count_match_digit():
    """HRNet-W32 <-> DIGIT's 1752 backbone entries: 1:1 names, shapes; 28,535,552 parameters."""
    keys = digit_backbone_keys()
    assert len(keys) == 1752  # digit.md 1.7
    tm = pose_hrnet("hrnet_w32")
    assert [(k, tuple(v.shape)) for k, v in tm.state_dict().items()] == list(keys.items())
    jm = nnx.eval_shape(lambda: HRNet(HRNET_SPECS["hrnet_w32"], rngs=nnx.Rngs(0)))
    flat = {p: v.shape for p, v in nnx.to_flat_state(nnx.state(jm))}
    seen = set()
    for key, shape in keys.items():
        mapped = torch_key_to_nnx_path(key)
        if mapped is None:
            assert key.endswith(".num_batches_tracked") and shape == ()
            continue
        path, transform = mapped
        want = (shape[2], shape[3], shape[1], shape[0]) if transform == "conv" else shape
        assert flat.get(path) == want, (key, path, flat.get(path), want)
        assert path not in seen, path
        seen.add(path)
    assert seen == set(flat), sorted(set(flat) - seen)[:5]
    n_bn = sum(k.endswith(".num_batches_tracked") for k in keys)
    assert n_bn == 292 and len(seen) == 1752 - n_bn  # 292 convs, each followed by a BN
    assert sum(x.size for x in jax.tree.leaves(nnx.state(jm, nnx.Param))) == 28_535_552  # digit.md 1.6
    assert jm.num_features == 32 and jm.branch_channels == (32, 64, 128, 256)
    # pose-HRNet: the last stage-4 module fuses into branch 0 only (stage4.2.fuse_layers.0 only)
    assert len(jm.stage4[2].fuse_layers) == 1 and len(jm.stage4[1].fuse_layers) == 4
    assert jm.transition2[0] is None and jm.transition2[1] is None


@pytest.mark.parametrize("name,multi_scale_output",
                         [("hrnet_w18", False), ("hrnet_w18_small", False), ("hrnet_w18_small", True)])
def test_other_specs_match_the_reference_structure(name, multi_scale_output):
    tm = pose_hrnet(name, multi_scale_output=multi_scale_output)
    jm = nnx.eval_shape(lambda: HRNet(HRNET_SPECS[name], rngs=nnx.Rngs(0), multi_scale_output=multi_scale_output))
    flat = {p: v.shape for p, v in nnx.to_flat_state(nnx.state(jm))}
    mapped = {}
    for k, v in tm.state_dict().items():
        r = torch_key_to_nnx_path(k)
        if r is not None:
            s = tuple(v.shape)
            mapped[r[0]] = (s[2], s[3], s[1], s[0]) if r[1] == "conv" else s
    assert mapped == flat
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(jm, nnx.Param)))
    assert n_params == sum(p.numel() for p in tm.parameters())
    if not multi_scale_output:
        assert n_params == {"hrnet_w18": 9_317_892, "hrnet_w18_small": 3_616_352}[name]  # module docstring
    else:  # the last stage-4 module gains fuse_layers.1-3 (6 + 3 + ... convs into branches 1-3)
        assert len(jm.stage4[-1].fuse_layers) == 4


def test_registry_names_overrides_and_init():
    assert {"hrnet_w32", "hrnet_w18", "hrnet_w18_small"} <= set(registry.names("backbone"))
    m = nnx.eval_shape(lambda: registry.build("backbone", "hrnet_w18_small", rngs=nnx.Rngs(0), width=8,
                                              stages=((1, 1), (1, 1), (1, 1))))
    assert isinstance(m, HRNet) and m.num_features == 8 and m.spec.layer1_blocks == 2
    assert m.branch_channels == (8, 16, 32, 64) and len(m.stage3) == 1 and len(m.stage2[0].branches[0]) == 1
    with pytest.raises(TypeError):
        registry.build("backbone", "hrnet_w32", rngs=nnx.Rngs(0), depth=3)  # no such option
    # init="hrnet": pose_hrnet's N(0, 0.001); default: torchvision's Kaiming-normal (fan_out)
    # (pooled over all kernels, each divided by its expected std: ~27k samples, ~0.5 % noise)
    for init, std in (("hrnet", lambda k: 0.001), ("kaiming", lambda k: (2.0 / (k.shape[0] * k.shape[1] * k.shape[3])) ** 0.5)):
        m = HRNet(TINY, rngs=nnx.Rngs(1), init=init)
        convs = [c for _, c in nnx.iter_modules(m) if isinstance(c, TorchConv)]
        z = np.concatenate([np.asarray(c.kernel[...]).ravel() / std(c.kernel[...]) for c in convs])
        assert abs(z.std() - 1) < 0.03 and abs(z.mean()) < 0.03, (init, z.std(), z.mean())
        assert np.all(np.asarray(m.stage3[0].fuse_layers[2][0][0][1].scale[...]) == 1)
        # stem 2 + layer1 4 + transition1 2 + stage2 (4 + 2) + transition2 1 + stage3 (6 + 7)
        # + transition3 1 + stage4.0 (8 + 16) + stage4.1 (8 + 3: into branch 0 only)
        assert len(convs) == 64


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="width"):
        HRNetSpec(width=0)
    with pytest.raises(ValueError, match="stages"):
        HRNetSpec(stages=((1, 4), (4, 4)))
    with pytest.raises(ValueError, match="init"):
        HRNet(TINY, rngs=nnx.Rngs(0), init="xavier")
    with pytest.raises(ValueError, match="conv_impl"):
        HRNet(TINY, rngs=nnx.Rngs(0), conv_impl="fft")
    jm = nnx.eval_shape(lambda: HRNet(TINY, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        jm(jnp.zeros((1, 3, 64, 64)))
    with pytest.raises(ValueError, match="multiples of 32"):
        jm(jnp.zeros((1, 48, 64, 3)))
    with pytest.raises(ValueError, match="stage9"):
        torch_key_to_nnx_path("stage9.0.relu.weight")
    assert torch_key_to_nnx_path("stage3.2.fuse_layers.2.0.1.0.weight") == (
        ("stage3", 2, "fuse_layers", 2, 0, 1, 0, "kernel"), "conv")
    assert torch_key_to_nnx_path("transition1.1.0.1.running_var") == (("transition1", 1, 0, 1, "var"), "bn_var")
    assert torch_key_to_nnx_path("layer1.0.downsample.1.weight") == (("layer1", 0, "downsample", 1, "scale"), "bn_scale")
    assert torch_key_to_nnx_path("bn2.num_batches_tracked") is None


# ----------------------------------------------------------------------------- numerics
def test_upsample_nearest_matches_torch():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    for f in (1, 2, 4, 8):
        ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), scale_factor=f,
                                              mode="nearest")
        np.testing.assert_array_equal(np.asarray(upsample_nearest(jnp.asarray(x), f)), nhwc(ref))


def test_w32_eval_parity_with_torch():
    """HRNet-W32, eval-mode BN, 64x64 batch 2 (branch 3 is 2x2): every map within 1e-4 (relative)."""
    tm, jm = make_pair("hrnet_w32", seed=3)
    tm.eval()
    jm.eval()
    x, xt = images((2, 64, 64, 3), seed=1)
    with torch.no_grad():
        ref = tm.forward_maps(xt)
    out = nnx.jit(lambda m, x: (m.features(x), m(x)))(jm, jnp.asarray(x))
    out, pooled = out
    assert out["hr"].shape == (2, 16, 16, 32) and len(out["stage4"]) == 1
    compare_maps(out, ref, 1e-4, "w32 eval")
    np.testing.assert_array_equal(pooled, out["pooled"])


def test_train_mode_maps_gradients_and_running_stats():
    """Train-mode BN, float32, the CPU default (Winograd 3x3) path; one jitted value_and_grad.

    Maps, updated running statistics (unbiased variance) and the gradients of sum(hr * w) with
    respect to every parameter and to the images all match torch within 1e-4 (relative). Every
    parameter reaches branch 0 through the last fusion, so all of them get a gradient.
    """
    tm, jm = make_pair("tiny", seed=5)
    tm.train()
    jm.train()
    x, xt = images((2, 64, 64, 3), seed=6)
    xt.requires_grad_(True)
    w = np.random.default_rng(7).standard_normal((2, 16, 16, TINY.width)).astype(np.float32)
    ref = tm.forward_maps(xt)
    (ref["hr"] * torch.from_numpy(w.transpose(0, 3, 1, 2).copy())).sum().backward()
    before = nnx_bn_stats(jm)

    def loss(m, x):
        out = m.features(x)
        return jnp.sum(out["hr"] * w), out

    (_, out), (grads, gx) = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True))(jm, jnp.asarray(x))
    assert out["hr"].shape == (2, 16, 16, TINY.width) and len(out["stage4"]) == 1
    compare_maps(out, ref, 1e-4, "train float32")
    t_stats, j_stats = torch_bn_stats(tm), nnx_bn_stats(jm)
    assert set(t_stats) == set(j_stats)
    for path in t_stats:
        assert not np.allclose(j_stats[path], before[path]), path  # the statistics did move
        np.testing.assert_allclose(j_stats[path], t_stats[path], rtol=1e-4, atol=1e-5, err_msg=str(path))
    assert_close_rel(gx, nhwc(xt.grad), 1e-4, "grad images")
    g = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(grads)}
    checked = 0
    for key, param in tm.named_parameters():
        path, transform = torch_key_to_nnx_path(key)
        r = param.grad.numpy()
        assert_close_rel(g[path], r.transpose(2, 3, 1, 0) if transform == "conv" else r, 1e-4, f"grad {key}")
        checked += 1
    assert checked == len(g) == 64 * 3  # 64 convs, 64 BNs x (scale, bias)


def test_train_mode_parity_float64_multi_scale_output():
    """float64 in both frameworks, train mode, all four stage-4 outputs: within 1e-9 (relative)."""
    with jax.enable_x64(True):
        tm, jm = make_pair("tiny", seed=7, multi_scale_output=True, dtype=jnp.float64, param_dtype=jnp.float64)
        tm = tm.double()
        tm.train()
        jm.train()
        x, xt = images((2, 64, 64, 3), seed=2)
        ref = tm.forward_maps(xt.double())
        out = nnx.jit(lambda m, x: m.features(x))(jm, jnp.asarray(x, jnp.float64))
        assert out["hr"].dtype == jnp.float64 and len(out["stage4"]) == 4
        compare_maps(out, ref, 1e-9, "train float64")
        t_stats, j_stats = torch_bn_stats(tm), nnx_bn_stats(jm)
    assert set(t_stats) == set(j_stats)
    for path in t_stats:
        np.testing.assert_allclose(j_stats[path], t_stats[path], rtol=1e-9, atol=1e-12, err_msg=str(path))
