"""Parity of handjax.models.ResNet with a torchvision-structured PyTorch ResNet.

The reference (tests/torch_reference/resnet_torch.py) reproduces torchvision's
module tree and state_dict keys; the weights are copied with a mapping derived
only from those key names, so a naming mismatch fails the copy.

BatchNorm running-variance note (measured in test_biased_running_var_differs_from_torch):
torch updates ``running_var`` with the UNBIASED batch variance ``n/(n-1) * var``
(n = B*H*W per channel) while flax's nnx.BatchNorm uses the biased one. After one
train-mode step with momentum 0.1 the two differ by ``0.1 * var / (n - 1)``: at
layer4 of a 64x64 batch of 2 (n = 8) that is 1.4 % of the batch variance, far above
float tolerance. handjax's TorchBatchNorm therefore defaults to the unbiased update
(``unbiased_running_var=True``); the normalisation itself uses the biased variance
in both frameworks and is identical.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from handjax.models import BasicBlock, Bottleneck, ResNet, TorchBatchNorm, TorchConv, max_pool_3x3_s2  # noqa: E402
from torch_reference.resnet_torch import ResNet as TorchResNet  # noqa: E402

BN_RENAME = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
MAPS = ("stem", "layer1", "layer2", "layer3", "layer4", "pooled")


# ----------------------------------------------------------------------------- helpers
def torch_key_to_nnx(key: str, tensor: torch.Tensor):
    """Map one torchvision key/tensor to (nnx path, numpy array); None for dropped keys."""
    parts = key.split(".")
    if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
        return None
    *mods, leaf = parts
    # copy: jnp.asarray may alias the torch buffer on CPU, and torch updates BN buffers in place
    arr = tensor.detach().numpy().copy()
    if arr.ndim == 4:  # conv weight OIHW -> HWIO
        assert leaf == "weight", key
        arr, name = arr.transpose(2, 3, 1, 0), "kernel"
    else:
        name = BN_RENAME[leaf]
    path = tuple(int(p) if p.isdigit() else p for p in mods) + (name,)
    return path, arr


def nnx_from_torch(depth: int, state_dict: dict, **kw) -> ResNet:
    """Build an abstract nnx ResNet and fill every variable from the torch state_dict.

    Asserts a bijection between the mapped torch keys and the nnx variables (with
    equal shapes), so any naming or layout mismatch fails here. Starting from
    ``nnx.eval_shape`` avoids the per-shape compile cost of the random initialisers.
    """
    abstract = nnx.eval_shape(lambda: ResNet(depth, rngs=nnx.Rngs(0), **kw))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    filled = {}
    for key, tensor in state_dict.items():
        mapped = torch_key_to_nnx(key, tensor)
        if mapped is None:
            continue
        path, arr = mapped
        assert path in flat, f"torch key {key} -> {path} has no nnx variable"
        assert path not in filled, f"two torch keys map to {path}"
        var = flat[path]
        assert var.shape == arr.shape, (key, var.shape, arr.shape)
        filled[path] = var.replace(jnp.asarray(arr, var.dtype))
    missing = set(flat) - set(filled)
    assert not missing, f"nnx variables without a torch key: {sorted(missing)}"
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def randomise_torch(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN affine params and running stats (convs keep kaiming init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def make_pair(depth: int, seed: int = 0, **kw):
    torch.manual_seed(seed)
    tm = TorchResNet(depth)
    randomise_torch(tm, seed)
    return tm, nnx_from_torch(depth, tm.state_dict(), **kw)


def images(shape_nhwc, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape_nhwc).astype(np.float32)
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def assert_close_rel(actual, expected, rel=1e-4, what=""):
    """Elementwise |a - e| <= rel * max|e| (relative to the tensor's scale)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = float(np.abs(expected).max())
    assert scale > 0, what
    err = float(np.abs(actual - expected).max())
    assert err <= rel * scale, f"{what}: max abs err {err:.3g} > {rel} * {scale:.3g}"


def nhwc(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).numpy()


def torch_bn_stats(tm) -> dict:
    out = {}
    for key, t in tm.state_dict().items():
        mapped = torch_key_to_nnx(key, t)
        if mapped and mapped[0][-1] in ("mean", "var"):
            out[mapped[0]] = mapped[1]
    return out


def nnx_bn_stats(jm) -> dict:
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(jm, nnx.BatchStat))}


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize(
    "depth,n_params,n_torch_tensors,feat",
    [(18, 11_176_512, 120, 512), (34, 21_284_672, 216, 512), (50, 23_508_032, 318, 2048)],
)
def test_structure_matches_torchvision_keys(depth, n_params, n_torch_tensors, feat):
    tm = TorchResNet(depth)
    sd = {k: v for k, v in tm.state_dict().items() if not k.startswith("fc.")}
    assert len(sd) == n_torch_tensors  # torchvision's counts (tempclr.md 2.3)
    jm = nnx_from_torch(depth, sd)  # asserts a bijection between keys and variables
    assert sum(x.size for x in jax.tree.leaves(nnx.state(jm, nnx.Param))) == n_params
    assert jm.num_features == feat
    assert all(jm.layer1[i].downsample is None for i in range(1, len(jm.layer1)))


