"""DIGIT's network (Fan et al., 3DV 2021) in Flax NNX: an HRNet backbone, a 33-class part
segmentation head whose RAW logits are encoded back and fused with the backbone feature by a
small UNet, 2.5D keypoints by soft-argmax, a 64-bin relative root depth and handedness logits.

Architecture (facts: /work/shared/reference/digit.md 1.1-1.5; NHWC here, NCHW upstream). For an
S x S crop, ``h = S / 4`` (the backbone's high-resolution map), ``C = width`` of the backbone:

=====================  ==================================================  =====================
part (torch prefix)    computation                                          shape out
=====================  ==================================================  =====================
backbone               registered HRNet (``hrnet_w32`` upstream), ``hr``     (B, h, h, C)
segm_up (hand_segm.    bilinear x2 (align_corners=True), DoubleConv        (B, 2h, 2h, seg_hidden)
segm_head.upsampler.   C -> seg_mid -> seg_hidden (conv+bias, BN, ReLU x2)
up1.conv)
segm_out (hand_segm.   conv3x3 -> 33 (+bias), BN, ReLU, conv3x3 33 -> 33    (B, 2h, 2h, 33) LOGITS
segm_head.segm_net)    (+bias)
segm_feat              conv3x3 33 -> f0 +ReLU, conv3x3 f0 -> f1 +ReLU,       (B, h, h, f1)
(conv_segm_feat.0/2)   maxpool 2x2
merge (merge_layer)    MiniUNet(C + f1 -> C + f1) of concat[backbone, segm]  (B, h, h, C + f1)
conv_hm / conv_depth   1x1 conv (+bias) -> 42 each                          (B, h, h, 42) x 2
head (conv_head)       6 conv3x3 (+bias) + ReLU, maxpool after the 2nd,      (B, h/8, h/8, head[-1])
                       4th and 6th, then the spatial mean                   -> (B, head[-1])
root_fc / hand_fc      Linear, ReLU, Linear -> 64 bins / 2 logits            (B, 64), (B, 2)
=====================  ==================================================  =====================

MiniUNet (``merge``; milesial's UNet without its 4th level, bilinear, factor 2; ``u`` =
``unet_base``, 64 upstream): ``inc`` DoubleConv(n -> u), ``down1..3`` maxpool + DoubleConv
(u -> 2u -> 4u -> 4u), ``up1`` bilinear x2 of x4, concat [x3, up], DoubleConv(8u -> 2u, mid 4u),
``up2`` [x2, up] -> DoubleConv(4u -> u, mid 2u), ``up3`` [x1, up] -> DoubleConv(2u -> u, mid u),
``outc`` 1x1 conv u -> n (+bias). Every DoubleConv conv is 3x3 pad 1 with bias, then BN + ReLU.

Decoding (:func:`soft_argmax_2d`, :func:`soft_argmax_1d`): per joint, softmax over the h*h
cells of its heatmap in (row, col) order; x = sum p (col + 0.5), y = sum p (row + 0.5) (heatmap
units); z = sum p * depth map (2.5D, 1/64 units of the 400 mm root-relative range); the root
depth is the expectation of softmax(64 logits) over bin indices 0..63 (no +0.5). β = 1.

Numerics as torch: explicit symmetric padding, ``TorchBatchNorm`` (eps 1e-5), bilinear
upsampling with align_corners=True written as two interpolation matrices
(:func:`upsample_bilinear_align_corners`), 2x2 max pooling by reshape. Non-backbone layers
start like torch's defaults (kernels and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))).

Input: ``images`` as the pipelines give them (ImageNet-normalised RGB); ``input_norm="unit"``
(DIGIT: RGB / 255 in [0, 1], no mean / std) undoes the normalisation inside the model so a
converted upstream checkpoint sees its own input; ``"imagenet"`` feeds them unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from handjax.models.resnet import CONV_IMPLS, TorchBatchNorm, TorchConv

NUM_JOINTS = 42
NUM_CLASSES = 33
ROOT_BINS = 64
INPUT_NORMS = ("unit", "imagenet")
from handjax.models.input_norm import IMAGENET_MEAN, IMAGENET_STD, from_imagenet  # noqa: F401 (re-exported)


@dataclasses.dataclass(frozen=True)
class DigitSpec:
    """Widths of DIGIT's head (upstream values as defaults; smaller ones for CPU runs).

    seg_mid / seg_hidden: the segmentation upsampler's DoubleConv (16, 64); seg_feat: the two
    convs encoding the logits (64, 512); unet_base: the MiniUNet's first width (64); head: the six
    conv_head widths (64, 128, 256, 512, 512, 512); fc: hidden width of root_fc / hand_fc (512 =
    head[-1] upstream); root_bins: relative-root-depth bins (64).
    """

    seg_mid: int = 16
    seg_hidden: int = 64
    seg_feat: Tuple[int, int] = (64, 512)
    unet_base: int = 64
    head: Tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    fc: int = 512
    root_bins: int = ROOT_BINS

    def __post_init__(self):
        object.__setattr__(self, "seg_feat", tuple(int(v) for v in self.seg_feat))
        object.__setattr__(self, "head", tuple(int(v) for v in self.head))
        if len(self.seg_feat) != 2 or len(self.head) != 6:
            raise ValueError(f"DigitSpec: seg_feat needs 2 widths and head 6, got {self.seg_feat} and {self.head}")
        for name in ("seg_mid", "seg_hidden", "unet_base", "fc", "root_bins"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"DigitSpec: {name} must be positive, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- pure functions
def interp_matrix_align_corners(n: int, m: int) -> np.ndarray:
    """(m, n) float64 matrix of 1-D linear interpolation from n to m samples with
    align_corners=True: output i samples the input at ``i (n - 1) / (m - 1)``."""
    a = np.zeros((m, n), np.float64)
    if n == 1 or m == 1:
        a[:, 0] = 1.0
        return a
    src = np.arange(m) * (n - 1) / (m - 1)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = src - i0
    a[np.arange(m), i0] += 1.0 - w
    a[np.arange(m), i1] += w
    return a


def upsample_bilinear_align_corners(x: jax.Array, factor: int = 2) -> jax.Array:
    """torch ``Upsample(scale_factor=factor, mode='bilinear', align_corners=True)`` on NHWC:
    ``(B, H, W, C)`` -> ``(B, factor H, factor W, C)``, separable (rows, then columns)."""
    _, h, w, _ = x.shape
    ah = jnp.asarray(interp_matrix_align_corners(h, factor * h), x.dtype)
    aw = jnp.asarray(interp_matrix_align_corners(w, factor * w), x.dtype)
    y = jnp.einsum("oh,bhwc->bowc", ah, x)
    return jnp.einsum("pw,bowc->bopc", aw, y)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """torch ``MaxPool2d(2)`` on NHWC with even H, W: ``(B, H, W, C)`` -> ``(B, H/2, W/2, C)``."""
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"max_pool_2x2: height and width must be even, got {x.shape}")
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def soft_argmax_2d(heatmaps: jax.Array, depth: jax.Array | None = None, beta: float = 1.0):
    """DIGIT's ``hm2xy`` (+ the heatmap-weighted depth).

    heatmaps, depth: (B, H, W, J) logits / depth maps. Returns (xy (B, J, 2) with x = column,
    in heatmap cells, cell centres at index + 0.5; z (B, J) = sum softmax * depth, or None).
    The softmax runs over the H*W cells of each joint (row-major, as torch's flatten).
    """
    b, h, w, j = heatmaps.shape
    logits = jnp.transpose(heatmaps, (0, 3, 1, 2)).reshape(b, j, h * w) * beta
    p = jax.nn.softmax(logits, axis=-1)
    cols = jnp.tile(jnp.arange(w, dtype=p.dtype) + 0.5, h)
    rows = jnp.repeat(jnp.arange(h, dtype=p.dtype) + 0.5, w)
    xy = jnp.stack([p @ cols, p @ rows], axis=-1)
    if depth is None:
        return xy, None
    d = jnp.transpose(depth, (0, 3, 1, 2)).reshape(b, j, h * w)
    return xy, jnp.sum(p * d, axis=-1)


def soft_argmax_1d(logits: jax.Array) -> jax.Array:
    """DIGIT's ``soft_argmax_1d``: (B, N) logits -> (B,) expectation over bins 0..N-1."""
    p = jax.nn.softmax(logits, axis=-1)
    return p @ jnp.arange(logits.shape[-1], dtype=p.dtype)


def _torch_uniform(fan_in: int):
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ----------------------------------------------------------------------------- layers
class ConvBias(nnx.Module):
    """torch ``Conv2d(k, stride 1, padding k // 2, bias=True)``: ``conv`` (TorchConv, HWIO kernel)
    + ``bias`` (C_out,). Kernel and bias start U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's default)."""

    def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs, conv_kw: dict):
        self.conv = TorchConv(cin, cout, k, 1, rngs=rngs, **conv_kw)
        init = _torch_uniform(cin * k * k)
        pdt = conv_kw.get("param_dtype", jnp.float32)
        self.conv.kernel[...] = init(rngs.params(), (k, k, cin, cout), pdt)
        self.bias = nnx.Param(init(rngs.params(), (cout,), pdt))

    def __call__(self, x):
        y = self.conv(x)
        return y + self.bias[...].astype(y.dtype)


