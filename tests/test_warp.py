"""Tests for handjax.render.warp: parity with torch.nn.functional.grid_sample and PWC-Net warping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from handjax.render import flow_to_grid, grid_sample, warp, warp_valid_mask, warp_with_mask

B, H, W, C = 2, 5, 7, 3


def torch_grid_sample(image, grid, align_corners, padding_mode):
    """Reference: NHWC numpy -> torch NCHW grid_sample -> NHWC numpy (float64)."""
    img = torch.tensor(np.asarray(image), dtype=torch.float64).permute(0, 3, 1, 2)
    out = F.grid_sample(
        img, torch.tensor(np.asarray(grid), dtype=torch.float64), mode="bilinear",
        padding_mode=padding_mode, align_corners=align_corners,
    )
    return out.permute(0, 2, 3, 1).numpy()


def torch_pwc_warp(image, flow, align_corners):
    """PWC-Net / handobjectconsist ``warp`` written with torch ops (NCHW internally)."""
    x = torch.tensor(np.asarray(image), dtype=torch.float64).permute(0, 3, 1, 2)
    flo = torch.tensor(np.asarray(flow), dtype=torch.float64).permute(0, 3, 1, 2)
    b, _, h, w = x.shape
    xx = torch.arange(w, dtype=torch.float64).view(1, -1).repeat(h, 1)
    yy = torch.arange(h, dtype=torch.float64).view(-1, 1).repeat(1, w)
    base = torch.stack([xx, yy], 0)[None].repeat(b, 1, 1, 1)
    v = base + flo
    v = torch.stack([2.0 * v[:, 0] / max(w - 1, 1) - 1.0, 2.0 * v[:, 1] / max(h - 1, 1) - 1.0], 1)
    out = F.grid_sample(x, v.permute(0, 2, 3, 1), mode="bilinear", align_corners=align_corners)
    return out.permute(0, 2, 3, 1).numpy()


def random_inputs(seed, out_hw=(4, 6), spread=1.4):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(B, H, W, C)).astype(np.float32)
    grid = rng.uniform(-spread, spread, size=(B,) + out_hw + (2,)).astype(np.float32)
    # Exact corner/edge coordinates and far-away samples are included.
    grid[0, 0, 0] = [-1.0, -1.0]
    grid[0, 0, 1] = [1.0, 1.0]
    grid[1, 0, 0] = [5.0, -7.0]
    return image, grid


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_grid_sample_matches_torch(align_corners, padding_mode):
    image, grid = random_inputs(0)
    ours = np.asarray(grid_sample(jnp.asarray(image), jnp.asarray(grid), align_corners, padding_mode))
    ref = torch_grid_sample(image, grid, align_corners, padding_mode)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert np.abs(ref).max() > 0.5 and np.any(np.abs(grid) > 1)  # non-trivial, out-of-range samples present


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_grid_sample_gradients_match_torch(align_corners, padding_mode):
    image, grid = random_inputs(1)
    cot = np.random.default_rng(2).normal(size=(B, 4, 6, C))

    def loss(im, g):
        return jnp.sum(jnp.asarray(cot, jnp.float32) * grid_sample(im, g, align_corners, padding_mode))

    gi, gg = jax.grad(loss, argnums=(0, 1))(jnp.asarray(image), jnp.asarray(grid))
    ti = torch.tensor(image, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_(True)
    tg = torch.tensor(grid, dtype=torch.float64).requires_grad_(True)
    out = F.grid_sample(ti, tg, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    (out * torch.tensor(cot).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(np.asarray(gi), ti.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gg), tg.grad.numpy(), atol=1e-4)
    assert np.abs(tg.grad.numpy()).max() > 0.1


@pytest.mark.parametrize("align_corners", [True, False])
def test_warp_matches_torch_pwc_warp(align_corners):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(B, H, W, C)).astype(np.float32)
    flow = rng.normal(0, 2.0, size=(B, H, W, 2)).astype(np.float32)
    ours = np.asarray(warp(jnp.asarray(image), jnp.asarray(flow), align_corners=align_corners))
    np.testing.assert_allclose(ours, torch_pwc_warp(image, flow, align_corners), atol=1e-5)
    # In-bounds mask = torch warp of an all-ones image >= 0.99999 (handobjectconsist).
    ones = np.ones((B, H, W, 1), np.float32)
    ref_mask = torch_pwc_warp(ones, flow, align_corners)[..., 0] >= 0.99999
    mask = np.asarray(warp_valid_mask(jnp.asarray(flow), align_corners))
    np.testing.assert_array_equal(mask, ref_mask)
    assert 0 < mask.mean() < 1
    warped, mask2 = warp_with_mask(jnp.asarray(image), jnp.asarray(flow), align_corners)
    np.testing.assert_allclose(np.asarray(warped), ours * ref_mask[..., None], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask2), ref_mask)


def test_warp_align_corners_true_samples_at_pixel_plus_flow():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(1, H, W, C)).astype(np.float32)
    flow = np.zeros((1, H, W, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, -1.0  # whole-pixel shift: exact copy of image[i - 1, j + 2]
    out = np.asarray(warp(jnp.asarray(image), jnp.asarray(flow), align_corners=True))
    np.testing.assert_allclose(out[0, 1:, : W - 2], image[0, :-1, 2:], atol=1e-6)
    assert np.all(out[0, 0] == 0) and np.all(out[0, :, W - 2 :] == 0)
    # handobjectconsist's align_corners=False variant stretches even a zero flow.
    zero = np.asarray(warp(jnp.asarray(image), jnp.zeros_like(jnp.asarray(flow)), align_corners=False))
    assert np.abs(zero - image).max() > 0.1
    np.testing.assert_allclose(np.asarray(warp(jnp.asarray(image), jnp.zeros_like(jnp.asarray(flow)))), image, atol=1e-6)


def test_flow_to_grid_shape_and_errors():
    grid = flow_to_grid(jnp.zeros((1, H, W, 2)))
    np.testing.assert_allclose(np.asarray(grid[0, 0, 0]), [-1, -1])
    np.testing.assert_allclose(np.asarray(grid[0, -1, -1]), [1, 1])
    with pytest.raises(ValueError, match="flow"):
        flow_to_grid(jnp.zeros((H, W, 2)))
    with pytest.raises(ValueError, match="padding_mode"):
        grid_sample(jnp.zeros((1, H, W, C)), jnp.zeros((1, 2, 2, 2)), padding_mode="reflection")
    with pytest.raises(ValueError, match="grid"):
        grid_sample(jnp.zeros((1, H, W, C)), jnp.zeros((2, 2, 2, 2)))


def _directional_fd(f, x, direction, h=1e-6):
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.mark.parametrize("align_corners", [True, False])
def test_warp_gradients_match_finite_differences(align_corners):
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        image = jnp.asarray(rng.normal(size=(B, H, W, C)))
        flow = jnp.asarray(rng.normal(0, 1.5, size=(B, H, W, 2)))
        weights = jnp.asarray(rng.normal(size=(B, H, W, C)))

        def loss(im, fl):
            return jnp.sum(weights * warp(im, fl, align_corners=align_corners, padding_mode="zeros"))

        value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        _, (gi, gf) = value_and_grad(image, flow)
        assert float(jnp.abs(gf).max()) > 0.1
        for _ in range(3):
            di = jnp.asarray(rng.normal(size=image.shape))
            df = jnp.asarray(rng.normal(size=flow.shape)) * 1e-2
            fd_i = _directional_fd(lambda x: value_and_grad(x, flow)[0], image, di)
            fd_f = _directional_fd(lambda x: value_and_grad(image, x)[0], flow, df)
            np.testing.assert_allclose(float(jnp.sum(gi * di)), float(fd_i), rtol=1e-6)
            np.testing.assert_allclose(float(jnp.sum(gf * df)), float(fd_f), rtol=1e-5)