def test_init_like_torchvision():
    conv = TorchConv(256, 256, 3, 1, rngs=nnx.Rngs(1), dtype=None, param_dtype=jnp.float32, precision=None)
    k = np.asarray(conv.kernel[...])  # (3,3,256,256): fan_out = 256*9
    assert abs(k.std() / np.sqrt(2.0 / (256 * 9)) - 1) < 0.01  # 590k samples: ~0.1 % noise
    assert abs(k.mean()) < 0.01 * k.std()
    basic = BasicBlock(16, 16, 1, rngs=nnx.Rngs(2), zero_init_residual=True)
    assert np.all(np.asarray(basic.bn2.scale[...]) == 0) and np.all(np.asarray(basic.bn1.scale[...]) == 1)
    assert basic.downsample is None
    blk = Bottleneck(64, 16, 2, rngs=nnx.Rngs(2), zero_init_residual=True)
    assert np.all(np.asarray(blk.bn3.scale[...]) == 0) and np.all(np.asarray(blk.bn2.scale[...]) == 1)
    assert np.all(np.asarray(blk.downsample[1].scale[...]) == 1)
    assert np.all(np.asarray(blk.bn1.bias[...]) == 0)
    assert np.all(np.asarray(blk.bn1.var[...]) == 1) and np.all(np.asarray(blk.bn1.mean[...]) == 0)
    assert blk.conv2.strides == (2, 2) and blk.conv1.strides == (1, 1)  # v1.5: stride on the 3x3
    # the flag reaches every block of a full ResNet (abstract model: no init compute)
    for flag in (True, False):
        jm = nnx.eval_shape(lambda: ResNet(50, rngs=nnx.Rngs(1), zero_init_residual=flag))
        blocks = [b for name in ("layer1", "layer2", "layer3", "layer4") for b in getattr(jm, name)]
        assert len(blocks) == 16 and all(b.zero_init_residual is flag for b in blocks)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="depth"):
        ResNet(20, rngs=nnx.Rngs(0))
    jm = nnx.eval_shape(lambda: ResNet(18, rngs=nnx.Rngs(0)))  # the check precedes any compute
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        jm(jnp.zeros((1, 3, 32, 32)))  # NCHW by mistake
    bn = TorchBatchNorm(4)
    with pytest.raises(ValueError, match="more than one value"):
        bn(jnp.zeros((1, 1, 1, 4)))
    with pytest.raises(ValueError, match="4 channels"):
        bn(jnp.zeros((2, 2, 2, 5)))


# ----------------------------------------------------------------------------- building blocks
def reduce_window_pool(v):
    """Independent reference: lax.reduce_window max with -inf padding."""
    return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


