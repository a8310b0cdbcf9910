"""Contrastive objectives: NT-Xent over the global batch, PeCLR equivariance."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def nt_xent(z: jnp.ndarray, positive: jnp.ndarray, temperature: float = 0.5,
            anchor: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Normalised-temperature cross-entropy (SimCLR / PeCLR).

    z: (N, D) embeddings of the whole (global) batch; positive: (N,) index of
    each sample's positive; anchor: (N,) bool, samples that contribute a loss
    term (default all). Every other sample (except itself) is a negative, so
    samples that are not anchors act as extra negatives only. Under jit with
    a batch sharded over devices, N is the global batch: negatives come from
    every device.
    """
    z = z.astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    logits = (z @ z.T) / temperature
    n = z.shape[0]
    logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, logits)
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    per_sample = -jnp.take_along_axis(log_prob, positive[:, None], axis=-1)[:, 0]
    if anchor is None:
        return jnp.mean(per_sample)
    per_sample = jnp.where(anchor, per_sample, 0.0)  # non-anchors may have no finite positive
    return jnp.sum(per_sample) / jnp.maximum(jnp.sum(anchor.astype(jnp.float32)), 1.0)


def window_pairs(batch_size: int, num_frames: int):
    """Flattened (B * k) layout of window samples: frames 0 and 1 of each sample are
    mutual positives (anchors); frames 2.. are same-sequence frames outside the
    temporal window, used as extra negatives only. Returns (positive, anchor)."""
    idx = jnp.arange(batch_size * num_frames).reshape(batch_size, num_frames)
    pos = idx.at[:, 0].set(idx[:, 1]).at[:, 1].set(idx[:, 0])
    anchor = jnp.zeros((batch_size, num_frames), bool).at[:, :2].set(True)
    return pos.reshape(-1), anchor.reshape(-1)


def undo_equivariance(z: jnp.ndarray, rotation: jnp.ndarray, translation: jnp.ndarray) -> jnp.ndarray:
    """PeCLR: read the embedding as D/2 2D points and undo the augmentation on them.

    z: (N, D) with D even; rotation: (N,) radians of the in-plane crop rotation;
    translation: (N, 2) crop-centre jitter (same units as the embedding
    points). Points p -> R(-theta) (p - t).
    """
    pts = z.reshape(z.shape[0], -1, 2) - translation[:, None, :]
    c, s = jnp.cos(-rotation), jnp.sin(-rotation)
    rot = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)  # (N, 2, 2)
    return jnp.einsum("nij,npj->npi", rot, pts).reshape(z.shape)
