"""Part-segmentation mIoU (DIGIT's hand-part label maps: 0 background, 1..32 the two hands' parts).

Rule (:func:`image_iou`, :func:`mean_iou`), per image:

* classes ``1 .. num_classes - 1`` are scored; the background (``background``, 0) is skipped;
* for each class, ``intersection`` = pixels labelled with it in both maps, ``union`` = pixels
  labelled with it in either;
* with ``tol`` >= 1 (default 1): a class whose ``union < tol`` is left out (NaN); otherwise
  ``IoU = intersection / union``. ``tol = 1`` therefore skips exactly the classes absent from
  both maps -- the usual mIoU -- and a larger ``tol`` also skips classes with fewer than ``tol``
  pixels in the union (DIGIT's ``elytra/metric_utils.py::segm_iou`` "noisy target" tolerance);
* with ``tol = 0``: every class counts, ``IoU = intersection / max(union, 1)``, so a class
  absent from both maps scores 0 (DIGIT's ``segm_iou`` called with ``tol=0``);
* the image's IoU is the mean over the classes that were not left out (NaN when all were).

Over a data set: the mean of the per-image IoUs, images whose IoU is NaN left out (``nanmean``
over images, as DIGIT would average ``segm_iou`` calls); the number of images that counted is
reported next to it. The value depends on ``tol``: say which one a table shows.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

NUM_CLASSES = 33  # DIGIT: background + 16 MANO parts per hand x 2 hands
BACKGROUND = 0


def _check_maps(pred, target, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(f"part segmentation: pred and target must be label maps of the same shape (..., H, W), "
                         f"got {pred.shape} and {target.shape}")
    for name, arr in (("pred", pred), ("target", target)):
        if arr.dtype.kind not in "iub":
            raise ValueError(f"part segmentation: {name} must hold integer labels, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"part segmentation: {name} labels must lie in 0..{num_classes - 1}, got "
                             f"{int(arr.min())}..{int(arr.max())}")
    return pred.astype(np.int64), target.astype(np.int64)


def class_iou(pred, target, num_classes: int = NUM_CLASSES, tol: int = 1,
              background: int = BACKGROUND) -> np.ndarray:
    """Per-image, per-class IoU (..., num_classes) of label maps (..., H, W); the background
    column and classes left out by ``tol`` are NaN (see module docstring)."""
    if tol < 0:
        raise ValueError(f"part segmentation: tol must be >= 0, got {tol}")
    pred, target = _check_maps(pred, target, num_classes)
    batch = pred.shape[:-2]
    p = pred.reshape(-1, pred.shape[-2] * pred.shape[-1])
    t = target.reshape(p.shape)
    n = len(p)
    offset = np.arange(n)[:, None] * num_classes
    count_p = np.bincount((p + offset).ravel(), minlength=n * num_classes).reshape(n, num_classes)
    count_t = np.bincount((t + offset).ravel(), minlength=n * num_classes).reshape(n, num_classes)
    both = np.where(p == t, p + offset, -1).ravel()
    inter = np.bincount(both[both >= 0], minlength=n * num_classes).reshape(n, num_classes)
    union = count_p + count_t - inter
    iou = inter / np.maximum(union, 1)
    if tol >= 1:
        iou = np.where(union < tol, np.nan, iou)
    iou[:, background] = np.nan
    return iou.reshape(batch + (num_classes,))


def image_iou(pred, target, num_classes: int = NUM_CLASSES, tol: int = 1,
              background: int = BACKGROUND) -> np.ndarray:
    """Per-image mIoU (...,): mean over the scored classes; NaN when no class is scored."""
    iou = class_iou(pred, target, num_classes, tol, background)
    counted = ~np.isnan(iou)
    total = np.where(counted, iou, 0.0).sum(-1)
    k = counted.sum(-1)
    return np.where(k > 0, total / np.maximum(k, 1), np.nan)


def mean_iou(pred, target, num_classes: int = NUM_CLASSES, tol: int = 1,
             background: int = BACKGROUND) -> Tuple[float, int]:
    """(mIoU over images, number of images that counted) of (N, H, W) maps: the NaN-skipping mean
    of :func:`image_iou`; (NaN, 0) when no image counted."""
    per_image = image_iou(pred, target, num_classes, tol, background).ravel()
    ok = ~np.isnan(per_image)
    return (float(per_image[ok].mean()) if ok.any() else float("nan")), int(ok.sum())