def max_of_views_autodiff(v):
    """Same forward as max_pool_3x3_s2 but differentiated by JAX (ties split by reduce-max)."""
    vp = jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    oh, ow = (v.shape[1] - 1) // 2 + 1, (v.shape[2] - 1) // 2 + 1
    views = [vp[:, i : i + 2 * oh - 1 : 2, j : j + 2 * ow - 1 : 2] for i in range(3) for j in range(3)]
    return jnp.max(jnp.stack(views), axis=0)


@jax.jit
def pools_and_grads(x, g):
    out = {}
    for name, fn in (("ours", max_pool_3x3_s2), ("reduce_window", reduce_window_pool), ("split", max_of_views_autodiff)):
        y, vjp = jax.vjp(fn, x)
        out[name] = (y, vjp(g)[0])
    return out


@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_max_pool_values_and_first_max_gradient(hw):
    """Values equal reduce_window and torch; gradient goes to the first max like torch (ties!)."""
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, size=(2, *hw, 3)).astype(np.float32)  # many ties, negatives next to -inf pad
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    yt = torch.nn.functional.max_pool2d(xt, 3, stride=2, padding=1)
    gt = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(gt))
    res = pools_and_grads(jnp.asarray(x), jnp.asarray(gt.transpose(0, 2, 3, 1)))
    y, gx = res["ours"]
    np.testing.assert_array_equal(np.asarray(y), nhwc(yt))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(res["reduce_window"][0]))
    np.testing.assert_allclose(np.asarray(gx), nhwc(xt.grad), rtol=0, atol=1e-6)
    # XLA's reduce_window gradient also picks one max per window (agrees with torch), while
    # plain autodiff of a max-of-views forward splits ties: the data does exercise ties.
    np.testing.assert_allclose(np.asarray(res["reduce_window"][1]), nhwc(xt.grad), rtol=0, atol=1e-6)
    assert not np.allclose(np.asarray(res["split"][1]), nhwc(xt.grad), atol=1e-6)


