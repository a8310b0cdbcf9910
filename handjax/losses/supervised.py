"""Supervised hand-mesh losses; each term is weighted and skipped where a label is missing.

Every term takes a per-sample validity mask (B,) so datasets that lack a
label (or samples whose label is unknown) contribute nothing to that term.
"""
from __future__ import annotations

import jax.numpy as jnp


def _masked_mean(per_sample: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    valid = valid.astype(jnp.float32)
    return jnp.sum(per_sample * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def keypoint_l1(pred: jnp.ndarray, gt: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Mean absolute error over points and coordinates, averaged over valid samples."""
    return _masked_mean(jnp.mean(jnp.abs(pred - gt), axis=(-2, -1)), valid)


def root_relative(points: jnp.ndarray, joints: jnp.ndarray, root: int = 0) -> jnp.ndarray:
    return points - joints[..., root: root + 1, :]


def param_mse(pred: jnp.ndarray, gt: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    err = jnp.mean(jnp.square(pred - gt).reshape(pred.shape[0], -1), axis=-1)
    return _masked_mean(err, valid)


def weighted_sum(terms: dict, weights, optional=()) -> tuple:
    """sum_k w_k * term_k over terms with a non-zero weight; returns (total, {name: value}).

    A weight whose name is neither a term nor in ``optional`` (terms the caller only
    computes when weighted) is an error: a misspelt weight must not silently do nothing.
    """
    unknown = sorted(set(weights) - set(terms) - set(optional))
    if unknown:
        raise ValueError(f"loss weights {unknown} name no loss term; known terms: {sorted(set(terms) | set(optional))}")
    total = 0.0
    used = {}
    for name, value in terms.items():
        w = float(weights.get(name, 0.0))
        if w:
            total = total + w * value
            used[name] = value
    return total, used
