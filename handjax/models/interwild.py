"""InterWild (Moon, CVPR 2023) in Flax NNX: hand boxes from a person crop, shared-domain hand
crops, 2.5D joints + MANO per hand, and an image-free relative translation.

Reference facts: ``shared/reference/interwild.md``. The network (:class:`InterWildModel`) maps a
person crop (B, H, W, 3) with RGB in [0, 1] (no mean/std, as upstream) to a dict of raw outputs;
:func:`decode` turns them into the hand-output contract with MANO. Module attribute names follow
the upstream state dict (``body_backbone``, ``body_box_net``, ``hand_backbone`` =
``hand_roi_net.backbone``, ``hand_position_net``, ``hand_rotation_net``, ``hand_trans_net``) so
that :mod:`handjax.convert.interwild` maps keys one to one.

Sizes are configurable (:class:`Geometry`); upstream: person crop 512x384, body input 256x192
(a 2x2 average), hand crops 256x256 (8x8 features, 8 depth bins), TransNet heatmaps 64^3, sigma
2.5. Coordinates follow upstream's pixel-index convention (pixel centres at integers) and
``grid_sample(align_corners=True)`` for every feature sampling; ``Geometry.cell_centres`` (not
upstream, for small hand grids) moves PositionNet's outputs to cell centres.

Shapes (B person crops, N = 2B hand crops, right hands first, J = 21 joints in InterWild's
``sh_joints`` order: wrist, thumb1..4, index1..4, middle1..4, ring1..4, pinky1..4):

=================  ==============  ===================================================
rhand_center/...   (B, 2)          box centre (x, y), body-heatmap units
rhand_size/...     (B, 2)          box (w, h), body-heatmap units
rhand_conf/...     (B,)            softmax centre heatmap sampled at the centre
rhand_bbox/...     (B, 4)          output box (x1, y1, x2, y2) in person-crop pixels
hand2orig          (N, 2, 3)       hand-crop pixel -> person-crop pixel (un-mirrored)
joint_img          (N, J, 3)       un-mirrored 2.5D joints: x, y in the hand feature grid,
                                   z in depth bins (0..D-1; + 0.5 with cell_centres)
root_pose          (N, 3)          axis-angle, un-mirrored, relative (flat_hand_mean=False)
hand_pose          (N, 45)         axis-angle, un-mirrored, relative to the MANO mean hand
shape              (N, 10)         betas
root_trans         (N, 3)          camera-style root translation (virtual camera), un-mirrored
rel_trans          (B, 3)          left wrist - right wrist, metres
=================  ==============  ===================================================
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from handjax.geometry import rotations as rot
from handjax.models.resnet import TorchBatchNorm
from handjax.render.warp import grid_sample

NUM_JOINTS = 21
ROOT = 0  # wrist in sh_joints order
# InterWild's sh_joints order as indices into handjax's mano21 layout (= OpenPose order)
SH_ORDER = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
# fingertip vertices thumb, index, middle, ring, pinky (same for both hands; middle 445)
TIP_VERTS = (745, 317, 445, 556, 673)
UPSTREAM_FOCAL = 5000.0
UPSTREAM_HAND = 256
BBOX_3D_SIZE = 0.3
CAMERA_3D_SIZE = 0.6


# ----------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class Geometry:
    """Static sizes. image_hw: person crop (H, W); body_downsample 1 or 2 (2 = upstream's bilinear
    half size = a 2x2 average); hand_size: square hand crop side (feature grid hand_size / 32);
    depth_bins: PositionNet depth bins (8); trans_hm: TransNet heatmap side and depth (64);
    sigma: its Gaussian sigma (2.5). The virtual camera scales with the crop: focal
    5000 * hand_size / 256, principal point hand_size / 2 (upstream (5000, 128) at 256).

    cell_centres: False = upstream: PositionNet's soft-argmax gives cell INDICES (0..grid-1), while
    its targets are continuous grid coordinates (a crop's centre at grid / 2), so predictions can
    reach only [0, grid - 1]: 1/16 of the crop lost at upstream's 8x8 grid, but at a 2x2 grid (64 px
    crops) only the crop's top-left quarter for a right hand (the mirrored left one: the mirror
    image of that). True: cell centres (index + 0.5 on x, y and depth; features sampled at the
    matching index), which reach the crop's middle where the hands are. Not upstream (its released
    weights need False)."""

    image_hw: Tuple[int, int] = (512, 384)
    body_downsample: int = 2
    hand_size: int = 256
    depth_bins: int = 8
    trans_hm: int = 64
    sigma: float = 2.5
    cell_centres: bool = False

    @property
    def body_hw(self) -> Tuple[int, int]:
        return self.image_hw[0] // self.body_downsample, self.image_hw[1] // self.body_downsample

    @property
    def body_hm_hw(self) -> Tuple[int, int]:
        """BoxNet heatmap (h, w): body features x 8 (three stride-2 deconvolutions); 64x48 upstream."""
        return _resnet_out(self.body_hw[0]) * 8, _resnet_out(self.body_hw[1]) * 8

    @property
    def hand_grid(self) -> int:
        return _resnet_out(self.hand_size)

    @property
    def cell_offset(self) -> float:
        """Grid coordinate of cell index 0 (0.5 with ``cell_centres``, 0 upstream)."""
        return 0.5 if self.cell_centres else 0.0

    @property
    def focal(self) -> float:
        return UPSTREAM_FOCAL * self.hand_size / UPSTREAM_HAND

    @property
    def princpt(self) -> float:
        return self.hand_size / 2.0

    @property
    def trans_grid(self) -> int:
        return _late_out(self.trans_hm)


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _resnet_out(n: int) -> int:
    """Spatial size after a torchvision ResNet (stem /4, layers 2-4 /2 each)."""
    n = _conv_out(_conv_out(n, 7, 2, 3), 3, 2, 1)
    return _late_out(n)


def _late_out(n: int) -> int:
    for _ in range(3):
        n = _conv_out(n, 3, 2, 1)
    return n


# ----------------------------------------------------------------------------- small math pieces
def downsample2x(images: jnp.ndarray) -> jnp.ndarray:
    """Bilinear half-size resize with align_corners=False and no antialias = the mean of every
    2x2 block. (B, H, W, C) -> (B, H // 2, W // 2, C) (H, W even)."""
    b, h, w, c = images.shape
    if h % 2 or w % 2:
        raise ValueError(f"downsample2x: image sides must be even, got {h}x{w}")
    return images.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def conv_transpose_torch(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 2, padding: int = 1) -> jnp.ndarray:
    """``torch.nn.ConvTranspose2d(k, stride, padding, output_padding=0, bias=False)`` in NHWC.

    x (B, H, W, Cin); kernel (k, k, Cin, Cout) = torch's (Cin, Cout, k, k) weight transposed
    (2, 3, 0, 1). Out (B, (H-1)s - 2p + k, ..., Cout). Computed as its sub-pixel form where k - 2p = s
    (upstream's k4 / s2 / p1: out = s x the input): output row s m + r sums x[m + d] W[t] over the taps
    t = r + p - s d, so one stride-1 convolution of x to s^2 Cout channels (output phase (ry, rx) in
    channel block ry s + rx, the kernel's missing taps zero) followed by depth-to-space gives every output.
    The same products as the textbook form (the input dilated by s, padded by k-1-p and correlated with
    the flipped kernel, used for other shapes), without the dilation's zeros: on XLA-CPU the dilated
    convolution is 4-12x slower to differentiate (measured at BoxNet's shapes).
    """
    k, cin, cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    if k - 2 * padding != stride:
        pad = k - 1 - padding
        return lax.conv_general_dilated(x, kernel[::-1, ::-1], window_strides=(1, 1),
                                        padding=((pad, pad), (pad, pad)), lhs_dilation=(stride, stride),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    taps = {(r, (r + padding - t) // stride): t for r in range(stride) for t in range(k)
            if (r + padding - t) % stride == 0}  # (output phase r, input offset d) -> kernel tap t
    lo, hi = min(d for _, d in taps), max(d for _, d in taps)
    zero = jnp.zeros((cin, cout), kernel.dtype)
    rows = []
    for dy in range(lo, hi + 1):
        cols = []
        for dx in range(lo, hi + 1):
            blocks = []
            for ry in range(stride):
                for rx in range(stride):
                    ty, tx = taps.get((ry, dy)), taps.get((rx, dx))
                    blocks.append(zero if ty is None or tx is None else kernel[ty, tx])
            cols.append(jnp.stack(blocks, 1).reshape(cin, stride * stride * cout))
        rows.append(jnp.stack(cols))
    y = lax.conv_general_dilated(x, jnp.stack(rows), window_strides=(1, 1), padding=((-lo, hi), (-lo, hi)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    b, h, w, _ = y.shape
    y = y.reshape(b, h, w, stride, stride, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, h * stride, w * stride, cout)


def soft_argmax_2d(heatmaps: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W, K) -> (B, K, 2) expected (x, y) in index units under the softmax over H*W."""
    b, h, w, k = heatmaps.shape
    p = jax.nn.softmax(heatmaps.reshape(b, h * w, k), axis=1).reshape(b, h, w, k)
    x = jnp.einsum("bhwk,w->bk", p, jnp.arange(w, dtype=p.dtype))
    y = jnp.einsum("bhwk,h->bk", p, jnp.arange(h, dtype=p.dtype))
    return jnp.stack([x, y], -1)


def soft_argmax_3d(heatmaps: jnp.ndarray) -> jnp.ndarray:
    """(B, K, D, H, W) -> (B, K, 3) expected (x, y, z) in index units under the softmax over D*H*W."""
    b, k, d, h, w = heatmaps.shape
    p = jax.nn.softmax(heatmaps.reshape(b, k, d * h * w), axis=-1).reshape(b, k, d, h, w)
    x = jnp.einsum("bkdhw,w->bk", p, jnp.arange(w, dtype=p.dtype))
    y = jnp.einsum("bkdhw,h->bk", p, jnp.arange(h, dtype=p.dtype))
    z = jnp.einsum("bkdhw,d->bk", p, jnp.arange(d, dtype=p.dtype))
    return jnp.stack([x, y, z], -1)


def sample_features(features: jnp.ndarray, xy: jnp.ndarray) -> jnp.ndarray:
    """Bilinear features at points, ``grid_sample(align_corners=True)``, zero padding.

    features (B, H, W, C); xy (B, K, 2) in index units (x along W) -> (B, K, C).
    """
    h, w = features.shape[1], features.shape[2]
    grid = jnp.stack([xy[..., 0] / (w - 1) * 2 - 1, xy[..., 1] / (h - 1) * 2 - 1], -1)
    return grid_sample(features, grid[:, :, None, :], align_corners=True)[:, :, 0, :]


def restore_bbox(center, size, hm_hw, body_hw, aspect_ratio=None, extension=1.0) -> jnp.ndarray:
    """Upstream ``restore_bbox``: centre (B, 2), size (B, 2) in heatmap units -> (B, 4) xyxy in
    body-input pixels; the short side enlarged to ``aspect_ratio`` (w / h) when given, then both
    sides scaled by ``extension`` about the centre."""
    sx, sy = body_hw[1] / hm_hw[1], body_hw[0] / hm_hw[0]
    x1, y1 = (center[:, 0] - size[:, 0] / 2) * sx, (center[:, 1] - size[:, 1] / 2) * sy
    x2, y2 = (center[:, 0] + size[:, 0] / 2) * sx, (center[:, 1] + size[:, 1] / 2) * sy
    return reshape_box(jnp.stack([x1, y1, x2, y2], -1), aspect_ratio, extension)


def reshape_box(box: jnp.ndarray, aspect_ratio=None, extension=1.0) -> jnp.ndarray:
    """(..., 4) xyxy -> the same centre with the short side enlarged to ``aspect_ratio`` (w / h) when
    given, then both sides scaled by ``extension`` (``restore_bbox``'s last steps)."""
    x1, y1, x2, y2 = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    w, h = x2 - x1, y2 - y1
    cx, cy = x1 + w / 2, y1 + h / 2
    if aspect_ratio is not None:
        h = jnp.where(w > aspect_ratio * h, w / aspect_ratio, h)
        w = jnp.where(w < aspect_ratio * h, h * aspect_ratio, w)
    w, h = w * extension, h * extension
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def labelled_crop_boxes(boxes: jnp.ndarray, valid: jnp.ndarray, image_hw: Tuple[int, int]) -> jnp.ndarray:
    """Labelled hand boxes (B, 2, 4) xyxy person-crop pixels with valid (B, 2) -> the boxes the hand branch
    cuts (squared and doubled as the predicted ones); the whole person crop's square where a hand has no label
    (its terms are masked there)."""
    h, w = image_hw
    whole = reshape_box(jnp.array([0.0, 0.0, w, h], boxes.dtype), 1.0)
    return jnp.where(jnp.asarray(valid, bool)[..., None], reshape_box(boxes, 1.0, 2.0), whole)


def box_affine(box: jnp.ndarray, out_hw: Tuple[int, int]) -> jnp.ndarray:
    """kornia ``get_affine_matrix2d`` as upstream uses it: box (N, 4) xyxy -> (N, 3, 3) mapping
    box pixels to the output: x' = out_w / (w + 1e-8) (x - cx) + out_w / 2 (same for y)."""
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    sx = out_hw[1] / (box[:, 2] - box[:, 0] + 1e-8)
    sy = out_hw[0] / (box[:, 3] - box[:, 1] + 1e-8)
    zero, one = jnp.zeros_like(cx), jnp.ones_like(cx)
    return jnp.stack([jnp.stack([sx, zero, out_hw[1] / 2 - sx * cx], -1),
                      jnp.stack([zero, sy, out_hw[0] / 2 - sy * cy], -1),
                      jnp.stack([zero, zero, one], -1)], -2)


def invert_affine(A: jnp.ndarray) -> jnp.ndarray:
    """Inverse of (N, 3, 3) axis-aligned affines (no rotation/shear) -> (N, 2, 3)."""
    sx, sy = A[:, 0, 0], A[:, 1, 1]
    tx, ty = A[:, 0, 2], A[:, 1, 2]
    zero = jnp.zeros_like(sx)
    return jnp.stack([jnp.stack([1 / sx, zero, -tx / sx], -1), jnp.stack([zero, 1 / sy, -ty / sy], -1)], -2)


def apply_affine(A: jnp.ndarray, xy: jnp.ndarray) -> jnp.ndarray:
    """(N, 2|3, 3) affines on (N, K, 2) points -> (N, K, 2)."""
    return jnp.einsum("nij,nkj->nki", A[:, :2, :2], xy) + A[:, None, :2, 2]


def crop_images(images: jnp.ndarray, orig2crop: jnp.ndarray, out_size: int) -> jnp.ndarray:
    """kornia ``warp_affine`` (bilinear, zero padding) at pixel-index coordinates: images
    (N, H, W, C), orig2crop (N, 3, 3) -> (N, S, S, C); output pixel (u, v) samples the input at
    ``orig2crop^-1 (u, v)``."""
    inv = invert_affine(orig2crop)
    g = jnp.arange(out_size, dtype=images.dtype)
    uv = jnp.stack(jnp.meshgrid(g, g, indexing="xy"), -1).reshape(1, -1, 2)
    src = apply_affine(inv, jnp.broadcast_to(uv, (images.shape[0],) + uv.shape[1:]))
    h, w = images.shape[1], images.shape[2]
    grid = jnp.stack([src[..., 0] / (w - 1) * 2 - 1, src[..., 1] / (h - 1) * 2 - 1], -1)
    return grid_sample(images, grid.reshape(images.shape[0], out_size, out_size, 2), align_corners=True)


def gaussian_heatmaps(coords: jnp.ndarray, size: int, sigma: float) -> jnp.ndarray:
    """Upstream ``render_gaussian_heatmap``: coords (B, J, 3) (x, y, z) in heatmap units ->
    (B, size, size, J * size) with channel j * size + z, 255 exp(-|p - c|^2 / (2 sigma^2)) on the
    integer grid 0..size-1."""
    g = jnp.arange(size, dtype=coords.dtype)
    ex = jnp.exp(-0.5 * ((g[None, None, :] - coords[..., 0:1]) / sigma) ** 2)  # (B, J, X)
    ey = jnp.exp(-0.5 * ((g[None, None, :] - coords[..., 1:2]) / sigma) ** 2)  # (B, J, Y)
    ez = jnp.exp(-0.5 * ((g[None, None, :] - coords[..., 2:3]) / sigma) ** 2)  # (B, J, Z)
    hm = 255.0 * ey[:, :, None, :, None] * ex[:, :, None, None, :] * ez[:, :, :, None, None]  # (B, J, Z, Y, X)
    b, j = coords.shape[:2]
    return hm.reshape(b, j * size, size, size).transpose(0, 2, 3, 1)


def rot6d_to_axis_angle(x: jnp.ndarray) -> jnp.ndarray:
    """pytorch3d ``rotation_6d_to_matrix`` (rows) then ``matrix_to_axis_angle`` (angle in [0, pi])."""
    return rot.matrix_to_axis_angle(rot.rot6d_to_matrix(x, "pytorch3d"))


def unmirror_joint_img(joint_img: jnp.ndarray, hand_size: int, grid: int) -> jnp.ndarray:
    """Left-hand 2.5D joints predicted on the mirrored crop -> the un-mirrored crop:
    x -> (hand_size - 1 - x s) / s with s = hand_size / grid (upstream (255 - 32 x) / 32): the
    crop's pixel-index mirror, whichever ``Geometry.cell_centres``."""
    s = hand_size / grid
    return joint_img.at[..., 0].set((hand_size - 1 - joint_img[..., 0] * s) / s)


def unmirror_axis_angle(aa: jnp.ndarray) -> jnp.ndarray:
    """(..., 3k) axis-angle of a mirrored hand -> the un-mirrored one: (x, y, z) -> (x, -y, -z)."""
    v = aa.reshape(aa.shape[:-1] + (-1, 3)) * jnp.array([1.0, -1.0, -1.0], aa.dtype)
    return v.reshape(aa.shape)


# ----------------------------------------------------------------------------- layers
def _linear(i: int, o: int, rngs) -> nnx.Linear:
    return nnx.Linear(i, o, rngs=rngs)


def _conv(i: int, o: int, k: int, rngs) -> nnx.Conv:
    p = k // 2
    return nnx.Conv(i, o, (k, k), padding=((p, p), (p, p)), use_bias=True, rngs=rngs)


class BoxNet(nnx.Module):
    """Deconvolutions (k4 s2 p1, BN + ReLU each), 1x1 centre heatmaps (channel 0 right, 1 left),
    size MLPs on the features at the detached centres, and the centre confidences."""

    def __init__(self, in_ch: int, *, channels: int = 256, num_deconv: int = 3, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.001)
        chans = (in_ch,) + (channels,) * num_deconv
        self.deconv = nnx.List([nnx.Param(init(rngs.params(), (4, 4, a, b))) for a, b in zip(chans, chans[1:])])
        self.deconv_bn = nnx.List([TorchBatchNorm(channels) for _ in range(num_deconv)])
        self.bbox_center = _conv(channels, 2, 1, rngs)
        self.rhand_size = nnx.List([_linear(channels, channels, rngs), _linear(channels, 2, rngs)])
        self.lhand_size = nnx.List([_linear(channels, channels, rngs), _linear(channels, 2, rngs)])

    @staticmethod
    def _mlp(layers, x):
        return layers[1](nnx.relu(layers[0](x)))

    def __call__(self, feat: jnp.ndarray) -> Dict[str, jnp.ndarray]:
        x = feat
        for kernel, bn in zip(self.deconv, self.deconv_bn):
            x = nnx.relu(bn(conv_transpose_torch(x, kernel[...])))
        hm = self.bbox_center(x)  # (B, h, w, 2)
        centers = soft_argmax_2d(hm)  # (B, 2, 2)
        rc, lc = centers[:, 0], centers[:, 1]
        rfeat = sample_features(x, lax.stop_gradient(rc)[:, None])[:, 0]
        lfeat = sample_features(x, lax.stop_gradient(lc)[:, None])[:, 0]
        b, h, w, _ = hm.shape
        prob = jax.nn.softmax(hm.reshape(b, h * w, 2), axis=1).reshape(b, h, w, 2)
        rconf = sample_features(prob[..., 0:1], rc[:, None])[:, 0, 0]
        lconf = sample_features(prob[..., 1:2], lc[:, None])[:, 0, 0]
        return dict(rhand_center=rc, lhand_center=lc, rhand_size=self._mlp(self.rhand_size, rfeat),
                    lhand_size=self._mlp(self.lhand_size, lfeat), rhand_conf=rconf, lhand_conf=lconf), (h, w)


class PositionNet(nnx.Module):
    """1x1 conv to J * D channels (channel j * D + d) and a 3D soft-argmax -> (N, J, 3)."""

    def __init__(self, in_ch: int, depth_bins: int, *, offset: float = 0.0, rngs: nnx.Rngs):
        self.depth_bins = depth_bins
        self.offset = offset  # Geometry.cell_offset
        self.conv = _conv(in_ch, NUM_JOINTS * depth_bins, 1, rngs)

    def __call__(self, feat):
        hm = self.conv(feat)  # (N, h, w, J * D)
        n, h, w, _ = hm.shape
        hm = hm.reshape(n, h, w, NUM_JOINTS, self.depth_bins).transpose(0, 3, 4, 1, 2)
        return soft_argmax_3d(hm) + self.offset


class RotationNet(nnx.Module):
    """Betas and the camera-style root translation from the pooled feature; root / finger 6D
    rotations from features sampled at the (detached) 2.5D joints."""

    def __init__(self, in_ch: int, geometry: Geometry, *, channels: int = 512, rngs: nnx.Rngs):
        self.geometry = geometry
        self.conv = _conv(in_ch, channels, 1, rngs)
        self.bn = TorchBatchNorm(channels)
        feat = NUM_JOINTS * (channels + 3)
        self.root_pose_out = _linear(feat, 6, rngs)
        self.pose_out = _linear(feat, 15 * 6, rngs)
        self.shape_out = _linear(in_ch, 10, rngs)
        self.cam_out = _linear(in_ch, 3, rngs)

    def root_trans(self, cam: jnp.ndarray) -> jnp.ndarray:
        """t_xy = cam[:2]; t_z = k sigmoid(cam[2]), k = sqrt(f^2 0.6^2 / S^2) (11.71875 upstream)."""
        g = self.geometry
        k = math.sqrt(g.focal * g.focal * CAMERA_3D_SIZE ** 2 / (g.hand_size * g.hand_size))
        return jnp.concatenate([cam[:, :2], k * jax.nn.sigmoid(cam[:, 2:3])], -1)

    def __call__(self, feat, joint_img):
        pooled = feat.mean(axis=(1, 2))
        shape = self.shape_out(pooled)
        root_trans = self.root_trans(self.cam_out(pooled))
        x = nnx.relu(self.bn(self.conv(feat)))
        sampled = sample_features(x, joint_img[..., :2] - self.geometry.cell_offset)  # (N, J, C) at cell indices
        flat = jnp.concatenate([sampled, joint_img], -1).reshape(feat.shape[0], -1)
        root_pose = rot6d_to_axis_angle(self.root_pose_out(flat))
        hand_pose = rot6d_to_axis_angle(self.pose_out(flat).reshape(-1, 15, 6)).reshape(-1, 45)
        return root_pose, hand_pose, shape, root_trans


class TransNet(nnx.Module):
    """Gaussian heatmaps of both hands' 2.5D joints in their squared union box -> conv + ResNet-18
    layers 1-4 -> features at both wrists -> left wrist - right wrist (metres)."""

    def __init__(self, geometry: Geometry, *, backbone: str = "resnet18", conv_impl: str = "auto",
                 rngs: nnx.Rngs):
        from handjax.models.registry import build

        self.geometry = geometry
        self.backbone = build("backbone", backbone, config_key="model.trans_backbone", rngs=rngs,
                              conv_impl=conv_impl)
        if self.backbone.num_features != 512:
            raise ValueError(f"config key model.trans_backbone: TransNet needs a ResNet-18/34 (512 features), "
                             f"got {backbone!r}")
        self.conv = _conv(NUM_JOINTS * 2 * geometry.trans_hm, 64, 3, rngs)
        self.bn = TorchBatchNorm(64)
        self.fc = _linear(2 * (512 + 2), 3, rngs)

    def heatmap_coords(self, rjoint_img, ljoint_img, rhand2orig, lhand2orig):
        """Both hands' joints in the heatmap volume (B, J, 3) each (upstream's crop_and_resize)."""
        g = self.geometry
        s = g.hand_size / g.hand_grid

        def to_image(j, A):
            return jnp.concatenate([apply_affine(A, j[..., :2] * s), j[..., 2:]], -1)

        r, l = to_image(rjoint_img, rhand2orig), to_image(ljoint_img, lhand2orig)

        def tight(j):
            lo, hi = j[..., :2].min(1), j[..., :2].max(1)
            c, half = (lo + hi) / 2, (hi - lo) / 2 * 1.2
            return c - half, c + half

        (rlo, rhi), (llo, lhi) = tight(r), tight(l)
        lo, hi = jnp.minimum(rlo, llo), jnp.maximum(rhi, lhi)
        box = restore_square(jnp.concatenate([lo, hi], -1))
        A = box_affine(box, (g.trans_hm, g.trans_hm))

        def to_hm(j):
            return jnp.concatenate([apply_affine(A, j[..., :2]), j[..., 2:] / g.depth_bins * g.trans_hm], -1)

        return to_hm(r), to_hm(l)

    def __call__(self, rjoint_img, ljoint_img, rhand2orig, lhand2orig):
        g = self.geometry
        r, l = self.heatmap_coords(rjoint_img, ljoint_img, rhand2orig, lhand2orig)
        hm = jnp.concatenate([gaussian_heatmaps(r, g.trans_hm, g.sigma), gaussian_heatmaps(l, g.trans_hm, g.sigma)], -1)
        y = nnx.relu(self.bn(self.conv(hm)))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for block in getattr(self.backbone, name):
                y = block(y)
        stride = g.trans_hm / g.trans_grid  # 8 upstream
        wrist = jnp.stack([r[:, ROOT, :2], l[:, ROOT, :2]], 1) / stride  # (B, 2, 2)
        feat = sample_features(y, wrist)  # (B, 2, 512)
        return self.fc(jnp.concatenate([feat, wrist], -1).reshape(feat.shape[0], -1))


def restore_square(box: jnp.ndarray) -> jnp.ndarray:
    """Upstream ``set_aspect_ratio(bbox, 1)``: (B, 4) xyxy, the short side enlarged to the long one."""
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    cx, cy = box[:, 0] + w / 2, box[:, 1] + h / 2
    h2 = jnp.where(w > h, w, h)
    w2 = jnp.where(w < h, h2, w)
    return jnp.stack([cx - w2 / 2, cy - h2 / 2, cx + w2 / 2, cy + h2 / 2], -1)


# ----------------------------------------------------------------------------- the network
class InterWildModel(nnx.Module):
    """Body branch (backbone + BoxNet) -> shared-domain hand crops -> hand branch (backbone,
    PositionNet, RotationNet; both hands as one batch) -> TransNet. ``__call__(images)``: person
    crops (B, H, W, 3) in [0, 1] -> the raw outputs (module docstring)."""

    def __init__(self, geometry: Geometry, *, body_backbone: str = "resnet50", hand_backbone: str = "resnet50",
                 trans_backbone: str = "resnet18", deconv_channels: int = 256, rot_channels: int = 512,
                 conv_impl: str = "auto", rngs: nnx.Rngs):
        from handjax.models.registry import build

        self.geometry = geometry
        self.body_backbone = build("backbone", body_backbone, config_key="model.body_backbone", rngs=rngs,
                                   conv_impl=conv_impl)
        self.body_box_net = BoxNet(self.body_backbone.num_features, channels=deconv_channels, rngs=rngs)
        self.hand_backbone = build("backbone", hand_backbone, config_key="model.hand_backbone", rngs=rngs,
                                   conv_impl=conv_impl)
        nf = self.hand_backbone.num_features
        self.hand_position_net = PositionNet(nf, geometry.depth_bins, offset=geometry.cell_offset, rngs=rngs)
        self.hand_rotation_net = RotationNet(nf, geometry, channels=rot_channels, rngs=rngs)
        self.hand_trans_net = TransNet(geometry, backbone=trans_backbone, conv_impl=conv_impl, rngs=rngs)

    def __call__(self, images: jnp.ndarray, crop_boxes: Optional[jnp.ndarray] = None,
                 crop_valid: Optional[jnp.ndarray] = None) -> Dict[str, jnp.ndarray]:
        """Person crops (B, H, W, 3) RGB in [0, 1] -> the raw outputs.

        crop_boxes (B, 2, 4) xyxy person-crop pixels [right, left] with crop_valid (B, 2) bool (optional; not
        upstream): where valid, the hand is cut around THAT box (squared and doubled as the predicted ones)
        instead of the predicted box, e.g. ground-truth boxes while the box branch is still poor in a short
        training run; the box outputs are the predicted ones either way."""
        g = self.geometry
        if images.ndim != 4 or tuple(images.shape[1:3]) != tuple(g.image_hw):
            raise ValueError(f"InterWild: expected person crops (B, {g.image_hw[0]}, {g.image_hw[1]}, 3), "
                             f"got {images.shape}")
        b = images.shape[0]
        body = downsample2x(images) if g.body_downsample == 2 else images
        box, hm_hw = self.body_box_net(self.body_backbone.features(body)["layer4"])
        if tuple(hm_hw) != g.body_hm_hw:
            raise ValueError(f"InterWild: box heatmap {hm_hw} differs from the geometry's {g.body_hm_hw}")
        out = dict(box)
        scale = jnp.array([g.body_downsample] * 4, images.dtype)
        for side in ("rhand", "lhand"):
            out[f"{side}_bbox"] = restore_bbox(box[f"{side}_center"], box[f"{side}_size"], hm_hw, g.body_hw) * scale
            crop_box = restore_bbox(box[f"{side}_center"], box[f"{side}_size"], hm_hw, g.body_hw, 1.0, 2.0)
            crop_box = crop_box * scale
            if crop_boxes is not None:
                k = 0 if side == "rhand" else 1
                given = reshape_box(crop_boxes[:, k].astype(crop_box.dtype), 1.0, 2.0)
                use = jnp.ones(b, bool) if crop_valid is None else jnp.asarray(crop_valid[:, k], bool)
                crop_box = jnp.where(use[:, None], given, crop_box)
            out[f"{side}_crop_box"] = lax.stop_gradient(crop_box)
        hands = self.hands(images, out["rhand_crop_box"], out["lhand_crop_box"])
        ji = lax.stop_gradient(hands["joint_img"])
        h2o = lax.stop_gradient(hands["hand2orig"])
        rel_trans = self.hand_trans_net(ji[:b], ji[b:], h2o[:b], h2o[b:])
        out.update(hands, rel_trans=rel_trans)
        return out

    def hands(self, images: jnp.ndarray, rcrop_box: jnp.ndarray, lcrop_box: jnp.ndarray) -> Dict[str, jnp.ndarray]:
        """The hand branch alone: person crops (B, H, W, 3) in [0, 1] and each hand's crop box (B, 4) xyxy
        (already squared and enlarged; detached) -> orig2hand / hand2orig (2B, 2, 3), joint_img (2B, 21, 3)
        and MANO root_pose, hand_pose, shape, root_trans, right hands first, the left ones un-mirrored.
        ``__call__`` runs it at the box branch's crops; the ``hands`` training stage at the labelled ones."""
        g = self.geometry
        b = images.shape[0]
        o2h = box_affine(jnp.concatenate([rcrop_box, lcrop_box]), (g.hand_size,) * 2)
        crops = lax.stop_gradient(crop_images(jnp.concatenate([images, images]), o2h, g.hand_size))
        crops = jnp.concatenate([crops[:b], crops[b:, :, ::-1]])  # the left crop mirrored
        feat = self.hand_backbone.features(crops)["layer4"]
        joint_img = self.hand_position_net(feat)
        root_pose, hand_pose, shape, root_trans = self.hand_rotation_net(feat, lax.stop_gradient(joint_img))
        # un-mirror the left hand
        left = jnp.arange(2 * b) >= b
        joint_img = jnp.where(left[:, None, None], unmirror_joint_img(joint_img, g.hand_size, g.hand_grid), joint_img)
        root_pose = jnp.where(left[:, None], unmirror_axis_angle(root_pose), root_pose)
        hand_pose = jnp.where(left[:, None], unmirror_axis_angle(hand_pose), hand_pose)
        root_trans = jnp.where(left[:, None], root_trans * jnp.array([-1.0, 1.0, 1.0]), root_trans)
        return dict(orig2hand=o2h, hand2orig=invert_affine(o2h), joint_img=joint_img, root_pose=root_pose,
                    hand_pose=hand_pose, shape=shape, root_trans=root_trans)


# ----------------------------------------------------------------------------- MANO decode
def interwild_convention():
    """InterWild's 21 joints (sh_joints: wrist, thumb..pinky base -> tip) as a handjax convention."""
    from handjax.mano.conventions import OPENPOSE_ORDER, Convention

    return Convention("interwild", {"right": TIP_VERTS, "left": TIP_VERTS}, OPENPOSE_ORDER, "m", None, False,
                      "facebookresearch/InterWild common/utils/mano.py sh_joints (tips 745, 317, 445, 556, 673)")


def sh_joints(model, verts: jnp.ndarray) -> jnp.ndarray:
    """InterWild's ``sh_joint_regressor`` @ vertices: (..., 778, 3) -> (..., 21, 3) in sh order
    (the 16 MANO joints regressed from the posed mesh, the 5 tips as one-hot vertices)."""
    j16 = jnp.einsum("jv,...vc->...jc", model.J_regressor.astype(verts.dtype), verts)
    tips = verts[..., jnp.array(TIP_VERTS), :]
    return jnp.concatenate([j16, tips], -2)[..., jnp.array(SH_ORDER), :]


def wrist_weights(model) -> np.ndarray:
    """(V,) weights regressing the wrist from a mesh (row 0 of the MANO joint regressor)."""
    return np.asarray(model.J_regressor)[0]


def get_coord(model, root_pose, hand_pose, shape, root_trans, geometry: Geometry):
    """Upstream ``get_coord``: MANO (flat_hand_mean=False, transl 0) -> root-relative joints
    (N, 21, 3) and mesh (N, 778, 3) (wrist regressed from the mesh), absolute rotations
    (N, 16, 3, 3) (flat hand mean), and joint_proj (N, 21, 2): the camera-frame joints
    (root-relative + root_trans) projected with f, c of the virtual crop camera, denominator
    z + 1e-4, in hand-grid units."""
    from handjax.mano.forward import mano_forward
    from handjax.mano.pose import from_axis_angle

    rotmats = from_axis_angle(model, jnp.concatenate([root_pose, hand_pose], -1), flat_hand_mean=False)
    verts = mano_forward(model, rotmats, shape).vertices
    joints = sh_joints(model, verts)
    root = joints[:, ROOT:ROOT + 1]
    joint_cam, mesh_cam = joints - root, verts - root
    cam = joint_cam + root_trans[:, None]
    f, c = geometry.focal, geometry.princpt
    uv = cam[..., :2] / (cam[..., 2:3] + 1e-4) * f + c
    joint_proj = uv / geometry.hand_size * geometry.hand_grid
    return dict(joint_cam=joint_cam, mesh_cam=mesh_cam, rotmats=rotmats, joint_proj=joint_proj)


def crop_camera(hand2orig: jnp.ndarray, geometry: Geometry) -> jnp.ndarray:
    """(N, 3, 4) projection of camera-frame points (the virtual crop camera) to person-crop
    pixels: [hand2orig; 0 0 1] K [I | 0]."""
    n = hand2orig.shape[0]
    f, c = geometry.focal, geometry.princpt
    K = jnp.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], hand2orig.dtype)
    A = jnp.concatenate([hand2orig, jnp.broadcast_to(jnp.array([[0.0, 0.0, 1.0]], hand2orig.dtype), (n, 1, 3))], 1)
    return jnp.concatenate([A @ K, jnp.zeros((n, 3, 1), hand2orig.dtype)], -1)


def decode(raw: Dict[str, jnp.ndarray], geometry: Geometry, mano_right, mano_left, convention: str = "ih26m"):
    """Raw outputs -> ``({"right": HandOutput, "left": HandOutput}, coords)``.

    Each HandOutput is in its own virtual crop camera (joints = root-relative + root_trans, metres;
    ``camera`` maps them to person-crop pixels), joints in ``convention``'s order. ``coords`` holds
    per side the root-relative ``joint_cam`` / ``mesh_cam`` (InterWild order) and ``joint_proj``.
    """
    from handjax.mano.conventions import joint_remap
    from handjax.models.hand_output import make_hand_output

    b = raw["root_pose"].shape[0] // 2  # right hands first, then the left ones
    order = joint_remap(interwild_convention(), convention)
    hands, coords = {}, {}
    for side, model, sl in (("right", mano_right, slice(0, b)), ("left", mano_left, slice(b, 2 * b))):
        c = get_coord(model, raw["root_pose"][sl], raw["hand_pose"][sl], raw["shape"][sl], raw["root_trans"][sl],
                      geometry)
        coords[side] = c
        t = raw["root_trans"][sl][:, None]
        hands[side] = make_hand_output((c["joint_cam"] + t)[:, jnp.array(order)], crop_camera(raw["hand2orig"][sl],
                                       geometry), c["rotmats"], raw["shape"][sl], c["mesh_cam"] + t,
                                       jnp.full((b,), side == "right"), convention)
    return hands, coords


def left_mano(path) -> "object":
    """The left MANO layer as InterWild builds it: with the shapedirs fix when the left model's
    x-shapedirs equal the right's (sum |diff| < 1, smplx issue #48)."""
    from handjax import mano

    right, left = mano.load_model(path or None, "right"), mano.load_model(path or None, "left")
    if float(jnp.sum(jnp.abs(left.shapedirs[:, 0, :] - right.shapedirs[:, 0, :]))) < 1:
        left = mano.apply_left_shapedirs_fix(left)
    return left


def _register():
    from handjax.models.registry import register

    register("head", "interwild")(lambda **kw: InterWildModel(**kw))


_register()