@pytest.mark.parametrize("k,stride,hw", [(1, 1, (6, 6)), (1, 2, (7, 6)), (3, 1, (7, 6)), (3, 2, (7, 6)), (7, 2, (9, 8))])
def test_torch_conv_matches_lax_conv(k, stride, hw):
    """TorchConv (1x1 as a matmul) equals a symmetric-padded lax conv, values and gradients."""
    conv = TorchConv(4, 5, k, stride, rngs=nnx.Rngs(0), dtype=None, param_dtype=jnp.float32, precision="highest")
    x = jnp.asarray(images((2, *hw, 4), seed=3)[0])
    w = conv.kernel[...]
    p = k // 2

    def ref(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (stride, stride), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
        )

    graphdef, state = nnx.split(conv)

    def ours(x, w):
        return nnx.merge(graphdef, jax.tree.map(lambda _: w, state))(x)

    y_ref, vjp_ref = jax.vjp(ref, x, w)
    y, vjp = jax.vjp(ours, x, w)
    assert y.shape == y_ref.shape == (2, (hw[0] + 2 * p - k) // stride + 1, (hw[1] + 2 * p - k) // stride + 1, 5)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    g = jnp.asarray(np.random.default_rng(4).standard_normal(y.shape).astype(np.float32))
    for a, b in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("depth,hw", [(18, (57, 45)), (50, (64, 64))])  # odd sizes: floor rules
def test_eval_parity_with_torch(depth, hw):
    tm, jm = make_pair(depth, seed=depth)
    tm.eval()
    jm.eval()
    x, xt = images((2, *hw, 3), seed=1)
    with torch.no_grad():
        ref = tm.forward_maps(xt)
    out = nnx.jit(lambda m, x: m.features(x))(jm, jnp.asarray(x))
    for name in MAPS:
        assert_close_rel(out[name], nhwc(ref[name]), 1e-4, f"{name} depth {depth} {hw}")
    assert_close_rel(jm(jnp.asarray(x)), ref["pooled"].numpy(), 1e-4, "__call__")


@pytest.mark.parametrize("depth,precision", [(18, "float32"), (50, "float64")])
def test_train_mode_parity_and_running_stats(depth, precision):
    """Train-mode maps and updated running stats match torch.

    Train-mode BN over few values per channel is ill-conditioned: for ResNet-50 at
    64x64 / batch 2 (n = 8 at layer4) torch float32 itself is 2.5e-4 (relative) away
    from torch float64, and jax float32 5e-4, so a float32 comparison cannot resolve
    1e-4. The ResNet-50 comparison therefore runs both frameworks in float64, where a
    bug still shows but rounding does not; ResNet-18 is also compared in float32.
    """
    f64 = precision == "float64"
    rel = 1e-9 if f64 else 1e-4
    with jax.enable_x64(f64):
        dt = jnp.float64 if f64 else jnp.float32
        tm, jm = make_pair(depth, seed=depth + 1, dtype=dt, param_dtype=dt)
        if f64:
            tm = tm.double()
        tm.train()
        jm.train()
        x, xt = images((2, 64, 64, 3), seed=2)
        ref = tm.forward_maps(xt.to(torch.float64) if f64 else xt)
        before = nnx_bn_stats(jm)
        out = nnx.jit(lambda m, x: m.features(x))(jm, jnp.asarray(x, dt))
        assert out["pooled"].dtype == dt
        for name in MAPS:
            assert_close_rel(out[name], nhwc(ref[name]), rel, f"train {name}")
        t_stats, j_stats = torch_bn_stats(tm), nnx_bn_stats(jm)
    assert set(t_stats) == set(j_stats)
    for path in t_stats:
        assert not np.allclose(j_stats[path], before[path]), path  # stats did move
        np.testing.assert_allclose(j_stats[path], t_stats[path], rtol=rel, atol=rel, err_msg=str(path))


def test_biased_running_var_differs_from_torch():
    """Flax-style (biased) update: differs from torch by exactly 0.1 * var_b / (n - 1)."""
    tm, jm = make_pair(18, seed=3, unbiased_running_var=False)
    v0 = np.asarray(jm.layer4[1].bn2.var[...])
    tm.train()
    jm.train()
    x, xt = images((2, 64, 64, 3), seed=4)  # layer4 is 2x2 -> n = 2*2*2 = 8
    tm.forward_features(xt)
    nnx.jit(lambda m, x: m(x))(jm, jnp.asarray(x))
    t_var = tm.layer4[1].bn2.running_var.numpy()
    j_var = np.asarray(jm.layer4[1].bn2.var[...])
    n = 8
    batch_var_biased = (j_var - 0.9 * v0) / 0.1
    np.testing.assert_allclose(t_var - j_var, 0.1 * batch_var_biased / (n - 1), rtol=1e-3, atol=1e-6)
    rel = np.abs(t_var - j_var).max() / np.abs(t_var).max()
    assert rel > 1e-3  # far larger than float error: the option matters
    # running means agree either way
    np.testing.assert_allclose(
        np.asarray(jm.layer4[1].bn2.mean[...]), tm.layer4[1].bn2.running_mean.numpy(), rtol=1e-4, atol=1e-5
    )


def test_gradient_parity_with_torch():
    """d(sum of pooled * w)/d(params) in train mode matches torch autograd (maxpool, BN, shortcuts)."""
    tm, jm = make_pair(18, seed=5)
    tm.train()
    jm.train()
    x, xt = images((2, 48, 48, 3), seed=6)
    w = np.random.default_rng(7).standard_normal(512).astype(np.float32)
    (tm.forward_features(xt) * torch.from_numpy(w)).sum().backward()

    def loss(m, x):
        return jnp.sum(m(x) * w)

    grads = nnx.jit(nnx.grad(loss))(jm, jnp.asarray(x))
    g = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(grads)}
    checked = 0
    for key, param in tm.named_parameters():
        if key.startswith("fc."):
            continue
        path, ref = torch_key_to_nnx(key, param.grad)
        assert_close_rel(g[path], ref, 1e-4, f"grad {key}")
        checked += 1
    assert checked == 60  # 20 convs + 20 BNs x (weight, bias)


