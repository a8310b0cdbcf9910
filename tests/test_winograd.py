"""Winograd 3x3 convolution (handjax.models.winograd) against torch's conv2d and hand-computed cases."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from handjax.models import CONV_IMPLS, TorchConv, winograd_conv3x3
from handjax.models.winograd import TILES, choose_tile, input_transform, output_transform, weight_transform

torch = pytest.importorskip("torch")

SHAPES = [(2, 1, 1, 3, 2), (2, 5, 7, 3, 4), (1, 8, 8, 16, 8), (2, 17, 16, 5, 6), (1, 6, 9, 4, 3)]


def torch_conv_and_grads(x, w, g):
    """torch conv2d (NCHW/OIHW) value and gradients of sum(y * g), returned in NHWC/HWIO, float64."""
    xt = torch.tensor(np.asarray(x, np.float64).transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(np.asarray(w, np.float64).transpose(3, 2, 0, 1), requires_grad=True)
    y = torch.nn.functional.conv2d(xt, wt, padding=1)
    (y * torch.tensor(np.asarray(g, np.float64).transpose(0, 3, 1, 2))).sum().backward()
    return (
        y.detach().numpy().transpose(0, 2, 3, 1),
        xt.grad.numpy().transpose(0, 2, 3, 1),
        wt.grad.numpy().transpose(2, 3, 1, 0),
    )


def random_case(shape, seed):
    b, h, w, c, k = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, h, w, c))
    kern = rng.standard_normal((3, 3, c, k)) / 3
    g = rng.standard_normal((b, h, w, k))
    return x, kern, g


def ours(x, kern, g, tile, dtype):
    x, kern, g = (jnp.asarray(a, dtype) for a in (x, kern, g))
    y, vjp = jax.vjp(lambda x, k: winograd_conv3x3(x, k, tile=tile), x, kern)
    return (y, *vjp(g))


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_equals_torch_conv2d(shape, tile):
    """In float64 the algorithm is exact up to rounding: value and both gradients match torch to 1e-12."""
    x, kern, g = random_case(shape, seed=sum(shape) + tile)
    ref = torch_conv_and_grads(x, kern, g)
    with jax.enable_x64(True):
        got = ours(x, kern, g, tile, jnp.float64)
        assert got[0].dtype == jnp.float64
        for name, a, b in zip(("y", "dx", "dkernel"), got, ref):
            assert a.shape == b.shape, name
            assert rel_err(a, b) < 1e-12, (name, rel_err(a, b))


@pytest.mark.parametrize("tile,tol", [(2, 2e-6), (4, 5e-5)])
def test_float32_accuracy(tile, tol):
    """float32 error against a float64 reference: F(2x2) is as exact as a direct conv, F(4x4) ~1e-5."""
    x, kern, g = random_case((2, 16, 12, 32, 16), seed=tile)
    ref = torch_conv_and_grads(x, kern, g)
    for name, a, b in zip(("y", "dx", "dkernel"), ours(x, kern, g, tile, jnp.float32), ref):
        assert a.dtype == jnp.float32
        assert rel_err(a, b) < tol, (name, rel_err(a, b))


def test_hand_computed_kernels():
    """Identity kernel returns the input; a one-tap kernel shifts it (zero padding at the border)."""
    x = jnp.arange(2 * 6 * 5, dtype=jnp.float32).reshape(2, 6, 5, 1)
    ident = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
    right = jnp.zeros((3, 3, 1, 1)).at[1, 2].set(2.0)  # y[i, j] = 2 * x[i, j + 1]
    for tile in (2, 4):
        np.testing.assert_allclose(winograd_conv3x3(x, ident, tile=tile), x, atol=1e-5)
        expect = 2 * np.pad(np.asarray(x), ((0, 0), (0, 0), (0, 1), (0, 0)))[:, :, 1:]
        np.testing.assert_allclose(winograd_conv3x3(x, right, tile=tile), expect, atol=1e-4)
    # 3x3 box filter on a 3x3 ones image: corner 4, edge 6, centre 9
    box = winograd_conv3x3(jnp.ones((1, 3, 3, 1)), jnp.ones((3, 3, 1, 1)), tile=2)[0, :, :, 0]
    np.testing.assert_allclose(box, [[4, 6, 4], [6, 9, 6], [4, 6, 4]], atol=1e-5)


def test_transforms_are_lavin_gray():
    """One tile by hand: A^T [(G g G^T) * (B^T d B)] A equals the 2x2 correlation output."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    bt, gm, at = TILES[2]
    y = at @ ((gm @ g @ gm.T) * (bt @ d @ bt.T)) @ at.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(y, direct, atol=1e-12)
    # and the module's transforms compose to the same on that tile (input = the tile's inner 2x2 + padding)
    with jax.enable_x64(True):
        x = jnp.asarray(d[1:3, 1:3])[None, :, :, None]  # padding 1 around a 2x2 image = a 4x4 tile
        dpad = np.pad(d[1:3, 1:3], 1)
        v = input_transform(x, 2)[:, 0, 0, 0, 0].reshape(4, 4)
        np.testing.assert_allclose(v, bt @ dpad @ bt.T, atol=1e-12)
        u = weight_transform(jnp.asarray(g)[:, :, None, None], 2)[:, 0, 0].reshape(4, 4)
        np.testing.assert_allclose(u, gm @ g @ gm.T, atol=1e-12)
        out = output_transform((v * u).reshape(16, 1, 1, 1, 1), 2, x.shape)[0, :, :, 0]
        np.testing.assert_allclose(out, at @ (u * v) @ at.T, atol=1e-12)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_sharded_batch_equals_single_device(axis_type):
    """Under jit with the batch on an 8-device 'data' axis: same values and gradients as unsharded."""
    x, kern, g = random_case((8, 9, 8, 4, 5), seed=3)
    x, kern, g = (jnp.asarray(a, jnp.float32) for a in (x, kern, g))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    f = jax.jit(lambda x, k: jax.value_and_grad(lambda x, k: jnp.sum(winograd_conv3x3(x, k) * g), (0, 1))(x, k))
    one = f(x, kern)
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        eight = f(xs, kern)
    assert eight[1][0].sharding.spec[0] == "data"  # the input gradient stays batch-sharded
    for a, b in zip(jax.tree.leaves(eight), jax.tree.leaves(one)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise():
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="HWIO kernel"):
        winograd_conv3x3(x, jnp.zeros((5, 5, 3, 2)))
    with pytest.raises(ValueError, match="HWIO kernel"):
        winograd_conv3x3(x, jnp.zeros((3, 3, 4, 2)))
    with pytest.raises(ValueError, match="one floating dtype"):
        winograd_conv3x3(x, jnp.zeros((3, 3, 3, 2), jnp.bfloat16))
    with pytest.raises(ValueError, match="tile must be one of"):
        winograd_conv3x3(x, jnp.zeros((3, 3, 3, 2)), tile=3)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        TorchConv(3, 2, 3, 1, rngs=nnx.Rngs(0), dtype=None, param_dtype=jnp.float32, precision=None, conv_impl="fft")


def test_choose_tile():
    assert choose_tile(32, 32) == 4 and choose_tile(16, 40) == 4
    assert choose_tile(8, 8) == 2 and choose_tile(15, 64) == 2


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_torch_conv_impls_agree_and_pick_the_algorithm(impl):
    """TorchConv's conv_impl: same values/gradients; 'auto' on CPU and 'winograd' trace no 3x3 convolution."""
    conv = TorchConv(6, 5, 3, 1, rngs=nnx.Rngs(0), dtype=None, param_dtype=jnp.float32, precision=None, conv_impl=impl)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 10, 9, 6)), jnp.float32)
    w = conv.kernel[...]
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv(x), ref, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda x: conv(x))(x))
    uses_xla = "conv_general_dilated" in jaxpr
    assert uses_xla == (impl == "xla"), jaxpr
    # the stride-2 3x3 and 7x7 convolutions always use XLA's
    conv2 = TorchConv(6, 5, 3, 2, rngs=nnx.Rngs(0), dtype=None, param_dtype=jnp.float32, precision=None, conv_impl=impl)
    assert "conv_general_dilated" in str(jax.make_jaxpr(lambda x: conv2(x))(x))
