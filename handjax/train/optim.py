"""Optimisers and learning-rate schedules from config (optax)."""
from __future__ import annotations

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
    """cfg: name ('adam' | 'adamw' | 'sgd' | 'lars'), lr schedule keys, weight_decay, momentum, grad_clip."""
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
    return tx, schedule
