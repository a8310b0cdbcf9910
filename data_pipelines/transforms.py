"""Per-frame transforms of hand samples (numpy): crop/rotate/flip as ONE affine warp with
consistent labels, colour jitter and ImageNet normalisation.

Geometry
--------
Camera frame OpenCV (x right, y down, z forward); pixel centre of (row i, col j) at
(x=j, y=i). A crop is defined by a 3-D transform ``R3 = Rz(theta) @ M`` of the camera
frame (M = diag(-1, 1, 1) when flipping, else I; Rz a rotation about the optical axis)
and new intrinsics ``K'``. The pixel map ``A = K' R3 K^-1`` is affine (last row 0 0 1),
and for every camera-frame point X::

    project(K', R3 X) == A (project(K, X))        (exactly, up to float rounding)

so after every augmentation ``project_perspective(joints3d, K) == joints2d`` still holds.
``K'`` is chosen so that the crop centre lands on the output centre ((S-1)/2, (S-1)/2)
and the crop side covers S output pixels. Positive ``theta`` turns the image content
clockwise on screen. A flip mirrors the hand: 3-D x -> -x, MANO pose mirrored
(``mirror_axis_angle`` convention), ``is_right`` toggled, part labels 1..16 <-> 17..32.

MANO parameters are updated so that MANO(side', pose', betas, transl') reproduces the
transformed vertices, assuming ``joints3d[0]`` is MANO's root joint (wrist) and
``vertices = R0 (V - J0) + J0 + transl`` (handjax / smplx convention).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
from PIL import Image

from handjax.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
NUM_PARTS = 16
FLIP_MODES = ("none", "left_to_right", "random")
CROP_SOURCES = ("joints2d", "mask", "bbox", "image")
_MIRROR = np.diag([-1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- rotations
def rotation_z(theta: float) -> np.ndarray:
    """Rotation about the camera z axis (3, 3)."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------- config / params
