"""Bilinear image sampling (``torch.nn.functional.grid_sample``) and flow warping, NHWC.

``grid_sample`` reproduces PyTorch's ``mode='bilinear'`` for both ``align_corners``
settings and the ``'zeros'`` / ``'border'`` padding modes, including its
gradients w.r.t. the image and the grid (corners outside the image contribute 0 in
``'zeros'`` mode; in ``'border'`` mode the un-normalised coordinate is clamped to
``[0, size - 1]``, with zero gradient where clamped).

Normalised coordinates: x in [-1, 1] spans the width, y the height; PyTorch's
un-normalisation is ``((x + 1) / 2) * (W - 1)`` with ``align_corners=True`` (-1 and 1
are the centres of the corner pixels) and ``((x + 1) * W - 1) / 2`` with
``align_corners=False`` (-1 and 1 are the outer edges of the corner pixels).
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

PADDING_MODES = ("zeros", "border")


def unnormalize(coord: jnp.ndarray, size: int, align_corners: bool) -> jnp.ndarray:
    """Normalised [-1, 1] coordinate -> pixel index (PyTorch convention)."""
    if align_corners:
        return (coord + 1.0) * 0.5 * (size - 1)
    return ((coord + 1.0) * size - 1.0) * 0.5


def _check_nhwc(image: jnp.ndarray, grid: jnp.ndarray, padding_mode: str) -> None:
    if image.ndim != 4:
        raise ValueError(f"image must be NHWC (B, H, W, C), got shape {image.shape}")
    if grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != image.shape[0]:
        raise ValueError(f"grid must have shape (B={image.shape[0]}, Ho, Wo, 2) (x, y), got {grid.shape}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")


def _clamp_like_torch(coord: jnp.ndarray, upper: float) -> jnp.ndarray:
    """Clamp to [0, upper] with zero gradient at *and* beyond both bounds (PyTorch's
    ``clip_coordinates_set_grad``; ``jnp.clip`` would pass the gradient at the bounds)."""
    return jnp.where(coord <= 0.0, 0.0, jnp.where(coord >= upper, upper, coord))


def _sample_one(image: jnp.ndarray, ix: jnp.ndarray, iy: jnp.ndarray, zeros: bool) -> jnp.ndarray:
    """Bilinear sample of image (H, W, C) at pixel coords ix, iy (Ho, Wo) -> (Ho, Wo, C)."""
    h, w = image.shape[0], image.shape[1]
    x0 = jnp.floor(ix)
    y0 = jnp.floor(iy)
    tx = ix - x0
    ty = iy - y0
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)
    out = 0.0
    for dy, wy in ((0, 1.0 - ty), (1, ty)):
        for dx, wx in ((0, 1.0 - tx), (1, tx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            weight = wx * wy
            if zeros:
                weight = jnp.where(inside, weight, 0.0)
            value = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
            out = out + weight[..., None] * value
    return out


def grid_sample(
    image: jnp.ndarray,
    grid: jnp.ndarray,
    align_corners: bool = False,
    padding_mode: str = "zeros",
) -> jnp.ndarray:
    """Bilinear ``grid_sample``: image (B, H, W, C), grid (B, Ho, Wo, 2) normalised (x, y).

    Returns (B, Ho, Wo, C). Equivalent to
    ``F.grid_sample(image_nchw, grid, mode='bilinear', padding_mode=..., align_corners=...)``
    transposed to NHWC. Non-finite grid values give 0 / border samples, not NaN
    (PyTorch's behaviour for NaN grids is unspecified).
    """
    image, grid = jnp.asarray(image), jnp.asarray(grid)
    _check_nhwc(image, grid, padding_mode)
    h, w = image.shape[1], image.shape[2]
    ix = unnormalize(grid[..., 0], w, align_corners)
    iy = unnormalize(grid[..., 1], h, align_corners)
    if padding_mode == "border":
        ix = _clamp_like_torch(ix, w - 1.0)
        iy = _clamp_like_torch(iy, h - 1.0)
    # Keep far-away / non-finite coordinates inside int32 range; they sample only padding.
    ix = jnp.where(jnp.isfinite(ix), jnp.clip(ix, -2.0, w + 1.0), -2.0)
    iy = jnp.where(jnp.isfinite(iy), jnp.clip(iy, -2.0, h + 1.0), -2.0)
    sample = lambda im, x, y: _sample_one(im, x, y, padding_mode == "zeros")  # noqa: E731
    return jax.vmap(sample)(image, ix, iy)


def flow_to_grid(flow: jnp.ndarray) -> jnp.ndarray:
    """PWC-Net grid (B, H, W, 2) from a pixel flow (B, H, W, 2): ``2 (pixel + flow) / (size - 1) - 1``.

    This is the ``align_corners=True`` normalisation of ``pixel + flow`` (see :func:`warp`).
    """
    flow = jnp.asarray(flow)
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (B, H, W, 2) (x, y pixels), got {flow.shape}")
    h, w = flow.shape[1], flow.shape[2]
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=flow.dtype), jnp.arange(w, dtype=flow.dtype), indexing="ij")
    gx = 2.0 * (xs + flow[..., 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys + flow[..., 1]) / max(h - 1, 1) - 1.0
    return jnp.stack([gx, gy], axis=-1)


def warp(
    image: jnp.ndarray,
    flow: jnp.ndarray,
    align_corners: bool = True,
    padding_mode: str = "zeros",
) -> jnp.ndarray:
    """Backward-warp ``image`` (B, H, W, C) with a pixel ``flow`` (B, H, W, 2) (x, y), PWC-Net style.

    Output pixel (i, j) samples ``image`` at ``(x=j + flow_x, y=i + flow_y)``: the grid
    is normalised as ``2 (p + flow) / (size - 1) - 1`` and passed to
    :func:`grid_sample` with ``align_corners``.

    * ``align_corners=True`` (default): the sample is exactly at pixel + flow.
    * ``align_corners=False``: reproduces handobjectconsist's ``imgflowarp.warp``
      (PWC-Net code run on PyTorch >= 1.3), which samples at
      ``(p + flow) * size / (size - 1) - 0.5`` -- a half-pixel stretch about the
      image centre even for zero flow.
    """
    image, flow = jnp.asarray(image), jnp.asarray(flow)
    if flow.shape[:3] != image.shape[:3]:
        raise ValueError(f"flow (B, H, W, 2) must match image (B, H, W, C) spatially: {flow.shape} vs {image.shape}")
    return grid_sample(image, flow_to_grid(flow), align_corners=align_corners, padding_mode=padding_mode)


def warp_valid_mask(
    flow: jnp.ndarray, align_corners: bool = True, threshold: float = 0.99999
) -> jnp.ndarray:
    """In-bounds mask (B, H, W) bool of :func:`warp` (zeros padding): warp an all-ones image, test ``>= threshold``.

    This is handobjectconsist's validity test; with ``align_corners=True`` it is true
    where all four bilinear corners of ``pixel + flow`` lie inside the image.
    """
    flow = jnp.asarray(flow)
    ones = jnp.ones(flow.shape[:3] + (1,), flow.dtype)
    return warp(ones, jax.lax.stop_gradient(flow), align_corners, "zeros")[..., 0] >= threshold


def warp_with_mask(
    image: jnp.ndarray, flow: jnp.ndarray, align_corners: bool = True
) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """(warped image, in-bounds mask) with the warped image zeroed outside the mask (handobjectconsist)."""
    mask = warp_valid_mask(flow, align_corners)
    return warp(image, flow, align_corners, "zeros") * mask[..., None], mask