class DoubleConv(nnx.Module):
    """milesial's DoubleConv: (conv3x3 + bias, BN, ReLU) x 2; torch ``double_conv.{0,1,3,4}`` =
    ``conv1, bn1, conv2, bn2``."""

    def __init__(self, cin: int, cout: int, mid: int, *, rngs: nnx.Rngs, conv_kw: dict, bn_kw: dict):
        self.conv1 = ConvBias(cin, mid, 3, rngs=rngs, conv_kw=conv_kw)
        self.bn1 = TorchBatchNorm(mid, **bn_kw)
        self.conv2 = ConvBias(mid, cout, 3, rngs=rngs, conv_kw=conv_kw)
        self.bn2 = TorchBatchNorm(cout, **bn_kw)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.relu(self.bn2(self.conv2(x)))


class MiniUNet(nnx.Module):
    """DIGIT's merge layer (module docstring); ``(B, H, W, n)`` -> ``(B, H, W, n)``, H, W multiples of 8."""

    def __init__(self, n: int, base: int, *, rngs: nnx.Rngs, conv_kw: dict, bn_kw: dict):
        u = base
        kw = dict(rngs=rngs, conv_kw=conv_kw, bn_kw=bn_kw)
        self.inc = DoubleConv(n, u, u, **kw)
        self.down1 = DoubleConv(u, 2 * u, 2 * u, **kw)
        self.down2 = DoubleConv(2 * u, 4 * u, 4 * u, **kw)
        self.down3 = DoubleConv(4 * u, 4 * u, 4 * u, **kw)
        self.up1 = DoubleConv(8 * u, 2 * u, 4 * u, **kw)
        self.up2 = DoubleConv(4 * u, u, 2 * u, **kw)
        self.up3 = DoubleConv(2 * u, u, u, **kw)
        self.outc = ConvBias(u, n, 1, rngs=rngs, conv_kw=conv_kw)

    def __call__(self, x):
        x1 = self.inc(x)
        x2 = self.down1(max_pool_2x2(x1))
        x3 = self.down2(max_pool_2x2(x2))
        x4 = self.down3(max_pool_2x2(x3))
        y = self.up1(jnp.concatenate([x3, upsample_bilinear_align_corners(x4)], axis=-1))
        y = self.up2(jnp.concatenate([x2, upsample_bilinear_align_corners(y)], axis=-1))
        y = self.up3(jnp.concatenate([x1, upsample_bilinear_align_corners(y)], axis=-1))
        return self.outc(y)