@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges (all zero / 'none' = deterministic centred crop).

    scale: crop side multiplied by U(1 - scale, 1 + scale); rotation: degrees, U(-r, r);
    shift: crop centre moved by U(-shift, shift) * crop side per axis; flip: 'none',
    'left_to_right' (mirror every left hand into a right one) or 'random' (p = 0.5);
    brightness / contrast / saturation: factors U(1 - v, 1 + v); hue: rotation of the
    chroma plane (YIQ) by U(-hue, hue) * 360 degrees; bbox_pad: crop side = bbox_pad *
    the longer side of the hand box; crop_from: the box is that of 'joints2d', of the
    'mask' (falls back to the joints for an empty mask), the frame's 'bbox' feature
    (x1, y1, x2, y2 pixels, e.g. HO3D's handBoundingBox; falls back to the joints when
    ``has_bbox`` is False) or the whole 'image' (e.g. FreiHAND's evaluation: the 224 image
    resized to the output); per_frame: in window / pair modes draw independent
    parameters for every frame instead of one set per sample ("fixed per sequence").
    """

    scale: float = 0.0
    rotation: float = 0.0
    shift: float = 0.0
    flip: str = "none"
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    bbox_pad: float = 1.5
    crop_from: str = "joints2d"
    per_frame: bool = False

    def __post_init__(self):
        for name in ("scale", "rotation", "shift", "brightness", "contrast", "saturation", "hue"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment[{name!r}] must be >= 0, got {getattr(self, name)}")
        for name in ("scale", "brightness", "contrast", "saturation"):
            if getattr(self, name) >= 1:
                raise ValueError(f"augment[{name!r}] must be < 1 (it is a +- fraction), got {getattr(self, name)}")
        if self.bbox_pad <= 0:
            raise ValueError(f"augment['bbox_pad'] must be > 0, got {self.bbox_pad}")
        if self.flip not in FLIP_MODES:
            raise ValueError(f"augment['flip'] must be one of {FLIP_MODES}, got {self.flip!r}")
        if self.crop_from not in CROP_SOURCES:
            raise ValueError(f"augment['crop_from'] must be one of {CROP_SOURCES}, got {self.crop_from!r}")

    @staticmethod
    def from_dict(augment: Optional[Mapping] = None) -> "AugmentConfig":
        """From a dict of the fields above (None = no augmentation); unknown keys raise."""
        if augment is None:
            return AugmentConfig()
        if isinstance(augment, AugmentConfig):
            return augment
        fields = {f.name for f in dataclasses.fields(AugmentConfig)}
        unknown = sorted(set(augment) - fields)
        if unknown:
            raise ValueError(f"augment: unknown key(s) {unknown}; allowed: {sorted(fields)}")
        return AugmentConfig(**augment)


# Training defaults in the spirit of TempCLR / handobjectconsist (scale, rotation, centre
# jitter, colour jitter; left hands mirrored into right ones for single-hand models).
TRAIN_AUGMENT = dict(scale=0.25, rotation=30.0, shift=0.1, flip="left_to_right", brightness=0.4,
                     contrast=0.4, saturation=0.4, hue=0.05)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """One draw of augmentation parameters: scale factor, rotation (rad), shift (2,) as a
    fraction of the crop side, coin (random flip decision), colour (4,) = brightness,
    contrast, saturation factors and hue angle (rad)."""

    scale: float
    rotation: float
    shift: np.ndarray
    coin: bool
    color: np.ndarray

    @staticmethod
    def sample(rng: np.random.Generator, cfg: AugmentConfig) -> "AugmentParams":
        u = rng.uniform(-1.0, 1.0, size=9)  # always the same count, whatever the config
        return AugmentParams(
            scale=float(1.0 + cfg.scale * u[0]),
            rotation=float(np.deg2rad(cfg.rotation) * u[1]),
            shift=cfg.shift * u[2:4],
            coin=bool(u[4] < 0.0),
            color=np.array([1.0 + cfg.brightness * u[5], 1.0 + cfg.contrast * u[6],
                            1.0 + cfg.saturation * u[7], 2.0 * np.pi * cfg.hue * u[8]]),
        )

    def flips(self, cfg: AugmentConfig, is_right: bool) -> bool:
        """Whether a frame of the given side is mirrored."""
        if cfg.flip == "left_to_right":
            return not is_right
        return cfg.flip == "random" and self.coin


# ----------------------------------------------------------------------------- crop geometry
def hand_box(joints2d: np.ndarray, mask: Optional[np.ndarray], source: str) -> Tuple[np.ndarray, float]:
    """(centre (2,), longer side) of the hand's box in pixels, from the joints or the mask
    (a mask pixel (i, j) covers [j - 0.5, j + 0.5] x [i - 0.5, i + 0.5])."""
    if source == "mask" and mask is not None and np.any(mask):
        rows, cols = np.nonzero(mask)
        lo = np.array([cols.min(), rows.min()], np.float64)
        hi = np.array([cols.max(), rows.max()], np.float64)
        return (lo + hi) / 2.0, float(max(hi - lo) + 1.0)
    pts = np.asarray(joints2d, np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (lo + hi) / 2.0, float(max(max(hi - lo), 1.0))


def crop_box(frame: Mapping[str, np.ndarray], source: str) -> Tuple[np.ndarray, float]:
    """(centre (2,), longer side) in pixels of the box a crop is built around (see
    ``AugmentConfig.crop_from``). The image box spans [-0.5, W - 0.5] x [-0.5, H - 0.5]."""
    if source == "image":
        h, w = np.asarray(frame["image"]).shape[:2]
        return np.array([(w - 1) / 2.0, (h - 1) / 2.0]), float(max(h, w))
    if source == "bbox" and "bbox" in frame and bool(frame.get("has_bbox", True)):
        x1, y1, x2, y2 = (float(v) for v in np.asarray(frame["bbox"], np.float64).reshape(4))
        return np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0]), float(max(x2 - x1, y2 - y1, 1.0))
    return hand_box(frame["joints2d"], frame.get("mask"), "mask" if source == "mask" else "joints2d")


def crop_camera(K: np.ndarray, centre: np.ndarray, side: float, out_size, rotation: float,
                flip: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R3 (3, 3), K' (3, 3), A (3, 3)) of a crop (see module docstring).

    centre (2,) and side (pixels) give the source window: a square of that side, or for a
    rectangular output out_size = (H, W) a window ``side`` wide with the output's aspect;
    out_size S (square) or (H, W); rotation (rad) about the optical axis; flip mirrors x.
    The window centre lands on the output centre ((W-1)/2, (H-1)/2). A maps source pixels
    to crop pixels.
    """
    out_h, out_w = _out_hw(out_size)
    K = np.asarray(K, np.float64)
    r3 = rotation_z(rotation) @ (_MIRROR if flip else np.eye(3))
    ray = r3 @ np.linalg.solve(K, np.array([centre[0], centre[1], 1.0]))  # z stays 1
    sigma = out_w / side
    k_new = np.eye(3)
    k_new[:2, :2] = sigma * K[:2, :2]
    k_new[:2, 2] = np.array([(out_w - 1) / 2.0, (out_h - 1) / 2.0]) - k_new[:2, :2] @ ray[:2]
    affine = k_new @ r3 @ np.linalg.inv(K)
    return r3, k_new, affine


def _out_hw(out_size) -> Tuple[int, int]:
    """An output size S (square) or (H, W) -> (H, W) ints."""
    if np.ndim(out_size) == 0:
        return int(out_size), int(out_size)
    out_h, out_w = (int(v) for v in out_size)
    return out_h, out_w


