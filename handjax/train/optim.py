"""Optimisers and learning-rate schedules from config (optax)."""
from __future__ import annotations

from typing import Mapping

import jax
import optax


def make_schedule(cfg, num_steps: int):
    """cfg: lr, schedule ('constant' | 'cosine' | 'step'), warmup_steps, decay_steps/decay_rate (step)."""
    lr = float(cfg.lr)
    warmup = int(cfg.get("warmup_steps", 0))
    kind = cfg.get("schedule", "cosine")
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1), alpha=float(cfg.get("final_lr_fraction", 0.0)))
    elif kind == "step":
        boundaries = {int(b) - warmup: float(cfg.get("decay_rate", 0.1)) for b in cfg.get("decay_steps", ())}
        main = optax.piecewise_constant_schedule(lr, boundaries)
    else:
        raise ValueError(f"config optim.schedule must be 'constant', 'cosine' or 'step', got {kind!r}")
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return main


def make_optimizer(cfg, num_steps: int):
    """cfg: name ('adam' | 'adamw' | 'sgd' | 'lars'), lr schedule keys, weight_decay, momentum, grad_clip,
    lr_scale ({parameter path prefix: factor}, see :func:`scale_by_path`)."""
    schedule = make_schedule(cfg, num_steps)
    name = cfg.get("name", "adam")
    wd = float(cfg.get("weight_decay", 0.0))
    if name == "adam":
        tx = optax.adam(schedule)
    elif name == "adamw":
        tx = optax.adamw(schedule, weight_decay=wd)
    elif name == "sgd":
        tx = optax.sgd(schedule, momentum=float(cfg.get("momentum", 0.9)))
    elif name == "lars":
        tx = optax.lars(schedule, weight_decay=wd, momentum=float(cfg.get("momentum", 0.9)))
    else:
        raise ValueError(f"config optim.name must be one of adam, adamw, sgd, lars; got {name!r}")
    clip = float(cfg.get("grad_clip", 0.0))
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    rules = dict(cfg.get("lr_scale", None) or {})
    if rules:
        tx = optax.chain(tx, scale_by_path(rules))
    return tx, schedule


def param_paths(tree) -> list:
    """The leaf paths of a parameter tree as 'a/b/c' strings, in tree order (nnx variables end in '/value')."""
    from handjax.train.checkpoint import saved_leaf_paths

    return ["/".join(p) for p in saved_leaf_paths(tree)]


def scale_by_path(rules: Mapping[str, float]) -> optax.GradientTransformation:
    """Multiply the updates of the parameters under each path prefix by its factor.

    rules: {'hand_rotation_net/root_pose_out': 0.1, ...}; a prefix matches whole path
    components ('a/b' matches 'a/b/kernel', not 'a/bc/kernel'); the longest matching
    prefix wins. Chained after the optimiser, a factor scales that parameter group's
    learning rate (for Adam exactly, as Adam's step does not depend on the gradient's
    scale). Every prefix must match a parameter: checked at ``init`` against the
    parameter tree, the error naming ``optim.lr_scale``, the prefix and the top-level
    names there are.
    """
    rules = {str(k).strip("/"): float(v) for k, v in rules.items()}
    for prefix, factor in rules.items():
        if not prefix or not factor >= 0.0:
            raise ValueError(f"config optim.lr_scale: expected {{'path/prefix': factor >= 0}}, got "
                             f"{prefix!r}: {factor!r}")

    def factor_of(name: str) -> float:
        best, value = -1, 1.0
        for prefix, f in rules.items():
            if (name == prefix or name.startswith(prefix + "/")) and len(prefix) > best:
                best, value = len(prefix), f
        return value

    def init_fn(params):
        names = param_paths(params)
        for prefix in rules:
            if not any(n == prefix or n.startswith(prefix + "/") for n in names):
                tops = sorted({n.split("/")[0] for n in names})
                raise ValueError(f"config optim.lr_scale: no parameter under {prefix!r}; the parameters are "
                                 f"under {tops}")
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        factors = [factor_of(n) for n in param_paths(updates)]  # at trace time: constants in the step
        scaled = [u if f == 1.0 else u * f for u, f in zip(leaves, factors)]
        return jax.tree_util.tree_unflatten(treedef, scaled), state

    return optax.GradientTransformation(init_fn, update_fn)
