"""HRNet backbones (pose-HRNet as DIGIT uses it) in Flax NNX, with torch-exact numerics.

Architecture (Sun et al., "Deep High-Resolution Representation Learning for Human Pose
Estimation", CVPR 2019; the ``pose_hrnet`` of HRNet-Human-Pose-Estimation, which DIGIT copies
as its backbone, see /work/shared/reference/digit.md 1.2):

* stem: conv3x3 3->64 /2, BN, ReLU, conv3x3 64->64 /2, BN, ReLU (1/4 resolution);
* ``layer1``: ``layer1_blocks`` Bottlenecks (planes ``layer1_planes``, 4x expansion; block 0
  has a 1x1 ``downsample``);
* stages 2, 3, 4 with 2, 3, 4 parallel branches; branch ``b`` runs at 1/(4 * 2^b) of the input
  resolution with ``width * 2^b`` channels. A stage is ``num_modules`` HighResolutionModules;
  each runs ``num_blocks`` BasicBlocks per branch and then fuses the branches: output ``i`` is
  ``ReLU(sum_j f_ij(x_j))`` with ``f_ii`` the identity, ``f_ij`` (j > i) a 1x1 conv + BN +
  NEAREST upsampling by 2^(j-i), and ``f_ij`` (j < i) a chain of i-j stride-2 3x3 convs + BN
  (ReLU after all but the last; the intermediate ones keep branch j's channels);
* transitions before stages 2-4: ``transition1.0`` = conv3x3 (layer1 channels -> width) + BN +
  ReLU; every new branch = stride-2 conv3x3 + BN + ReLU from the last existing branch; existing
  branches keep their channels (``None`` entries: no parameters);
* ``multi_scale_output=False`` (pose-HRNet, DIGIT): the LAST module of stage 4 fuses into branch
  0 only, so its ``fuse_layers`` has one row and the output is one map. ``True`` (the HRNet
  classification / segmentation trunks) fuses into all four.

Numerics follow torch: explicit symmetric padding (3x3 pad 1, 1x1 pad 0; never Flax 'SAME'),
``TorchBatchNorm`` (eps 1e-5, Flax momentum 0.9 = torch 0.1, unbiased running variance),
``TorchConv`` (1x1 convolutions as matrix products, 3x3 / stride-1 as Winograd on CPU; see
``handjax.models.resnet``), nearest upsampling as an exact repeat (``upsample_nearest``) and
the fused sum accumulated in torch's order (``x_0`` or ``f_i0(x_0)`` first, then j = 1, 2, ...).
Images are NHWC; height and width must be multiples of 32 (every branch's stride-2 halvings
must be undone exactly by the upsampling, as torch's sum requires).

Specs (``HRNET_SPECS``, registered as backbones by these names; every field can be overridden
as a keyword of the factory, e.g. ``build("backbone", "hrnet_w18_small", width=8)``):

=================  =====  ==============  ===================================  ============
name               width  layer1 blocks   (modules, blocks) of stages 2, 3, 4  parameters
=================  =====  ==============  ===================================  ============
``hrnet_w32``      32     4               (1, 4), (4, 4), (3, 4)               28,535,552
``hrnet_w18``      18     4               (1, 4), (4, 4), (3, 4)                9,317,892
``hrnet_w18_small``  18   2               (1, 2), (3, 2), (2, 2)                3,616,352
=================  =====  ==============  ===================================  ============

``hrnet_w32`` is DIGIT's backbone (28,535,552 parameters, digit.md 1.6);
``hrnet_w18_small`` has the block counts of HRNetV2-W18-Small-v2 (with the pose stem) and is
the size for CPU runs. Counts are for ``multi_scale_output=False``.

Outputs: ``features(x)`` returns ``stem``, ``layer1``, the branch maps of each stage
(``stage2``/``stage3``/``stage4`` tuples) and ``hr`` = ``stage4[0]``, the ``(B, H/4, W/4,
width)`` map DIGIT's heads read (its ``y_list[0]``), plus ``pooled``, its spatial mean.
``__call__(x)`` is ``pooled`` (the registry's backbone contract); ``num_features = width``.

torch state_dict key -> NNX path (the rule ``torch_key_to_nnx_path`` implements)
------------------------------------------------------------------------------
The module tree mirrors pose_hrnet's, so every key maps 1:1 (DIGIT's checkpoint carries them
under ``pose_reg.backbone.``; strip that prefix first). Split the key on ``.``; integer
components index ``nnx.List`` items; the last two components decide the leaf:

=====================================================  =====================  ================
torch key (module path ``M``)                          NNX path               transform
=====================================================  =====================  ================
``M.weight``, ``M`` = ``conv1``/``conv2``/``conv3``     ``M.kernel``           OIHW -> HWIO,
or ``M`` ends in index ``0`` (a Sequential's conv)                             ``transpose(2,3,1,0)``
``M.weight`` / ``M.bias``, ``M`` = ``bn1``/``bn2``/     ``M.scale``/``M.bias``  none
``bn3`` or ends in index ``1`` (a Sequential's BN)
``M.running_mean`` / ``M.running_var``                 ``M.mean`` / ``M.var``  none
``M.num_batches_tracked``                              (dropped)              momentum is fixed
=====================================================  =====================  ================

Examples: ``stage3.2.fuse_layers.2.0.1.0.weight`` -> ``('stage3', 2, 'fuse_layers', 2, 0, 1,
0, 'kernel')``; ``transition1.1.0.1.running_var`` -> ``('transition1', 1, 0, 1, 'var')``;
``layer1.0.downsample.1.weight`` -> ``('layer1', 0, 'downsample', 1, 'scale')``.
The ReLU / Upsample members of torch's Sequentials (index 2) hold no tensors and have no NNX
counterpart. Every convolution is bias-free.

Initialisation: ``init="kaiming"`` (default) draws kernels like torchvision (Kaiming-normal,
fan_out, ReLU gain); ``init="hrnet"`` like pose_hrnet's ``init_weights`` (N(0, 0.001)). BN scale
1, bias 0 either way. Upstream always overwrites the kernels with ImageNet weights (a missing
file is an error there); N(0, 0.001) kernels under Adam give huge relative updates, so the
Kaiming draw is the default for training from scratch.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from handjax.models.resnet import CONV_IMPLS, BasicBlock, Bottleneck, TorchBatchNorm, TorchConv

__all__ = ["HRNET_SPECS", "HRNet", "HRNetModule", "HRNetSpec", "INITS", "torch_key_to_nnx_path", "upsample_nearest"]

STEM_CHANNELS = 64
NUM_BRANCHES = (2, 3, 4)  # branches of stages 2, 3, 4
INITS = ("kaiming", "hrnet")


@dataclasses.dataclass(frozen=True)
class HRNetSpec:
    """Sizes of an HRNet.

    Attributes:
      width: channels of branch 0; branch b has ``width * 2**b``.
      layer1_planes: Bottleneck planes of ``layer1`` (its output has 4x as many channels).
      layer1_blocks: Bottlenecks in ``layer1``.
      stages: ``(num_modules, num_blocks)`` of stages 2, 3 and 4 (BasicBlocks per branch).
    """

    width: int = 32
    layer1_planes: int = 64
    layer1_blocks: int = 4
    stages: tuple = ((1, 4), (4, 4), (3, 4))

    def __post_init__(self):
        def positive_int(v):
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        for name in ("width", "layer1_planes", "layer1_blocks"):
            if not positive_int(getattr(self, name)):
                raise ValueError(f"HRNetSpec: {name} must be a positive int, got {getattr(self, name)!r}")
        stages = tuple(tuple(s) for s in self.stages) if isinstance(self.stages, (list, tuple)) else None
        if (stages is None or len(stages) != 3
                or not all(len(s) == 2 and all(positive_int(v) for v in s) for s in stages)):
            raise ValueError(
                "HRNetSpec: stages must be three (num_modules, num_blocks) pairs of positive ints "
                f"(stages 2, 3, 4), got {self.stages!r}"
            )
        object.__setattr__(self, "stages", stages)

    def channels(self, num_branches: int) -> tuple[int, ...]:
        """Channels of branches ``0 .. num_branches-1``."""
        return tuple(self.width * 2**b for b in range(num_branches))


HRNET_SPECS: dict[str, HRNetSpec] = {
    "hrnet_w32": HRNetSpec(width=32, layer1_blocks=4, stages=((1, 4), (4, 4), (3, 4))),
    "hrnet_w18": HRNetSpec(width=18, layer1_blocks=4, stages=((1, 4), (4, 4), (3, 4))),
    "hrnet_w18_small": HRNetSpec(width=18, layer1_blocks=2, stages=((1, 2), (3, 2), (2, 2))),
}


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """torch ``Upsample(scale_factor=factor, mode='nearest')`` on NHWC: ``(B, h, w, C)`` ->
    ``(B, factor*h, factor*w, C)``, ``out[:, r, c] = x[:, r // factor, c // factor]``.

    A broadcast + reshape (its gradient sums each ``factor x factor`` block, as torch's does).
    """
    if factor == 1:
        return x
    b, h, w, c = x.shape
    y = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return y.reshape(b, h * factor, w * factor, c)


def _conv_bn(in_ch: int, out_ch: int, k: int, stride: int, conv_kw: dict, bn_kw: dict) -> nnx.List:
    """torch ``Sequential(Conv2d(k, stride, pad k//2, bias=False), BatchNorm2d[, ReLU])``: items 0, 1."""
    return nnx.List([TorchConv(in_ch, out_ch, k, stride, **conv_kw), TorchBatchNorm(out_ch, **bn_kw)])


def _apply_conv_bn(seq: nnx.List, x: jax.Array, relu: bool) -> jax.Array:
    conv, bn = seq
    y = bn(conv(x))
    return nnx.relu(y) if relu else y


class HRNetModule(nnx.Module):
    """One HighResolutionModule: BasicBlocks per branch, then the multi-resolution fusion.

    ``__call__(xs)`` takes the branch maps ``[(B, H_b, W_b, C_b)]`` (``H_b = H_0 / 2^b``) and
    returns the fused maps: all branches, or only branch 0 when ``multi_scale_output`` is False.

    Attributes (torch names): ``branches[b][k]`` BasicBlock k of branch b;
    ``fuse_layers[i][j]``: None (i == j), ``[conv1x1, bn]`` (j > i; then nearest upsampling),
    ``[[conv3x3/2, bn], ...]`` (j < i; i - j steps). ``fuse_layers`` is None for one branch.
    """

    def __init__(self, channels: tuple[int, ...], num_blocks: int, *, multi_scale_output: bool, conv_kw: dict,
                 bn_kw: dict, block_kw: dict):
        nb = len(channels)
        self.channels = tuple(channels)
        self.multi_scale_output = multi_scale_output
        self.branches = nnx.List([
            nnx.List([BasicBlock(c, c, 1, **block_kw) for _ in range(num_blocks)]) for c in channels
        ])
        if nb == 1:
            self.fuse_layers = None
            return
        rows = []
        for i in range(nb if multi_scale_output else 1):
            row = []
            for j in range(nb):
                if j > i:
                    row.append(_conv_bn(channels[j], channels[i], 1, 1, conv_kw, bn_kw))
                elif j == i:
                    row.append(None)
                else:
                    steps = [
                        _conv_bn(channels[j], channels[i] if k == i - j - 1 else channels[j], 3, 2, conv_kw, bn_kw)
                        for k in range(i - j)
                    ]
                    row.append(nnx.List(steps))
            rows.append(nnx.List(row))
        self.fuse_layers = nnx.List(rows)

    def _fuse(self, i: int, j: int, x: jax.Array) -> jax.Array:
        """``f_ij(x_j)``: the map of branch j brought to branch i's resolution and channels."""
        layer = self.fuse_layers[i][j]
        if j > i:
            return upsample_nearest(_apply_conv_bn(layer, x, relu=False), 2 ** (j - i))
        for k, step in enumerate(layer):
            x = _apply_conv_bn(step, x, relu=k < len(layer) - 1)
        return x

    def __call__(self, xs: list[jax.Array]) -> list[jax.Array]:
        if len(xs) != len(self.channels):
            raise ValueError(f"HRNetModule: expected {len(self.channels)} branch maps, got {len(xs)}")
        ys = []
        for blocks, x in zip(self.branches, xs):
            for block in blocks:
                x = block(x)
            ys.append(x)
        if self.fuse_layers is None:
            return ys
        out = []
        for i in range(len(self.fuse_layers)):
            y = ys[0] if i == 0 else self._fuse(i, 0, ys[0])
            for j in range(1, len(ys)):
                y = y + (ys[j] if j == i else self._fuse(i, j, ys[j]))
            out.append(nnx.relu(y))
        return out


class HRNet(nnx.Module):
    """pose-HRNet backbone (no final layer); see the module docstring.

    Args:
      spec: sizes (``HRNET_SPECS[...]`` or an ``HRNetSpec``); default HRNet-W32.
      rngs: random streams for the kernels (``rngs.params``).
      dtype: compute dtype of convolutions and BN outputs (statistics in at least float32).
      param_dtype: dtype of the parameters.
      precision: ``lax.Precision`` of the convolutions (None = backend default).
      multi_scale_output: the last module of stage 4 fuses into all branches (True) or only into
        branch 0 (False, pose-HRNet / DIGIT).
      bn_momentum, bn_epsilon, unbiased_running_var: ``TorchBatchNorm`` settings (torch's).
      conv_impl: 3x3 / stride-1 convolution algorithm (``TorchConv``: auto, winograd, xla).
      init: ``"kaiming"`` (torchvision's draw) or ``"hrnet"`` (N(0, 0.001), pose_hrnet's).
    """

    def __init__(
        self,
        spec: HRNetSpec | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        precision=None,
        multi_scale_output: bool = False,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        unbiased_running_var: bool = True,
        conv_impl: str = "auto",
        init: str = "kaiming",
    ):
        spec = HRNET_SPECS["hrnet_w32"] if spec is None else spec
        if not isinstance(spec, HRNetSpec):
            raise ValueError(f"HRNet: spec must be an HRNetSpec, got {type(spec).__name__}")
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"HRNet: conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
        if init not in INITS:
            raise ValueError(f"HRNet: init must be one of {INITS}, got {init!r}")
        self.spec = spec
        self.multi_scale_output = bool(multi_scale_output)
        conv_kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision, conv_impl=conv_impl)
        bn_kwargs = dict(momentum=bn_momentum, epsilon=bn_epsilon, unbiased_running_var=unbiased_running_var)
        bn_kw = dict(dtype=dtype, param_dtype=param_dtype, **bn_kwargs)
        block_kw = dict(bn_kwargs=bn_kwargs, **conv_kw)

        self.conv1 = TorchConv(3, STEM_CHANNELS, 3, 2, **conv_kw)
        self.bn1 = TorchBatchNorm(STEM_CHANNELS, **bn_kw)
        self.conv2 = TorchConv(STEM_CHANNELS, STEM_CHANNELS, 3, 2, **conv_kw)
        self.bn2 = TorchBatchNorm(STEM_CHANNELS, **bn_kw)
        planes = spec.layer1_planes
        out1 = planes * Bottleneck.expansion
        self.layer1 = nnx.List([
            Bottleneck(STEM_CHANNELS if k == 0 else out1, planes, 1, **block_kw) for k in range(spec.layer1_blocks)
        ])

        pre = (out1,)
        for s, (nb, (num_modules, num_blocks)) in enumerate(zip(NUM_BRANCHES, spec.stages), start=2):
            cur = spec.channels(nb)
            setattr(self, f"transition{s - 1}", self._transition(pre, cur, conv_kw, bn_kw))
            modules = [
                HRNetModule(cur, num_blocks, multi_scale_output=(self.multi_scale_output or s < 4 or m < num_modules - 1),
                            conv_kw=conv_kw, bn_kw=bn_kw, block_kw=block_kw)
                for m in range(num_modules)
            ]
            setattr(self, f"stage{s}", nnx.List(modules))
            pre = cur
        self.num_features = spec.width
        self.branch_channels = spec.channels(NUM_BRANCHES[-1])
        if init == "hrnet":
            for _, m in nnx.iter_modules(self):
                if isinstance(m, TorchConv):
                    k = m.kernel[...]
                    m.kernel[...] = 0.001 * jax.random.normal(rngs.params(), k.shape, k.dtype)

    @staticmethod
    def _transition(pre: tuple, cur: tuple, conv_kw: dict, bn_kw: dict) -> nnx.List:
        """pose_hrnet's transition layer from ``pre`` to ``cur`` branch channels (see the docstring)."""
        items = []
        for i, c in enumerate(cur):
            if i < len(pre):
                items.append(None if pre[i] == c else _conv_bn(pre[i], c, 3, 1, conv_kw, bn_kw))
            else:
                n_new = i + 1 - len(pre)
                items.append(nnx.List([
                    _conv_bn(pre[-1], c if k == n_new - 1 else pre[-1], 3, 2, conv_kw, bn_kw) for k in range(n_new)
                ]))
        return nnx.List(items)

    @staticmethod
    def _apply_transition(transition: nnx.List, ys: list[jax.Array]) -> list[jax.Array]:
        """Existing branches through their (optional) conv; new ones from the last existing branch."""
        out = []
        for i, t in enumerate(transition):
            if i < len(ys):
                out.append(ys[i] if t is None else _apply_conv_bn(t, ys[i], relu=True))
            else:
                x = ys[-1]
                for step in t:
                    x = _apply_conv_bn(step, x, relu=True)
                out.append(x)
        return out

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"HRNet: expected NHWC images of shape (B, H, W, 3), got shape {x.shape}")
        if x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(
                f"HRNet: image height and width must be multiples of 32 (stem /4, then three /2 branches "
                f"whose maps are upsampled back and summed), got shape {x.shape}"
            )

    def features(self, x: jax.Array) -> dict:
        """Maps of NHWC images ``(B, H, W, 3)`` (H, W multiples of 32).

        Returns a dict:
          ``stem``   ``(B, H/4, W/4, 64)`` after conv2-bn2-relu;
          ``layer1`` ``(B, H/4, W/4, 4 * layer1_planes)``;
          ``stage2``, ``stage3`` tuples of 2 / 3 maps, branch b ``(B, H/2^(b+2), W/2^(b+2), width * 2^b)``;
          ``stage4`` tuple of 1 map (``multi_scale_output=False``) or 4;
          ``hr``     ``stage4[0]``, ``(B, H/4, W/4, width)``: DIGIT's backbone output;
          ``pooled`` ``(B, width)``, the spatial mean of ``hr``.
        """
        self._check_input(x)
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        out = {"stem": y}
        for block in self.layer1:
            y = block(y)
        out["layer1"] = y
        ys = [y]
        for s in (2, 3, 4):
            ys = self._apply_transition(getattr(self, f"transition{s - 1}"), ys)
            for module in getattr(self, f"stage{s}"):
                ys = module(ys)
            out[f"stage{s}"] = tuple(ys)
        out["hr"] = ys[0]
        out["pooled"] = jnp.mean(ys[0], axis=(1, 2))
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        """Spatial mean of the high-resolution map, ``(B, num_features)``."""
        return self.features(x)["pooled"]


_BN_LEAF = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def torch_key_to_nnx_path(key: str) -> tuple[tuple, str] | None:
    """One pose_hrnet state_dict key (backbone prefix already stripped) -> ``(nnx path, transform)``.

    ``transform`` is ``"conv"`` (OIHW -> HWIO), ``"bn_scale"``, ``"bn_bias"``, ``"bn_mean"`` or
    ``"bn_var"`` (none). Returns None for ``num_batches_tracked``. A key that fits no rule of the
    module docstring's table is a ValueError naming it.
    """
    parts = key.split(".")
    if len(parts) < 2:
        raise ValueError(f"HRNet key {key!r}: expected '<module path>.<tensor name>'")
    *mods, leaf = parts
    path = tuple(int(p) if p.isdigit() else p for p in mods)
    if leaf == "num_batches_tracked":
        return None
    module = mods[-1]
    if re.fullmatch(r"conv[1-3]|0", module) and leaf == "weight":
        return path + ("kernel",), "conv"
    if re.fullmatch(r"bn[1-3]|1", module) and leaf in ("weight", "bias", "running_mean", "running_var"):
        name = _BN_LEAF[leaf]
        return path + (name,), "bn_" + name
    raise ValueError(
        f"HRNet key {key!r}: not a conv weight ('conv1-3' or '.0' + '.weight') or a BatchNorm tensor "
        "('bn1-3' or '.1' + weight/bias/running_mean/running_var/num_batches_tracked)"
    )


def _register_hrnets():
    from handjax.models.registry import register

    fields = {f.name for f in dataclasses.fields(HRNetSpec)}

    def factory(name):
        def build(**kwargs):
            overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
            spec = dataclasses.replace(HRNET_SPECS[name], **overrides)
            return HRNet(spec, **kwargs)

        return build

    for name in HRNET_SPECS:
        register("backbone", name)(factory(name))


_register_hrnets()