def apply_affine(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Pixel points (..., 2) through an affine 3x3 map."""
    return points @ affine[:2, :2].T + affine[:2, 2]


def _pil_affine(affine: np.ndarray) -> Tuple[float, ...]:
    """PIL ``Image.transform`` AFFINE data of the inverse map (output -> source pixels).

    PIL works with pixel corners (centre of pixel j at j + 0.5); our maps use pixel
    centres, so the inverse map is conjugated by a half-pixel shift.
    """
    inv = np.linalg.inv(np.asarray(affine, np.float64))
    lin, t = inv[:2, :2], inv[:2, 2]
    t = t + 0.5 - lin @ np.array([0.5, 0.5])
    return (lin[0, 0], lin[0, 1], t[0], lin[1, 0], lin[1, 1], t[1])


def _pil_warp(array: np.ndarray, affine: np.ndarray, out_size, resample) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ValueError(f"warp: expected a uint8 image, got {array.dtype}")
    out_h, out_w = _out_hw(out_size)
    img = Image.fromarray(array)
    return np.asarray(img.transform((out_w, out_h), Image.Transform.AFFINE, _pil_affine(affine),
                                    resample=resample, fillcolor=0))


def warp_image(image: np.ndarray, affine: np.ndarray, out_size) -> np.ndarray:
    """Bilinear resample of a uint8 image (H, W, 3) under the pixel map ``affine`` (source ->
    output pixel centres) -> (S, S, 3) uint8 (PIL; out_size S, or (H', W') for a
    rectangular output). Sample points inside the image area
    [-0.5, W - 0.5) x [-0.5, H - 0.5) interpolate with edge replication; others are 0."""
    return _pil_warp(image, affine, out_size, Image.Resampling.BILINEAR)


def warp_labels(labels: np.ndarray, affine: np.ndarray, out_size) -> np.ndarray:
    """Nearest-neighbour resample of a label map (H, W) (uint8 or bool) -> (S, S) (or
    out_size = (H', W')), same dtype: output pixel takes source pixel (floor(y + 0.5),
    floor(x + 0.5)) of its sample point, 0 / False outside the image."""
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        return _pil_warp(labels.astype(np.uint8), affine, out_size, Image.Resampling.NEAREST) > 0
    return _pil_warp(labels, affine, out_size, Image.Resampling.NEAREST)


def flip_part_labels(parts: np.ndarray) -> np.ndarray:
    """Swap right (1..16) and left (17..32) DIGIT classes; 0 stays background."""
    parts = np.asarray(parts)
    right = (parts >= 1) & (parts <= NUM_PARTS)
    left = parts > NUM_PARTS
    return np.where(right, parts + NUM_PARTS, np.where(left, parts - NUM_PARTS, parts)).astype(parts.dtype)


def transform_mano(pose: np.ndarray, transl: np.ndarray, wrist: np.ndarray, rotation: float, flip: bool
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """MANO (pose (48,), transl (3,)) after X -> Rz(rotation) M X (M the optional mirror).

    wrist = joints3d[0] = J0 + transl. Mirror: pose -> (w0, -w1, -w2) per joint (the other
    side's model); then R0' = Rz R0 and transl' = Rz (J0' + t_m) - J0' with J0' = M J0.
    """
    pose = np.asarray(pose, np.float64).reshape(16, 3)
    transl, wrist = np.asarray(transl, np.float64), np.asarray(wrist, np.float64)
    m = _MIRROR if flip else np.eye(3)
    rz = rotation_z(rotation)
    if flip:
        pose = pose * np.array([1.0, -1.0, -1.0])
    j0 = m @ (wrist - transl)
    new_transl = rz @ (j0 + m @ transl) - j0
    pose[0] = matrix_to_axis_angle(rz @ axis_angle_to_matrix(pose[0]))
    return pose.reshape(48).astype(np.float32), new_transl.astype(np.float32)


# ----------------------------------------------------------------------------- photometric
def _gray(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_RGB = np.linalg.inv(_YIQ).astype(np.float32)


def color_jitter(image: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Image (H, W, 3) float in [0, 1] -> jittered, clipped to [0, 1].

    color = (brightness, contrast, saturation, hue): x *= b; x = (x - mean gray) c + mean
    gray; x = (x - gray) s + gray; chroma (I, Q) rotated by hue radians in YIQ.
    """
    b, c, s, h = (float(v) for v in color)
    x = image * b
    mean = _gray(x).mean()
    x = (x - mean) * c + mean
    g = _gray(x)[..., None]
    x = (x - g) * s + g
    if h != 0.0:
        ch, sh = np.cos(h), np.sin(h)
        rot = np.array([[1, 0, 0], [0, ch, -sh], [0, sh, ch]], np.float32)
        x = x @ (_RGB @ rot @ _YIQ).T
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
    """[0, 1] RGB -> (x - ImageNet mean) / std, float32."""
    return ((image - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


# ----------------------------------------------------------------------------- whole frame
def transform_frame(frame: Mapping[str, np.ndarray], params: AugmentParams, cfg: AugmentConfig,
                    out_size: int) -> Dict[str, np.ndarray]:
    """Crop / rotate / flip / colour-jitter / normalise one decoded frame.

    frame: image (H, W, 3) uint8, mask (H, W) bool, part_seg (H, W) integer, joints2d
    (21, 2), joints3d (21, 3), vertices (V, 3), mano_pose (48,), transl (3,), K (3, 3),
    is_right, and any other keys (copied through). Returns the batch-format frame (see
    :mod:`data_pipelines.pipeline`) including the aug_* parameters and ``crop_affine``.
    """
    flip = params.flips(cfg, bool(frame["is_right"]))
    centre, side = crop_box(frame, cfg.crop_from)
    side = side * cfg.bbox_pad * params.scale
    centre = centre + params.shift * side
    r3, k_new, affine = crop_camera(frame["K"], centre, side, out_size, params.rotation, flip)

    out = dict(frame)
    image = warp_image(frame["image"], affine, out_size).astype(np.float32) * np.float32(1.0 / 255.0)
    out["image"] = normalize(color_jitter(image, params.color))
    out["mask"] = warp_labels(np.asarray(frame["mask"], bool), affine, out_size)
    parts = warp_labels(np.asarray(frame["part_seg"], np.uint8), affine, out_size).astype(np.int32)
    out["part_seg"] = flip_part_labels(parts) if flip else parts
    out["joints2d"] = apply_affine(np.asarray(frame["joints2d"], np.float64), affine).astype(np.float32)
    for key in ("joints3d", "vertices"):
        out[key] = (np.asarray(frame[key], np.float64) @ r3.T).astype(np.float32)
    out["mano_pose"], out["transl"] = transform_mano(frame["mano_pose"], frame["transl"], frame["joints3d"][0],
                                                     params.rotation, flip)
    out["K"] = k_new.astype(np.float32)
    out["is_right"] = np.bool_(bool(frame["is_right"]) != flip)
    out["crop_affine"] = affine.astype(np.float32)
    out["aug_scale"] = np.float32(params.scale)
    out["aug_rotation"] = np.float32(params.rotation)
    out["aug_shift"] = np.asarray(params.shift, np.float32)
    out["aug_flip"] = np.bool_(flip)
    out["aug_color"] = np.asarray(params.color, np.float32)
    return out


# ----------------------------------------------------------------------------- two hands
# Two-hand samples (the ``two_hands`` dataset, InterHand2.6M-style): joints (42, .) right hand
# 0..20 then left hand 21..41, each in handjax's "ih26m" order (wrist last: 20 and 41);
# per-hand arrays (vertices (2, V, 3), mano_pose (2, 48), betas (2, 10), transl (2, 3),
# hand_valid (2,), hand_box (2, 4)) have the right hand at index 0 and the left at 1; hand
# types are handjax.eval.two_hand codes (0 right, 1 left, 2 both hands / interacting).
HAND_JOINTS = 21
TWO_HAND_JOINTS = 2 * HAND_JOINTS
WRISTS = (20, 41)
HAND_TYPE_RIGHT, HAND_TYPE_LEFT, HAND_TYPE_BOTH = 0, 1, 2
TWO_HAND_CROPS = ("hands", "person")
PERSON_ASPECT = (4, 3)  # height : width of InterWild's person crop (512 x 384)
MIN_VISIBLE_JOINTS = 11  # a hand is in the frame when more than half of its joints are
INTERACTION_DISTANCE_M = 0.03


def project_points(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection (numpy, float64) of camera-frame points (..., 3) -> pixels (..., 2)."""
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return p[..., :2] / p[..., 2:]


def in_image(points2d: np.ndarray, height: int, width: int) -> np.ndarray:
    """(...,) bool: pixel points inside the image area [-0.5, W - 0.5) x [-0.5, H - 0.5)."""
    x, y = points2d[..., 0], points2d[..., 1]
    return (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)


def hand_boxes(points2d: np.ndarray, hand_valid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-hand boxes (2, 4) = (x0, y0, x1, y1) pixels: the extent of each hand's projected
    points (2, N, 2) (joints and, when known, vertices) clipped to the image area
    [-0.5, W - 0.5] x [-0.5, H - 0.5]; all zeros for an invalid hand or an empty clip."""
    boxes = np.zeros((2, 4), np.float32)
    for h in range(2):
        pts = np.asarray(points2d[h], np.float64)
        lo = np.maximum(pts.min(axis=0), -0.5)
        hi = np.minimum(pts.max(axis=0), np.array([width - 0.5, height - 0.5]))
        if bool(hand_valid[h]) and np.all(hi > lo):
            boxes[h] = np.concatenate([lo, hi])
    return boxes


def boxes_overlap(boxes: np.ndarray) -> bool:
    """Whether the two (non-empty) boxes (2, 4) intersect with a positive area."""
    a, b = np.asarray(boxes, np.float64)
    if not (np.all(a[2:] > a[:2]) and np.all(b[2:] > b[:2])):
        return False
    return bool(min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]))


def hand_type_code(hand_valid: np.ndarray) -> Tuple[int, bool]:
    """(hand_type, hand_type_valid) from the per-hand validity (right, left): 2 with both
    hands, 0 right only, 1 left only; (0, False) without a hand."""
    right, left = (bool(v) for v in hand_valid)
    if right and left:
        return HAND_TYPE_BOTH, True
    if right or left:
        return (HAND_TYPE_RIGHT if right else HAND_TYPE_LEFT), True
    return HAND_TYPE_RIGHT, False


def two_hand_labels(joints2d: np.ndarray, joints3d: np.ndarray, vertices2d: Optional[np.ndarray],
                    hand_distance: float, height: int, width: int) -> Dict[str, np.ndarray]:
    """Frame-level labels of a two-hand frame from its geometry.

    joints2d (42, 2), joints3d (42, 3), vertices2d (2, V, 2) projected vertices or None.
    hand_valid (2,): the hand is in front of the camera with at least MIN_VISIBLE_JOINTS of
    its 21 joints inside the image; joint_valid (42,): the joint is inside the image and its
    hand valid; hand_box (2, 4): :func:`hand_boxes` of joints + vertices; hand_type /
    hand_type_valid: :func:`hand_type_code`; interacting: both hands valid and closer than
    INTERACTION_DISTANCE_M (``hand_distance``, closest vertices) or with overlapping boxes;
    rel_root (3,): left wrist - right wrist.
    """
    joints2d, joints3d = np.asarray(joints2d, np.float64), np.asarray(joints3d, np.float64)
    inside = in_image(joints2d, height, width) & (joints3d[:, 2] > 0)
    per_hand = inside.reshape(2, HAND_JOINTS)
    in_front = np.all(joints3d[:, 2].reshape(2, HAND_JOINTS) > 0, axis=1)
    hand_valid = in_front & (per_hand.sum(axis=1) >= MIN_VISIBLE_JOINTS)
    points = joints2d.reshape(2, HAND_JOINTS, 2)
    if vertices2d is not None:
        points = np.concatenate([points, np.asarray(vertices2d, np.float64)], axis=1)
    boxes = hand_boxes(points, hand_valid, height, width)
    code, code_valid = hand_type_code(hand_valid)
    both = bool(hand_valid.all())
    return {
        "hand_valid": hand_valid,
        "joint_valid": (per_hand & hand_valid[:, None]).reshape(TWO_HAND_JOINTS),
        "hand_box": boxes,
        "hand_type": np.int64(code),
        "hand_type_valid": np.bool_(code_valid),
        "interacting": np.bool_(both and (hand_distance < INTERACTION_DISTANCE_M or boxes_overlap(boxes))),
        "rel_root": (joints3d[WRISTS[1]] - joints3d[WRISTS[0]]).astype(np.float32),
    }


def _swap_hands(x: np.ndarray) -> np.ndarray:
    """Swap the right / left halves of a per-hand (2, ...) or per-joint (42, ...) array."""
    x = np.asarray(x)
    if x.shape[0] == 2:
        return x[::-1].copy()
    if x.shape[0] == TWO_HAND_JOINTS:
        return np.concatenate([x[HAND_JOINTS:], x[:HAND_JOINTS]])
    raise ValueError(f"two-hand array: expected a leading axis of 2 hands or 42 joints, got {x.shape}")


_PER_HAND_KEYS = ("joints2d", "joints3d", "joint_valid", "vertices", "mano_pose", "betas", "transl", "hand_valid",
                  "hand_box", "mano_valid", "mano_pose_world", "mano_transl_world", "mano_root_j0", "rootnet_depth",
                  "hand_K")
# frame-level boxes (x1, y1, x2, y2): mirrored (not swapped) by a flip, moved with the crop; the flag
# that marks the box valid (an invalid or all-zero box stays zeros)
_FRAME_BOXES = {"person_box": None, "bbox": "has_bbox", "rootnet_bbox": "has_rootnet"}


def _pixel_mirror(width: int) -> np.ndarray:
    """(3, 3) pixel map of the horizontal mirror of an image ``width`` wide: x -> W - 1 - x."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def _has_camera(K: np.ndarray) -> np.ndarray:
    """(...,) bool: a per-hand intrinsics matrix (..., 3, 3) is present (zeros = absent)."""
    return np.asarray(K)[..., 2, 2] != 0


def _mirror_box(box: np.ndarray, width: int) -> np.ndarray:
    """A box (x1, y1, x2, y2) mirrored x -> W - 1 - x (corners swapped); all zeros stay zeros."""
    if not np.any(np.asarray(box) != 0):
        return np.zeros(4)
    x1, y1, x2, y2 = np.asarray(box, np.float64).reshape(4)
    return np.array([width - 1 - x2, y1, width - 1 - x1, y2])


def mirror_two_hand_frame(frame: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The exact horizontal mirror image of a decoded two-hand frame (image width W).

    Pixels: column j -> W - 1 - j (image, mask, part_seg with classes 1..16 <-> 17..32);
    camera: X -> M X (M = diag(-1, 1, 1)) with K' (cx' = W - 1 - cx, skew negated) so that
    project(K', M X) = (W - 1 - u, v). The mirrored right hand is the new LEFT hand: every
    per-hand / per-joint label is mirrored and the two hands swapped (joints 0..20 <->
    21..41, vertices, MANO pose mirrored for the other side's model with its translation
    fixed (:func:`transform_mano`), betas, validity, boxes, ``mano_valid``); hand_type 0 <-> 1;
    rel_root recomputed (when the frame has one); frame-level boxes ``person_box`` / ``bbox`` /
    ``rootnet_bbox`` (x1, y1, x2, y2) mirrored.

    Optional extra keys (InterHand2.6M, COCO-WholeBody through :mod:`data_pipelines.factory`):
    the world is mirrored with the camera (X_w -> M X_w), so world-frame MANO fits stay fits of
    a hand of the new side: ``mano_pose_world`` (2, 48) mirrored per joint like ``mano_pose``
    (absolute poses), ``mano_transl_world`` / ``mano_root_j0`` (2, 3) -> M x (the rest wrist
    J0' = M J0 of a mirror-symmetric MANO pair, the assumption :func:`transform_mano` makes),
    all swapped; the extrinsics ``cam_R`` (3, 3) / ``cam_t`` (3,) (X_cam = R X_w + t, X_w in the
    world's units) -> M R M / M t, so that M X_cam = (M R M)(M X_w) + M t (R stays a
    rotation); ``rootnet_depth`` (2,) (root depths, z is unchanged) swapped; per-hand
    intrinsics ``hand_K`` (2, 3, 3) (zeros = none) -> F K M with F the pixel mirror, swapped.
    Applying it twice gives the frame back.
    """
    out = dict(frame)
    width = np.asarray(frame["image"]).shape[1]
    out["image"] = np.ascontiguousarray(np.asarray(frame["image"])[:, ::-1])
    if "mask" in frame:
        out["mask"] = np.ascontiguousarray(np.asarray(frame["mask"])[:, ::-1])
    if "part_seg" in frame:
        out["part_seg"] = flip_part_labels(np.ascontiguousarray(np.asarray(frame["part_seg"])[:, ::-1]))
    K = np.array(frame["K"], np.float64)
    K[0, 2] = width - 1 - K[0, 2]
    K[0, 1] = -K[0, 1]
    out["K"] = K.astype(np.asarray(frame["K"]).dtype)
    joints3d = np.asarray(frame["joints3d"], np.float64)
    mirrored = {
        "joints2d": np.asarray(frame["joints2d"], np.float64) * np.array([-1.0, 1.0]) + np.array([width - 1, 0.0]),
        "joints3d": joints3d @ _MIRROR,
    }
    if "vertices" in frame:
        mirrored["vertices"] = np.asarray(frame["vertices"], np.float64) @ _MIRROR
    if "mano_pose" in frame:
        pose, transl = np.asarray(frame["mano_pose"]), np.asarray(frame["transl"])
        new = [transform_mano(pose[h], transl[h], joints3d[WRISTS[h]], 0.0, True) for h in range(2)]
        mirrored["mano_pose"] = np.stack([p for p, _ in new])
        mirrored["transl"] = np.stack([t for _, t in new])
    if "hand_box" in frame:
        box = np.asarray(frame["hand_box"], np.float64)
        flipped = np.stack([width - 1 - box[:, 2], box[:, 1], width - 1 - box[:, 0], box[:, 3]], axis=1)
        mirrored["hand_box"] = np.where(np.any(box != 0, axis=1, keepdims=True), flipped, 0.0)
    for key in _FRAME_BOXES:  # frame-level boxes (x1, y1, x2, y2): mirrored, not swapped
        if key in frame and np.shape(frame[key]) == (4,):
            out[key] = _mirror_box(frame[key], width).astype(np.asarray(frame[key]).dtype)
    # the world is mirrored with the camera: world-frame MANO fits stay fits (of the other side)
    if "mano_pose_world" in frame:
        mirrored["mano_pose_world"] = (np.asarray(frame["mano_pose_world"], np.float64).reshape(2, 16, 3)
                                       * np.array([1.0, -1.0, -1.0])).reshape(2, 48)
    for key in ("mano_transl_world", "mano_root_j0"):
        if key in frame:
            mirrored[key] = np.asarray(frame[key], np.float64) @ _MIRROR
    if "cam_R" in frame:  # X_cam = R X_w + t  ->  M X_cam = (M R M)(M X_w) + M t
        out["cam_R"] = (_MIRROR @ np.asarray(frame["cam_R"], np.float64) @ _MIRROR).astype(
            np.asarray(frame["cam_R"]).dtype)
        out["cam_t"] = (_MIRROR @ np.asarray(frame["cam_t"], np.float64)).astype(np.asarray(frame["cam_t"]).dtype)
    if "hand_K" in frame:  # per-hand cameras: project(F K M, M X) = F project(K, X)
        hand_k = np.asarray(frame["hand_K"], np.float64)
        flipped_k = _pixel_mirror(width) @ hand_k @ _MIRROR
        mirrored["hand_K"] = np.where(_has_camera(hand_k)[:, None, None], flipped_k, 0.0)
    for key in _PER_HAND_KEYS:
        if key in frame:
            value = mirrored.get(key, frame[key])
            out[key] = _swap_hands(value).astype(np.asarray(frame[key]).dtype)
    if "hand_type" in frame and bool(frame.get("hand_type_valid", True)):  # no hand: nothing to swap
        code = int(frame["hand_type"])
        swapped = {HAND_TYPE_RIGHT: HAND_TYPE_LEFT, HAND_TYPE_LEFT: HAND_TYPE_RIGHT}.get(code, code)
        out["hand_type"] = np.asarray(swapped, np.asarray(frame["hand_type"]).dtype)
    if "rel_root" in frame:  # (the crop sets it on every frame)
        out["rel_root"] = (out["joints3d"][WRISTS[1]] - out["joints3d"][WRISTS[0]]).astype(np.float32)
    return out


def two_hand_crop_box(frame: Mapping[str, np.ndarray]) -> Tuple[np.ndarray, float]:
    """(centre (2,), longer side) of the union of the valid hands' boxes (``hand_box``, or
    the valid joints' extent when the frame has no boxes); the whole image without a
    valid hand."""
    h, w = np.asarray(frame["image"]).shape[:2]
    valid = np.asarray(frame["hand_valid"], bool)
    if "hand_box" in frame:
        boxes = np.asarray(frame["hand_box"], np.float64)[valid]
        boxes = boxes[np.all(boxes[:, 2:] > boxes[:, :2], axis=1)]
    else:
        pts = np.asarray(frame["joints2d"], np.float64)[np.asarray(frame["joint_valid"], bool)]
        boxes = np.concatenate([pts.min(0), pts.max(0)])[None] if len(pts) else np.zeros((0, 4))
    if len(boxes) == 0:
        return np.array([(w - 1) / 2.0, (h - 1) / 2.0]), float(max(h, w))
    lo, hi = boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)
    return (lo + hi) / 2.0, float(max(max(hi - lo), 1.0))


def person_crop_size(image_size: int) -> Tuple[int, int]:
    """(H, W) output of the person crop for ``image_size`` = its height (a multiple of 4)."""
    if image_size < PERSON_ASPECT[0] or image_size % PERSON_ASPECT[0]:
        raise ValueError(f"crop='person': image_size is the output height of a {PERSON_ASPECT[0]}:"
                         f"{PERSON_ASPECT[1]} crop and must be a positive multiple of {PERSON_ASPECT[0]}, "
                         f"got {image_size}")
    return image_size, image_size * PERSON_ASPECT[1] // PERSON_ASPECT[0]


PERSON_BOX_EXTENSION = 1.25  # InterWild's process_bbox: a person box (MSCOCO) is enlarged x1.25


def person_window(box: np.ndarray, extension: float = 1.0) -> np.ndarray:
    """InterWild's ``process_bbox`` after sanitizing: a box (x1, y1, x2, y2) enlarged about its
    centre to the person crop's aspect (width : height = 3 : 4, the shorter side grown), then
    both sides times ``extension`` -> (x1, y1, x2, y2) (4,) float64."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, np.float64).reshape(4))
    w, h = x2 - x1, y2 - y1
    aspect = PERSON_ASPECT[1] / PERSON_ASPECT[0]
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    w, h = w * extension, h * extension
    return np.array([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0])


def transform_boxes(boxes: np.ndarray, affine: np.ndarray, valid: np.ndarray, height: int, width: int
                    ) -> np.ndarray:
    """Annotated boxes (N, 4) = (x0, y0, x1, y1) through a pixel map: the extent of each box's
    four mapped corners clipped to the image area [-0.5, W - 0.5] x [-0.5, H - 0.5]; zeros for
    an invalid box (``valid`` (N,) False or no positive area) or an empty clip."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = np.zeros(boxes.shape, np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if not bool(np.asarray(valid).reshape(-1)[i]) or not (x1 > x0 and y1 > y0):
            continue
        corners = apply_affine(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]), np.asarray(affine, np.float64))
        lo = np.maximum(corners.min(axis=0), -0.5)
        hi = np.minimum(corners.max(axis=0), np.array([width - 0.5, height - 0.5]))
        if np.all(hi > lo):
            out[i] = np.concatenate([lo, hi])
    return out


