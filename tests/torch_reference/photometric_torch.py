"""PyTorch reference of handobjectconsist's flow masking, warping and photometric loss, written from
the reference notes (shared/reference/handobjectconsist.md sections 3.3 - 3.5), for parity tests of
``handjax.losses.photometric``.

Inputs are the RENDERED per-pixel quantities on the square S x S canvas (the rasterisation itself is
handjax's, tested elsewhere): flows (B, S, S, 2) already zeroed where their frame does not carry flow,
and coverage masks (B, S, S). Everything runs in float64 with ``torch.nn.functional.grid_sample``
called as upstream does on PyTorch >= 1.3 (``align_corners=False``, zeros padding) after PWC-Net's
``2 x / (size - 1) - 1`` normalisation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def pwc_warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", thresh: float = 0.99999):
    """x (B, C, H, W) sampled at pixel + flow (flow (B, 2, H, W)); returns (warped * inb, inb (B, C, H, W))."""
    b, _, h, w = x.shape
    xs = torch.arange(w, dtype=x.dtype).view(1, w).expand(h, w)
    ys = torch.arange(h, dtype=x.dtype).view(h, 1).expand(h, w)
    gx = 2.0 * (xs + flow[:, 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys + flow[:, 1]) / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    inb = F.grid_sample(torch.ones_like(x), grid, mode=mode, padding_mode="zeros", align_corners=False)
    inb = (inb >= thresh).to(x.dtype)
    return out * inb, inb


def occlusion_mask_ref(flow_ref_to_query, flow_query_to_ref, cover_ref, keep_query, thresh: float = 0.03):
    """Forward-backward test on the reference grid (upstream's mask of its second frame).

    flow_ref_to_query (B, S, S, 2) on the reference grid (upstream flow21), flow_query_to_ref on the
    query grid (flow12); cover_ref (B, S, S) raw reference alpha; keep_query (B, S, S) query pixels
    carrying flow. Returns (B, S, S) float64 0/1.
    """
    f21 = _t(flow_ref_to_query).permute(0, 3, 1, 2)
    f12 = _t(flow_query_to_ref).permute(0, 3, 1, 2)
    a_ref = _t(cover_ref)[:, None]
    k_q = _t(keep_query)[:, None]
    b, _, s, _ = a_ref.shape
    xs = torch.arange(s, dtype=torch.float64).view(1, 1, 1, s).expand(b, 1, s, s) / s
    ys = torch.arange(s, dtype=torch.float64).view(1, 1, s, 1).expand(b, 1, s, s) / s
    grid_ref = torch.cat([xs, ys, a_ref, a_ref], 1)
    on_query, _ = pwc_warp(grid_ref, f12, mode="nearest")
    on_query = on_query * k_q
    back, _ = pwc_warp(on_query, f21, mode="nearest")
    back = back * a_ref
    mask = grid_ref[:, 2] * back[:, 2]
    disp = ((back - grid_ref) * mask[:, None])[:, :2].norm(dim=1)
    return (mask * (disp < thresh).to(torch.float64)).numpy()


def consistency_loss_ref(flow21_canvas, flow12_canvas, keep_ref, cover_ref, keep_query, image_query, image_ref,
                         thresh: float = 0.03):
    """Per-pair L1 warping loss (B,), the final flow21 (B, H, W, 2) and the valid mask (B, H, W).

    flow*_canvas (B, S, S, 2) raw rendered flows (not yet masked); keep_* (B, S, S) coverage minus ignored
    faces; cover_ref raw reference coverage; images (B, H, W, C) with H, W <= S (canvas cropped to them).
    """
    keep_ref, keep_query, cover_ref = (np.asarray(m, np.float64) for m in (keep_ref, keep_query, cover_ref))
    f21 = np.asarray(flow21_canvas, np.float64) * keep_ref[..., None]
    f12 = np.asarray(flow12_canvas, np.float64) * keep_query[..., None]
    occ = occlusion_mask_ref(f21, f12, cover_ref, keep_query, thresh)
    f21 = f21 * (cover_ref * occ)[..., None]
    h, w = np.asarray(image_ref).shape[1:3]
    f21 = f21[:, :h, :w]
    q = _t(image_query).permute(0, 3, 1, 2)
    r = _t(image_ref).permute(0, 3, 1, 2)
    warped, inb = pwc_warp(q, _t(f21).permute(0, 3, 1, 2))
    valid = inb[:, 0].bool() & (_t(f21)[..., 0] != 0)
    m = valid[:, None].expand_as(r).to(torch.float64)
    num = (m * (warped - r).abs()).sum(dim=(1, 2, 3))
    den = m.sum(dim=(1, 2, 3))
    den = torch.where(den == 0, torch.ones_like(den), den)
    return (num / den).numpy(), f21, valid.numpy()
