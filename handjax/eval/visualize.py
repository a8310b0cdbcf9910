"""Image summaries: skeletons drawn on crops and meshes rendered over them (host side, uint8 RGB)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# OpenPose / FreiHAND order: wrist, then thumb, index, middle, ring, pinky (base -> tip).
OPENPOSE_BONES = tuple((0 if j % 4 == 1 else j - 1, j) for j in range(1, 21))
FINGER_COLORS = ((255, 0, 0), (0, 200, 0), (255, 150, 0), (0, 80, 255), (230, 0, 230))  # thumb..pinky, as TempCLR


def denormalize(images: np.ndarray) -> np.ndarray:
    """ImageNet-normalised float images (..., H, W, 3) -> uint8."""
    return np.clip((np.asarray(images) * IMAGENET_STD + IMAGENET_MEAN) * 255 + 0.5, 0, 255).astype(np.uint8)


def draw_skeleton(image: np.ndarray, joints2d: np.ndarray, bones=OPENPOSE_BONES, radius: int = 1) -> np.ndarray:
    """Draw a 21-joint hand (pixel coordinates, OpenPose order) on a uint8 image."""
    img = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(img)
    for a, b in bones:
        color = FINGER_COLORS[(b - 1) // 4]
        draw.line([tuple(joints2d[a]), tuple(joints2d[b])], fill=color, width=1)
    for j, (x, y) in enumerate(joints2d):
        color = (255, 255, 0) if j == 0 else FINGER_COLORS[(j - 1) // 4]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
    return np.asarray(img)


def overlay(image: np.ndarray, rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """Blend a rendered mesh (float [0,1] rgb, bool mask) over a uint8 image."""
    out = image.astype(np.float32)
    m = np.asarray(mask)[..., None] * alpha
    out = out * (1 - m) + np.asarray(rgb)[..., :3] * 255.0 * m
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