def test_train_eval_switch():
    _, jm = make_pair(18, seed=11)
    fwd = nnx.jit(lambda m, x: m(x))
    x = jnp.asarray(images((2, 32, 32, 3))[0])
    jm.eval()
    s0 = nnx_bn_stats(jm)
    y_eval = fwd(jm, x)
    assert all(np.array_equal(s0[p], v) for p, v in nnx_bn_stats(jm).items())
    jm.train()
    y_train = fwd(jm, x)
    assert not np.allclose(y_eval, y_train)
    assert not np.allclose(nnx_bn_stats(jm)[("bn1", "mean")], s0[("bn1", "mean")])
    bns = [m for _, m in nnx.iter_modules(jm) if isinstance(m, TorchBatchNorm)]
    assert len(bns) == 20 and all(bn.use_running_average is False for bn in bns)
    eval_view = nnx.view(jm, use_running_average=True)
    np.testing.assert_array_equal(fwd(eval_view, x), fwd(eval_view, x))  # view: no stat updates


def test_bfloat16_compute_dtype():
    tm, jm32 = make_pair(18, seed=8)
    jm16 = nnx_from_torch(18, tm.state_dict(), dtype=jnp.bfloat16)
    jm32.eval()
    jm16.eval()
    x = jnp.asarray(images((2, 32, 32, 3), seed=9)[0])
    fwd = nnx.jit(lambda m, x: m(x))
    y16, y32 = fwd(jm16, x), fwd(jm32, x)
    assert y16.dtype == jnp.bfloat16 and jm16.conv1.kernel[...].dtype == jnp.float32
    assert_close_rel(y16.astype(jnp.float32), y32, 5e-2, "bf16 vs f32")


# ----------------------------------------------------------------------------- data parallel
def test_batchnorm_global_stats_under_sharded_jit():
    """Batch sharded over 8 devices: same outputs and running stats as on one device."""
    assert len(jax.devices()) == 8, "conftest should force 8 CPU devices"
    x = jnp.asarray(images((16, 32, 32, 3), seed=10)[0])

    def step(m, x):
        return m.features(x)

    sd = TorchResNet(18).state_dict()
    jm1 = nnx_from_torch(18, sd)
    jm1.train()
    out1 = nnx.jit(step)(jm1, jax.device_put(x, jax.devices()[0]))

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    jm8 = nnx_from_torch(18, sd)
    jm8.train()
    nnx.update(jm8, jax.device_put(nnx.state(jm8), NamedSharding(mesh, P())))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    out8 = nnx.jit(step)(jm8, xs)
    assert len(out8["layer1"].sharding.device_set) == 8
    # Only the summation order of the BN reductions differs (per-shard partial sums + all-reduce);
    # 20 train-mode BNs amplify that to ~3e-6 of the map's scale at layer4 (measured).
    for name in MAPS:
        assert_close_rel(out8[name], out1[name], 1e-5, f"sharded {name}")
    s1, s8 = nnx_bn_stats(jm1), nnx_bn_stats(jm8)
    for p in s1:
        np.testing.assert_allclose(s8[p], s1[p], rtol=1e-5, atol=1e-5, err_msg=str(p))
    # bn1's update is 0.1 * (global batch mean of conv1(x)); per-device statistics (one shard of
    # 2 images) would be far outside the tolerance
    stem = jm1.conv1(x)  # conv1 has no state, so calling it again changes nothing
    np.testing.assert_allclose(s8[("bn1", "mean")], 0.1 * np.asarray(stem).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    local = 0.1 * np.asarray(stem[:2]).mean(axis=(0, 1, 2))
    assert np.abs(local - s8[("bn1", "mean")]).max() > 1e-3
