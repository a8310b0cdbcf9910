"""Reference PyTorch DIGIT with DIGIT's module tree and state_dict keys (``pose_reg.*``).

Written from the architecture facts in /work/shared/reference/digit.md 1.1-1.5 (not from the
upstream code): pose-HRNet backbone (tests/torch_reference/hrnet_torch.py), the segmentation
upsampler (bilinear x2 align_corners=True + DoubleConv), the truncated DoubleConv producing 33
logits, the logits encoder (two 3x3 convs + ReLU, maxpool), the MiniUNet merge layer, 1x1
heatmap / depth convs, the conv head + mean, the root / handedness MLPs, and the soft-argmax
decoders. Module names reproduce the 1903 keys of digit_state_dict_keys.tsv for the default
widths; the widths can be narrowed (same key names) for fast tests. Used by tests/test_digit_torch.py
(parity, converter) and benchmarks/digit_bench.py (speed). Images NCHW in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_reference.hrnet_torch import PoseHRNet


class DoubleConv(nn.Module):
    """``double_conv`` = [conv3x3(+bias), BN, ReLU, conv3x3(+bias), BN, ReLU] (keys .0 .1 .3 .4)."""

    def __init__(self, cin, cout, mid=None, truncate=False):
        super().__init__()
        mid = mid or cout
        layers = [nn.Conv2d(cin, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                  nn.Conv2d(mid, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.double_conv = nn.Sequential(*(layers[:4] if truncate else layers))

    def forward(self, x):
        return self.double_conv(x)


class Up(nn.Module):
    """Bilinear x2 (align_corners=True), optional skip concatenated first, DoubleConv."""

    def __init__(self, cin, cout, mid=None):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(cin, cout, mid)

    def forward(self, x, skip=None):
        x = self.up(x)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class OutConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.conv(x)


class MiniUNet(nn.Module):
    def __init__(self, n, u=64):
        super().__init__()
        self.inc = DoubleConv(n, u)
        self.down1 = Down(u, 2 * u)
        self.down2 = Down(2 * u, 4 * u)
        self.down3 = Down(4 * u, 4 * u)
        self.up1 = Up(8 * u, 2 * u, 4 * u)
        self.up2 = Up(4 * u, u, 2 * u)
        self.up3 = Up(2 * u, u, u)
        self.outc = OutConv(u, n)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        y = self.up1(x4, x3)
        y = self.up2(y, x2)
        y = self.up3(y, x1)
        return self.outc(y)


class UpSampler(nn.Module):
    def __init__(self, cin, hidden, mid):
        super().__init__()
        self.up1 = Up(cin, hidden, mid)

    def forward(self, x):
        return self.up1(x)


class SegmHead(nn.Module):
    def __init__(self, cin, seg_mid, seg_hidden, classes=33):
        super().__init__()
        self.upsampler = UpSampler(cin, seg_hidden, seg_mid)
        self.segm_net = DoubleConv(seg_hidden, classes, truncate=True)

    def forward(self, x):
        return self.segm_net(self.upsampler(x))


class SegmNet(nn.Module):
    def __init__(self, cin, seg_mid, seg_hidden):
        super().__init__()
        self.segm_head = SegmHead(cin, seg_mid, seg_hidden)

    def forward(self, x):
        return self.segm_head(x)


def hm2xy(hm):
    """(B, J, H, W) logits -> (B, J, 2) x, y at cell centres (index + 0.5) and the softmax (B, J, H, W)."""
    b, j, h, w = hm.shape
    p = F.softmax(hm.reshape(b, j, h * w), dim=-1).reshape(b, j, h, w)
    ys = torch.arange(h, dtype=hm.dtype) + 0.5
    xs = torch.arange(w, dtype=hm.dtype) + 0.5
    x = (p.sum(dim=2) * xs).sum(-1)
    y = (p.sum(dim=3) * ys).sum(-1)
    return torch.stack([x, y], dim=-1), p


class DIGIT(nn.Module):
    """``pose_reg``. forward(img) -> dict(segm_logits, joints25d, root_logits, rel_root, hand_logits)."""

    def __init__(self, hrnet_kw=None, seg_mid=16, seg_hidden=64, seg_feat=(64, 512), unet_base=64,
                 head=(64, 128, 256, 512, 512, 512), fc=512, root_bins=64):
        super().__init__()
        self.backbone = PoseHRNet(**(hrnet_kw or {}))
        c = self.backbone.num_features
        self.hand_segm = SegmNet(c, seg_mid, seg_hidden)
        self.conv_segm_feat = nn.Sequential(nn.Conv2d(33, seg_feat[0], 3, padding=1), nn.ReLU(),
                                            nn.Conv2d(seg_feat[0], seg_feat[1], 3, padding=1), nn.ReLU(),
                                            nn.MaxPool2d(2))
        n = c + seg_feat[1]
        self.merge_layer = MiniUNet(n, unet_base)
        self.conv_hm = nn.Conv2d(n, 42, 1)
        self.conv_depth = nn.Conv2d(n, 42, 1)
        w = (n,) + tuple(head)
        self.conv_head = nn.Sequential(
            nn.Conv2d(w[0], w[1], 3, padding=1), nn.ReLU(), nn.Conv2d(w[1], w[2], 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w[2], w[3], 3, padding=1), nn.ReLU(), nn.Conv2d(w[3], w[4], 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w[4], w[5], 3, padding=1), nn.ReLU(), nn.Conv2d(w[5], w[6], 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2))
        self.root_fc = nn.Sequential(nn.Linear(w[6], fc), nn.ReLU(), nn.Linear(fc, root_bins))
        self.hand_fc = nn.Sequential(nn.Linear(w[6], fc), nn.ReLU(), nn.Linear(fc, 2))

    def forward(self, img):
        feat = self.backbone(img)
        segm = self.hand_segm(feat)
        fused = self.merge_layer(torch.cat([feat, self.conv_segm_feat(segm)], dim=1))
        hm, depth = self.conv_hm(fused), self.conv_depth(fused)
        xy, p = hm2xy(hm)
        z = (p * depth).sum(dim=(2, 3))
        g = self.conv_head(fused).mean(dim=(2, 3))
        root_logits = self.root_fc(g)
        rel_root = (F.softmax(root_logits, dim=-1) * torch.arange(root_logits.shape[-1], dtype=g.dtype)).sum(-1)
        return {"segm_logits": segm, "joints25d": torch.cat([xy, z[..., None]], dim=-1), "root_logits": root_logits,
                "rel_root": rel_root, "hand_logits": self.hand_fc(g)}


class Model(nn.Module):
    """Upstream's ``Model`` holds the network as ``pose_reg`` (state_dict keys ``pose_reg.*``)."""

    def __init__(self, **kw):
        super().__init__()
        self.pose_reg = DIGIT(**kw)

    def forward(self, img):
        return self.pose_reg(img)


def perturb_bn(model: nn.Module, seed: int = 0) -> None:
    """Random affine parameters and running statistics in every BatchNorm (parity tests)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(n, generator=g))
