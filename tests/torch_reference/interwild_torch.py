"""Reference PyTorch InterWild network, written from shared/reference/interwild.md (never copied), with the
upstream module tree and state-dict keys (``body_backbone``, ``body_box_net.deconv.{0,3,6}`` ConvTranspose2d
+ ``{1,4,7}`` BN, ``bbox_center.0``, ``{r,l}hand_size.{0,2}``, ``hand_roi_net.backbone``,
``hand_position_net.conv.0``, ``hand_rotation_net.conv.{0,1}`` / ``root_pose_out.0`` / ``pose_out.0`` /
``shape_out.0`` / ``cam_out.0``, ``hand_trans_net.backbone`` / ``conv.{0,1}`` / ``fc.0``).

Used by tests/test_interwild_torch.py (parity of the raw outputs with handjax.models.interwild and the
converter) and benchmarks/interwild_bench.py. NCHW; images RGB in [0, 1]. Sizes are parameters (upstream:
image 512x384, body 256x192, hand 256, 8 depth bins, heatmaps 64, sigma 2.5). Differences from upstream that do
not change the numbers: the hand crop is ``grid_sample(align_corners=True)`` at the pixel-index affine (what
kornia's ``warp_affine`` computes with align_corners=True), ``matrix_to_axis_angle`` returns angles in [0, pi]
(pytorch3d >= 3087ab7f; v0.7.4 may return the same rotation with an angle above pi), and MANO is not part of
the network (the parity covers the MANO parameters, not the meshes).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_reference.resnet_torch import ResNet

J = 21


def _resnet(depth: int) -> ResNet:
    net = ResNet(depth)
    del net.fc
    return net


def _conv_layers(chans, kernel, bnrelu_final=True):
    layers = []
    for i in range(len(chans) - 1):
        layers.append(nn.Conv2d(chans[i], chans[i + 1], kernel, padding=kernel // 2))
        if i < len(chans) - 2 or bnrelu_final:
            layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _linear_layers(chans):
    layers = []
    for i in range(len(chans) - 1):
        layers.append(nn.Linear(chans[i], chans[i + 1]))
        if i < len(chans) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def sample(feat, xy):
    """feat (B, C, H, W), xy (B, K, 2) index units -> (B, K, C), grid_sample align_corners=True."""
    h, w = feat.shape[2:]
    grid = torch.stack([xy[..., 0] / (w - 1) * 2 - 1, xy[..., 1] / (h - 1) * 2 - 1], -1)[:, :, None]
    return F.grid_sample(feat, grid, align_corners=True)[..., 0].permute(0, 2, 1)


def soft_argmax_2d(hm):
    b, k, h, w = hm.shape
    p = F.softmax(hm.reshape(b, k, -1), 2).reshape(b, k, h, w)
    x = (p.sum(2) * torch.arange(w, dtype=p.dtype)).sum(-1)
    y = (p.sum(3) * torch.arange(h, dtype=p.dtype)).sum(-1)
    return torch.stack([x, y], -1)


def soft_argmax_3d(hm):
    b, k, d, h, w = hm.shape
    p = F.softmax(hm.reshape(b, k, -1), 2).reshape(b, k, d, h, w)
    x = (p.sum((2, 3)) * torch.arange(w, dtype=p.dtype)).sum(-1)
    y = (p.sum((2, 4)) * torch.arange(h, dtype=p.dtype)).sum(-1)
    z = (p.sum((3, 4)) * torch.arange(d, dtype=p.dtype)).sum(-1)
    return torch.stack([x, y, z], -1)


def rot6d_rows_to_matrix(x):
    a, b = x[..., :3], x[..., 3:]
    b1 = F.normalize(a, dim=-1)
    b2 = F.normalize(b - (b1 * b).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], -2)


def matrix_to_axis_angle(m):
    """Via the quaternion with the largest-denominator branch, w >= 0 (angle in [0, pi])."""
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 1, 0] + m[..., 0, 1],
                     m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], 1 - m00 + m11 - m22,
                     m[..., 2, 1] + m[..., 1, 2]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2],
                     1 - m00 - m11 + m22], -1)], -2)
    best = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22],
                       -1).argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4)))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s = v.norm(dim=-1)
    angle = 2 * torch.atan2(s, q[..., 0])
    factor = torch.where(s < 1e-4, 2 / q[..., 0], angle / s.clamp_min(1e-12))
    return v * factor[..., None]


def restore_bbox(center, size, hm_hw, body_hw, aspect=None, extension=1.0):
    x1 = (center[:, 0] - size[:, 0] / 2) / hm_hw[1] * body_hw[1]
    x2 = (center[:, 0] + size[:, 0] / 2) / hm_hw[1] * body_hw[1]
    y1 = (center[:, 1] - size[:, 1] / 2) / hm_hw[0] * body_hw[0]
    y2 = (center[:, 1] + size[:, 1] / 2) / hm_hw[0] * body_hw[0]
    w, h = x2 - x1, y2 - y1
    cx, cy = x1 + w / 2, y1 + h / 2
    if aspect is not None:
        w, h = w.clone(), h.clone()
        m1, m2 = w > aspect * h, w < aspect * h
        h[m1] = w[m1] / aspect
        w[m2] = h[m2] * aspect
    w, h = w * extension, h * extension
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def affine_of_box(box, out_h, out_w):
    """(N, 3, 3): x' = out_w / (w + 1e-8) (x - cx) + out_w / 2 (kornia get_affine_matrix2d as upstream)."""
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    sx, sy = out_w / (box[:, 2] - box[:, 0] + 1e-8), out_h / (box[:, 3] - box[:, 1] + 1e-8)
    m = torch.zeros(box.shape[0], 3, 3, dtype=box.dtype)
    m[:, 0, 0], m[:, 0, 2] = sx, out_w / 2 - sx * cx
    m[:, 1, 1], m[:, 1, 2] = sy, out_h / 2 - sy * cy
    m[:, 2, 2] = 1
    return m


