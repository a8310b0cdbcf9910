"""Reference PyTorch pose-HRNet (no final layer) with pose_hrnet's module tree and state_dict keys.

Written from the architecture facts in /work/shared/reference/digit.md 1.2 (DIGIT's backbone is
HRNet-Human-Pose-Estimation's ``PoseHighResolutionNet``): stem conv3x3/2 + BN + ReLU twice,
``layer1`` Bottlenecks, transitions, stages 2-4 of HighResolutionModules (BasicBlock branches,
fusion by 1x1 conv + BN + nearest upsampling or chains of stride-2 conv3x3 + BN), the last module
of stage 4 fusing only into branch 0 unless ``multi_scale_output``. Used by tests/test_hrnet.py
(parity) and benchmarks/hrnet_bench.py (speed).

Key names (W32): ``conv1.weight``, ``bn1.*``, ``conv2.weight``, ``bn2.*``,
``layer1.{k}.{conv1,conv2,conv3}.weight``, ``layer1.{k}.bn{1,2,3}.*``, ``layer1.0.downsample.{0,1}.*``,
``transition1.0.{0,1}.*``, ``transition{1,2,3}.{b}.0.{0,1}.*`` (new branches),
``stage{s}.{m}.branches.{b}.{k}.{conv1,bn1,conv2,bn2}.*``,
``stage{s}.{m}.fuse_layers.{i}.{j}.{0,1}.*`` (j > i) and ``.{i}.{j}.{k}.{0,1}.*`` (j < i).
Images are NCHW. ``forward`` returns the branch-0 map of stage 4 (``y_list[0]``);
``forward_maps`` returns every intermediate map, keyed like handjax ``HRNet.features``.
"""
from __future__ import annotations

import torch
from torch import nn

from torch_reference.resnet_torch import BasicBlock, Bottleneck

# (width, layer1 blocks, ((modules, blocks) of stages 2, 3, 4)), as handjax.models.hrnet.HRNET_SPECS
SPECS = {
    "hrnet_w32": (32, 4, ((1, 4), (4, 4), (3, 4))),
    "hrnet_w18": (18, 4, ((1, 4), (4, 4), (3, 4))),
    "hrnet_w18_small": (18, 2, ((1, 2), (3, 2), (2, 2))),
}


def conv_bn(cin: int, cout: int, k: int, stride: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """BasicBlock branches, then ``out_i = relu(sum_j fuse[i][j](x_j))`` (identity for j == i)."""

    def __init__(self, channels: list[int], num_blocks: int, multi_scale_output: bool):
        super().__init__()
        nb = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c) for _ in range(num_blocks)]) for c in channels
        )
        if nb == 1:
            self.fuse_layers = None
            return
        rows = []
        for i in range(nb if multi_scale_output else 1):
            row = []
            for j in range(nb):
                if j > i:
                    seq = conv_bn(channels[j], channels[i], 1, 1, relu=False)
                    seq.append(nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
                    row.append(seq)
                elif j == i:
                    row.append(None)
                else:
                    chain = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        chain.append(conv_bn(channels[j], channels[i] if last else channels[j], 3, 2, relu=not last))
                    row.append(nn.Sequential(*chain))
            rows.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(rows)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        ys = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return ys
        out = []
        for i, row in enumerate(self.fuse_layers):
            total = ys[0] if i == 0 else row[0](ys[0])
            for j in range(1, len(ys)):
                total = total + (ys[j] if j == i else row[j](ys[j]))
            out.append(torch.relu(total))
        return out


class PoseHRNet(nn.Module):
    """pose-HRNet trunk; ``width``, ``layer1_blocks``, ``stages`` as handjax's ``HRNetSpec``."""

    def __init__(self, width: int = 32, layer1_blocks: int = 4, stages=((1, 4), (4, 4), (3, 4)),
                 layer1_planes: int = 64, multi_scale_output: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        out1 = layer1_planes * 4
        down = nn.Sequential(nn.Conv2d(64, out1, 1, bias=False), nn.BatchNorm2d(out1))
        blocks = [Bottleneck(64, layer1_planes, 1, down)]
        blocks += [Bottleneck(out1, layer1_planes) for _ in range(1, layer1_blocks)]
        self.layer1 = nn.Sequential(*blocks)
        prev = [out1]
        for s, (modules, nblocks) in zip((2, 3, 4), stages):
            cur = [width * 2**b for b in range(s)]
            setattr(self, f"transition{s - 1}", self._transition(prev, cur))
            mods = [HighResolutionModule(cur, nblocks, multi_scale_output or s < 4 or m < modules - 1)
                    for m in range(modules)]
            setattr(self, f"stage{s}", nn.ModuleList(mods))
            prev = cur
        self.num_features = width

    @staticmethod
    def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
        items = []
        for i, c in enumerate(cur):
            if i < len(prev):
                items.append(None if prev[i] == c else conv_bn(prev[i], c, 3, 1, relu=True))
            else:
                n = i + 1 - len(prev)
                items.append(nn.Sequential(*[
                    conv_bn(prev[-1], c if k == n - 1 else prev[-1], 3, 2, relu=True) for k in range(n)
                ]))
        return nn.ModuleList(items)

    def forward_maps(self, x: torch.Tensor) -> dict:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        out = {"stem": x}
        x = self.layer1(x)
        out["layer1"] = x
        ys = [x]
        for s in (2, 3, 4):
            trans = getattr(self, f"transition{s - 1}")
            xs = []
            for i, t in enumerate(trans):
                if i < len(ys):
                    xs.append(ys[i] if t is None else t(ys[i]))
                else:
                    xs.append(t(ys[-1]))
            ys = xs
            for module in getattr(self, f"stage{s}"):
                ys = module(ys)
            out[f"stage{s}"] = tuple(ys)
        out["hr"] = ys[0]
        out["pooled"] = ys[0].mean(dim=(2, 3))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)["hr"]


def pose_hrnet(name: str, **kw) -> PoseHRNet:
    width, layer1_blocks, stages = SPECS[name]
    return PoseHRNet(width, layer1_blocks, stages, **kw)