class TorchLinear(nnx.Linear):
    """``nnx.Linear`` with torch's default initialisation (kernel (in, out) and bias U(+-1/sqrt(in)))."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        init = _torch_uniform(cin)
        super().__init__(cin, cout, kernel_init=init, bias_init=init, dtype=dtype, param_dtype=param_dtype,
                         rngs=rngs)


@struct.dataclass
class DigitOutput:
    """Raw outputs of :class:`DigitModel` (2.5D units of the heatmap grid).

    segm_logits (B, 2h, 2h, 33); heatmaps / depth_maps (B, h, h, 42); joints25d (B, 42, 3): x, y
    in heatmap cells, z in 1/``depth_units`` of the root-relative range; root_logits (B, bins);
    rel_root (B,) in bins; hand_logits (B, 2) [right, left]; hm_size = h (static).
    """

    segm_logits: jax.Array
    heatmaps: jax.Array
    depth_maps: jax.Array
    joints25d: jax.Array
    root_logits: jax.Array
    rel_root: jax.Array
    hand_logits: jax.Array
    hm_size: int = struct.field(pytree_node=False, default=64)


class DigitModel(nnx.Module):
    """DIGIT (module docstring). ``model(images (B, S, S, 3)) -> DigitOutput``; S a multiple of 32.

    Args:
      backbone: a registered HRNet name (``hrnet_w32`` upstream); ``backbone_kw``: its overrides
        (e.g. ``width``, ``stages``; see ``handjax.models.hrnet``).
      spec: head widths (:class:`DigitSpec`).
      input_norm: "unit" (DIGIT's RGB / 255 input) or "imagenet" (the pipelines' normalisation).
      conv_impl: 3x3 / stride-1 convolution algorithm (``TorchConv``).
    """

    def __init__(self, *, rngs: nnx.Rngs, backbone: str = "hrnet_w32", backbone_kw: dict | None = None,
                 spec: DigitSpec | None = None, input_norm: str = "unit", conv_impl: str = "auto",
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, backbone_init: str = "kaiming"):
        from handjax.models.registry import build

        spec = spec or DigitSpec()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"DigitModel: input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"DigitModel: conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
        self.spec = spec
        self.input_norm = input_norm
        self.backbone = build("backbone", backbone, config_key="model.backbone", rngs=rngs, conv_impl=conv_impl,
                              dtype=dtype, param_dtype=param_dtype, init=backbone_init, **dict(backbone_kw or {}))
        c = int(self.backbone.num_features)
        conv_kw = dict(dtype=dtype, param_dtype=param_dtype, precision=None, conv_impl=conv_impl)
        bn_kw = dict(dtype=dtype, param_dtype=param_dtype)
        kw = dict(rngs=rngs, conv_kw=conv_kw)
        self.segm_up = DoubleConv(c, spec.seg_hidden, spec.seg_mid, bn_kw=bn_kw, **kw)
        self.segm_conv1 = ConvBias(spec.seg_hidden, NUM_CLASSES, 3, **kw)
        self.segm_bn = TorchBatchNorm(NUM_CLASSES, **bn_kw)
        self.segm_conv2 = ConvBias(NUM_CLASSES, NUM_CLASSES, 3, **kw)
        self.segm_feat1 = ConvBias(NUM_CLASSES, spec.seg_feat[0], 3, **kw)
        self.segm_feat2 = ConvBias(spec.seg_feat[0], spec.seg_feat[1], 3, **kw)
        n = c + spec.seg_feat[1]
        self.merge = MiniUNet(n, spec.unet_base, bn_kw=bn_kw, **kw)
        self.conv_hm = ConvBias(n, NUM_JOINTS, 1, **kw)
        self.conv_depth = ConvBias(n, NUM_JOINTS, 1, **kw)
        widths = (n,) + spec.head
        self.head = nnx.List([ConvBias(widths[i], widths[i + 1], 3, **kw) for i in range(6)])
        lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.root_fc1 = TorchLinear(spec.head[-1], spec.fc, **lin)
        self.root_fc2 = TorchLinear(spec.fc, spec.root_bins, **lin)
        self.hand_fc1 = TorchLinear(spec.head[-1], spec.fc, **lin)
        self.hand_fc2 = TorchLinear(spec.fc, 2, **lin)

    def _input(self, images):
        if self.input_norm == "imagenet":
            return images
        return from_imagenet(images)

    def segmentation(self, feat):
        """Backbone map (B, h, h, C) -> segmentation logits (B, 2h, 2h, 33)."""
        y = self.segm_up(upsample_bilinear_align_corners(feat))
        y = nnx.relu(self.segm_bn(self.segm_conv1(y)))
        return self.segm_conv2(y)

    def forward_features(self, x):
        """Images already in the model's input space -> DigitOutput."""
        feat = self.backbone.features(x)["hr"]
        segm = self.segmentation(feat)
        s = nnx.relu(self.segm_feat1(segm))
        s = max_pool_2x2(nnx.relu(self.segm_feat2(s)))
        fused = self.merge(jnp.concatenate([feat, s], axis=-1))
        hm, depth = self.conv_hm(fused), self.conv_depth(fused)
        xy, z = soft_argmax_2d(hm, depth)
        g = fused
        for i, conv in enumerate(self.head):
            g = nnx.relu(conv(g))
            if i % 2 == 1:
                g = max_pool_2x2(g)
        g = jnp.mean(g, axis=(1, 2))
        root_logits = self.root_fc2(nnx.relu(self.root_fc1(g)))
        hand_logits = self.hand_fc2(nnx.relu(self.hand_fc1(g)))
        return DigitOutput(segm_logits=segm, heatmaps=hm, depth_maps=depth,
                           joints25d=jnp.concatenate([xy, z[..., None]], axis=-1), root_logits=root_logits,
                           rel_root=soft_argmax_1d(root_logits), hand_logits=hand_logits, hm_size=int(hm.shape[1]))

    def __call__(self, images):
        if images.ndim != 4 or images.shape[1] != images.shape[2]:
            raise ValueError(f"DigitModel: expected square NHWC crops (B, S, S, 3), got {images.shape}")
        return self.forward_features(self._input(images))


def _register():
    from handjax.models.registry import register

    @register("head", "digit")
    def build_digit(**kwargs):
        """The whole DIGIT network (its head needs the backbone's spatial map, so it owns it)."""
        return DigitModel(**kwargs)


_register()