class BoxNet(nn.Module):
    def __init__(self, in_ch, channels=256):
        super().__init__()
        layers, c = [], in_ch
        for _ in range(3):
            layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True)]
            c = channels
        self.deconv = nn.Sequential(*layers)
        self.bbox_center = _conv_layers([channels, 2], 1, bnrelu_final=False)
        self.rhand_size = _linear_layers([channels, channels, 2])
        self.lhand_size = _linear_layers([channels, channels, 2])

    def forward(self, feat):
        x = self.deconv(feat)
        hm = self.bbox_center(x)
        c = soft_argmax_2d(hm)
        rc, lc = c[:, 0], c[:, 1]
        rs = self.rhand_size(sample(x, rc.detach()[:, None])[:, 0])
        ls = self.lhand_size(sample(x, lc.detach()[:, None])[:, 0])
        b, _, h, w = hm.shape
        p = F.softmax(hm.reshape(b, 2, -1), 2).reshape(b, 2, h, w)
        rconf = sample(p[:, 0:1], rc[:, None])[:, 0, 0]
        lconf = sample(p[:, 1:2], lc[:, None])[:, 0, 0]
        return rc, rs, lc, ls, rconf, lconf, (h, w)


class HandRoI(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.backbone = _resnet(depth)


class PositionNet(nn.Module):
    def __init__(self, in_ch, depth_bins):
        super().__init__()
        self.depth_bins = depth_bins
        self.conv = _conv_layers([in_ch, J * depth_bins], 1, bnrelu_final=False)

    def forward(self, feat):
        hm = self.conv(feat)
        n, _, h, w = hm.shape
        return soft_argmax_3d(hm.view(n, J, self.depth_bins, h, w))


class RotationNet(nn.Module):
    def __init__(self, in_ch, channels, k_value):
        super().__init__()
        self.k_value = k_value
        self.conv = _conv_layers([in_ch, channels], 1)
        self.root_pose_out = _linear_layers([J * (channels + 3), 6])
        self.pose_out = _linear_layers([J * (channels + 3), 90])
        self.shape_out = _linear_layers([in_ch, 10])
        self.cam_out = _linear_layers([in_ch, 3])

    def forward(self, feat, joint_img):
        n = feat.shape[0]
        pooled = feat.mean((2, 3))
        shape = self.shape_out(pooled)
        cam = self.cam_out(pooled)
        root_trans = torch.cat([cam[:, :2], self.k_value * torch.sigmoid(cam[:, 2:3])], 1)
        x = sample(self.conv(feat), joint_img[..., :2])
        x = torch.cat([x, joint_img], 2).reshape(n, -1)
        root_pose = matrix_to_axis_angle(rot6d_rows_to_matrix(self.root_pose_out(x)))
        hand_pose = matrix_to_axis_angle(rot6d_rows_to_matrix(self.pose_out(x).view(n, 15, 6))).reshape(n, 45)
        return root_pose, hand_pose, shape, root_trans


class TransNet(nn.Module):
    def __init__(self, hm_size, sigma, depth_bins, hand_size, hand_grid):
        super().__init__()
        self.hm, self.sigma, self.depth_bins, self.hand_size, self.hand_grid = hm_size, sigma, depth_bins, hand_size, \
            hand_grid
        self.backbone = _resnet(18)
        self.conv = _conv_layers([J * 2 * hm_size, 64], 3)
        self.fc = _linear_layers([2 * (512 + 2), 3])

    def forward(self, rj, lj, rtrans, ltrans):
        coords = []
        for j, t in ((rj, rtrans), (lj, ltrans)):
            xy = j[..., :2] / self.hand_grid * self.hand_size
            xy = torch.einsum("nij,nkj->nki", t[:, :, :2], xy) + t[:, None, :, 2]
            coords.append(torch.cat([xy, j[..., 2:]], -1))
        boxes = []
        for c in coords:
            lo, hi = c[..., :2].min(1)[0], c[..., :2].max(1)[0]
            mid, half = (lo + hi) / 2, (hi - lo) / 2 * 1.2
            boxes.append(torch.cat([mid - half, mid + half], -1))
        u = torch.cat([torch.minimum(boxes[0][:, :2], boxes[1][:, :2]),
                       torch.maximum(boxes[0][:, 2:], boxes[1][:, 2:])], -1)
        w, h = u[:, 2] - u[:, 0], u[:, 3] - u[:, 1]
        cx, cy = u[:, 0] + w / 2, u[:, 1] + h / 2
        side_h = torch.where(w > h, w, h)
        side_w = torch.where(w < h, side_h, w)
        u = torch.stack([cx - side_w / 2, cy - side_h / 2, cx + side_w / 2, cy + side_h / 2], -1)
        A = affine_of_box(u, self.hm, self.hm)
        g = torch.arange(self.hm, dtype=rj.dtype)
        zz, yy, xx = torch.meshgrid(g, g, g, indexing="ij")
        hms, hm_coords = [], []
        for c in coords:
            xy = torch.einsum("nij,nkj->nki", A[:, :2, :2], c[..., :2]) + A[:, None, :2, 2]
            z = c[..., 2] / self.depth_bins * self.hm
            hm_coords.append(torch.cat([xy, z[..., None]], -1))
            x, y = xy[..., 0, None, None, None], xy[..., 1, None, None, None]
            zc = z[..., None, None, None]
            hm = torch.exp(-(((xx - x) / self.sigma) ** 2) / 2 - (((yy - y) / self.sigma) ** 2) / 2
                           - (((zz - zc) / self.sigma) ** 2) / 2) * 255
            hms.append(hm.reshape(-1, J * self.hm, self.hm, self.hm))
        y = self.conv(torch.cat(hms, 1))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            y = getattr(self.backbone, name)(y)
        stride = self.hm / y.shape[-1]
        wrist = torch.stack([hm_coords[0][:, 0, :2], hm_coords[1][:, 0, :2]], 1) / stride
        feat = torch.cat([sample(y, wrist), wrist], 2).reshape(-1, 2 * (512 + 2))
        return self.fc(feat)


class InterWildTorch(nn.Module):
    """The whole network: person crops (B, 3, H, W) in [0, 1] -> dict of the raw outputs (handjax's names)."""

    def __init__(self, image_hw=(512, 384), body_depth=50, hand_depth=50, hand_size=256, depth_bins=8, trans_hm=64,
                 sigma=2.5, deconv_channels=256, rot_channels=512, body_downsample=2):
        super().__init__()
        self.image_hw, self.hand_size, self.body_downsample = tuple(image_hw), hand_size, body_downsample
        self.body_backbone = _resnet(body_depth)
        self.body_box_net = BoxNet(self.body_backbone.num_features, deconv_channels)
        self.hand_roi_net = HandRoI(hand_depth)
        nf = self.hand_roi_net.backbone.num_features
        self.hand_position_net = PositionNet(nf, depth_bins)
        focal = 5000.0 * hand_size / 256
        self.hand_rotation_net = RotationNet(nf, rot_channels, math.sqrt(focal * focal * 0.36 / hand_size ** 2))
        self.hand_grid = None
        self.hand_trans_net = TransNet(trans_hm, sigma, depth_bins, hand_size, None)

    def forward(self, img):
        b = img.shape[0]
        h, w = self.image_hw
        bh, bw = h // self.body_downsample, w // self.body_downsample
        body = F.interpolate(img, size=(bh, bw), mode="bilinear", align_corners=False) if self.body_downsample > 1 \
            else img
        rc, rs, lc, ls, rconf, lconf, hm_hw = self.body_box_net(self.body_backbone.forward_maps(body)["layer4"])
        out = dict(rhand_center=rc, rhand_size=rs, lhand_center=lc, lhand_size=ls, rhand_conf=rconf,
                   lhand_conf=lconf)
        s = self.body_downsample
        crop_boxes = []
        for side, c, sz in (("rhand", rc, rs), ("lhand", lc, ls)):
            out[f"{side}_bbox"] = restore_bbox(c, sz, hm_hw, (bh, bw)) * s
            crop_boxes.append(restore_bbox(c, sz, hm_hw, (bh, bw), 1.0, 2.0).detach() * s)
        S = self.hand_size
        with torch.no_grad():
            o2h = affine_of_box(torch.cat(crop_boxes), S, S)
            inv = torch.linalg.inv(o2h)
            g = torch.arange(S, dtype=img.dtype)
            vv, uu = torch.meshgrid(g, g, indexing="ij")
            uv1 = torch.stack([uu, vv, torch.ones_like(uu)], -1).reshape(-1, 3)
            src = torch.einsum("nij,kj->nki", inv[:, :2], uv1)
            grid = torch.stack([src[..., 0] / (w - 1) * 2 - 1, src[..., 1] / (h - 1) * 2 - 1], -1).view(2 * b, S, S, 2)
            crops = F.grid_sample(torch.cat([img, img]), grid, align_corners=True)
            crops = torch.cat([crops[:b], torch.flip(crops[b:], [3])])
        feat = self.hand_roi_net.backbone.forward_maps(crops)["layer4"]
        grid_n = feat.shape[-1]
        self.hand_trans_net.hand_grid = grid_n
        joint_img = self.hand_position_net(feat)
        root_pose, hand_pose, shape, root_trans = self.hand_rotation_net(feat, joint_img.detach())
        sgn = torch.tensor([1.0, -1.0, -1.0], dtype=img.dtype)
        scale = S / grid_n
        lji = joint_img[b:].clone()
        lji[..., 0] = (S - 1 - lji[..., 0] * scale) / scale
        joint_img = torch.cat([joint_img[:b], lji])
        root_pose = torch.cat([root_pose[:b], root_pose[b:] * sgn])
        hand_pose = torch.cat([hand_pose[:b], (hand_pose[b:].view(b, 15, 3) * sgn).view(b, 45)])
        root_trans = torch.cat([root_trans[:b], root_trans[b:] * torch.tensor([-1.0, 1.0, 1.0], dtype=img.dtype)])
        h2o = inv[:, :2]
        rel = self.hand_trans_net(joint_img[:b].detach(), joint_img[b:].detach(), h2o[:b], h2o[b:])
        out.update(orig2hand=o2h, hand2orig=h2o, joint_img=joint_img, root_pose=root_pose, hand_pose=hand_pose,
                   shape=shape, root_trans=root_trans, rel_trans=rel)
        return out