def transform_two_hand_frame(frame: Mapping[str, np.ndarray], params: AugmentParams, cfg: AugmentConfig,
                             image_size: int, crop: str) -> Dict[str, np.ndarray]:
    """Flip / crop / rotate / colour-jitter / normalise one decoded two-hand frame.

    The flip (``cfg.flip`` 'random' with the sample's coin; 'none') is the exact mirror
    :func:`mirror_two_hand_frame` (hands swapped); then ONE affine warp cuts the crop:

    * ``crop="hands"`` (DIGIT): a square (S, S) around the union of the valid hands' boxes,
      side = bbox_pad * its longer side * scale (DIGIT: bbox_pad 1.25); with
      ``cfg.crop_from == "image"`` around the whole image instead (side = the longer image side);
    * ``crop="person"`` (InterWild): a 4:3 person crop (S, 3S/4), S = image_size; the window
      is the smallest 4:3 box around the frame's ``person_box`` (x1, y1, x2, y2; e.g. from
      :func:`person_window`) when it has one, else around the whole image, times scale.

    Both take shift (fraction of the window) and rotation. Labels follow the crop: joints2d
    = A(joints2d), 3-D points rotated, MANO root / translation updated per hand, K' the
    crop intrinsics, hand boxes recomputed from the projected joints and vertices and
    clipped to the crop (frames with ``hand_box_annotated`` True instead carry annotated
    ``hand_box`` es, moved with :func:`transform_boxes`; the flag is consumed), frame-level
    ``bbox`` / ``rootnet_bbox`` (4,) moved likewise (zeros where ``has_bbox`` /
    ``has_rootnet`` is False), joint_valid &= inside the crop, rel_root recomputed;
    ``person_box`` is consumed. Extra keys: extrinsics ``cam_R`` / ``cam_t`` -> r3 R / r3 t
    (the crop camera, r3 its rotation about the optical axis; the world frame and the
    world-frame keys ``mano_*_world`` / ``mano_root_j0`` stay), per-hand intrinsics ``hand_K``
    (2, 3, 3) -> A K r3^T (crop pixels of points of that hand's camera frame rotated with the
    crop; a general 3x3 with last row (0, 0, 1): with a rotation and fx != fy it has a
    [1, 0] term), ``rootnet_depth`` unchanged (depths do not change under r3).
    ``crop_affine`` maps the ORIGINAL frame's pixels to the crop's (the mirror included;
    with a flip, joint i of the output is then A(original joint of the other hand)).
    """
    if crop not in TWO_HAND_CROPS:
        raise ValueError(f"two-hand crop must be one of {TWO_HAND_CROPS}, got {crop!r}")
    if cfg.flip == "left_to_right":
        raise ValueError("augment['flip']='left_to_right' mirrors single left hands into right ones; two-hand "
                         "samples take 'none' or 'random' (a flip swaps the hands)")
    flip = cfg.flip == "random" and params.coin
    frame = mirror_two_hand_frame(frame) if flip else dict(frame)
    h, w = np.asarray(frame["image"]).shape[:2]
    if crop == "hands":
        out_hw = (int(image_size), int(image_size))
        if cfg.crop_from == "image":  # the whole image (e.g. HIC's evaluation)
            centre, side = np.array([(w - 1) / 2.0, (h - 1) / 2.0]), float(max(h, w))
        else:
            centre, side = two_hand_crop_box(frame)
        side = side * cfg.bbox_pad * params.scale
        centre = centre + params.shift * side
    else:
        out_hw = person_crop_size(int(image_size))
        if "person_box" in frame:  # a person box (COCO-WholeBody), else the whole frame
            x1, y1, x2, y2 = (float(v) for v in np.asarray(frame["person_box"], np.float64))
            base, extent = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0]), max(x2 - x1, (y2 - y1) * PERSON_ASPECT[1]
                                                                             / PERSON_ASPECT[0])
        else:
            base, extent = np.array([(w - 1) / 2.0, (h - 1) / 2.0]), max(w, h * PERSON_ASPECT[1] / PERSON_ASPECT[0])
        side = extent * params.scale
        centre = base + params.shift * np.array([side, side * PERSON_ASPECT[0] / PERSON_ASPECT[1]])
    r3, k_new, affine = crop_camera(frame["K"], centre, side, out_hw, params.rotation, False)

    out = dict(frame)
    image = warp_image(frame["image"], affine, out_hw).astype(np.float32) * np.float32(1.0 / 255.0)
    out["image"] = normalize(color_jitter(image, params.color))
    out["mask"] = warp_labels(np.asarray(frame["mask"], bool), affine, out_hw)
    out["part_seg"] = warp_labels(np.asarray(frame["part_seg"], np.uint8), affine, out_hw).astype(np.int32)
    joints2d = apply_affine(np.asarray(frame["joints2d"], np.float64), affine)
    out["joints2d"] = joints2d.astype(np.float32)
    joints3d = np.asarray(frame["joints3d"], np.float64)
    out["joints3d"] = (joints3d @ r3.T).astype(np.float32)
    out["vertices"] = (np.asarray(frame["vertices"], np.float64) @ r3.T).astype(np.float32)
    new = [transform_mano(frame["mano_pose"][i], frame["transl"][i], joints3d[WRISTS[i]], params.rotation, False)
           for i in range(2)]
    out["mano_pose"] = np.stack([p for p, _ in new])
    out["transl"] = np.stack([t for _, t in new])
    out["K"] = k_new.astype(np.float32)
    hand_valid = np.asarray(frame["hand_valid"], bool)
    if bool(out.pop("hand_box_annotated", False)):  # annotated boxes (COCO-WholeBody, HIC) move with the crop
        out["hand_box"] = transform_boxes(frame["hand_box"], affine, hand_valid, *out_hw)
    else:
        points = joints2d.reshape(2, HAND_JOINTS, 2)
        if bool(frame.get("has_vertices", True)):
            points = np.concatenate([points, project_points(out["vertices"], k_new)], axis=1)
        out["hand_box"] = hand_boxes(points, hand_valid, *out_hw)
    for key, flag in _FRAME_BOXES.items():  # frame-level boxes (x1, y1, x2, y2)
        if key != "person_box" and key in frame and np.shape(frame[key]) == (4,):
            valid = [bool(frame.get(flag, True))]
            out[key] = transform_boxes(frame[key], affine, valid, *out_hw)[0]
    out.pop("person_box", None)  # consumed by the crop window
    if "cam_R" in frame:  # the crop camera is the camera rotated by r3: X_crop = r3 (R X_w + t)
        out["cam_R"] = (r3 @ np.asarray(frame["cam_R"], np.float64)).astype(np.float32)
        out["cam_t"] = (r3 @ np.asarray(frame["cam_t"], np.float64)).astype(np.float32)
    if "hand_K" in frame:  # per-hand cameras: project(A K r3^T, r3 X) = A project(K, X)
        hand_k = np.asarray(frame["hand_K"], np.float64)
        out["hand_K"] = np.where(_has_camera(hand_k)[:, None, None], affine @ hand_k @ r3.T, 0.0).astype(np.float32)
    out["joint_valid"] = np.asarray(frame["joint_valid"], bool) & in_image(joints2d, *out_hw)
    out["rel_root"] = (out["joints3d"][WRISTS[1]] - out["joints3d"][WRISTS[0]]).astype(np.float32)
    if flip:  # source pixels -> mirrored pixels (x -> W - 1 - x) -> crop
        affine = affine @ _pixel_mirror(w)
    out["crop_affine"] = affine.astype(np.float32)
    out["aug_scale"] = np.float32(params.scale)
    out["aug_rotation"] = np.float32(params.rotation)
    out["aug_shift"] = np.asarray(params.shift, np.float32)
    out["aug_flip"] = np.bool_(flip)
    out["aug_color"] = np.asarray(params.color, np.float32)
    return out
