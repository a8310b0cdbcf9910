"""Personalisation: a subject's shape from unlabelled images, and the inference-time fit.

Calibration (``calibrate_from_shape_params.py`` and what the paper motivates), per subject over
N images' predicted betas (N, 10) and confidences (N,):

* ``mean``: the plain mean (the released script; it ignores the confidence);
* ``confidence``: weights ``softmax(conf / (temperature * std(conf)))`` over the N images (the
  ranking loss fixes the confidences' order, not their scale, so the temperature is in units of
  their spread; equal confidences or N = 1 give the plain mean);
* ``topk``: the mean of the ``ceil(top_fraction * N)`` most confident images.

Fit (``optimization_dex_ycb_*.py``): per image, with betas fixed, stage 1 optimises the translation
(Adam ``lr1`` x ``steps1``), stage 2 translation + 6D pose (Adam ``lr2`` x ``steps2``), minimising the
MSE in pixels between the projected 21 joints and 2D targets. Each image is its own problem
(``vmap``); the whole set runs as one jitted program. Per-iteration energies are returned.
"""
from __future__ import annotations

import functools
import math
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from handjax.geometry import project_matrix
from handjax.models.idhandmesh import mano_mesh

METHODS = ("mean", "confidence", "topk")


def aggregate_betas(betas: np.ndarray, conf: np.ndarray, method: str, temperature: float = 1.0,
                    top_fraction: float = 0.5) -> np.ndarray:
    """(N, 10) betas, (N,) confidences -> (10,) the subject's calibrated betas (module docstring)."""
    betas, conf = np.asarray(betas, np.float64), np.asarray(conf, np.float64)
    if betas.ndim != 2 or len(betas) == 0 or conf.shape != betas.shape[:1]:
        raise ValueError(f"aggregate_betas: expected betas (N>0, 10) and conf (N,), got {betas.shape}, {conf.shape}")
    if method == "mean":
        return betas.mean(0)
    if method == "confidence":
        if float(temperature) <= 0:
            raise ValueError(f"config key calibrate.temperature: must be > 0, got {temperature}")
        spread = float(conf.std())
        if spread == 0.0:
            return betas.mean(0)
        z = conf / (float(temperature) * spread)
        w = np.exp(z - z.max())
        return (w[:, None] * betas).sum(0) / w.sum()
    if method == "topk":
        if not 0.0 < float(top_fraction) <= 1.0:
            raise ValueError(f"config key calibrate.top_fraction: must be in (0, 1], got {top_fraction}")
        k = max(1, int(math.ceil(float(top_fraction) * len(betas))))
        keep = np.argsort(-conf, kind="stable")[:k]
        return betas[keep].mean(0)
    raise ValueError(f"config key calibrate.methods: unknown method {method!r}; known: {METHODS}")


def calibrate_subjects(betas: np.ndarray, conf: np.ndarray, subjects: np.ndarray, num_images: int, method: str,
                       rng: np.random.Generator, **kw) -> Dict[int, np.ndarray]:
    """Per subject: ``num_images`` of its images drawn at random (without replacement; all when it has
    fewer), aggregated by ``method`` -> {subject id: (10,)}."""
    out = {}
    for s in np.unique(subjects):
        idx = np.flatnonzero(subjects == s)
        pick = rng.permutation(idx)[:num_images]
        out[int(s)] = aggregate_betas(betas[pick], conf[pick], method, **kw)
    return out


def _energy(mano_model, betas, K, target, transl, pose6d):
    """One image: mean over 21 x 2 of the squared pixel error of the projected joints."""
    _, out = mano_mesh(mano_model, pose6d[None], betas[None], with_mesh=False)
    joints = out.joints[0] + transl
    camera = jnp.concatenate([K, jnp.zeros((3, 1), K.dtype)], -1)
    return jnp.mean(jnp.square(project_matrix(joints, camera) - target))


def fit_one(mano_model, pose6d, transl, betas, K, target, *, lr1=1e-2, steps1=200, lr2=1e-3, steps2=100):
    """One image: (96,), (3,), (10,), (3, 3), (21, 2) -> (pose6d, transl, energies (steps1 + steps2,))."""
    energy = functools.partial(_energy, mano_model, betas, K, target)

    opt1 = optax.adam(lr1)

    def step1(carry, _):
        t, state = carry
        e, g = jax.value_and_grad(lambda t: energy(t, pose6d))(t)
        upd, state = opt1.update(g, state, t)
        return (optax.apply_updates(t, upd), state), e

    (transl, _), e1 = jax.lax.scan(step1, (transl, opt1.init(transl)), None, length=steps1)

    opt2 = optax.adam(lr2)
    params = (transl, pose6d)

    def step2(carry, _):
        p, state = carry
        e, g = jax.value_and_grad(lambda p: energy(*p))(p)
        upd, state = opt2.update(g, state, p)
        return (optax.apply_updates(p, upd), state), e

    ((transl, pose6d), _), e2 = jax.lax.scan(step2, (params, opt2.init(params)), None, length=steps2)
    return pose6d, transl, jnp.concatenate([e1, e2])


@functools.partial(jax.jit, static_argnames=("steps1", "steps2"))
def fit(mano_model, pose6d, transl, betas, K, target, *, lr1=1e-2, steps1=200, lr2=1e-3, steps2=100):
    """All images at once (vmap of :func:`fit_one`): (N, 96), (N, 3), (N, 10), (N, 3, 3), (N, 21, 2) ->
    (pose6d (N, 96), transl (N, 3), energies (N, steps1 + steps2): every iteration's energy, px^2).
    The learning rates are traced (one compilation for any rates), the step counts static."""
    one = functools.partial(fit_one, mano_model, lr1=lr1, steps1=steps1, lr2=lr2, steps2=steps2)
    return jax.vmap(one)(pose6d, transl, betas, K, target)
